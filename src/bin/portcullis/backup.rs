//! `portcullis backup` and `portcullis restore`, in both modes. The password comes from
//! `--password-file`, `PORTCULLIS_BACKUP_PASSWORD` or a prompt; never from an argument,
//! which other users could read in the process list and shell history.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use portcullis::backup::{self, Archive, Contents, MIN_PASSWORD_CHARS, Password, Report};
use portcullis::resources::Instance;
use portcullis::resources::names::{CA_SECRET, DEFAULT_INSTANCE};
use portcullis::state::StateDir;

use crate::runtime;

/// The environment variable a password may come from.
const PASSWORD_ENV: &str = "PORTCULLIS_BACKUP_PASSWORD";

/// Where the installation is (one of the two modes).
#[derive(clap::Args)]
pub(crate) struct Target {
    /// Standalone state directory.
    #[arg(long, conflicts_with = "namespace")]
    state_dir: Option<PathBuf>,
    /// Kubernetes: the operator's namespace (CA, CRL and cookie-key Secrets); custom
    /// resources are read from, and restored to, their own namespaces. Uses the kubeconfig
    /// or in-cluster credentials.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Read the password from this file (one trailing newline is ignored). Else the
    /// PORTCULLIS_BACKUP_PASSWORD environment variable, else a prompt.
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
}

/// `portcullis backup`.
#[derive(clap::Args)]
pub(crate) struct Backup {
    /// The backup file to write (mode 0600; replaced atomically if it exists).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    target: Target,
    /// Standalone: also keep this config file (routes and identities), so the devices can
    /// be recreated from the backup alone.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kubernetes: the CA Secret's name (the operator's --ca-secret).
    #[arg(long, default_value = CA_SECRET, conflicts_with = "state_dir")]
    ca_secret: String,
    /// Kubernetes: the release to back up (the operator's --instance; the chart's release
    /// name): only its ProtectedRoutes and ClientIdentities are kept.
    #[arg(long, env = "PORTCULLIS_INSTANCE", default_value = DEFAULT_INSTANCE)]
    instance: String,
    /// Kubernetes: whether that release claims objects without a portcullis.dev/instance
    /// label (the operator's --claim-unlabelled).
    #[arg(long, env = "PORTCULLIS_CLAIM_UNLABELLED", default_value_t = true, action = clap::ArgAction::Set)]
    claim_unlabelled: bool,
}

/// `portcullis restore`.
#[derive(clap::Args)]
pub(crate) struct Restore {
    /// The backup file.
    file: PathBuf,
    #[command(flatten)]
    target: Target,
    /// Standalone: write the backup's config file here (it must not exist).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kubernetes: the release that will run on the restored objects (the operator's
    /// --instance; the chart's release name). Restored Secrets are labelled with it.
    #[arg(long, env = "PORTCULLIS_INSTANCE", default_value = DEFAULT_INSTANCE)]
    instance: String,
}

/// Takes a backup.
pub(crate) fn backup(args: Backup) -> anyhow::Result<()> {
    let mode = mode(&args.target, args.config.as_deref())?;
    let contents = match mode {
        Mode::Standalone(dir) => Contents::Standalone(backup::collect_standalone(
            &StateDir::new(dir),
            args.config.as_deref(),
        )?),
        Mode::Kubernetes(ns) => Contents::Kubernetes(Box::new(runtime()?.block_on(async {
            let instance = Instance::new(&args.instance, args.claim_unlabelled)
                .map_err(|e| anyhow::anyhow!("--instance: {e}"))?;
            let client = client().await?;
            backup::collect_cluster(&client, &ns, &args.ca_secret, &instance)
                .await
                .map_err(anyhow::Error::from)
        })?)),
    };
    // Asked only once the installation was read: a typo in --state-dir costs no typing.
    let password = password(&args.target, true)?;
    let archive = Archive::new(contents);
    backup::write_archive(&args.output, &archive, &password)?;
    println!(
        "wrote {} ({})",
        args.output.display(),
        summary(&archive.contents)
    );
    println!(
        "keep it offline and its password apart from it: it holds the CA key, which can mint \
         certificates this gate admits"
    );
    Ok(())
}

