//! Files a standalone config names, read and checked at load time so a bad one rejects the
//! whole update instead of failing later, far from its cause.
//!
//! In standalone mode the Kubernetes references become paths relative to the config file:
//! - `pkcs12.passwordSecretRef.name`: a file whose content is the `.p12` password (one
//!   trailing newline is ignored; `key` is not used).
//! - `serverCertificate.secretName`: a directory holding `tls.crt` (the chain, leaf first)
//!   and `tls.key`, the keys of a `kubernetes.io/tls` Secret.
//! - `serverCertificate.files`: the same two PEM files under any names, e.g. the Let's
//!   Encrypt / DuckDNS add-on's `/ssl/fullchain.pem` and `/ssl/privkey.pem`.
//! - `serverCertificate.acme.caFile`: the PEM CA(s) of a private ACME server's HTTPS
//!   certificate (checked by [`pki::ca_file_certs`]; the ACME client reads it at each
//!   order).
//!
//! A key may be PKCS#8, SEC1 (`BEGIN EC PRIVATE KEY`, as `openssl ecparam` and dehydrated
//! write it) or PKCS#1 (`BEGIN RSA PRIVATE KEY`): certificate tools renew on their own
//! schedule, so asking the user to convert each renewal would not work.

use std::fs;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::pki::{self, CertInfo, MIN_PASSWORD_LEN};

use super::certs;

/// A server certificate the user brings instead of one minted by the CA.
#[derive(Clone)]
pub struct OwnCert {
    /// The certificate file it was read from.
    pub certificate: PathBuf,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The leaf's key, PKCS#8 PEM.
    pub key_pem: String,
    /// What the leaf says.
    pub info: CertInfo,
}

// Never print the key.
impl std::fmt::Debug for OwnCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnCert")
            .field("certificate", &self.certificate)
            .field("info", &self.info)
            .finish()
    }
}

/// Reads a `.p12` password file.
pub(crate) fn password(file: &Path) -> Result<String, String> {
    let text = fs::read_to_string(file)
        .map_err(|e| format!("cannot read the password file {}: {e}", file.display()))?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(format!(
            "the password in {} has {len} characters; use at least {MIN_PASSWORD_LEN} \
             (macOS and iOS refuse files with short or empty passwords)",
            file.display()
        ));
    }
    Ok(password.to_owned())
}

