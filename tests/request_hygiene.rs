//! What a client cannot smuggle to the upstream past the gate, on every path a request
//! takes: the HTTP/1.1 fast path, hyper's HTTP/1.1 path, HTTP/2, the bypass.
//!
//! - identity headers other proxies and forward-auth add-ons write (XFCC, `X-SSL-Client-*`,
//!   `X-Forwarded-User`, `Remote-User`, …), a route's `stripHeaders`;
//! - underscore spellings (`X_Portcullis_Identity`), dropped unless a route opts out, and
//!   then still dropped when they spell a protected name;
//! - `h2c` upgrades (`Upgrade: h2c`, `HTTP2-Settings`), and a 101 to anything but the
//!   WebSocket the client asked for;
//! - a malformed chunked request body: the client's fault, a 400.
//!
//! Upstreams record what they receive. The fast path forwards header names as the client
//! spelled them and hyper lowercases them, so a marker header's spelling at the upstream
//! shows which path served a request.

mod common;

use std::net::SocketAddr;

use common::wire::*;
use common::*;
use http::{Method, Request};
use portcullis::pki::IssuedCert;
use portcullis::proxy::Settings;
use portcullis::snapshot::{HeaderPattern, HeaderPolicy};

type R = TestResult;

/// A gate on `ha.test` in front of `up` (anonymous `POST /api/webhook/…` bypassed), with
/// alice's certificate live.
struct Env<U> {
    _pki: TestPki,
    up: U,
    gate: Gate,
    alice: IssuedCert,
}

async fn gate_over<U>(up: U, addr: SocketAddr, headers: HeaderPolicy) -> Env<U> {
    let pki = TestPki::new();
    let alice = pki.client("alice-phone");
    let mut ha = route("ha", &[HOST], addr);
    ha.bypass = vec![bypass("/api/webhook/", &[Method::POST])];
    ha.headers = headers;
    let spec = spec(vec![ha], vec![live("alice", &alice)]);
    let gate = Gate::start(&pki, spec, Settings::default()).await;
    Env {
        _pki: pki,
        up,
        gate,
        alice,
    }
}

/// Raw upstream: a 101 to `h2c` for any request offering it, a 101 to `h2c` for the
/// WebSocket handshake on `/ws-h2c`, a bare 101 for `/bare-101`, the echo otherwise.
fn h2c_upstream(req: &RawRequest) -> Reply {
    let switch = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    let offers_h2c = req
        .all("upgrade")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("h2c"));
    match req.target.as_str() {
        _ if offers_h2c => Reply::bytes(switch).then_close(),
        "/ws-h2c" => Reply::bytes(switch).then_close(),
        "/bare-101" => Reply::bytes("HTTP/1.1 101 Switching Protocols\r\n\r\n").then_close(),
        _ => Reply::echo(req),
    }
}

async fn raw_env(headers: HeaderPolicy) -> Env<RawUpstream> {
    let up = RawUpstream::start(h2c_upstream).await;
    let addr = up.addr;
    gate_over(up, addr, headers).await
}

/// How a request reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fast,
    Hyper,
}

