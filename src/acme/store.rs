//! What the ACME client keeps in the state directory; every file 0600, written atomically.
//!
//! ```text
//!  acme/accounts/<id>.json              one account per directory URL, shared by routes
//!                                       (id: SHA-256 of the URL, 16 hex digits)
//!  routes/<route>/acme/certificate.pem  the key, then the chain: one file, one rename
//!  routes/<route>/acme/attempts.json    failures in a row and the earliest next order
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::schedule::{Attempts, Held};
use crate::pki::{self, renewal};
use crate::state::StateDir;
use crate::state::write_atomic;
use crate::{Error, Result};

const SECRET: u32 = 0o600;

/// An ACME account as saved: its credentials and what it was created for.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAccount {
    pub directory: String,
    pub email: String,
    /// instant-acme's `AccountCredentials` (holds the account's private key).
    pub credentials: serde_json::Value,
}

/// The ACME files of one state directory.
#[derive(Clone, Debug)]
pub struct AcmeStore {
    state: StateDir,
}

impl AcmeStore {
    pub fn new(state: StateDir) -> Self {
        AcmeStore { state }
    }

    pub fn account_path(&self, directory: &str) -> PathBuf {
        let id = hex::encode(&Sha256::digest(directory.as_bytes())[..8]);
        self.state
            .acme_dir()
            .join("accounts")
            .join(format!("{id}.json"))
    }

    /// The saved account for `directory`, if any. A damaged file is an error (never
    /// silently replaced: the CA's rate limits count accounts too).
    pub fn load_account(&self, directory: &str) -> Result<Option<StoredAccount>> {
        let path = self.account_path(directory);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path,
                reason: format!("not an ACME account file ({e}); restore it or delete it to register a new account"),
            })
    }

    pub fn save_account(&self, account: &StoredAccount) -> Result<()> {
        let path = self.account_path(&account.directory);
        let json = serde_json::to_vec_pretty(account).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &json, SECRET)
    }

    /// Moves the account file of `directory` aside (`<id>.json.retired-<unix time>`), never
    /// deleting a key; returns where it went, if there was one.
    pub fn retire_account(&self, directory: &str) -> Result<Option<PathBuf>> {
        let path = self.account_path(directory);
        let secs = super::schedule::to_unix(std::time::SystemTime::now());
        let kept = path.with_extension(format!("json.retired-{secs}"));
        match std::fs::rename(&path, &kept) {
            Ok(()) => Ok(Some(kept)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                action: "set aside",
                path,
                source: e,
            }),
        }
    }

    /// What the stored certificate of `route` says, for `hosts`; `None` when there is none
    /// or it cannot be read (a new order then replaces it).
    pub fn held(&self, route: &str, hosts: &[String]) -> Option<Held> {
        let path = self.state.acme_certificate_path(route);
        let pem = std::fs::read_to_string(&path).ok()?;
        let chain = pki::cert_ders(&pem).ok()?;
        let leaf = chain.first()?;
        let info = pki::inspect(leaf).ok()?;
        let sans = renewal::san_hosts(leaf);
        Some(Held {
            not_before: info.not_before,
            not_after: info.not_after,
            covers_hosts: hosts.iter().all(|h| renewal::covers(&sans, h)),
        })
    }

    /// Replaces `route`'s certificate with `key_pem` and `chain_pem` in one atomic write.
    pub fn save_certificate(&self, route: &str, key_pem: &str, chain_pem: &str) -> Result<()> {
        let mut pem = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
        pem.push_str(key_pem.trim_end());
        pem.push('\n');
        pem.push_str(chain_pem);
        write_atomic(
            &self.state.acme_certificate_path(route),
            pem.as_bytes(),
            SECRET,
        )
    }

    fn attempts_path(&self, route: &str) -> PathBuf {
        self.state
            .route_dir(route)
            .join("acme")
            .join("attempts.json")
    }

    /// The route's failures so far; a damaged file counts as one failure just now would
    /// (never as none: that could turn a crash loop into an order burst).
    pub fn attempts(&self, route: &str) -> Attempts {
        let path = self.attempts_path(route);
        match read_optional(&path) {
            Ok(None) => Attempts::default(),
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("{}: unreadable ({e}); backing off once", path.display());
                damaged()
            }),
            Err(e) => {
                tracing::warn!("{e}; backing off once");
                damaged()
            }
        }
    }

    pub fn save_attempts(&self, route: &str, attempts: &Attempts) -> Result<()> {
        let path = self.attempts_path(route);
        if attempts == &Attempts::default() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                    action: "remove",
                    path,
                    source: e,
                }),
                _ => Ok(()),
            };
        }
        let json = serde_json::to_vec_pretty(attempts).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &json, SECRET)
    }
}

fn damaged() -> Attempts {
    super::schedule::after_failure(
        &Attempts::default(),
        std::time::SystemTime::now(),
        None,
        "attempts.json was unreadable",
    )
}

fn read_optional(path: &std::path::Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            action: "read",
            path: path.to_owned(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::pki::Ca;

    #[test]
    fn certificate_and_attempts_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = AcmeStore::new(StateDir::new(dir.path()));
        let hosts = vec!["ha.example.test".to_owned()];
        assert!(store.held("ha", &hosts).is_none());

        let ca = Ca::generate("t").unwrap();
        let cert = ca.issue_server(&hosts, Duration::from_secs(3600)).unwrap();
        store
            .save_certificate("ha", &cert.key_pem, &cert.cert_pem)
            .unwrap();
        let path = dir.path().join("routes/ha/acme/certificate.pem");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let held = store.held("ha", &hosts).unwrap();
        assert!(held.covers_hosts);
        assert!(
            !store
                .held("ha", &["other.test".into()])
                .unwrap()
                .covers_hosts
        );

        let failed = super::super::schedule::after_failure(
            &Attempts::default(),
            std::time::SystemTime::now(),
            None,
            "dns",
        );
        store.save_attempts("ha", &failed).unwrap();
        assert_eq!(store.attempts("ha"), failed);
        store.save_attempts("ha", &Attempts::default()).unwrap();
        assert!(!dir.path().join("routes/ha/acme/attempts.json").exists());
        assert_eq!(store.attempts("ha"), Attempts::default());

        std::fs::write(dir.path().join("routes/ha/acme/attempts.json"), "{").unwrap();
        assert_eq!(store.attempts("ha").failures, 1);
    }

    #[test]
    fn one_account_file_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = AcmeStore::new(StateDir::new(dir.path()));
        let a = store.account_path("https://a.example/dir");
        assert_ne!(a, store.account_path("https://b.example/dir"));
        assert!(
            store
                .load_account("https://a.example/dir")
                .unwrap()
                .is_none()
        );
        store
            .save_account(&StoredAccount {
                directory: "https://a.example/dir".into(),
                email: "me@example.com".into(),
                credentials: serde_json::json!({"id": "x"}),
            })
            .unwrap();
        let loaded = store
            .load_account("https://a.example/dir")
            .unwrap()
            .unwrap();
        assert_eq!(loaded.email, "me@example.com");
        let kept = store
            .retire_account("https://a.example/dir")
            .unwrap()
            .unwrap();
        assert!(kept.exists() && !a.exists());
        assert!(
            store
                .load_account("https://a.example/dir")
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .retire_account("https://a.example/dir")
                .unwrap()
                .is_none()
        );
        std::fs::write(&a, "garbage").unwrap();
        let err = store.load_account("https://a.example/dir").err().unwrap();
        assert!(err.to_string().contains("delete it to register"), "{err}");
    }
}
