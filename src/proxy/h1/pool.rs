//! The fast path's idle upstream connections: plain TCP streams between two responses.
//!
//! A connection goes back only after its response was read to the exact end with nothing
//! more from the upstream, so no byte of one exchange can be taken for the next.

use std::time::Duration;

use http::uri::Authority;
use tokio::net::TcpStream;

use super::super::upstream::{IdleConns, Reusable, UpstreamError, dial};

#[derive(Debug)]
pub struct Pool {
    idle: IdleConns<TcpStream>,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            idle: IdleConns::default(),
            connect_timeout,
        }
    }

    /// The most recently used idle connection that still looks open.
    pub fn take(&self, upstream: &Authority) -> Option<TcpStream> {
        self.idle.take(upstream)
    }

    pub async fn connect(&self, upstream: &Authority) -> Result<TcpStream, UpstreamError> {
        dial(upstream, self.connect_timeout).await
    }

    pub fn put(&self, upstream: &Authority, tcp: TcpStream) {
        self.idle.put(upstream, tcp);
    }

    /// Closes connections idle too long or closed by the upstream.
    pub fn close_idle(&self) {
        self.idle.close_idle();
    }
}

/// An idle connection has nothing to read: a readable one was closed by the upstream (or
/// holds bytes nobody asked for). Costs no system call unless the event loop has seen the
/// socket become readable.
impl Reusable for TcpStream {
    fn is_open(&self) -> bool {
        matches!(self.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn connections_the_upstream_closed_or_wrote_to_are_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority: Authority = listener
            .local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("authority");
        let pool = Pool::new(Duration::from_secs(1));
        let mut held = Vec::new();
        for _ in 0..3 {
            let tcp = pool.connect(&authority).await.expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            held.push(server);
            pool.put(&authority, tcp);
        }
        // The newest is taken first: close it, write junk into the next.
        held[2].shutdown().await.expect("shutdown");
        drop(held.pop());
        held[1]
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tcp = pool.take(&authority).expect("the quiet one");
        assert_eq!(
            tcp.local_addr().expect("addr"),
            held[0].peer_addr().expect("addr")
        );
        assert!(pool.take(&authority).is_none());
    }
}
