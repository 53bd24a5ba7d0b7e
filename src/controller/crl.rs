//! The CRL Secret: `crl.pem` signed by the CA, `revoked.json`, the ledger of every serial
//! ever revoked, so serials of deleted identities stay listed, and `ca.crt`, the CA
//! certificate the data plane trusts — published here so that the data plane, which faces
//! the internet, never needs to read the CA Secret and its private key.
//!
//! ```text
//!  revoke / delete / supersede ──▶ Crl::publish(additions)
//!      GET portcullis-crl ──▶ plan (merge ledger, sign when due) ──▶ APPLY (resourceVersion)
//!  refresher: re-signs daily and when the CA changes, so nextUpdate is never reached
//! ```
//! The ledger is only ever added to; one that does not parse is never overwritten.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Patch;
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::apply::{SecretSpec, apply_params, secret_bytes, secret_text};
use super::names::{
    CA_CRT, CRL_CA_ANNOTATION, CRL_KEY, CRL_LEDGER_ANNOTATION, CRL_LEDGER_KEY, CRL_SECRET,
    CRL_SIGNED_AT_ANNOTATION,
};
use super::ownership::operator_secret_conflict;
use super::{Error, Result};
use crate::pki::{
    CRL_REFRESH, CRL_VALIDITY, Ca, RevokedSerial, canonical_serial, parse_ledger_json,
};

/// What to write to the CRL Secret.
#[derive(Debug, PartialEq)]
pub struct CrlPlan {
    /// The ledger after the additions, in order of revocation.
    pub ledger: Vec<RevokedSerial>,
    /// Whether the additions changed it.
    pub ledger_changed: bool,
    /// Whether `crl.pem` must be (re-)signed now.
    pub sign: bool,
}

/// Reads the ledger of an existing CRL Secret (empty when there is none).
pub fn parse_ledger(secret: Option<&Secret>) -> Result<Vec<RevokedSerial>, String> {
    let Some(bytes) = secret.and_then(|s| secret_bytes(s, CRL_LEDGER_KEY)) else {
        return Ok(Vec::new());
    };
    parse_ledger_json(bytes).map_err(|e| format!("{CRL_LEDGER_KEY} {e}"))
}

/// Adds the serials of `add` not yet on `ledger` (compared in canonical form). Returns
/// whether anything was added.
pub fn merge(ledger: &mut Vec<RevokedSerial>, add: &[RevokedSerial]) -> bool {
    let mut known: BTreeSet<String> = ledger
        .iter()
        .filter_map(|r| canonical(&r.serial_hex))
        .collect();
    let before = ledger.len();
    for r in add {
        if let Some(serial) = canonical(&r.serial_hex)
            && known.insert(serial.clone())
        {
            ledger.push(RevokedSerial {
                serial_hex: serial,
                revoked_at: r.revoked_at,
            });
        }
    }
    ledger.len() != before
}

/// A serial in the form [`crate::pki::CertInfo::serial_hex`] uses.
pub fn canonical(serial: &str) -> Option<String> {
    canonical_serial(serial)
}

