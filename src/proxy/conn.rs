//! One client connection: PROXY header, TLS handshake, HTTP serving, revocation.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use super::idle::{Activity, Tracked};
use super::revocation::{self, Admitted, Credential, Hosts, SeenHosts};
use super::seen::ConnSightings;
use super::{Shared, challenge, contains, h1, proxy_protocol, reason};
use crate::admission::{CookieMint, Decision};
use crate::snapshot::{Fingerprint, fingerprint};

/// Facts about a connection that admission and forwarding need.
#[derive(Debug)]
pub struct ConnInfo {
    /// The real client: the PROXY header's source when a trusted proxy sent one.
    pub client: SocketAddr,
    /// `client`'s address as header text, for `X-Forwarded-For`.
    pub client_header: HeaderValue,
    /// The TCP peer (the trusted proxy itself when there is one).
    pub peer: SocketAddr,
    pub client_cert: Option<Fingerprint>,
    /// Lowercase SNI.
    pub sni: Option<String>,
    /// Without SNI: the hosts this connection's certificate was admitted on, each of
    /// whose routes must keep admitting it for the connection to stay open.
    pub seen_hosts: Option<Arc<SeenHosts>>,
    /// Held as long as anything (the connection, a tunnel) still uses the connection.
    pub open: Arc<Open>,
    /// The cookie last handed to this client, reused while fresh.
    pub cookie_mint: CookieMint,
}

/// One open client connection: its `max_connections` slot and its place in the
/// open-connections gauge, released however the task ends. An upgraded connection (a
/// WebSocket tunnel) outlives hyper's connection future, so the tunnel holds it too.
pub struct Open {
    gauge: prometheus_client::metrics::gauge::Gauge,
    _slot: OwnedSemaphorePermit,
    /// Who this connection was admitted as, and when it last said so.
    pub seen: ConnSightings,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Open")
    }
}

impl Open {
    pub(super) fn new(
        gauge: &prometheus_client::metrics::gauge::Gauge,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        gauge.inc();
        Self {
            gauge: gauge.clone(),
            _slot: slot,
            seen: ConnSightings::default(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

pub async fn handle(
    mut tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    slot: OwnedSemaphorePermit,
) {
    let metrics = &shared.metrics;
    let open = Arc::new(Open::new(&metrics.open_connections, slot));
    let limits = &shared.settings.limits;

    let mut client = peer;
    if contains(&shared.settings.proxy_protocol_from, peer.ip()) {
        match timeout(
            limits.handshake_timeout,
            proxy_protocol::read_header(&mut tcp),
        )
        .await
        {
            Ok(Ok(Some(addr))) => client = addr,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "bad PROXY header");
                metrics
                    .handshake_failures
                    .get_or_create(&reason("proxy_protocol"))
                    .inc();
                return;
            }
            Err(_) => {
                metrics
                    .handshake_failures
                    .get_or_create(&reason("timeout"))
                    .inc();
                return;
            }
        }
    }

    // Mark the current snapshot seen, so any later one wakes the revocation watch.
    let mut snapshots = shared.snapshots.clone();
    let Some(snapshot) = snapshots.borrow_and_update().clone() else {
        return; // No configuration yet: fail closed.
    };
    let config = match &shared.challenge_tls {
        Some(challenges) => challenges.config(snapshot.tls()),
        None => snapshot.tls().clone(),
    };
    let acceptor = TlsAcceptor::from(config);
    let mut tls = match timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let why = classify(&e);
            tracing::debug!(%client, error = %e, reason = why, "TLS handshake failed");
            metrics.handshake_failures.get_or_create(&reason(why)).inc();
            return;
        }
        Err(_) => {
            metrics
                .handshake_failures
                .get_or_create(&reason("timeout"))
                .inc();
            return;
        }
    };
    drop(snapshot);
    if challenge::closed_if_challenge(&mut tls, metrics, limits.handshake_timeout).await {
        return;
    }

