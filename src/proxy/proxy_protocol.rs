//! PROXY protocol v1/v2, read only from configured trusted sources (k3s's Traefik in TLS
//! passthrough): it carries the real client address that Home Assistant's login-attempt
//! ban depends on. From anyone else it would be a spoofing tool, so it is never parsed.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers are at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// v2 headers with TLVs; Traefik sends well under this.
const V2_MAX: usize = 16 + 1024;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one PROXY header and returns the client address it declares, `None` for
/// `UNKNOWN`/`LOCAL` (a health check from the proxy itself). Reads exactly the header, so
/// the TLS bytes behind it are untouched.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<SocketAddr>> {
    let mut buf = vec![0u8; 16];
    stream.read_exact(&mut buf).await?;
    if buf[..12] == V2_SIGNATURE[..] {
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if 16 + len > V2_MAX {
            return Err(invalid("PROXY v2 header too long"));
        }
        buf.resize(16 + len, 0);
        stream.read_exact(&mut buf[16..]).await?;
        let header = ppp::v2::Header::try_from(&buf[..])
            .map_err(|e| invalid(format!("PROXY v2 header: {e}")))?;
        return Ok(match header.addresses {
            ppp::v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
            ppp::v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
            _ => None,
        });
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(invalid(
            "expected a PROXY protocol header from a trusted proxy",
        ));
    }
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(invalid("PROXY v1 header too long"));
        }
        buf.push(stream.read_u8().await?);
    }
    let text = std::str::from_utf8(&buf).map_err(|_| invalid("PROXY v1 header is not ASCII"))?;
    let header =
        ppp::v1::Header::try_from(text).map_err(|e| invalid(format!("PROXY v1 header: {e}")))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
        ppp::v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
        ppp::v1::Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v1_leaves_following_bytes() {
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n\x16\x03\x01";
        let addr = read_header(&mut input).await.unwrap();
        assert_eq!(addr, Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(input, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn v2_ipv4() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "198.51.100.9:40000".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"rest");
        let mut input: &[u8] = &bytes;
        let addr = read_header(&mut input).await.unwrap();
        assert_eq!(addr, Some("198.51.100.9:40000".parse().unwrap()));
        assert_eq!(input, b"rest");
    }

    #[tokio::test]
    async fn garbage_and_oversized_are_refused() {
        let mut tls_hello: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh";
        assert!(read_header(&mut tls_hello).await.is_err());
        let long = format!("PROXY TCP4 {} \r\n", "1".repeat(200));
        let mut input: &[u8] = long.as_bytes();
        assert!(read_header(&mut input).await.is_err());
    }
}
