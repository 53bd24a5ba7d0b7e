//! The fast path's request planning under hostile input: whatever it forwards must be
//! one unambiguous request to the upstream.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::super::conn::{ConnInfo, Open};
use super::super::{Settings, Shared, upstream};
use super::request::{self, Head};
use super::response::{self, Framing};
use super::*;
use crate::admission::CookieMint;
use crate::snapshot::{CookiePolicy, LiveCert, Route, Snapshot};
use crate::telemetry::Metrics;

const HOST: &str = "ha.example";

fn snapshot() -> Snapshot {
    let route = Route {
        name: "ha".into(),
        hosts: vec![HOST.into()],
        upstream: "127.0.0.1:8123".parse().expect("authority"),
        selector: None,
        cookie: Some(CookiePolicy {
            name: "__Host-portcullis".into(),
            ttl: Duration::from_secs(3600),
        }),
        bypass: Vec::new(),
        headers: Default::default(),
        hsts: false,
    };
    let alice = LiveCert {
        identity: "alice".into(),
        serial_hex: "a1".into(),
        fingerprint: [1; 32],
        labels: Default::default(),
        not_after: std::time::SystemTime::now() + Duration::from_secs(86_400),
    };
    crate::snapshot::for_tests(route, vec![alice], vec![[7; 32]])
}

fn shared() -> Shared {
    let (_, snapshots) = tokio::sync::watch::channel(None);
    Shared {
        snapshots,
        settings: Settings::default(),
        metrics: Arc::new(Metrics::default()),
        upstream: upstream::Pool::new(Duration::from_secs(1)),
        h1_upstream: Arc::new(Pool::new(Duration::from_secs(1))),
        challenge_tls: None,
        shutdown: CancellationToken::new(),
    }
}

fn conn(shared: &Shared) -> ConnInfo {
    let slot = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("slot");
    let client = "203.0.113.5:40000".parse().expect("addr");
    ConnInfo {
        client,
        client_header: HeaderValue::from_static("203.0.113.5"),
        peer: client,
        client_cert: Some([1; 32]),
        sni: Some(HOST.into()),
        seen_hosts: None,
        open: Arc::new(Open::new(&shared.metrics.open_connections, slot)),
        cookie_mint: CookieMint::default(),
    }
}

/// Pieces a mutation splices in: line breaks, separators, and the headers that decide
/// framing and identity.
const PIECES: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b"\0",
    b"\x80",
    b"\xff",
    b"0",
    b"5",
    b"a",
    b"/",
    b"?",
    b"%2e",
    b"..",
    b"Host: ha.example\r\n",
    b"Host: other\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close, x-a\r\n",
    b"X-Portcullis-Identity: root\r\n",
    b"X-Forwarded-For: 1.2.3.4\r\n",
    b"Cookie: __Host-portcullis=v1.x; a=1\r\n",
    b"Upgrade: websocket\r\n",
    b"Expect: 100-continue\r\n",
    b"X_Portcullis_Identity: root\r\n",
    b"X-Forwarded-Client-Cert: Hash=1\r\n",
    b"Remote-User: root\r\n",
    b"HTTP2-Settings: AAMA\r\n",
];

const SEEDS: &[&str] = &[
    "GET /api/states?x=1 HTTP/1.1\r\nHost: ha.example\r\nAccept: */*\r\n\r\n",
    "POST /api/services HTTP/1.1\r\nHost: ha.example:8443\r\nContent-Length: 5\r\n\r\nhello",
    "GET / HTTP/1.1\r\nhost: HA.example\r\nCookie: a=1\r\nConnection: keep-alive\r\n\r\n",
];

/// `seed` with one to three splices of `pieces`, removed bytes or random bytes.
fn mutate(rng: &mut impl Rng, seed: &[u8], pieces: &[&[u8]]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        let at = rng.gen_range(0..=bytes.len());
        match rng.gen_range(0..3) {
            0 => {
                let piece = pieces[rng.gen_range(0..pieces.len())];
                bytes.splice(at..at, piece.iter().copied());
            }
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ if at < bytes.len() => bytes[at] = rng.r#gen(),
            _ => {}
        }
    }
    bytes
}

