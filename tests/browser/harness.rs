//! A real Chromium against a real `portcullis standalone`, for tests/browser.rs.
//!
//! - [`StandaloneGate`]: the binary on a loopback port with a config file and a state dir in
//!   a temp dir; its device files are the ones a user would import.
//! - [`Browser`]: one person's browser: its own `HOME` whose NSS database
//!   (`$HOME/.pki/nssdb`) holds the CAs it trusts and the device certificates it has
//!   imported, and a profile (cookies) that persists across [`Browser::run`]s.
//! - [`Browser::run`] starts Chromium through `tests/browser/drive.mjs` (Node +
//!   playwright-core), plays the [`Step`]s, closes it, and returns one result per step.
//!
//! A flow across runs, e.g. an enrollment link (Chromium is closed between runs, as a user
//! quits it; the NSS database and cookies stay):
//!
//! ```ignore
//! let link = gate.enroll("alice", &[]);
//! let browser = gate.browser();
//! let got = browser.run(&[
//!     Step::goto(&link.url),
//!     Step::click("button"),
//!     Step::download("a[href$='.p12'] >> nth=0", browser.home().join("device.p12")),
//! ]);
//! browser.import_p12(&got.download(2).path, &link.password);
//! assert_eq!(browser.run(&[Step::goto(gate.url("/"))]).page(0).status, 200);
//! ```
//!
//! What is needed (`.ci/run` installs it): `/usr/bin/chromium`, `certutil` and `pk12util`
//! (libnss3-tools), `node`, `tests/browser/node_modules` (`npm ci`), and root, to write the
//! managed Chromium policy that selects client certificates without the picker headless
//! Chromium cannot show. A missing piece fails the test, naming it.
#![allow(dead_code)]

#[path = "../common/standalone.rs"]
mod standalone;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use standalone::StandaloneProcess;

pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Chromium on Linux reads machine-wide (managed) policies.
pub const POLICY_DIR: &str = "/etc/chromium/policies/managed";
/// The host the gate's route serves; browsers map it to 127.0.0.1, so the URL, the SNI and
/// the Host header all carry it, as with a real DNS name.
pub const HOST: &str = "ha.test";
pub const COOKIE_NAME: &str = "__Host-portcullis";

/// The directory of the Node driver.
pub fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Fails the test, naming what is missing, unless everything a browser test needs is here.
pub fn require_tools() {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (Debian package chromium)"));
    }
    if !on_path("certutil") || !on_path("pk12util") {
        missing.push("certutil and pk12util (Debian package libnss3-tools)".to_owned());
    }
    if !on_path("node") {
        missing.push("node".to_owned());
    }
    let module = driver_dir().join("node_modules/playwright-core/package.json");
    if !module.exists() {
        missing.push(format!(
            "{} (npm ci in tests/browser)",
            driver_dir().join("node_modules").display()
        ));
    }
    assert!(
        missing.is_empty(),
        "the browser tests need {}: run .ci/run, which installs them",
        missing.join(", ")
    );
}

/// Runs a command to the end; panics with its output if it fails.
fn command(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (run .ci/run to install it)"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ───────────────────────────── Gate ─────────────────────────────

/// `portcullis standalone` on a loopback port: one route `ha.test` → `upstream`, one
/// ClientIdentity per name (Legacy .p12 profile). Killed on drop; when the test is failing,
/// its log is printed.
pub struct StandaloneGate {
    /// Dropped first: killed (its log printed) while `dir` still holds the log.
    process: StandaloneProcess,
    pub port: u16,
    pub config: PathBuf,
    pub state: PathBuf,
    dir: tempfile::TempDir,
}

impl StandaloneGate {
    pub fn start(upstream: SocketAddr, identities: &[&str]) -> StandaloneGate {
        let specs: Vec<(&str, &str)> = identities
            .iter()
            .map(|name| (*name, "pkcs12:\n  profile: Legacy"))
            .collect();
        let yaml = standalone::config_yaml(HOST, upstream, &specs);
        Self::with_config(&yaml)
    }

    /// Starts the gate on `yaml` (routes must serve [`HOST`] for [`Self::origin`] to work).
    pub fn with_config(yaml: &str) -> StandaloneGate {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("portcullis.yaml");
        let state = dir.path().join("state");
        std::fs::write(&config, yaml).expect("write the config");
        let process = StandaloneProcess::builder(&config, &state)
            .log_file(dir.path().join("gate.log"))
            .start();
        StandaloneGate {
            port: process.port(),
            process,
            config,
            state,
            dir,
        }
    }

    /// `https://ha.test:PORT`
    pub fn origin(&self) -> String {
        format!("https://{HOST}:{}", self.port)
    }

    /// `https://ha.test:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// `wss://ha.test:PORT{path}`
    pub fn ws_url(&self, path: &str) -> String {
        format!("wss://{HOST}:{}{path}", self.port)
    }

    /// The installation's CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.state.join("ca/tls.crt")
    }

    /// A device's `.p12` and its password, as the state dir holds them.
    pub fn p12(&self, identity: &str) -> (PathBuf, String) {
        let dir = self.state.join("identities").join(identity);
        let password = std::fs::read_to_string(dir.join("keystore.p12.password"))
            .unwrap_or_else(|e| panic!("{identity}'s keystore.p12.password: {e}"));
        (dir.join("keystore.p12"), password.trim_end().to_owned())
    }

    /// A browser for this gate: trusts its CA, resolves `ha.test` to 127.0.0.1, selects a
    /// client certificate (if it is given one) without asking. No certificate yet.
    pub fn browser(&self) -> Browser {
        let mut browser = Browser::new();
        browser.trust_ca(&self.ca());
        browser.map_host(HOST, "127.0.0.1");
        browser.auto_select_certificate(HOST);
        browser
    }

    /// What the gate has printed so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The temp dir holding the config, the state dir and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `portcullis enroll IDENTITY` against this gate's state dir and config (extra `args`,
    /// e.g. `--ttl`): the link and one-time password it printed.
    pub fn enroll(&self, identity: &str, args: &[&str]) -> EnrollmentLink {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["enroll", identity, "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run portcullis enroll");
        EnrollmentLink::from_output(&out)
    }
}

