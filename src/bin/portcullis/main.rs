//! The `portcullis` command line. Everything real lives in the library; these files parse
//! arguments, wire tasks together and turn errors into one clear message and exit code.
//!
//! ```text
//!  main.rs        the commands, dispatch, check, crd, cookie-key
//!  serve.rs       what both servers share: data-plane flags, listeners, signals
//!  standalone.rs  portcullis standalone
//!  operator.rs    portcullis operator
//!  identity.rs    portcullis identity export | list
//!  enroll.rs      portcullis enroll
//!  backup.rs      portcullis backup | restore
//! ```

mod backup;
mod enroll;
mod identity;
mod operator;
mod serve;
mod standalone;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::state::StateDir;
use portcullis::{resources, sources};

/// mimalloc rather than the C library's allocator: faster on the request path, and it
/// hands memory freed after a burst of connections back to the system instead of keeping
/// it per thread; musl's allocator (the static image) is much slower still.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Standalone(standalone::Standalone),
    /// Run the Kubernetes operator: the controller and the data plane, fed by watches
    /// (kubeconfig or in-cluster credentials).
    Operator(operator::Operator),
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
    Identity(identity::IdentityCommand),
    /// The key ring that signs fallback cookies.
    #[command(subcommand)]
    CookieKey(CookieKeyCommand),
    /// Create a one-time enrollment link for a device: a URL and QR code to open on it, and
    /// a one-time password to type there. A new link cancels the identity's previous one.
    Enroll(enroll::Enroll),
    /// Write everything the gate's trust depends on (CA, revocation ledger, cookie keys,
    /// device and server certificates, the identities' specs) to one password-protected
    /// file (age, scrypt).
    Backup(backup::Backup),
    /// Restore a backup into a new state directory or a cluster where the operator has not
    /// created a CA yet. Refuses when a CA exists; never replaces anything.
    Restore(backup::Restore),
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
        Command::Standalone(args) => standalone::run(args),
        Command::Operator(args) => operator::run(args),
        Command::Crd => {
            print!("{}", resources::crd_yaml());
            Ok(())
        }
        Command::Check { config } => return check(&config),
        Command::Identity(command) => identity::run(command),
        Command::CookieKey(CookieKeyCommand::Rotate { state_dir }) => rotate(state_dir),
        Command::Enroll(args) => enroll::run(args),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn rotate(state_dir: PathBuf) -> anyhow::Result<()> {
    let state = StateDir::new(state_dir);
    state.ensure_initialised()?;
    let keys = state.rotate_cookie_keys()?;
    println!(
        "rotated: new cookies are signed with a new key; {} key(s) verify. A running gate \
         picks this up within a second.",
        keys.len()
    );
    Ok(())
}

/// A multi-threaded runtime for commands that talk to Kubernetes or serve.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
