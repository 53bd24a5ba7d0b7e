use std::time::SystemTime;

use super::*;
use crate::controller::fixtures::{DAY, identity};
use crate::resources::validate::IdentityTiming;

fn want(password: Option<&str>) -> Want<'_> {
    Want {
        client: ClientWant {
            common_name: "phone",
            key_algorithm: KeyAlgorithm::EcdsaP256,
            timing: IdentityTiming {
                validity: 30 * DAY,
                renew_before: 10 * DAY,
            },
        },
        profile: Pkcs12Profile::Legacy,
        password,
    }
}

/// The Secret a reconcile with `want` would write.
fn minted(ca: &Ca, want: &Want<'_>) -> Secret {
    let ci = identity("phone");
    let cert = ca
        .issue_client(
            want.client.common_name,
            want.client.key_algorithm,
            want.client.timing.validity,
        )
        .unwrap();
    let password = password_for(want, None);
    let p12 =
        crate::pki::export_pkcs12(&cert, ca.cert_der(), "phone", &password, want.profile).unwrap();
    let files = IdentityFiles {
        cert: &cert,
        ca_pem: ca.cert_pem(),
        p12: &p12,
        password: &password,
        issued_for: &want.issued_for(),
        previous: "",
    };
    identity_secret(&ci, "home", "portcullis", &files).unwrap()
}

#[test]
fn secret_has_the_documented_shape() {
    let ca = Ca::generate("t").unwrap();
    let secret = minted(&ca, &want(None));
    assert_eq!(secret.metadata.name.as_deref(), Some("phone-client"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("home"));
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let keys: Vec<&str> = secret
        .data
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "ca.crt",
            "keystore.p12",
            "keystore.p12.password",
            "tls.crt",
            "tls.key"
        ]
    );
    let labels = secret.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "portcullis");
    assert_eq!(labels["portcullis.dev/identity"], "phone");
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("ClientIdentity", "phone", "uid-phone")
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(owner.api_version, "portcullis.dev/v1alpha1");
    let annotation = &secret.metadata.annotations.as_ref().unwrap()[ISSUED_FOR_ANNOTATION];
    assert_eq!(
        annotation,
        r#"{"commonName":"phone","keyAlgorithm":"ECDSA-P256","validitySeconds":2592000,"pkcs12Profile":"Legacy"}"#
    );
    assert_eq!(secret_text(&secret, CA_CRT), Some(ca.cert_pem()));
    let stored = read_stored(&secret).unwrap();
    assert_eq!(stored.issued_for, Some(want(None).issued_for()));
    assert!(stored.password.unwrap().len() >= MIN_PASSWORD_LEN);
}

#[test]
fn unchanged_spec_keeps_everything() {
    let ca = Ca::generate("t").unwrap();
    let secret = minted(&ca, &want(None));
    let stored = Some(read_stored(&secret));
    assert_eq!(
        plan(stored.as_ref(), &want(None), &ca, false, SystemTime::now()),
        Plan::Keep
    );
    // Keeping reuses the password already handed out.
    let kept = stored.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(Some(password_for(&want(None), Some(kept))), kept.password);
}

