//! Reading one HTTP/1.1 request head and deciding whether the fast path may forward it.
//!
//! The fast path takes only the plain, common request: HTTP/1.1, origin-form target of
//! unreserved characters, one `Host`, at most one `Content-Length`, no `Transfer-Encoding`,
//! `Upgrade` or `Expect`, and admitted (certificate, cookie or bypass). Anything else —
//! including every refusal — falls back to hyper, which answers it as it always has.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Method};

use super::super::conn::{self, ConnInfo};
use super::super::forward::{earned_cookie, routed_host};
use super::super::{Shared, contains, foreign, headers};
use super::{content_length, write_header};
use crate::admission::{self, Decision};
use crate::snapshot::{Route, Snapshot};

/// Most request headers parsed; more falls back to hyper (which answers 431).
const MAX_HEADERS: usize = 100;

/// A request the fast path forwards, its upstream head already written.
pub struct Forward {
    pub route: Arc<Route>,
    pub decision: Decision,
    pub host: String,
    /// Request body bytes that follow the head.
    pub body_len: u64,
    /// A `HEAD` request: its response has no body whatever its headers say.
    pub head_only: bool,
    /// Safe to send again on a fresh connection (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The client asked to close after this response.
    pub close: bool,
    pub set_cookie: Option<HeaderValue>,
}

/// What the bytes read so far hold.
pub enum Head {
    /// Not a whole head yet, and still within the size limit.
    Partial,
    /// A head of this many bytes that the fast path forwards.
    Forward(Box<Forward>, usize),
    /// Anything else: hyper takes over the connection from this request on.
    Fallback,
}

/// How the fast path treats a request header, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    ContentLength,
    Connection,
    Cookie,
    ForwardedFor,
    /// Hop-by-hop or gate-only: never forwarded.
    Drop,
    /// Framing or semantics the fast path leaves to hyper.
    Fallback,
    Forward,
}

fn kind(name: &str) -> Kind {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        4 if is("host") => Kind::Host,
        6 if is("cookie") => Kind::Cookie,
        6 if is("expect") => Kind::Fallback,
        7 if is("upgrade") => Kind::Fallback,
        10 if is("connection") => Kind::Connection,
        14 if is("content-length") => Kind::ContentLength,
        15 if is("x-forwarded-for") => Kind::ForwardedFor,
        17 if is("transfer-encoding") => Kind::Fallback,
        _ if headers::is_hop_by_hop(name) || headers::is_gate_only(name) => Kind::Drop,
        _ => Kind::Forward,
    }
}

/// Parses the head at the start of `buf` and, when the fast path takes it, writes the
/// request head for the upstream into `out`.
pub fn read(
    buf: &[u8],
    shared: &Shared,
    conn: &ConnInfo,
    snapshot: &Snapshot,
    out: &mut Vec<u8>,
) -> Head {
    let max = shared.settings.limits.max_header_bytes;
    // Left uninitialised: httparse writes only the headers it finds.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(httparse::Status::Partial) if buf.len() < max => return Head::Partial,
        _ => return Head::Fallback,
    };
    match plan(&req, shared, conn, snapshot, out) {
        Some(forward) => Head::Forward(Box::new(forward), len),
        None => Head::Fallback,
    }
}

