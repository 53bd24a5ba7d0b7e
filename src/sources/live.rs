//! An identity's live certificates, one rule for both sources: the current certificate
//! and those a renewal superseded (`previous.crt`), less every serial on the revocation
//! ledger — whatever a file or Secret holds — and every certificate already expired.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::pki::CertInfo;
use crate::snapshot::LiveCert;

/// The certificates an identity's device may hold, with what the live set needs of them.
pub struct Held<'a> {
    /// `name` (standalone) or `namespace/name` (Kubernetes).
    pub identity: String,
    pub labels: &'a BTreeMap<String, String>,
    /// Current first, then superseded ones.
    pub certs: Vec<&'a CertInfo>,
}

/// The live entries of `held`: each certificate not on the ledger (`is_revoked`), still
/// valid at `now`, once.
pub fn live_certs(
    held: &Held<'_>,
    is_revoked: impl Fn(&str) -> bool,
    now: SystemTime,
) -> Vec<LiveCert> {
    let mut live: Vec<LiveCert> = Vec::with_capacity(held.certs.len());
    for info in &held.certs {
        let duplicate = live.iter().any(|l| l.fingerprint == info.fingerprint);
        if duplicate || is_revoked(&info.serial_hex) || now > info.not_after {
            continue;
        }
        live.push(LiveCert {
            identity: held.identity.clone(),
            serial_hex: info.serial_hex.clone(),
            fingerprint: info.fingerprint,
            labels: held.labels.clone(),
            not_after: info.not_after,
        });
    }
    live
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn info(serial: &str, fp: u8, not_after: SystemTime) -> CertInfo {
        CertInfo {
            serial_hex: serial.into(),
            fingerprint: [fp; 32],
            common_name: None,
            dns_names: vec![],
            not_before: SystemTime::UNIX_EPOCH,
            not_after,
        }
    }

    #[test]
    fn the_ledger_and_the_clock_decide_not_the_files() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let later = now + Duration::from_secs(3600);
        let (current, old, revoked, expired) = (
            info("0c", 1, later),
            info("0a", 2, later),
            info("0b", 3, later),
            info("09", 4, now - Duration::from_secs(1)),
        );
        let labels = BTreeMap::new();
        let held = Held {
            identity: "phone".into(),
            labels: &labels,
            certs: vec![&current, &old, &revoked, &expired, &old],
        };
        let live = live_certs(&held, |s| s == "0b", now);
        let serials: Vec<&str> = live.iter().map(|l| l.serial_hex.as_str()).collect();
        assert_eq!(serials, ["0c", "0a"]);
        assert!(live.iter().all(|l| l.not_after == later));
    }
}
