//! The real `portcullis standalone` binary as a test fixture: [`StandaloneProcess`] starts
//! it on free loopback ports with a config file and a state dir, its stdout and stderr in a
//! log file, waits until `/readyz` on its admin port answers 200, and kills it on drop
//! (printing the log when the test is failing). [`command`] is the bare command line, for a
//! test that runs the binary itself.
//!
//! It needs nothing but std and tempfile (not tests/common/mod.rs), so any test crate can
//! include it at its root:
//! ```ignore
//! #[path = "common/standalone.rs"]
//! mod standalone;
//! ```
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a gate may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the log a panic about the gate quotes.
const LOG_TAIL_LINES: usize = 40;

/// A loopback port nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `portcullis standalone --listen 127.0.0.1:PORT --admin-listen 127.0.0.1:ADMIN
/// --config CONFIG --state-dir STATE` (port 0: the system picks one).
pub fn command(config: &Path, state: &Path, port: u16, admin: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["standalone", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state);
    cmd
}

/// A plain HTTP/1.0 `GET path` on the admin port: (status, body); `None` if nothing
/// answers.
pub fn admin_get(admin: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", admin)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(tcp, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// A config file: the ProtectedRoute `home-assistant` serving `host` from `upstream`, then
/// one ClientIdentity per `(name, spec)`, where `spec` is the YAML under `spec:` (e.g.
/// `"revoked: true"`; `""` writes `spec: {}`).
pub fn config_yaml(host: &str, upstream: SocketAddr, identities: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: ProtectedRoute\nmetadata:\n  \
         name: home-assistant\nspec:\n  hosts: [{host}]\n  upstream:\n    \
         url: http://{upstream}\n"
    );
    for (name, spec) in identities {
        yaml += &format!(
            "---\napiVersion: portcullis.dev/v1alpha1\nkind: ClientIdentity\nmetadata:\n  \
             name: {name}\n"
        );
        if spec.is_empty() {
            yaml += "spec: {}\n";
        } else {
            yaml += "spec:\n";
            for line in spec.lines() {
                yaml += &format!("  {line}\n");
            }
        }
    }
    yaml
}

/// How to start a [`StandaloneProcess`]: [`StandaloneProcess::builder`].
pub struct StandaloneBuilder {
    config: PathBuf,
    state: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log: Option<PathBuf>,
    port: Option<u16>,
}

impl StandaloneBuilder {
    /// An extra argument after the ones [`command`] gives (e.g. `--seen-flush`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Extra arguments after the ones [`command`] gives.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable for the gate (e.g. `RUST_LOG`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The TLS port to listen on (default: a free one), e.g. the port an ACME server
    /// validates tls-alpn-01 on.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Where its stdout and stderr go (created or truncated); by default a file in a temp
    /// dir of its own, removed with the process.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Starts it on two free loopback ports and waits until `/readyz` answers 200; panics
    /// (quoting the log) if it exits first or is not ready within [`READY_TIMEOUT`].
    pub fn start(self) -> StandaloneProcess {
        let (log_dir, log) = match self.log {
            Some(log) => (None, log),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("portcullis-standalone-")
                    .tempdir()
                    .expect("a temp dir for the gate's log");
                let log = dir.path().join("gate.log");
                (Some(dir), log)
            }
        };
        let out =
            File::create(&log).unwrap_or_else(|e| panic!("the gate's log {}: {e}", log.display()));
        let (port, admin) = (self.port.unwrap_or_else(free_port), free_port());
        let child = command(&self.config, &self.state, port, admin)
            .args(&self.args)
            .envs(self.envs)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("the gate's log"))
            .stderr(out)
            .spawn()
            .expect("start portcullis standalone");
        let mut gate = StandaloneProcess {
            child,
            port,
            admin,
            config: self.config,
            state: self.state,
            log,
            _log_dir: log_dir,
            log_quoted: false,
        };
        gate.wait_ready();
        gate
    }
}

/// `portcullis standalone` on free loopback ports, ready to serve; killed on drop, and its
/// log printed then if the test is failing.
pub struct StandaloneProcess {
    child: Child,
    port: u16,
    admin: u16,
    config: PathBuf,
    state: PathBuf,
    log: PathBuf,
    _log_dir: Option<tempfile::TempDir>,
    /// A panic has quoted the log already.
    log_quoted: bool,
}

impl StandaloneProcess {
    /// Starts the gate on `config` with its state in `state` (created if missing), nothing
    /// else: [`StandaloneBuilder::start`].
    pub fn start(config: &Path, state: &Path) -> StandaloneProcess {
        Self::builder(config, state).start()
    }

    /// To add arguments, environment variables or a log file before starting.
    pub fn builder(config: &Path, state: &Path) -> StandaloneBuilder {
        StandaloneBuilder {
            config: config.to_owned(),
            state: state.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            log: None,
            port: None,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.ready() {
            let why = match self.child.try_wait() {
                Ok(Some(status)) => format!("exited ({status}) before it was ready"),
                _ if Instant::now() >= deadline => {
                    format!("was not ready within {READY_TIMEOUT:?}")
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            // The panic quotes the log; Drop need not print it again.
            self.log_quoted = true;
            panic!(
                "portcullis standalone {why}; the end of its log:\n{}",
                self.log_tail(LOG_TAIL_LINES)
            );
        }
    }

    /// `/readyz` on the admin port answers 200 (the listeners are bound before the first
    /// load, so a connectable port alone proves nothing).
    pub fn ready(&self) -> bool {
        self.admin_get("/readyz")
            .is_some_and(|(status, _)| status == 200)
    }

    /// Waits until the log contains `needle`; panics (quoting its end) after `within`.
    pub async fn wait_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged within {within:?}; the end of the log:\n{}",
                self.log_tail(LOG_TAIL_LINES)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The TLS port (`--listen 127.0.0.1:PORT`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin port (`--admin-listen 127.0.0.1:ADMIN`).
    pub fn admin(&self) -> u16 {
        self.admin
    }

    /// A plain HTTP/1.0 GET on the admin port: [`admin_get`].
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        admin_get(self.admin, path)
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn state(&self) -> &Path {
        &self.state
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of [`Self::log`].
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGTERM, as `docker stop` sends it; waits (15 s at most) for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                self.log_quoted = true;
                panic!(
                    "the gate did not stop on SIGTERM; the end of its log:\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for StandaloneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() && !self.log_quoted {
            eprintln!("── portcullis standalone log ──\n{}", self.log());
        }
    }
}
