//! One ClientIdentity through its life: finalizer, first issue, an idle re-reconcile that
//! writes nothing, revocation, deletion; and the blocked cases.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{context, echo, not_found, ok, scripted, step};
use crate::controller::ca::CaState;
use crate::controller::fixtures::identity;
use crate::controller::identity::reconcile;
use crate::controller::names::CRL_FINALIZER;
use crate::pki::{Ca, inspect_pem};
use crate::resources::{ClientIdentity, ClientIdentityStatus, SecretKeyRef};

const SECRET: &str = "/api/v1/namespaces/home/secrets/phone-client";
const CRL: &str = "/api/v1/namespaces/ops/secrets/portcullis-crl";
const OBJECT: &str = "/apis/portcullis.dev/v1alpha1/namespaces/home/clientidentities/phone";
const STATUS: &str = "/apis/portcullis.dev/v1alpha1/namespaces/home/clientidentities/phone/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/home/events";

fn finalized() -> ClientIdentity {
    let mut ci = identity("phone");
    ci.metadata.finalizers = Some(vec![CRL_FINALIZER.into()]);
    ci
}

fn ready_ca() -> CaState {
    CaState::Ready(Arc::new(Ca::generate("Portcullis CA test").unwrap()))
}

/// The identity the API server returns after a status patch.
fn with_status(
    ci: &ClientIdentity,
) -> impl FnOnce(&Value) -> (http::StatusCode, Value) + Send + 'static {
    let ci = serde_json::to_value(ci).unwrap();
    move |body| {
        let mut ci = ci;
        ci["status"] = body["status"].clone();
        (http::StatusCode::OK, ci)
    }
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

fn secret_text(secret: &Value, key: &str) -> String {
    use base64::Engine;
    let b64 = secret["data"][key].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_new_identity_first_gets_the_finalizer() {
    let ci = identity("phone");
    let (ctx, handle) = context(ready_ca());
    let mut with_finalizer = serde_json::to_value(finalized()).unwrap();
    with_finalizer["metadata"]["resourceVersion"] = json!("2");
    let steps = vec![step(Method::PATCH, OBJECT, ok(with_finalizer))];
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(ci), ctx)).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert_eq!(
        seen[0].body[1],
        json!({"op": "add", "path": "/metadata/finalizers", "value": [CRL_FINALIZER]})
    );
}

/// Issues the first certificate; returns the applied Secret and the identity with status.
async fn first_issue(ca: CaState) -> (Value, ClientIdentity) {
    let ci = finalized();
    let (ctx, handle) = context(ca);
    let steps = vec![
        step(Method::GET, SECRET, not_found),
        step(Method::PATCH, SECRET, echo),
        step(Method::PATCH, STATUS, with_status(&ci)),
        step(Method::POST, EVENTS, echo),
    ];
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(ci.clone()), ctx)).await;
    let action = action.unwrap();
    // Renewal is due in 20 days (30d validity, renewBefore 10d): look again after the
    // longest requeue, a week.
    assert_eq!(action, Action::requeue(Duration::from_secs(7 * 86_400)));

    let (secret, status, event) = (&seen[1], &seen[2], &seen[3]);
    assert!(
        secret.uri.contains("fieldManager=portcullis") && secret.uri.contains("force=true"),
        "{}",
        secret.uri
    );
    assert_eq!(secret.body["type"], "kubernetes.io/tls");
    assert_eq!(
        secret.body["metadata"]["labels"]["portcullis.dev/identity"],
        "phone"
    );
    assert_eq!(
        secret.body["metadata"]["ownerReferences"][0]["blockOwnerDeletion"],
        true
    );
    let cert = inspect_pem(&secret_text(&secret.body, "tls.crt")).unwrap();
    assert_eq!(cert.common_name.as_deref(), Some("phone"));

    assert!(
        status.uri.contains("fieldManager=portcullis"),
        "{}",
        status.uri
    );
    let s = &status.body["status"];
    assert_eq!(s["serialNumber"], cert.serial_hex.as_str());
    assert_eq!(s["secretName"], "phone-client");
    assert_eq!(s["observedGeneration"], 1);
    assert_eq!(condition(s, "Ready")["status"], "True");
    assert_eq!(condition(s, "Revoked")["status"], "False");
    assert_eq!(event.body["reason"], "Issued");
    assert_eq!(event.body["type"], "Normal");

    let mut ci = ci;
    ci.status = Some(serde_json::from_value::<ClientIdentityStatus>(s.clone()).unwrap());
    (secret.body.clone(), ci)
}

