//! Makes the state directory match a valid config, then gathers the snapshot's parts.
//!
//! ```text
//!  CA (load; create only when absent) ──▶ routes: server cert per route (90d, renew at 30d)
//!                                     ──▶ identities: credentials (issue / renew / re-export)
//!                                     ──▶ revoked + removed identities ──▶ ledger ──▶ crl.pem
//!                                     ──▶ SnapshotParts
//! ```
//! Idempotent: a second run over the same config mints nothing. Nothing is ever deleted: a
//! revoked or removed identity keeps its files, and its serial goes on the CRL.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;

use super::config::Config;
use super::name_of;
use crate::pki::previous::parse_previous;
use crate::pki::{CRL_REFRESH, CRL_VALIDITY, Ca, RevokedSerial};
use crate::snapshot::SnapshotParts;
use crate::state::StateDir;
use crate::{Error, Result};

/// Lifetime of a minted server certificate.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// A server certificate is renewed when it has less than this left.
pub const SERVER_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A certificate in use and when it expires (for the expiry metric).
#[derive(Clone, Debug, PartialEq)]
pub struct Expiry {
    /// `ca`, `route` or `identity`.
    pub kind: &'static str,
    pub name: String,
    pub not_after: SystemTime,
}

/// What a reconcile did and produced.
pub struct Outcome {
    /// Ready for [`crate::snapshot::Snapshot::build`].
    pub parts: SnapshotParts,
    /// Whether the CA was created (a first start).
    pub created_ca: bool,
    /// One line per thing changed on disk (already logged).
    pub changes: Vec<String>,
    pub expiries: Vec<Expiry>,
}

/// Brings `state` in line with `config` and returns the snapshot's parts. Fails, writing
/// nothing of the CA, when the CA files are unusable.
pub fn reconcile(config: &Config, state: &StateDir) -> Result<Outcome> {
    let (ca, created_ca) = state.load_or_create_ca()?;
    if created_ca {
        tracing::info!(path = %state.ca_cert_path().display(), "created the certificate authority");
    }
    let ledger = state.load_revoked()?;
    let mut ctx = Ctx {
        state,
        ca,
        ledger,
        ledger_changed: false,
        changes: Vec::new(),
        expiries: Vec::new(),
    };
    ctx.expiry("ca", "ca", ctx.ca.info().not_after);

    let mut routes = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        routes.extend(ctx.route_source(config, route)?);
    }
    let mut live = Vec::new();
    for identity in &config.identities {
        live.extend(ctx.identity(config, identity)?);
    }
    let names: BTreeSet<&str> = config
        .identities
        .iter()
        .map(|c| name_of(&c.metadata))
        .collect();
    ctx.removed_identities(&names)?;
    ctx.publish_crl()?;
    let cookie_keys = state.load_or_create_cookie_keys()?;

    let client_ca = vec![CertificateDer::from(ctx.ca.cert_der().to_vec())];
    Ok(Outcome {
        parts: SnapshotParts {
            client_ca,
            routes,
            live,
            cookie_keys,
        },
        created_ca,
        changes: ctx.changes,
        expiries: ctx.expiries,
    })
}

/// State shared by the steps of one reconcile.
pub(super) struct Ctx<'a> {
    pub state: &'a StateDir,
    pub ca: Ca,
    ledger: Vec<RevokedSerial>,
    ledger_changed: bool,
    changes: Vec<String>,
    expiries: Vec<Expiry>,
}

impl Ctx<'_> {
    /// Records (and logs) a change on disk.
    pub fn changed(&mut self, line: String) {
        tracing::info!("{line}");
        self.changes.push(line);
    }

    pub fn expiry(&mut self, kind: &'static str, name: &str, not_after: SystemTime) {
        self.expiries.push(Expiry {
            kind,
            name: name.to_owned(),
            not_after,
        });
    }

    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.ledger.iter().any(|r| r.serial_hex == serial_hex)
    }

    /// Puts a serial on the ledger (once).
    pub fn revoke(&mut self, serial_hex: &str, why: String) {
        if self.is_revoked(serial_hex) {
            return;
        }
        let entry = RevokedSerial {
            serial_hex: serial_hex.to_owned(),
            revoked_at: SystemTime::now(),
        };
        self.ledger.push(entry);
        self.ledger_changed = true;
        self.changed(why);
    }

    /// Identities with files in the state directory but no longer in the config: their
    /// certificates go on the CRL; the files stay (harmless, and a typo is recoverable).
    fn removed_identities(&mut self, names: &BTreeSet<&str>) -> Result<()> {
        let dir = self.state.root().join("identities");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Io {
                    action: "list",
                    path: dir,
                    source: e,
                });
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || names.contains(name.as_str()) || !entry.path().is_dir() {
                continue;
            }
            let current = match self.state.load_identity(&name) {
                Ok(cert) => cert.map(|c| c.info),
                Err(e) => {
                    tracing::warn!("removed identity {name}: {e}");
                    None
                }
            };
            let previous = self.state.load_previous(&name).unwrap_or_default();
            let previous = parse_previous(&previous).into_iter().map(|p| p.info);
            for info in current.into_iter().chain(previous) {
                let serial = info.serial_hex;
                let why = format!(
                    "identity {name} is no longer in the config: revoked serial {serial}; its \
                     files stay in {}",
                    entry.path().display()
                );
                self.revoke(&serial, why);
            }
        }
        Ok(())
    }

    /// Saves the ledger and re-signs `crl.pem` when the ledger changed, the CRL is missing,
    /// or it is getting old.
    fn publish_crl(&mut self) -> Result<()> {
        if self.ledger_changed {
            self.state.save_revoked(&self.ledger)?;
        }
        let age = std::fs::metadata(self.state.crl_path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if !self.ledger_changed && age.is_some_and(|a| a < CRL_REFRESH) {
            return Ok(());
        }
        // Seconds since the epoch: increases across restarts without a stored counter.
        let number = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs());
        let pem = self.ca.crl(&self.ledger, number, CRL_VALIDITY)?;
        self.state.write_crl(&pem)
    }
}

#[cfg(test)]
mod tests;
