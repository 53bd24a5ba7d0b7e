//! The HTTP/1.1 fast path: the common request forwarded in the connection's own task.
//!
//! ```text
//!  client bytes ─▶ httparse head ─▶ plain and admitted? ──no──▶ hyper (Rewind: from this
//!                                        │ yes                   request on, for good)
//!                                        ▼
//!        upstream head written once ─▶ pooled TCP connection ─▶ response head (httparse)
//!        ─▶ framing: Content-Length | chunked (re-encoded) | until close | none
//!        ─▶ client head + body, Set-Cookie when due ─▶ next request
//! ```
//! hyper's server and client each run their own state machine and hand every request and
//! body across tasks and channels; for a keep-alive request that is most of the gate's
//! cost above TLS. Here one task reads the head, writes it to a pooled upstream socket,
//! and copies the response back. Everything unusual — refusals, upgrades, chunked or
//! `Expect` requests, odd targets, HTTP/1.0 — goes to hyper, which answers it exactly as
//! before; the fast path never answers a client's mistake itself.

mod chunked;
mod pool;
mod request;
mod response;
mod rewind;

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

pub use pool::Pool;
pub use rewind::Rewind;

use super::Shared;
use super::conn::ConnInfo;
use super::forward::{BODY_STALLED, UPSTREAM_UNREACHABLE, request_counter};
use super::revocation::{self, Admitted};
use crate::admission::Decision;
use crate::snapshot::{HSTS, Route};
use prometheus_client::metrics::counter::Counter;
use request::{Forward, Head};
use response::{Body, ClientSide, Final, Framing};

/// How the fast path let go of a connection.
pub enum Ended<T> {
    /// Closed, or to be closed.
    Closed,
    /// hyper serves the rest, starting with the bytes already read.
    Fallback(Rewind<T>),
}

/// The client connection is to be closed (an answer, if any, was written).
struct Close;

/// What the client sent next.
enum Next {
    /// A request head of this many bytes that the fast path forwards.
    Request(Box<Forward>, usize),
    /// A request hyper answers; it takes the connection from here on.
    Fallback,
    /// Nothing: the client closed, failed or stayed silent too long.
    Closed,
}

/// Read size for both sides.
const READ_CHUNK: usize = 16 * 1024;
/// How long, and how much, a closing connection reads and drops of a body left unread.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Serves HTTP/1.1 requests on `client` until it closes or a request needs hyper.
pub async fn serve<T>(client: T, shared: Arc<Shared>, conn: Arc<ConnInfo>) -> Ended<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = Session {
        client,
        shared,
        conn,
        from_client: BytesMut::with_capacity(READ_CHUNK),
        from_upstream: BytesMut::new(),
        to_upstream: Vec::new(),
        to_client: Vec::new(),
        counter: None,
        body_unread: false,
    };
    loop {
        let (forward, head_len) = match session.next_request().await {
            Next::Request(forward, head_len) => (forward, head_len),
            Next::Fallback => {
                let Session {
                    client,
                    from_client,
                    ..
                } = session;
                return Ended::Fallback(Rewind::new(from_client.freeze(), client));
            }
            Next::Closed => return Ended::Closed,
        };
        session.from_client.advance(head_len);
        session.count(&forward);
        if session.exchange(&forward).await.is_err() {
            let _ = session.client.shutdown().await;
            if session.body_unread {
                session.linger().await;
            }
            return Ended::Closed;
        }
        session.shrink();
    }
}

