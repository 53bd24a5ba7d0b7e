//! Listening sockets: one per worker, all on the gate's one port.
//!
//! Workers sharing one socket all wake for every new connection, and all but one find
//! nothing to accept. With `SO_REUSEPORT` each worker owns a socket and the kernel hands
//! each connection to exactly one of them. (Only processes of the same user can join the
//! port.)

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Pending connections per socket, as tokio's own `bind`.
const BACKLOG: i32 = 1024;

/// Binds the gate's port so that `serve` can give each worker its own socket.
///
/// A port some process already listens on is refused, as a plain bind would refuse it:
/// `SO_REUSEPORT` alone would let a second gate (a forgotten manual run next to the
/// service, say) join silently and split the connections between two configurations.
pub fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    if addr.port() != 0 {
        drop(TcpListener::bind(addr)?);
    }
    tokio::net::TcpListener::from_std(reuse_port_listener(addr)?)
}

/// A socket per worker on the address of `first`, which is the first of them. A listener
/// bound without `SO_REUSEPORT` (by a caller other than [`bind`]) is shared instead.
pub(super) fn per_worker(first: TcpListener, workers: usize) -> io::Result<Vec<TcpListener>> {
    let own_sockets = SockRef::from(&first).reuse_port().unwrap_or(false);
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    while listeners.len() < workers {
        let next = if own_sockets {
            reuse_port_listener(addr)?
        } else {
            listeners[0].try_clone()?
        };
        listeners.push(next);
    }
    Ok(listeners)
}

fn reuse_port_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std and tokio do: restarting must not wait for old connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections waiting on each listener, after `n` connects to `addr`.
    fn spread(listeners: &[TcpListener], addr: SocketAddr, n: usize) -> Vec<usize> {
        let clients: Vec<_> = (0..n)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let counts = listeners
            .iter()
            .map(|l| std::iter::from_fn(|| l.accept().ok()).count())
            .collect();
        drop(clients);
        counts
    }

    #[tokio::test]
    async fn each_worker_gets_its_own_socket_and_connections_spread() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let first = first.into_std().unwrap();
        let addr = first.local_addr().unwrap();
        let all = per_worker(first, 2).unwrap();
        assert!(all.iter().all(|l| l.local_addr().unwrap() == addr));
        let counts = spread(&all, addr, 32);
        // Every connection is queued on exactly one socket, and both get some (the
        // chance that 32 hashed connections all land on one is 2^-31).
        assert_eq!(counts.iter().sum::<usize>(), 32, "{counts:?}");
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn a_plain_listener_is_shared() {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        first.set_nonblocking(true).unwrap();
        let addr = first.local_addr().unwrap();
        let all = per_worker(first, 2).unwrap();
        // One socket behind two handles: whichever accepts first takes them all.
        assert_eq!(spread(&all, addr, 8), [8, 0]);
    }

    #[tokio::test]
    async fn a_second_gate_on_the_same_port_is_refused() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = bind(first.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn a_port_held_by_another_socket_is_refused() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = reuse_port_listener(held.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
