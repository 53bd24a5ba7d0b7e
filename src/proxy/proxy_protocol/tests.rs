//! The reader over real loopback sockets: what it returns, and that the bytes behind the
//! header are still on the socket.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;

const TLS_START: &[u8] = b"\x16\x03\x01\x02\x00";

/// Sends `parts` (pausing `gap` between them, as a slow sender's segments), then closes;
/// returns what `read_header` made of it and every byte left on the socket after it.
async fn read_sent(
    parts: Vec<Vec<u8>>,
    gap: Duration,
) -> (io::Result<Option<SocketAddr>>, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sender = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        for part in parts {
            tcp.write_all(&part).await.unwrap();
            tokio::time::sleep(gap).await;
        }
        tcp.shutdown().await.unwrap();
        // Keep the socket until the reader is done with it.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (mut server, _) = listener.accept().await.unwrap();
    let header = read_header(&mut server).await;
    let mut rest = Vec::new();
    if header.is_ok() {
        server.read_to_end(&mut rest).await.unwrap();
    }
    sender.abort();
    (header, rest)
}

async fn read_whole(bytes: &[u8]) -> (io::Result<Option<SocketAddr>>, Vec<u8>) {
    read_sent(vec![bytes.to_vec()], Duration::ZERO).await
}

fn with_tls(header: &[u8]) -> Vec<u8> {
    [header, TLS_START].concat()
}

/// A v2 header by hand, so that also what ppp's builder would refuse can be sent.
fn v2(version_command: u8, family_protocol: u8, block: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(version_command);
    out.push(family_protocol);
    out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend_from_slice(block);
    out
}

/// An IPv4 address block: 192.0.2.1:51000 → 10.0.0.1:443.
fn ipv4_block() -> Vec<u8> {
    let mut block = vec![192, 0, 2, 1, 10, 0, 0, 1];
    block.extend_from_slice(&51000u16.to_be_bytes());
    block.extend_from_slice(&443u16.to_be_bytes());
    block
}

fn addr(text: &str) -> Option<SocketAddr> {
    Some(text.parse().unwrap())
}

#[tokio::test]
async fn v1_tcp4_and_tcp6_leave_the_following_bytes() {
    let (header, rest) =
        read_whole(&with_tls(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n")).await;
    assert_eq!(header.unwrap(), addr("203.0.113.7:51000"));
    assert_eq!(rest, TLS_START);
    let (header, rest) = read_whole(&with_tls(b"PROXY TCP6 2001:db8::5 ::1 40000 443\r\n")).await;
    assert_eq!(header.unwrap(), addr("[2001:db8::5]:40000"));
    assert_eq!(rest, TLS_START);
}

/// Regression: the shortest valid header is 15 bytes; a fixed 16-byte first read took the
/// TLS record's first byte with it.
#[tokio::test]
async fn v1_unknown_short_form_leaves_the_first_tls_byte() {
    let (header, rest) = read_whole(&with_tls(b"PROXY UNKNOWN\r\n")).await;
    assert_eq!(header.unwrap(), None);
    assert_eq!(rest, TLS_START);
}

#[tokio::test]
async fn v1_unknown_ignores_whatever_follows_it() {
    for header in [
        &b"PROXY UNKNOWN 203.0.113.7 10.0.0.1 51000 443\r\n"[..],
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        b"PROXY UNKNOWN a b c d e f g\r\n",
    ] {
        let (parsed, rest) = read_whole(&with_tls(header)).await;
        assert_eq!(parsed.unwrap(), None, "{}", String::from_utf8_lossy(header));
        assert_eq!(rest, TLS_START);
    }
    // Not UNKNOWN followed by a separator.
    let (parsed, _) = read_whole(&with_tls(b"PROXY UNKNOWNX\r\n")).await;
    assert!(parsed.is_err());
}

#[tokio::test]
async fn v2_proxy_with_tlvs() {
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2001:db8::9]:40000".parse::<SocketAddr>().unwrap(),
            "[::1]:443".parse::<SocketAddr>().unwrap(),
        ),
    )
    .write_tlv(ppp::v2::Type::Authority, b"ha.test")
    .unwrap()
    .write_tlv(ppp::v2::Type::NoOp, &[0; 40])
    .unwrap()
    .build()
    .unwrap();
    let (parsed, rest) = read_whole(&with_tls(&header)).await;
    assert_eq!(parsed.unwrap(), addr("[2001:db8::9]:40000"));
    assert_eq!(rest, TLS_START);

    let (parsed, rest) = read_whole(&with_tls(&v2(0x21, 0x11, &ipv4_block()))).await;
    assert_eq!(parsed.unwrap(), addr("192.0.2.1:51000"));
    assert_eq!(rest, TLS_START);
}

