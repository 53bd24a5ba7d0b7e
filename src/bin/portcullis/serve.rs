//! What `standalone` and `operator` share: the data plane's flags, binding the listeners
//! with errors that say what to do, and waiting for a stop signal.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use ipnet::IpNet;
use portcullis::proxy;
use tokio::net::TcpListener;

/// How long open connections get to finish after SIGINT/SIGTERM.
pub(crate) const DRAIN: Duration = Duration::from_secs(10);

/// Who the data plane trusts to speak for clients.
#[derive(clap::Args)]
pub(crate) struct ProxyArgs {
    /// A proxy (CIDR or IP) whose X-Forwarded-For chain is trusted. Repeatable.
    #[arg(long, env = "PORTCULLIS_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_net)]
    trusted_proxy: Vec<IpNet>,
    /// Peers (CIDR or IP) that must send a PROXY protocol header. Repeatable.
    #[arg(long, env = "PORTCULLIS_PROXY_PROTOCOL_FROM", value_delimiter = ',', value_parser = parse_net)]
    proxy_protocol_from: Vec<IpNet>,
    /// Threads serving client connections (0: one per available CPU).
    #[arg(long, env = "PORTCULLIS_WORKERS", default_value_t = 0)]
    workers: usize,
    /// How often what the data plane saw (last seen per device) is written: seen.json in
    /// the state directory, or ClientIdentity status. For tests; the default suits everyone.
    #[arg(long, hide = true, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) seen_flush: Duration,
}

impl ProxyArgs {
    pub(crate) fn settings(self) -> proxy::Settings {
        proxy::Settings {
            trusted_proxies: self.trusted_proxy,
            proxy_protocol_from: self.proxy_protocol_from,
            limits: proxy::Limits::default(),
            workers: self.workers,
            enrollments: None,
            sightings: Arc::default(),
            // Not yet: standalone ACME issuance (issue 14) hands its challenges here.
            acme_challenges: None,
        }
    }
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR (10.0.0.0/8) or IP address"))
}

pub(crate) async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(addr, flag, e))
}

/// The gate's port: bound so that each proxy worker gets its own socket on it.
pub(crate) fn bind_gate(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    proxy::bind(addr).map_err(|e| bind_error(addr, flag, e))
}

fn bind_error(addr: SocketAddr, flag: &str, e: std::io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => "another process holds the port",
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges: grant CAP_NET_BIND_SERVICE, e.g. \
             AmbientCapabilities=CAP_NET_BIND_SERVICE in a systemd unit, or forward the port \
             to one above 1023"
        }
        _ => "check the address",
    };
    anyhow!("cannot listen on {addr}: {e} ({hint}; choose another with {flag})")
}

pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("installing the SIGINT handler"),
        _ = term.recv() => Ok(()),
    }
}
