//! PROXY protocol v1/v2, read only from configured trusted sources (k3s's Traefik in TLS
//! passthrough): it carries the real client address that Home Assistant's login-attempt
//! ban depends on. From anyone else it would be a spoofing tool, so it is never parsed.
//!
//! The header is taken off the socket without consuming one byte past its end: the TLS
//! handshake then reads the socket itself, not a buffering wrapper that would sit on every
//! later read. So the socket is peeked, and only bytes known to belong to the header are
//! read. `ppp` parses the addresses; the framing, `UNKNOWN` and `LOCAL` are handled here
//! because ppp is stricter than the specification there (it refuses a `LOCAL` header whose
//! address block is shorter than its family, and `UNKNOWN` with more than four fields),
//! and those are exactly what proxies send as health checks.

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
/// v2 headers with TLVs; Traefik sends well under this.
const V2_MAX: usize = V2_FIXED + 1024;
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// v1 headers are at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;

const WHAT_TO_DO: &str = "the peer is listed as a trusted PROXY protocol source: make it send a \
     PROXY v1 or v2 header first (Traefik: proxyProtocol on the TCP service), or remove it \
     from the trusted sources";

fn invalid(msg: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("PROXY header: {msg}; {WHAT_TO_DO}"),
    )
}

/// Reads one PROXY header and returns the client address it declares, `None` when the
/// proxy speaks for itself (v1 `UNKNOWN`, v2 `LOCAL`, or an address family without IP
/// addresses): then the TCP peer is the client. Reads exactly the header, however it is
/// split across segments, so the TLS bytes behind it are untouched. Bounded by the
/// caller's timeout.
pub async fn read_header(stream: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let mut buf = vec![0u8; V2_MAX];
    // Bytes already read off the socket; all of them belong to the header.
    let mut consumed = 0;
    loop {
        let peeked = stream.peek(&mut buf[consumed..]).await?;
        if peeked == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside its PROXY header",
            ));
        }
        let available = consumed + peeked;
        match header_len(&buf[..available])? {
            Some(len) => {
                stream.read_exact(&mut buf[consumed..len]).await?;
                return parse(&buf[..len]);
            }
            // No end in sight yet: everything peeked is header, so it may be taken.
            None => {
                stream.read_exact(&mut buf[consumed..available]).await?;
                consumed = available;
            }
        }
    }
}

/// The length of the header at the start of `bytes`, `None` when more bytes are needed to
/// tell, an error when `bytes` cannot start a header.
fn header_len(bytes: &[u8]) -> io::Result<Option<usize>> {
    let starts_like = |prefix: &[u8]| {
        let n = bytes.len().min(prefix.len());
        bytes[..n] == prefix[..n]
    };
    if starts_like(V2_SIGNATURE) {
        if bytes.len() < V2_FIXED {
            return Ok(None);
        }
        let len = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        if len > V2_MAX {
            return Err(invalid(format!(
                "v2 header of {len} bytes, more than the {V2_MAX} accepted"
            )));
        }
        return Ok((bytes.len() >= len).then_some(len));
    }
    if starts_like(V1_PREFIX) {
        let within = &bytes[..bytes.len().min(V1_MAX)];
        if let Some(end) = within.windows(2).position(|w| w == b"\r\n") {
            return Ok(Some(end + 2));
        }
        if bytes.len() >= V1_MAX {
            return Err(invalid(format!("v1 header without CRLF in {V1_MAX} bytes")));
        }
        return Ok(None);
    }
    Err(invalid("the connection does not start with one"))
}

/// Parses one complete header, as framed by [`header_len`].
fn parse(header: &[u8]) -> io::Result<Option<SocketAddr>> {
    if header.starts_with(V2_SIGNATURE) {
        parse_v2(header)
    } else {
        parse_v1(header)
    }
}

fn parse_v2(header: &[u8]) -> io::Result<Option<SocketAddr>> {
    let version_command = header[12];
    if version_command >> 4 != 2 {
        return Err(invalid(format!(
            "v2 signature with version {}",
            version_command >> 4
        )));
    }
    match version_command & 0x0f {
        // LOCAL: the proxy's own connection (a health check). The specification has the
        // address block skipped whatever its family and length say; the length was
        // already used to frame the header.
        0x0 => Ok(None),
        0x1 => {
            let parsed =
                ppp::v2::Header::try_from(header).map_err(|e| invalid(format!("v2: {e}")))?;
            Ok(match parsed.addresses {
                ppp::v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
                ppp::v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
                ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
            })
        }
        command => Err(invalid(format!("v2 command {command:#x}"))),
    }
}

fn parse_v1(header: &[u8]) -> io::Result<Option<SocketAddr>> {
    let text = std::str::from_utf8(header).map_err(|_| invalid("v1 header is not ASCII"))?;
    // UNKNOWN may be followed by anything before the CRLF, which the receiver must ignore.
    if let Some(rest) = text.strip_prefix("PROXY UNKNOWN")
        && (rest == "\r\n" || rest.starts_with(' '))
    {
        return Ok(None);
    }
    let parsed = ppp::v1::Header::try_from(text).map_err(|e| invalid(format!("v1: {e}")))?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
        ppp::v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
        ppp::v1::Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests;
