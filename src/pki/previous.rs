//! Certificates a renewal superseded but a device may still hold: `previous.crt`, a PEM
//! bundle beside `tls.crt` (a file in the state directory, a key of the identity Secret).
//!
//! ```text
//!  re-issue: tls.crt (old) ──supersede──▶ previous.crt = [old, earlier ones still valid]
//!  live set: tls.crt + previous.crt − serials on the ledger − expired
//! ```
//! A phone holds an identity up to twice (Safari's profile and the Home Assistant app's own
//! `.p12`), updated on different days, so a superseded certificate stays admitted until its
//! own notAfter or an explicit revoke, never only until the new one is first seen.

use std::collections::HashSet;
use std::time::SystemTime;

use super::{CertInfo, cert_ders, inspect};

/// File name in `identities/<name>/` and key in the `<name>-client` Secret.
pub const PREVIOUS_CRT: &str = "previous.crt";

/// Most superseded certificates kept per identity: a few re-issues in a row (spec edits)
/// must not lock out a device that missed all of them, but the list cannot grow forever.
pub const PREVIOUS_KEPT: usize = 4;

/// A superseded certificate, read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Previous {
    pub der: Vec<u8>,
    pub info: CertInfo,
}

/// The certificates in a `previous.crt` bundle, newest first; unreadable blocks are skipped
/// (the bundle is only ever written by Portcullis, and a broken entry must not lock out the
/// identity's current certificate).
pub fn parse_previous(pem: &str) -> Vec<Previous> {
    cert_ders(pem)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|der| inspect(&der).ok().map(|info| Previous { der, info }))
        .collect()
}

/// The bundle after `superseded` (PEM) is replaced by a new certificate: it goes first,
/// then the earlier entries, leaving out expired ones and duplicates, at most
/// [`PREVIOUS_KEPT`]. Empty when nothing is left.
pub fn supersede(previous_pem: Option<&str>, superseded_pem: &str, now: SystemTime) -> String {
    let mut seen = HashSet::new();
    let entries = parse_previous(superseded_pem)
        .into_iter()
        .take(1)
        .chain(previous_pem.map(parse_previous).unwrap_or_default())
        .filter(|p| now <= p.info.not_after && seen.insert(p.info.fingerprint))
        .take(PREVIOUS_KEPT);
    entries.map(|p| pem_of(&p.der)).collect()
}

/// One `CERTIFICATE` PEM block, LF line endings (like the rest of the state).
pub fn pem_of(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::Ca;
    use crate::resources::KeyAlgorithm;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn superseded_goes_first_expired_and_duplicates_drop_and_the_list_is_bounded() {
        let ca = Ca::generate("test CA").unwrap();
        let issue = |days| {
            ca.issue_client("phone", KeyAlgorithm::EcdsaP256, days * DAY)
                .unwrap()
        };
        let now = SystemTime::now();
        let short = issue(1);
        let (a, b) = (issue(30), issue(30));

        let bundle = supersede(None, &a.cert_pem, now);
        assert_eq!(parse_previous(&bundle).len(), 1);
        assert_eq!(bundle, a.cert_pem.replace("\r\n", "\n"));

        let bundle = supersede(Some(&bundle), &short.cert_pem, now);
        let bundle = supersede(Some(&bundle), &b.cert_pem, now);
        let serials: Vec<_> = parse_previous(&bundle)
            .into_iter()
            .map(|p| p.info.serial_hex)
            .collect();
        assert_eq!(
            serials,
            [&b, &short, &a].map(|c| c.info.serial_hex.clone()),
            "newest first"
        );

        // Two days on, the one-day certificate has expired and is dropped; superseding the
        // same certificate twice keeps it once.
        let later = now + 2 * DAY;
        let bundle = supersede(Some(&bundle), &b.cert_pem, later);
        let serials: Vec<_> = parse_previous(&bundle)
            .into_iter()
            .map(|p| p.info.serial_hex)
            .collect();
        assert_eq!(serials, [&b, &a].map(|c| c.info.serial_hex.clone()));

        let mut bundle = String::new();
        for _ in 0..PREVIOUS_KEPT + 2 {
            bundle = supersede(Some(&bundle), &issue(30).cert_pem, now);
        }
        assert_eq!(parse_previous(&bundle).len(), PREVIOUS_KEPT);
        assert!(parse_previous("not a certificate").is_empty());
    }
}