#[test]
fn certificate_changes_reissue() {
    let ca = Ca::generate("t").unwrap();
    let secret = minted(&ca, &want(None));
    let stored = Some(read_stored(&secret));
    let now = SystemTime::now();
    let issue =
        |w: &Want<'_>, ca: &Ca, revoked, now| match plan(stored.as_ref(), w, ca, revoked, now) {
            Plan::Issue {
                reason,
                first: false,
            } => reason,
            other => panic!("expected a re-issue, got {other:?}"),
        };
    let mut w = want(None);
    w.client.common_name = "tablet";
    assert_eq!(issue(&w, &ca, false, now), "commonName changed to tablet");
    let mut w = want(None);
    w.client.key_algorithm = KeyAlgorithm::Rsa2048;
    assert_eq!(issue(&w, &ca, false, now), "keyAlgorithm changed");
    assert!(issue(&want(None), &ca, true, now).contains("revocation list"));
    assert!(issue(&want(None), &ca, false, now + 21 * DAY).starts_with("renewal"));
    assert!(issue(&want(None), &Ca::generate("t").unwrap(), false, now).contains("another CA"));

    assert_eq!(
        plan(None, &want(None), &ca, false, now),
        Plan::Issue {
            reason: "new identity".into(),
            first: true
        }
    );
    let broken: Result<Stored, String> = Err("tls.key is missing".into());
    assert!(matches!(
        plan(Some(&broken), &want(None), &ca, false, now),
        Plan::Issue { first: false, .. }
    ));
    let mut keyless = secret.clone();
    keyless.data.get_or_insert_default().remove(TLS_KEY);
    assert_eq!(
        read_stored(&keyless).err().as_deref(),
        Some("tls.key is missing")
    );
}

#[test]
fn wrapping_changes_reexport_the_same_certificate() {
    let ca = Ca::generate("t").unwrap();
    let secret = minted(&ca, &want(None));
    let now = SystemTime::now();
    let reexport = |s: &Secret, w: &Want<'_>| match plan(Some(&read_stored(s)), w, &ca, false, now)
    {
        Plan::Reexport(reason) => reason,
        other => panic!("expected a re-export, got {other:?}"),
    };
    let mut modern = want(None);
    modern.profile = Pkcs12Profile::Modern;
    assert_eq!(reexport(&secret, &modern), "the pkcs12 profile changed");
    assert_eq!(
        reexport(&secret, &want(Some("correct-horse"))),
        "the password in passwordSecretRef changed"
    );
    let mut no_p12 = secret.clone();
    no_p12.data.get_or_insert_default().remove(KEYSTORE_P12);
    assert_eq!(reexport(&no_p12, &want(None)), "keystore.p12 is missing");
    let mut no_annotation = secret.clone();
    no_annotation.metadata.annotations = None;
    assert_eq!(
        reexport(&no_annotation, &want(None)),
        "the pkcs12 profile changed"
    );
    let mut other_ca_text = secret;
    other_ca_text
        .data
        .get_or_insert_default()
        .insert(CA_CRT.into(), k8s_openapi::ByteString(b"old".to_vec()));
    assert_eq!(reexport(&other_ca_text, &want(None)), "ca.crt changed");
    // The configured password wins over the stored one.
    assert_eq!(
        password_for(&want(Some("correct-horse")), None),
        "correct-horse"
    );
}

#[test]
fn password_secret_rules() {
    let r = SecretKeyRef {
        name: "pw".into(),
        key: "password".into(),
    };
    let secret = |value: &[u8]| Secret {
        data: Some(BTreeMap::from([(
            "password".to_owned(),
            k8s_openapi::ByteString(value.to_vec()),
        )])),
        ..Secret::default()
    };
    let (reason, msg) = password_from_secret("home", &r, None).unwrap_err();
    assert_eq!(reason, "PasswordSecretMissing");
    assert!(
        msg.contains("home/pw") && msg.contains("kubectl -n home create secret generic pw"),
        "{msg}"
    );
    let (reason, msg) = password_from_secret("home", &r, Some(&Secret::default())).unwrap_err();
    assert_eq!(reason, "PasswordSecretMissing");
    assert!(msg.contains("no key \"password\""), "{msg}");
    assert_eq!(
        password_from_secret("home", &r, Some(&secret(b"short")))
            .unwrap_err()
            .0,
        "PasswordSecretInvalid"
    );
    assert_eq!(
        password_from_secret("home", &r, Some(&secret(&[0xff; 9])))
            .unwrap_err()
            .0,
        "PasswordSecretInvalid"
    );
    assert_eq!(
        password_from_secret("home", &r, Some(&secret(b"long enough\r\n"))).unwrap(),
        "long enough"
    );
}
