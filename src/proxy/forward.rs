//! One request: route, admit, forward; upgrades become tunnels.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::conn::{self, ConnInfo, Open};
use super::headers::{self, Forwarded};
use super::idle::{self, RequestBody};
use super::revocation::{self, Admitted};
use super::{Body, Shared, contains};
use crate::admission::{self, Decision, DenyReason};
use crate::snapshot::{Route, Snapshot};
use crate::telemetry::RequestLabels;
use prometheus_client::metrics::counter::Counter;

/// What a client is told when its request could not be forwarded (the same on both paths).
pub(super) const UPSTREAM_UNREACHABLE: &str = "the upstream service is not reachable\n";
pub(super) const BODY_STALLED: &str = "the request body stopped arriving\n";
const BAD_BODY: &str =
    "malformed request body (invalid chunked framing, or cut short); send it again whole\n";

pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
) -> Result<Response<Body>, Infallible> {
    // The newest snapshot: a revoke applies to the very next request on any connection.
    let Some(snapshot) = shared.snapshots.borrow().clone() else {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration loaded yet\n",
        ));
    };
    // A tunnel to an arbitrary authority is not something a Home Assistant gate offers.
    if req.method() == http::Method::CONNECT {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported\n",
        ));
    }
    // RFC 9112 §3.2: the target is ASCII; raw UTF-8 would reach the upstream unescaped.
    if !req
        .uri()
        .path_and_query()
        .is_none_or(|pq| pq.as_str().is_ascii())
    {
        return Ok(plain(StatusCode::BAD_REQUEST, "invalid request target\n"));
    }
    let Some(host) = request_host(&req) else {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "missing or invalid Host header\n",
        ));
    };
    let Some(route) = snapshot.route(&host).cloned() else {
        return Ok(plain(
            StatusCode::MISDIRECTED_REQUEST,
            "no route serves this host\n",
        ));
    };
    // A connection opened for one route must not be steered to another by its Host
    // header: each route has its own identity selector.
    if let Some(sni) = &conn.sni
        && !snapshot.route(sni).is_some_and(|r| Arc::ptr_eq(r, &route))
    {
        return Ok(plain(
            StatusCode::MISDIRECTED_REQUEST,
            "Host does not match TLS SNI\n",
        ));
    }
    let hsts = route.hsts;
    let mut resp = routed(req, shared, conn, snapshot, route, host).await;
    if hsts {
        // `insert`: ours replaces any the upstream sent, so the browser sees one policy.
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, HSTS.clone());
    }
    Ok(resp)
}

/// The header value for a route with `hsts` (no allocation per response).
static HSTS: HeaderValue = HeaderValue::from_static(crate::snapshot::HSTS);