/// Every header of a head `out` the gate wrote for the upstream, which must parse whole.
fn upstream_headers(out: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(out);
    assert_eq!(
        parsed,
        Ok(httparse::Status::Complete(out.len())),
        "the upstream head must be one whole request: {:?}",
        String::from_utf8_lossy(out)
    );
    assert_eq!(req.version, Some(1));
    req.headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

#[test]
fn whatever_the_fast_path_forwards_is_one_unambiguous_request() {
    let snapshot = snapshot();
    let shared = shared();
    let conn = conn(&shared);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut out = Vec::new();
    let mut forwarded = 0;
    for round in 0..20_000 {
        let seed = SEEDS[round % SEEDS.len()].as_bytes();
        let input = mutate(&mut rng, seed, PIECES);
        let (forward, head_len) = match request::read(&input, &shared, &conn, &snapshot, &mut out) {
            Head::Forward(forward, len) => (forward, len),
            Head::Partial | Head::Fallback => continue,
        };
        forwarded += 1;
        let what = String::from_utf8_lossy(&input).into_owned();
        assert!(head_len <= input.len(), "{what:?}");
        let headers = upstream_headers(&out);
        let values = |name: &str| -> Vec<&[u8]> {
            headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
                .collect()
        };
        assert_eq!(values("host"), [HOST.as_bytes()], "{what:?}");
        for (name, _) in &headers {
            let spoof = ["x-forwarded-client-cert", "remote-user", "http2-settings"];
            assert!(
                !name.contains('_') && !spoof.contains(&name.as_str()),
                "{name} forwarded: {what:?}"
            );
        }
        assert!(values("transfer-encoding").is_empty(), "{what:?}");
        assert!(
            values("upgrade").is_empty() && values("connection").is_empty(),
            "{what:?}"
        );
        assert_eq!(
            values("x-portcullis-identity"),
            [b"alice".as_slice()],
            "{what:?}"
        );
        assert_eq!(
            values("x-forwarded-for"),
            [b"203.0.113.5".as_slice()],
            "{what:?}"
        );
        let lengths = values("content-length");
        match forward.body_len {
            0 => assert!(lengths.iter().all(|l| l.trim_ascii() == b"0"), "{what:?}"),
            n => assert_eq!(lengths, [n.to_string().as_bytes()], "{what:?}"),
        }
        assert!(lengths.len() <= 1, "{what:?}");
        for (_, cookie) in headers.iter().filter(|(n, _)| n == "cookie") {
            let cookie = String::from_utf8_lossy(cookie);
            let names = cookie
                .split(';')
                .map(|p| p.split('=').next().unwrap_or(p).trim());
            for name in names {
                assert_ne!(name, "__Host-portcullis", "{what:?}");
            }
        }
    }
    // The mutations must leave plenty of forwardable requests, or this proves nothing.
    assert!(forwarded > 2_000, "only {forwarded} forwarded");
}

const RESPONSE_PIECES: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b":",
    b",",
    b"0",
    b"5",
    b"a",
    b"\x80",
    b"Content-Length: 5\r\n",
    b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Connection: content-length\r\n",
    b"Connection: close\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
];

const RESPONSE_SEEDS: &[&str] = &[
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    "HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close",
];

#[test]
fn whatever_the_client_gets_is_framed_exactly_as_the_gate_reads_it() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut out = Vec::new();
    let mut finals = 0;
    for round in 0..20_000 {
        let seed = RESPONSE_SEEDS[round % RESPONSE_SEEDS.len()].as_bytes();
        let input = mutate(&mut rng, seed, RESPONSE_PIECES);
        let side = response::ClientSide {
            head_only: round % 7 == 0,
            set_cookie: None,
            hsts: round % 3 == 0,
            close: false,
        };
        let Ok(response::Head::Final(head)) = response::read(&input, &side, &mut out) else {
            continue;
        };
        finals += 1;
        let what = String::from_utf8_lossy(&input).into_owned();
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        assert_eq!(
            resp.parse(&out),
            Ok(httparse::Status::Complete(out.len())),
            "{what:?} → {:?}",
            String::from_utf8_lossy(&out)
        );
        let values = |name: &str| -> Vec<Vec<u8>> {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.to_vec())
                .collect()
        };
        let (lengths, codings) = (values("content-length"), values("transfer-encoding"));
        // The client reads the body exactly as the gate will send it (RFC 9112 §6.3).
        match head.framing {
            Framing::Length(n) => {
                assert_eq!(lengths, [n.to_string().into_bytes()], "{what:?}");
                assert!(codings.is_empty(), "{what:?}");
            }
            Framing::Chunked => {
                assert_eq!(codings, [b"chunked".to_vec()], "{what:?}");
                assert!(lengths.is_empty(), "{what:?}");
            }
            Framing::UntilClose => {
                assert!(lengths.is_empty() && codings.is_empty(), "{what:?}");
                assert_eq!(values("connection"), [b"close".to_vec()], "{what:?}");
            }
            Framing::Empty => {
                assert!(codings.is_empty() && lengths.len() <= 1, "{what:?}");
                let status = resp.code.unwrap_or(0);
                assert!(side.head_only || status == 204 || status == 304, "{what:?}");
            }
        }
    }
    assert!(finals > 2_000, "only {finals} final responses");
}

#[test]
fn content_length_is_digits_only() {
    assert_eq!(content_length(b"42"), Some(42));
    assert_eq!(content_length(b" 0 "), Some(0));
    for bad in [
        &b""[..],
        b"+1",
        b"-1",
        b"1,1",
        b"0x10",
        b"1 1",
        b"9999999999999999999",
    ] {
        assert_eq!(content_length(bad), None, "{bad:?}");
    }
}
