//! `portcullis enroll` against the real `portcullis standalone` binary: the printed link,
//! claimed over real TLS by a device without a certificate, its downloads opened with
//! `openssl`, and exactly one winner when two gate processes share the state directory.

mod common;
#[path = "common/standalone.rs"]
mod standalone;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::enroll::{PrintedLink, openssl_opens};
use common::{TlsClient, Upstream, get, post};
use http::StatusCode;
use standalone::StandaloneProcess;

const HOST: &str = "ha.test";
const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn config(upstream: std::net::SocketAddr) -> String {
    standalone::config_yaml(HOST, upstream, &[("alice", ""), ("bob", "revoked: true")])
}

struct Install {
    _upstream: Upstream,
    file: PathBuf,
    state: PathBuf,
    dir: tempfile::TempDir,
}

impl Install {
    async fn new() -> Install {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (file, state) = (dir.path().join("portcullis.yaml"), dir.path().join("state"));
        std::fs::write(&file, config(upstream.addr)).unwrap();
        Install {
            _upstream: upstream,
            file,
            state,
            dir,
        }
    }

    /// `portcullis standalone` on a fresh port; its log goes to `log`.
    fn start(&self, log: &str) -> StandaloneProcess {
        StandaloneProcess::builder(&self.file, &self.state)
            .env("RUST_LOG", "debug")
            .log_file(self.dir.path().join(log))
            .start()
    }

    /// `portcullis enroll NAME` with `args`, against a gate listening on `port`.
    fn enroll(&self, name: &str, port: u16, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["enroll", name, "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--config")
            .arg(&self.file)
            .args(args)
            .output()
            .expect("run portcullis enroll")
    }

    fn link(&self, name: &str, port: u16, args: &[&str]) -> PrintedLink {
        PrintedLink::from_output(&self.enroll(name, port, args))
    }
}

/// A device without a certificate, trusting the gate's CA.
fn new_device(gate: &StandaloneProcess) -> TlsClient {
    TlsClient::standalone(gate.port(), gate.state(), None).alpn(&[b"h2", b"http/1.1"])
}

fn claim_cookie(resp: &common::Resp) -> String {
    resp.set_cookies()
        .iter()
        .find_map(|c| c.strip_prefix("__Secure-portcullis-enroll="))
        .and_then(|rest| rest.split(';').next())
        .expect("a claim cookie")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_printed_link_enrolls_a_device_once() {
    let install = Install::new().await;
    let gate = install.start("gate.log");
    let png = install.dir.path().join("link.png");
    let link = install.link("alice", gate.port(), &["--qr-png", png.to_str().unwrap()]);
    assert!(
        link.url.starts_with(&format!(
            "https://{HOST}:{}/.well-known/portcullis/enroll/",
            gate.port()
        )),
        "{}",
        link.url
    );
    assert!(
        link.printed.contains('▀') || link.printed.contains('▄'),
        "a QR code"
    );
    assert!(
        link.printed.contains("works once, until 20"),
        "{}",
        link.printed
    );
    assert_eq!(link.password.split('-').count(), 5, "{}", link.password);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // Only the hash is kept.
    let stored = walk(&install.state.join("enrollments"));
    assert_eq!(stored.len(), 1);
    for file in &stored {
        assert!(
            !std::fs::read_to_string(file)
                .unwrap()
                .contains(link.token())
        );
    }

    let device = new_device(&gate);
    // A link preview first: nothing is used up.
    assert_eq!(
        device.get(link.path()).await.unwrap().status,
        StatusCode::OK
    );
    let claimed = device.send(post(link.path(), "")).await.unwrap();
    assert_eq!(claimed.status, StatusCode::SEE_OTHER);
    let cookie = format!("__Secure-portcullis-enroll={}", claim_cookie(&claimed));
    let mut req = get(&format!("{}/certificate.p12", link.path()));
    req.headers_mut()
        .insert(http::header::COOKIE, cookie.parse().unwrap());
    let p12 = device.send(req).await.unwrap();
    assert_eq!(p12.status, StatusCode::OK);
    let file = install.dir.path().join("device.p12");
    std::fs::write(&file, &p12.body).unwrap();
    assert!(openssl_opens(&file, &link.password));
    // The long-lived keystore password never opens what a link hands out.
    let long_lived =
        std::fs::read_to_string(install.state.join("identities/alice/keystore.p12.password"))
            .unwrap();
    assert!(!openssl_opens(&file, &long_lived));

    // A second device with the same link: the generic page.
    let late = new_device(&gate).send(post(link.path(), "")).await.unwrap();
    assert_eq!(late.status, StatusCode::NOT_FOUND);

    // A new link cancels the previous one.
    let first = install.link("alice", gate.port(), &[]);
    let second = install.link("alice", gate.port(), &[]);
    let old = device.send(post(first.path(), "")).await.unwrap();
    assert_eq!(old.status, StatusCode::NOT_FOUND);
    let new = device.send(post(second.path(), "")).await.unwrap();
    assert_eq!(new.status, StatusCode::SEE_OTHER);

    // An expired link.
    let short = install.link("alice", gate.port(), &["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = device.send(post(short.path(), "")).await.unwrap();
    assert_eq!(expired.status, StatusCode::NOT_FOUND);
    assert_eq!(expired.body, late.body);

    // The log has the enrollments, never a token (even at debug level).
    let log = gate.log();
    assert!(log.contains("enrollment link claimed"), "{log}");
    for token in [link.token(), first.token(), second.token(), short.token()] {
        assert!(!log.contains(token), "a token in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_refuses_with_a_reason() {
    let install = Install::new().await;
    let gate = install.start("gate.log");
    let cases: [(&str, &[&str], &str); 4] = [
        ("alice", &["--ttl", "25h"], "24h maximum"),
        ("bob", &[], "bob is revoked"),
        ("nobody", &[], "no ClientIdentity named nobody"),
        ("alice", &["--url", "http://ha.test"], "https://HOST[:PORT]"),
    ];
    for (name, args, says) in cases {
        let out = install.enroll(name, gate.port(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} {args:?}");
        assert!(stderr.contains(says), "{name} {args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    // Without --config, the address must be given.
    let out = Command::new(BIN)
        .args(["enroll", "alice", "--state-dir"])
        .arg(&install.state)
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --url"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gates_on_one_state_dir_let_one_claim_win() {
    let install = Install::new().await;
    let a = install.start("a.log");
    let b = install.start("b.log");
    // Every loser counts against 127.0.0.1's failed-claim budget (10 per gate): two rounds
    // of eight stay below it.
    for round in 0..2 {
        let link = install.link("alice", a.port(), &[]);
        let claims: Vec<_> = (0..8)
            .map(|i| {
                let device = if i % 2 == 0 {
                    new_device(&a)
                } else {
                    new_device(&b)
                };
                let path = link.path().to_owned();
                tokio::spawn(async move { device.send(post(&path, "")).await.map(|r| r.status) })
            })
            .collect();
        let mut won = 0;
        for claim in claims {
            let status = claim.await.unwrap().unwrap();
            assert!(
                status == StatusCode::SEE_OTHER || status == StatusCode::NOT_FOUND,
                "{status}"
            );
            won += usize::from(status == StatusCode::SEE_OTHER);
        }
        assert_eq!(won, 1, "round {round}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
