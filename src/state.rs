//! The standalone state directory. It mirrors the Kubernetes Secrets' keys, so a user can
//! move between modes:
//!
//! ```text
//! <root>/ca/tls.crt, ca/tls.key (0600)          the CA: created once, never replaced
//!        crl.pem  cookie-keys (0600)  revoked.yaml
//!        routes/<route>/tls.crt|tls.key
//!        identities/<name>/tls.crt|tls.key|ca.crt|keystore.p12|keystore.p12.password
//!                          previous.crt   certificates a renewal superseded, still admitted
//!                          seen.json      when the device last used each serial (the gate
//!                                         writes it once a minute at most)
//!        enrollments/pending|claimed/<tokenHash>.json (0600)  one-time enrollment links
//!        acme/accounts/<id>.json, routes/<name>/acme/  ACME accounts and certificates
//!                                         (see crate::acme::store)
//! ```
//! Every write is atomic (temp file in the same directory, fsync, rename, fsync the
//! directory): a crash leaves the old file or the new one, never half of one.

mod atomic;
mod ca;
mod seen;

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::pki::previous::PREVIOUS_CRT;
use crate::pki::{CertInfo, IssuedCert, RevokedSerial, first_cert_der, inspect, key_for_cert};
use crate::{Error, Result};
pub use atomic::write_atomic;
use atomic::{hint, read_optional, sync_dir};
pub use seen::{SEEN_JSON, merge_sightings};

/// Mode for private keys, `.p12` files, passwords and cookie keys.
pub const SECRET_MODE: u32 = 0o600;
/// Mode for certificates and other public files.
pub const PUBLIC_MODE: u32 = 0o644;

/// How many cookie keys are kept: the signing key and the previous one, so a rotation
/// logs nobody out.
pub const COOKIE_KEYS_KEPT: usize = 2;

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| corrupt(path, "it is not text (expected PEM)"))
}

/// A certificate and key read back from the state directory.
#[derive(Clone)]
pub struct StoredCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// What the certificate says.
    pub info: CertInfo,
}

// Never print the key, even in debug output.
impl std::fmt::Debug for StoredCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCert")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The revocation ledger on disk (`revoked.yaml`).
#[derive(Serialize, Deserialize, Default)]
struct Ledger {
    #[serde(default)]
    revoked: Vec<RevokedSerial>,
}

