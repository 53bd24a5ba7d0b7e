//! `portcullis operator`: the controller and the data plane, fed by watches.

use std::net::SocketAddr;

use anyhow::{Context, anyhow};
use clap::ValueEnum;
use portcullis::operator;
use portcullis::telemetry::init_logging;
use tokio_util::sync::CancellationToken;

use crate::serve::{DRAIN, ProxyArgs, bind, bind_gate, wait_for_signal};

#[derive(clap::Args)]
pub(crate) struct Operator {
    /// Which part to run: the controller (writes certificates; leader-elected), the data
    /// plane (proxy), or both.
    #[arg(long, value_enum, env = "PORTCULLIS_ROLE", default_value = "all")]
    role: Role,
    /// The operator's namespace, holding the CA, cookie-key and CRL Secrets and the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "portcullis")]
    namespace: String,
    /// Name of the CA Secret; name an existing kubernetes.io/tls Secret to bring your own CA.
    #[arg(long, env = "PORTCULLIS_CA_SECRET", default_value = "portcullis-ca")]
    ca_secret: String,
    /// This release's name (the chart: the release name): it acts only on ProtectedRoutes
    /// and ClientIdentities labelled portcullis.dev/instance=<name> (and unlabelled ones,
    /// see --claim-unlabelled), and labels every Secret it writes with it.
    #[arg(long, env = "PORTCULLIS_INSTANCE", default_value = portcullis::controller::names::DEFAULT_INSTANCE)]
    instance: String,
    /// Whether ProtectedRoutes and ClientIdentities without a portcullis.dev/instance label
    /// are this release's. Exactly one release in a cluster should claim them: run any
    /// other with --claim-unlabelled=false.
    #[arg(long, env = "PORTCULLIS_CLAIM_UNLABELLED", default_value_t = true, action = clap::ArgAction::Set)]
    claim_unlabelled: bool,
    /// This replica's name as leader-election holder. Default: the host name.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Address of the TLS listener (proxy role).
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// A second TLS listener where every connection must open with a PROXY protocol
    /// header: the port only the ingress proxy (Traefik) may reach, so no other pod can
    /// forge a client address. Unset: no such port.
    #[arg(long, env = "PORTCULLIS_PROXY_PROTOCOL_LISTEN")]
    proxy_protocol_listen: Option<SocketAddr>,
    /// Watch only this namespace (repeatable, or comma-separated): ClientIdentities,
    /// ProtectedRoutes, Enrollments and their Secrets. The operator's own namespace
    /// (--namespace) is always read for the CA, CRL and cookie keys. Unset: every
    /// namespace.
    #[arg(
        long = "watch-namespace",
        env = "PORTCULLIS_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
    #[command(flatten)]
    proxy: ProxyArgs,
    /// Log as JSON lines.
    #[arg(long, env = "PORTCULLIS_LOG_JSON", value_parser = clap::builder::FalseyValueParser::new())]
    log_json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Controller,
    Proxy,
    All,
}

pub(crate) fn run(args: Operator) -> anyhow::Result<()> {
    init_logging(args.log_json);
    crate::runtime()?.block_on(run_operator(args))
}

async fn run_operator(args: Operator) -> anyhow::Result<()> {
    let role = match args.role {
        Role::Controller => operator::Role::Controller,
        Role::Proxy => operator::Role::Proxy,
        Role::All => operator::Role::All,
    };
    let instance = portcullis::resources::Instance::new(&args.instance, args.claim_unlabelled)
        .map_err(|e| anyhow!("--instance: {e}"))?;
    let (listener, proxy_protocol_listener) = match role {
        operator::Role::Controller => (None, None),
        _ => (
            Some(bind_gate(args.listen, "--listen")?),
            match args.proxy_protocol_listen {
                Some(addr) => Some(bind_gate(addr, "--proxy-protocol-listen")?),
                None => None,
            },
        ),
    };
    let admin = bind(args.admin_listen, "--admin-listen").await?;
    let client = kube::Client::try_default().await.context(
        "connecting to Kubernetes (no in-cluster service account and no usable kubeconfig; \
         set KUBECONFIG)",
    )?;
    let pod_name = match args.pod_name {
        Some(name) => name,
        None => hostname(),
    };
    let opts = operator::Options {
        role,
        namespace: args.namespace,
        ca_secret: args.ca_secret,
        pod_name,
        instance,
        listener,
        proxy_protocol_listener,
        scope: portcullis::scope::Scope::from_namespaces(args.watch_namespaces),
        admin,
        seen_flush: args.proxy.seen_flush,
        settings: args.proxy.settings(),
    };
    tracing::info!(
        namespace = %opts.namespace,
        replica = %opts.pod_name,
        instance = %opts.instance.name,
        claim_unlabelled = opts.instance.claim_unlabelled,
        "portcullis operator starting"
    );
    let shutdown = CancellationToken::new();
    let mut run = tokio::spawn(operator::run(client, opts, shutdown.clone()));
    let finished = tokio::select! {
        signal = wait_for_signal() => {
            signal?;
            tracing::info!("shutting down");
            shutdown.cancel();
            match tokio::time::timeout(DRAIN, &mut run).await {
                Ok(finished) => finished,
                Err(_) => return Ok(()),
            }
        }
        finished = &mut run => finished,
    };
    finished
        .map_err(|e| anyhow!("operator task failed: {e}"))?
        .map_err(anyhow::Error::from)
}

/// The kernel's host name (a pod's name in Kubernetes).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("portcullis-{}", std::process::id()))
}
