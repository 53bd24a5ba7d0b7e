//! Reading the upstream's response head, deciding its framing, and writing the head the
//! client gets.
//!
//! The framing is decided strictly (RFC 9112 §6.3): a response whose length is ambiguous
//! is refused with a 502 rather than guessed, because a wrong guess on a pooled
//! connection would hand one client's response to the next request. [`Body`] then moves
//! the body along as it arrives.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::HeaderValue;

use super::super::headers;
use super::{chunked, content_length, write_header};
use crate::snapshot::HSTS;

/// Largest response head read from an upstream.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a `HEAD` request, 204 or 304.
    Empty,
    Length(u64),
    Chunked,
    /// Delimited by the upstream closing the connection.
    UntilClose,
}

/// A final response head, its client version already written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Final {
    pub head_len: usize,
    pub framing: Framing,
    /// The upstream connection may carry another request after this body.
    pub reusable: bool,
}

/// What the bytes read from the upstream so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    Partial,
    /// An interim (1xx) response of this many bytes, dropped as hyper's client does.
    Interim(usize),
    Final(Final),
}

/// The upstream's response cannot be forwarded safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unusable response from the upstream: {0}")]
pub struct BadResponse(pub &'static str);

/// What the client's response head needs besides the upstream's.
pub struct ClientSide<'a> {
    /// The request was `HEAD`.
    pub head_only: bool,
    pub set_cookie: Option<&'a HeaderValue>,
    /// The route sends HSTS: ours replaces the upstream's.
    pub hsts: bool,
    /// Close the client connection after this response.
    pub close: bool,
}

/// Parses the response head at the start of `buf`; for a final response, writes the head
/// for the client into `out`.
pub fn read(buf: &[u8], client: &ClientSide<'_>, out: &mut Vec<u8>) -> Result<Head, BadResponse> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(Head::Partial),
        Ok(httparse::Status::Partial) => return Err(BadResponse("head too large")),
        Err(_) => return Err(BadResponse("malformed head")),
    };
    let status = resp.code.unwrap_or(0);
    match status {
        101 => return Err(BadResponse("upgrade that was not asked for")),
        100..=199 => return Ok(Head::Interim(head_len)),
        _ => {}
    }

    let mut named: Vec<&str> = Vec::new();
    let mut upstream_close = resp.version != Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        let is = |s: &str| h.name.eq_ignore_ascii_case(s);
        if is("connection") {
            for token in std::str::from_utf8(h.value).unwrap_or_default().split(',') {
                let token = token.trim();
                upstream_close |= token.eq_ignore_ascii_case("close");
                named.push(token);
            }
        } else if is("content-length") {
            let n = content_length(h.value).ok_or(BadResponse("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse("conflicting Content-Length"));
            }
            length = Some(n);
        } else if is("transfer-encoding") {
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(BadResponse("Transfer-Encoding other than chunked"));
            }
            chunked = true;
        }
    }
    let framing = match (status, chunked, length) {
        _ if client.head_only => Framing::Empty,
        (204 | 304, ..) => Framing::Empty,
        (_, true, Some(_)) => return Err(BadResponse("both Content-Length and chunked")),
        (_, true, None) => Framing::Chunked,
        (_, false, Some(n)) => Framing::Length(n),
        (_, false, None) => Framing::UntilClose,
    };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&status_digits(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let hop = headers::is_hop_by_hop(h.name)
            || h.name.eq_ignore_ascii_case("upgrade")
            || named.iter().any(|n| h.name.eq_ignore_ascii_case(n));
        // The gate writes the framing itself, below; and HSTS, when the route has it.
        let ours = h.name.eq_ignore_ascii_case("content-length")
            || (client.hsts && h.name.eq_ignore_ascii_case("strict-transport-security"));
        if !hop && !ours {
            write_header(out, h.name, h.value);
        }
    }
    // Canonical, and never lost: not even to an upstream `Connection: content-length`.
    match (framing, length) {
        (Framing::Chunked, _) => write_header(out, "transfer-encoding", b"chunked"),
        (Framing::Length(n), _) | (Framing::Empty, Some(n)) => {
            write_header(out, "content-length", n.to_string().as_bytes());
        }
        (Framing::Empty, None) | (Framing::UntilClose, _) => {}
    }
    if client.close || framing == Framing::UntilClose {
        write_header(out, "connection", b"close");
    }
    if let Some(cookie) = client.set_cookie {
        write_header(out, "set-cookie", cookie.as_bytes());
    }
    if client.hsts {
        write_header(out, "strict-transport-security", HSTS.as_bytes());
    }
    out.extend_from_slice(b"\r\n");

    Ok(Head::Final(Final {
        head_len,
        framing,
        reusable: !upstream_close && framing != Framing::UntilClose,
    }))
}