/// LOCAL is the proxy's own connection: whatever address block it carries (AWS NLB sends
/// dummy IPv4 addresses, others none at all under an IPv4 family) is skipped, and the TCP
/// peer stands.
#[tokio::test]
async fn v2_local_skips_its_address_block() {
    for header in [
        v2(0x20, 0x11, &ipv4_block()),
        v2(0x20, 0x00, &[]),
        v2(0x20, 0x11, &[]),
        v2(0x20, 0x21, &[7; 5]),
        v2(0x20, 0xff, &[1, 2, 3]),
    ] {
        let (parsed, rest) = read_whole(&with_tls(&header)).await;
        assert_eq!(parsed.unwrap(), None, "{header:x?}");
        assert_eq!(rest, TLS_START, "{header:x?}");
    }
}

#[tokio::test]
async fn v2_without_ip_addresses_is_the_peer() {
    let (parsed, rest) = read_whole(&with_tls(&v2(0x21, 0x00, &[]))).await;
    assert_eq!(parsed.unwrap(), None);
    assert_eq!(rest, TLS_START);
}

#[tokio::test]
async fn headers_split_into_single_bytes_are_read_whole() {
    for header in [
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2(0x21, 0x11, &ipv4_block()),
        v2(0x20, 0x11, &ipv4_block()),
    ] {
        let bytes = with_tls(&header);
        let parts = bytes.iter().map(|b| vec![*b]).collect();
        let (parsed, rest) = read_sent(parts, Duration::from_millis(2)).await;
        assert!(parsed.is_ok(), "{header:x?}: {parsed:?}");
        assert_eq!(rest, TLS_START, "{header:x?}");
    }
}

#[tokio::test]
async fn truncated_headers_are_an_error() {
    for bytes in [
        &b"PROXY TCP4 203.0.113.7 10.0.0.1 51000"[..],
        b"PROXY",
        b"\r\n\r\n\0\r\nQ",
        // A bare LF is not the end of a v1 header.
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\n",
        &v2(0x21, 0x11, &ipv4_block())[..20],
    ] {
        let (parsed, _) = read_whole(bytes).await;
        let error = parsed.expect_err("a truncated header");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{bytes:x?}");
    }
}

#[tokio::test]
async fn garbage_and_oversized_are_refused() {
    let mut refused: Vec<Vec<u8>> = vec![
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh".to_vec(),
        format!("PROXY TCP4 {} \r\n", "1".repeat(200)).into_bytes(),
        b"PROXY TCP4 not-an-address 10.0.0.1 51000 443\r\n".to_vec(),
        b"PROXY TCP5 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec(),
        b"GET / HTTP/1.1\r\n".to_vec(),
        // Version 1 and an unknown command under the v2 signature.
        v2(0x11, 0x11, &ipv4_block()),
        v2(0x22, 0x11, &ipv4_block()),
        // PROXY with an IPv4 family but too short a block for it.
        v2(0x21, 0x11, &[1, 2, 3]),
    ];
    let mut too_long = V2_SIGNATURE.to_vec();
    too_long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    refused.push(too_long);
    for bytes in refused {
        let (parsed, _) = read_whole(&with_tls(&bytes)).await;
        let error = parsed.expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{bytes:x?}");
        assert!(error.to_string().contains("trusted"), "{error}");
    }
}

#[test]
fn framing_needs_no_more_than_the_header() {
    assert_eq!(header_len(b"PROXY UNKNOWN\r").unwrap(), None);
    assert_eq!(header_len(b"PROXY UNKNOWN\r\n\x16").unwrap(), Some(15));
    assert_eq!(header_len(b"PRO").unwrap(), None);
    assert_eq!(header_len(b"\r\n\r\n").unwrap(), None);
    let header = v2(0x21, 0x11, &ipv4_block());
    assert_eq!(header_len(&header[..15]).unwrap(), None);
    assert_eq!(header_len(&header[..27]).unwrap(), None);
    assert_eq!(header_len(&with_tls(&header)).unwrap(), Some(28));
    assert!(header_len(b"PRX").is_err());
}
