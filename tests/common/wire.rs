//! Byte-level HTTP/1.1 for tests that must see exactly what crosses the wire:
//!
//! - [`Wire`]: a buffered connection (the client side over TLS, or an upstream's TCP
//!   socket) that writes raw bytes and reads one message at a time, framed as RFC 9112
//!   §6.3 says (no body for HEAD, 1xx, 204 and 304; chunked; Content-Length; until close).
//!   Reading message by message is what makes pipelining and desync visible: a response
//!   with a stray byte too many makes the next one unparsable.
//! - [`RawUpstream`]: a scriptable upstream that parses requests the same way, records
//!   them, and answers each with canned bytes ([`Reply`]), however malformed.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::{Echo, HOST, TestResult, TlsClient};

/// How long any single read of a message may take before the test gives up on it.
pub const READ_WAIT: Duration = Duration::from_secs(10);

/// `name: value` pairs in the order they came; names as sent.
pub type Fields = Vec<(String, String)>;

/// A message with header fields: lookups by name, in any case.
pub trait Headed {
    fn fields(&self) -> &Fields;

    /// The first value of `name`.
    fn header(&self, name: &str) -> Option<String> {
        find(self.fields(), name).into_iter().next()
    }

    /// Every value of `name`, in order.
    fn all(&self, name: &str) -> Vec<String> {
        find(self.fields(), name)
    }

    fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }
}

fn find(fields: &Fields, name: &str) -> Vec<String> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Splits a head into its start line and header fields.
fn parse_head(head: &[u8]) -> io::Result<(String, Fields)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default().to_owned();
    let mut fields = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("not a header field: {line:?} in {text:?}")))?;
        fields.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok((start, fields))
}

/// How a message's body was delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body by definition (HEAD, 1xx, 204, 304, a request without length).
    None,
    Length(u64),
    Chunked,
    /// Read until the peer closed.
    Close,
}

/// Whether the peer is still there.
#[derive(Debug, PartialEq, Eq)]
pub enum Liveness {
    Closed,
    /// Nothing arrived and nothing ended within the wait.
    Open,
    /// Bytes arrived that nobody asked for.
    Data(String),
}

/// One response as it was framed on the wire.
#[derive(Clone)]
pub struct WireResponse {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub headers: Fields,
    pub body: Vec<u8>,
    pub trailers: Fields,
    pub framing: Framing,
    /// The body ended as its framing said; `false` when the connection closed mid-body.
    pub complete: bool,
}

impl std::fmt::Debug for WireResponse {
    /// Body as text, cut at 2 KiB: failure messages stay readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(2048)]);
        f.debug_struct("WireResponse")
            .field("version", &self.version)
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("body", &body)
            .field("trailers", &self.trailers)
            .field("framing", &self.framing)
            .field("complete", &self.complete)
            .finish()
    }
}

impl Headed for WireResponse {
    fn fields(&self) -> &Fields {
        &self.headers
    }
}

impl WireResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo upstream's account of the request (the response must be a complete 200).
    pub fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "expected an upstream echo: {self:?}");
        assert!(self.complete, "echo body cut short: {self:?}");
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {}", self.text()))
    }

    /// Whether a `Connection` header asks to close.
    pub fn says_close(&self) -> bool {
        self.all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }
}

/// A request as the raw upstream received it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Fields,
    pub body: Vec<u8>,
    pub framing: Framing,
    /// Which upstream connection (0, 1, …) carried it.
    pub connection: usize,
}

impl Headed for RawRequest {
    fn fields(&self) -> &Fields {
        &self.headers
    }
}

/// A stream with a read buffer, read one HTTP/1.1 message at a time.
pub struct Wire<S> {
    stream: S,
    buf: Vec<u8>,
    /// The read side has ended (EOF or an error).
    eof: bool,
}

pub type TlsWire = Wire<TlsStream<TcpStream>>;