/// The forwarding plan for a parsed head, or `None` to fall back.
fn plan(
    req: &httparse::Request<'_, '_>,
    shared: &Shared,
    conn: &ConnInfo,
    snapshot: &Snapshot,
    out: &mut Vec<u8>,
) -> Option<Forward> {
    if req.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let target = req.path?;
    if method == Method::CONNECT || !is_plain_target(target) {
        return None;
    }

    let mut host = None;
    let mut body_len = None;
    let mut close = false;
    for h in req.headers.iter() {
        match kind(h.name) {
            Kind::Fallback => return None,
            Kind::Host if host.is_some() => return None,
            Kind::Host => host = Some(std::str::from_utf8(h.value).ok()?),
            Kind::ContentLength if body_len.is_some() => return None,
            Kind::ContentLength => body_len = Some(content_length(h.value)?),
            Kind::Connection => close |= connection_asks_close(h.value)?,
            // Values the hyper path reads as text must be text here too.
            Kind::Cookie | Kind::ForwardedFor if !is_visible_ascii(h.value) => return None,
            _ => {}
        }
    }
    // The gate's own pages (enrollment links) are hyper's to answer.
    if crate::enroll::is_reserved(target) {
        return None;
    }
    let host = routed_host(host?)?;
    let route = snapshot.route(&host)?;
    // A connection opened for one route must not be steered to another by its Host.
    if let Some(sni) = &conn.sni
        && !snapshot.route(sni).is_some_and(|r| Arc::ptr_eq(r, route))
    {
        return None;
    }

    let cookie_name = route.cookie.as_ref().map(|c| c.name.as_str());
    let cookies: Vec<&str> = match cookie_name {
        Some(name) => cookie_values(req.headers, name).collect(),
        None => Vec::new(),
    };
    let now = SystemTime::now();
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let decision = admission::admit(
        snapshot,
        route,
        &admission::Request {
            method: &method,
            path,
            host: &host,
            client_cert: conn.client_cert.as_ref(),
            cookies: &cookies,
            now,
        },
    );
    if let Decision::Deny(_) = decision {
        return None; // hyper answers, counts and logs the refusal.
    }
    conn::saw(shared, conn, &decision, &host, now);
    let set_cookie = earned_cookie(&decision, snapshot, route, conn, &host, now);

    out.clear();
    write_head(out, req, &method, target, route, &host, shared, conn);
    if let Some(len) = body_len {
        // Written in canonical form: `05` or ` 5` mean 5 to us, maybe not to the upstream.
        write_header(out, "content-length", len.to_string().as_bytes());
    }
    if let Some(identity) = decision.identity() {
        write_header(out, "x-portcullis-identity", identity.identity.as_bytes());
    }
    out.extend_from_slice(b"\r\n");

    Some(Forward {
        route: route.clone(),
        decision,
        host,
        body_len: body_len.unwrap_or(0),
        head_only: method == Method::HEAD,
        idempotent: method.is_idempotent(),
        close,
        set_cookie,
    })
}

/// Request line and headers for the upstream, without the identity and the final CRLF.
#[allow(clippy::too_many_arguments)]
fn write_head(
    out: &mut Vec<u8>,
    req: &httparse::Request<'_, '_>,
    method: &Method,
    target: &str,
    route: &Route,
    host: &str,
    shared: &Shared,
    conn: &ConnInfo,
) {
    for part in [method.as_str(), " ", target, " HTTP/1.1\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    write_header(out, "host", host.as_bytes());
    for h in req.headers.iter() {
        if kind(h.name) == Kind::Forward && foreign::forwardable(h.name, &route.headers) {
            write_header(out, h.name, h.value);
        }
    }
    let cookie_name = route.cookie.as_ref().map(|c| c.name.as_str());
    // Each of these lines is written whole in its own pass: a line assembled while other
    // headers are written would take them into its value.
    let kept_cookies = req
        .headers
        .iter()
        .filter(|h| kind(h.name) == Kind::Cookie)
        .flat_map(|h| cookie_pairs(h.value))
        // The gate's MAC never reaches the upstream.
        .filter(|pair| cookie_name.is_none_or(|name| cookie_name_of(pair) != name))
        .map(str::as_bytes);
    joined_line(out, "cookie", b"; ", kept_cookies);
    let trusted = contains(&shared.settings.trusted_proxies, conn.peer.ip());
    let sent_chain = req
        .headers
        .iter()
        .filter(|h| trusted && kind(h.name) == Kind::ForwardedFor)
        .map(|h| trim(h.value))
        .filter(|value| !value.is_empty());
    let client = conn.client_header.as_bytes();
    joined_line(
        out,
        "x-forwarded-for",
        b", ",
        sent_chain.chain(std::iter::once(client)),
    );
    write_header(out, "x-forwarded-proto", b"https");
    write_header(out, "x-forwarded-host", host.as_bytes());
}

/// One header line holding `values` joined by `sep`; nothing when there are none.
fn joined_line<'v>(
    out: &mut Vec<u8>,
    name: &str,
    sep: &[u8],
    values: impl Iterator<Item = &'v [u8]>,
) {
    let mut first = true;
    for value in values {
        if first {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
        } else {
            out.extend_from_slice(sep);
        }
        out.extend_from_slice(value);
        first = false;
    }
    if !first {
        out.extend_from_slice(b"\r\n");
    }
}

