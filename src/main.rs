//! The `portcullis` command line. Everything real lives in the library; this file parses
//! arguments, wires tasks together and turns errors into one clear message and exit code.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use portcullis::sources::{self, ExportFormat};
use portcullis::state::StateDir;

/// mimalloc rather than the C library's allocator: faster on the request path, and it
/// hands memory freed after a burst of connections back to the system instead of keeping
/// it per thread; musl's allocator (the static image) is much slower still.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use portcullis::telemetry::{Metrics, init_logging};
use portcullis::{identity_list, operator, proxy, resources};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long open connections get to finish after SIGINT/SIGTERM.
const DRAIN: Duration = Duration::from_secs(10);

/// A mutual-TLS gate for self-hosted Home Assistant: a small CA, one client certificate
/// per device, and the proxy that lets in only those devices.
#[derive(Parser)]
#[command(name = "portcullis", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gate without Kubernetes, from a YAML file of ProtectedRoutes and
    /// ClientIdentities; state (CA, certificates, device files) lives in a directory.
    Standalone(Standalone),
    /// Run the Kubernetes operator: the controller and the data plane, fed by watches
    /// (kubeconfig or in-cluster credentials).
    Operator(Operator),
    /// Print the CustomResourceDefinitions generated from the Rust types.
    Crd,
    /// Validate a standalone config file and report every problem.
    Check {
        /// The config file.
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Device identities.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// The key ring that signs fallback cookies.
    #[command(subcommand)]
    CookieKey(CookieKeyCommand),
    /// Create a one-time enrollment link for a device: a URL and QR code to open on it, and
    /// a one-time password to type there. A new link cancels the identity's previous one.
    Enroll(Enroll),
}

#[derive(clap::Args)]
struct Enroll {
    /// The ClientIdentity's name.
    name: String,
    /// Standalone state directory (the running gate's). Without it, the link is an
    /// Enrollment object in Kubernetes (kubeconfig or in-cluster credentials).
    #[arg(long, env = "PORTCULLIS_STATE_DIR", conflicts_with = "namespace")]
    state_dir: Option<PathBuf>,
    /// Kubernetes namespace of the ClientIdentity. Default: the kubeconfig's.
    #[arg(short, long)]
    namespace: Option<String>,
    /// The standalone config file: checks the identity, and gives the link's host (the
    /// first host of a route admitting NAME) when --url is not given.
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    /// How long the link works, at most 24h.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The gate's address as the device reaches it, e.g. https://ha.example.com:8443
    /// (behind a router forwarding another port, give that port). Required in Kubernetes.
    #[arg(long)]
    url: Option<String>,
    /// The gate's listen address: its port goes into a URL derived from --config.
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Also write the QR code to this PNG file.
    #[arg(long)]
    qr_png: Option<PathBuf>,
}

#[derive(clap::Args)]
struct Standalone {
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
    #[command(flatten)]
    proxy: ProxyArgs,
    /// Log as JSON lines.
    #[arg(long, env = "PORTCULLIS_LOG_JSON", value_parser = clap::builder::FalseyValueParser::new())]
    log_json: bool,
}

/// Who the data plane trusts to speak for clients.
#[derive(clap::Args)]
struct ProxyArgs {
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
    seen_flush: Duration,
}

impl ProxyArgs {
    fn settings(self) -> proxy::Settings {
        proxy::Settings {
            trusted_proxies: self.trusted_proxy,
            proxy_protocol_from: self.proxy_protocol_from,
            limits: proxy::Limits::default(),
            workers: self.workers,
            enrollments: None,
            sightings: Arc::default(),
        }
    }
}

