//! Header hygiene between the client and the upstream.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Headers only the gate may set: a client sending them is trying to impersonate an
/// identity or a client address.
const GATE_ONLY: [&str; 7] = [
    "x-portcullis-identity",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

pub const IDENTITY: HeaderName = HeaderName::from_static("x-portcullis-identity");
const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XF_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XF_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, and those named by `Connection`. For an upgrade the
/// `Connection: upgrade` / `Upgrade` pair is what the upstream must see, so it is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// What the gate tells the upstream about the request.
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    /// The TCP peer is a configured trusted proxy: keep the chain it sent.
    pub peer_trusted: bool,
    pub host: &'a str,
    pub identity: Option<&'a str>,
}

/// Replaces every gate-only header with the gate's own values.
pub fn set_forwarded(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    let chain = fwd
        .peer_trusted
        .then(|| {
            let sent: Vec<&str> = headers
                .get_all(&XFF)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            sent.join(", ")
        })
        .filter(|chain| !chain.is_empty());
    for name in GATE_ONLY {
        headers.remove(name);
    }
    let client = fwd.client_ip.to_string();
    let xff = match chain {
        Some(chain) => format!("{chain}, {client}"),
        None => client,
    };
    // Both values come from parsed addresses / validated hosts: always valid header text.
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(XFF, v);
    }
    headers.insert(XF_PROTO, HeaderValue::from_static("https"));
    if let Ok(v) = HeaderValue::from_str(fwd.host) {
        headers.insert(XF_HOST, v);
    }
    if let Some(identity) = fwd.identity.and_then(|i| HeaderValue::from_str(i).ok()) {
        headers.insert(IDENTITY, identity);
    }
}

/// Drops the gate's own cookie from `Cookie`, so the upstream never sees the MAC.
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn spoofed_identity_and_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("x-portcullis-identity", "admin"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        let fwd = Forwarded {
            client_ip: "203.0.113.5".parse().unwrap(),
            peer_trusted: false,
            host: "ha.example",
            identity: None,
        };
        set_forwarded(&mut h, &fwd);
        assert_eq!(h["x-forwarded-for"], "203.0.113.5");
        assert!(h.get("x-portcullis-identity").is_none());
        assert!(h.get("x-real-ip").is_none() && h.get("forwarded").is_none());
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn trusted_peer_chain_is_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let fwd = Forwarded {
            client_ip: "10.0.0.3".parse().unwrap(),
            peer_trusted: true,
            host: "ha.example",
            identity: Some("alice"),
        };
        set_forwarded(&mut h, &fwd);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 10.0.0.2, 10.0.0.3");
        assert_eq!(h["x-portcullis-identity"], "alice");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn gate_cookie_is_removed_others_kept() {
        let mut h = map(&[("cookie", "a=1; __Host-portcullis=v1.x; b=2")]);
        strip_cookie(&mut h, "__Host-portcullis");
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = map(&[("cookie", "__Host-portcullis=v1.x")]);
        strip_cookie(&mut h, "__Host-portcullis");
        assert!(h.get("cookie").is_none());
    }
}