/// Reads a certificate chain and its key and checks that they match and cover `hosts`.
/// Errors name the file to look at: while a tool rewrites the pair, one may be new and
/// the other old, and the caller keeps serving the last good pair.
pub(crate) fn cert_files(
    certificate: &Path,
    key: &Path,
    hosts: &[String],
) -> Result<OwnCert, String> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (cert_pem, key_pem) = (read(certificate)?, read(key)?);
    let crt = certificate.display();
    let chain = pki::cert_ders(&cert_pem).map_err(|e| format!("{crt}: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{crt} holds no -----BEGIN CERTIFICATE----- block"));
    };
    let info = pki::inspect(leaf).map_err(|e| format!("{crt}: {e}"))?;
    check_key(&chain, &key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
    let sans = certs::san_hosts(leaf);
    if let Some(host) = hosts.iter().find(|h| !certs::covers(&sans, h)) {
        return Err(format!(
            "the certificate in {crt} does not cover host {host}; it covers {}",
            sans.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(OwnCert {
        certificate: certificate.to_owned(),
        chain,
        key_pem,
        info,
    })
}

/// The key loads (as the TLS layer will load it) and belongs to the chain's leaf.
fn check_key(chain: &[Vec<u8>], key_pem: &str) -> Result<(), String> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        format!("no PEM private key (BEGIN PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY): {e}")
    })?;
    let chain = chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate (a pair half-written while a \
             renewal replaces it, or files from two different certificates)"
                .to_owned()
        }
        e => format!("unusable private key: {e}; ECDSA P-256/P-384 and RSA are supported"),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::Ca;

    #[test]
    fn password_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        fs::write(&file, "correct-horse\n").unwrap();
        assert_eq!(password(&file).unwrap(), "correct-horse");
        fs::write(&file, "short\n").unwrap();
        assert!(password(&file).unwrap_err().contains("at least 8"));
        assert!(
            password(&dir.path().join("nope"))
                .unwrap_err()
                .contains("cannot read")
        );
    }

    #[test]
    fn own_cert_must_match_and_cover_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("t").unwrap();
        let cert = ca
            .issue_server(&["a.example.test".into()], Duration::from_secs(60))
            .unwrap();
        fs::write(dir.path().join("tls.crt"), &cert.cert_pem).unwrap();
        fs::write(dir.path().join("tls.key"), &cert.key_pem).unwrap();
        let own_cert = |dir: &Path, hosts: &[String]| {
            cert_files(&dir.join("tls.crt"), &dir.join("tls.key"), hosts)
        };
        let own = own_cert(dir.path(), &["a.example.test".into()]).unwrap();
        assert_eq!(own.chain.len(), 1);
        let err = own_cert(dir.path(), &["b.example.test".into()]).unwrap_err();
        assert!(err.contains("does not cover host b.example.test"), "{err}");
        fs::write(dir.path().join("tls.key"), ca.key_pem()).unwrap();
        let err = own_cert(dir.path(), &["a.example.test".into()]).unwrap_err();
        assert!(
            err.contains("tls.key: the private key does not belong"),
            "{err}"
        );
    }

    #[test]
    fn files_accept_sec1_and_pkcs8_keys_and_name_the_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("t").unwrap();
        let cert = ca
            .issue_server(&["a.example.test".into()], Duration::from_secs(60))
            .unwrap();
        let (crt, key) = (
            dir.path().join("fullchain.pem"),
            dir.path().join("privkey.pem"),
        );
        fs::write(&crt, &cert.cert_pem).unwrap();
        let hosts = ["a.example.test".to_owned()];
        // SEC1, as `openssl ecparam -genkey` (and so dehydrated) writes an EC key.
        let pkcs8 = pem::parse(&cert.key_pem).unwrap();
        let sec1 = sec1_from_pkcs8(pkcs8.contents());
        fs::write(&key, pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1))).unwrap();
        let own = cert_files(&crt, &key, &hosts).unwrap();
        assert_eq!(own.certificate, crt);
        fs::write(&key, &cert.key_pem).unwrap();
        cert_files(&crt, &key, &hosts).unwrap();

        fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA").unwrap();
        let err = cert_files(&crt, &key, &hosts).unwrap_err();
        assert!(err.starts_with(&key.display().to_string()), "{err}");
        fs::write(&crt, "half a file").unwrap();
        let err = cert_files(&crt, &key, &hosts).unwrap_err();
        assert!(err.contains("fullchain.pem holds no"), "{err}");
        let err = cert_files(&dir.path().join("nope.pem"), &key, &hosts).unwrap_err();
        assert!(
            err.contains("cannot read") && err.contains("nope.pem"),
            "{err}"
        );
    }

    /// The SEC1 `ECPrivateKey` inside a PKCS#8 key: `SEQUENCE { INTEGER, SEQUENCE,
    /// OCTET STRING { ECPrivateKey } }`.
    fn sec1_from_pkcs8(der: &[u8]) -> Vec<u8> {
        // One DER element: (content, rest); short and 0x81/0x82 long lengths.
        fn element(d: &[u8]) -> (&[u8], &[u8]) {
            let (len, at) = match d[1] {
                0x81 => (usize::from(d[2]), 3),
                0x82 => (usize::from(d[2]) << 8 | usize::from(d[3]), 4),
                n => (usize::from(n), 2),
            };
            (&d[at..at + len], &d[at + len..])
        }
        let (info, _) = element(der);
        let (_, rest) = element(info); // version
        let (_, rest) = element(rest); // algorithm
        element(rest).0.to_vec()
    }
}
