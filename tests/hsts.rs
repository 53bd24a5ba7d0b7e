//! `hsts` on a route: every response for its hosts carries exactly one
//! `Strict-Transport-Security: max-age=31536000` — upstream responses on the HTTP/1.1 fast
//! path, hyper's HTTP/1.1 path and HTTP/2, and the gate's own answers (403, enrollment
//! pages, 502) — replacing any the upstream sent. Without it the gate adds nothing and
//! leaves the upstream's own alone.
//!
//! Upstreams record what they receive. The fast path forwards header names as the client
//! spelled them and hyper lowercases them, so a marker header's spelling at the upstream
//! shows which path served a request.

mod common;

use std::net::SocketAddr;

use common::wire::*;
use common::*;
use http::Request;
use portcullis::pki::IssuedCert;
use portcullis::proxy::Settings;

type R = TestResult;

const STS: &str = "strict-transport-security";
const OURS: &str = "max-age=31536000";
/// What the upstream sends on `/own-sts`: a policy the gate must not pass on beside its own.
const UPSTREAM_STS: &str = "max-age=60; includeSubDomains; preload";

/// The echo, with the upstream's own HSTS on `/own-sts…`.
fn upstream(req: &RawRequest) -> Reply {
    if !req.target.starts_with("/own-sts") {
        return Reply::echo(req);
    }
    let body = format!("{} {}", req.method, req.target);
    Reply::bytes(format!(
        "HTTP/1.1 200 OK\r\nStrict-Transport-Security: {UPSTREAM_STS}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// A gate on `ha.test` in front of `up_addr`, `hsts` as given, alice's certificate live.
struct Env {
    _pki: TestPki,
    up: RawUpstream,
    gate: Gate,
    alice: IssuedCert,
}

async fn env_with(hsts: bool, up_addr: Option<SocketAddr>) -> Env {
    let up = RawUpstream::start(upstream).await;
    let pki = TestPki::new();
    let alice = pki.client("alice-phone");
    let mut ha = route("ha", &[HOST], up_addr.unwrap_or(up.addr));
    ha.hsts = hsts;
    let gate = Gate::start(
        &pki,
        spec(vec![ha], vec![live("alice", &alice)]),
        Settings::default(),
    )
    .await;
    Env {
        _pki: pki,
        up,
        gate,
        alice,
    }
}

async fn env(hsts: bool) -> Env {
    env_with(hsts, None).await
}

/// How a request reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fast,
    Hyper,
}

/// A raw connection with alice's certificate already on `path`: for hyper, a first
/// request with a chunked body (never the fast path's) hands it over for good.
async fn wire_on(e: &Env, path: Path) -> TestResult<TlsWire> {
    let mut wire = Wire::connect(&e.gate.client().cert(&e.alice)).await?;
    if path == Path::Hyper {
        let to_hyper = format!(
            "POST /to-hyper HTTP/1.1\r\nHost: {HOST}\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        );
        let resp = wire.roundtrip("POST", to_hyper).await?;
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    Ok(wire)
}

/// Asserts that `path` forwarded `target` (from the spelling of `X-Marker` upstream).
fn assert_served_by(up: &RawUpstream, target: &str, path: Path) {
    let req = up
        .seen()
        .into_iter()
        .find(|r| r.target == target)
        .unwrap_or_else(|| panic!("{target} never reached the upstream: {:?}", up.targets()));
    let expected = match path {
        Path::Fast => "X-Marker",
        Path::Hyper => "x-marker",
    };
    assert!(
        req.headers.iter().any(|(n, _)| n == expected),
        "{target}: not served by {path:?}: {req:?}"
    );
}

/// GETs `target` on `path` with a marker; the response's HSTS values.
async fn sts_over_http1(e: &Env, path: Path, target: &str) -> TestResult<Vec<String>> {
    let mut wire = wire_on(e, path).await?;
    let resp = wire
        .roundtrip("GET", get_with(target, "X-Marker: 1\r\n"))
        .await?;
    assert_eq!(resp.status, 200, "{path:?} {target}: {resp:?}");
    assert_served_by(&e.up, target, path);
    Ok(resp.all(STS))
}

fn sts_of(resp: &Resp) -> Vec<String> {
    resp.headers
        .get_all(STS)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect()
}

async fn sts_over_h2(e: &Env, target: &str) -> TestResult<Vec<String>> {
    let mut conn = e.gate.client().cert(&e.alice).h2().open().await?;
    let resp = conn.send(Request::get(target).body(empty())?).await?;
    assert_eq!(resp.status, 200, "h2 {target}: {resp:?}");
    assert_eq!(resp.version, http::Version::HTTP_2);
    Ok(sts_of(&resp))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_responses_carry_one_hsts_header_on_every_path() -> R {
    let e = env(true).await;
    for path in [Path::Fast, Path::Hyper] {
        for target in [format!("/plain-{path:?}"), format!("/own-sts-{path:?}")] {
            assert_eq!(
                sts_over_http1(&e, path, &target).await?,
                [OURS],
                "{path:?} {target}"
            );
        }
    }
    for target in ["/plain-h2", "/own-sts-h2"] {
        assert_eq!(sts_over_h2(&e, target).await?, [OURS], "{target}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gates_own_answers_carry_hsts_too() -> R {
    let e = env(true).await;
    // No certificate: the 403 page, over HTTP/1.1 and HTTP/2.
    let denied = e.gate.client().get("/").await?;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(sts_of(&denied), [OURS]);
    let mut h2 = e.gate.client().h2().open().await?;
    let denied = h2.get("/").await?;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(sts_of(&denied), [OURS]);
    // An enrollment link (none are valid here): the gate's page, before admission.
    let link = e
        .gate
        .client()
        .get("/.well-known/portcullis/enroll/no-such-token")
        .await?;
    assert_eq!(link.status, 404, "{link:?}");
    assert_eq!(sts_of(&link), [OURS]);

    // Nothing listens upstream: the fast path's own 502, then hyper's.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let e = env_with(true, Some(closed)).await;
    let mut wire = Wire::connect(&e.gate.client().cert(&e.alice)).await?;
    let resp = wire.roundtrip("GET", get_bytes("/down")).await?;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(resp.all(STS), [OURS], "fast path 502");
    let mut conn = e.gate.client().cert(&e.alice).h2().open().await?;
    let resp = conn.get("/down").await?;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(sts_of(&resp), [OURS], "hyper 502");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hsts_the_gate_adds_none_and_passes_the_upstreams_own() -> R {
    let e = env(false).await;
    for path in [Path::Fast, Path::Hyper] {
        let plain = sts_over_http1(&e, path, &format!("/plain-{path:?}")).await?;
        assert!(plain.is_empty(), "{path:?}: {plain:?}");
        let own = sts_over_http1(&e, path, &format!("/own-sts-{path:?}")).await?;
        assert_eq!(own, [UPSTREAM_STS], "{path:?}");
    }
    assert!(sts_over_h2(&e, "/plain-h2").await?.is_empty());
    assert_eq!(sts_over_h2(&e, "/own-sts-h2").await?, [UPSTREAM_STS]);
    let denied = e.gate.client().get("/").await?;
    assert_eq!(denied.status, 403);
    assert!(sts_of(&denied).is_empty(), "{denied:?}");
    Ok(())
}