#[derive(clap::Args)]
struct Operator {
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
    /// This replica's name as leader-election holder. Default: the host name.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Address of the TLS listener (proxy role).
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
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

#[derive(Subcommand)]
enum IdentityCommand {
    /// Write a device's files: a .p12 keystore (prints its password), PEM files, or an
    /// Apple configuration profile for iPhone, iPad and Mac.
    Export {
        /// The ClientIdentity's name.
        name: String,
        /// p12: one password-protected file for phones and browsers; pem: a directory
        /// with tls.crt, tls.key and ca.crt; mobileconfig: the .p12 in a profile that
        /// iPhone, iPad and Mac install from Settings (used by Safari, not by other apps).
        #[arg(long, value_enum, default_value = "p12")]
        format: Format,
        /// mobileconfig only: put the .p12 password into the profile, so iOS does not ask
        /// for it. Anyone who gets the file can then install the identity.
        #[arg(long)]
        embed_password: bool,
        /// Standalone state directory. Without it, the files come from the identity's
        /// Secret in Kubernetes (kubeconfig or in-cluster credentials).
        #[arg(long, env = "PORTCULLIS_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Kubernetes namespace of the ClientIdentity. Default: the kubeconfig's.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Output path. Default: NAME.p12, the directory NAME/ for pem, or
        /// NAME.mobileconfig.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Devices: serial(s) (current first, then superseded ones still admitted; first 8 hex
    /// digits), expiry, last seen, state (ok, expiring, awaiting device, revoked, ...) and
    /// open connections.
    ///
    /// Standalone (--state-dir): connections come from the running gate's admin endpoint
    /// (GET /identities). Kubernetes: from each ClientIdentity's status; connections are
    /// counted by each proxy replica (its admin port's /identities), so the column shows -.
    List(ListArgs),
}

#[derive(clap::Args)]
struct ListArgs {
    /// Standalone state directory. Without it, ClientIdentities are read from Kubernetes
    /// (kubeconfig or in-cluster credentials).
    #[arg(long, env = "PORTCULLIS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Standalone: the running gate's admin address (its --admin-listen).
    #[arg(long, default_value = identity_list::DEFAULT_ADMIN)]
    admin: String,
    /// Kubernetes namespace. Default: the kubeconfig's.
    #[arg(short, long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Kubernetes: every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    P12,
    Pem,
    #[value(name = "mobileconfig")]
    MobileConfig,
}

#[derive(Subcommand)]
enum CookieKeyCommand {
    /// Sign new cookies with a fresh key; the previous key still verifies, so nobody is
    /// logged out. A running gate picks the change up within a second.
    Rotate {
        /// Standalone state directory.
        #[arg(long, env = "PORTCULLIS_STATE_DIR")]
        state_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Standalone(args) => standalone(args),
        Command::Operator(args) => operator(args),
        Command::Crd => {
            print!("{}", resources::crd_yaml());
            Ok(())
        }
        Command::Check { config } => return check(&config),
        Command::Identity(IdentityCommand::Export {
            name,
            format,
            embed_password,
            state_dir,
            namespace,
            output,
        }) => export_format(format, embed_password)
            .and_then(|format| export(&name, format, state_dir, namespace, output)),
        Command::Identity(IdentityCommand::List(args)) => list(args),
        Command::CookieKey(CookieKeyCommand::Rotate { state_dir }) => rotate(state_dir),
        Command::Enroll(args) => enroll(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR (10.0.0.0/8) or IP address"))
}

fn check(config: &std::path::Path) -> ExitCode {
    match sources::load_config(config) {
        Ok(c) => {
            println!(
                "ok: {} routes, {} identities",
                c.routes.len(),
                c.identities.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for problem in &errors.0 {
                eprintln!("{problem}");
            }
            let n = errors.0.len();
            eprintln!(
                "error: {n} problem{} in {}",
                if n == 1 { "" } else { "s" },
                config.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// The library's export format for `--format` and `--embed-password`.
fn export_format(format: Format, embed_password: bool) -> anyhow::Result<ExportFormat> {
    Ok(match format {
        _ if embed_password && format != Format::MobileConfig => {
            bail!("--embed-password applies only to --format mobileconfig")
        }
        Format::P12 => ExportFormat::P12,
        Format::Pem => ExportFormat::Pem,
        Format::MobileConfig => ExportFormat::MobileConfig { embed_password },
    })
}

fn export(
    name: &str,
    format: ExportFormat,
    state_dir: Option<PathBuf>,
    namespace: Option<String>,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let exported = match state_dir {
        Some(dir) => {
            sources::export_identity(&StateDir::new(dir), name, format, output.as_deref())?
        }
        None => runtime()?.block_on(async {
            let client = kube::Client::try_default().await.context(
                "connecting to Kubernetes (pass --state-dir DIR for a standalone installation, \
                 or set KUBECONFIG)",
            )?;
            let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            operator::export_identity(client, &ns, name, format, output.as_deref())
                .await
                .map_err(anyhow::Error::from)
        })?,
    };
    for path in &exported.paths {
        println!("wrote {}", path.display());
    }
    match (format, exported.password) {
        (
            ExportFormat::MobileConfig {
                embed_password: true,
            },
            _,
        ) => eprintln!(
            "warning: the profile holds the private key and its password: anyone who gets \
             the file can install this identity; send it privately and delete it afterwards"
        ),
        (ExportFormat::MobileConfig { .. }, Some(password)) => {
            println!("password: {password} (iOS asks for it when installing the profile)")
        }
        (_, Some(password)) => println!("password: {password}"),
        (_, None) => {}
    }
    Ok(())
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let rows = match args.state_dir {
        Some(dir) => {
            let state = StateDir::new(dir);
            let (rows, notes) =
                runtime()?.block_on(identity_list::list_standalone(&state, &args.admin))?;
            for note in notes {
                eprintln!("note: {note}");
            }
            rows
        }
        None => runtime()?.block_on(async {
            let client = kube::Client::try_default().await.context(
                "connecting to Kubernetes (pass --state-dir DIR for a standalone installation, \
                 or set KUBECONFIG)",
            )?;
            let ns = (!args.all_namespaces).then(|| {
                args.namespace
                    .unwrap_or_else(|| client.default_namespace().to_owned())
            });
            identity_list::list_cluster(client, ns.as_deref())
                .await
                .map_err(anyhow::Error::from)
        })?,
    };
    print!("{}", identity_list::render(&rows));
    Ok(())
}

fn rotate(state_dir: PathBuf) -> anyhow::Result<()> {
    let state = StateDir::new(state_dir);
    if !state.ca_cert_path().is_file() {
        bail!(
            "{} is not a Portcullis state directory (no ca/tls.crt); start `portcullis \
             standalone` once first",
            state.root().display()
        );
    }
    let keys = state.rotate_cookie_keys()?;
    println!(
        "rotated: new cookies are signed with a new key; {} key(s) verify. A running gate \
         picks this up within a second.",
        keys.len()
    );
    Ok(())
}

fn enroll(args: Enroll) -> anyhow::Result<()> {
    let enrolled = match &args.state_dir {
        Some(dir) => enroll_standalone(&args, dir)?,
        None => enroll_cluster(&args)?,
    };
    print_link(&args, &enrolled.created)?;
    if let Some(note) = &enrolled.server_trust_note {
        eprintln!("\nnote: {note}");
    }
    Ok(())
}

fn enroll_standalone(
    args: &Enroll,
    state_dir: &std::path::Path,
) -> anyhow::Result<sources::Enrolled> {
    let state = StateDir::new(state_dir);
    if !state.ca_cert_path().is_file() {
        bail!(
            "{} is not a Portcullis state directory (no ca/tls.crt); start `portcullis \
             standalone` once first",
            state.root().display()
        );
    }
    Ok(sources::enroll_standalone(&sources::EnrollStandalone {
        state: &state,
        name: &args.name,
        ttl: args.ttl,
        url: args.url.as_deref(),
        config: args.config.as_deref(),
        port: args.listen.port(),
    })?)
}

fn enroll_cluster(args: &Enroll) -> anyhow::Result<sources::Enrolled> {
    if args.config.is_some() {
        bail!("--config is for standalone installations: pass --state-dir DIR with it");
    }
    let Some(url) = &args.url else {
        bail!(
            "pass --url https://HOST[:PORT]: the address devices reach the gate at (in \
             Kubernetes the CLI cannot know the external port); for a standalone \
             installation pass --state-dir DIR"
        );
    };
    runtime()?.block_on(async {
        let client = kube::Client::try_default().await.context(
            "connecting to Kubernetes (pass --state-dir DIR for a standalone installation, \
             or set KUBECONFIG)",
        )?;
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let request = sources::EnrollCluster {
            namespace: &namespace,
            name: &args.name,
            ttl: args.ttl,
            url,
        };
        Ok(sources::enroll_cluster(&client, &request).await?)
    })
}

/// The link, its QR code and the one-time password: shown once, never stored.
fn print_link(args: &Enroll, created: &portcullis::enroll::Created) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let qr = portcullis::enroll::qr::terminal(&created.url, std::io::stdout().is_terminal())?;
    if let Some(path) = &args.qr_png {
        let png = portcullis::enroll::qr::png(&created.url)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
    }
    let expires = humantime::format_rfc3339_seconds(created.expires_at);
    println!(
        "Enrollment link for {} (works once, until {expires}, {} from now):\n\n  {}\n",
        args.name,
        humantime::format_duration(args.ttl),
        created.url
    );
    print!("{qr}");
    if let Some(path) = &args.qr_png {
        println!("QR code also written to {}", path.display());
    }
    println!(
        "\nOne-time password: {}\n\nOn the device, scan the QR code (or open the link), press \
         \"Get my certificate\" and type the one-time password when asked. Running `portcullis \
         enroll {}` again cancels this link.",
        created.password, args.name
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn standalone(args: Standalone) -> anyhow::Result<()> {
    init_logging(args.log_json);
    runtime()?.block_on(run_standalone(args))
}

fn operator(args: Operator) -> anyhow::Result<()> {
    init_logging(args.log_json);
    runtime()?.block_on(run_operator(args))
}

async fn run_operator(args: Operator) -> anyhow::Result<()> {
    let role = match args.role {
        Role::Controller => operator::Role::Controller,
        Role::Proxy => operator::Role::Proxy,
        Role::All => operator::Role::All,
    };
    let listener = match role {
        operator::Role::Controller => None,
        _ => Some(bind_gate(args.listen)?),
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
        listener,
        admin,
        seen_flush: args.proxy.seen_flush,
        settings: args.proxy.settings(),
    };
    tracing::info!(namespace = %opts.namespace, replica = %opts.pod_name, "portcullis operator starting");
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

async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(addr, flag, e))
}

/// The gate's port: bound so that each proxy worker gets its own socket on it.
fn bind_gate(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    proxy::bind(addr).map_err(|e| bind_error(addr, "--listen", e))
}

fn bind_error(addr: SocketAddr, flag: &str, e: std::io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => "another process holds the port",
        std::io::ErrorKind::PermissionDenied => "ports below 1024 need privileges",
        _ => "check the address",
    };
    anyhow!("cannot listen on {addr}: {e} ({hint}; choose another with {flag})")
}

async fn run_standalone(args: Standalone) -> anyhow::Result<()> {
    let listener = bind_gate(args.listen)?;
    let admin = bind(args.admin_listen, "--admin-listen").await?;
    let listen = listener.local_addr().unwrap_or(args.listen);

    let state = StateDir::new(&args.state_dir);
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let (config, st, m) = (args.config.clone(), state.clone(), metrics.clone());
    let loaded = tokio::task::spawn_blocking(move || sources::file::load_initial(&config, &st, &m))
        .await
        .context("initial load")?
        .map_err(|e| match e {
            portcullis::Error::Config(list) if list.contains('\n') => {
                anyhow!("the configuration has problems:\n{list}")
            }
            e => anyhow!(e),
        })?;
    if loaded.created_ca {
        print!("{}", sources::instructions(&loaded.config, &state, listen));
    }
    tracing::info!(
        %listen,
        admin = %admin.local_addr().unwrap_or(args.admin_listen),
        routes = loaded.snapshot.routes().len(),
        identities = loaded.snapshot.live_count(),
        state_dir = %state.root().display(),
        "portcullis standalone serving"
    );

    let (tx, rx) = tokio::sync::watch::channel(Some(loaded.snapshot));
    let shutdown = CancellationToken::new();
    let seen_flush = args.proxy.seen_flush;
    let mut settings = args.proxy.settings();
    let sightings = settings.sightings.clone();
    let store = portcullis::enroll::FileStore::new(state.enrollments_dir());
    settings.enrollments = Some(Arc::new(portcullis::enroll::Enrollments::new(Arc::new(
        store,
    ))));
    let tasks = [
        tokio::spawn(proxy::serve(
            listener,
            rx.clone(),
            settings,
            metrics.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(proxy::serve_admin(
            admin,
            proxy::snapshot_loaded(rx),
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
        tokio::spawn(sources::file::run(
            args.config,
            state,
            tx,
            metrics,
            shutdown.clone(),
        )),
    ];
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

async fn futures_join(tasks: [tokio::task::JoinHandle<()>; 4]) {
    for task in tasks {
        let _ = task.await;
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("installing the SIGINT handler"),
        _ = term.recv() => Ok(()),
    }
}
