//! Header hygiene between the client and the upstream.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::foreign;
use crate::snapshot::HeaderPolicy;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1). `HTTP2-Settings`
/// belongs to an `h2c` upgrade (RFC 7540 §3.2.1), which the gate never passes on.
pub(super) const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("http2-settings"),
];

pub const IDENTITY: HeaderName = HeaderName::from_static("x-portcullis-identity");
const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XF_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XF_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers only the gate may set: a client sending them is trying to impersonate an
/// identity or a client address.
pub(super) const GATE_ONLY: [HeaderName; 7] = [
    IDENTITY,
    XFF,
    XF_PROTO,
    XF_HOST,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

/// Whether `name`, in any case, is a hop-by-hop header.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// Whether `name`, in any case, is a header only the gate may set.
pub fn is_gate_only(name: &str) -> bool {
    GATE_ONLY
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// Removes every header whose name `doomed` picks, looking at each name once: most
/// requests carry none, and then nothing is hashed or allocated.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers, and those named by `Connection`. For a WebSocket upgrade
/// the upstream sees `Connection: upgrade` and `Upgrade: websocket`, nothing else: any
/// other protocol the client offered (`h2c`, whose upgrade would let it talk HTTP/2
/// straight to the upstream, past admission) is dropped.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    remove_where(headers, |name| {
        HOP_BY_HOP.contains(name)
            || named.contains(name)
            || (!keep_upgrade && name == header::UPGRADE)
    });
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
    }
}

/// The only protocol the gate lets a connection upgrade to.
pub const WEBSOCKET: &str = "websocket";

/// Whether an `Upgrade` header's values offer `websocket` (RFC 9110 §7.8: a list of
/// `protocol[/version]`).
pub fn offers_websocket<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(WEBSOCKET))
}

/// Removes the client's headers that an upstream could read as an identity or a client
/// address (other proxies' and auth add-ons' headers, underscore spellings, the route's
/// `stripHeaders`): see [`super::foreign`].
pub fn strip_foreign(headers: &mut HeaderMap, policy: &HeaderPolicy) {
    remove_where(headers, |name| !foreign::forwardable(name.as_str(), policy));
}

/// What the gate tells the upstream about the request.
pub struct Forwarded<'a> {
    /// The client's address as header text (formatted once per connection).
    pub client: &'a HeaderValue,
    /// The TCP peer is a configured trusted proxy: keep the chain it sent.
    pub peer_trusted: bool,
    /// The routed host as header text.
    pub host: &'a HeaderValue,
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
    remove_where(headers, |name| GATE_ONLY.contains(name));
    let xff = match chain {
        // The chain passed `to_str` and the client is an address: valid header text.
        Some(chain) => HeaderValue::from_bytes(
            format!("{chain}, {}", fwd.client.to_str().unwrap_or_default()).as_bytes(),
        )
        .ok(),
        None => Some(fwd.client.clone()),
    };
    if let Some(xff) = xff {
        headers.insert(XFF, xff);
    }
    headers.insert(XF_PROTO, HeaderValue::from_static("https"));
    headers.insert(XF_HOST, fwd.host.clone());
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
            client: &HeaderValue::from_static("203.0.113.5"),
            peer_trusted: false,
            host: &HeaderValue::from_static("ha.example"),
            identity: None,
        };
        set_forwarded(&mut h, &fwd);
        assert_eq!(h["x-forwarded-for"], "203.0.113.5");
        assert!(h.get("x-portcullis-identity").is_none());
        assert!(h.get("x-real-ip").is_none() && h.get("forwarded").is_none());
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "ha.example");
    }

    #[test]
    fn trusted_peer_chain_is_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let fwd = Forwarded {
            client: &HeaderValue::from_static("10.0.0.3"),
            peer_trusted: true,
            host: &HeaderValue::from_static("ha.example"),
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
        let mut h = map(&[
            ("Keep-Alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["accept"]);
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn only_websocket_upgrades_pass_and_h2c_settings_never() {
        let mut h = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c, WebSocket"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ]);
        assert!(offers_websocket(h.get_all("upgrade")));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get_all("upgrade").iter().collect::<Vec<_>>(),
            ["websocket"]
        );
        assert!(h.get("http2-settings").is_none());
        let mut h = map(&[("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQAAP__")]);
        assert!(!offers_websocket(h.get_all("upgrade")));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn foreign_identity_and_underscore_headers_go() {
        let mut h = map(&[
            ("x-forwarded-client-cert", "Hash=1"),
            ("x_portcullis_identity", "admin"),
            ("remote-user", "admin"),
            ("accept", "*/*"),
        ]);
        strip_foreign(&mut h, &HeaderPolicy::default());
        assert_eq!(h.keys().collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn underscore_spellings_of_gate_and_hop_names_are_reserved() {
        for name in GATE_ONLY.iter().chain(&HOP_BY_HOP) {
            let underscored = name.as_str().replace('-', "_");
            if underscored != name.as_str() {
                let allowing = HeaderPolicy {
                    allow_underscores: true,
                    ..HeaderPolicy::default()
                };
                assert!(
                    !foreign::forwardable(&underscored, &allowing),
                    "{underscored}"
                );
            }
        }
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
