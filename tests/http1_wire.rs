//! The gate's HTTP/1.1 behaviour on the wire, pinned down byte for byte so that any
//! implementation of the data plane (hyper, or a hand-written fast path falling back to
//! hyper) must keep it: pipelining and message boundaries, request and response framings,
//! what a misbehaving upstream can and cannot do to the next request on a connection,
//! hop-by-hop and gate-only headers, request-target checks before the bypass, HTTP/1.0 and
//! `Expect: 100-continue`, an upgrade after plain requests, and slow or oversized heads.
//!
//! Clients write raw bytes over TLS and read responses one by one ([`Wire`]), so a
//! response with a byte too many or too few makes the next one unparsable. Upstreams are
//! either the echo [`Upstream`] (hyper) or a [`RawUpstream`] answering with canned bytes.
//!
//! Where today's gate falls short of what a careful proxy does, the test states the correct
//! behaviour and is `#[ignore]`d with the reason (`cargo test --test http1_wire --
//! --ignored` lists where it stands).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::wire::*;
use common::*;
use http::Method;
use portcullis::pki::IssuedCert;
use portcullis::proxy::Settings;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

type R = TestResult;

// ───────────────────────────── helpers ─────────────────────────────

/// A gate on `ha.test` in front of `up`, with alice's certificate live.
struct Env<U> {
    _pki: TestPki,
    up: U,
    gate: Gate,
    alice: IssuedCert,
}

impl<U> Env<U> {
    /// A raw connection presenting alice's certificate.
    async fn wire(&self) -> TlsWire {
        Wire::connect(&self.gate.client().cert(&self.alice))
            .await
            .expect("TLS with alice's certificate")
    }

    /// A raw connection with no client certificate.
    async fn anon(&self) -> TlsWire {
        Wire::connect(&self.gate.client())
            .await
            .expect("TLS without a certificate")
    }
}

async fn gate_over<U>(
    up: U,
    addr: SocketAddr,
    settings: Settings,
    adjust: impl FnOnce(&mut GateSpec),
) -> Env<U> {
    let pki = TestPki::new();
    let alice = pki.client("alice-phone");
    let mut spec = spec(
        vec![route("ha", &[HOST], addr)],
        vec![live("alice", &alice)],
    );
    adjust(&mut spec);
    let gate = Gate::start(&pki, spec, settings).await;
    Env {
        _pki: pki,
        up,
        gate,
        alice,
    }
}

/// The echo upstream behind a gate with `settings`.
async fn env_with(settings: Settings) -> Env<Upstream> {
    let up = Upstream::start().await;
    let addr = up.addr;
    gate_over(up, addr, settings, |_| {}).await
}

async fn env() -> Env<Upstream> {
    env_with(Settings::default()).await
}

/// `ha.test` lets anonymous `POST /api/webhook/…` through; a second route `other.test`
/// (same upstream) lets everything through, so only Host/SNI binding keeps requests off it.
async fn bypass_env() -> Env<Upstream> {
    let up = Upstream::start().await;
    let addr = up.addr;
    gate_over(up, addr, Settings::default(), |spec| {
        spec.routes[0].bypass = vec![bypass("/api/webhook/", &[Method::POST])];
        let mut other = route("other", &[OTHER_HOST], addr);
        other.bypass = vec![bypass("/", &[])];
        spec.routes.push(other);
    })
    .await
}

/// One worker, so every client connection shares one upstream pool: a poisoned pooled
/// connection would be handed to the very next request.
fn one_worker() -> Settings {
    Settings {
        workers: 1,
        ..Settings::default()
    }
}

/// A [`RawUpstream`] answering with [`scripted`] behind a one-worker gate.
async fn raw_env() -> Env<RawUpstream> {
    let up = RawUpstream::start(scripted).await;
    let addr = up.addr;
    gate_over(up, addr, one_worker(), |_| {}).await
}