/// Restores a backup.
pub(crate) fn restore(args: Restore) -> anyhow::Result<()> {
    let mode = mode(&args.target, args.config.as_deref())?;
    let instance =
        Instance::new(&args.instance, true).map_err(|e| anyhow::anyhow!("--instance: {e}"))?;
    let password = password(&args.target, false)?;
    let archive = backup::read_archive(&args.file, &password)?;
    let report = match (mode, &archive.contents) {
        (Mode::Standalone(dir), Contents::Standalone(c)) => {
            backup::restore_standalone(c, &dir, args.config.as_deref())?
        }
        (Mode::Kubernetes(ns), Contents::Kubernetes(c)) => runtime()?.block_on(async {
            let client = client().await?;
            backup::restore_cluster(&client, c, &ns, &instance)
                .await
                .map_err(anyhow::Error::from)
        })?,
        (_, contents) => bail!(
            "{} is a {} backup ({}): restore it with {}",
            args.file.display(),
            contents.mode(),
            summary(contents),
            match contents {
                Contents::Standalone(_) => "--state-dir DIR",
                Contents::Kubernetes(_) => "--namespace NS",
            }
        ),
    };
    print_report(&archive, &report);
    Ok(())
}

fn print_report(archive: &Archive, report: &Report) {
    println!(
        "restored the backup taken {} by {}:",
        archive.created_at, archive.created_by
    );
    for line in &report.lines {
        println!("  {line}");
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
}

fn summary(contents: &Contents) -> String {
    match contents {
        Contents::Standalone(c) => {
            let devices = c
                .files
                .keys()
                .filter(|k| k.starts_with("identities/") && k.ends_with("/tls.crt"))
                .count();
            let config = if c.config.is_some() {
                ", the config file"
            } else {
                ""
            };
            format!("CA, CRL, cookie keys, {devices} device(s){config}")
        }
        Contents::Kubernetes(c) => format!(
            "CA, CRL, cookie keys from namespace {}, {} ClientIdentities, {} ProtectedRoutes, \
             {} device and server Secrets",
            c.namespace,
            c.identities.len(),
            c.routes.len(),
            c.owned_secrets.len()
        ),
    }
}

enum Mode {
    Standalone(PathBuf),
    Kubernetes(String),
}

fn mode(target: &Target, config: Option<&Path>) -> anyhow::Result<Mode> {
    if config.is_some() && target.state_dir.is_none() {
        bail!("--config is for a standalone installation (with --state-dir)");
    }
    match (&target.state_dir, &target.namespace) {
        (Some(dir), _) => Ok(Mode::Standalone(dir.clone())),
        (None, Some(ns)) => Ok(Mode::Kubernetes(ns.clone())),
        (None, None) => bail!(
            "say which installation: --state-dir DIR (standalone) or --namespace NS (the \
             operator's namespace in Kubernetes)"
        ),
    }
}

async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (set KUBECONFIG, or pass --state-dir DIR for a standalone installation)")
}

/// The password: file, environment, or prompt (twice when `new`, so a typo does not lock
/// the backup for good).
fn password(target: &Target, new: bool) -> anyhow::Result<Password> {
    let text = if let Some(path) = &target.password_file {
        read_password_file(path)?
    } else if let Ok(text) = std::env::var(PASSWORD_ENV) {
        text
    } else if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Backup password: ")
            .context("reading the password from the terminal")?;
        if new {
            let again = rpassword::prompt_password("Same password again: ")
                .context("reading the password from the terminal")?;
            if again != first {
                bail!("the two passwords differ; nothing was written");
            }
        }
        first
    } else {
        bail!(
            "no password: pass --password-file PATH or set {PASSWORD_ENV} (there is no \
             terminal to ask on)"
        );
    };
    if text.is_empty() {
        bail!("the password is empty");
    }
    if new && text.chars().count() < MIN_PASSWORD_CHARS {
        bail!(
            "the password has {} characters; use at least {MIN_PASSWORD_CHARS} (a few random \
             words are easy to keep): the backup holds the CA key",
            text.chars().count()
        );
    }
    Ok(Password::new(text))
}

fn read_password_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}