impl Wire<TlsStream<TcpStream>> {
    /// A TLS connection to the gate as `client` describes it (SNI, certificate, ALPN).
    pub async fn connect(client: &TlsClient) -> io::Result<TlsWire> {
        Ok(Wire::new(client.connect().await?))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes `bytes` as one write (one TLS record up to 16 KiB), then flushes.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        self.stream.write_all(bytes.as_ref()).await?;
        self.stream.flush().await
    }

    /// Writes `bytes` in pieces of `piece` bytes with `gap` between them.
    pub async fn trickle(
        &mut self,
        bytes: impl AsRef<[u8]>,
        piece: usize,
        gap: Duration,
    ) -> io::Result<()> {
        for (i, chunk) in bytes.as_ref().chunks(piece).enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            self.send(chunk).await?;
        }
        Ok(())
    }

    /// The underlying stream, once the HTTP part is over (e.g. after a 101). Bytes already
    /// buffered come back too.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// Reads more into the buffer; 0 once the peer has gone (EOF or error alike: a TLS
    /// peer that drops the socket without close_notify is gone all the same).
    async fn fill(&mut self) -> usize {
        if self.eof {
            return 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                self.eof = true;
                0
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
        }
    }

    fn eof_error(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "closed {what} (buffered: {:?})",
                String::from_utf8_lossy(&self.buf)
            ),
        )
    }

    /// The next head (through its blank line), or `None` if the peer closed cleanly first.
    pub async fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(Some(self.buf.drain(..end + 4).collect()));
            }
            if self.fill().await == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(self.eof_error("in the middle of a head")),
                };
            }
        }
    }

    async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await == 0 {
                return Err(self.eof_error("before the end of a body"));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if self.fill().await == 0 {
                return Err(self.eof_error("in the middle of a chunked body"));
            }
        }
    }

    /// A chunked body into `body` (appended as it arrives, so a cut keeps what came);
    /// returns the trailer fields.
    async fn read_chunked(&mut self, body: &mut Vec<u8>) -> io::Result<Fields> {
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                let mut trailers = Vec::new();
                loop {
                    let line = self.read_line().await?;
                    if line.is_empty() {
                        return Ok(trailers);
                    }
                    let (name, value) = line
                        .split_once(':')
                        .ok_or_else(|| bad(format!("bad trailer {line:?}")))?;
                    trailers.push((name.to_owned(), value.trim().to_owned()));
                }
            }
            body.extend(self.read_exact(size).await?);
            if self.read_exact(2).await? != b"\r\n" {
                return Err(bad("chunk data not followed by CRLF"));
            }
        }
    }

    /// Reads one response (a 1xx included) to a request with `method`, within
    /// [`READ_WAIT`]. A body cut by a close comes back with `complete: false`; a connection
    /// that closes before any byte of a head is an `UnexpectedEof` error.
    pub async fn response(&mut self, method: &str) -> io::Result<WireResponse> {
        match tokio::time::timeout(READ_WAIT, self.read_response(method)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no complete response within {READ_WAIT:?} (buffered: {:?})",
                    String::from_utf8_lossy(&self.buf)
                ),
            )),
        }
    }

    async fn read_response(&mut self, method: &str) -> io::Result<WireResponse> {
        let head = self
            .read_head()
            .await?
            .ok_or_else(|| self.eof_error("before a response"))?;
        let (start, headers) = parse_head(&head)?;
        let mut parts = start.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|_| version.starts_with("HTTP/1."))
            .ok_or_else(|| bad(format!("not a status line: {start:?}")))?;
        let te = find(&headers, "transfer-encoding");
        let cl = find(&headers, "content-length");
        let framing = if method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304
        {
            Framing::None
        } else if !te.is_empty() {
            // Chunked only if it is the final coding; otherwise the body runs to the close.
            let last = te.last().and_then(|v| v.rsplit(',').next()).unwrap_or("");
            match last.trim().eq_ignore_ascii_case("chunked") {
                true => Framing::Chunked,
                false => Framing::Close,
            }
        } else if !cl.is_empty() {
            let n = cl[0]
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {cl:?}")))?;
            if cl.iter().any(|v| v != &cl[0]) {
                return Err(bad(format!("conflicting Content-Length {cl:?}")));
            }
            Framing::Length(n)
        } else {
            Framing::Close
        };
        let mut body = Vec::new();
        let mut trailers = Vec::new();
        let ended = match framing {
            Framing::None => Ok(()),
            Framing::Length(n) => self.read_exact(n as usize).await.map(|b| body = b),
            Framing::Chunked => self.read_chunked(&mut body).await.map(|t| trailers = t),
            Framing::Close => {
                while self.fill().await > 0 {}
                body = std::mem::take(&mut self.buf);
                Ok(())
            }
        };
        let complete = match ended {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                if let Framing::Length(_) = framing {
                    body = std::mem::take(&mut self.buf);
                }
                false
            }
            Err(e) => return Err(e),
        };
        Ok(WireResponse {
            version,
            status,
            headers,
            body,
            trailers,
            framing,
            complete,
        })
    }

    /// The final response to a request with `method`, skipping (and returning the
    /// statuses of) any 1xx interim responses before it. A 101 is final.
    pub async fn final_response(&mut self, method: &str) -> io::Result<(Vec<u16>, WireResponse)> {
        let mut interim = Vec::new();
        loop {
            let resp = self.response(method).await?;
            if (100..200).contains(&resp.status) && resp.status != 101 {
                interim.push(resp.status);
                continue;
            }
            return Ok((interim, resp));
        }
    }

    /// Sends `request` (one write) and reads its final response.
    pub async fn roundtrip(
        &mut self,
        method: &str,
        request: impl AsRef<[u8]>,
    ) -> io::Result<WireResponse> {
        self.send(request).await?;
        Ok(self.final_response(method).await?.1)
    }

    /// Whether the peer closes within `wait`, stays open and quiet, or sends something.
    pub async fn liveness(&mut self, wait: Duration) -> Liveness {
        if self.buf.is_empty() && !self.eof {
            let _ = tokio::time::timeout(wait, self.fill()).await;
        }
        if !self.buf.is_empty() {
            return Liveness::Data(String::from_utf8_lossy(&self.buf).into_owned());
        }
        match self.eof {
            true => Liveness::Closed,
            false => Liveness::Open,
        }
    }

    /// Reads the next request (the upstream side); `None` when the peer closed first.
    pub async fn request(&mut self) -> io::Result<Option<RawRequest>> {
        let Some(head) = self.read_head().await? else {
            return Ok(None);
        };
        let (start, headers) = parse_head(&head)?;
        let mut parts = start.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(format!("not a request line: {start:?}")));
        };
        let te = find(&headers, "transfer-encoding");
        let cl = find(&headers, "content-length");
        let mut body = Vec::new();
        let framing = if !te.is_empty() {
            self.read_chunked(&mut body).await?;
            Framing::Chunked
        } else if let Some(n) = cl.first() {
            let n = n
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {n}")))?;
            body = self.read_exact(n).await?;
            Framing::Length(n as u64)
        } else {
            Framing::None
        };
        Ok(Some(RawRequest {
            method: method.to_owned(),
            target: target.to_owned(),
            version: version.to_owned(),
            headers,
            body,
            framing,
            connection: 0,
        }))
    }
}

