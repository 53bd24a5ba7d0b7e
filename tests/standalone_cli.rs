//! The `portcullis` binary as a user runs it: exit codes and the messages they read.

#[path = "common/standalone.rs"]
mod standalone;

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

/// Starts the gate on the example once (creating the CA and the device files in `state`),
/// stops it with SIGTERM, and returns what it printed.
fn first_start(state: &Path) -> Vec<String> {
    let mut child = standalone::command(&example(), state, 0, 0)
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
            "document 2 (ClientIdentity/alice-iphone), line 81: spec.renewBefore: must be shorter"
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
    let out = standalone::command(&file, &state, 0, 0).output().unwrap();
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
    let out = standalone::command(&example(), &state, 0, 0)
        .output()
        .unwrap();
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
    let lines = first_start(&state);

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

/// Reads a `.mobileconfig` with python3's plistlib (an independent plist parser): the
/// profile as JSON, with each payload's `PayloadContent` data written to `p12_out` and
/// replaced by its length.
fn plistlib(profile: &Path, p12_out: &Path) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, plistlib, sys
with open(sys.argv[1], "rb") as f:
    top = plistlib.load(f)
for payload in top["PayloadContent"]:
    with open(sys.argv[2], "wb") as f:
        f.write(payload["PayloadContent"])
    payload["PayloadContent"] = len(payload["PayloadContent"])
print(json.dumps(top))
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(profile)
        .arg(p12_out)
        .output()
        .expect("python3 must be installed to run this test");
    assert!(out.status.success(), "plistlib: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `openssl args…` in `dir`: success and stdout + stderr (as in tests/pki_openssl.rs).
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI must be installed to run this test");
    (out.status.success(), text(&out.stdout) + &text(&out.stderr))
}

#[test]
fn mobileconfig_export_carries_the_p12_that_opens_with_the_printed_password() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let (d, state) = (dir.path(), dir.path().join("state"));
    first_start(&state);
    let s = state.to_str().unwrap();
    let export = |args: &[&str]| {
        let base = ["identity", "export", "alice-iphone", "--state-dir", s];
        portcullis(&[&base[..], args].concat())
    };

    let profile = d.join("alice.mobileconfig");
    let out = export(&["--format", "mobileconfig", "-o", profile.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no password line in {stdout}"))
        .to_owned();
    assert!(stdout.contains("iOS asks for it"), "{stdout}");
    let mode = std::fs::metadata(&profile).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the profile holds the private key");

    let top = plistlib(&profile, &d.join("alice.p12"));
    assert_eq!(top["PayloadType"], "Configuration");
    assert_eq!(top["PayloadVersion"], 1);
    assert_eq!(
        top["PayloadIdentifier"],
        "dev.portcullis.identity.alice-iphone"
    );
    assert_eq!(top["PayloadRemovalDisallowed"], false);
    let payloads = top["PayloadContent"].as_array().unwrap();
    assert_eq!(payloads.len(), 1, "the .p12 only, no root CA: {top}");
    let p12 = &payloads[0];
    assert_eq!(p12["PayloadType"], "com.apple.security.pkcs12");
    assert_eq!(p12["PayloadCertificateFileName"], "alice-iphone.p12");
    assert_eq!(p12["PayloadDisplayName"], "Alice's iPhone");
    assert!(p12.get("Password").is_none(), "{p12}");
    assert_eq!(
        std::fs::read(d.join("alice.p12")).unwrap(),
        std::fs::read(state.join("identities/alice-iphone/keystore.p12")).unwrap()
    );

    // The embedded file is what iOS imports: Legacy (3DES, SHA-1 MAC), which OpenSSL 3's
    // default provider opens without `-legacy` (as in tests/pki_openssl.rs).
    let pass = format!("pass:{password}");
    let p12_args = ["pkcs12", "-in", "alice.p12", "-passin", &pass];
    let (ok, certs) = openssl(d, &[&p12_args[..], &["-info", "-nokeys"]].concat());
    assert!(ok, "{certs}");
    assert!(certs.contains("pbeWithSHA1And3-KeyTripleDES-CBC") && certs.contains("MAC: sha1"));
    assert_eq!(
        certs.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "{certs}"
    );
    let (ok, key) = openssl(d, &[&p12_args[..], &["-nocerts", "-nodes"]].concat());
    assert!(ok && key.contains("-----BEGIN PRIVATE KEY-----"), "{key}");
    let wrong = [
        "pkcs12",
        "-in",
        "alice.p12",
        "-passin",
        "pass:wrong-password",
    ];
    let (ok, out) = openssl(d, &[&wrong[..], &["-nokeys"]].concat());
    assert!(!ok && out.contains("invalid password"), "{out}");
    // The key is the device's: its public half matches the certificate's.
    std::fs::write(d.join("key.pem"), &key).unwrap();
    let (_, from_p12) = openssl(d, &["pkey", "-in", "key.pem", "-pubout"]);
    let crt = state.join("identities/alice-iphone/tls.crt");
    let (_, from_crt) = openssl(
        d,
        &["x509", "-noout", "-pubkey", "-in", crt.to_str().unwrap()],
    );
    assert!(
        from_p12.contains("PUBLIC KEY") && from_p12 == from_crt,
        "{from_p12}"
    );

    // Embedded: no password to type, a warning instead; same identifiers, so installing it
    // replaces the first profile on the device.
    let embedded = d.join("embedded.mobileconfig");
    let out = export(&[
        "--format",
        "mobileconfig",
        "--embed-password",
        "-o",
        embedded.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("password:"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).starts_with("warning: ")
            && text(&out.stderr).contains("anyone who gets the file"),
        "{}",
        text(&out.stderr)
    );
    let again = plistlib(&embedded, &d.join("embedded.p12"));
    assert_eq!(again["PayloadContent"][0]["Password"], password.as_str());
    for key in ["PayloadIdentifier", "PayloadUUID"] {
        assert_eq!(again[key], top[key], "{key}");
        assert_eq!(again["PayloadContent"][0][key], p12[key], "{key}");
    }

    let out = export(&["--format", "p12", "--embed-password"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: --embed-password applies only to --format mobileconfig\n"
    );
    assert!(!Path::new("alice-iphone.p12").exists());
}
