//! Interop: what Portcullis writes must be read by the real OpenSSL CLI (OpenSSL 3), the
//! tool users and other servers check certificates, CRLs and `.p12` files with.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use portcullis::pki::{Ca, IssuedCert, RevokedSerial, export_pkcs12, generate_password};
use portcullis::resources::{KeyAlgorithm, Pkcs12Profile};

const DAY: Duration = Duration::from_secs(86_400);

/// Runs `openssl args…`; returns success and stdout + stderr together (OpenSSL prints the
/// PKCS#12 algorithm details on stderr).
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI must be installed to run these tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

struct Fixture {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("Portcullis CA openssl-test").unwrap();
        write(dir.path(), "ca.crt", ca.cert_pem());
        Fixture { dir, ca }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn client(&self, name: &str, alg: KeyAlgorithm) -> IssuedCert {
        let cert = self.ca.issue_client(name, alg, DAY).unwrap();
        write(self.path(), &format!("{name}.crt"), &cert.cert_pem);
        write(self.path(), &format!("{name}.key"), &cert.key_pem);
        cert
    }
}

#[test]
fn pkcs12_profiles_open_in_openssl_3_without_legacy_provider() {
    let fx = Fixture::new();
    let leaf = fx.client("alice", KeyAlgorithm::EcdsaP256);
    let expected: [(Pkcs12Profile, &[&str]); 2] = [
        (
            Pkcs12Profile::Legacy,
            &[
                "MAC: sha1, Iteration 2048",
                "pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048",
            ],
        ),
        (
            Pkcs12Profile::Modern,
            &["MAC: sha256", "PBES2, PBKDF2, AES-256-CBC"],
        ),
    ];
    for (profile, needles) in expected {
        let pw = generate_password();
        let p12 = export_pkcs12(&leaf, fx.ca.cert_der(), "alice", &pw, profile).unwrap();
        let file = format!("{profile:?}.p12");
        write(fx.path(), &file, &p12);
        let pass = format!("pass:{pw}");

        // No `-legacy`: OpenSSL 3's default provider must be enough (3DES, not RC2-40).
        let (ok, info) = openssl(
            fx.path(),
            &["pkcs12", "-info", "-nokeys", "-in", &file, "-passin", &pass],
        );
        assert!(ok, "{profile:?}: {info}");
        for needle in needles {
            assert!(
                info.contains(needle),
                "{profile:?}: {needle:?} missing in\n{info}"
            );
        }
        assert_eq!(
            info.matches("-----BEGIN CERTIFICATE-----").count(),
            2,
            "leaf + CA:\n{info}"
        );
        assert!(info.contains("subject=CN = alice") && info.contains("subject=CN = Portcullis CA"));

        // The key decrypts and belongs to the leaf.
        let (ok, keys) = openssl(
            fx.path(),
            &[
                "pkcs12", "-in", &file, "-passin", &pass, "-nodes", "-nocerts",
            ],
        );
        assert!(
            ok && keys.contains("-----BEGIN PRIVATE KEY-----"),
            "{profile:?}: {keys}"
        );
        assert!(
            keys.contains("friendlyName: alice"),
            "the key bag carries the name: {keys}"
        );
        let extracted = write(fx.path(), "extracted.key", &keys);
        let (_, from_p12) = openssl(
            fx.path(),
            &["pkey", "-in", extracted.to_str().unwrap(), "-pubout"],
        );
        let (_, from_cert) = openssl(
            fx.path(),
            &["x509", "-in", "alice.crt", "-noout", "-pubkey"],
        );
        assert!(
            from_p12.contains("BEGIN PUBLIC KEY") && from_p12 == from_cert,
            "{from_p12}\n{from_cert}"
        );

        let (ok, out) = openssl(
            fx.path(),
            &[
                "pkcs12",
                "-info",
                "-nokeys",
                "-in",
                &file,
                "-passin",
                "pass:wrong-password",
            ],
        );
        assert!(!ok && out.contains("invalid password"), "{out}");
    }
}

#[test]
fn client_and_server_certs_verify_against_the_ca() {
    let fx = Fixture::new();
    for (name, alg) in [
        ("ecdsa", KeyAlgorithm::EcdsaP256),
        ("rsa", KeyAlgorithm::Rsa2048),
    ] {
        fx.client(name, alg);
        let crt = format!("{name}.crt");
        let (ok, out) = openssl(
            fx.path(),
            &["verify", "-purpose", "sslclient", "-CAfile", "ca.crt", &crt],
        );
        assert!(ok && out.contains(&format!("{crt}: OK")), "{name}: {out}");
        // A device certificate cannot serve a site.
        let (ok, out) = openssl(
            fx.path(),
            &["verify", "-purpose", "sslserver", "-CAfile", "ca.crt", &crt],
        );
        assert!(!ok, "{name}: {out}");
    }
    let (_, text) = openssl(fx.path(), &["x509", "-in", "rsa.crt", "-noout", "-text"]);
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");

    let hosts = vec!["ha.example.test".to_owned(), "10.0.0.5".to_owned()];
    let server = fx.ca.issue_server(&hosts, DAY).unwrap();
    write(fx.path(), "server.crt", &server.cert_pem);
    let (ok, out) = openssl(
        fx.path(),
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "ha.example.test",
            "-CAfile",
            "ca.crt",
            "server.crt",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = openssl(
        fx.path(),
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-verify_ip",
            "10.0.0.5",
            "-CAfile",
            "ca.crt",
            "server.crt",
        ],
    );
    assert!(ok, "{out}");

    let (_, ca_text) = openssl(fx.path(), &["x509", "-in", "ca.crt", "-noout", "-text"]);
    assert!(ca_text.contains("CA:TRUE, pathlen:0"), "{ca_text}");
    assert!(ca_text.contains("Certificate Sign, CRL Sign"), "{ca_text}");
}

#[test]
fn crl_lists_revoked_serial_and_openssl_enforces_it() {
    let fx = Fixture::new();
    let lost = fx.client("lost", KeyAlgorithm::EcdsaP256);
    fx.client("kept", KeyAlgorithm::Rsa2048);
    let revoked = [RevokedSerial {
        serial_hex: lost.info.serial_hex.clone(),
        revoked_at: SystemTime::now(),
    }];
    write(fx.path(), "crl.pem", fx.ca.crl(&revoked, 3, DAY).unwrap());

    let (ok, text) = openssl(fx.path(), &["crl", "-in", "crl.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    let serial_line = format!("Serial Number: {}", lost.info.serial_hex.to_uppercase());
    assert!(
        text.contains(&serial_line),
        "{serial_line:?} missing in\n{text}"
    );
    let crl_number = text
        .split("X509v3 CRL Number:")
        .nth(1)
        .and_then(|t| t.split_whitespace().next());
    assert_eq!(crl_number, Some("3"), "{text}");
    let (ok, out) = openssl(
        fx.path(),
        &["crl", "-in", "crl.pem", "-noout", "-CAfile", "ca.crt"],
    );
    assert!(ok && out.contains("verify OK"), "CRL signature: {out}");

    let check = [
        "verify",
        "-crl_check",
        "-CRLfile",
        "crl.pem",
        "-CAfile",
        "ca.crt",
    ];
    let (ok, out) = openssl(fx.path(), &[&check[..], &["lost.crt"]].concat());
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = openssl(fx.path(), &[&check[..], &["kept.crt"]].concat());
    assert!(ok && out.contains("kept.crt: OK"), "{out}");
}
