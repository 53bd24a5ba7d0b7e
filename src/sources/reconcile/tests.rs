use std::path::{Path, PathBuf};

use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::*;
use crate::snapshot::Snapshot;
use crate::sources::config::parse_config;

const ROUTE: &str = "\
apiVersion: portcullis.dev/v1alpha1
kind: ProtectedRoute
metadata:
  name: ha
spec:
  hosts: [ha.example.test, 127.0.0.1]
  upstream:
    url: http://127.0.0.1:8123
  clientAuth:
    identitySelector:
      matchLabels: {home: \"yes\"}
";

fn identity(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: portcullis.dev/v1alpha1\nkind: ClientIdentity\nmetadata:\n  name: {name}\n  labels: {{home: \"yes\"}}\nspec:\n  validity: 30d\n{spec}"
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: StateDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        Fixture {
            config: dir.path().join("c.yaml"),
            state,
            _dir: dir,
        }
    }

    fn run(&self, text: &str) -> Result<Outcome> {
        let config = parse_config(&self.config, text).unwrap();
        reconcile(&config, &self.state)
    }

    fn file(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.state.root().join(path)).unwrap()
    }

    fn crl_serials(&self) -> Vec<String> {
        let pem = self.file("crl.pem");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&pem.contents).unwrap();
        crl.iter_revoked_certificates()
            .map(|r| crate::pki::serial_hex_of(r.raw_serial()))
            .collect()
    }
}

fn serials(o: &Outcome) -> Vec<(String, String)> {
    o.parts
        .live
        .iter()
        .map(|c| (c.identity.clone(), c.serial_hex.clone()))
        .collect()
}

fn two() -> String {
    format!(
        "{ROUTE}{}{}",
        identity("alice", ""),
        identity("bob", "  revoked: false\n")
    )
}

#[test]
fn first_run_creates_everything_and_second_mints_nothing() {
    let f = Fixture::new();
    let first = f.run(&two()).unwrap();
    assert!(first.created_ca);
    assert_eq!(first.changes.len(), 3, "{:?}", first.changes);
    assert_eq!(first.parts.live.len(), 2);
    assert_eq!(first.parts.live[0].labels["home"], "yes");
    for file in [
        "ca/tls.crt",
        "ca/tls.key",
        "cookie-keys",
        "crl.pem",
        "routes/ha/tls.crt",
    ] {
        assert!(f.state.root().join(file).is_file(), "{file}");
    }
    for file in [
        "tls.crt",
        "tls.key",
        "ca.crt",
        "keystore.p12",
        "keystore.p12.password",
        "spec.json",
    ] {
        assert!(f.state.identity_dir("alice").join(file).is_file(), "{file}");
    }
    let route_cert = f.file("routes/ha/tls.crt");
    let p12 = f.file("identities/alice/keystore.p12");

    let second = f.run(&two()).unwrap();
    assert!(!second.created_ca);
    assert_eq!(second.changes, Vec::<String>::new());
    assert_eq!(serials(&second), serials(&first));
    assert_eq!(second.parts.live, first.parts.live);
    assert_eq!(f.file("routes/ha/tls.crt"), route_cert);
    assert_eq!(f.file("identities/alice/keystore.p12"), p12);
    // And the parts make a snapshot the proxy can serve.
    let snapshot = Snapshot::build(second.parts, 7).unwrap();
    assert_eq!(
        snapshot.route("127.0.0.1").unwrap().hosts,
        vec!["ha.example.test", "127.0.0.1"]
    );
    assert!(
        snapshot
            .route("ha.example.test")
            .unwrap()
            .selector
            .is_some()
    );
}

