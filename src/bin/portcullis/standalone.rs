//! `portcullis standalone`: the gate from one YAML file and a state directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use portcullis::acme::http01::serve_http;
use portcullis::proxy;
use portcullis::sources;
use portcullis::state::StateDir;
use portcullis::telemetry::{Metrics, init_logging};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::serve::{DRAIN, ProxyArgs, bind, bind_gate, wait_for_signal};

#[derive(clap::Args)]
pub(crate) struct Standalone {
    /// The config file (watched; changes apply within a second).
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    config: PathBuf,
    /// Where the CA, certificates and device files are kept.
    #[arg(
        long,
        env = "PORTCULLIS_STATE_DIR",
        default_value = "./portcullis-state"
    )]
    state_dir: PathBuf,
    /// Address of the TLS listener.
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    admin_listen: SocketAddr,
    /// Address of an optional plain-HTTP listener (e.g. 0.0.0.0:80): it answers ACME
    /// http-01 challenges and redirects requests for the configured hosts to https (port
    /// 443 assumed). Off unless set.
    #[arg(long, env = "PORTCULLIS_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    #[command(flatten)]
    proxy: ProxyArgs,
    /// Log as JSON lines.
    #[arg(long, env = "PORTCULLIS_LOG_JSON", value_parser = clap::builder::FalseyValueParser::new())]
    log_json: bool,
}

pub(crate) fn run(args: Standalone) -> anyhow::Result<()> {
    init_logging(args.log_json);
    crate::runtime()?.block_on(run_standalone(args))
}

async fn run_standalone(args: Standalone) -> anyhow::Result<()> {
    let listener = bind_gate(args.listen, "--listen")?;
    let admin = bind(args.admin_listen, "--admin-listen").await?;
    let http = match args.http_listen {
        Some(addr) => Some(bind(addr, "--http-listen").await?),
        None => None,
    };
    let listen = listener.local_addr().unwrap_or(args.listen);

    let state = StateDir::new(&args.state_dir);
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let (config, st, m) = (args.config.clone(), state.clone(), metrics.clone());
    let initial =
        tokio::task::spawn_blocking(move || sources::file::load_initial(&config, &st, &m))
            .await
            .context("initial load")?
            .map_err(|e| match e {
                portcullis::Error::Config(list) if list.contains('\n') => {
                    anyhow!("the configuration has problems:\n{list}")
                }
                e => anyhow!(e),
            })?;
    let (loaded, watched) = (initial.loaded, initial.files);
    if loaded.created_ca {
        print!("{}", sources::instructions(&loaded.config, &state, listen));
    }
    tracing::info!(
        %listen,
        admin = %admin.local_addr().unwrap_or(args.admin_listen),
        http = %http
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or("off".into(), |a| a.to_string()),
        routes = loaded.snapshot.routes().len(),
        identities = loaded.snapshot.live_count(),
        state_dir = %state.root().display(),
        "portcullis standalone serving"
    );

    let (configs_tx, configs) = tokio::sync::watch::channel(loaded.config);
    let (tx, rx) = tokio::sync::watch::channel(Some(loaded.snapshot));
    let shutdown = CancellationToken::new();
    let seen_flush = args.proxy.seen_flush;
    let mut settings = args.proxy.settings();
    let acme = portcullis::acme::Responders::default();
    settings.acme_challenges = Some(acme.tls_alpn.clone());
    let sightings = settings.sightings.clone();
    let store = portcullis::enroll::FileStore::new(state.enrollments_dir());
    settings.enrollments = Some(Arc::new(portcullis::enroll::Enrollments::new(Arc::new(
        store,
    ))));
    // http-01 challenge answers: the ACME manager adds them, --http-listen serves them.
    let http01 = acme.http01.clone();
    let manager = portcullis::acme::Manager::new(state.clone(), acme, metrics.clone())
        .serving_http01(http.is_some());
    let mut tasks = vec![
        tokio::spawn(proxy::serve(
            listener,
            rx.clone(),
            settings,
            metrics.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(proxy::serve_admin(
            admin,
            proxy::snapshot_loaded(rx.clone()),
            Arc::new(registry),
            Some(sightings.clone()),
            shutdown.clone(),
        )),
        tokio::spawn(proxy::seen::keep_seen_files(
            sightings,
            state.clone(),
            seen_flush,
            shutdown.clone(),
        )),
        tokio::spawn(manager.run(configs, shutdown.clone())),
        tokio::spawn(sources::file::run(
            args.config,
            state,
            watched,
            tx,
            configs_tx,
            metrics.clone(),
            shutdown.clone(),
        )),
    ];
    if let Some(http) = http {
        tasks.push(tokio::spawn(serve_http(
            http,
            http01,
            rx,
            metrics,
            shutdown.clone(),
        )));
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    let drained = tokio::time::timeout(DRAIN, futures_join(tasks)).await;
    if drained.is_err() {
        tracing::warn!(
            "connections still open after {}s; closing them",
            DRAIN.as_secs()
        );
    }
    Ok(())
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}
