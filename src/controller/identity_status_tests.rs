use std::time::UNIX_EPOCH;

use super::*;
use crate::controller::conditions::reason_of;
use crate::controller::fixtures::{DAY, identity};
use crate::resources::{PreviousCertificate, SeenCertificate};

fn cert(not_before: SystemTime) -> CertInfo {
    CertInfo {
        serial_hex: "0abc".into(),
        fingerprint: [1; 32],
        common_name: Some("phone".into()),
        dns_names: Vec::new(),
        not_before,
        not_after: not_before + 30 * DAY,
    }
}

fn facts(cert: Option<&CertInfo>) -> Facts<'_> {
    Facts {
        cert,
        secret: cert.map(|_| "phone-client".into()),
        namespace: "home",
        renew_before: 10 * DAY,
        previous: &[],
    }
}

fn by_type<'a>(
    s: &'a ClientIdentityStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn ready_identity_reports_its_certificate() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let c = cert(t0);
    let ci = identity("phone");
    let s = status(
        &ci,
        &Outcome::Ready,
        &facts(Some(&c)),
        t0 + DAY,
        &time(t0 + DAY),
    );
    assert_eq!(s.serial_number.as_deref(), Some("0abc"));
    assert_eq!(
        s.fingerprint_sha256.as_deref(),
        Some("01".repeat(32).as_str())
    );
    assert_eq!(s.not_after, Some(time(t0 + 30 * DAY)));
    assert_eq!(s.secret_name.as_deref(), Some("phone-client"));
    assert_eq!(s.observed_generation, Some(1));
    let ready = by_type(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Issued")
    );
    assert!(
        ready.message.contains("home/phone-client") && ready.message.contains("keystore.p12"),
        "{}",
        ready.message
    );
    assert_eq!(by_type(&s, REVOKED).status, "False");
    let expiring = by_type(&s, EXPIRING_SOON);
    assert_eq!(
        (expiring.status.as_str(), expiring.reason.as_str()),
        ("False", "Valid")
    );
    assert!(
        expiring.message.contains("2027-02-04T08:00:00Z"),
        "renewal date: {}",
        expiring.message
    );
}

#[test]
fn recomputing_an_unchanged_identity_gives_an_identical_status() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let c = cert(t0);
    let mut ci = identity("phone");
    let first = status(&ci, &Outcome::Ready, &facts(Some(&c)), t0, &time(t0));
    ci.status = Some(ClientIdentityStatus {
        last_seen: Some(time(t0)),
        ..first.clone()
    });
    // An hour later nothing changed: same status, same transition times, so no patch.
    let later = t0 + Duration::from_secs(3600);
    let again = status(&ci, &Outcome::Ready, &facts(Some(&c)), later, &time(later));
    assert_eq!(Some(again.clone()), comparable(ci.status.as_ref()));
    assert_eq!(again.last_seen, None, "lastSeen belongs to the data plane");

    // Revoking flips Ready and Revoked at `later`; ExpiringSoon keeps its time (still False).
    let revoked = status(
        &ci,
        &Outcome::Revoked,
        &facts(Some(&c)),
        later,
        &time(later),
    );
    assert_eq!(by_type(&revoked, READY).last_transition_time, time(later));
    assert_eq!(by_type(&revoked, REVOKED).last_transition_time, time(later));
    assert_eq!(by_type(&revoked, REVOKED).status, "True");
    assert!(by_type(&revoked, REVOKED).message.contains("0abc"));
    assert_eq!(
        by_type(&revoked, EXPIRING_SOON).last_transition_time,
        time(t0)
    );
    assert_eq!(revoked.serial_number.as_deref(), Some("0abc"));
}