#[test]
fn revoke_puts_the_serial_on_the_crl_and_takes_it_out_of_live() {
    let f = Fixture::new();
    let first = f.run(&two()).unwrap();
    let bob = first
        .parts
        .live
        .iter()
        .find(|c| c.identity == "bob")
        .unwrap()
        .serial_hex
        .clone();
    assert!(f.crl_serials().is_empty());

    let revoked = two().replace("revoked: false", "revoked: true");
    let out = f.run(&revoked).unwrap();
    assert_eq!(
        out.parts
            .live
            .iter()
            .map(|c| c.identity.as_str())
            .collect::<Vec<_>>(),
        ["alice"]
    );
    assert_eq!(f.crl_serials(), vec![bob.clone()]);
    assert!(
        f.state.identity_dir("bob").join("tls.crt").is_file(),
        "files are kept"
    );

    // Un-revoking issues a new certificate: the old serial stays on the CRL.
    let back = f.run(&two()).unwrap();
    let new_bob = back
        .parts
        .live
        .iter()
        .find(|c| c.identity == "bob")
        .unwrap();
    assert_ne!(new_bob.serial_hex, bob);
    assert_eq!(f.crl_serials(), vec![bob]);
}

#[test]
fn removed_identity_is_revoked_and_its_files_kept() {
    let f = Fixture::new();
    let first = f.run(&two()).unwrap();
    let bob = first
        .parts
        .live
        .iter()
        .find(|c| c.identity == "bob")
        .unwrap()
        .serial_hex
        .clone();
    let only_alice = format!("{ROUTE}{}", identity("alice", ""));
    let out = f.run(&only_alice).unwrap();
    assert_eq!(out.parts.live.len(), 1);
    assert_eq!(f.crl_serials(), vec![bob]);
    assert!(
        out.changes[0].contains("identity bob is no longer in the config"),
        "{:?}",
        out.changes
    );
    assert!(f.state.identity_dir("bob").join("keystore.p12").is_file());
    assert_eq!(f.run(&only_alice).unwrap().changes, Vec::<String>::new());
}

#[test]
fn key_algorithm_change_reissues_and_profile_change_only_rewrites_the_p12() {
    let f = Fixture::new();
    let first = f.run(&two()).unwrap();
    let alice = |o: &Outcome| {
        o.parts
            .live
            .iter()
            .find(|c| c.identity == "alice")
            .unwrap()
            .clone()
    };

    let modern = two().replacen(
        "  validity: 30d\n",
        "  validity: 30d\n  pkcs12: {profile: Modern}\n",
        1,
    );
    let out = f.run(&modern).unwrap();
    assert_eq!(alice(&out), alice(&first), "same certificate");
    assert_eq!(out.changes.len(), 1, "{:?}", out.changes);
    assert!(
        out.changes[0].contains("re-wrote keystore.p12"),
        "{:?}",
        out.changes
    );

    let rsa = two().replacen(
        "  validity: 30d\n",
        "  validity: 30d\n  keyAlgorithm: RSA-2048\n",
        1,
    );
    let out = f.run(&rsa).unwrap();
    assert_ne!(alice(&out).serial_hex, alice(&first).serial_hex);
    assert!(
        out.changes
            .iter()
            .any(|c| c.contains("keyAlgorithm changed")),
        "{:?}",
        out.changes
    );
    // The phone still holds the superseded certificate: never revoked by a re-issue, it
    // stays admitted (previous.crt) beside the new one until its notAfter.
    assert!(f.crl_serials().is_empty(), "superseded serial revoked");
    let alices: Vec<&str> = out
        .parts
        .live
        .iter()
        .filter(|c| c.identity == "alice")
        .map(|c| c.serial_hex.as_str())
        .collect();
    assert_eq!(
        alices,
        [&alice(&out).serial_hex, &alice(&first).serial_hex],
        "new and superseded both live"
    );
    let previous = String::from_utf8(f.file("identities/alice/previous.crt")).unwrap();
    assert_eq!(
        crate::pki::inspect_pem(&previous).unwrap().serial_hex,
        alice(&first).serial_hex
    );
    let cert = f.state.load_identity("alice").unwrap().unwrap();
    assert_eq!(
        super::super::certs::key_algorithm(&cert.cert_der),
        Some(crate::resources::KeyAlgorithm::Rsa2048)
    );
}

#[test]
fn host_change_reissues_the_server_certificate() {
    let f = Fixture::new();
    f.run(&two()).unwrap();
    let before = f.file("routes/ha/tls.crt");
    let out = f.run(&two().replace("127.0.0.1]", "192.168.1.2]")).unwrap();
    assert!(
        out.changes[0].contains("route ha: issued server certificate"),
        "{:?}",
        out.changes
    );
    assert_ne!(f.file("routes/ha/tls.crt"), before);
}