#[tokio::test]
async fn issue_then_an_unchanged_reconcile_writes_nothing() {
    let ca = ready_ca();
    let (secret, mut ci) = first_issue(ca.clone()).await;
    // The data plane's lastSeen is not ours: it neither causes nor joins a write.
    ci.status.as_mut().unwrap().last_seen = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let (ctx, handle) = context(ca);
    let steps = vec![
        step(Method::GET, SECRET, ok(secret)),
        // Is the serial on the CRL (a reinstated identity gets a new one)?
        step(Method::GET, CRL, not_found),
    ];
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(ci), ctx)).await;
    assert!(action.is_ok(), "{action:?}");
    assert!(seen.iter().all(|s| s.method == Method::GET), "{seen:?}");
}

#[tokio::test]
async fn revoking_lists_the_serial_on_the_crl_and_keeps_the_secret() {
    let ca = ready_ca();
    let (secret, mut ci) = first_issue(ca.clone()).await;
    let serial = ci.status.as_ref().unwrap().serial_number.clone().unwrap();
    ci.spec.revoked = true;
    ci.metadata.generation = Some(2);
    let (ctx, handle) = context(ca);
    let steps = vec![
        step(Method::GET, SECRET, ok(secret)),
        step(Method::GET, CRL, not_found),
        step(Method::GET, CRL, not_found),
        step(Method::PATCH, CRL, echo),
        step(Method::PATCH, STATUS, with_status(&ci)),
        step(Method::POST, EVENTS, echo),
    ];
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(ci), ctx)).await;
    assert_eq!(action.unwrap(), Action::await_change());
    let crl: Secret = serde_json::from_value(seen[3].body.clone()).unwrap();
    let ledger = crate::controller::crl::parse_ledger(Some(&crl)).unwrap();
    assert_eq!(
        ledger
            .iter()
            .map(|r| r.serial_hex.as_str())
            .collect::<Vec<_>>(),
        [serial.as_str()]
    );
    assert!(secret_text(&seen[3].body, "crl.pem").starts_with("-----BEGIN X509 CRL-----"));
    let s = &seen[4].body["status"];
    assert_eq!(
        (
            &condition(s, "Ready")["reason"],
            &condition(s, "Revoked")["status"]
        ),
        (&json!("Revoked"), &json!("True"))
    );
    assert_eq!(s["serialNumber"], serial.as_str());
    assert_eq!(seen[5].body["reason"], "Revoked");
}

#[tokio::test]
async fn deleting_lists_the_serial_then_releases_the_finalizer() {
    let ca = ready_ca();
    let (_, mut ci) = first_issue(ca.clone()).await;
    ci.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let (ctx, handle) = context(ca);
    let mut released = serde_json::to_value(&ci).unwrap();
    released["metadata"]["finalizers"] = json!([]);
    let steps = vec![
        // The Secret is already gone (owner GC): the status still knows the serial.
        step(Method::GET, SECRET, not_found),
        step(Method::GET, CRL, not_found),
        step(Method::GET, CRL, not_found),
        step(Method::PATCH, CRL, echo),
        step(Method::PATCH, OBJECT, ok(released)),
    ];
    let serial = ci.status.as_ref().unwrap().serial_number.clone().unwrap();
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(ci), ctx)).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert!(seen[3].body["data"]["revoked.json"].is_string());
    let crl: Secret = serde_json::from_value(seen[3].body.clone()).unwrap();
    assert_eq!(
        crate::controller::crl::parse_ledger(Some(&crl)).unwrap()[0].serial_hex,
        serial
    );
    assert_eq!(seen[4].body[1]["op"], "remove");
}

#[tokio::test]
async fn a_missing_password_secret_is_a_condition_not_a_crash() {
    let mut ci = finalized();
    ci.spec.pkcs12.password_secret_ref = Some(SecretKeyRef {
        name: "pw".into(),
        key: "password".into(),
    });
    let (ctx, handle) = context(ready_ca());
    let steps = vec![
        step(Method::GET, SECRET, not_found),
        step(Method::GET, "/api/v1/namespaces/home/secrets/pw", not_found),
        step(Method::PATCH, STATUS, with_status(&ci)),
        step(Method::POST, EVENTS, echo),
    ];
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(ci), ctx)).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    let ready = condition(&seen[2].body["status"], "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("PasswordSecretMissing"))
    );
    assert!(ready["message"].as_str().unwrap().contains("home/pw"));
    assert_eq!(
        (&seen[3].body["type"], &seen[3].body["reason"]),
        (&json!("Warning"), &json!("PasswordSecretMissing"))
    );
}

#[tokio::test]
async fn an_unusable_ca_issues_nothing() {
    let ci = finalized();
    let (ctx, handle) = context(CaState::Invalid(
        "CA Secret ops/portcullis-ca is not usable".into(),
    ));
    let steps = vec![
        step(Method::GET, SECRET, not_found),
        step(Method::PATCH, STATUS, with_status(&ci)),
        step(Method::POST, EVENTS, echo),
    ];
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(ci), ctx)).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert_eq!(
        condition(&seen[1].body["status"], "Ready")["reason"],
        "CASecretInvalid"
    );
    assert_eq!(seen[2].body["reason"], "CASecretInvalid");
}
