//! PROXY protocol edge cases end to end: a trusted peer (loopback) writes a raw PROXY
//! header, then a real TLS client with a certificate talks to the real gate behind it.
//! What `X-Forwarded-For` the upstream sees tells which address the gate took.

mod common;

use std::time::Duration;

use common::*;
use portcullis::pki::IssuedCert;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type R = TestResult;

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

struct Env {
    _pki: TestPki,
    up: Upstream,
    gate: Gate,
    alice: IssuedCert,
}

/// A gate that requires a PROXY header from loopback, PROXY header and TLS handshake
/// bounded by `handshake_timeout`.
async fn env(handshake_timeout: Duration) -> Env {
    let pki = TestPki::new();
    let up = Upstream::start().await;
    let alice = pki.client("alice-phone");
    let mut settings = settings_with(|l| l.handshake_timeout = handshake_timeout);
    settings.proxy_protocol_from = vec!["127.0.0.1/32".parse().expect("net")];
    let spec = spec(
        vec![route("ha", &[HOST], up.addr)],
        vec![live("alice", &alice)],
    );
    let gate = Gate::start(&pki, spec, settings).await;
    Env {
        _pki: pki,
        up,
        gate,
        alice,
    }
}

impl Env {
    /// Writes `header` in `pieces` (a slow sender's segments), then one request over TLS
    /// with alice's certificate; returns the `X-Forwarded-For` the upstream saw.
    async fn forwarded_for(
        &self,
        header: &[u8],
        pieces: usize,
        gap: Duration,
    ) -> TestResult<String> {
        let mut tcp = TcpStream::connect(self.gate.addr).await?;
        tcp.set_nodelay(true)?;
        let size = header.len().div_ceil(pieces.max(1));
        for piece in header.chunks(size.max(1)) {
            tcp.write_all(piece).await?;
            tokio::time::sleep(gap).await;
        }
        let tls = self
            .gate
            .client()
            .cert(&self.alice)
            .connect_over(tcp)
            .await?;
        let mut conn = http_conn_over(tls, HOST).await?;
        let resp = conn.get("/").await?;
        assert_eq!(resp.status, http::StatusCode::OK, "{}", resp.text());
        let echo = resp.echo();
        Ok(echo
            .header("x-forwarded-for")
            .unwrap_or_default()
            .to_owned())
    }

    async fn whole(&self, header: &[u8]) -> TestResult<String> {
        self.forwarded_for(header, 1, Duration::ZERO).await
    }
}

/// A v2 header by hand: what a proxy may send is wider than what ppp's builder writes.
fn v2(version_command: u8, family_protocol: u8, block: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(version_command);
    out.push(family_protocol);
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(block);
    out
}

/// 203.0.113.7:5000 → 127.0.0.1:443, as a v2 IPv4 address block.
fn ipv4_block() -> Vec<u8> {
    let mut block = vec![203, 0, 113, 7, 127, 0, 0, 1];
    block.extend_from_slice(&5000u16.to_be_bytes());
    block.extend_from_slice(&443u16.to_be_bytes());
    block
}

/// Regression: the 15-byte short form was read with a 16-byte first read, which took the
/// first byte of the TLS ClientHello and broke every health-check-style connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_unknown_short_form_then_tls_uses_the_peer_address() -> R {
    let e = env(Duration::from_secs(10)).await;
    assert_eq!(e.whole(b"PROXY UNKNOWN\r\n").await?, "127.0.0.1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_unknown_with_trailing_fields_uses_the_peer_address() -> R {
    let e = env(Duration::from_secs(10)).await;
    let header = b"PROXY UNKNOWN 203.0.113.7 127.0.0.1 5000 443\r\n";
    assert_eq!(e.whole(header).await?, "127.0.0.1");
    assert_eq!(
        e.whole(b"PROXY UNKNOWN anything at all may follow here\r\n")
            .await?,
        "127.0.0.1"
    );
    Ok(())
}

