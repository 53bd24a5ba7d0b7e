//! The standalone gate's optional plain-HTTP listener (`--http-listen`): it answers ACME
//! http-01 challenges (RFC 8555 §8.3) and sends every request for a configured host to
//! https. It never proxies anything: no request reaches an upstream over plain HTTP.
//!
//! ```text
//!  GET|HEAD /.well-known/acme-challenge/<token> ──known──▶ 200 key authorization (any Host)
//!                                               └─unknown─▶ 404
//!  anything else ──Host is a route's──▶ 308 https://<host><path?query>
//!                └─otherwise─────────▶ 404 "no route for this host"
//! ```
//! Every byte here comes from anyone on the network, so the listener is tighter than the
//! TLS gate: a short header timeout, a small head, no request body read, few connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::snapshot::{Snapshot, SnapshotRx};
use crate::telemetry::{Metrics, OutcomeLabels};

/// Where http-01 challenges are fetched (RFC 8555 §8.3).
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// http-01 key authorizations by token, shared by the ACME client and the listener.
#[derive(Clone, Default)]
pub struct Http01Tokens(Arc<RwLock<HashMap<String, String>>>);

impl fmt::Debug for Http01Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tokens: Vec<String> = self.read().keys().cloned().collect();
        f.debug_tuple("Http01Tokens").field(&tokens).finish()
    }
}

impl Http01Tokens {
    /// Serves `key_authorization` at `/.well-known/acme-challenge/<token>` until
    /// [`Self::remove`].
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.write()
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stops serving `token` (validated, or given up).
    pub fn remove(&self, token: &str) {
        self.write().remove(token);
    }

    fn get(&self, token: &str) -> Option<String> {
        self.read().get(token).cloned()
    }

    // A panic while holding the lock leaves a plain map behind: still usable.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, String>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, String>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bounds on what a plain-HTTP client controls. Tighter than the TLS gate's
/// (`proxy::Limits`): nothing here needs large heads, bodies or long-lived connections.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Open connections; more are closed at accept.
    pub max_connections: usize,
    /// A request head must arrive within this; also how long a keep-alive connection may
    /// sit idle (hyper's HTTP/1 header timer runs from the end of the last response).
    pub header_read_timeout: Duration,
    /// Largest request head; beyond it hyper answers 431 and closes.
    pub max_header_bytes: usize,
    /// A connection is closed after this however busy: a redirect or a challenge needs one
    /// or two requests, never a long session.
    pub max_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            // hyper's read buffer cannot be smaller than 8 KiB; a redirect's head is far less.
            max_header_bytes: 8 * 1024,
            max_lifetime: Duration::from_secs(60),
        }
    }
}

/// How long in-flight requests get after `shutdown` (or `max_lifetime`) before the
/// connection is dropped.
const GRACE: Duration = Duration::from_secs(5);

/// What every connection shares.
struct Shared {
    tokens: Http01Tokens,
    snapshots: SnapshotRx,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: CancellationToken,
}

/// Serves plain HTTP on `listener` until `shutdown`: http-01 challenges from `tokens`, and
/// redirects to https for the hosts of the newest snapshot's routes.
///
/// The redirect names no port: 443 is assumed, the usual port forward for a gate reached
/// from the internet.
pub async fn serve_http(
    listener: TcpListener,
    tokens: Http01Tokens,
    snapshots: SnapshotRx,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let limits = Limits::default();
    serve_with(listener, tokens, snapshots, metrics, limits, shutdown).await;
}

pub(crate) async fn serve_with(
    listener: TcpListener,
    tokens: Http01Tokens,
    snapshots: SnapshotRx,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let shared = Arc::new(Shared {
        tokens,
        snapshots,
        metrics,
        limits,
        shutdown,
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "plain-HTTP listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "plain-HTTP listener: connection limit reached, closing");
            continue;
        };
        tokio::spawn(connection(tcp, shared.clone(), slot));
    }
    drop(listener);
    // Every slot back: every connection has finished its graceful close.
    let _ = slots.acquire_many(max).await;
}

async fn connection(tcp: TcpStream, shared: Arc<Shared>, _slot: OwnedSemaphorePermit) {
    let limits = &shared.limits;
    let service = {
        let shared = shared.clone();
        service_fn(move |req| {
            let response = respond(&req, &shared);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // max_header_size bounds the head exactly; max_buf_size the buffer it is read into.
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let conn = http.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        ended = conn.as_mut() => {
            if let Err(e) = ended {
                // A header timeout, an oversized head, a reset: the client's doing.
                tracing::debug!(error = %e, "plain-HTTP connection ended with an error");
            }
            return;
        }
        () = shared.shutdown.cancelled() => {}
        () = tokio::time::sleep(limits.max_lifetime) => {}
    }
    // Finish the request in flight (if any), then close; a client that will not let go
    // is dropped after the grace period.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(GRACE, conn).await;
}

/// What one request gets, and the outcome it is counted under.
fn respond<B>(req: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    let snapshot = shared.snapshots.borrow().clone();
    let (outcome, response) = decide(req, &shared.tokens, snapshot.as_deref());
    shared
        .metrics
        .http_requests
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    response
}

/// The decision alone: challenge, redirect or 404. The request body is never read.
fn decide<B>(
    req: &Request<B>,
    tokens: &Http01Tokens,
    snapshot: Option<&Snapshot>,
) -> (&'static str, Response<Full<Bytes>>) {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX)
        && matches!(*req.method(), Method::GET | Method::HEAD)
    {
        // Any Host: the route may have no certificate yet, so nothing else serves it, and
        // a token is unguessable.
        return match tokens.get(token) {
            Some(key_authorization) => ("challenge", text(StatusCode::OK, key_authorization)),
            None => (
                "not_found",
                text(StatusCode::NOT_FOUND, "unknown ACME challenge token\n"),
            ),
        };
    }
    let Some(host) = crate::proxy::request_host(req) else {
        let why = "no Host header naming a route of this gate\n";
        return ("not_found", text(StatusCode::NOT_FOUND, why));
    };
    if snapshot.and_then(|s| s.route(&host)).is_none() {
        return (
            "not_found",
            text(StatusCode::NOT_FOUND, "no route for this host\n"),
        );
    }
    match redirect_to(&host, req.uri()) {
        Some(location) => ("redirect", redirect(location)),
        None => (
            "not_found",
            text(StatusCode::NOT_FOUND, "no route for this request\n"),
        ),
    }
}

/// `https://<host><path?query>` for a route's `host` (lowercase, no port): 443 assumed.
fn redirect_to(host: &str, uri: &http::Uri) -> Option<HeaderValue> {
    // An IPv6 literal route host needs its brackets back in a URL.
    let host = match host.contains(':') {
        true => format!("[{host}]"),
        false => host.to_owned(),
    };
    // `OPTIONS *` and CONNECT's authority-form have no path to keep.
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    HeaderValue::try_from(format!("https://{host}{path}")).ok()
}

fn redirect(location: HeaderValue) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
