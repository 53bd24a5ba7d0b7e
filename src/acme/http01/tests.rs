//! The listener on a real loopback socket, spoken to byte by byte; the decision alone in a
//! table.

use std::net::SocketAddr;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::*;
use crate::snapshot::Route;

const HOST: &str = "ha.example.test";
/// How long a test waits for an answer it expects.
const WAIT: Duration = Duration::from_secs(5);

fn snapshot(hosts: &[&str]) -> Arc<Snapshot> {
    let route = Route {
        name: "ha".into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        upstream: "127.0.0.1:8123".parse().expect("authority"),
        selector: None,
        cookie: None,
        bypass: Vec::new(),
        headers: Default::default(),
        hsts: false,
    };
    Arc::new(crate::snapshot::for_tests(route, Vec::new(), vec![[7; 32]]))
}

/// A listener serving `tokens` and a one-route snapshot for [`HOST`].
struct Listener {
    addr: SocketAddr,
    tokens: Http01Tokens,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(limits: Limits) -> Listener {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("address");
    let tokens = Http01Tokens::default();
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    // The sender must outlive the test: a closed channel still reads its last value.
    let (tx, rx) = watch::channel(Some(snapshot(&[HOST])));
    let task = tokio::spawn({
        let (tokens, metrics, shutdown) = (tokens.clone(), metrics.clone(), shutdown.clone());
        async move {
            serve_with(tcp, tokens, rx, metrics, limits, shutdown).await;
            drop(tx);
        }
    });
    Listener {
        addr,
        tokens,
        metrics,
        shutdown,
        task,
    }
}

/// Sends `request` and reads until the listener closes (within [`WAIT`]). A reset ends the
/// answer too: closing with unread request bytes resets the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.write_all(request).await;
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the listener closes after answering");
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn a_known_token_answers_with_its_key_authorization_until_removed() {
    let l = start(Limits::default()).await;
    let path = "/.well-known/acme-challenge/tok-123_abc";
    l.tokens.insert("tok-123_abc", "tok-123_abc.thumbprint");

    // Any Host, even one no route has: the token is what counts.
    let answer = exchange(l.addr, &get(path, "not-a-route.example")).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("content-type: text/plain"), "{answer}");
    assert_eq!(body(&answer), "tok-123_abc.thumbprint");
    let head = format!("HEAD {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let answer = exchange(l.addr, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(body(&answer), "", "HEAD: headers only");

    l.tokens.remove("tok-123_abc");
    let answer = exchange(l.addr, &get(path, HOST)).await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert!(!answer.contains("thumbprint"), "{answer}");

    let mut registry = Registry::default();
    l.metrics.register(&mut registry);
    let text = Metrics::encode(&registry);
    for line in [
        r#"portcullis_http_requests_total{outcome="challenge"} 2"#,
        r#"portcullis_http_requests_total{outcome="not_found"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[tokio::test]
async fn a_configured_host_is_redirected_with_its_path_and_query() {
    let l = start(Limits::default()).await;
    let answer = exchange(
        l.addr,
        &get("/lovelace/0?edit=1&x=%20", "HA.Example.test:80"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308 "), "{answer}");
    assert!(
        answer.contains("\r\nlocation: https://ha.example.test/lovelace/0?edit=1&x=%20\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_head_trickling_in_is_cut_at_the_header_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let l = start(limits).await;
    let mut tcp = TcpStream::connect(l.addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    // One byte every 100 ms, forever: only the header timer can end it.
    let trickle = async {
        for byte in b"GET / HTTP/1.1\r\nHost: ha.example.test\r\nX-Pad: "
            .iter()
            .cycle()
        {
            if tcp.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let cut = tokio::time::timeout(WAIT, trickle).await;
    assert!(cut.is_ok(), "a trickling head was never cut");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_oversized_head_is_refused() {
    let l = start(Limits::default()).await;
    let pad = "p".repeat(9 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: {pad}\r\n\r\n");
    let answer = exchange(l.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let l = start(limits).await;
    let _held = TcpStream::connect(l.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = exchange(l.addr, &get("/", HOST)).await;
    assert_eq!(answer, "", "the second connection is closed unanswered");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let l = start(Limits::default()).await;
    let mut idle = TcpStream::connect(l.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    l.shutdown.cancel();
    tokio::time::timeout(WAIT, l.task)
        .await
        .expect("serve_http returns after shutdown")
        .expect("no panic");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, idle.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "the idle connection is closed");
}

// ── the decision alone ──

fn decide_for(request: Request<()>, snapshot: Option<&Snapshot>) -> (&'static str, u16, String) {
    let tokens = Http01Tokens::default();
    tokens.insert("known", "known.thumb");
    let (outcome, response) = decide(&request, &tokens, snapshot);
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (outcome, response.status().as_u16(), location)
}

fn req(method: &str, uri: &str, host: Option<&str>) -> Request<()> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(host) = host {
        builder = builder.header(header::HOST, host);
    }
    builder.body(()).expect("request")
}

#[test]
fn decisions() {
    let one = snapshot(&[HOST, "::1"]);
    let s = Some(&*one);
    let cases = [
        (
            req("GET", "/", Some(HOST)),
            ("redirect", 308, "https://ha.example.test/"),
        ),
        (
            req("POST", "/api?x=1", Some(HOST)),
            ("redirect", 308, "https://ha.example.test/api?x=1"),
        ),
        (
            req("GET", "/x", Some("[::1]:80")),
            ("redirect", 308, "https://[::1]/x"),
        ),
        (
            req("OPTIONS", "*", Some(HOST)),
            ("redirect", 308, "https://ha.example.test/"),
        ),
        (
            req("GET", "http://ha.example.test/abs", Some("other")),
            ("redirect", 308, "https://ha.example.test/abs"),
        ),
        // A challenge path with any other method is an ordinary request.
        (
            req("POST", "/.well-known/acme-challenge/known", Some(HOST)),
            (
                "redirect",
                308,
                "https://ha.example.test/.well-known/acme-challenge/known",
            ),
        ),
        (
            req("GET", "/.well-known/acme-challenge/known", None),
            ("challenge", 200, ""),
        ),
        (
            req("GET", "/.well-known/acme-challenge/", Some(HOST)),
            ("not_found", 404, ""),
        ),
        (
            req("GET", "/.well-known/acme-challenge/known/x", Some(HOST)),
            ("not_found", 404, ""),
        ),
        (
            req("GET", "/", Some("other.example.test")),
            ("not_found", 404, ""),
        ),
        (req("GET", "/", None), ("not_found", 404, "")),
        (
            req("GET", "/", Some("ha.example.test:x")),
            ("not_found", 404, ""),
        ),
    ];
    for (request, (outcome, status, location)) in cases {
        let what = format!(
            "{} {} {:?}",
            request.method(),
            request.uri(),
            request.headers()
        );
        let got = decide_for(request, s);
        assert_eq!(got, (outcome, status, location.to_owned()), "{what}");
    }
    // No configuration yet: nothing is redirected, challenges still answer.
    assert_eq!(decide_for(req("GET", "/", Some(HOST)), None).0, "not_found");
    let challenge = req("GET", "/.well-known/acme-challenge/known", Some(HOST));
    assert_eq!(decide_for(challenge, None).0, "challenge");
}

#[test]
fn two_host_headers_are_no_host() {
    let request = Request::get("/")
        .header(header::HOST, HOST)
        .header(header::HOST, "other.example.test")
        .body(())
        .expect("request");
    let one = snapshot(&[HOST]);
    assert_eq!(decide_for(request, Some(&one)).1, 404);
}
