//! HTTP/1.1 connections to upstreams, kept open between requests.
//!
//! Each proxy worker has its own [`Pool`], so a request, its upstream connection and the
//! task driving that connection share one thread. An idle connection goes back to the
//! pool once its response body has been read to the end; a connection whose response was
//! cut short, or that was upgraded to a tunnel, is never reused.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::idle::RequestBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 64;
/// An idle connection unused this long is closed (Home Assistant's own keep-alive
/// timeout is 75 s, so ours ends first and a request never meets a connection the
/// upstream is closing).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a pooled connection may take to become ready for its next request.
const READY_WAIT: Duration = Duration::from_millis(100);

/// Why a request could not be handed to the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {0} timed out")]
    ConnectTimeout(Authority),
    #[error("connecting to {0}: {1}")]
    Connect(Authority, std::io::Error),
    #[error("HTTP to {0}: {1}")]
    Http(Authority, #[source] hyper::Error),
}

/// hyper client connections to upstreams, kept open between requests.
#[derive(Debug)]
pub struct Pool {
    idle: IdleConns<SendRequest<RequestBody>>,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: IdleConns::default(),
            connect_timeout,
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) to `upstream` on an idle connection or a
    /// new one. The response body returns the connection to the pool when read to the end.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &Authority,
        req: Request<RequestBody>,
    ) -> Result<Response<Pooled>, UpstreamError> {
        let http = |e| UpstreamError::Http(upstream.clone(), e);
        let (resp, sender) = match self.take(upstream).await {
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => (resp, sender),
                // The upstream closed this idle connection before the request went out
                // (its keep-alive timer won the race): a new connection gets it.
                Err(mut e) => match e.take_message() {
                    Some(req) => {
                        let mut sender = self.connect(upstream).await?;
                        (sender.send_request(req).await.map_err(http)?, sender)
                    }
                    None => return Err(http(e.into_error())),
                },
            },
            None => {
                let mut sender = self.connect(upstream).await?;
                (sender.send_request(req).await.map_err(http)?, sender)
            }
        };
        // After a 101 the connection belongs to the tunnel.
        let reusable = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let back = reusable.then(|| (self.clone(), upstream.clone(), sender));
        Ok(resp.map(|body| Pooled::new(body, back)))
    }

    /// The most recently used idle connection that is still open and ready.
    async fn take(&self, upstream: &Authority) -> Option<SendRequest<RequestBody>> {
        loop {
            let mut sender = self.idle.take(upstream)?;
            if sender.is_ready() {
                return Some(sender);
            }
            // A connection returns to the pool when its response has been read; hyper may
            // not have marked it idle yet. That takes no I/O, so a connection not ready
            // soon is in a state we do not want to wait on: drop it.
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                return Some(sender);
            }
        }
    }

    async fn connect(
        &self,
        upstream: &Authority,
    ) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let tcp = dial(upstream, self.connect_timeout).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::Http(upstream.clone(), e))?;
        // Runs until the connection closes: when the upstream ends it, when a response is
        // cut short, or when its sender is dropped (idle timeout, pool full, tunnel done).
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`].
    pub fn close_idle(&self) {
        self.idle.close_idle();
    }
}

/// A connection that can wait in [`IdleConns`].
pub trait Reusable {
    /// Not closed by the upstream, as far as can be told without waiting.
    fn is_open(&self) -> bool;
}

impl Reusable for SendRequest<RequestBody> {
    fn is_open(&self) -> bool {
        !self.is_closed()
    }
}

/// A connection and when it went idle.
type Idle<C> = (C, Instant);

/// Idle connections by upstream `host:port`, the most recently used last.
#[derive(Debug)]
pub struct IdleConns<C> {
    /// A list, not a map: there is one upstream per route, a handful in all, and hashing
    /// an `Authority` (byte by byte, case-folded) costs more than comparing a few.
    lists: Mutex<Vec<(Authority, Vec<Idle<C>>)>>,
}

impl<C> Default for IdleConns<C> {
    fn default() -> Self {
        Self {
            lists: Mutex::new(Vec::new()),
        }
    }
}

impl<C: Reusable> IdleConns<C> {
    /// The most recently used connection that is still open and not idle too long.
    pub fn take(&self, upstream: &Authority) -> Option<C> {
        let mut lists = self.lock();
        let (_, list) = lists.iter_mut().find(|(a, _)| a == upstream)?;
        std::iter::from_fn(|| list.pop())
            .find(|(conn, since)| since.elapsed() < IDLE_TIMEOUT && conn.is_open())
            .map(|(conn, _)| conn)
    }

    /// Keeps `conn` for the next request to `upstream`, if it is open and there is room.
    pub fn put(&self, upstream: &Authority, conn: C) {
        if !conn.is_open() {
            return;
        }
        let mut lists = self.lock();
        let i = match lists.iter().position(|(a, _)| a == upstream) {
            Some(i) => i,
            None => {
                lists.push((upstream.clone(), Vec::new()));
                lists.len() - 1
            }
        };
        let list = &mut lists[i].1;
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push((conn, Instant::now()));
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] or closed by the upstream.
    pub fn close_idle(&self) {
        self.lock().retain_mut(|(_, list)| {
            list.retain(|(conn, since)| since.elapsed() < IDLE_TIMEOUT && conn.is_open());
            !list.is_empty()
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Authority, Vec<Idle<C>>)>> {
        self.lists.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens a TCP connection to `upstream` (`host:port`, port 80 by default).
pub async fn dial(upstream: &Authority, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    // IPv6 literals come bracketed in an authority.
    let host = upstream
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let addr = (host, upstream.port_u16().unwrap_or(80));
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(upstream.clone()))?
        .map_err(|e| UpstreamError::Connect(upstream.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A response body from the upstream that returns its connection to the pool once read
/// to the end. Dropped early, it takes the connection with it (hyper closes it).
pub struct Pooled {
    body: Incoming,
    back: Option<(Arc<Pool>, Authority, SendRequest<RequestBody>)>,
}

impl Pooled {
    fn new(body: Incoming, back: Option<(Arc<Pool>, Authority, SendRequest<RequestBody>)>) -> Self {
        let mut pooled = Self { body, back };
        // No body at all (204, 304, HEAD, Content-Length: 0): nobody may poll it.
        if pooled.body.is_end_stream() {
            pooled.release();
        }
        pooled
    }

    fn release(&mut self) {
        if let Some((pool, upstream, sender)) = self.back.take() {
            pool.idle.put(&upstream, sender);
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
