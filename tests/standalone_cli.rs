//! The `portcullis` binary as a user runs it: exit codes and the messages they read.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standalone.yaml")
}

fn portcullis(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PORTCULLIS_STATE_DIR")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn standalone(config: &Path, state: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "standalone",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .arg("--config")
    .arg(config)
    .arg("--state-dir")
    .arg(state);
    cmd
}

/// Stdout lines until one starts with `until` (or the process ends / 60 s pass).
fn read_until(child: &mut Child, until: &str) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let done = line.starts_with(until);
        lines.push(line);
        if done {
            // The lines printed with it (one curl line per identity).
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
                lines.push(line);
            }
            break;
        }
    }
    lines
}

#[test]
fn check_accepts_the_example() {
    let out = portcullis(&["check", "--config", example().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok: 1 routes, 2 identities\n");
}

#[test]
fn check_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let broken = std::fs::read_to_string(example())
        .unwrap()
        .replace("url: http://127.0.0.1:8123", "url: https://127.0.0.1:8123")
        .replace(
            "keyAlgorithm: ECDSA-P256\n  pkcs12:\n    # Modern",
            "keyAlgorithm: ED25519\n  pkcs12:\n    # Modern",
        )
        .replace("renewBefore: 30d", "renewBefore: 400d");
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, broken).unwrap();
    let out = portcullis(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("document 1 (ProtectedRoute/home-assistant), line 31: spec.upstream.url: https upstreams"), "{err}");
    assert!(
        err.contains(
            "document 2 (ClientIdentity/alice-iphone), line 69: spec.renewBefore: must be shorter"
        ),
        "{err}"
    );
    assert!(
        err.contains("document 3 (ClientIdentity/bob-laptop)"),
        "{err}"
    );
    assert!(
        err.contains("spec.keyAlgorithm: unknown variant `ED25519`"),
        "{err}"
    );
    assert!(
        err.ends_with(&format!("error: 3 problems in {}\n", file.display())),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn standalone_refuses_a_broken_config_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "apiVersion: portcullis.dev/v1alpha1\nkind: ProtectedRoute\nmetadata:\n  name: x\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let out = standalone(&file, &state).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error: "), "{err}");
    assert!(
        err.contains("document 1 (ProtectedRoute/x), line 1: missing field `spec`"),
        "{err}"
    );
    assert!(
        !state.exists(),
        "a bad config must not create the state directory"
    );
}

#[test]
fn standalone_with_an_unusable_state_dir_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let state = blocker.join("state");
    let out = standalone(&example(), &state).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let first = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(first.contains("create the state directory"), "{err}");
    assert!(
        first.contains(state.to_str().unwrap()) && first.contains("--state-dir"),
        "{err}"
    );
}

#[test]
fn first_start_prints_device_files_then_exports_work() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut child = standalone(&example(), &state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = read_until(&mut child, "Try it:");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let curls: Vec<&String> = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("curl "))
        .collect();
    assert_eq!(curls.len(), 2, "{lines:#?}");
    let alice_dir = state.join("identities/alice-iphone");
    assert!(
        curls[0].contains(&format!("--cert {}", alice_dir.join("tls.crt").display())),
        "{lines:#?}"
    );
    assert!(curls[0].contains("--resolve ha.localhost:"), "{lines:#?}");

    let s = state.to_str().unwrap();
    let p12 = dir.path().join("alice.p12");
    let out = portcullis(&[
        "identity",
        "export",
        "alice-iphone",
        "--state-dir",
        s,
        "-o",
        p12.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let password = std::fs::read_to_string(alice_dir.join("keystore.p12.password")).unwrap();
    assert!(text(&out.stdout).contains(&format!("password: {password}")));
    assert_eq!(
        std::fs::read(&p12).unwrap(),
        std::fs::read(alice_dir.join("keystore.p12")).unwrap()
    );

    let pem = dir.path().join("bob");
    let out = portcullis(&[
        "identity",
        "export",
        "bob-laptop",
        "--format",
        "pem",
        "--state-dir",
        s,
        "-o",
        pem.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(pem.join(file).is_file(), "{file}");
    }

    let out = portcullis(&["identity", "export", "carol", "--state-dir", s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: identity carol has no credentials"),
        "{}",
        text(&out.stderr)
    );

    let before = std::fs::read(state.join("cookie-keys")).unwrap();
    let out = portcullis(&["cookie-key", "rotate", "--state-dir", s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = std::fs::read_to_string(state.join("cookie-keys")).unwrap();
    assert_eq!(after.lines().count(), 2);
    assert!(after.ends_with(&text(&before)));
}

#[test]
fn export_without_state_dir_and_operator_without_cluster_are_clear_errors() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["identity", "export", "alice"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run portcullis identity export");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("pass --state-dir"),
        "{}",
        text(&out.stderr)
    );
    // No cluster: one clear line naming what to set, not a panic or a hang.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "operator",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run portcullis operator");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("KUBECONFIG"),
        "{}",
        text(&out.stderr)
    );
}