#[test]
fn blocked_and_expiring_identities_say_what_to_do() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let c = cert(t0);
    let ci = identity("phone");
    let blocked = Outcome::Blocked("PasswordSecretMissing", "create Secret home/pw".into());
    assert_eq!(blocked.ready_reason(), "PasswordSecretMissing");
    let s = status(&ci, &blocked, &facts(None), t0, &time(t0));
    assert_eq!(
        reason_of(&s.conditions, READY),
        Some("PasswordSecretMissing")
    );
    assert_eq!(by_type(&s, READY).message, "create Secret home/pw");
    assert_eq!(
        reason_of(&s.conditions, EXPIRING_SOON),
        Some("NoCertificate")
    );
    assert_eq!(
        (s.serial_number.as_ref(), s.secret_name.as_ref()),
        (None, None)
    );

    // The CA broke while the certificate is due: ExpiringSoon turns True, then Expired.
    let ca = Outcome::Blocked("CASecretInvalid", "fix the CA".into());
    let due = status(&ci, &ca, &facts(Some(&c)), t0 + 25 * DAY, &time(t0));
    assert_eq!(by_type(&due, EXPIRING_SOON).status, "True");
    assert_eq!(
        reason_of(&due.conditions, EXPIRING_SOON),
        Some("RenewalPending")
    );
    let gone = status(&ci, &ca, &facts(Some(&c)), t0 + 31 * DAY, &time(t0));
    assert_eq!(reason_of(&gone.conditions, EXPIRING_SOON), Some("Expired"));
}

/// A renewal at `t0 + 25d`: the new certificate `0abd` and the superseded `0abc`.
fn renewed(t0: SystemTime) -> (CertInfo, CertInfo) {
    let old = cert(t0);
    let new = CertInfo {
        serial_hex: "0abd".into(),
        fingerprint: [2; 32],
        ..cert(t0 + 25 * DAY)
    };
    (new, old)
}

fn seen_with(serials: &[(&str, SystemTime)]) -> ClientIdentity {
    let mut ci = identity("phone");
    ci.status = Some(ClientIdentityStatus {
        seen: serials
            .iter()
            .map(|(s, t)| SeenCertificate {
                serial_number: (*s).into(),
                last_seen: time(*t),
            })
            .collect(),
        ..Default::default()
    });
    ci
}

#[test]
fn after_a_renewal_status_lists_the_superseded_certificate_and_awaits_the_device() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let (new, old) = renewed(t0);
    let previous = [old.clone()];
    let facts = Facts {
        previous: &previous,
        ..facts(Some(&new))
    };
    let now = t0 + 26 * DAY;
    let reason = |ci: &ClientIdentity| {
        let s = status(ci, &Outcome::Ready, &facts, now, &time(now));
        let ready = by_type(&s, READY).clone();
        let expiring = by_type(&s, EXPIRING_SOON).clone();
        (s, ready, expiring)
    };

    // Seen only with the old one: awaiting, and expiring against the old notAfter.
    let (s, ready, expiring) = reason(&seen_with(&[("0abc", now)]));
    assert_eq!(
        s.previous,
        vec![PreviousCertificate {
            serial_number: "0abc".into(),
            not_after: time(old.not_after)
        }]
    );
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AwaitingDevice")
    );
    assert!(
        ready.message.contains("0abd") && ready.message.contains("portcullis enroll phone"),
        "{}",
        ready.message
    );
    assert_eq!(
        (expiring.status.as_str(), expiring.reason.as_str()),
        ("True", "DeviceCertificateExpiring")
    );

    // Never seen at all: still awaiting (the new one has not reached the device).
    let (_, ready, _) = reason(&seen_with(&[]));
    assert_eq!(ready.reason, "AwaitingDevice");

    // Seen with the new one since: delivered, even though the old one stays admitted
    // (Safari's profile and the app's .p12 are updated on different days).
    let (s, ready, expiring) = reason(&seen_with(&[("0abc", now - DAY), ("0abd", now)]));
    assert_eq!(ready.reason, "Issued");
    assert_eq!(expiring.reason, "Valid");
    assert_eq!(s.previous.len(), 1, "still admitted until its notAfter");

    // Revoked: nothing is listed as admitted.
    let s = status(&seen_with(&[]), &Outcome::Revoked, &facts, now, &time(now));
    assert!(s.previous.is_empty());
}
