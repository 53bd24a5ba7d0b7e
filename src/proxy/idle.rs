//! Timers on what a client controls after its request head: a request body that stops
//! arriving, and an HTTP/2 connection with nothing in flight.
//!
//! HTTP/1 idle keep-alive is bounded by hyper's header-read timer; HTTP/2 and request
//! bodies have no such timer in hyper, so a client (even one with no identity, on a bypass
//! path) could otherwise hold a connection slot and an upstream connection forever.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// A request body cut off when no data arrives for `timeout`.
pub struct RequestBody {
    body: Incoming,
    timeout: Duration,
    /// Armed while the body is waited on; reset by every frame.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The error a stalled request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body data for {0:?}")]
pub struct BodyStalled(pub Duration);

impl RequestBody {
    pub fn new(body: Incoming, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            timer: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                // Progress: the next wait gets the whole timeout again.
                if let Some(timer) = &mut this.timer {
                    timer.as_mut().reset(Instant::now() + this.timeout);
                }
                // An error here is the client's (its body broke the framing, or it went
                // away): marked so it is not mistaken for the upstream failing.
                Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(BadClientBody(e)) as _)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client's request body failed as hyper read it: invalid chunked framing, a body
/// shorter than its `Content-Length`, an HTTP/2 stream reset.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body: {0:?}")]
pub struct BadClientBody(hyper::Error);

/// Whether `error` (or anything it wraps) is a stalled request body.
pub fn is_body_stall(error: &(dyn StdError + 'static)) -> bool {
    wraps::<BodyStalled>(error)
}

/// The client's request body failing, if that is what `error` is (or wraps).
pub fn bad_client_body<'e>(error: &'e (dyn StdError + 'static)) -> Option<&'e BadClientBody> {
    find::<BadClientBody>(error)
}

fn wraps<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    find::<E>(error).is_some()
}

fn find<'e, E: StdError + 'static>(error: &'e (dyn StdError + 'static)) -> Option<&'e E> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

/// Requests in flight on one HTTP/2 connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    quiet_since: Mutex<Instant>,
}

/// One request in flight; dropped when its response has been sent (or abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            quiet_since: Mutex::new(Instant::now()),
        })
    }

    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Completes once nothing has been in flight for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let quiet_since = *self
                .quiet_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let deadline = quiet_since + timeout;
            if self.in_flight.load(Ordering::SeqCst) == 0 && Instant::now() >= deadline {
                return;
            }
            // Busy, or quiet for less than `timeout`: look again when it could have passed.
            tokio::time::sleep_until(deadline.max(Instant::now() + timeout / 4)).await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .quiet_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