// ───────────────────────────── request bytes ─────────────────────────────

/// `GET path` for `ha.test`, keep-alive.
pub fn get_bytes(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
}

/// `GET path` for `ha.test` with extra header lines (each ending in CRLF).
pub fn get_with(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n")
}

/// `POST path` for `ha.test` with a Content-Length body.
pub fn post_bytes(path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

// ───────────────────────────── raw upstream ─────────────────────────────

/// What the connection does once a [`Reply`] is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next request.
    KeepOpen,
    Close,
    /// Neither answer nor close, until the upstream is dropped.
    Hang,
}

/// Canned bytes for one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Written one after another, `gap` apart (each its own write).
    pub parts: Vec<Vec<u8>>,
    pub gap: Duration,
    pub then: After,
}

impl Reply {
    /// These exact bytes, then the next request.
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            parts: vec![bytes.into()],
            gap: Duration::ZERO,
            then: After::KeepOpen,
        }
    }

    /// A well-formed `200` with a Content-Length body.
    pub fn ok(body: &str) -> Reply {
        Reply::bytes(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    /// A well-formed `200` whose body names the request: `"{method} {target}"`.
    pub fn echo(req: &RawRequest) -> Reply {
        Reply::ok(&format!("{} {}", req.method, req.target))
    }

    /// Close without a byte.
    pub fn close() -> Reply {
        Reply {
            parts: Vec::new(),
            gap: Duration::ZERO,
            then: After::Close,
        }
    }

    /// Say nothing, close nothing.
    pub fn hang() -> Reply {
        Reply {
            parts: Vec::new(),
            gap: Duration::ZERO,
            then: After::Hang,
        }
    }

    /// These pieces, `gap` apart.
    pub fn pieces(parts: &[&[u8]], gap: Duration) -> Reply {
        Reply {
            parts: parts.iter().map(|p| p.to_vec()).collect(),
            gap,
            then: After::KeepOpen,
        }
    }

    pub fn then_close(mut self) -> Reply {
        self.then = After::Close;
        self
    }
}

type Handler = dyn Fn(&RawRequest) -> Reply + Send + Sync;

/// A plain-TCP upstream on loopback that answers each request with what `handler` says,
/// recording every request it parsed.
pub struct RawUpstream {
    pub addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    connections: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl RawUpstream {
    pub async fn start(handler: impl Fn(&RawRequest) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw upstream");
        let addr = listener.local_addr().expect("raw upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let handler: Arc<Handler> = Arc::new(handler);
        let (seen2, connections2, stop) = (seen.clone(), connections.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                    () = stop.cancelled() => return,
                };
                let index = connections2.fetch_add(1, Ordering::SeqCst);
                let (seen, handler, stop) = (seen2.clone(), handler.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = serve_raw(tcp, index, seen, handler) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        RawUpstream {
            addr,
            seen,
            connections,
            shutdown,
        }
    }

    /// Every request parsed so far.
    pub fn seen(&self) -> Vec<RawRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// Request targets, in arrival order.
    pub fn targets(&self) -> Vec<String> {
        self.seen().into_iter().map(|r| r.target).collect()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve_raw(
    tcp: TcpStream,
    index: usize,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    handler: Arc<Handler>,
) {
    let _ = tcp.set_nodelay(true);
    let mut wire = Wire::new(tcp);
    loop {
        let Ok(Some(mut req)) = wire.request().await else {
            return;
        };
        req.connection = index;
        seen.lock().unwrap().push(req.clone());
        let reply = handler(&req);
        for (i, part) in reply.parts.iter().enumerate() {
            if i > 0 && !reply.gap.is_zero() {
                tokio::time::sleep(reply.gap).await;
            }
            if wire.send(part).await.is_err() {
                return;
            }
        }
        match reply.then {
            After::KeepOpen => {}
            After::Close => {
                let (mut tcp, _) = wire.into_parts();
                let _ = tcp.shutdown().await;
                return;
            }
            After::Hang => std::future::pending().await,
        }
    }
}

/// Reads every response on `wire` for `count` pipelined requests with `method`.
pub async fn responses<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    method: &str,
    count: usize,
) -> TestResult<Vec<WireResponse>> {
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(wire.final_response(method).await?.1);
    }
    Ok(out)
}