/// A request for `route`'s `host`: the gate's own pages, admission, forwarding.
async fn routed(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    snapshot: Arc<Snapshot>,
    route: Arc<Route>,
    host: String,
) -> Response<Body> {
    // The gate's own pages (enrollment links) come before admission: a device without a
    // certificate must reach them. Their paths hold secrets: not logged below.
    if crate::enroll::is_reserved(req.uri().path()) {
        return super::enroll::serve(&req, &shared, &conn, &snapshot, &route).await;
    }

    let cookie_name = route.cookie.as_ref().map(|c| c.name.as_str());
    let cookies = cookie_name
        .map(|n| admission::cookie_values(req.headers(), n))
        .unwrap_or_default();
    let now = SystemTime::now();
    let decision = admission::admit(
        &snapshot,
        &route,
        &admission::Request {
            method: req.method(),
            path: req.uri().path(),
            host: &host,
            client_cert: conn.client_cert.as_ref(),
            cookies: &cookies,
            now,
        },
    );
    drop(cookies);
    count(&shared, &route, &decision);
    if let Decision::Deny(reason) = decision {
        tracing::info!(
            audit = "denied", route = %route.name, host = %host, client = %conn.client.ip(),
            method = %req.method(), path = %req.uri().path(), reason = reason.as_str(),
            "request denied"
        );
        return denied(&req, reason);
    }
    conn::saw(&shared, &conn, &decision, &host, now);
    let set_cookie = earned_cookie(&decision, &snapshot, &route, &conn, &host, now);
    drop(snapshot);

    let identity = decision.identity().map(|c| c.identity.as_str());
    let upgrade = is_websocket_upgrade(&req);
    prepare(&mut req, &conn, &shared, &route, identity, &host);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let body_timeout = shared.settings.limits.body_idle_timeout;
    let req = req.map(|body| RequestBody::new(body, body_timeout));

    let mut resp = match shared.upstream.send(&route.upstream, req).await {
        Ok(resp) => resp,
        Err(e) if idle::is_body_stall(&e) => {
            tracing::info!(route = %route.name, client = %conn.client.ip(), "request body stalled");
            let mut resp = plain(StatusCode::REQUEST_TIMEOUT, BODY_STALLED);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        // The client's body broke its framing (a malformed chunk) or stopped short: the
        // client's fault, not the upstream's, and no sign of an upstream outage.
        Err(e) if idle::bad_client_body(&e).is_some() => {
            let error = idle::bad_client_body(&e).map(ToString::to_string);
            tracing::info!(route = %route.name, client = %conn.client.ip(), error = error.unwrap_or_default(), "client error: malformed request body");
            let mut resp = plain(StatusCode::BAD_REQUEST, BAD_BODY);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Err(e) => {
            tracing::warn!(route = %route.name, upstream = %route.upstream, error = %e, "upstream unreachable");
            return plain(StatusCode::BAD_GATEWAY, UPSTREAM_UNREACHABLE);
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A tunnel only for the WebSocket the client asked for: a 101 to anything else
        // (`h2c` from an upstream that ignored the dropped header, or a 101 nobody asked
        // for) would hand the connection to the upstream past admission.
        let to_websocket = headers::offers_websocket(resp.headers().get_all(header::UPGRADE));
        let Some(client_upgrade) = client_upgrade.filter(|_| to_websocket) else {
            let to = resp.headers().get(header::UPGRADE);
            tracing::warn!(
                route = %route.name, upstream = %route.upstream, upgrade = ?to,
                client_asked_websocket = upgrade, "upstream answered 101 but not with the WebSocket the client asked for; answering 502, not tunnelling"
            );
            let mut resp = plain(StatusCode::BAD_GATEWAY, UPSTREAM_UNREACHABLE);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        };
        let admitted = decision
            .identity()
            .map(|cert| Admitted::serial_on(&cert.serial_hex, &host));
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(
            shared.clone(),
            client_upgrade,
            upstream_upgrade,
            admitted,
            conn.open.clone(),
        ));
        // No Set-Cookie on a 101: iOS Safari ignores it there.
        return resp.map(|b| b.boxed());
    }

    // A chunked body's length is the chunks' (RFC 9112 §6.3): a Content-Length next to
    // it would mis-frame the body hyper re-frames for the client. Any other transfer
    // coding would reach the client undeclared once the hop-by-hop header goes.
    let codings = resp.headers().get_all(header::TRANSFER_ENCODING);
    if codings.iter().next().is_some() {
        if !codings
            .iter()
            .all(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
        {
            tracing::warn!(route = %route.name, upstream = %route.upstream, "upstream sent a transfer coding other than chunked");
            return plain(StatusCode::BAD_GATEWAY, UPSTREAM_UNREACHABLE);
        }
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    if let Some(cookie) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    // A certificate connection is closed as a whole when its certificate goes (conn.rs);
    // a response admitted by cookie (an event stream, a camera feed) must end on its own.
    if let Decision::Cookie { cert } = &decision {
        let admitted = Admitted::serial_on(&cert.serial_hex, &host);
        let gone = revocation::gone(shared.snapshots.clone(), Some(admitted));
        return resp.map(|body| UntilGone::new(body.boxed(), gone).boxed());
    }
    resp.map(|b| b.boxed())
}

/// The `Set-Cookie` a request admitted by certificate earns when its cookie is due.
pub(super) fn earned_cookie(
    decision: &Decision,
    snapshot: &Snapshot,
    route: &Route,
    conn: &ConnInfo,
    host: &str,
    now: SystemTime,
) -> Option<HeaderValue> {
    match (decision, &route.cookie, snapshot.cookie_keys().first()) {
        (
            Decision::Certificate {
                cert,
                cookie_due: true,
            },
            Some(policy),
            Some(key),
        ) => conn
            .cookie_mint
            .set_cookie(key, policy, &cert.serial_hex, host, now, cert.not_after),
        _ => None,
    }
}

/// A response body cut short once the identity that was admitted no longer is.
struct UntilGone {
    body: Body,
    /// Fires (or errs, if the watch task is gone) when the identity is no longer admitted.
    gone: tokio::sync::oneshot::Receiver<()>,
}

impl UntilGone {
    fn new(body: Body, gone: impl Future<Output = ()> + Send + 'static) -> Self {
        let (mut tx, rx) = tokio::sync::oneshot::channel();
        // The watch ends with the body: `closed` completes when `rx` is dropped.
        tokio::spawn(async move {
            tokio::select! {
                () = gone => { let _ = tx.send(()); }
                () = tx.closed() => {}
            }
        });
        Self { body, gone: rx }
    }
}

impl hyper::body::Body for UntilGone {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        if Pin::new(&mut self.gone).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Rewrites the request for the upstream: sanitised headers, origin-form URI, HTTP/1.1.
fn prepare(
    req: &mut Request<Incoming>,
    conn: &ConnInfo,
    shared: &Shared,
    route: &Route,
    identity: Option<&str>,
    host: &str,
) {
    let upgrade = is_websocket_upgrade(req);
    let headers = req.headers_mut();
    headers::strip_hop_by_hop(headers, upgrade);
    headers::strip_foreign(headers, &route.headers);
    if let Some(cookie) = &route.cookie {
        headers::strip_cookie(headers, &cookie.name);
    }
    // Routed hosts are validated names or addresses: always valid header text.
    let host = HeaderValue::from_str(host).ok();
    let no_host = HeaderValue::from_static("");
    let forwarded = Forwarded {
        client: &conn.client_header,
        peer_trusted: contains(&shared.settings.trusted_proxies, conn.peer.ip()),
        host: host.as_ref().unwrap_or(&no_host),
        identity,
    };
    headers::set_forwarded(headers, &forwarded);
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }

    // Origin-form: the upstream sees the path the client asked for, parsed by hyper.
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    // The upstream leg is HTTP/1.1 whatever the client spoke.
    *req.version_mut() = Version::HTTP_11;
}

/// Lowercase host without port: the URI authority (HTTP/2, absolute-form) or `Host`.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<String> {
    match req.uri().authority() {
        Some(authority) => normal_host(authority.host()),
        None => {
            // Two Host lines are a 400 (RFC 9112 §3.2): which one a server reads differs.
            let mut hosts = req.headers().get_all(header::HOST).iter();
            let host = hosts.next()?;
            if hosts.next().is_some() {
                return None;
            }
            routed_host(host.to_str().ok()?)
        }
    }
}

/// The routed host named by a `Host` header value.
pub(super) fn routed_host(value: &str) -> Option<String> {
    normal_host(host_of(value)?)
}

fn normal_host(host: &str) -> Option<String> {
    // IPv6 literals come bracketed; routes list them bare. A trailing dot names the same
    // host. Anything else odd simply matches no route.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The host of a `Host` value, `name[:port]` or `[v6]:port`; `None` when the port is not
/// a number or an unbracketed name holds a colon.
fn host_of(value: &str) -> Option<&str> {
    let (host, port) = match value.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            match rest {
                "" => (host, ""),
                rest => (host, rest.strip_prefix(':')?),
            }
        }
        None => value.split_once(':').unwrap_or((value, "")),
    };
    port.bytes().all(|b| b.is_ascii_digit()).then_some(host)
}

/// An HTTP/1.1 request to upgrade to WebSocket, the one upgrade the gate passes on; any
/// other `Upgrade` (`h2c` above all) is dropped and the request forwarded as a plain one.
fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && headers::offers_websocket(req.headers().get_all(header::UPGRADE))
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Shuttles bytes between the upgraded client and upstream until either side closes or
/// the identity that opened it is no longer admitted.
async fn tunnel(
    shared: Arc<Shared>,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    admitted: Option<Admitted>,
    // The client connection's slot and gauge entry: a tunnel is still an open connection.
    _open: Arc<Open>,
) {
    let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
        return;
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let gauge = &shared.metrics.open_websockets;
    gauge.inc();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        () = revocation::gone(shared.snapshots.clone(), admitted) => {
            tracing::info!("closing upgraded connection: its identity is no longer admitted");
        }
        () = shared.shutdown.cancelled() => {}
    }
    gauge.dec();
}

fn count(shared: &Shared, route: &Route, decision: &Decision) {
    request_counter(shared, route, decision).inc();
}

/// The `portcullis_requests_total` series for this decision on `route`.
pub(super) fn request_counter(shared: &Shared, route: &Route, decision: &Decision) -> Counter {
    let reason = match decision {
        Decision::Deny(reason) => reason.as_str(),
        _ => "",
    };
    let labels = RequestLabels {
        route: route.name.clone(),
        admission: decision.path_label(),
        reason,
    };
    shared.metrics.requests.get_or_create(&labels).clone()
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", text)
}

const DENIED_PAGE: &str = include_str!("denied.html");

/// 403: a short page, or JSON for API clients.
fn denied<B>(req: &Request<B>, reason: DenyReason) -> Response<Body> {
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        let body = format!(
            r#"{{"error":"client_certificate_required","reason":"{}","message":"This site admits only enrolled devices: install your device's Portcullis certificate and try again."}}"#,
            reason.as_str()
        );
        full(StatusCode::FORBIDDEN, "application/json", body)
    } else {
        full(
            StatusCode::FORBIDDEN,
            "text/html; charset=utf-8",
            DENIED_PAGE,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> Option<String> {
        let req = Request::get("/")
            .header(header::HOST, value)
            .body(())
            .ok()?;
        request_host(&req)
    }

    #[test]
    fn host_header_forms() {
        assert_eq!(host("HA.Example.com").as_deref(), Some("ha.example.com"));
        assert_eq!(
            host("ha.example.com:443").as_deref(),
            Some("ha.example.com")
        );
        assert_eq!(host("ha.example.com.").as_deref(), Some("ha.example.com"));
        assert_eq!(host("[::1]:8443").as_deref(), Some("::1"));
        assert_eq!(host("[::1]").as_deref(), Some("::1"));
        assert_eq!(host("ha.example.com:").as_deref(), Some("ha.example.com"));
        for bad in ["ha.example.com:x", "a:b:c", "[::1", "[::1]x", ":443", ""] {
            assert_eq!(host(bad), None, "{bad:?}");
        }
        // The URI authority (HTTP/2 :authority, absolute-form) wins over Host.
        let req = Request::get("https://Ha.Example.com:443/x")
            .header(header::HOST, "other.example.com")
            .body(())
            .expect("request");
        assert_eq!(request_host(&req).as_deref(), Some("ha.example.com"));
    }
}
