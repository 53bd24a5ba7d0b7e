//! Files a standalone config names, read and checked at load time so a bad one rejects the
//! whole update instead of failing later, far from its cause.
//!
//! In standalone mode the Kubernetes references become paths relative to the config file:
//! - `pkcs12.passwordSecretRef.name`: a file whose content is the `.p12` password (one
//!   trailing newline is ignored; `key` is not used).
//! - `serverCertificate.secretName`: a directory holding `tls.crt` (the chain, leaf first)
//!   and `tls.key` (PKCS#8), the keys of a `kubernetes.io/tls` Secret.

use std::fs;
use std::path::{Path, PathBuf};

use crate::pki::{self, CertInfo, MIN_PASSWORD_LEN};

use super::certs;

/// A server certificate the user brings instead of one minted by the CA.
#[derive(Clone)]
pub struct OwnCert {
    /// The directory it was read from.
    pub dir: PathBuf,
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
            .field("dir", &self.dir)
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

/// Reads `dir/tls.crt` and `dir/tls.key` and checks that they match and cover `hosts`.
pub(crate) fn own_cert(dir: &Path, hosts: &[String]) -> Result<OwnCert, String> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (cert_pem, key_pem) = (read("tls.crt")?, read("tls.key")?);
    let crt = dir.join("tls.crt").display().to_string();
    let chain = pki::cert_ders(&cert_pem).map_err(|e| format!("{crt}: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{crt} holds no -----BEGIN CERTIFICATE----- block"));
    };
    let info = pki::inspect(leaf).map_err(|e| format!("{crt}: {e}"))?;
    pki::key_for_cert(leaf, &key_pem)
        .map_err(|e| format!("{}: {e}", dir.join("tls.key").display()))?;
    let sans = certs::san_hosts(leaf);
    if let Some(host) = hosts.iter().find(|h| !certs::covers(&sans, h)) {
        return Err(format!(
            "the certificate in {crt} does not cover host {host}; it covers {}",
            sans.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(OwnCert {
        dir: dir.to_owned(),
        chain,
        key_pem,
        info,
    })
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
        let own = own_cert(dir.path(), &["a.example.test".into()]).unwrap();
        assert_eq!(own.chain.len(), 1);
        let err = own_cert(dir.path(), &["b.example.test".into()]).unwrap_err();
        assert!(err.contains("does not cover host b.example.test"), "{err}");
        fs::write(dir.path().join("tls.key"), ca.key_pem()).unwrap();
        assert!(own_cert(dir.path(), &["a.example.test".into()]).is_err());
    }
}
