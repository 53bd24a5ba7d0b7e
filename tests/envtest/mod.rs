//! Rust side of the envtest harness: builds (cached) and starts a real kube-apiserver with
//! etcd and the garbage collector on 127.0.0.1, and hands out clients.
//!
//! Each [`Envtest`] is its own control plane; it stops when dropped (its stdin closes), or
//! when the test process exits (the kernel closes the pipe), so a `static` one is fine.
//! Include it with `#[allow(dead_code)] mod envtest;` (no test uses every helper).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A running control plane.
pub struct Envtest {
    child: Child,
    /// Closing it tells the harness to stop.
    stdin: Option<ChildStdin>,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the harness once per test binary (build.sh skips the work when it is current).
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(manifest_dir().join("tests/envtest/build.sh"))
            .env("CARGO_TARGET_DIR", manifest_dir().join("target"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/envtest/build.sh (needs Go and the Go module proxy)");
        assert!(out.status.success(), "tests/envtest/build.sh failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build.sh prints the binary path")
                .trim(),
        )
    })
}

impl Envtest {
    /// Starts a control plane and waits until it is ready (a few seconds).
    pub fn start() -> Envtest {
        Envtest::start_with(&[])
    }

    /// [`Envtest::start`] with extra harness flags, e.g.
    /// `--apiserver-arg=--enable-admission-plugins=…`.
    pub fn start_with(extra: &[&str]) -> Envtest {
        // Under target/tmp: a `static` Envtest is never dropped, so its small directory
        // (kubeconfig, log) stays behind; there `cargo clean` takes it.
        let dir = tempfile::Builder::new()
            .prefix("envtest-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        let log = std::fs::File::create(dir.path().join("envtest.log")).expect("log file");
        let mut child = Command::new(binary())
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start envtest");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read envtest stdout");
        if !line.starts_with("READY ") {
            let log = std::fs::read_to_string(dir.path().join("envtest.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "envtest did not start: {line:?}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let stdin = child.stdin.take();
        Envtest {
            child,
            stdin,
            kubeconfig,
            _dir: dir,
        }
    }

    /// An admin (system:masters) client.
    pub async fn client(&self) -> Client {
        let config = self.config().await;
        Client::try_from(config).expect("kube client")
    }

    /// The admin client's configuration (to derive others from).
    pub async fn config(&self) -> Config {
        config_at(&self.kubeconfig, None).await
    }

    /// A client for another context of the kubeconfig (`envtest-unprivileged`, …).
    pub async fn client_for_context(&self, context: &str) -> Client {
        let config = config_at(&self.kubeconfig, Some(context)).await;
        Client::try_from(config).expect("kube client")
    }

    /// A client authenticating with a bearer token (e.g. a ServiceAccount's, from the
    /// TokenRequest API), same server and CA as the admin.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let mut config = self.config().await;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_owned().into()),
            ..Default::default()
        };
        Client::try_from(config).expect("kube client")
    }

    /// The control plane's log (klog, etcd), for failure messages.
    pub fn log_path(&self) -> PathBuf {
        self._dir.path().join("envtest.log")
    }

    /// The process id of the harness.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The configuration of `context` (default: the admin context) in the kubeconfig at
/// `path`; usable before an [`Envtest`] value exists (e.g. from another thread).
pub async fn config_at(path: &Path, context: Option<&str>) -> Config {
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("kubeconfig is usable")
}

impl Drop for Envtest {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // The harness exits within a few seconds of stdin closing; don't hang a test on it.
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