/// A raw connection (with alice's certificate, or anonymous) already on `path`: for
/// hyper, a first request with a chunked body (never the fast path's) hands it over for
/// good.
async fn wire_on(e: &Env<RawUpstream>, path: Path, with_cert: bool) -> TestResult<TlsWire> {
    let client = match with_cert {
        true => e.gate.client().cert(&e.alice),
        false => e.gate.client(),
    };
    let mut wire = Wire::connect(&client).await?;
    if path == Path::Hyper {
        let to_hyper = format!(
            "POST /api/webhook/to-hyper HTTP/1.1\r\nHost: {HOST}\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        );
        let resp = wire.roundtrip("POST", to_hyper).await?;
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    Ok(wire)
}

/// The request the upstream received for `target`, asserting which path forwarded it
/// (from the spelling of the `X-Marker` header).
fn received(up: &RawUpstream, target: &str, path: Path) -> RawRequest {
    let req = up
        .seen()
        .into_iter()
        .find(|r| r.target == target)
        .unwrap_or_else(|| panic!("{target} never reached the upstream: {:?}", up.targets()));
    let marker: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-marker"))
        .map(|(n, _)| n.as_str())
        .collect();
    let expected = match path {
        Path::Fast => "X-Marker",
        Path::Hyper => "x-marker",
    };
    assert_eq!(
        marker,
        [expected],
        "{target}: not served by {path:?}: {req:?}"
    );
    req
}

/// Header lines a client might send to pass for someone else, as other proxies and
/// forward-auth add-ons write them; each must be gone at the upstream.
const IDENTITY_SPOOFS: &[(&str, &str)] = &[
    (
        "X-Forwarded-Client-Cert",
        "By=spiffe://x;Hash=1;Subject=\"CN=admin\"",
    ),
    ("X-SSL-Client-S-DN", "CN=admin"),
    ("X-SSL-Client-Verify", "SUCCESS"),
    ("SSL-Client-Cert", "-----BEGIN CERTIFICATE-----"),
    ("X-Client-Cert", "admin"),
    ("X-Client-Verify", "SUCCESS"),
    ("X-Forwarded-Tls-Client-Cert", "MIIB"),
    ("X-Forwarded-User", "admin"),
    ("X-Forwarded-Email", "admin@example.org"),
    ("X-Forwarded-Preferred-Username", "admin"),
    ("X-Forwarded-Groups", "admins"),
    ("Remote-User", "admin"),
    ("Remote-Name", "Admin"),
    ("Remote-Email", "admin@example.org"),
    ("Remote-Groups", "admins"),
    ("X-Remote-User", "admin"),
    ("X-Auth-Request-User", "admin"),
    ("X-Auth-Request-Email", "admin@example.org"),
    ("X-authentik-username", "admin"),
    // Underscore spellings of the gate's own headers and of the ones above.
    ("X_Portcullis_Identity", "admin"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("x_real_ip", "6.6.6.6"),
    ("X_Forwarded_Client_Cert", "Hash=1"),
    ("Remote_User", "admin"),
    ("X_Custom_Underscore", "1"),
];

fn spoof_lines() -> String {
    IDENTITY_SPOOFS
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect()
}

/// None of [`IDENTITY_SPOOFS`] (in any spelling) reached the upstream; the gate's own
/// headers did, and so did a harmless one.
fn assert_no_spoof_arrived(req: &RawRequest, identity: Option<&str>) {
    for (name, _) in IDENTITY_SPOOFS {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        let arrived: Vec<_> = req
            .headers
            .iter()
            .filter(|(n, _)| n.to_ascii_lowercase().replace('_', "-") == folded)
            .filter(|(n, _)| {
                !n.eq_ignore_ascii_case("x-forwarded-for")
                    && !n.eq_ignore_ascii_case("x-portcullis-identity")
            })
            .collect();
        assert!(
            arrived.is_empty(),
            "{name} reached the upstream: {:?}",
            req.headers
        );
    }
    assert!(
        req.headers.iter().all(|(n, _)| !n.contains('_')),
        "an underscore name reached the upstream: {:?}",
        req.headers
    );
    assert_eq!(
        req.all("x-portcullis-identity"),
        identity.map(str::to_owned).into_iter().collect::<Vec<_>>()
    );
    assert_eq!(
        req.all("x-forwarded-for"),
        ["127.0.0.1"],
        "{:?}",
        req.headers
    );
    assert_eq!(
        req.header("x-kept").as_deref(),
        Some("yes"),
        "{:?}",
        req.headers
    );
}

// ───────────────────────── identity headers ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_of_other_proxies_never_reach_the_upstream_over_http1() -> R {
    let e = raw_env(HeaderPolicy::default()).await;
    let spoofs = spoof_lines();
    for path in [Path::Fast, Path::Hyper] {
        // A device.
        let target = format!("/spoof-{path:?}");
        let mut wire = wire_on(&e, path, true).await?;
        let request = get_with(&target, &format!("{spoofs}X-Marker: 1\r\nX-Kept: yes\r\n"));
        let resp = wire.roundtrip("GET", request).await?;
        assert_eq!(resp.status, 200, "{path:?}: {resp:?}");
        assert_no_spoof_arrived(&received(&e.up, &target, path), Some("alice"));

        // Anonymous, through the bypass.
        let target = format!("/api/webhook/spoof-{path:?}");
        let mut wire = wire_on(&e, path, false).await?;
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: {HOST}\r\n{spoofs}X-Marker: 1\r\nX-Kept: yes\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        );
        let resp = wire.roundtrip("POST", request).await?;
        assert_eq!(resp.status, 200, "{path:?}: {resp:?}");
        assert_no_spoof_arrived(&received(&e.up, &target, path), None);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_of_other_proxies_never_reach_the_upstream_over_http2() -> R {
    let e = raw_env(HeaderPolicy::default()).await;
    for (client, target, identity) in [
        (e.gate.client().cert(&e.alice), "/spoof-h2", Some("alice")),
        (e.gate.client(), "/api/webhook/spoof-h2", None),
    ] {
        let mut conn = client.h2().open().await?;
        let mut req = Request::post(target)
            .header("x-marker", "1")
            .header("x-kept", "yes");
        for (name, value) in IDENTITY_SPOOFS {
            // HTTP/2 field names are lowercase on the wire.
            req = req.header(name.to_ascii_lowercase(), *value);
        }
        let resp = conn.send(req.body(full("{}"))?).await?;
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
        assert_no_spoof_arrived(&received(&e.up, target, Path::Hyper), identity);
    }
    Ok(())
}

// ───────────────────────── route stripHeaders, allowUnderscoreHeaders ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_strip_headers_and_the_underscore_opt_out() -> R {
    let policy = HeaderPolicy {
        strip: ["X-Home-*", "X-Other-User"]
            .iter()
            .map(|p| HeaderPattern::parse(p))
            .collect(),
        allow_underscores: true,
    };
    let e = raw_env(policy).await;
    let lines = "X-Home-User: admin\r\nx-home-role: owner\r\nX_Other_User: admin\r\n\
                 X_Custom: 1\r\nX_Portcullis_Identity: admin\r\nContent_Length: 5\r\n\
                 X_Forwarded_User: admin\r\nX-Marker: 1\r\nX-Kept: yes\r\n";
    let check = |req: &RawRequest| {
        for name in [
            "x-home-user",
            "x-home-role",
            "x_other_user",
            "x_portcullis_identity",
            "content_length",
            "x_forwarded_user",
        ] {
            assert!(
                !req.has(name),
                "{name} reached the upstream: {:?}",
                req.headers
            );
        }
        assert_eq!(
            req.header("x_custom").as_deref(),
            Some("1"),
            "{:?}",
            req.headers
        );
        assert_eq!(
            req.header("x-portcullis-identity").as_deref(),
            Some("alice")
        );
        assert_eq!(req.header("x-kept").as_deref(), Some("yes"));
    };
    for path in [Path::Fast, Path::Hyper] {
        let target = format!("/route-{path:?}");
        let mut wire = wire_on(&e, path, true).await?;
        let resp = wire.roundtrip("GET", get_with(&target, lines)).await?;
        assert_eq!(resp.status, 200, "{path:?}: {resp:?}");
        check(&received(&e.up, &target, path));
    }
    let mut conn = e.gate.client().cert(&e.alice).h2().open().await?;
    let mut req = Request::get("/route-h2");
    for line in lines.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(": ").expect("name: value");
        req = req.header(name.to_ascii_lowercase(), value);
    }
    let resp = conn.send(req.body(empty())?).await?;
    assert_eq!(resp.status, 200, "{resp:?}");
    check(&received(&e.up, "/route-h2", Path::Hyper));
    Ok(())
}

// ───────────────────────── h2c and other upgrades ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrades_never_reach_the_upstream() -> R {
    let e = raw_env(HeaderPolicy::default()).await;
    let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
               HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-Marker: 1\r\n";
    // A device, and anonymous through the bypass; `h2c` alone and offered beside others.
    for (with_cert, method, target, upgrade) in [
        (true, "GET", "/h2c", "h2c"),
        (false, "POST", "/api/webhook/h2c", "h2c"),
        (true, "GET", "/h2c-list", "foo, h2c"),
    ] {
        let mut wire = wire_on(&e, Path::Fast, with_cert).await?;
        let lines = h2c.replace("Upgrade: h2c", &format!("Upgrade: {upgrade}"));
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n{lines}Content-Length: 0\r\n\r\n"
        );
        let resp = wire.roundtrip(method, request).await?;
        // Forwarded as a plain request (the upstream would have switched on `h2c`).
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
        assert_eq!(resp.text(), format!("{method} {target}"));
        let seen = received(&e.up, target, Path::Hyper);
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                !seen.has(name),
                "{target}: {name} reached the upstream: {:?}",
                seen.headers
            );
        }
        // No tunnel: the connection still speaks HTTP/1.1 to the gate (and the gate still
        // decides: anonymous is refused off the bypass).
        let resp = wire.roundtrip("GET", get_bytes("/after-h2c")).await?;
        assert_eq!(resp.status, if with_cert { 200 } else { 403 }, "{resp:?}");
    }
    // `HTTP2-Settings` on its own is dropped too, on both paths.
    for path in [Path::Fast, Path::Hyper] {
        let target = format!("/settings-{path:?}");
        let mut wire = wire_on(&e, path, true).await?;
        let request = get_with(&target, "HTTP2-Settings: AAMAAABk\r\nX-Marker: 1\r\n");
        assert_eq!(wire.roundtrip("GET", request).await?.status, 200);
        let seen = received(&e.up, &target, path);
        assert!(!seen.has("http2-settings"), "{path:?}: {:?}", seen.headers);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_to_anything_but_the_websocket_asked_for_is_a_502() -> R {
    let e = raw_env(HeaderPolicy::default()).await;
    let websocket = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    // The client asked for a WebSocket; the upstream switched to h2c.
    let mut wire = wire_on(&e, Path::Fast, true).await?;
    let resp = wire
        .roundtrip("GET", get_with("/ws-h2c", websocket))
        .await?;
    assert_eq!(resp.status, 502, "{resp:?}");
    let seen = received_any(&e.up, "/ws-h2c");
    assert_eq!(seen.header("upgrade").as_deref(), Some("websocket"));
    // The client asked for nothing; the upstream switched anyway (hyper's path; the fast
    // path refuses a 101 it did not ask for as a malformed response already).
    for path in [Path::Fast, Path::Hyper] {
        let mut wire = wire_on(&e, path, true).await?;
        let resp = wire.roundtrip("GET", get_with("/bare-101", "")).await?;
        assert_eq!(resp.status, 502, "{path:?}: {resp:?}");
    }
    // A WebSocket the upstream accepts as a WebSocket still opens (tests/proxy.rs and
    // tests/http1_wire.rs carry frames through it).
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_carries_no_spoofed_identity_and_only_websocket() -> R {
    let up = Upstream::start().await;
    let addr = up.addr;
    let e = gate_over(up, addr, HeaderPolicy::default()).await;
    let mut wire = Wire::connect(&e.gate.client().cert(&e.alice)).await?;
    let request = get_with(
        "/api/websocket",
        &format!(
            "Upgrade: h2c, websocket\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             HTTP2-Settings: AAMAAABk\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{}",
            spoof_lines()
        ),
    );
    let resp = wire.roundtrip("GET", request).await?;
    assert_eq!(resp.status, 101, "{resp:?}");
    let seen = e.up.seen().into_iter().find(|s| s.path == "/api/websocket");
    let seen = seen.expect("the handshake reached the upstream");
    assert_eq!(
        seen.header("upgrade"),
        Some("websocket"),
        "{:?}",
        seen.headers
    );
    assert!(!seen.has("http2-settings"), "{:?}", seen.headers);
    for (name, _) in IDENTITY_SPOOFS {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        let arrived = seen
            .headers
            .keys()
            .filter(|n| !["x-forwarded-for", "x-portcullis-identity"].contains(&n.as_str()))
            .any(|n| n.replace('_', "-") == folded);
        assert!(!arrived, "{name} reached the upstream: {:?}", seen.headers);
    }
    assert_eq!(seen.header("x-portcullis-identity"), Some("alice"));
    Ok(())
}

/// The request the upstream received for `target`.
fn received_any(up: &RawUpstream, target: &str) -> RawRequest {
    up.seen()
        .into_iter()
        .find(|r| r.target == target)
        .unwrap_or_else(|| panic!("{target} never reached the upstream: {:?}", up.targets()))
}

// ───────────────────────── malformed chunked request bodies ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_request_bodies_are_the_clients_400() -> R {
    let up = Upstream::start().await;
    let addr = up.addr;
    let e = gate_over(up, addr, HeaderPolicy::default()).await;
    for (what, body) in [
        (
            "chunk size overflow",
            "FFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n",
        ),
        ("space before the size", " 3\r\nabc\r\n0\r\n\r\n"),
        ("bare LF after a chunk extension", "3;ext\nabc\r\n0\r\n\r\n"),
        ("not hex", "xyz\r\nabc\r\n0\r\n\r\n"),
    ] {
        for plain_first in [false, true] {
            let mut wire = Wire::connect(&e.gate.client().cert(&e.alice)).await?;
            if plain_first {
                // The fast path served this connection until the chunked request.
                let resp = wire.roundtrip("GET", get_bytes("/plain-first")).await?;
                assert_eq!(resp.status, 200, "{resp:?}");
            }
            let request = format!(
                "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            );
            let resp = wire.roundtrip("POST", request).await?;
            assert_eq!(resp.status, 400, "{what}: {resp:?}");
            assert!(
                resp.text().contains("malformed request body"),
                "{what}: {resp:?}"
            );
        }
    }
    // The gate and its upstream are fine.
    let resp = e.gate.client().cert(&e.alice).get("/still-up").await?;
    assert_eq!(resp.status, 200, "{resp:?}");
    Ok(())
}
