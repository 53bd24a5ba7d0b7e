use std::time::{Duration, SystemTime};

use super::*;

fn with_ca_crt(secret: &mut Secret, pem: &str) {
    secret.data.get_or_insert_default().insert(
        CA_CRT.into(),
        k8s_openapi::ByteString(pem.as_bytes().to_vec()),
    );
}

fn revoked(serial: &str, secs: u64) -> RevokedSerial {
    RevokedSerial {
        serial_hex: serial.to_owned(),
        revoked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    }
}

fn crl_secret(
    ledger: &[RevokedSerial],
    annotations: &[(&'static str, String)],
    with_pem: bool,
) -> Secret {
    let mut data = BTreeMap::from([(CRL_LEDGER_KEY.to_owned(), ledger_json(ledger).unwrap())]);
    if with_pem {
        data.insert(CRL_KEY.to_owned(), b"-----BEGIN X509 CRL-----".to_vec());
    }
    SecretSpec {
        name: CRL_SECRET.into(),
        namespace: "ops",
        type_: "Opaque",
        instance: "portcullis",
        labels: Vec::new(),
        annotations: annotations.to_vec(),
        owner: None,
        data,
    }
    .build()
}

#[test]
fn merge_adds_each_serial_once_in_canonical_form() {
    let mut ledger = vec![revoked("0abc", 1)];
    assert!(!merge(
        &mut ledger,
        &[revoked("0A:BC", 5), revoked("abc", 6)]
    ));
    assert!(merge(
        &mut ledger,
        &[revoked("00FF", 7), revoked("ff", 8), revoked("zz", 9)]
    ));
    assert_eq!(ledger, vec![revoked("0abc", 1), revoked("ff", 7)]);
    assert!(!merge(&mut ledger, &[]));
}

#[test]
fn ledger_roundtrips_and_garbage_is_refused() {
    let ledger = vec![revoked("01", 1_800_000_000)];
    let secret = crl_secret(&ledger, &[], false);
    assert_eq!(parse_ledger(Some(&secret)).unwrap(), ledger);
    assert_eq!(parse_ledger(None).unwrap(), vec![]);
    let mut bad = secret;
    bad.data.get_or_insert_default().insert(
        CRL_LEDGER_KEY.into(),
        k8s_openapi::ByteString(
            b"[{\"serial\":\"xyz\",\"revokedAt\":\"2020-01-01T00:00:00Z\"}]".to_vec(),
        ),
    );
    let err = parse_ledger(Some(&bad)).unwrap_err();
    assert!(err.contains("revoked.json"), "{err}");
    assert!(plan(Some(&bad), &[], Some("ca"), SystemTime::now()).is_err());
}

#[test]
fn plan_signs_only_when_something_changed_or_it_is_due() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let ledger = vec![revoked("01", 1)];
    let digest = sha256_hex(&ledger_json(&ledger).unwrap());
    let (ca1, ca2) = (Ca::generate("one").unwrap(), Ca::generate("two").unwrap());
    let fresh = |signed: SystemTime, ca: &Ca| {
        let mut secret = crl_secret(
            &ledger,
            &[
                (
                    CRL_SIGNED_AT_ANNOTATION,
                    humantime::format_rfc3339_seconds(signed).to_string(),
                ),
                (CRL_CA_ANNOTATION, sha256_hex(ca.cert_der())),
                (CRL_LEDGER_ANNOTATION, digest.clone()),
            ],
            true,
        );
        with_ca_crt(&mut secret, ca.cert_pem());
        secret
    };
    let (ca1_id, ca2_id) = (sha256_hex(ca1.cert_der()), sha256_hex(ca2.cert_der()));
    let (ca1_id, ca2_id) = (ca1_id.as_str(), ca2_id.as_str());
    let hour = Duration::from_secs(3600);

    // Up to date: nothing to do, and the next refresh is a day after signing.
    let current = fresh(now - hour, &ca1);
    let p = plan(Some(&current), &[revoked("01", 99)], Some(ca1_id), now).unwrap();
    assert!(!p.ledger_changed && !p.sign);
    assert_eq!(next_refresh(Some(&current)), Some(now - hour + CRL_REFRESH));

    // A new serial, a new CA, an old CRL, no CRL at all: sign.
    assert!(
        plan(Some(&current), &[revoked("02", 2)], Some(ca1_id), now)
            .unwrap()
            .sign
    );
    assert!(plan(Some(&current), &[], Some(ca2_id), now).unwrap().sign);
    assert!(
        plan(
            Some(&fresh(now - CRL_REFRESH, &ca1)),
            &[],
            Some(ca1_id),
            now
        )
        .unwrap()
        .sign
    );
    let first = plan(None, &[], Some(ca1_id), now).unwrap();
    assert!(first.sign && !first.ledger_changed && first.ledger.is_empty());

    // Without a CA: the ledger still grows, nothing is signed.
    let no_ca = plan(Some(&current), &[revoked("02", 2)], None, now).unwrap();
    assert!(no_ca.ledger_changed && !no_ca.sign);
    assert_eq!(no_ca.ledger.len(), 2);
}

#[test]
fn desired_secret_signs_with_the_ca_and_keeps_old_crl_without_one() {
    let ca = Ca::generate("t").unwrap();
    let now = SystemTime::now();
    let p = plan(None, &[revoked("0abc", 1)], Some("x"), now).unwrap();
    let signed = desired_secret("ops", "portcullis", None, &p, Some(&ca), now).unwrap();
    let pem = secret_text(&signed, CRL_KEY).unwrap();
    assert!(pem.starts_with("-----BEGIN X509 CRL-----"));
    assert_eq!(signed.metadata.resource_version, None);
    assert_eq!(parse_ledger(Some(&signed)).unwrap().len(), 1);

    let mut existing = signed.clone();
    existing.metadata.resource_version = Some("42".into());
    let p = plan(Some(&existing), &[revoked("0abd", 2)], None, now).unwrap();
    let ledger_only = desired_secret("ops", "portcullis", Some(&existing), &p, None, now).unwrap();
    assert_eq!(secret_text(&ledger_only, CRL_KEY), Some(pem));
    assert_eq!(ledger_only.metadata.resource_version.as_deref(), Some("42"));
    assert_eq!(parse_ledger(Some(&ledger_only)).unwrap().len(), 2);
    // Its ledger annotation is now stale, so the next publish with a CA signs.
    assert!(
        plan(
            Some(&ledger_only),
            &[],
            Some(&sha256_hex(ca.cert_der())),
            now
        )
        .unwrap()
        .sign
    );
}

/// The CA certificate is published next to the CRL, and only the certificate: the data
/// plane reads it there instead of the CA Secret, which holds the private key.
#[test]
fn the_ca_certificate_is_published_without_its_key() {
    let ca = Ca::generate("t").unwrap();
    let id = sha256_hex(ca.cert_der());
    let now = SystemTime::now();
    let p = plan(None, &[], Some(&id), now).unwrap();
    let signed = desired_secret("ops", "portcullis", None, &p, Some(&ca), now).unwrap();
    assert_eq!(secret_text(&signed, CA_CRT), Some(ca.cert_pem()));
    assert_eq!(published_ca_sha256(Some(&signed)), Some(id.clone()));
    let key_body = ca
        .key_pem()
        .lines()
        .nth(1)
        .expect("a PEM key has a body line");
    for (key, value) in signed.data.iter().flatten() {
        let text = String::from_utf8_lossy(&value.0);
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains(key_body),
            "{key} holds key material"
        );
    }
    // Published: nothing to do until it is due.
    assert!(!plan(Some(&signed), &[], Some(&id), now).unwrap().sign);

    // A CRL Secret of an older release (no ca.crt), or one whose ca.crt is not the CA's:
    // signed again, which publishes it.
    let mut older = signed.clone();
    older.data.get_or_insert_default().remove(CA_CRT);
    assert!(plan(Some(&older), &[], Some(&id), now).unwrap().sign);
    let other = Ca::generate("other").unwrap();
    let mut wrong = signed.clone();
    with_ca_crt(&mut wrong, other.cert_pem());
    assert!(plan(Some(&wrong), &[], Some(&id), now).unwrap().sign);

    // Without a usable CA (a broken bring-your-own Secret): the last certificate stays.
    let p = plan(Some(&signed), &[revoked("01", 1)], None, now).unwrap();
    let kept = desired_secret("ops", "portcullis", Some(&signed), &p, None, now).unwrap();
    assert_eq!(secret_text(&kept, CA_CRT), Some(ca.cert_pem()));
}