/// Regression: LOCAL (a proxy's own health check; AWS NLB fills in dummy addresses) took
/// the address block as the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_local_ignores_its_address_block() -> R {
    let e = env(Duration::from_secs(10)).await;
    assert_eq!(e.whole(&v2(0x20, 0x11, &ipv4_block())).await?, "127.0.0.1");
    // An IPv4 family with no addresses at all: the declared length (0) is what counts.
    assert_eq!(e.whole(&v2(0x20, 0x11, &[])).await?, "127.0.0.1");
    assert_eq!(e.whole(&v2(0x20, 0x00, &[])).await?, "127.0.0.1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_proxy_with_tlvs_sets_the_client_address() -> R {
    let e = env(Duration::from_secs(10)).await;
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "198.51.100.9:40000".parse::<std::net::SocketAddr>()?,
            "127.0.0.1:443".parse::<std::net::SocketAddr>()?,
        ),
    )
    .write_tlv(ppp::v2::Type::Authority, HOST.as_bytes())?
    .write_tlv(ppp::v2::Type::NoOp, &[0; 100])?
    .build()?;
    assert_eq!(e.whole(&header).await?, "198.51.100.9");
    Ok(())
}

/// A slow sender: every byte of the header in its own segment. Nothing is lost or taken
/// from the TLS bytes behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_split_across_segments_are_read_exactly() -> R {
    let e = env(Duration::from_secs(10)).await;
    let gap = Duration::from_millis(5);
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 443\r\n";
    assert_eq!(e.forwarded_for(v1, v1.len(), gap).await?, "203.0.113.7");
    let short = b"PROXY UNKNOWN\r\n";
    assert_eq!(e.forwarded_for(short, short.len(), gap).await?, "127.0.0.1");
    let proxy = v2(0x21, 0x11, &ipv4_block());
    assert_eq!(
        e.forwarded_for(&proxy, proxy.len(), gap).await?,
        "203.0.113.7"
    );
    let local = v2(0x20, 0x11, &ipv4_block());
    assert_eq!(e.forwarded_for(&local, 3, gap).await?, "127.0.0.1");
    Ok(())
}

/// What the gate does with a connection that opened with `bytes` and then went quiet:
/// whether it closed the connection within `wait`.
async fn closed_after(e: &Env, bytes: &[u8], wait: Duration) -> TestResult<bool> {
    let mut tcp = TcpStream::connect(e.gate.addr).await?;
    tcp.write_all(bytes).await?;
    let mut buf = [0u8; 64];
    Ok(matches!(
        tokio::time::timeout(wait, tcp.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_malformed_headers_are_failed_handshakes() -> R {
    let e = env(Duration::from_secs(10)).await;
    // Truncated: the peer closes inside the header.
    for truncated in [
        &b"PROXY TCP4 203.0.113.7"[..],
        &v2(0x21, 0x11, &ipv4_block())[..20],
    ] {
        let mut tcp = TcpStream::connect(e.gate.addr).await?;
        tcp.write_all(truncated).await?;
        tcp.shutdown().await?;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    }
    e.gate
        .eventually("two failures", |g| {
            g.handshake_failures("proxy_protocol") >= 2
        })
        .await;
    // Malformed: closed at once, long before any timeout.
    for malformed in [
        &b"PROXY TCP4 not-an-address 127.0.0.1 5000 443\r\n"[..],
        &v2(0x22, 0x11, &ipv4_block())[..],
        &v2(0x21, 0x11, &[1, 2, 3])[..],
        &[V2_SIGNATURE, &[0x21, 0x11, 0xff, 0xff]].concat()[..],
    ] {
        assert!(
            closed_after(&e, malformed, Duration::from_secs(5)).await?,
            "{malformed:x?} left open"
        );
    }
    e.gate
        .eventually("six failures", |g| {
            g.handshake_failures("proxy_protocol") >= 6
        })
        .await;
    assert!(e.up.seen().is_empty());
    Ok(())
}

/// A trusted peer that starts a header and stalls holds its slot only for the handshake
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_header_is_cut_at_the_handshake_timeout() -> R {
    let e = env(Duration::from_millis(500)).await;
    for partial in [
        &b"PROXY TCP4 203.0.113.7 "[..],
        &v2(0x21, 0x11, &ipv4_block())[..14],
        b"PROXY UNKNOWN\r",
    ] {
        let started = std::time::Instant::now();
        assert!(closed_after(&e, partial, Duration::from_secs(5)).await?);
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{partial:x?}"
        );
    }
    e.gate
        .eventually("counted as timeouts", |g| {
            g.handshake_failures("timeout") >= 3
        })
        .await;
    assert_eq!(e.gate.handshake_failures("proxy_protocol"), 0);
    e.gate
        .eventually("slots freed", |g| g.open_connections() == 0)
        .await;
    Ok(())
}
