//! A smoke run against a real API server (envtest), ignored by default:
//! `KUBECONFIG=… cargo test --lib controller::tests::live -- --ignored --nocapture`.
//! The lead's end-to-end suite covers the same ground with more care; this exists so the
//! controller's API usage (server-side apply, finalizer, Lease) can be checked by hand.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::controller::fixtures::{identity, route};
use crate::controller::{Config, run};
use crate::resources::{ClientIdentity, ProtectedRoute};

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KUBECONFIG pointing at an envtest API server"]
async fn controller_against_a_real_api_server() {
    let client = Client::try_default().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [ProtectedRoute::crd(), ClientIdentity::crd()] {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["ops", "home"] {
        let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        let _ = namespaces.create(&PostParams::default(), &n).await;
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(
        client.clone(),
        Config::new("ops", "pod-a"),
        stop.clone(),
    ));

    let services: Api<Service> = Api::namespaced(client.clone(), "home");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "ha"},
        "spec": {"ports": [{"port": 8123}]}}))
    .unwrap();
    let _ = services.create(&PostParams::default(), &svc).await;
    let ids: Api<ClientIdentity> = Api::namespaced(client.clone(), "home");
    let routes: Api<ProtectedRoute> = Api::namespaced(client.clone(), "home");
    let mut ci = identity("phone");
    ci.metadata.uid = None;
    ci.metadata.generation = None;
    let started = std::time::Instant::now();
    ids.create(&PostParams::default(), &ci).await.unwrap();
    let mut pr = route("ha");
    pr.metadata.uid = None;
    pr.metadata.generation = None;
    routes.create(&PostParams::default(), &pr).await.unwrap();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "home");
    wait_for("phone-client", async || {
        secrets.get_opt("phone-client").await.unwrap()
    })
    .await;
    println!("identity Secret after {:?}", started.elapsed());
    let ready = wait_for("Ready identity", async || {
        let ci = ids.get("phone").await.unwrap();
        let s = ci.status?;
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(s)
    })
    .await;
    println!(
        "identity status: {}",
        serde_json::to_string_pretty(&ready).unwrap()
    );
    let route_status = wait_for("Ready route", async || {
        let s = routes.get("ha").await.unwrap().status?;
        s.conditions.iter().any(|c| c.status == "True").then_some(s)
    })
    .await;
    println!(
        "route status: {}",
        serde_json::to_string_pretty(&route_status).unwrap()
    );

    // Idle: nothing is rewritten.
    let ops: Api<Secret> = Api::namespaced(client.clone(), "ops");
    let versions = async || {
        let rv = |o: Option<String>| o.unwrap_or_default();
        [
            rv(secrets
                .get("phone-client")
                .await
                .unwrap()
                .metadata
                .resource_version),
            rv(secrets
                .get("ha-server-tls")
                .await
                .unwrap()
                .metadata
                .resource_version),
            rv(ids.get("phone").await.unwrap().metadata.resource_version),
            rv(routes.get("ha").await.unwrap().metadata.resource_version),
            rv(ops
                .get("portcullis-crl")
                .await
                .unwrap()
                .metadata
                .resource_version),
        ]
    };
    let before = versions().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        before,
        versions().await,
        "an idle controller wrote something"
    );

    // Revoke, then delete: the serial stays on the CRL.
    let serial = ready.serial_number.unwrap();
    ids.patch(
        "phone",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"revoked": true}})),
    )
    .await
    .unwrap();
    let crl: Api<Secret> = Api::namespaced(client.clone(), "ops");
    wait_for("serial on the CRL", async || {
        let s = crl.get_opt("portcullis-crl").await.unwrap()?;
        let ledger = String::from_utf8(s.data?.get("revoked.json")?.0.clone()).ok()?;
        ledger.contains(&serial).then_some(())
    })
    .await;
    ids.delete("phone", &DeleteParams::default()).await.unwrap();
    wait_for("identity gone", async || {
        ids.get_opt("phone").await.unwrap().is_none().then_some(())
    })
    .await;
    let ca: Api<Secret> = Api::namespaced(client.clone(), "ops");
    assert!(ca.get_opt("portcullis-ca").await.unwrap().is_some());
    assert!(
        ca.get_opt("portcullis-cookie-keys")
            .await
            .unwrap()
            .is_some()
    );

    // Hand-over: a standby takes the Lease when the leader stops.
    let stop_b = CancellationToken::new();
    let task_b = tokio::spawn(run(
        client.clone(),
        Config::new("ops", "pod-b"),
        stop_b.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let handover = std::time::Instant::now();
    let mut tablet = identity("tablet");
    tablet.metadata.uid = None;
    tablet.metadata.generation = None;
    ids.create(&PostParams::default(), &tablet).await.unwrap();
    wait_for("tablet-client", async || {
        secrets.get_opt("tablet-client").await.unwrap()
    })
    .await;
    println!("standby issued after {:?}", handover.elapsed());
    stop_b.cancel();
    tokio::time::timeout(Duration::from_secs(30), task_b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KUBECONFIG pointing at an envtest API server"]
async fn racing_bootstraps_end_with_one_ca() {
    let client = Client::try_default().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": "race"}})).unwrap();
    let _ = namespaces.create(&PostParams::default(), &n).await;
    let boot = || {
        let client = client.clone();
        tokio::spawn(async move {
            crate::controller::ca::bootstrap(&client, "race", "portcullis-ca", "portcullis").await
        })
    };
    let (a, b) = (boot(), boot());
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    match (a, b) {
        (crate::controller::CaState::Ready(a), crate::controller::CaState::Ready(b)) => {
            assert_eq!(a.cert_der(), b.cert_der(), "two CAs")
        }
        other => panic!("{other:?}"),
    }
    // A custom name that does not exist is reported, never created.
    let byo = crate::controller::ca::bootstrap(&client, "race", "my-ca", "portcullis")
        .await
        .unwrap();
    assert!(matches!(byo, crate::controller::CaState::Missing(_)));
}