    let (_, session) = tls.get_ref();
    let client_cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint(c));
    let sni = session.server_name().map(str::to_ascii_lowercase);
    // Every request on this connection is for the SNI's route (forward.rs refuses others);
    // without SNI, for the routes it has been admitted on so far.
    let (on, seen_hosts) = match &sni {
        Some(sni) => (Hosts::One(sni.clone()), None),
        None => {
            let seen = Arc::<SeenHosts>::default();
            (Hosts::Seen(seen.clone()), Some(seen))
        }
    };
    let info = Arc::new(ConnInfo {
        client,
        // An address always formats as valid header text.
        client_header: HeaderValue::from_str(&client.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown")),
        peer,
        client_cert,
        seen_hosts,
        sni,
        open,
        cookie_mint: CookieMint::default(),
    });
    // HTTP/2 only when ALPN chose it (RFC 9113 §3.2: over TLS, h2 is always negotiated).
    // Serving each protocol directly, rather than sniffing the first bytes, means the
    // header-read timeout runs from the first moment: hyper's version sniffing waits for
    // bytes with no deadline, so a client silent after the handshake was never cut.
    let h2 = session.alpn_protocol() == Some(b"h2".as_slice());

    // hyper bounds an HTTP/1 request head (and idle keep-alive) itself; HTTP/2 has no such
    // timer, so a client that completes TLS and then sends nothing, or stops after a few
    // requests, would hold its slot forever. Close an HTTP/2 connection once nothing has
    // been in flight for the same header-read timeout.
    let activity = h2.then(Activity::new);
    let service = {
        let (shared, info, activity) = (shared.clone(), info.clone(), activity.clone());
        service_fn(move |req| {
            let in_flight = activity.as_ref().map(Activity::begin);
            // hyper's HTTP/2 server sends whatever body it is given, even to a HEAD (its
            // HTTP/1 server drops it), and a client resets such a stream: the gate's own
            // pages (403, 502, enrollment) must go out as headers only.
            let head = h2 && req.method() == http::Method::HEAD;
            let response = super::forward::handle(req, shared.clone(), info.clone());
            async move {
                let mut response = response.await?;
                if head {
                    response = headers_only(response);
                }
                Ok::<_, Infallible>(match in_flight {
                    Some(in_flight) => response.map(|body| Tracked::new(body, in_flight).boxed()),
                    None => response,
                })
            }
        })
    };
    let idle = async {
        match &activity {
            Some(activity) => activity.idle_for(limits.header_read_timeout).await,
            None => std::future::pending().await,
        }
    };
    let serving: Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>> = if h2 {
        let mut http = http2::Builder::new(TokioExecutor::new());
        http.timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_h2_streams)
            .max_header_list_size(limits.max_header_bytes as u32);
        Box::pin(http.serve_connection(TokioIo::new(tls), service))
    } else {
        let (shared, info) = (shared.clone(), info.clone());
        Box::pin(async move {
            // The common request never reaches hyper; the first that needs it gets the
            // connection from then on, starting with the bytes already read.
            let io = match h1::serve(tls, shared.clone(), info).await {
                h1::Ended::Closed => return Ok(()),
                h1::Ended::Fallback(io) => io,
            };
            let limits = &shared.settings.limits;
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                // max_header_size is the exact bound on the head (431 beyond it);
                // max_buf_size alone is only checked while a head is incomplete, so a
                // large head arriving in one read slipped through.
                .max_header_size(limits.max_header_bytes)
                .max_buf_size(limits.max_header_bytes);
            http.serve_connection(TokioIo::new(io), service)
                .with_upgrades()
                .await
        })
    };

    let admitted = client_cert.map(|fp| Admitted {
        credential: Credential::Certificate(fp),
        on,
    });
    let revoked = revocation::gone(snapshots, admitted);
    // Served in a task of its own: the socket's wake-ups then poll only the serving
    // future, not these watchers too (on every wake-up, that was ≈ 2 % of a keep-alive
    // request). This task wakes for the end, a revocation, idleness or shutdown.
    let mut serving = tokio::spawn(serving);
    tokio::select! {
        result = &mut serving => {
            if let Ok(Err(e)) = result {
                tracing::debug!(%client, error = %e, "connection ended with an error");
            }
            return;
        }
        () = revoked => {
            tracing::info!(%client, "closing connection: its client certificate is no longer admitted");
        }
        () = idle => {
            tracing::debug!(%client, "closing HTTP/2 connection: idle for the header-read timeout");
        }
        () = shared.shutdown.cancelled() => {}
    }
    serving.abort();
}

/// Reports a request admitted on `host` (both HTTP paths call this): by certificate or
/// cookie, as a sighting, at most once a minute per connection and serial reaching the
/// shared tracker; by certificate on a connection without SNI, as a host whose route the
/// connection now answers to.
pub(super) fn saw(
    shared: &Shared,
    conn: &ConnInfo,
    decision: &Decision,
    host: &str,
    now: SystemTime,
) {
    if let Some(cert) = decision.identity() {
        conn.open.seen.saw(&shared.settings.sightings, cert, now);
    }
    if let (Some(seen), Decision::Certificate { .. }) = (&conn.seen_hosts, decision) {
        seen.add(host);
    }
}

/// A low-cardinality label for a failed handshake.
fn classify(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match error.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(C::Revoked)) => "certificate_not_live",
        Some(E::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => "certificate_expired",
        Some(E::InvalidCertificate(C::UnknownIssuer | C::BadSignature)) => "unknown_ca",
        Some(E::InvalidCertificate(_)) => "certificate_invalid",
        Some(E::NoCertificatesPresented) => "no_certificate",
        Some(E::PeerIncompatible(_)) | Some(E::NoApplicationProtocol) => "incompatible",
        Some(_) => "tls_error",
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => "client_closed",
        None => "io_error",
    }
}

/// The response to a HEAD: its headers, with the length the body would have had.
fn headers_only(response: http::Response<super::Body>) -> http::Response<super::Body> {
    use http_body_util::{BodyExt, Empty};
    let (mut parts, body) = response.into_parts();
    if let Some(len) = hyper::body::Body::size_hint(&body).exact()
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
    let empty = Empty::new().map_err(|never| match never {}).boxed();
    http::Response::from_parts(parts, empty)
}
