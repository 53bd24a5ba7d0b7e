//! `portcullis identity export | list`, in both modes.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use portcullis::sources::{self, ExportFormat};
use portcullis::state::StateDir;
use portcullis::{identity_list, operator};

use crate::runtime;

#[derive(Subcommand)]
pub(crate) enum IdentityCommand {
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
pub(crate) struct ListArgs {
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
pub(crate) enum Format {
    P12,
    Pem,
    #[value(name = "mobileconfig")]
    MobileConfig,
}

/// Runs one `identity` command.
pub(crate) fn run(command: IdentityCommand) -> anyhow::Result<()> {
    match command {
        IdentityCommand::Export {
            name,
            format,
            embed_password,
            state_dir,
            namespace,
            output,
        } => export_format(format, embed_password)
            .and_then(|format| export(&name, format, state_dir, namespace, output)),
        IdentityCommand::List(args) => list(args),
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