/// The three digits of a status code (httparse reads exactly three).
fn status_digits(status: u16) -> [u8; 3] {
    let digit = |n: u16| b'0' + (n % 10) as u8;
    [digit(status / 100), digit(status / 10), digit(status)]
}

/// A response body in transit.
pub struct Body {
    framing: Framing,
    /// Bytes still due under `Content-Length`.
    left: u64,
    chunks: chunked::Decoder,
}

impl Body {
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunks: chunked::Decoder::default(),
        }
    }

    pub fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunks.is_done(),
            Framing::UntilClose => false,
        }
    }

    /// Whether the upstream closing ends this body (rather than cutting it short); if so
    /// the body is done.
    pub fn ends_at_close(&mut self) -> bool {
        let ends = self.framing == Framing::UntilClose;
        if ends {
            self.framing = Framing::Empty;
        }
        ends
    }

    /// Moves what `input` holds of this body to `out`, leaving any bytes past its end.
    pub fn take(
        &mut self,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<(), chunked::BadChunk> {
        let used = match self.framing {
            Framing::Empty => 0,
            Framing::Length(_) => {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                out.extend_from_slice(&input[..n]);
                self.left -= n as u64;
                n
            }
            Framing::Chunked => self.chunks.decode(input, out)?,
            Framing::UntilClose => {
                out.extend_from_slice(input);
                input.len()
            }
        };
        input.advance(used);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientSide<'static> {
        ClientSide {
            head_only: false,
            set_cookie: None,
            hsts: false,
            close: false,
        }
    }

    fn parse(raw: &str) -> (Result<Head, BadResponse>, String) {
        let mut out = Vec::new();
        let head = read(raw.as_bytes(), &client(), &mut out);
        (head, String::from_utf8(out).expect("ascii"))
    }

    fn framing(raw: &str) -> Result<(Framing, bool), BadResponse> {
        match parse(raw).0? {
            Head::Final(f) => Ok((f.framing, f.reusable)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = |raw: &str| framing(raw).expect(raw);
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            (Framing::Length(5), true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\n"),
            (Framing::Length(5), true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            (Framing::Chunked, true)
        );
        assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n"), (Framing::UntilClose, false));
        assert_eq!(
            ok("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
            (Framing::Empty, true)
        );
        assert_eq!(
            ok("HTTP/1.1 204 No Content\r\n\r\n"),
            (Framing::Empty, true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"),
            (Framing::Length(5), false)
        );
        assert_eq!(
            ok("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n"),
            (Framing::Length(5), false)
        );
    }

    #[test]
    fn ambiguous_lengths_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(framing(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn interim_responses_are_skipped() {
        let raw = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(parse(raw).0, Ok(Head::Interim(44)));
        assert_eq!(parse("HTTP/1.1 200 OK\r\nContent-Le").0, Ok(Head::Partial));
    }

    #[test]
    fn client_head_drops_hop_by_hop_and_connection_named_headers() {
        let (_, out) = parse(
            "HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Up-Secret\r\nX-Up-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\
             Content-Type: text/plain\r\n\r\n",
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 Fine\r\nContent-Type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn client_head_carries_cookie_and_close() {
        let cookie = HeaderValue::from_static("__Host-p=v1.x; Path=/");
        let side = ClientSide {
            head_only: true,
            set_cookie: Some(&cookie),
            hsts: false,
            close: true,
        };
        let mut out = Vec::new();
        let head = read(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            &side,
            &mut out,
        );
        assert!(matches!(
            head,
            Ok(Head::Final(Final {
                framing: Framing::Empty,
                ..
            }))
        ));
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\
             set-cookie: __Host-p=v1.x; Path=/\r\n\r\n"
        );
    }

    #[test]
    fn client_head_replaces_the_upstreams_hsts_with_the_routes() {
        let raw = b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=1; preload\r\n\
                    Content-Length: 0\r\n\r\n";
        for (hsts, sts) in [(true, HSTS), (false, "max-age=1; preload")] {
            let side = ClientSide { hsts, ..client() };
            let mut out = Vec::new();
            read(raw, &side, &mut out).expect("a final head");
            let out = String::from_utf8(out).expect("ascii");
            let lines: Vec<&str> = out
                .lines()
                .filter(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("strict-transport-security:")
                })
                .collect();
            assert_eq!(lines.len(), 1, "{out}");
            assert!(lines[0].ends_with(&format!(": {sts}")), "{out}");
        }
    }
}
