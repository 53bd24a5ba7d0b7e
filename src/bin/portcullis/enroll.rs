//! `portcullis enroll`: a one-time link, its QR code and one-time password.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use portcullis::sources;
use portcullis::state::StateDir;

use crate::runtime;

#[derive(clap::Args)]
pub(crate) struct Enroll {
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

pub(crate) fn run(args: Enroll) -> anyhow::Result<()> {
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
    state.ensure_initialised()?;
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
