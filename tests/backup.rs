//! `portcullis backup` / `restore` in standalone mode, as a user runs them: the real binary,
//! a real gate before and after, real TLS clients holding the devices' original files.

mod common;
#[path = "common/standalone.rs"]
mod standalone;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Outcome, TlsClient, Upstream};
use standalone::StandaloneProcess;

const HOST: &str = "ha.test";
const PASSWORD: &str = "correct horse battery staple";

fn portcullis(args: &[&str], paths: &[&Path]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(args)
        .args(paths)
        .env_remove("PORTCULLIS_BACKUP_PASSWORD");
    cmd.output().expect("run portcullis")
}

fn ok(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "portcullis failed: {text}");
    text
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "portcullis should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes like an editor: a new file renamed over the old one.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A copy of a device's files as the device holds them, laid out like a state directory
/// so [`TlsClient::standalone`] reads them.
fn device_copy(state: &Path, name: &str, into: &Path) -> PathBuf {
    let dir = into.join(name);
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    std::fs::create_dir_all(dir.join("identities").join(name)).unwrap();
    std::fs::copy(state.join("ca/tls.crt"), dir.join("ca/tls.crt")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        let rel = Path::new("identities").join(name).join(file);
        std::fs::copy(state.join(&rel), dir.join(&rel)).unwrap();
    }
    dir
}

fn with_cookie(cookie: &str) -> hyper::Request<common::ReqBody> {
    common::with_headers(
        common::get("/"),
        &[("cookie", &common::cookie_header(cookie))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_state_dir_admits_the_old_devices_and_cookies_and_refuses_the_revoked() {
    let upstream = Upstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (config, state) = (tmp.path().join("portcullis.yaml"), tmp.path().join("state"));
    let yaml = |alice: &str, bob: &str| {
        standalone::config_yaml(HOST, upstream.addr, &[("alice", alice), ("bob", bob)])
    };
    save(&config, &yaml("", ""));

    // Before: both devices in, bob earns a cookie; bob's certificate is then re-issued (a
    // spec change), so the one his phone holds lives on as previous.crt; alice is revoked.
    let gate = StandaloneProcess::start(&config, &state);
    let devices = tmp.path().join("devices");
    let (alice_files, bob_files) = (
        device_copy(&state, "alice", &devices),
        device_copy(&state, "bob", &devices),
    );
    let bob = TlsClient::standalone(gate.port(), &bob_files, Some("bob"));
    let cookie = bob.get("/").await.unwrap().gate_cookie().expect("a cookie");
    save(&config, &yaml("revoked: true", "commonName: bobs-phone"));
    let alice = TlsClient::standalone(gate.port(), &alice_files, Some("alice"));
    common_eventually("alice refused, bob re-issued", async || {
        let reissued = std::fs::read(state.join("identities/bob/previous.crt")).is_ok();
        matches!(alice.probe().await, Outcome::Refused(_)) && reissued
    })
    .await;
    assert_eq!(
        bob.get("/").await.unwrap().status,
        200,
        "bob's old certificate"
    );
    drop(gate);

    let password_file = tmp.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let backup = tmp.path().join("home.age");
    let out = portcullis(
        &["backup", "--state-dir"],
        &[
            &state,
            Path::new("--config"),
            &config,
            Path::new("-o"),
            &backup,
            Path::new("--password-file"),
            &password_file,
        ],
    );
    let said = ok(&out);
    assert!(said.contains("2 device(s)"), "{said}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&backup).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the backup is private");

    // A wrong password is a clear error and writes nothing.
    let restored = tmp.path().join("restored");
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not the password").unwrap();
    let err = failed(&portcullis(
        &["restore"],
        &[
            &backup,
            Path::new("--state-dir"),
            &restored,
            Path::new("--password-file"),
            &wrong,
        ],
    ));
    assert!(
        err.contains("wrong password") && err.contains("home.age"),
        "{err}"
    );
    assert!(!restored.exists(), "nothing is written on a wrong password");

    // Into a directory that has a CA: refused, naming it.
    let err = failed(&portcullis(
        &["restore"],
        &[
            &backup,
            Path::new("--state-dir"),
            &state,
            Path::new("--password-file"),
            &password_file,
        ],
    ));
    assert!(
        err.contains("already holds a CA") && err.contains("ca/tls.crt"),
        "{err}"
    );

    // Into a new directory, with the config file (the password from the environment).
    let restored_config = tmp.path().join("restored.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["restore"])
        .arg(&backup)
        .arg("--state-dir")
        .arg(&restored)
        .arg("--config")
        .arg(&restored_config)
        .env("PORTCULLIS_BACKUP_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    ok(&out);
    for file in ["ca/tls.key", "cookie-keys", "identities/bob/tls.key"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(restored.join(file))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // After: a gate on the restored directory, nobody re-enrolled.
    let gate = StandaloneProcess::start(&restored_config, &restored);
    for file in [
        "ca/tls.crt",
        "identities/bob/tls.crt",
        "identities/bob/previous.crt",
        "crl.pem",
    ] {
        assert_eq!(
            std::fs::read(restored.join(file)).unwrap(),
            std::fs::read(state.join(file)).unwrap(),
            "{file} was replaced instead of restored"
        );
    }
    let bob = TlsClient::standalone(gate.port(), &bob_files, Some("bob"));
    let resp = bob.get("/").await.unwrap();
    assert_eq!(
        resp.status,
        200,
        "bob's original (superseded) certificate: {}",
        resp.text()
    );
    let current = TlsClient::standalone(gate.port(), &restored, Some("bob"));
    assert_eq!(
        current.get("/").await.unwrap().status,
        200,
        "bob's current certificate"
    );
    let alice = TlsClient::standalone(gate.port(), &alice_files, Some("alice"));
    match alice.probe().await {
        Outcome::Refused(_) => {}
        other => panic!("the revoked certificate must stay refused, got {other:?}"),
    }
    let anonymous = TlsClient::standalone(gate.port(), &restored, None);
    assert_eq!(anonymous.get("/").await.unwrap().status, 403);
    let resp = anonymous.send(with_cookie(&cookie)).await.unwrap();
    assert_eq!(
        resp.status,
        200,
        "the cookie from before the backup: {}",
        resp.text()
    );
}

/// Polls `check` every 50 ms for up to 10 s.
async fn common_eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
