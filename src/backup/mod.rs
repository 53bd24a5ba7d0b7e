//! `portcullis backup` / `restore`: everything the gate's trust depends on, in one
//! password-protected file, in both modes.
//!
//! ```text
//!  standalone: state dir ──collect──┐                 ┌──▶ new state dir (staged, renamed)
//!                                   ├─▶ Archive (JSON) ─ age (scrypt) ─▶ FILE (0600)
//!  Kubernetes: Secrets + CRs ───────┘                 └──▶ fresh cluster (create, never replace)
//! ```
//! The file is an ordinary [age](https://age-encryption.org) file with a passphrase, so
//! `age -d FILE` opens it without Portcullis; inside is one JSON document ([`Archive`]).
//! What it holds: the CA (certificate and key), the revocation ledger and CRL, the cookie
//! keys, every device's current certificate and key with the superseded ones still admitted
//! (`previous.crt`), the server certificates the CA minted, and what recreates the devices
//! (standalone: the config file; Kubernetes: the ClientIdentities and ProtectedRoutes).
//!
//! A restore never replaces a CA: it refuses when the target already has one, because the
//! controller's first start creates a new CA and a restore must come before it.

mod cluster;
mod seal;
mod standalone;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use serde::{Deserialize, Serialize};

use crate::resources::{ClientIdentitySpec, ProtectedRouteSpec};
pub use cluster::{collect_cluster, restore_cluster};
pub use seal::{MIN_PASSWORD_CHARS, Password, read_archive, write_archive};
pub use standalone::{collect_standalone, restore_standalone};

/// The format version this build writes; it reads this one and older.
pub const FORMAT_VERSION: u32 = 1;

/// What can go wrong; every message names the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backup file cannot be opened: wrong password, damaged, not a backup.
    #[error("{path}: {reason}")]
    File {
        /// The backup file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The restore target is not empty (a CA exists, files or objects are in the way).
    #[error("{0}")]
    Refused(String),
    /// Reading or writing the state directory failed.
    #[error(transparent)]
    State(#[from] crate::Error),
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done, naming the object.
        what: String,
        /// The API error.
        source: kube::Error,
    },
}

/// Shorthand for this module's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The document inside the encrypted file.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Archive {
    /// Marks the document as a Portcullis backup; the number is its format version.
    pub portcullis_backup: u32,
    /// When it was taken (RFC 3339, UTC).
    pub created_at: String,
    /// The program that took it (`portcullis 0.1.0`).
    pub created_by: String,
    /// What it holds, by mode.
    pub contents: Contents,
}

impl Archive {
    /// A new archive of `contents`, stamped now.
    pub fn new(contents: Contents) -> Archive {
        Archive {
            portcullis_backup: FORMAT_VERSION,
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            created_by: format!("portcullis {}", env!("CARGO_PKG_VERSION")),
            contents,
        }
    }
}

/// What a backup holds, by the mode it was taken in.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "mode", rename_all = "camelCase")]
pub enum Contents {
    /// A standalone state directory.
    Standalone(StandaloneContents),
    /// A Kubernetes installation.
    Kubernetes(Box<ClusterContents>),
}

impl Contents {
    /// The mode's name, for messages.
    pub fn mode(&self) -> &'static str {
        match self {
            Contents::Standalone(_) => "standalone",
            Contents::Kubernetes(_) => "Kubernetes",
        }
    }
}

/// A standalone state directory: its files by relative path, and the config file.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct StandaloneContents {
    /// `ca/tls.crt`, `identities/phone/tls.key`, ... (see [`crate::state`]).
    pub files: BTreeMap<String, SavedFile>,
    /// The config file (routes and identities), when the backup was given one.
    pub config: Option<SavedConfig>,
}

/// One file of the state directory.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SavedFile {
    /// Restored with mode 0600 (keys, cookie keys, `.p12` files and passwords), else 0644.
    pub secret: bool,
    /// The bytes (base64 in the JSON).
    pub data: ByteString,
}

/// The standalone config file.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SavedConfig {
    /// Where it was read from (for the user's information).
    pub path: String,
    /// Its text.
    pub text: String,
}

/// A Kubernetes installation: the operator namespace's Secrets, the custom resources and
/// the Secrets the controller wrote for them.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ClusterContents {
    /// The operator namespace it was taken from.
    pub namespace: String,
    /// The CA Secret (its name is kept: a bring-your-own name stays the same).
    pub ca: SavedSecret,
    /// The CRL Secret with the revocation ledger.
    pub crl: Option<SavedSecret>,
    /// The cookie keys Secret.
    pub cookie_keys: Option<SavedSecret>,
    /// Every ClientIdentity.
    pub identities: Vec<SavedObject<ClientIdentitySpec>>,
    /// Every ProtectedRoute.
    pub routes: Vec<SavedObject<ProtectedRouteSpec>>,
    /// `<name>-client` and minted `<name>-server-tls` Secrets, owned by those objects.
    pub owned_secrets: Vec<SavedSecret>,
}

/// A custom resource without its server-side fields (uid, status, finalizers, ...).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SavedObject<S> {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels (selectors match on them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The spec.
    pub spec: S,
}

/// A Secret without its server-side fields; its owner is named, and re-linked to the
/// restored object's new UID.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SavedSecret {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `kubernetes.io/tls` or `Opaque`.
    pub type_: Option<String>,
    /// Labels, as the controller wrote them (it watches Secrets by them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (e.g. `portcullis.dev/issued-for`: without it the controller would
    /// re-issue the device).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The controlling owner, by kind and name (same namespace).
    pub owner: Option<SavedOwner>,
    /// The data (base64 in the JSON, as in Kubernetes).
    pub data: BTreeMap<String, ByteString>,
}

/// The owner of a [`SavedSecret`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct SavedOwner {
    /// `ClientIdentity` or `ProtectedRoute`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// What a backup or restore did, one line per thing, for the user.
#[derive(Debug, Default)]
pub struct Report {
    /// Lines like `CA Secret portcullis/portcullis-ca`.
    pub lines: Vec<String>,
    /// Warnings the user should read.
    pub notes: Vec<String>,
}

fn file_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests;
