//! A ClientIdentity's status, computed from what the reconcile found: the certificate in
//! its Secret and why it is (not) ready. Pure, so "unchanged in, unchanged out" is tested.

use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::{EXPIRING_SOON, READY, REVOKED, Want, merge, time};
use super::ownership::{SECRET_CONFLICT, SECRET_NOT_OWNED};
use crate::pki::CertInfo;
use crate::pki::renewal::renew_at;
use crate::resources::{
    ClientIdentity, ClientIdentityStatus, PreviousCertificate, SeenCertificate,
};

/// Why an identity is, or is not, ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its certificate is issued and current.
    Ready,
    /// `spec.revoked: true`.
    Revoked,
    /// Not ready: a condition reason (`InvalidSpec`, `PasswordSecretMissing`,
    /// `CASecretInvalid`, ...) and a message saying what to do.
    Blocked(&'static str, String),
}

impl Outcome {
    /// The reason the Ready condition will carry.
    pub fn ready_reason(&self) -> &'static str {
        match self {
            Outcome::Ready => "Issued",
            Outcome::Revoked => "Revoked",
            Outcome::Blocked(reason, _) => reason,
        }
    }
}

/// What the status describes.
pub struct Facts<'a> {
    /// The certificate in the Secret, if any.
    pub cert: Option<&'a CertInfo>,
    /// The Secret's name, when it exists.
    pub secret: Option<String>,
    /// The identity's namespace (for messages).
    pub namespace: &'a str,
    /// The renewal window (`renewBefore` or its default).
    pub renew_before: Duration,
    /// Superseded certificates still admitted (`previous.crt` less expired ones, newest
    /// first).
    pub previous: &'a [CertInfo],
}

impl Facts<'_> {
    /// The certificate the device uses, as far as the data plane has seen: the one among
    /// the current and the superseded ones admitted most recently (`seen`), else the
    /// current one.
    fn in_use(&self, seen: &[SeenCertificate]) -> Option<&CertInfo> {
        let last_seen = |c: &CertInfo| {
            seen.iter()
                .find(|s| s.serial_number == c.serial_hex)
                .map(|s| s.last_seen.0)
        };
        let current = self.cert?;
        let newest_previous = self
            .previous
            .iter()
            .filter_map(|p| last_seen(p).map(|t| (t, p)))
            .max_by_key(|(t, _)| *t);
        match (last_seen(current), newest_previous) {
            (Some(c), Some((p, previous))) if p > c => Some(previous),
            (None, Some((_, previous))) => Some(previous),
            _ => Some(current),
        }
    }

    /// Whether a new certificate waits to be delivered: a superseded one is still admitted
    /// and the device has not been seen with the current one since.
    fn awaiting_device(&self, seen: &[SeenCertificate]) -> bool {
        let Some(current) = self.cert else {
            return false;
        };
        let current_seen = seen.iter().any(|s| s.serial_number == current.serial_hex);
        let in_use = self.in_use(seen).map(|c| &c.serial_hex);
        !self.previous.is_empty() && (!current_seen || in_use != Some(&current.serial_hex))
    }
}