/// Header and idle timeouts of one second.
fn timeouts() -> Settings {
    settings_with(|l| {
        l.handshake_timeout = Duration::from_secs(1);
        l.header_read_timeout = Duration::from_secs(1);
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Byte `i` of a test body: printable, never CR or LF, so it cannot look like a head.
fn body_byte(i: usize) -> u8 {
    b'a' + (i % 26) as u8
}

fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(body_byte).collect()
}

const JUNK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Junk: 1\r\n\r\nJUNK";

/// The raw upstream's script, by target. Anything unlisted gets a well-formed 200 whose
/// body is `"{method} {target}"`, so a client can tell which request a response answers.
fn scripted(req: &RawRequest) -> Reply {
    let head = |h: &str| format!("HTTP/1.1 200 OK\r\n{h}\r\n");
    let gap = Duration::from_millis(20);
    match (req.method.as_str(), req.target.as_str()) {
        // ── framings ──
        (_, "/cl") => {
            let body = body_of(20_000);
            let head = head("Content-Length: 20000\r\nContent-Type: text/plain\r\n");
            Reply::pieces(&[head.as_bytes(), &body[..7_000], &body[7_000..]], gap)
        }
        (_, "/chunked") => Reply::pieces(
            &[
                head("Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n").as_bytes(),
                b"5;ext=1\r\nhello\r\n",
                b"1;name=\"quoted;value\"\r\n \r\n",
                b"5\r\nworld\r\n00A\r\n0123456789\r\n",
                b"0\r\nX-Checksum: abc\r\n\r\n",
            ],
            gap,
        ),
        (_, "/close-delimited") => {
            let mut bytes = head("Content-Type: application/octet-stream\r\n").into_bytes();
            bytes.extend(body_of(100_000));
            Reply::bytes(bytes).then_close()
        }
        (_, "/http10-close-delimited") => {
            Reply::bytes("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold-style body")
                .then_close()
        }
        (_, "/204") => Reply::bytes("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"),
        (_, "/204-cl0") => Reply::bytes("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
        (_, "/304") => Reply::bytes(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n",
        ),
        ("HEAD", "/head") => {
            Reply::bytes(head("Content-Length: 1234\r\nContent-Type: text/plain\r\n"))
        }
        ("HEAD", "/head-chunked") => Reply::bytes(head("Transfer-Encoding: chunked\r\n")),
        (_, "/103") => Reply::bytes(
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        ),
        (_, "/100") => Reply::bytes(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        ),
        (_, "/interims") => Reply::pieces(
            &[
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
            ],
            gap,
        ),
        // ── responses that end their connection without closing it ──
        (_, "/http10-cl") => Reply {
            then: After::Hang,
            ..Reply::bytes("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        },
        (_, "/close-announced") => Reply {
            then: After::Hang,
            ..Reply::bytes("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        },
        // ── desync attempts: bytes after a complete response ──
        (_, "/extra") => Reply::bytes(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok{JUNK}"
        )),
        (_, "/extra-later") => Reply::pieces(
            &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                JUNK.as_bytes(),
            ],
            Duration::from_millis(50),
        ),
        (_, "/204-junk") => Reply::bytes(format!("HTTP/1.1 204 No Content\r\n\r\n{JUNK}")),
        ("HEAD", "/head-junk") => Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nJUNK"),
        // ── malformed framing ──
        (_, "/two-cl") => {
            Reply::bytes(head("Content-Length: 3\r\nContent-Length: 5\r\n") + "abcde")
        }
        (_, "/cl-list") => Reply::bytes(head("Content-Length: 3, 5\r\n") + "abcde"),
        (_, "/bad-cl") => Reply::bytes(head("Content-Length: abc\r\n") + "abc"),
        (_, "/negative-cl") => Reply::bytes(head("Content-Length: -1\r\n") + "abc"),
        (_, "/garbage") => Reply::bytes("HELLO WORLD\r\n\r\n"),
        (_, "/te-gzip") => {
            Reply::bytes(head("Transfer-Encoding: gzip\r\n") + "not-really-gzip").then_close()
        }
        // An upstream naming its own framing header as hop-by-hop.
        (_, "/cl-named-hop") => {
            Reply::bytes(head("Connection: content-length\r\nContent-Length: 5\r\n") + "hello")
        }
        (_, "/te-and-cl") => Reply::bytes(
            head("Transfer-Encoding: chunked\r\nContent-Length: 100\r\n")
                + "5\r\nhello\r\n0\r\n\r\n",
        ),
        (_, "/bad-chunk-size") => Reply::bytes(
            head("Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\nzz\r\nJUNK\r\n0\r\n\r\n",
        ),
        (_, "/te-and-short-cl") => Reply::bytes(
            head("Transfer-Encoding: chunked\r\nContent-Length: 2\r\n")
                + &format!("{:x}\r\nhello{JUNK}\r\n0\r\n\r\n", 5 + JUNK.len()),
        ),
        (_, "/bad-chunk-later") => Reply::pieces(
            &[
                (head("Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n").as_bytes(),
                b"zz\r\nJUNK\r\n0\r\n\r\n",
            ],
            Duration::from_millis(50),
        ),
        (_, "/bad-first-chunk") => {
            Reply::bytes(head("Transfer-Encoding: chunked\r\n") + "zz\r\nJUNK\r\n0\r\n\r\n")
        }
        (_, "/huge-chunk-size") => Reply::bytes(
            head("Transfer-Encoding: chunked\r\n") + "fffffffffffffffffff\r\nJUNK\r\n0\r\n\r\n",
        ),
        // ── upstream giving up ──
        (_, "/close") => Reply::close(),
        (_, "/truncated") => {
            Reply::bytes(head("Content-Length: 100\r\n") + "only part").then_close()
        }
        (_, "/head-only") => Reply::bytes(head("Content-Length: 5\r\n")).then_close(),
        // The same, the head well ahead of the failure.
        (_, "/truncated-later") => Reply::pieces(
            &[head("Content-Length: 100\r\n").as_bytes(), b"only part"],
            Duration::from_millis(50),
        )
        .then_close(),
        (_, "/head-only-later") => Reply::pieces(
            &[head("Content-Length: 5\r\n").as_bytes(), b""],
            Duration::from_millis(50),
        )
        .then_close(),
        // ── hop-by-hop headers from the upstream ──
        (_, "/hop") => Reply::bytes(
            "HTTP/1.1 200 OK\r\nConnection: X-Up-Secret\r\nX-Up-Secret: 1\r\n\
             Keep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\n\
             X-Up-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
        ),
        (_, "/up-close") => {
            Reply::bytes("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
                .then_close()
        }
        _ => Reply::echo(req),
    }
}

/// Asserts `resp` is the raw upstream's well-formed answer to `GET path`.
fn assert_answers(resp: &WireResponse, path: &str) {
    assert_eq!(resp.status, 200, "{path}: {resp:?}");
    assert!(resp.complete, "{path}: {resp:?}");
    assert_eq!(resp.text(), format!("GET {path}"), "{path}: {resp:?}");
}

/// `GET path` on `wire` must be answered by the upstream's response to it (no desync).
async fn next_request_is_answered(wire: &mut TlsWire, path: &str) {
    let resp = wire
        .roundtrip("GET", get_bytes(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path} on the same connection: {e}"));
    assert_answers(&resp, path);
}

/// `GET path` on `wire` must be answered by the echo upstream's account of it.
async fn next_echo(wire: &mut TlsWire, path: &str) {
    let resp = wire.roundtrip("GET", get_bytes(path)).await.expect(path);
    assert_eq!(resp.echo().path, path);
}

/// A client WebSocket text frame (masked, as clients must) carrying `payload` (< 126 bytes).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

// ───────────────────────── 1–3. request framing ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_one_write_are_answered_in_order() -> R {
    let e = env().await;
    let mut wire = e.wire().await;
    let paths = ["/one", "/two?x=2", "/three"];
    let batch: String = paths.iter().map(|p| get_bytes(p)).collect();
    wire.send(batch).await?;
    for (i, path) in paths.iter().enumerate() {
        let resp = wire.response("GET").await?;
        assert_eq!(
            resp.echo().path,
            *path,
            "response {i} answers the wrong request"
        );
    }
    assert_eq!(
        wire.liveness(Duration::from_millis(300)).await,
        Liveness::Open,
        "the connection stays open after pipelined requests"
    );
    let resp = wire.roundtrip("GET", get_bytes("/four")).await?;
    assert_eq!(resp.echo().path, "/four");
    let seen: Vec<String> = e.up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["/one", "/two?x=2", "/three", "/four"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_end_where_their_framing_says() -> R {
    let e = env().await;
    let mut wire = e.wire().await;
    // A body that looks like a request must stay a body.
    let body = format!("GET /inner HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes();
    let mut batch = post_bytes("/post", &body);
    batch.extend(get_bytes("/after").into_bytes());
    // No Content-Length, no Transfer-Encoding: a request without a body, so the next
    // bytes are the next request.
    batch.extend(format!("POST /bodiless HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes());
    batch.extend(get_bytes("/last").into_bytes());
    wire.send(&batch).await?;

    let post = wire.response("POST").await?.echo();
    assert_eq!(
        (post.method.as_str(), post.path.as_str()),
        ("POST", "/post")
    );
    assert_eq!(post.body_len, body.len() as u64);
    assert_eq!(post.body_sha256, sha256_hex(&body), "the exact body bytes");
    let after = wire.response("GET").await?.echo();
    assert_eq!((after.path.as_str(), after.body_len), ("/after", 0));
    let bodiless = wire.response("POST").await?.echo();
    assert_eq!(
        (bodiless.path.as_str(), bodiless.body_len),
        ("/bodiless", 0)
    );
    let last = wire.response("GET").await?.echo();
    assert_eq!(last.path, "/last");

    assert!(!e.up.saw_path("/inner"), "a body became a request");
    assert_eq!(e.up.seen().len(), 4, "{:?}", e.up.seen());

    // A body far larger than any read buffer, made of request heads, then a GET.
    let big: Vec<u8> = body.iter().copied().cycle().take(300_000).collect();
    let mut batch = post_bytes("/big", &big);
    batch.extend(get_bytes("/after-big").into_bytes());
    wire.send(&batch).await?;
    let echo = wire.response("POST").await?.echo();
    assert_eq!((echo.path.as_str(), echo.body_len), ("/big", 300_000));
    assert_eq!(echo.body_sha256, sha256_hex(&big));
    assert_eq!(wire.response("GET").await?.echo().path, "/after-big");
    assert!(!e.up.saw_path("/inner"), "a body became a request");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_trickled_request_bodies_arrive_whole() -> R {
    let e = env().await;
    let mut wire = e.wire().await;
    let gap = Duration::from_millis(100);

    let empty = wire
        .roundtrip("POST", post_bytes("/empty", b""))
        .await?
        .echo();
    assert_eq!((empty.method.as_str(), empty.body_len), ("POST", 0));

    // Content-Length: the head, then the body 7 bytes at a time.
    let body = body_of(35);
    let request = post_bytes("/trickle", &body);
    let head_len = request.len() - body.len();
    wire.send(&request[..head_len]).await?;
    wire.trickle(&body, 7, gap).await?;
    let echo = wire.response("POST").await?.echo();
    assert_eq!(echo.path, "/trickle");
    assert_eq!(echo.body_len, 35);
    assert_eq!(echo.body_sha256, sha256_hex(&body));

    // Chunked, with an extension, one chunk per write, the next request glued to the end.
    wire.send(format!(
        "POST /chunked HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ))
    .await?;
    for piece in ["4;ext=x\r\nwiki\r\n", "5\r\npedia\r\n"] {
        tokio::time::sleep(gap).await;
        wire.send(piece).await?;
    }
    tokio::time::sleep(gap).await;
    wire.send(format!("0\r\n\r\n{}", get_bytes("/after-chunked")))
        .await?;
    let echo = wire.response("POST").await?.echo();
    assert_eq!(echo.path, "/chunked");
    assert_eq!(echo.body_len, 9);
    assert_eq!(echo.body_sha256, sha256_hex(b"wikipedia"));
    assert_eq!(wire.response("GET").await?.echo().path, "/after-chunked");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_plain_chunked_and_expect_requests_keep_their_order_and_bytes() -> R {
    let e = env().await;
    let mut wire = e.wire().await;
    // Requests of every kind in one write, so whatever reads the first one has already
    // buffered the rest: none may be lost, reordered or merged.
    let mut batch = get_bytes("/a");
    batch += &format!(
        "POST /b HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
         4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"
    );
    batch += &get_bytes("/c");
    batch += &format!(
        "POST /d HTTP/1.1\r\nHost: {HOST}\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
    );
    batch += &get_bytes("/e");
    wire.send(batch).await?;
    let mut got = Vec::new();
    for method in ["GET", "POST", "GET", "POST", "GET"] {
        let (_, resp) = wire.final_response(method).await?;
        let echo = resp.echo();
        got.push((echo.path, echo.body_len, echo.body_sha256));
    }
    let empty = sha256_hex(b"");
    assert_eq!(
        got,
        [
            ("/a".to_owned(), 0, empty.clone()),
            ("/b".to_owned(), 9, sha256_hex(b"wikipedia")),
            ("/c".to_owned(), 0, empty.clone()),
            ("/d".to_owned(), 3, sha256_hex(b"abc")),
            ("/e".to_owned(), 0, empty),
        ]
    );
    next_echo(&mut wire, "/f").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_is_decided_per_request_on_a_pipelined_connection() -> R {
    let e = env().await;
    let earned = e.gate.client().cert(&e.alice).get("/").await?;
    let cookie = earned
        .gate_cookie()
        .expect("a certificate request earns a cookie");
    let with = |path: &str| get_with(path, &format!("Cookie: {}\r\n", cookie_header(&cookie)));
    // No certificate on this connection: each request stands on its own cookie.
    let mut wire = e.anon().await;
    wire.send(with("/x") + &get_bytes("/denied") + &with("/z"))
        .await?;
    let x = wire.response("GET").await?;
    assert_eq!(x.echo().path, "/x");
    assert_eq!(x.echo().header("x-portcullis-identity"), Some("alice"));
    let denied = wire.response("GET").await?;
    assert_eq!(denied.status, 403, "{denied:?}");
    let z = wire.response("GET").await?;
    assert_eq!(z.echo().path, "/z");
    // And the other way round: a denied request first.
    wire.send(get_bytes("/denied-2") + &with("/w")).await?;
    assert_eq!(wire.response("GET").await?.status, 403);
    assert_eq!(wire.response("GET").await?.echo().path, "/w");
    let seen: Vec<String> = e.up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["/", "/x", "/z", "/w"]);
    Ok(())
}

// ───────────────────────── 4. upstream response framings ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_content_length_body_is_passed_exactly() -> R {
    let e = raw_env().await;
    let mut wire = e.wire().await;
    let resp = wire.roundtrip("GET", get_bytes("/cl")).await?;
    assert_eq!(resp.status, 200);
    assert!(resp.complete);
    assert_eq!(resp.body, body_of(20_000));
    assert_eq!(resp.header("content-length").as_deref(), Some("20000"));
    next_request_is_answered(&mut wire, "/next").await;
    assert_eq!(e.up.connections(), 1, "the upstream connection was reused");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_chunked_body_with_extensions_and_trailer_is_passed_whole() -> R {
    let e = raw_env().await;
    let mut wire = e.wire().await;
    let resp = wire.roundtrip("GET", get_bytes("/chunked")).await?;
    assert_eq!(resp.status, 200);
    assert!(resp.complete, "{resp:?}");
    assert_eq!(resp.text(), "hello world0123456789");
    // The trailer may be forwarded as a trailer or dropped; never part of the body.
    assert!(!resp.text().contains("Checksum"), "{resp:?}");
    next_request_is_answered(&mut wire, "/next").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_delimited_body_arrives_whole() -> R {
    let e = raw_env().await;
    for (path, expected) in [
        ("/close-delimited", body_of(100_000)),
        ("/http10-close-delimited", b"old-style body".to_vec()),
    ] {
        let mut wire = e.wire().await;
        let resp = wire.roundtrip("GET", get_bytes(path)).await?;
        assert_eq!(resp.status, 200, "{path}");
        assert!(resp.complete, "{path}: {resp:?}");
        assert_eq!(resp.body.len(), expected.len(), "{path}");
        assert!(resp.body == expected, "{path}: body differs");
        // Either the gate delimits it by closing too, or it framed it (chunked) and the
        // connection goes on.
        match resp.framing {
            Framing::Close => assert_eq!(
                wire.liveness(Duration::from_secs(1)).await,
                Liveness::Closed
            ),
            _ => next_request_is_answered(&mut wire, "/next").await,
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_that_announce_their_end_are_not_reused() -> R {
    // An HTTP/1.0 response without keep-alive, or `Connection: close`, ends that upstream
    // connection even if the socket stays open (this upstream then never answers on it):
    // a gate reusing it would leave the next request hanging.
    let e = raw_env().await;
    let mut wire = e.wire().await;
    for path in ["/http10-cl", "/close-announced"] {
        let resp = wire.roundtrip("GET", get_bytes(path)).await?;
        assert_eq!((resp.status, resp.text().as_str()), (200, "ok"), "{path}");
        next_request_is_answered(&mut wire, &format!("/next-after{path}")).await;
    }
    // Each follow-up went out on a connection other than the one that ended.
    let conns: Vec<usize> = e.up.seen().iter().map(|r| r.connection).collect();
    assert_eq!(conns.len(), 4, "{:?}", e.up.targets());
    assert!(conns[1] != conns[0] && conns[3] != conns[2], "{conns:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_204_and_304_carry_no_body_even_with_a_content_length() -> R {
    let e = raw_env().await;
    let mut wire = e.wire().await;
    for (path, status) in [("/204", 204), ("/204-cl0", 204), ("/304", 304)] {
        // Pipelined with the next request: a body byte too many would corrupt its answer.
        wire.send(get_bytes(path) + &get_bytes("/next")).await?;
        let resp = wire.response("GET").await?;
        assert_eq!(resp.status, status, "{path}: {resp:?}");
        assert!(resp.body.is_empty(), "{path}: {resp:?}");
        assert!(!resp.has("transfer-encoding"), "{path}: {resp:?}");
        let next = wire.response("GET").await?;
        assert_answers(&next, "/next");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_response_keeps_its_length_and_sends_no_body() -> R {
    let e = raw_env().await;
    let mut wire = e.wire().await;
    for path in ["/head", "/head-chunked"] {
        let head = format!("HEAD {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        wire.send(head + &get_bytes("/next")).await?;
        let resp = wire.response("HEAD").await?;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        if path == "/head" {
            assert_eq!(
                resp.header("content-length").as_deref(),
                Some("1234"),
                "a HEAD response says how long the GET body would be: {resp:?}"
            );
        }
        assert_answers(&wire.response("GET").await?, "/next");
    }
    let methods: Vec<String> = e.up.seen().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["HEAD", "GET", "HEAD", "GET"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_followed_by_the_right_final_response() -> R {
    let e = raw_env().await;
    let mut wire = e.wire().await;
    for path in ["/103", "/100", "/interims"] {
        wire.send(get_bytes(path)).await?;
        let (interim, resp) = wire.final_response("GET").await?;
        assert!(
            interim.iter().all(|s| [100, 103].contains(s)),
            "{path}: {interim:?}"
        );
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.text(), "final", "{path}");
        next_request_is_answered(&mut wire, "/next").await;
    }
    Ok(())
}

// ───────────────────────── 5–6. upstreams that misbehave ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_upstream_sends_beyond_its_response_never_answer_the_next_request() -> R {
    let e = raw_env().await;
    for (method, path, status) in [
        ("GET", "/extra", 200),
        ("GET", "/extra-later", 200),
        ("GET", "/204-junk", 204),
        ("HEAD", "/head-junk", 200),
    ] {
        let mut wire = e.wire().await;
        let request = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        let resp = wire.roundtrip(method, request).await?;
        assert_eq!(resp.status, status, "{path}: {resp:?}");
        if path.starts_with("/extra") {
            assert_eq!(resp.text(), "ok", "{path}");
        }
        // Let late junk arrive while the upstream connection sits idle in the pool.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next = format!("/next-after{path}");
        next_request_is_answered(&mut wire, &next).await;
        // A fresh client connection (same worker, same pool) is not fooled either.
        next_request_is_answered(&mut e.wire().await, &next).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upstream_framing_is_a_502_and_the_gate_keeps_serving() -> R {
    let e = raw_env().await;
    // RFC 9112 §6.3: an invalid Content-Length in a response is unrecoverable, and a proxy
    // must answer 502 rather than guess; so is a response that is not HTTP at all.
    for path in ["/two-cl", "/cl-list", "/bad-cl", "/negative-cl", "/garbage"] {
        let mut wire = e.wire().await;
        let resp = wire.roundtrip("GET", get_bytes(path)).await?;
        assert_eq!(resp.status, 502, "{path}: {resp:?}");
        assert!(
            !resp.text().contains("abc"),
            "{path}: upstream bytes leaked"
        );
        if wire.liveness(Duration::from_millis(100)).await == Liveness::Open {
            next_request_is_answered(&mut wire, "/next").await;
        }
        next_request_is_answered(&mut e.wire().await, "/next").await;
    }
    // A final coding other than chunked makes a response close-delimited (§6.3 item 4);
    // a proxy may also refuse it. Either way no desync.
    let mut wire = e.wire().await;
    let resp = wire.roundtrip("GET", get_bytes("/te-gzip")).await?;
    match resp.status {
        502 => next_request_is_answered(&mut wire, "/next").await,
        200 => {
            assert!(resp.complete, "{resp:?}");
            assert_eq!(resp.text(), "not-really-gzip");
            if resp.framing != Framing::Close {
                next_request_is_answered(&mut wire, "/next").await;
            }
        }
        other => panic!("expected 502 or the body, got {other}: {resp:?}"),
    }
    next_request_is_answered(&mut e.wire().await, "/next").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_transfer_encoding_overrides_its_content_length() -> R {
    let e = raw_env().await;
    // Chunked wins over Content-Length; a proxy forwarding such a response must drop the
    // Content-Length (or refuse it with a 502). Pipelined with the next request, so a
    // body framed by the wrong header would show up as the next response.
    let mut failures = Vec::new();
    for (path, body) in [
        ("/te-and-cl", "hello".to_owned()),
        ("/te-and-short-cl", format!("hello{JUNK}")),
    ] {
        let mut wire = e.wire().await;
        wire.send(get_bytes(path) + &get_bytes("/next")).await?;
        let resp = wire.response("GET").await?;
        let ambiguous = resp.has("content-length") && resp.has("transfer-encoding");
        match resp.status {
            502 => {}
            200 if resp.complete && resp.text() == body && !ambiguous => {}
            _ => failures.push(format!("{path}: {resp:?}")),
        }
        match wire.response("GET").await {
            Ok(next) if next.status == 200 && next.text() == "GET /next" => {}
            // Closing after an upstream error is fine; answering with junk is not.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {}
            next => failures.push(format!("{path}, then GET /next: {next:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_served_by_the_hyper_fallback_keep_the_same_upstream_framing_rules() -> R {
    let e = raw_env().await;
    // A chunked request body is never forwarded by the fast path: these go through hyper.
    let chunked_post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nabc\r\n0\r\n\r\n"
        )
    };
    let mut wire = e.wire().await;
    let resp = wire.roundtrip("POST", chunked_post("/te-gzip")).await?;
    assert_eq!(resp.status, 502, "an undeclared coding: {resp:?}");
    let resp = wire.roundtrip("POST", chunked_post("/te-and-cl")).await?;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.complete && !resp.has("content-length"), "{resp:?}");
    assert_eq!(resp.text(), "hello");
    next_request_is_answered(&mut wire, "/next").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cannot_strip_the_framing_the_client_needs() -> R {
    let e = raw_env().await;
    let mut wire = e.wire().await;
    // `Connection: content-length` would drop the length the client frames the body by,
    // leaving it to wait for a close that never comes.
    wire.send(get_bytes("/cl-named-hop") + &get_bytes("/next"))
        .await?;
    let resp = wire.response("GET").await?;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.complete, "{resp:?}");
    assert_eq!(resp.text(), "hello");
    let next = wire.response("GET").await?;
    assert_answers(&next, "/next");
    Ok(())
}

/// An upstream that answers `413` as soon as it has a request head and then reads
/// nothing more, holding its connections open: an upload it refuses.
async fn refusing_upstream() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large";
                let _ = tcp.write_all(answer.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_before_the_body_is_done_is_heard() -> R {
    let addr = refusing_upstream().await?;
    let e = gate_over((), addr, one_worker(), |_| {}).await;
    let mut wire = e.wire().await;
    // 8 MiB announced, 256 KiB sent: the rest would never be read upstream.
    let head = format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 8388608\r\n\r\n");
    wire.send(head.into_bytes()).await?;
    wire.send(body_of(256 * 1024)).await?;
    let resp = tokio::time::timeout(Duration::from_secs(5), wire.response("POST"))
        .await
        .map_err(|_| "the upstream's early answer never reached the client")??;
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.text(), "too large");
    // The rest of the body is still on its way: this connection cannot carry more.
    assert!(resp.says_close(), "{resp:?}");
    assert_eq!(
        wire.liveness(Duration::from_secs(2)).await,
        Liveness::Closed
    );
    Ok(())
}

/// The client's view of a response whose upstream failed while it was under way: a 502,
/// or the head followed by a body cut short and the connection closed — never a response
/// that looks complete, never upstream junk, never silence. `Err` says what went wrong.
async fn check_502_or_cut(wire: &mut TlsWire, path: &str) -> Result<(), String> {
    wire.send(get_bytes(path))
        .await
        .map_err(|e| e.to_string())?;
    let resp = wire
        .response("GET")
        .await
        .map_err(|err| format!("{path}: no response at all: {err}"))?;
    match resp.status {
        502 if resp.complete => Ok(()),
        200 if resp.complete => Err(format!("{path}: a broken body passed as whole: {resp:?}")),
        200 if resp.text().contains("JUNK") => Err(format!("{path}: junk forwarded: {resp:?}")),
        200 => match wire.liveness(Duration::from_secs(1)).await {
            Liveness::Closed => Ok(()),
            other => Err(format!("{path}: cut body, connection {other:?}")),
        },
        _ => Err(format!("{path}: {resp:?}")),
    }
}

/// Runs [`check_502_or_cut`] on each path (each on a fresh connection, each followed by a
/// request proving the gate still serves) and fails listing every path that went wrong.
async fn assert_502_or_cut(e: &Env<RawUpstream>, paths: &[&str]) {
    let mut failures = Vec::new();
    for path in paths {
        if let Err(failure) = check_502_or_cut(&mut e.wire().await, path).await {
            failures.push(failure);
        }
        next_request_is_answered(&mut e.wire().await, "/next").await;
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_a_response_is_a_502() -> R {
    let e = raw_env().await;
    let mut wire = e.wire().await;
    let resp = wire.roundtrip("GET", get_bytes("/close")).await?;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(resp.complete);
    // The client connection goes on.
    next_request_is_answered(&mut wire, "/next").await;
    assert!(e.up.targets().contains(&"/close".to_owned()));
    // (No upstream response timeout exists, so an upstream that never answers is not
    // pinned here.)
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_body_failing_after_its_head_is_cut_short_for_the_client() -> R {
    let e = raw_env().await;
    let paths = [
        "/truncated",
        "/truncated-later",
        "/head-only-later",
        "/bad-chunk-size",
        "/bad-chunk-later",
    ];
    assert_502_or_cut(&e, &paths).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failing_before_anything_was_forwarded_is_a_502() -> R {
    let e = raw_env().await;
    let paths = ["/head-only", "/bad-first-chunk", "/huge-chunk-size"];
    assert_502_or_cut(&e, &paths).await;
    Ok(())
}

// ───────────────────────── 7. connection management ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_close_gets_one_response_then_the_close() -> R {
    let e = env().await;
    let mut wire = e.wire().await;
    // A request pipelined after `Connection: close` is never served.
    wire.send(get_with("/last", "Connection: close\r\n") + &get_bytes("/never"))
        .await?;
    let resp = wire.response("GET").await?;
    assert_eq!(resp.echo().path, "/last");
    assert!(
        resp.says_close(),
        "the response announces the close: {resp:?}"
    );
    assert_eq!(
        wire.liveness(Duration::from_secs(2)).await,
        Liveness::Closed
    );
    assert!(!e.up.saw_path("/never"));
    assert!(!e.up.seen()[0].has("connection"), "{:?}", e.up.seen());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_connection_named_headers_stay_on_their_hop() -> R {
    let e = raw_env().await;
    let mut wire = e.wire().await;
    let request = get_with(
        "/hop",
        "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nConnection: X-Other\r\n\
         X-Other: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
         TE: trailers\r\nUpgrade: h2c\r\nX-Kept: yes\r\n",
    );
    let resp = wire.roundtrip("GET", request).await?;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "ok");

    let seen = &e.up.seen()[0];
    for name in [
        "connection",
        "x-secret",
        "x-other",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(
            !seen.has(name),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header("x-kept").as_deref(), Some("yes"));

    for name in ["x-up-secret", "keep-alive", "proxy-connection"] {
        assert!(!resp.has(name), "{name} reached the client: {resp:?}");
    }
    for value in resp.all("connection") {
        assert!(
            !value.to_ascii_lowercase().contains("x-up-secret"),
            "{resp:?}"
        );
    }
    assert_eq!(resp.header("x-up-kept").as_deref(), Some("yes"));

    // The upstream closing its own connection does not close the client's.
    let resp = wire.roundtrip("GET", get_bytes("/up-close")).await?;
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    next_request_is_answered(&mut wire, "/next").await;
    Ok(())
}

// ───────────────────────── 8. header hygiene ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_host_headers_are_a_400() -> R {
    // RFC 9112 §3.2: a server MUST answer 400 to a request with more than one Host line.
    let e = bypass_env().await;
    for hosts in [
        format!("Host: {HOST}\r\nHost: {HOST}\r\n"),
        format!("Host: {HOST}\r\nHost: {OTHER_HOST}\r\n"),
        format!("Host: {OTHER_HOST}\r\nHost: {HOST}\r\n"),
    ] {
        let request = format!("GET /dup HTTP/1.1\r\n{hosts}\r\n");
        let resp = e.wire().await.roundtrip("GET", request).await?;
        assert_eq!(resp.status, 400, "{hosts:?}: {resp:?}");
    }
    assert!(e.up.seen().is_empty(), "{:?}", e.up.seen());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_absolute_form_targets_are_bound_to_the_sni_route() -> R {
    let e = bypass_env().await;
    // Host naming the other route on a connection opened for ha.test.
    let request = format!("GET /misrouted HTTP/1.1\r\nHost: {OTHER_HOST}\r\n\r\n");
    let resp = e.wire().await.roundtrip("GET", request).await?;
    assert_eq!(resp.status, 421, "{resp:?}");
    // Absolute form naming the other route, whatever Host says.
    let request = format!("GET https://{OTHER_HOST}/misrouted HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let resp = e.wire().await.roundtrip("GET", request).await?;
    assert_eq!(resp.status, 421, "{resp:?}");
    assert!(!e.up.saw_path_containing("misrouted"), "{:?}", e.up.seen());

    // Absolute form for this route: the authority wins over Host (RFC 9112 §3.2.2), and the
    // upstream gets origin form and this route's Host.
    let mut wire = e.wire().await;
    for (target, host) in [
        (format!("https://{HOST}/abs?q=1"), HOST),
        (format!("https://{HOST}:443/abs-port"), HOST),
        (format!("https://{HOST}/abs-other-host"), OTHER_HOST),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let echo = wire.roundtrip("GET", request).await?.echo();
        let path = target.split_once(".test").unwrap().1;
        let path = path.strip_prefix(":443").unwrap_or(path);
        assert_eq!(echo.path, path, "{target}");
        assert_eq!(echo.header("host"), Some(HOST), "{target}");
        assert_eq!(echo.header("x-portcullis-identity"), Some("alice"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_cookie_is_removed_from_every_cookie_line() -> R {
    let e = env().await;
    let earned = e.gate.client().cert(&e.alice).get("/").await?;
    let cookie = earned
        .gate_cookie()
        .expect("a certificate request earns a cookie");
    let gate = cookie_header(&cookie);
    for (lines, kept) in [
        (
            format!("Cookie: a=1; {gate}\r\nCookie: b=2\r\n"),
            &["a=1", "b=2"][..],
        ),
        (
            format!("Cookie: a=1\r\nCookie: b=2; {gate}; c=3\r\n"),
            &["a=1", "b=2", "c=3"][..],
        ),
        (format!("cookie: {gate}\r\nCOOKIE: d=4\r\n"), &["d=4"][..]),
        // Headers between and after the cookie lines stay lines of their own.
        (
            format!("Cookie: a=1; {gate}\r\nX-After: yes\r\nCookie: b=2\r\nX-Last: 1\r\n"),
            &["a=1", "b=2"][..],
        ),
    ] {
        // No certificate: the gate cookie is what admits these.
        let resp = e
            .anon()
            .await
            .roundtrip("GET", get_with("/cookies", &lines))
            .await?;
        let echo = resp.echo();
        assert_eq!(echo.header("x-portcullis-identity"), Some("alice"));
        let forwarded = echo.headers.get("cookie").cloned().unwrap_or_default();
        let joined = forwarded.join("; ");
        assert!(!joined.contains(COOKIE_NAME), "{lines:?} → {forwarded:?}");
        assert!(!joined.contains(&cookie), "{lines:?} → {forwarded:?}");
        assert!(
            forwarded.iter().all(|v| !v.trim().is_empty()),
            "an emptied Cookie line was forwarded: {forwarded:?}"
        );
        assert_eq!(joined, kept.join("; "), "{lines:?} → {forwarded:?}");
        if lines.contains("X-After") {
            assert_eq!(echo.header("x-after"), Some("yes"), "{:?}", echo.headers);
            assert_eq!(echo.header("x-last"), Some("1"), "{:?}", echo.headers);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_gate_headers_in_any_case_are_replaced() -> R {
    let e = bypass_env().await;
    let spoofs = "x-PORTCULLIS-identity: admin\r\nX-Portcullis-Identity: root\r\n\
                  X-FORWARDED-for: 6.6.6.6\r\nx-forwarded-PROTO: http\r\n\
                  X-Forwarded-Host: evil.test\r\nX-REAL-IP: 6.6.6.6\r\nFORWARDED: for=6.6.6.6\r\n";
    // A device.
    let echo = e
        .wire()
        .await
        .roundtrip("GET", get_with("/spoof", spoofs))
        .await?
        .echo();
    assert_eq!(echo.header("x-portcullis-identity"), Some("alice"));
    assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    assert_eq!(echo.header("x-forwarded-host"), Some(HOST));
    assert!(!echo.has("x-real-ip") && !echo.has("forwarded"), "{echo:?}");
    // Anonymous, through the bypass.
    let request = format!(
        "POST /api/webhook/spoof HTTP/1.1\r\nHost: {HOST}\r\n{spoofs}Content-Length: 2\r\n\r\n{{}}"
    );
    let echo = e.anon().await.roundtrip("POST", request).await?.echo();
    assert!(!echo.has("x-portcullis-identity"), "{echo:?}");
    assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(!echo.has("x-real-ip") && !echo.has("forwarded"), "{echo:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_header_lines_are_a_400_and_never_forwarded() -> R {
    let e = env().await;
    for (what, lines) in [
        // RFC 9112 §5.1: whitespace before the colon MUST be rejected with 400.
        ("space before colon", "X-Portcullis-Identity : admin\r\n"),
        // §5.2: obsolete line folding outside message/http is rejected (or unfolded).
        ("obs-fold", "X-Folded: a\r\n b\r\n"),
        ("no colon", "Not a header\r\n"),
        ("NUL in a value", "X-Nul: a\0b\r\n"),
        ("CR in a value", "X-Cr: a\rb\r\n"),
    ] {
        let resp = e
            .wire()
            .await
            .roundtrip("GET", get_with("/malformed", lines))
            .await?;
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
    }
    for (what, line) in [
        ("two spaces", "GET  /malformed HTTP/1.1"),
        ("no version", "GET /malformed"),
        ("lowercase version", "GET /malformed http/1.1"),
        ("trailing junk", "GET /malformed HTTP/1.1 x"),
    ] {
        let request = format!("{line}\r\nHost: {HOST}\r\n\r\n");
        let resp = e.wire().await.roundtrip("GET", request).await?;
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
    }
    assert!(e.up.seen().is_empty(), "{:?}", e.up.seen());
    Ok(())
}

// ───────────────────────── 9. request targets before the bypass ─────────────────────────

/// An anonymous `POST target` with a two-byte body, as raw bytes.
fn anon_post(target: &[u8]) -> Vec<u8> {
    let mut out = b"POST ".to_vec();
    out.extend_from_slice(target);
    out.extend(format!(" HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n\r\n{{}}").bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_forwards_only_canonical_request_targets() -> R {
    let e = bypass_env().await;
    // Canonical: admitted anonymously, forwarded exactly (a query is not a path).
    for target in ["/api/webhook/abc", "/api/webhook/x?q=/../config"] {
        let resp = e
            .anon()
            .await
            .roundtrip("POST", anon_post(target.as_bytes()))
            .await?;
        assert_eq!(resp.echo().path, target);
    }
    // Path tricks: refused (403: no credential, no bypass) or rejected (400).
    for target in [
        &b"/api/webhook/%2e%2e/config"[..],
        b"/api/webhook/../config",
        b"/api/webhook/%2E%2E%2Fconfig",
    ] {
        let resp = e.anon().await.roundtrip("POST", anon_post(target)).await?;
        let t = String::from_utf8_lossy(target);
        assert!(matches!(resp.status, 400 | 403), "{t}: {resp:?}");
    }
    // Not a valid request-target at all: 400.
    for target in [
        &b"/api/webhook/a b"[..],
        b"/api/webhook/\xff",
        b"api/webhook/abc",
    ] {
        let resp = e.anon().await.roundtrip("POST", anon_post(target)).await?;
        let t = String::from_utf8_lossy(target);
        assert_eq!(resp.status, 400, "{t}: {resp:?}");
    }
    // A fragment is not part of a request-target: rejected, or dropped before the path is
    // judged (and never forwarded).
    for target in ["/api/webhook/abc#frag", "/api/webhook/abc#/../../config"] {
        let resp = e
            .anon()
            .await
            .roundtrip("POST", anon_post(target.as_bytes()))
            .await?;
        match resp.status {
            400 => {}
            200 => assert_eq!(resp.echo().path, "/api/webhook/abc", "{target}"),
            other => panic!("{target}: {other}: {resp:?}"),
        }
    }
    for seen in e.up.seen() {
        assert!(
            seen.path == "/api/webhook/abc" || seen.path == "/api/webhook/x?q=/../config",
            "forwarded without credentials: {:?}",
            seen.path
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_with_raw_non_ascii_bytes_are_a_400() -> R {
    // RFC 9112 §3.2 / RFC 3986: a request-target is ASCII; anything else is malformed.
    let e = bypass_env().await;
    let target = b"/api/webhook/caf\xc3\xa9";
    let anonymous = e.anon().await.roundtrip("POST", anon_post(target)).await?;
    let device = e.wire().await.roundtrip("POST", anon_post(target)).await?;
    assert_eq!(
        (anonymous.status, device.status),
        (400, 400),
        "anonymous: {anonymous:?}\nwith a certificate: {device:?}"
    );
    assert!(e.up.seen().is_empty(), "{:?}", e.up.seen());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_refuses_dot_dot_semicolon_segments() -> R {
    // `..;` is `..` to a servlet container (path parameters): a careful bypass treats it
    // as a dot segment.
    let e = bypass_env().await;
    let resp = e
        .anon()
        .await
        .roundtrip("POST", anon_post(b"/api/webhook/..;/config"))
        .await?;
    assert!(matches!(resp.status, 400 | 403), "{resp:?}");
    assert!(e.up.seen().is_empty(), "{:?}", e.up.seen());
    Ok(())
}

// ───────────────────────── 10. HTTP/1.0 and Expect ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_requests_are_answered_in_a_form_http10_understands() -> R {
    let e = env().await;
    // Without keep-alive: one response, then the close.
    let mut wire = e.wire().await;
    let resp = wire
        .roundtrip("GET", format!("GET /old HTTP/1.0\r\nHost: {HOST}\r\n\r\n"))
        .await?;
    assert_ne!(
        resp.framing,
        Framing::Chunked,
        "HTTP/1.0 has no chunked: {resp:?}"
    );
    let echo = resp.echo();
    assert_eq!(
        (echo.path.as_str(), echo.version.as_str()),
        ("/old", "HTTP/1.1")
    );
    assert_eq!(
        wire.liveness(Duration::from_secs(2)).await,
        Liveness::Closed
    );

    // With keep-alive: the gate may keep the connection (then it must frame the body and
    // say so) or close it.
    let mut wire = e.wire().await;
    let request = format!("GET /old-ka HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n");
    let resp = wire.roundtrip("GET", &request).await?;
    assert_ne!(resp.framing, Framing::Chunked, "{resp:?}");
    assert_eq!(resp.echo().path, "/old-ka");
    let keeps = resp
        .all("connection")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("keep-alive"));
    if keeps && resp.framing != Framing::Close {
        let again = request.replace("/old-ka", "/old-ka-2");
        assert_eq!(wire.roundtrip("GET", again).await?.echo().path, "/old-ka-2");
    } else {
        assert_eq!(
            wire.liveness(Duration::from_secs(2)).await,
            Liveness::Closed
        );
    }
    for seen in e.up.seen() {
        assert!(!seen.has("connection"), "{:?}", seen.headers);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_the_body_to_the_upstream() -> R {
    let e = env().await;
    let body = b"hello world";
    let head = format!(
        "POST /expect HTTP/1.1\r\nHost: {HOST}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // A client that waits for the 100 (curl waits a second, then sends anyway).
    let mut wire = e.wire().await;
    wire.send(&head).await?;
    let interim = tokio::time::timeout(Duration::from_secs(1), wire.response("POST")).await;
    let interim = interim.ok().transpose()?;
    if let Some(interim) = &interim {
        assert_eq!(
            interim.status, 100,
            "nothing but a 100 before the body: {interim:?}"
        );
    }
    wire.send(body).await?;
    let (_, resp) = wire.final_response("POST").await?;
    let echo = resp.echo();
    assert_eq!(echo.body_len, body.len() as u64);
    assert_eq!(echo.body_sha256, sha256_hex(body));
    assert!(
        interim.is_some(),
        "no 100 Continue: the client waited in vain"
    );

    // A client that sends the body straight away.
    let mut request = head.replace("/expect", "/expect-eager").into_bytes();
    request.extend_from_slice(body);
    let resp = wire.roundtrip("POST", request).await?;
    let echo = resp.echo();
    assert_eq!(echo.path, "/expect-eager");
    assert_eq!(echo.body_sha256, sha256_hex(body));
    next_echo(&mut wire, "/after-expect").await;
    Ok(())
}

// ───────────────────────── 11. upgrade after plain requests ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_after_plain_requests_on_one_connection() -> R {
    let e = env().await;
    let mut wire = e.wire().await;
    let first = wire.roundtrip("GET", get_bytes("/a")).await?;
    assert_eq!(first.echo().path, "/a");
    assert!(
        first.has("set-cookie"),
        "a certificate request earns a cookie"
    );
    assert_eq!(
        wire.roundtrip("GET", get_bytes("/b")).await?.echo().path,
        "/b"
    );

    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let upgrade = get_with(
        "/api/websocket",
        &format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
             Sec-WebSocket-Version: 13\r\n"
        ),
    );
    let resp = wire.roundtrip("GET", upgrade).await?;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(derive_accept_key(key.as_bytes()))
    );
    assert!(
        resp.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{resp:?}"
    );
    assert!(!resp.has("set-cookie"), "no Set-Cookie on a 101: {resp:?}");

    // The tunnel carries frames both ways: one masked text frame out, its echo back.
    let (mut tls, leftover) = wire.into_parts();
    assert!(leftover.is_empty(), "bytes after the 101: {leftover:?}");
    let payload = b"through the tunnel";
    tls.write_all(&masked_text_frame(payload)).await?;
    let mut echoed = vec![0u8; 2 + payload.len()];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut echoed)).await??;
    assert_eq!(echoed[..2], [0x81, payload.len() as u8]);
    assert_eq!(&echoed[2..], payload);

    let seen: Vec<String> = e.up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["/a", "/b", "/api/websocket"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_pipelined_behind_plain_requests_in_one_write() -> R {
    let e = env().await;
    let mut wire = e.wire().await;
    let key = "x3JJHMbDL1EzLkh9GBhXDw==";
    let upgrade = get_with(
        "/api/websocket",
        &format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
             Sec-WebSocket-Version: 13\r\n"
        ),
    );
    wire.send(get_bytes("/a") + &get_bytes("/b") + &upgrade)
        .await?;
    assert_eq!(wire.response("GET").await?.echo().path, "/a");
    assert_eq!(wire.response("GET").await?.echo().path, "/b");
    let resp = wire.response("GET").await?;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(derive_accept_key(key.as_bytes()))
    );
    let (mut tls, leftover) = wire.into_parts();
    assert!(leftover.is_empty(), "bytes after the 101: {leftover:?}");
    let frame = masked_text_frame(b"pipelined");
    tls.write_all(&frame).await?;
    let mut echoed = [0u8; 2 + 9];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut echoed)).await??;
    assert_eq!(&echoed, b"\x81\x09pipelined");
    Ok(())
}

// ───────────────────────── 12. slow and oversized heads ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_trickled_past_the_header_timeout_is_cut() -> R {
    let e = env_with(timeouts()).await;
    let tls = e.gate.client().cert(&e.alice).connect().await?;
    let (mut read, mut write) = tokio::io::split(tls);
    // One byte every 200 ms: the whole head would take about 12 s.
    let head = get_with("/slow", &format!("X-Pad: {}\r\n", "p".repeat(20)));
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for byte in head.bytes() {
            if write.write_all(&[byte]).await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    let took = started.elapsed();
    writer.abort();
    assert!(closed, "a head trickling in forever was never cut");
    assert!(
        took >= Duration::from_millis(900),
        "cut too early: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "cut too late: {took:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert!(e.up.seen().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_idle_limit_runs_from_the_last_response() -> R {
    let e = env_with(timeouts()).await;
    let mut wire = e.wire().await;
    // Requests 600 ms apart keep the connection past the one-second limit…
    for path in ["/1", "/2", "/3"] {
        assert_eq!(
            wire.roundtrip("GET", get_bytes(path)).await?.echo().path,
            path
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(
        wire.roundtrip("GET", get_bytes("/4")).await?.echo().path,
        "/4"
    );
    // …and a connection idle for longer is closed, not before the limit.
    let quiet = Instant::now();
    assert_eq!(
        wire.liveness(Duration::from_secs(4)).await,
        Liveness::Closed
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "{:?}",
        quiet.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused_and_never_forwarded() -> R {
    let e = env().await;
    let big_header = get_with("/big", &format!("X-Big: {}\r\n", "a".repeat(100 * 1024)));
    let big_target = get_bytes(&format!("/big?{}", "q".repeat(100 * 1024)));
    let many = (0..1500)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(40)))
        .collect::<String>();
    let many = get_with("/big", &many);
    for (what, request, pieces) in [
        ("one big header, one write", &big_header, 1),
        ("one big header, ten writes", &big_header, 10),
        ("a long request-target", &big_target, 1),
        ("many headers adding up", &many, 1),
    ] {
        let mut wire = e.wire().await;
        let piece = request.len().div_ceil(pieces);
        // The gate may stop reading (and even reset) before the last piece.
        let _ = wire
            .trickle(request, piece, Duration::from_millis(20))
            .await;
        match wire.response("GET").await {
            Ok(resp) => assert!(matches!(resp.status, 431 | 414 | 400), "{what}: {resp:?}"),
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{what}"),
        }
        assert_ne!(
            wire.liveness(Duration::from_secs(2)).await,
            Liveness::Open,
            "{what}: the connection stays open after an oversized head"
        );
    }
    assert!(!e.up.saw_path_containing("/big"), "{:?}", e.up.seen().len());
    // Under the limit (64 KiB by default) is fine.
    let fits = get_with("/fits", &format!("X-Big: {}\r\n", "a".repeat(60 * 1024)));
    let resp = e.wire().await.roundtrip("GET", fits).await?;
    assert_eq!(resp.echo().path, "/fits");
    Ok(())
}