/// The standalone state directory (see the module docs for its layout).
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// A state directory at `root`; nothing is touched until something is loaded or saved.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// Refuses a directory the gate never initialised (no `ca/tls.crt`): the commands that
    /// read or change a running installation's state must not create one by mistake.
    pub fn ensure_initialised(&self) -> Result<()> {
        if self.ca_cert_path().is_file() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{} is not a Portcullis state directory (no ca/tls.crt): pass the gate's \
             --state-dir, or start `portcullis standalone` once first",
            self.root.display()
        )))
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ca/tls.crt`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join("ca").join("tls.crt")
    }

    /// `ca/tls.key`.
    pub fn ca_key_path(&self) -> PathBuf {
        self.root.join("ca").join("tls.key")
    }

    /// `crl.pem`.
    pub fn crl_path(&self) -> PathBuf {
        self.root.join("crl.pem")
    }

    /// `cookie-keys`.
    pub fn cookie_keys_path(&self) -> PathBuf {
        self.root.join("cookie-keys")
    }

    /// `revoked.yaml`: the serials the CRL must list, kept across restarts.
    pub fn revoked_path(&self) -> PathBuf {
        self.root.join("revoked.yaml")
    }

    /// `identities/<name>/`. The name is not checked here; the save and load methods
    /// refuse names that would escape the directory.
    pub fn identity_dir(&self, name: &str) -> PathBuf {
        self.root.join("identities").join(name)
    }

    /// `enrollments/`: one-time enrollment links (see [`crate::enroll::FileStore`]).
    pub fn enrollments_dir(&self) -> PathBuf {
        self.root.join("enrollments")
    }

    /// `routes/<name>/` (unchecked, like [`StateDir::identity_dir`]).
    pub fn route_dir(&self, name: &str) -> PathBuf {
        self.root.join("routes").join(name)
    }

    /// `acme/`: ACME accounts, one per directory URL (see [`crate::acme::store`]).
    pub fn acme_dir(&self) -> PathBuf {
        self.root.join("acme")
    }

    /// `routes/<name>/acme/certificate.pem`: a route's ACME key and chain in one file, so
    /// a reader never pairs a new certificate with an old key.
    pub fn acme_certificate_path(&self, route: &str) -> PathBuf {
        self.route_dir(route).join("acme").join("certificate.pem")
    }

    /// Saves a device's credentials, mirroring the `<name>-client` Secret. The key goes
    /// first so a crash never leaves a certificate without its key; the `.p12` files last.
    pub fn save_identity(
        &self,
        name: &str,
        cert: &IssuedCert,
        ca_pem: &str,
        p12: &[u8],
        password: &str,
    ) -> Result<()> {
        let dir = self.identity_dir(dir_name("identity", name)?);
        write_atomic(&dir.join("tls.key"), cert.key_pem.as_bytes(), SECRET_MODE)?;
        write_atomic(&dir.join("tls.crt"), cert.cert_pem.as_bytes(), PUBLIC_MODE)?;
        write_atomic(&dir.join("ca.crt"), ca_pem.as_bytes(), PUBLIC_MODE)?;
        write_atomic(&dir.join("keystore.p12"), p12, SECRET_MODE)?;
        // Exactly the password, no newline, like the Secret's value.
        write_atomic(
            &dir.join("keystore.p12.password"),
            password.as_bytes(),
            SECRET_MODE,
        )
    }

    /// A device's certificate and key; `None` when it has none yet. A present but
    /// unparsable pair, or a key that does not match, is [`Error::Corrupt`]; the caller may
    /// re-issue (a device's credentials are replaceable, unlike the CA).
    pub fn load_identity(&self, name: &str) -> Result<Option<StoredCert>> {
        load_pair(&self.identity_dir(dir_name("identity", name)?))
    }

    /// `identities/<name>/previous.crt`: the superseded certificates a device may still
    /// hold ([`crate::pki::previous`]); empty when there are none.
    pub fn load_previous(&self, name: &str) -> Result<String> {
        let path = self
            .identity_dir(dir_name("identity", name)?)
            .join(PREVIOUS_CRT);
        match read_optional(&path)? {
            Some(bytes) => utf8(&path, bytes),
            None => Ok(String::new()),
        }
    }

    /// Replaces `identities/<name>/previous.crt`.
    pub fn save_previous(&self, name: &str, pem: &str) -> Result<()> {
        let dir = self.identity_dir(dir_name("identity", name)?);
        write_atomic(&dir.join(PREVIOUS_CRT), pem.as_bytes(), PUBLIC_MODE)
    }

    /// Saves a route's server certificate (`routes/<name>/tls.key`, then `tls.crt`).
    pub fn save_route_cert(&self, name: &str, cert: &IssuedCert) -> Result<()> {
        let dir = self.route_dir(dir_name("route", name)?);
        write_atomic(&dir.join("tls.key"), cert.key_pem.as_bytes(), SECRET_MODE)?;
        write_atomic(&dir.join("tls.crt"), cert.cert_pem.as_bytes(), PUBLIC_MODE)
    }

    /// A route's server certificate; `None` when absent, [`Error::Corrupt`] when unusable.
    pub fn load_route_cert(&self, name: &str) -> Result<Option<StoredCert>> {
        load_pair(&self.route_dir(dir_name("route", name)?))
    }

    /// Publishes the CRL (`crl.pem`).
    pub fn write_crl(&self, pem: &str) -> Result<()> {
        write_atomic(&self.crl_path(), pem.as_bytes(), PUBLIC_MODE)
    }

    /// The cookie keys, newest first, creating the file with one key when absent. A file
    /// that does not parse is [`Error::Corrupt`], never replaced: replacing it would log
    /// every browser out, and hide tampering.
    pub fn load_or_create_cookie_keys(&self) -> Result<Vec<[u8; 32]>> {
        let path = self.cookie_keys_path();
        match read_optional(&path)? {
            Some(bytes) => parse_cookie_keys(&path, &bytes),
            None => {
                let keys = vec![random_key()?];
                self.write_cookie_keys(&keys)?;
                Ok(keys)
            }
        }
    }

    /// Puts a new signing key in front and keeps the previous one (at most
    /// [`COOKIE_KEYS_KEPT`]), so cookies signed before the rotation still verify.
    pub fn rotate_cookie_keys(&self) -> Result<Vec<[u8; 32]>> {
        let mut keys = self.load_or_create_cookie_keys()?;
        keys.insert(0, random_key()?);
        keys.truncate(COOKIE_KEYS_KEPT);
        self.write_cookie_keys(&keys)?;
        Ok(keys)
    }

    fn write_cookie_keys(&self, keys: &[[u8; 32]]) -> Result<()> {
        let text: String = keys.iter().map(|k| BASE64.encode(k) + "\n").collect();
        write_atomic(&self.cookie_keys_path(), text.as_bytes(), SECRET_MODE)
    }

    /// The revocation ledger; empty when the file does not exist.
    pub fn load_revoked(&self) -> Result<Vec<RevokedSerial>> {
        let path = self.revoked_path();
        let Some(bytes) = read_optional(&path)? else {
            return Ok(Vec::new());
        };
        let ledger: Ledger = serde_yaml::from_slice(&bytes).map_err(|e| corrupt(&path, e))?;
        Ok(ledger.revoked)
    }

    /// Replaces the revocation ledger.
    pub fn save_revoked(&self, revoked: &[RevokedSerial]) -> Result<()> {
        let path = self.revoked_path();
        let ledger = Ledger {
            revoked: revoked.to_vec(),
        };
        let yaml = serde_yaml::to_string(&ledger)
            .map_err(|e| Error::pki("revocation ledger", format!("cannot encode: {e}")))?;
        let text =
            format!("# Serials revoked or removed; Portcullis lists them in crl.pem.\n{yaml}");
        write_atomic(&path, text.as_bytes(), PUBLIC_MODE)
    }
}

/// `tls.crt` + `tls.key` in `dir`: `None` without a certificate (a key alone is what a crash
/// between the two writes leaves on first issuance, and is simply overwritten next time).
fn load_pair(dir: &Path) -> Result<Option<StoredCert>> {
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    let Some(cert) = read_optional(&cert_path)? else {
        return Ok(None);
    };
    let cert_pem = utf8(&cert_path, cert)?;
    let Some(key) = read_optional(&key_path)? else {
        return Err(corrupt(&key_path, "it is missing while tls.crt exists"));
    };
    let key_pem = utf8(&key_path, key)?;
    let cert_der = first_cert_der(&cert_pem).map_err(|e| corrupt(&cert_path, e))?;
    let info = inspect(&cert_der).map_err(|e| corrupt(&cert_path, e))?;
    key_for_cert(&cert_der, &key_pem).map_err(|e| corrupt(&key_path, e))?;
    Ok(Some(StoredCert {
        cert_pem,
        key_pem,
        cert_der,
        info,
    }))
}

/// Refuses names that would leave `identities/` or `routes/`, or collide with temp files.
fn dir_name<'a>(kind: &str, name: &'a str) -> Result<&'a str> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 253;
    if ok {
        Ok(name)
    } else {
        Err(Error::Config(format!(
            "{kind} name {name:?} cannot be used as a directory name in the state directory"
        )))
    }
}

/// Parses the cookie key ring (newest first, one base64 32-byte key per line); `path` names
/// where it came from in errors (a file, or a Secret in Kubernetes mode).
pub fn parse_cookie_keys(path: &Path, bytes: &[u8]) -> Result<Vec<[u8; 32]>> {
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt(path, "it is not text"))?;
    let mut keys = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let key = BASE64
            .decode(line.trim())
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| corrupt(path, format!("line {} is not base64 of 32 bytes", n + 1)))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(corrupt(
            path,
            "it holds no keys (delete it to start with a new key)",
        ));
    }
    Ok(keys)
}

fn random_key() -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| Error::pki("cookie key", "the system random generator failed"))?;
    Ok(key)
}

#[cfg(test)]
mod tests;
