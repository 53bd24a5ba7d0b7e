//! `metav1.Condition`s whose `lastTransitionTime` moves only when their status does, so a
//! reconcile of an unchanged object computes an identical status and writes nothing.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `Ready`: the object is fully in effect.
pub const READY: &str = "Ready";
/// `Revoked` (ClientIdentity): the certificate is on the CRL and refused by the gate.
pub const REVOKED: &str = "Revoked";
/// `ExpiringSoon` (ClientIdentity): the certificate is within its renewal window.
pub const EXPIRING_SOON: &str = "ExpiringSoon";

/// A condition as the reconcile wants it; the time is filled in by [`merge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// Condition type, e.g. [`READY`].
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason, e.g. `PasswordSecretMissing`.
    pub reason: &'static str,
    /// What is the case and what to do about it.
    pub message: String,
}

impl Want {
    /// A `True` condition.
    pub fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Want {
            type_,
            status: true,
            reason,
            message,
        }
    }

    /// A `False` condition.
    pub fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Want {
            status: false,
            ..Want::yes(type_, reason, message)
        }
    }
}

/// The conditions to publish: `wanted` in order, each keeping the `lastTransitionTime` of
/// the existing condition of its type when the status is unchanged, else `now`.
pub fn merge(
    existing: &[Condition],
    wanted: &[Want],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" };
            let since = existing
                .iter()
                .find(|c| c.type_ == w.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: w.type_.to_owned(),
                status: status.to_owned(),
                reason: w.reason.to_owned(),
                message: w.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// The reason of the condition of `type_`, if present.
pub fn reason_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

pub use crate::resources::to_time as time;

/// Now, as a [`Time`] in whole seconds.
pub fn now() -> Time {
    time(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn transition_time_moves_only_with_status() {
        let t0 = time(UNIX_EPOCH + Duration::from_secs(1_000));
        let t1 = time(UNIX_EPOCH + Duration::from_secs(2_000));
        let first = merge(&[], &[Want::no(READY, "Pending", "wait")], Some(1), &t0);
        assert_eq!(first[0].last_transition_time, t0);
        assert_eq!(first[0].status, "False");

        // Same status, new reason and message: the time stays.
        let same = merge(&first, &[Want::no(READY, "Other", "still")], Some(2), &t1);
        assert_eq!(same[0].last_transition_time, t0);
        assert_eq!(
            (same[0].reason.as_str(), same[0].observed_generation),
            ("Other", Some(2))
        );

        // Status flips: the time moves.
        let flipped = merge(&same, &[Want::yes(READY, "Issued", "ok")], Some(2), &t1);
        assert_eq!(flipped[0].last_transition_time, t1);

        // Identical input → identical output (no status patch).
        assert_eq!(
            merge(&flipped, &[Want::yes(READY, "Issued", "ok")], Some(2), &t0),
            flipped
        );
        assert_eq!(reason_of(&flipped, READY), Some("Issued"));
        assert_eq!(reason_of(&flipped, REVOKED), None);
    }

    #[test]
    fn times_are_whole_seconds_and_roundtrip() {
        let t = time(UNIX_EPOCH + Duration::from_millis(1_700_000_000_999));
        assert_eq!(t.0.as_second(), 1_700_000_000);
        assert_eq!(t.0.subsec_nanosecond(), 0);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Time>(&json).unwrap(), t);
        assert_eq!(time(UNIX_EPOCH - Duration::from_secs(5)).0.as_second(), -5);
    }
}
