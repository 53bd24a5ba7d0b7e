//! The data plane: TLS with optional client certificates, admission, forwarding.
//!
//! ```text
//!  accept ─▶ [PROXY header, trusted peers only] ─▶ TLS (newest snapshot's config)
//!         ─▶ h1 fast path (plain admitted HTTP/1.1) ─▶ upstream (per-worker raw pool)
//!         ─▶ hyper h1/h2 (everything else) ─▶ forward::handle: admission::admit ─▶ upstream (per-worker pool)
//!                                   └─ 101 ─▶ tunnel (closed when its identity goes)
//! ```
//! Every connection reads the snapshot current at its start for TLS and the newest one
//! for each request, and watches for its own identity disappearing.

mod admin;
mod challenge;
mod conn;
mod enroll;
mod foreign;
mod forward;
mod h1;
mod headers;
mod idle;
mod listen;
mod proxy_protocol;
mod revocation;
pub mod seen;
mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use admin::{Readiness, serve_admin, snapshot_loaded};
pub(crate) use forward::request_host;
pub use listen::bind;
pub use seen::{Sighting, Sightings};

use crate::snapshot::SnapshotRx;
use crate::telemetry::Metrics;

/// Bounds on what a client controls, so a slow or greedy one cannot hold the gate.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open client connections; more are closed at accept.
    pub max_connections: usize,
    /// PROXY header + TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A request's headers must arrive within this; also how long a connection may sit
    /// with no request in flight (HTTP/1 keep-alive, HTTP/2).
    pub header_read_timeout: Duration,
    /// A request body that sends no data for this long is cut off (408).
    pub body_idle_timeout: Duration,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_h2_streams: u32,
    /// Connecting to the upstream.
    pub upstream_connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_h2_streams: 256,
            upstream_connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Who the gate trusts to speak for clients.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Peers whose `X-Forwarded-For` chain is kept (and appended to).
    pub trusted_proxies: Vec<IpNet>,
    /// Peers that must open with a PROXY protocol header (v1 or v2).
    pub proxy_protocol_from: Vec<IpNet>,
    pub limits: Limits,
    /// Threads serving client connections, each running its own single-threaded event
    /// loop (like nginx workers); 0 means one per available CPU.
    pub workers: usize,
    /// Enrollment links served under `/.well-known/portcullis/enroll/`; `None`: that path
    /// still belongs to the gate, and every link there is "not valid".
    pub enrollments: Option<Arc<crate::enroll::Enrollments>>,
    /// Where admissions are reported (last seen, open connections per identity); the mode's
    /// wiring keeps a clone to drain it and to serve `/identities`.
    pub sightings: Arc<Sightings>,
    /// Pending ACME tls-alpn-01 challenges, answered on this port when a client offers
    /// only `acme-tls/1`; `None` (the default): `acme-tls/1` is not offered at all.
    pub acme_challenges: Option<crate::acme::tls_alpn::Challenges>,
}

/// Every IPv4 and IPv6 peer: on a listener only the ingress proxy can reach, every
/// connection must open with a PROXY protocol header.
pub fn everyone() -> Vec<IpNet> {
    vec![
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    nets.iter().any(|net| net.contains(&ip))
}

/// `::ffff:10.0.0.1` and `10.0.0.1` are the same client.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

/// What every connection shares.
struct Shared {
    snapshots: SnapshotRx,
    settings: Settings,
    metrics: Arc<Metrics>,
    upstream: Arc<upstream::Pool>,
    /// The HTTP/1.1 fast path's own idle upstream connections.
    h1_upstream: Arc<h1::Pool>,
    /// Set when `settings.acme_challenges` is.
    challenge_tls: Option<challenge::ChallengeTls>,
    shutdown: CancellationToken,
}

/// Accepts client connections on `listener` until `shutdown`.
///
/// Connections are served by `settings.workers` threads, each with its own
/// current-thread runtime, upstream pool and (when `listener` came from [`bind`])
/// listening socket on the same port. A connection, its upstream requests and its
/// tunnels then stay on one thread: no work-stealing and no cross-thread wake-ups.
pub async fn serve(
    listener: TcpListener,
    snapshots: SnapshotRx,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let workers = match settings.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let listeners = match listener
        .into_std()
        .and_then(|first| listen::per_worker(first, workers))
    {
        Ok(listeners) => listeners,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the proxy workers' listening sockets");
            return;
        }
    };
    // Workers stop with `shutdown`, and also if this future is dropped.
    let stop = shutdown.child_token();
    let _stop_on_drop = stop.clone().drop_guard();
    let slots = Arc::new(Semaphore::new(settings.limits.max_connections));
    let mut stopped = Vec::with_capacity(workers);
    for (n, listener) in listeners.into_iter().enumerate() {
        let shared = Arc::new(Shared {
            upstream: upstream::Pool::new(settings.limits.upstream_connect_timeout),
            h1_upstream: Arc::new(h1::Pool::new(settings.limits.upstream_connect_timeout)),
            challenge_tls: settings
                .acme_challenges
                .clone()
                .map(challenge::ChallengeTls::new),
            snapshots: snapshots.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            shutdown: stop.clone(),
        });
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let slots = slots.clone();
        let started = std::thread::Builder::new()
            .name(format!("proxy-worker-{n}"))
            .spawn(move || {
                worker(listener, shared, slots);
                drop(done);
            });
        match started {
            Ok(_) => stopped.push(finished),
            Err(e) => tracing::error!(worker = n, error = %e, "cannot start a proxy worker"),
        }
    }
    for finished in stopped {
        let _ = finished.await;
    }
}

/// One worker thread: its own event loop accepting and serving until shutdown. Dropping
/// the runtime at the end drops the connections it still holds.
fn worker(listener: std::net::TcpListener, shared: Arc<Shared>, slots: Arc<Semaphore>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a proxy worker's event loop");
            return;
        }
    };
    runtime.block_on(async {
        let (pool, h1_pool) = (shared.upstream.clone(), shared.h1_upstream.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(upstream::IDLE_TIMEOUT / 4);
            loop {
                every.tick().await;
                pool.close_idle();
                h1_pool.close_idle();
            }
        });
        match TcpListener::from_std(listener) {
            Ok(listener) => accept(listener, shared, slots).await,
            Err(e) => tracing::error!(error = %e, "cannot register the listener"),
        }
    });
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, slots: Arc<Semaphore>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared
                .metrics
                .handshake_failures
                .get_or_create(&reason("connection_limit"))
                .inc();
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(conn::handle(tcp, peer, shared.clone(), slot));
    }
}

fn reason(reason: &'static str) -> crate::telemetry::FailureLabels {
    crate::telemetry::FailureLabels { reason }
}
