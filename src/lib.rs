//! Portcullis: a mutual-TLS gate for self-hosted Home Assistant.
//!
//! ```text
//!  sources (file watcher | Kubernetes watches) ──build──▶ Snapshot ──watch──▶ proxy
//!        │                                                                  │
//!        └── pki: CA, device certificates, CRL, .p12        admission::admit (pure)
//! ```
//! Sources turn resources into one immutable [`snapshot::Snapshot`]; the proxy only ever
//! reads the newest one, so a reload never touches the data plane's code paths.
#![forbid(unsafe_code)]

pub mod acme;
pub mod admission;
pub mod backup;
pub mod controller;
pub mod enroll;
pub mod identity_list;
pub mod operator;
pub mod pki;
pub mod proxy;
pub mod resources;
pub mod scope;
pub mod snapshot;
pub mod sources;
pub mod state;
pub mod telemetry;

use std::path::PathBuf;

/// Everything that can go wrong, with enough context to name the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// A file exists but its contents are unusable. Never "fixed" by regenerating it.
    #[error("{path} is not usable: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// Issuing or encoding a certificate, key, CRL or PKCS#12 file failed.
    #[error("{what}: {reason}")]
    Pki { what: String, reason: String },

    /// Invalid configuration; the message lists every problem.
    #[error("{0}")]
    Config(String),

    /// Building a TLS configuration failed.
    #[error("TLS configuration for {what}: {source}")]
    Tls { what: String, source: rustls::Error },

    /// The Kubernetes controller failed (API access, leader election).
    #[error("controller: {0}")]
    Controller(Box<controller::Error>),
}

impl Error {
    /// Shorthand for [`Error::Pki`].
    pub fn pki(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Pki {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