/// The ledger as stored in `revoked.json`.
pub fn ledger_json(ledger: &[RevokedSerial]) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(ledger).map_err(|source| Error::Json {
        what: "the revocation ledger",
        source,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Decides what a publish writes. `ca_sha256`: the CA that would sign, `None` when none can.
pub fn plan(
    existing: Option<&Secret>,
    add: &[RevokedSerial],
    ca_sha256: Option<&str>,
    now: SystemTime,
) -> Result<CrlPlan, String> {
    let mut ledger = parse_ledger(existing)?;
    let ledger_changed = merge(&mut ledger, add);
    let digest = ledger_json(&ledger)
        .map(|j| sha256_hex(&j))
        .map_err(|e| e.to_string())?;
    let annotation =
        |key: &str| existing.and_then(|s| s.metadata.annotations.as_ref()?.get(key).cloned());
    let stale = existing.and_then(|s| secret_text(s, CRL_KEY)).is_none()
        || published_ca_sha256(existing) != ca_sha256.map(str::to_owned)
        || annotation(CRL_CA_ANNOTATION).as_deref() != ca_sha256
        || annotation(CRL_LEDGER_ANNOTATION) != Some(digest)
        || next_refresh(existing).is_none_or(|t| now >= t);
    Ok(CrlPlan {
        ledger,
        ledger_changed,
        sign: ca_sha256.is_some() && (ledger_changed || stale),
    })
}

/// SHA-256 (hex) of the CA certificate published in `ca.crt` (an older release wrote none).
pub fn published_ca_sha256(secret: Option<&Secret>) -> Option<String> {
    let pem = secret_text(secret?, CA_CRT)?;
    let der = crate::pki::first_cert_der(pem).ok()?;
    Some(sha256_hex(&der))
}

/// When the CRL in `secret` is due to be re-signed.
pub fn next_refresh(secret: Option<&Secret>) -> Option<SystemTime> {
    let signed = secret?
        .metadata
        .annotations
        .as_ref()?
        .get(CRL_SIGNED_AT_ANNOTATION)?;
    let signed = humantime::parse_rfc3339_weak(signed).ok()?;
    signed.checked_add(CRL_REFRESH)
}

/// Writes the CRL Secret; one publish at a time, and the only writer is the leader.
pub struct Crl {
    client: Client,
    namespace: String,
    /// The release writing it.
    instance: String,
    /// Serials on the ledger as last read or written; `None` until first read.
    serials: Mutex<Option<BTreeSet<String>>>,
}

impl Crl {
    /// The CRL writer of release `instance` for the operator namespace.
    pub fn new(client: Client, namespace: String, instance: String) -> Self {
        Crl {
            client,
            namespace,
            instance,
            serials: Mutex::new(None),
        }
    }

    fn api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn unusable(&self, reason: String) -> Error {
        Error::unusable(
            format!("CRL Secret {}/{CRL_SECRET}", self.namespace),
            reason,
        )
    }

    /// Whether `serial` is on the ledger.
    pub async fn is_revoked(&self, serial: &str) -> Result<bool> {
        let mut serials = self.serials.lock().await;
        if serials.is_none() {
            let existing = self.api().get_opt(CRL_SECRET).await?;
            let ledger = parse_ledger(existing.as_ref()).map_err(|r| self.unusable(r))?;
            *serials = Some(
                ledger
                    .iter()
                    .filter_map(|r| canonical(&r.serial_hex))
                    .collect(),
            );
        }
        Ok(canonical(serial).is_some_and(|s| serials.as_ref().is_some_and(|set| set.contains(&s))))
    }

    /// Adds `add` to the ledger and re-signs `crl.pem` when due (with `ca`; without one, only
    /// the ledger is written and the CRL is signed once a CA is back). Returns when the CRL
    /// next needs re-signing.
    pub async fn publish(
        &self,
        ca: Option<&Ca>,
        add: &[RevokedSerial],
    ) -> Result<Option<SystemTime>> {
        let mut serials = self.serials.lock().await;
        let api = self.api();
        let existing = api.get_opt(CRL_SECRET).await?;
        // A Secret of that name someone else wrote is reported, never force-applied over.
        if let Some(why) = existing
            .as_ref()
            .and_then(|s| operator_secret_conflict(s, &self.instance))
        {
            return Err(self.unusable(why));
        }
        let ca_sha256 = ca.map(|c| sha256_hex(c.cert_der()));
        let now = SystemTime::now();
        let plan = plan(existing.as_ref(), add, ca_sha256.as_deref(), now)
            .map_err(|r| self.unusable(r))?;
        let known = plan
            .ledger
            .iter()
            .filter_map(|r| canonical(&r.serial_hex))
            .collect();
        if !plan.ledger_changed && !plan.sign {
            *serials = Some(known);
            return Ok(next_refresh(existing.as_ref()));
        }
        let desired = desired_secret(
            &self.namespace,
            &self.instance,
            existing.as_ref(),
            &plan,
            ca,
            now,
        )?;
        api.patch(CRL_SECRET, &apply_params(), &Patch::Apply(&desired))
            .await?;
        *serials = Some(known);
        if plan.ledger_changed {
            let added: Vec<&str> = add.iter().map(|r| r.serial_hex.as_str()).collect();
            tracing::info!(serials = ?added, "revocation ledger updated");
        }
        Ok(next_refresh(Some(&desired)))
    }
}

/// The CRL Secret to apply for `plan`: signed with `ca` when the plan says so, else
/// the ledger with the last signed `crl.pem` kept.
pub fn desired_secret(
    namespace: &str,
    instance: &str,
    existing: Option<&Secret>,
    plan: &CrlPlan,
    ca: Option<&Ca>,
    now: SystemTime,
) -> Result<Secret> {
    let ledger = ledger_json(&plan.ledger)?;
    let mut data = BTreeMap::from([(CRL_LEDGER_KEY.to_owned(), ledger.clone())]);
    let mut annotations = Vec::new();
    match ca.filter(|_| plan.sign) {
        Some(ca) => {
            // Seconds since the epoch: increases across restarts without a counter.
            let number = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs());
            let pem = ca.crl(&plan.ledger, number, CRL_VALIDITY)?;
            data.insert(CRL_KEY.to_owned(), pem.into_bytes());
            // Only the certificate: the data plane verifies devices with it.
            data.insert(CA_CRT.to_owned(), ca.cert_pem().as_bytes().to_vec());
            annotations.push((
                CRL_SIGNED_AT_ANNOTATION,
                humantime::format_rfc3339_seconds(now).to_string(),
            ));
            annotations.push((CRL_CA_ANNOTATION, sha256_hex(ca.cert_der())));
            annotations.push((CRL_LEDGER_ANNOTATION, sha256_hex(&ledger)));
        }
        None => {
            // Keep the last signed CRL, the CA certificate it was signed with and their
            // annotations until a CA can sign again.
            for key in [CRL_KEY, CA_CRT] {
                if let Some(old) = existing.and_then(|s| secret_bytes(s, key)) {
                    data.insert(key.to_owned(), old.to_vec());
                }
            }
            let old = existing.and_then(|s| s.metadata.annotations.as_ref());
            for key in [
                CRL_SIGNED_AT_ANNOTATION,
                CRL_CA_ANNOTATION,
                CRL_LEDGER_ANNOTATION,
            ] {
                if let Some(v) = old.and_then(|a| a.get(key)) {
                    annotations.push((key, v.clone()));
                }
            }
        }
    }
    let mut secret = SecretSpec {
        name: CRL_SECRET.to_owned(),
        namespace,
        type_: "Opaque",
        instance,
        labels: Vec::new(),
        annotations,
        owner: None,
        data,
    }
    .build();
    // A precondition: two writers never lose each other's serials (409 → retried).
    secret.metadata.resource_version = existing.and_then(|s| s.metadata.resource_version.clone());
    Ok(secret)
}

#[cfg(test)]
#[path = "crl_tests.rs"]
mod tests;