/// A link `portcullis enroll` printed, with its one-time password.
pub use crate::common::enroll::PrintedLink as EnrollmentLink;

// ───────────────────────────── Browser ─────────────────────────────

/// One person's Chromium: a `HOME` with its own NSS database and a profile directory.
/// Each [`Browser::run`] starts Chromium on them and closes it at the end; cookies and
/// imported certificates persist between runs, like a browser that is quit and reopened.
pub struct Browser {
    home: tempfile::TempDir,
    args: Vec<String>,
    host_rules: Vec<String>,
    policy: Option<PolicyFile>,
    /// Per step; a step still running after it fails the run.
    pub step_timeout: Duration,
}

impl Browser {
    /// A fresh browser that trusts nothing but the system's roots and holds no certificate.
    pub fn new() -> Browser {
        require_tools();
        let home = tempfile::Builder::new()
            .prefix("portcullis-browser-")
            .tempdir()
            .expect("browser HOME");
        let nssdb = home.path().join(".pki/nssdb");
        std::fs::create_dir_all(&nssdb).expect("nssdb dir");
        command("certutil", &["-N", "-d", &sql(&nssdb), "--empty-password"]);
        Browser {
            home,
            args: Vec::new(),
            host_rules: Vec::new(),
            policy: None,
            step_timeout: Duration::from_secs(15),
        }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// `sql:$HOME/.pki/nssdb`, for certutil/pk12util.
    pub fn nssdb(&self) -> String {
        sql(&self.home.path().join(".pki/nssdb"))
    }

    /// Trusts `ca_pem` to issue server certificates (`certutil -t C,,`).
    pub fn trust_ca(&self, ca_pem: &Path) {
        let name = format!("ca-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let ca = ca_pem.to_str().expect("UTF-8 path");
        command(
            "certutil",
            &[
                "-A",
                "-d",
                &self.nssdb(),
                "-n",
                &name,
                "-t",
                "C,,",
                "-i",
                ca,
            ],
        );
    }

    /// Imports a device's `.p12` with `pk12util`, as a user would; panics if NSS refuses
    /// it (wrong password, an encryption NSS does not know).
    pub fn import_p12(&self, p12: &Path, password: &str) {
        let path = p12.to_str().expect("UTF-8 path");
        command(
            "pk12util",
            &["-i", path, "-d", &self.nssdb(), "-W", password],
        );
    }

    /// `certutil -L`: the certificates in the NSS database with their trust flags
    /// (`u,u,u` marks one with its private key: a client certificate).
    pub fn certificates(&self) -> String {
        command("certutil", &["-L", "-d", &self.nssdb()])
    }

    /// Resolves `host` to `ip` in this browser (`--host-resolver-rules`), so URLs carry the
    /// route's name as SNI and Host.
    pub fn map_host(&mut self, host: &str, ip: &str) {
        self.host_rules.push(format!("MAP {host} {ip}"));
    }

    /// An extra Chromium flag.
    pub fn arg(&mut self, arg: &str) {
        self.args.push(arg.to_owned());
    }

    /// Lets Chromium present a client certificate to `https://host` on any port without the
    /// picker (which headless Chromium cannot show: it would wait forever). Writes the
    /// managed policy `AutoSelectCertificateForUrls` in its own file, removed on drop.
    ///
    /// The policy is machine-wide, and where files set the same policy one wins; the value
    /// depends on the host only, so browsers of tests running side by side agree. A browser
    /// with no certificate in its NSS database simply sends none.
    pub fn auto_select_certificate(&mut self, host: &str) {
        let pattern = serde_json::json!({ "pattern": format!("https://{host}:*"), "filter": {} });
        let policy = serde_json::json!({ "AutoSelectCertificateForUrls": [pattern.to_string()] });
        self.policy = Some(PolicyFile::write(&policy));
    }

    /// Starts Chromium, plays `steps`, closes it: one result per step. Panics when a step
    /// fails (with the driver's error and the page's console).
    ///
    /// It blocks the calling thread for the whole run (seconds). In a `#[tokio::test]`
    /// whose upstream runs on the test's runtime, use `flavor = "multi_thread"`: the test
    /// body blocks, the upstream's tasks go on on the worker threads.
    pub fn run(&self, steps: &[Step]) -> Results {
        match self.try_run(steps) {
            Ok(results) => results,
            Err(failure) => panic!("{failure}"),
        }
    }

    /// Like [`Browser::run`], but a failing step is returned (with the results before it).
    pub fn try_run(&self, steps: &[Step]) -> Result<Results, StepFailure> {
        let mut args = self.args.clone();
        if !self.host_rules.is_empty() {
            args.push(format!(
                "--host-resolver-rules={}",
                self.host_rules.join(",")
            ));
        }
        let input = serde_json::json!({
            "home": self.home.path(),
            "profile": self.home.path().join("profile"),
            "executable": CHROMIUM,
            "args": args,
            "timeout_ms": self.step_timeout.as_millis() as u64,
            "steps": steps,
        });
        let mut child = Command::new("node")
            .arg(driver_dir().join("drive.mjs"))
            .current_dir(driver_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node (run .ci/run to install it)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.to_string().as_bytes())
            .expect("write the steps to the driver");
        let out = child.wait_with_output().expect("wait for the driver");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let Some(report) = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
        else {
            panic!(
                "the browser driver failed ({}): {stdout}{stderr}",
                out.status
            );
        };
        let results = Results(report["results"].as_array().cloned().unwrap_or_default());
        if report["ok"] == true {
            return Ok(results);
        }
        let step = report["step"].as_u64().unwrap_or(0) as usize;
        Err(StepFailure {
            step,
            what: steps
                .get(step)
                .map(|s| format!("{s:?}"))
                .unwrap_or_default(),
            error: report["error"].as_str().unwrap_or("?").to_owned(),
            console: report["console"].to_string(),
            results,
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the profile and NSS database of a failing test to look at.
            let kept = std::mem::replace(&mut self.home, tempfile::tempdir().expect("temp dir"));
            eprintln!("browser HOME kept at {}", kept.keep().display());
        }
    }
}

fn sql(nssdb: &Path) -> String {
    format!("sql:{}", nssdb.display())
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// One managed policy file, named for this process; removed on drop (a test that panics
/// removes it too). Files left by killed test processes are removed by the next run.
struct PolicyFile(PathBuf);

impl PolicyFile {
    fn write(policy: &Value) -> PolicyFile {
        const PREFIX: &str = "portcullis-test-";
        let dir = Path::new(POLICY_DIR);
        std::fs::create_dir_all(dir).unwrap_or_else(|e| {
            panic!("{POLICY_DIR}: {e} (the browser tests write Chromium policies: run as root)")
        });
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next());
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{PREFIX}{}-{n}.json", std::process::id()));
        std::fs::write(&path, policy.to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        PolicyFile(path)
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ───────────────────────────── Steps ─────────────────────────────

/// What the browser does, in order (see tests/browser/drive.mjs for each step's result).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Navigates; any status is a result, not a failure → [`Loaded`].
    Goto {
        url: String,
    },
    /// The element's innerText → string.
    Text {
        selector: String,
    },
    Click {
        selector: String,
    },
    Fill {
        selector: String,
        value: String,
    },
    WaitFor {
        selector: String,
    },
    /// Clicks `selector` and saves the download it starts → [`Downloaded`].
    Download {
        selector: String,
        save_as: PathBuf,
    },
    /// A JavaScript expression in the page; a promise is awaited → its JSON value.
    Eval {
        js: String,
    },
    /// `fetch` from the page, cookies included → [`Fetched`].
    Fetch {
        url: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// `new WebSocket(url)` from the page, sends `send`, waits for a message back →
    /// [`WsOutcome`].
    #[serde(rename = "websocket")]
    WebSocket {
        url: String,
        send: String,
    },
    /// The profile's cookies → [`Cookie`]s.
    Cookies,
    /// Adds cookies to the profile (what another browser or an earlier visit left).
    AddCookies {
        cookies: Vec<Value>,
    },
    Screenshot {
        path: PathBuf,
    },
}

impl Step {
    pub fn goto(url: impl Into<String>) -> Step {
        Step::Goto { url: url.into() }
    }

    pub fn text(selector: &str) -> Step {
        Step::Text {
            selector: selector.to_owned(),
        }
    }

    pub fn click(selector: &str) -> Step {
        Step::Click {
            selector: selector.to_owned(),
        }
    }

    pub fn fill(selector: &str, value: &str) -> Step {
        Step::Fill {
            selector: selector.to_owned(),
            value: value.to_owned(),
        }
    }

    pub fn wait_for(selector: &str) -> Step {
        Step::WaitFor {
            selector: selector.to_owned(),
        }
    }

    /// A `GET` from the page (for a POST, build [`Step::Fetch`]).
    pub fn fetch(url: impl Into<String>) -> Step {
        Step::Fetch {
            url: url.into(),
            method: None,
            body: None,
        }
    }

    pub fn download(selector: &str, save_as: impl Into<PathBuf>) -> Step {
        Step::Download {
            selector: selector.to_owned(),
            save_as: save_as.into(),
        }
    }

    pub fn eval(js: impl Into<String>) -> Step {
        Step::Eval { js: js.into() }
    }

    pub fn websocket(url: impl Into<String>, send: &str) -> Step {
        Step::WebSocket {
            url: url.into(),
            send: send.to_owned(),
        }
    }
}

/// Why a run stopped.
#[derive(Debug)]
pub struct StepFailure {
    pub step: usize,
    pub what: String,
    pub error: String,
    pub console: String,
    /// The results of the steps before it.
    pub results: Results,
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "browser step {} ({}) failed: {}\npage console: {}",
            self.step, self.what, self.error, self.console
        )
    }
}

/// One result per step, in order; typed views for the steps that return something.
#[derive(Debug, Clone)]
pub struct Results(pub Vec<Value>);

impl Results {
    pub fn value(&self, step: usize) -> &Value {
        self.0
            .get(step)
            .unwrap_or_else(|| panic!("no result for step {step}"))
    }

    fn typed<T: for<'de> Deserialize<'de>>(&self, step: usize) -> T {
        let value = self.value(step);
        serde_json::from_value(value.clone()).unwrap_or_else(|e| {
            panic!("step {step}'s result is not what it should be ({e}): {value}")
        })
    }

    pub fn page(&self, step: usize) -> Loaded {
        self.typed(step)
    }

    pub fn text(&self, step: usize) -> String {
        self.typed(step)
    }

    pub fn download(&self, step: usize) -> Downloaded {
        self.typed(step)
    }

    pub fn fetched(&self, step: usize) -> Fetched {
        self.typed(step)
    }

    pub fn websocket(&self, step: usize) -> WsOutcome {
        self.typed(step)
    }

    pub fn cookies(&self, step: usize) -> Vec<Cookie> {
        self.typed(step)
    }
}

/// A navigation's response.
#[derive(Debug, Clone, Deserialize)]
pub struct Loaded {
    pub status: u16,
    pub url: String,
    /// Lowercase names; repeated headers joined with newlines (Playwright's allHeaders).
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: String,
}

impl Loaded {
    /// Asserts the page is the upstream's echo of `path`, admitted as `identity`: the
    /// protected page reached Home Assistant (here the test upstream) through the gate.
    pub fn assert_upstream_saw(&self, path: &str, identity: &str) {
        assert_eq!(self.status, 200, "the protected page: {}", self.body);
        assert_eq!(
            self.headers.get("x-upstream").map(String::as_str),
            Some("echo")
        );
        let echo: crate::common::Echo = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the upstream's echo ({e}): {}", self.body));
        assert_eq!(echo.path, path);
        assert_eq!(echo.header("x-portcullis-identity"), Some(identity));
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Fetched {
    pub status: u16,
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Downloaded {
    pub path: PathBuf,
    pub suggested_filename: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WsOutcome {
    pub opened: bool,
    pub echo: Option<String>,
    pub error: Option<String>,
    pub close_code: Option<u16>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    pub expires: f64,
    pub http_only: bool,
    pub secure: bool,
    pub same_site: String,
}
