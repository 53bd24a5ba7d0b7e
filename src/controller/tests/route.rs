//! A ProtectedRoute: minted server certificate, upstream Service checks, admitted count.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{context, context_with, echo, not_found, ok, scripted, step};
use crate::controller::ca::CaState;
use crate::controller::fixtures::{identity, route};
use crate::controller::route::reconcile;
use crate::pki::{Ca, inspect_pem};
use crate::resources::{ProtectedRoute, ProtectedRouteStatus};

const SECRET: &str = "/api/v1/namespaces/home/secrets/ha-server-tls";
const SERVICE: &str = "/api/v1/namespaces/home/services/ha";
const STATUS: &str = "/apis/portcullis.dev/v1alpha1/namespaces/home/protectedroutes/ha/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/home/events";

fn ready_ca() -> CaState {
    CaState::Ready(Arc::new(Ca::generate("Portcullis CA test").unwrap()))
}

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ha", "namespace": "home"},
        "spec": {"ports": [{"port": 8123}]}})
}

fn with_status(
    pr: &ProtectedRoute,
) -> impl FnOnce(&Value) -> (http::StatusCode, Value) + Send + 'static {
    let pr = serde_json::to_value(pr).unwrap();
    move |body| {
        let mut pr = pr;
        pr["status"] = body["status"].clone();
        (http::StatusCode::OK, pr)
    }
}

#[tokio::test]
async fn a_route_gets_a_server_certificate_then_stays_quiet() {
    let ca = ready_ca();
    let pr = route("ha");
    let mut revoked = identity("old");
    revoked.spec.revoked = true;
    let identities = [identity("phone"), identity("laptop"), revoked];
    let (ctx, handle) = context_with(ca.clone(), &identities);
    let steps = vec![
        step(Method::GET, SERVICE, ok(service())),
        step(Method::GET, SECRET, not_found),
        step(Method::PATCH, SECRET, echo),
        step(Method::PATCH, STATUS, with_status(&pr)),
        step(Method::POST, EVENTS, echo),
    ];
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(pr.clone()), ctx)).await;
    // 90-day certificate renewed 30 days before expiry: look again after a week.
    assert_eq!(
        action.unwrap(),
        Action::requeue(Duration::from_secs(7 * 86_400))
    );
    let secret = &seen[2].body;
    assert_eq!(secret["metadata"]["labels"]["portcullis.dev/route"], "ha");
    let pem = secret["data"]["tls.crt"].as_str().map(|b| {
        use base64::Engine;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
    });
    assert_eq!(
        inspect_pem(&pem.unwrap()).unwrap().dns_names,
        ["ha.example.test"]
    );
    let status = &seen[3].body["status"];
    assert_eq!(status["hosts"], json!(["ha.example.test"]));
    assert_eq!(status["admittedIdentities"], 2);
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(seen[4].body["reason"], "Issued");

    // Again with the Secret and status in place: reads only.
    let mut pr = pr;
    pr.status = Some(serde_json::from_value::<ProtectedRouteStatus>(status.clone()).unwrap());
    let (ctx, handle) = context_with(ca, &identities);
    let steps = vec![
        step(Method::GET, SERVICE, ok(service())),
        step(Method::GET, SECRET, ok(secret.clone())),
    ];
    let (action, _) = scripted(handle, steps, reconcile(Arc::new(pr), ctx)).await;
    assert!(action.is_ok());
}

#[tokio::test]
async fn a_missing_upstream_service_is_reported_and_retried() {
    let pr = route("ha");
    let (ctx, handle) = context(ready_ca());
    let steps = vec![
        step(Method::GET, SERVICE, not_found),
        step(Method::PATCH, STATUS, with_status(&pr)),
        step(Method::POST, EVENTS, echo),
    ];
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(pr), ctx)).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    let ready = &seen[1].body["status"]["conditions"][0];
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("UpstreamServiceMissing"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("Service home/ha")
    );
    assert_eq!(
        seen[1].body["status"]["hosts"],
        Value::Null,
        "no hosts served while not ready"
    );
    assert_eq!(seen[2].body["type"], "Warning");
}

#[tokio::test]
async fn certificate_files_are_refused_in_the_status() {
    let mut pr = route("ha");
    pr.spec.server_certificate.files = Some(crate::resources::CertificateFiles {
        certificate: "/ssl/fullchain.pem".into(),
        key: "/ssl/privkey.pem".into(),
    });
    let (ctx, handle) = context(ready_ca());
    let steps = vec![
        step(Method::PATCH, STATUS, with_status(&pr)),
        step(Method::POST, EVENTS, echo),
    ];
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(pr), ctx)).await;
    assert_eq!(action.unwrap(), Action::await_change());
    let ready = &seen[0].body["status"]["conditions"][0];
    assert_eq!(ready["reason"], "InvalidSpec");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("spec.serverCertificate.files: works only in standalone mode"),
        "{ready}"
    );
}

#[tokio::test]
async fn an_invalid_route_touches_nothing_but_its_status() {
    let mut pr = route("ha");
    pr.spec.hosts = vec!["https://ha.example.test".into()];
    let (ctx, handle) = context(ready_ca());
    let steps = vec![
        step(Method::PATCH, STATUS, with_status(&pr)),
        step(Method::POST, EVENTS, echo),
    ];
    let (action, seen) = scripted(handle, steps, reconcile(Arc::new(pr), ctx)).await;
    assert_eq!(action.unwrap(), Action::await_change());
    let ready = &seen[0].body["status"]["conditions"][0];
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"].as_str().unwrap().contains("spec.hosts[0]"),
        "{ready}"
    );
    assert_eq!(seen[1].body["reason"], "InvalidSpec");
}