/// The status to publish. `lastSeen` is left out: the data plane owns it, and server-side
/// apply leaves fields we do not send alone.
pub fn status(
    ci: &ClientIdentity,
    outcome: &Outcome,
    facts: &Facts<'_>,
    now: SystemTime,
    now_t: &Time,
) -> ClientIdentityStatus {
    let current = ci.status.as_ref();
    let existing = current.map_or(&[][..], |s| &s.conditions[..]);
    let seen = current.map_or(&[][..], |s| &s.seen[..]);
    let name = ci.metadata.name.as_deref().unwrap_or_default();
    let mut wanted = vec![
        ready(outcome, facts, seen, name),
        revoked(outcome, facts),
        expiring(outcome, facts, seen, now),
    ];
    wanted.extend(secret_conflict(outcome));
    let previous = match outcome {
        Outcome::Revoked => Vec::new(),
        _ => facts
            .previous
            .iter()
            .map(|p| PreviousCertificate {
                serial_number: p.serial_hex.clone(),
                not_after: time(p.not_after),
            })
            .collect(),
    };
    ClientIdentityStatus {
        serial_number: facts.cert.map(|c| c.serial_hex.clone()),
        fingerprint_sha256: facts.cert.map(CertInfo::fingerprint_hex),
        not_before: facts.cert.map(|c| time(c.not_before)),
        not_after: facts.cert.map(|c| time(c.not_after)),
        secret_name: facts.secret.clone(),
        conditions: merge(existing, &wanted, ci.metadata.generation, now_t),
        observed_generation: ci.metadata.generation,
        last_seen: None,
        previous,
        seen: Vec::new(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ready(outcome: &Outcome, facts: &Facts<'_>, seen: &[SeenCertificate], name: &str) -> Want {
    match outcome {
        Outcome::Ready if facts.awaiting_device(seen) => {
            let (new, in_use) = (facts.cert, facts.in_use(seen));
            let new = new.map_or(String::new(), |c| c.serial_hex.clone());
            let old = match in_use.filter(|c| c.serial_hex != new) {
                Some(c) => format!(
                    "the device was last seen with serial {}, admitted until {}",
                    c.serial_hex,
                    rfc3339(c.not_after)
                ),
                None => "the device has not been seen with it yet; the superseded certificates stay admitted until their notAfter".into(),
            };
            Want::yes(
                READY,
                "AwaitingDevice",
                format!(
                    "certificate serial {new} awaits delivery: {old}; deliver it with \
                     `portcullis enroll {name} --namespace {}` (or import keystore.p12 of Secret {}/{} again)",
                    facts.namespace,
                    facts.namespace,
                    facts.secret.as_deref().unwrap_or_default()
                ),
            )
        }
        Outcome::Ready => {
            let (serial, until) = facts.cert.map_or((String::new(), String::new()), |c| {
                (c.serial_hex.clone(), rfc3339(c.not_after))
            });
            let secret = facts.secret.as_deref().unwrap_or_default();
            Want::yes(
                READY,
                "Issued",
                format!(
                    "certificate serial {serial} is valid until {until}; the device files are in Secret \
                     {}/{secret} (import keystore.p12, its password is in keystore.p12.password)",
                    facts.namespace
                ),
            )
        }
        Outcome::Revoked => Want::no(
            READY,
            "Revoked",
            "spec.revoked is true: the gate refuses this device; set it to false to issue a new certificate",
        ),
        Outcome::Blocked(reason, message) => Want::no(READY, reason, message.clone()),
    }
}

/// `SecretConflict=True` while someone else's Secret holds the name; absent otherwise.
fn secret_conflict(outcome: &Outcome) -> Option<Want> {
    match outcome {
        Outcome::Blocked(SECRET_CONFLICT, message) => Some(Want::yes(
            SECRET_CONFLICT,
            SECRET_NOT_OWNED,
            message.clone(),
        )),
        _ => None,
    }
}

fn revoked(outcome: &Outcome, facts: &Facts<'_>) -> Want {
    match (outcome, facts.cert) {
        (Outcome::Revoked, Some(c)) => Want::yes(
            REVOKED,
            "Revoked",
            format!(
                "serial {} is on the certificate revocation list",
                c.serial_hex
            ),
        ),
        (Outcome::Revoked, None) => Want::yes(REVOKED, "Revoked", "no certificate was ever issued"),
        _ => Want::no(REVOKED, "NotRevoked", "spec.revoked is false"),
    }
}

fn expiring(
    outcome: &Outcome,
    facts: &Facts<'_>,
    seen: &[SeenCertificate],
    now: SystemTime,
) -> Want {
    // Against the certificate the device actually uses: a superseded one runs out first.
    if *outcome != Outcome::Revoked
        && let (Some(current), Some(in_use)) = (facts.cert, facts.in_use(seen))
        && in_use.serial_hex != current.serial_hex
        && now >= renew_at(in_use.not_after, facts.renew_before)
    {
        return Want::yes(
            EXPIRING_SOON,
            "DeviceCertificateExpiring",
            format!(
                "the device still uses serial {}, which expires on {}; deliver serial {} to it",
                in_use.serial_hex,
                rfc3339(in_use.not_after),
                current.serial_hex
            ),
        );
    }
    let Some(c) = facts.cert else {
        return Want::no(
            EXPIRING_SOON,
            "NoCertificate",
            "no certificate has been issued yet",
        );
    };
    if *outcome == Outcome::Revoked {
        return Want::no(EXPIRING_SOON, "Revoked", "the certificate is revoked");
    }
    let due = renew_at(c.not_after, facts.renew_before);
    if now >= c.not_after {
        Want::yes(
            EXPIRING_SOON,
            "Expired",
            format!(
                "the certificate expired on {}; fix what the Ready condition reports so a new one can be issued",
                rfc3339(c.not_after)
            ),
        )
    } else if now >= due {
        Want::yes(
            EXPIRING_SOON,
            "RenewalPending",
            format!(
                "the certificate expires on {}; it could not be renewed yet, see the Ready condition",
                rfc3339(c.not_after)
            ),
        )
    } else {
        Want::no(
            EXPIRING_SOON,
            "Valid",
            format!(
                "valid until {}; renewed automatically from {} (then import the new keystore.p12 on the device)",
                rfc3339(c.not_after),
                rfc3339(due)
            ),
        )
    }
}

/// `current` as comparable with a computed [`status`]: without `lastSeen`.
pub fn comparable(current: Option<&ClientIdentityStatus>) -> Option<ClientIdentityStatus> {
    current.cloned().map(|s| ClientIdentityStatus {
        last_seen: None,
        seen: Vec::new(),
        ..s
    })
}

#[cfg(test)]
#[path = "identity_status_tests.rs"]
mod tests;