#[test]
fn configured_password_is_used() {
    let f = Fixture::new();
    let pw = f.config.parent().unwrap().join("pw");
    std::fs::write(&pw, "correct-horse-battery\n").unwrap();
    let with_pw = |p: &Path| {
        let spec = format!(
            "  pkcs12:\n    passwordSecretRef: {{name: {}}}\n",
            p.display()
        );
        format!("{ROUTE}{}", identity("alice", &spec))
    };
    f.run(&with_pw(&pw)).unwrap();
    assert_eq!(
        f.file("identities/alice/keystore.p12.password"),
        b"correct-horse-battery"
    );
    std::fs::write(&pw, "another-password").unwrap();
    let out = f.run(&with_pw(&pw)).unwrap();
    assert!(
        out.changes[0].contains("re-wrote keystore.p12"),
        "{:?}",
        out.changes
    );
    assert_eq!(
        f.file("identities/alice/keystore.p12.password"),
        b"another-password"
    );
}

#[test]
fn corrupt_ca_key_is_an_error_naming_the_file_and_nothing_is_overwritten() {
    let f = Fixture::new();
    f.run(&two()).unwrap();
    let key = f.state.ca_key_path();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let cert = f.file("ca/tls.crt");
    let alice = f.file("identities/alice/tls.crt");
    let err = f
        .run(&two())
        .err()
        .expect("a corrupt CA key must stop the reconcile")
        .to_string();
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert_eq!(f.file("ca/tls.crt"), cert);
    assert_eq!(
        std::fs::read_to_string(&key).unwrap().lines().nth(1),
        Some("AAAA")
    );
    assert_eq!(f.file("identities/alice/tls.crt"), alice);
}

#[test]
fn validity_change_reissues_but_rewording_it_does_not() {
    let f = Fixture::new();
    f.run(&two()).unwrap();
    let same = f
        .run(&two().replace("validity: 30d", "validity: 720h"))
        .unwrap();
    assert_eq!(same.changes, Vec::<String>::new());
    let longer = f
        .run(&two().replacen("validity: 30d", "validity: 60d", 1))
        .unwrap();
    assert_eq!(longer.changes.len(), 2, "{:?}", longer.changes);
    assert!(
        longer.changes[0].contains("superseded; still admitted until"),
        "{:?}",
        longer.changes
    );
    assert!(
        longer.changes[1].contains("(validity changed)"),
        "{:?}",
        longer.changes
    );
}

#[test]
fn revoking_after_a_renewal_revokes_every_serial_and_reinstating_issues_a_fresh_one() {
    let f = Fixture::new();
    let serials = |o: &Outcome| -> Vec<String> {
        o.parts
            .live
            .iter()
            .filter(|c| c.identity == "alice")
            .map(|c| c.serial_hex.clone())
            .collect()
    };
    let first = serials(&f.run(&two()).unwrap());
    let renewed = serials(
        &f.run(&two().replacen("validity: 30d", "validity: 60d", 1))
            .unwrap(),
    );
    assert_eq!(renewed.len(), 2, "{renewed:?}");
    assert_eq!(renewed[1], first[0]);

    let revoked = format!(
        "{ROUTE}{}{}",
        identity("alice", "  revoked: true\n"),
        identity("bob", "")
    )
    .replacen("validity: 30d", "validity: 60d", 1);
    let out = f.run(&revoked).unwrap();
    assert!(serials(&out).is_empty());
    let mut crl = f.crl_serials();
    crl.sort();
    let mut expected = renewed.clone();
    expected.sort();
    assert!(
        expected.iter().all(|s| crl.contains(s)),
        "every serial of the identity is on the CRL: {crl:?} {expected:?}"
    );

    // Reinstated: one fresh certificate; the revoked ones stay off the live set even though
    // previous.crt and the files still hold them (the ledger is ground truth).
    let back = serials(
        &f.run(&two().replacen("validity: 30d", "validity: 60d", 1))
            .unwrap(),
    );
    assert_eq!(back.len(), 1, "{back:?}");
    assert!(!renewed.contains(&back[0]));
}