/// One client connection on the fast path, with its buffers.
struct Session<T> {
    client: T,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    /// Read from the client, not yet used: the next head, a body, pipelined requests.
    from_client: BytesMut,
    from_upstream: BytesMut,
    /// The request head (and the body bytes already read) for the upstream.
    to_upstream: Vec<u8>,
    to_client: Vec<u8>,
    /// The request counter last used: a connection's requests mostly share one series,
    /// and finding it by its labels costs a hash and a lock each time.
    counter: Option<(Arc<Route>, &'static str, Counter)>,
    /// The client may still be sending a body nobody will read.
    body_unread: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Session<T> {
    /// The next request head, read within the header-read timeout (which is also the
    /// keep-alive idle limit).
    async fn next_request(&mut self) -> Next {
        let deadline = Instant::now() + self.shared.settings.limits.header_read_timeout;
        loop {
            if !self.from_client.is_empty() {
                // The newest snapshot: a revoke applies to the very next request.
                let Some(snapshot) = self.shared.snapshots.borrow().clone() else {
                    return Next::Fallback; // hyper answers "no configuration yet"
                };
                match request::read(
                    &self.from_client,
                    &self.shared,
                    &self.conn,
                    &snapshot,
                    &mut self.to_upstream,
                ) {
                    Head::Forward(forward, len) => return Next::Request(forward, len),
                    Head::Fallback => return Next::Fallback,
                    Head::Partial => {}
                }
            }
            self.from_client.reserve(READ_CHUNK);
            match timeout_at(deadline, self.client.read_buf(&mut self.from_client)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Next::Closed,
            }
        }
    }

    /// Counts an admitted request under its route and admission path.
    fn count(&mut self, forward: &Forward) {
        let path = forward.decision.path_label();
        match &self.counter {
            Some((route, label, counter))
                if Arc::ptr_eq(route, &forward.route) && *label == path =>
            {
                counter.inc();
            }
            _ => {
                let counter = request_counter(&self.shared, &forward.route, &forward.decision);
                counter.inc();
                self.counter = Some((forward.route.clone(), path, counter));
            }
        }
    }

    /// Reads and drops what the client still sends, for a little while, after the answer
    /// and the close: closing a socket with unread bytes makes the kernel reset the
    /// connection, and the reset can destroy the answer before the client read it (what
    /// nginx calls a lingering close).
    async fn linger(&mut self) {
        let deadline = Instant::now() + LINGER;
        let mut budget = LINGER_BYTES;
        while budget > 0 {
            self.from_client.clear();
            self.from_client.reserve(READ_CHUNK);
            match timeout_at(deadline, self.client.read_buf(&mut self.from_client)).await {
                Ok(Ok(n)) if n > 0 => budget = budget.saturating_sub(n),
                _ => return,
            }
        }
    }

    /// Lets go of buffers a large exchange grew, so an idle connection holds little.
    fn shrink(&mut self) {
        const KEEP: usize = 4 * READ_CHUNK;
        if self.from_upstream.capacity() > KEEP {
            self.from_upstream = BytesMut::new();
        }
        if self.from_client.is_empty() && self.from_client.capacity() > KEEP {
            self.from_client = BytesMut::with_capacity(READ_CHUNK);
        }
        for buf in [&mut self.to_upstream, &mut self.to_client] {
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
        }
    }

    /// Forwards one admitted request and its response.
    async fn exchange(&mut self, forward: &Forward) -> Result<(), Close> {
        let upstream = &forward.route.upstream;
        let shared = self.shared.clone();
        let pool = &shared.h1_upstream;
        // The body bytes already read go out with the head.
        let buffered = usize::try_from(forward.body_len)
            .unwrap_or(usize::MAX)
            .min(self.from_client.len());
        self.to_upstream
            .extend_from_slice(&self.from_client[..buffered]);
        self.from_client.advance(buffered);
        let body_left = forward.body_len - buffered as u64;
        let (mut tcp, pooled) = match pool.take(upstream) {
            Some(tcp) => (tcp, true),
            None => match pool.connect(upstream).await {
                Ok(tcp) => (tcp, false),
                Err(e) => return self.upstream_failed(forward, &e, body_left).await,
            },
        };
        // A request held whole in memory, safe to repeat, goes again on a fresh connection
        // if the pooled one turns out closed (the upstream's keep-alive timer won the race).
        let mut retry = pooled && forward.idempotent && body_left == 0;
        let (head, sent) = loop {
            match self.send(&mut tcp, forward, body_left).await? {
                Ok(done) => break done,
                Err(e) if retry => {
                    tracing::debug!(error = %e, "pooled upstream connection closed; retrying");
                    tcp = match pool.connect(upstream).await {
                        Ok(tcp) => tcp,
                        Err(e) => return self.upstream_failed(forward, &e, body_left).await,
                    };
                    retry = false;
                }
                Err(e) => return self.upstream_failed(forward, &e, body_left).await,
            }
        };
        let reusable = self.relay(&mut tcp, forward, head).await?;
        let cut_short = sent == BodySent::CutShort;
        self.body_unread |= cut_short;
        if reusable && !cut_short && self.from_upstream.is_empty() {
            pool.put(upstream, tcp);
        }
        if forward.close || cut_short || head.framing == Framing::UntilClose {
            return Err(Close);
        }
        Ok(())
    }

    /// A 502 for a request the upstream did not answer. The connection stays open unless
    /// a request body may still be on its way.
    async fn upstream_failed(
        &mut self,
        forward: &Forward,
        error: &(dyn std::error::Error + Send + Sync),
        body_left: u64,
    ) -> Result<(), Close> {
        tracing::warn!(route = %forward.route.name, upstream = %forward.route.upstream, error = %error, "upstream unreachable");
        self.body_unread |= body_left > 0;
        let close = forward.close || body_left > 0;
        self.answer(BAD_GATEWAY, close, forward.route.hsts).await
    }

    /// Writes the request to `tcp` and reads the final response head, written for the
    /// client into `to_client`, and how much of the body went. The outer error ends the client connection (an answer was
    /// given); the inner one is the upstream's failure, which may be retried.
    async fn send(
        &mut self,
        tcp: &mut TcpStream,
        forward: &Forward,
        body_left: u64,
    ) -> Result<Result<(Final, BodySent), std::io::Error>, Close> {
        self.from_upstream.clear();
        if let Err(e) = tcp.write_all(&self.to_upstream).await {
            return Ok(Err(e));
        }
        let sent = match body_left {
            0 => BodySent::Whole,
            _ => self.stream_body(tcp, body_left, forward.route.hsts).await?,
        };
        let side = ClientSide {
            head_only: forward.head_only,
            set_cookie: forward.set_cookie.as_ref(),
            hsts: forward.route.hsts,
            close: forward.close || sent == BodySent::CutShort,
        };
        loop {
            match response::read(&self.from_upstream, &side, &mut self.to_client) {
                Ok(response::Head::Final(head)) => return Ok(Ok((head, sent))),
                Ok(response::Head::Interim(len)) => self.from_upstream.advance(len),
                Ok(response::Head::Partial) => {
                    self.from_upstream.reserve(READ_CHUNK);
                    match tcp.read_buf(&mut self.from_upstream).await {
                        Ok(0) => {
                            return Ok(Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "closed before a complete response head",
                            )));
                        }
                        Ok(_) => {}
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Err(bad) => return Ok(Err(std::io::Error::other(bad))),
            }
        }
    }

    /// Copies the rest of a `Content-Length` request body from the client, each read
    /// within the body idle timeout. Stops early when the upstream answers (or closes)
    /// before the body is done — a 413 or 401 for an upload it will not read — so that
    /// answer reaches the client instead of a write blocking on an upstream not reading.
    async fn stream_body(
        &mut self,
        tcp: &mut TcpStream,
        mut left: u64,
        hsts: bool,
    ) -> Result<BodySent, Close> {
        let idle = self.shared.settings.limits.body_idle_timeout;
        let Session {
            client,
            from_client,
            from_upstream,
            ..
        } = self;
        let (reader, mut writer) = tcp.split();
        let upstream = reader.as_ref();
        while left > 0 {
            let forward_some = async {
                if from_client.is_empty() {
                    from_client.reserve(READ_CHUNK);
                    match timeout(idle, client.read_buf(from_client)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return Step::ClientGone,
                        Err(_) => return Step::Stalled,
                    }
                }
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(from_client.len());
                match writer.write_all(&from_client[..take]).await {
                    Ok(()) => Step::Sent(take),
                    Err(_) => Step::UpstreamSpoke, // Closed: read what it said, if anything.
                }
            };
            let step = tokio::select! {
                step = forward_some => step,
                () = upstream_spoke(upstream, from_upstream) => Step::UpstreamSpoke,
            };
            match step {
                Step::Sent(n) => {
                    from_client.advance(n);
                    left -= n as u64;
                }
                Step::UpstreamSpoke => return Ok(BodySent::CutShort),
                Step::ClientGone => return Err(Close),
                Step::Stalled => {
                    tracing::info!(client = %self.conn.client.ip(), "request body stalled");
                    self.answer(REQUEST_TIMEOUT, true, hsts).await?;
                    return Err(Close);
                }
            }
        }
        Ok(BodySent::Whole)
    }

    /// Sends the response head in `to_client` and the body framed by `head`; returns
    /// whether the upstream connection ended cleanly at the body's end.
    async fn relay(
        &mut self,
        tcp: &mut TcpStream,
        forward: &Forward,
        head: Final,
    ) -> Result<bool, Close> {
        self.from_upstream.advance(head.head_len);
        let mut body = Body::new(head.framing);
        // What arrived with the head goes out with it, in one write.
        if let Err(e) = body.take(&mut self.from_upstream, &mut self.to_client) {
            self.upstream_failed(forward, &e, 0).await?;
            return Ok(false);
        }
        self.write_to_client().await?;
        if !body.done() {
            // A response that outlives its request (an event stream, a camera feed) ends
            // once the cookie it was admitted with no longer holds; a certificate
            // connection is closed as a whole by conn.rs.
            let gone = match &forward.decision {
                Decision::Cookie { cert } => {
                    Some(Admitted::serial_on(&cert.serial_hex, &forward.host))
                }
                _ => None,
            };
            let gone = revocation::gone(self.shared.snapshots.clone(), gone);
            tokio::select! {
                copied = self.copy_body(tcp, &mut body) => copied?,
                () = gone => return Err(Close),
            }
        }
        Ok(head.reusable)
    }

    async fn copy_body(&mut self, tcp: &mut TcpStream, body: &mut Body) -> Result<(), Close> {
        while !body.done() {
            self.from_upstream.reserve(READ_CHUNK);
            match tcp.read_buf(&mut self.from_upstream).await {
                Ok(0) if body.ends_at_close() => {}
                // Cut short: the client must not take a partial body for a whole one.
                Ok(0) | Err(_) => return Err(Close),
                Ok(_) => {}
            }
            body.take(&mut self.from_upstream, &mut self.to_client)
                .map_err(|_| Close)?;
            self.write_to_client().await?;
        }
        Ok(())
    }

    async fn write_to_client(&mut self) -> Result<(), Close> {
        if !self.to_client.is_empty() {
            let written = self.client.write_all(&self.to_client).await;
            self.to_client.clear();
            written.map_err(|_| Close)?;
        }
        self.client.flush().await.map_err(|_| Close)
    }

    /// A short answer of the gate's own (the request could not be forwarded), with HSTS
    /// when the route has it.
    async fn answer(&mut self, answer: Answer, close: bool, hsts: bool) -> Result<(), Close> {
        self.to_client.clear();
        let (status, text) = answer;
        for part in [
            "HTTP/1.1 ",
            status,
            "\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\ncontent-length: ",
            &text.len().to_string(),
            if close { "\r\nconnection: close" } else { "" },
            if hsts {
                "\r\nstrict-transport-security: "
            } else {
                ""
            },
            if hsts { HSTS } else { "" },
            "\r\n\r\n",
            text,
        ] {
            self.to_client.extend_from_slice(part.as_bytes());
        }
        self.write_to_client().await?;
        if close { Err(Close) } else { Ok(()) }
    }
}

/// One step of copying a request body.
enum Step {
    Sent(usize),
    UpstreamSpoke,
    ClientGone,
    Stalled,
}

/// How much of a request body reached the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodySent {
    Whole,
    /// The upstream answered or closed first; the rest is still on its way from the
    /// client, so the client connection cannot carry another request.
    CutShort,
}

/// Completes once the upstream has sent something (bytes, appended to `buf`, or its
/// close); a readiness wake-up with nothing to read keeps waiting.
async fn upstream_spoke(upstream: &TcpStream, buf: &mut BytesMut) {
    loop {
        if upstream.readable().await.is_err() {
            return;
        }
        buf.reserve(READ_CHUNK);
        match upstream.try_read_buf(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            _ => return,
        }
    }
}

type Answer = (&'static str, &'static str);
const BAD_GATEWAY: Answer = ("502 Bad Gateway", UPSTREAM_UNREACHABLE);
const REQUEST_TIMEOUT: Answer = ("408 Request Timeout", BODY_STALLED);

/// Appends `name: value` and its line end.
fn write_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` of digits only (no sign, no list), as RFC 9112 §6.3 allows.
fn content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
