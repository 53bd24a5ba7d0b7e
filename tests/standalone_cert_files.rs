//! `serverCertificate.files` end to end: the standalone gate serves a certificate and key
//! it reads from two PEM files (as the Let's Encrypt / DuckDNS add-ons leave them in
//! `/ssl`), swaps to a renewed pair for new handshakes without dropping open connections,
//! and keeps the last good pair while a half-written one is on disk.

mod common;
#[path = "common/standalone.rs"]
mod standalone;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{HOST, TlsClient, Upstream};
use portcullis::pki::{Ca, IssuedCert};
use rustls::pki_types::CertificateDer;
use standalone::StandaloneProcess;

/// How long a file change may take to reach new handshakes (debounce + reload).
const RELOAD_WITHIN: Duration = Duration::from_secs(5);

/// A config whose route reads its certificate from `ssl/fullchain.pem` and
/// `ssl/privkey.pem` beside it, with one identity, alice.
fn config(upstream: std::net::SocketAddr) -> String {
    standalone::config_yaml(HOST, upstream, &[("alice", "")]).replace(
        "spec:\n  hosts:",
        "spec:\n  serverCertificate:\n    files:\n      certificate: ssl/fullchain.pem\n      \
         key: ssl/privkey.pem\n  hosts:",
    )
}

/// A server certificate for [`HOST`] from a fresh CA of its own: (CA, certificate).
fn public_cert(ca_name: &str) -> (Ca, IssuedCert) {
    let ca = Ca::generate(ca_name).expect("test CA");
    let cert = ca
        .issue_server(&[HOST.to_owned()], Duration::from_secs(86_400))
        .expect("server certificate");
    (ca, cert)
}

/// Writes like a certificate tool: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Ssl {
    certificate: PathBuf,
    key: PathBuf,
}

impl Ssl {
    fn write(&self, cert: &IssuedCert) {
        replace(&self.certificate, &cert.cert_pem);
        replace(&self.key, &cert.key_pem);
    }
}

/// alice's client of `gate`, trusting only `ca` (not the Portcullis CA).
fn client(gate: &StandaloneProcess, ca: &Ca) -> TlsClient {
    let mut client = TlsClient::standalone(gate.port(), gate.state(), Some("alice"));
    client.roots = vec![CertificateDer::from(ca.cert_der().to_vec())];
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_files_and_swaps_to_a_renewed_pair_without_dropping_connections() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(&file, config(upstream.addr)).unwrap();
    std::fs::create_dir(dir.path().join("ssl")).unwrap();
    let ssl = Ssl {
        certificate: dir.path().join("ssl/fullchain.pem"),
        key: dir.path().join("ssl/privkey.pem"),
    };
    let (ca_a, cert_a) = public_cert("Public Test CA A");
    ssl.write(&cert_a);
    let gate = StandaloneProcess::start(&file, &dir.path().join("state"));

    // The file certificate is what the gate presents, and the device is still required.
    let alice_a = client(&gate, &ca_a);
    assert_eq!(alice_a.served_leaf().await.unwrap(), cert_a.cert_der);
    let mut anonymous = alice_a.clone();
    anonymous.cert = None;
    assert_eq!(anonymous.get("/").await.unwrap().status, 403);
    let mut open = alice_a.open().await.expect("keep-alive connection");
    assert_eq!(open.get("/").await.unwrap().status, 200);

    // A renewal from another CA: new handshakes see it; the open connection keeps working.
    let (ca_b, cert_b) = public_cert("Public Test CA B");
    ssl.write(&cert_b);
    let alice_b = client(&gate, &ca_b);
    let deadline = Instant::now() + RELOAD_WITHIN;
    loop {
        match alice_b.served_leaf().await {
            Ok(leaf) if leaf == cert_b.cert_der => break,
            other if Instant::now() >= deadline => {
                panic!("the renewed certificate is not served after {RELOAD_WITHIN:?}: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(alice_b.get("/").await.unwrap().status, 200);
    assert_eq!(
        open.get("/")
            .await
            .expect("the open connection survives the swap")
            .status,
        200
    );

    // Half-written: a new certificate beside the old key. The last good pair keeps serving
    // and the log names the file to look at.
    let (_, cert_c) = public_cert("Public Test CA C");
    replace(&ssl.certificate, &cert_c.cert_pem);
    let key = ssl.key.display().to_string();
    gate.wait_log("configuration rejected", RELOAD_WITHIN).await;
    let log = gate.log();
    assert!(
        log.contains(&format!(
            "spec.serverCertificate.files: {key}: the private key does not belong"
        )),
        "{log}"
    );
    assert_eq!(alice_b.served_leaf().await.unwrap(), cert_b.cert_der);
    assert_eq!(open.get("/").await.unwrap().status, 200);
}

#[test]
fn check_reports_missing_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(&file, config(([127, 0, 0, 1], 8123).into())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let missing = dir.path().join("ssl/fullchain.pem");
    assert!(
        err.contains(&format!(
            "spec.serverCertificate.files: cannot read {}",
            missing.display()
        )),
        "{err}"
    );
}
