//! The data plane: TLS with optional client certificates, admission, forwarding.
//!
//! ```text
//!  accept ─▶ [PROXY header, trusted peers only] ─▶ TLS (newest snapshot's config)
//!         ─▶ hyper h1/h2 ─▶ forward::handle: admission::admit ─▶ upstream (pooled)
//!                                   └─ 101 ─▶ tunnel (closed when its identity goes)
//! ```
//! Every connection reads the snapshot current at its start for TLS and the newest one
//! for each request, and watches for its own identity disappearing.

mod admin;
mod conn;
mod forward;
mod headers;
mod proxy_protocol;
mod revocation;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use admin::{Readiness, serve_admin, snapshot_loaded};

use crate::snapshot::SnapshotRx;
use crate::telemetry::Metrics;

/// Bounds on what a client controls, so a slow or greedy one cannot hold the gate.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open client connections; more are closed at accept.
    pub max_connections: usize,
    /// PROXY header + TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A request's headers must arrive within this (also bounds idle keep-alive).
    pub header_read_timeout: Duration,
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
type UpstreamClient = Client<HttpConnector, hyper::body::Incoming>;

/// What every connection shares.
struct Shared {
    snapshots: SnapshotRx,
    settings: Settings,
    metrics: Arc<Metrics>,
    upstream: UpstreamClient,
    shutdown: CancellationToken,
}

fn upstream_client(limits: &Limits) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(limits.upstream_connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(connector)
}

/// Accepts client connections on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    snapshots: SnapshotRx,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.limits.max_connections));
    let shared = Arc::new(Shared {
        upstream: upstream_client(&settings.limits),
        snapshots,
        settings,
        metrics,
        shutdown: shutdown.clone(),
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
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