/// `name=value` pairs of `Cookie` header values (already checked to be ASCII).
fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(value)
        .unwrap_or_default()
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
}

fn cookie_name_of(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// Every value of cookie `name`, as `admission::cookie_values` reads a `HeaderMap`.
fn cookie_values<'h>(
    headers: &'h [httparse::Header<'_>],
    name: &'h str,
) -> impl Iterator<Item = &'h str> {
    headers
        .iter()
        .filter(|h| kind(h.name) == Kind::Cookie)
        .flat_map(|h| cookie_pairs(h.value))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
}

/// Whether a `Connection` value asks to close; `None` when it names anything but
/// `keep-alive` and `close` (headers to strip are hyper's business).
fn connection_asks_close(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in std::str::from_utf8(value).ok()?.split(',') {
        match token.trim() {
            t if t.eq_ignore_ascii_case("close") => close = true,
            t if t.eq_ignore_ascii_case("keep-alive") || t.is_empty() => {}
            _ => return None,
        }
    }
    Some(close)
}

/// An origin-form target made only of RFC 3986 characters: what every parser downstream
/// reads the same way. Anything else is left to hyper's stricter URI parsing.
fn is_plain_target(target: &str) -> bool {
    target.starts_with('/')
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b))
}

fn is_visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_kinds_ignore_case() {
        assert_eq!(kind("HOST"), Kind::Host);
        assert_eq!(kind("Content-Length"), Kind::ContentLength);
        assert_eq!(kind("transfer-ENCODING"), Kind::Fallback);
        assert_eq!(kind("X-Portcullis-Identity"), Kind::Drop);
        assert_eq!(kind("Keep-Alive"), Kind::Drop);
        assert_eq!(kind("TE"), Kind::Drop);
        assert_eq!(kind("X-Forwarded-For"), Kind::ForwardedFor);
        assert_eq!(kind("accept"), Kind::Forward);
        assert_eq!(kind("hosts"), Kind::Forward);
    }

    #[test]
    fn connection_tokens() {
        assert_eq!(connection_asks_close(b"keep-alive"), Some(false));
        assert_eq!(connection_asks_close(b"Close"), Some(true));
        assert_eq!(connection_asks_close(b"keep-alive, close"), Some(true));
        assert_eq!(connection_asks_close(b"x-secret"), None);
        assert_eq!(connection_asks_close(b"upgrade"), None);
    }

    #[test]
    fn only_plain_origin_form_targets() {
        for ok in ["/", "/api/states?x=1&y=%20", "/local/a-b_c.~!$'()*+,;=:@"] {
            assert!(is_plain_target(ok), "{ok}");
        }
        for odd in [
            "*",
            "http://ha.test/",
            "/a#frag",
            "/a\\b",
            "/a b",
            "/{x}",
            "/a|b",
            "/\"",
            "/é",
        ] {
            assert!(!is_plain_target(odd), "{odd}");
        }
    }

    #[test]
    fn gate_cookie_values_are_found_in_every_cookie_header() {
        let headers = [
            httparse::Header {
                name: "Cookie",
                value: b"a=1; __Host-p=\"v1.x\"",
            },
            httparse::Header {
                name: "accept",
                value: b"*/*",
            },
            httparse::Header {
                name: "cookie",
                value: b"__Host-p=v1.y;b=2",
            },
        ];
        let values: Vec<&str> = cookie_values(&headers, "__Host-p").collect();
        assert_eq!(values, ["v1.x", "v1.y"]);
    }
}
