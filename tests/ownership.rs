//! Against a real API server (tests/envtest, with its garbage collector): the controller
//! never writes a Secret it does not own, and two releases in one cluster do not fight.
//!
//! One control plane for the binary. Each test runs its own in-process operators under
//! instance names no other test uses, so the tests run in parallel without fighting —
//! which is itself what is tested. Operator logs: `target/tmp/ownership-tests.log`.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[allow(dead_code)]
mod envtest;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};
use portcullis::controller::names;
use portcullis::resources::{ClientIdentity, Instance, ProtectedRoute};
use serde_json::{Value, json};

use cluster::*;
use common::Upstream;
use envtest::Envtest;

/// Longest wait for one step (debug builds, two cores shared with others).
const T: Duration = Duration::from_secs(30);
/// The controller looks at a conflicting name again every 10 s; allow for backoff.
const CONFLICT_RESOLVED: Duration = Duration::from_secs(45);

fn env() -> &'static Envtest {
    static ENV: OnceLock<Envtest> = OnceLock::new();
    ENV.get_or_init(|| {
        let path =
            std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ownership-tests.log");
        let file = std::fs::File::create(path).expect("log file");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .try_init();
        Envtest::start()
    })
}

/// The control plane (CRDs applied once) and an admin client.
async fn setup(namespaces: &[&str]) -> Client {
    static CRDS: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let env = tokio::task::spawn_blocking(env).await.expect("envtest");
    let admin = env.client().await;
    CRDS.get_or_init(|| async { apply_crds(&admin).await.expect("CRDs") })
        .await;
    for ns in namespaces {
        ensure_namespace(&admin, ns).await.expect("namespace");
    }
    admin
}

fn api<K>(client: &Client, ns: &str) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), ns)
}

/// `obj` (a ClientIdentity or ProtectedRoute) labelled for release `instance`.
fn for_release(mut obj: Value, instance: &str) -> Value {
    obj["metadata"]["labels"] = json!({ names::INSTANCE_LABEL: instance });
    obj
}

/// Everything a write could change: resourceVersion, data, labels, owner references.
fn fingerprint(s: &Secret) -> String {
    format!(
        "{:?} {:?} {:?} {:?}",
        s.metadata.resource_version, s.data, s.metadata.labels, s.metadata.owner_references
    )
}

/// Creates Secret `name` in `ns` as someone else would: `labels`, `owner` references.
async fn foreign_secret(
    admin: &Client,
    ns: &str,
    name: &str,
    labels: Value,
    owners: Value,
) -> Secret {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": "someone else's", "tls.key": "not Portcullis's"},
    }))
    .expect("Secret");
    api::<Secret>(admin, ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the foreign Secret")
}

/// Waits for condition `SecretConflict=True` on `name` naming `secret`, and the Event.
async fn conflict_reported<K>(admin: &Client, ns: &str, name: &str, secret: &str)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Conditions,
    K::DynamicType: Default,
{
    let obj = wait_condition(&api::<K>(admin, ns), name, "SecretConflict", "True", T).await;
    let c = condition(&obj, "SecretConflict").expect("condition");
    assert_eq!(c.reason, "SecretNotOwned");
    let named = format!("Secret {ns}/{secret}");
    assert!(
        c.message.contains(&named) && c.message.contains("delete it"),
        "{}",
        c.message
    );
    let ready = condition(&obj, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "SecretConflict")
    );
    eventually("the SecretConflict Event", T, async || {
        let reasons = event_reasons(admin, ns, name).await?;
        reasons
            .iter()
            .any(|r| r == "SecretConflict")
            .then_some(())
            .ok_or(format!("{reasons:?}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_secret_is_left_untouched_reported_and_minted_once_deleted() {
    let (op_ns, ns, release) = ("own-solo-system", "own-foreign", "solo");
    let admin = setup(&[op_ns, ns]).await;
    // Claims only what is labelled for it: the other test's releases run beside it.
    let instance = Instance::new(release, false).unwrap();
    let op =
        InProcessOperator::start_as(admin.clone(), op_ns, "solo-0", instance, names::CA_SECRET)
            .await;
    wait_data_plane(op.admin, T).await;

    // A decoy identity of no running release: a real owner, with a UID that is not the
    // victim's (an owner reference to a missing object would be garbage-collected).
    let decoy = apply(
        &api::<ClientIdentity>(&admin, ns),
        &for_release(identity("decoy", json!({})), "nobody"),
    )
    .await
    .unwrap();
    let keeper: ConfigMap = api::<ConfigMap>(&admin, ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "keeper"}})).unwrap(),
        )
        .await
        .unwrap();
    let forged_labels = |name: &str| {
        json!({
            names::MANAGED_BY_LABEL: names::MANAGED_BY_VALUE,
            names::INSTANCE_LABEL: release,
            names::IDENTITY_LABEL: name,
        })
    };
    let owner = |kind: &str, name: &str, uid: String| {
        let api_version = if kind == "ConfigMap" {
            "v1"
        } else {
            API_VERSION
        };
        json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": true}])
    };
    let foreign = [
        // Nobody's: no owner reference, no labels.
        foreign_secret(&admin, ns, "bare-client", json!({}), json!([])).await,
        // Labels anyone can set: managed-by, this release's instance, the identity.
        foreign_secret(
            &admin,
            ns,
            "forged-client",
            forged_labels("forged"),
            json!([]),
        )
        .await,
        // Owned, forged labels too, but by another ClientIdentity's UID.
        foreign_secret(
            &admin,
            ns,
            "stranger-client",
            forged_labels("stranger"),
            owner("ClientIdentity", "decoy", decoy.uid().unwrap()),
        )
        .await,
        // A server certificate name held by something else's.
        foreign_secret(
            &admin,
            ns,
            "door-server-tls",
            json!({}),
            owner("ConfigMap", "keeper", keeper.uid().unwrap()),
        )
        .await,
    ];
    let upstream = Upstream::start().await;
    for name in ["bare", "forged", "stranger"] {
        apply(
            &api::<ClientIdentity>(&admin, ns),
            &for_release(identity(name, json!({})), release),
        )
        .await
        .unwrap();
    }
    apply(
        &api::<ProtectedRoute>(&admin, ns),
        &for_release(
            url_route("door", &["door.own.test"], upstream.addr),
            release,
        ),
    )
    .await
    .unwrap();

    for name in ["bare", "forged", "stranger"] {
        let secret = names::identity_secret_name(name);
        conflict_reported::<ClientIdentity>(&admin, ns, name, &secret).await;
    }
    conflict_reported::<ProtectedRoute>(&admin, ns, "door", "door-server-tls").await;
    // A Ready identity beside them proves the controller kept reconciling.
    apply(
        &api::<ClientIdentity>(&admin, ns),
        &for_release(identity("fine", json!({})), release),
    )
    .await
    .unwrap();
    wait_condition(
        &api::<ClientIdentity>(&admin, ns),
        "fine",
        "Ready",
        "True",
        T,
    )
    .await;
    // The status names no Secret it does not own.
    let bare = api::<ClientIdentity>(&admin, ns).get("bare").await.unwrap();
    let status = bare.status.expect("status");
    assert_eq!((status.secret_name, status.serial_number), (None, None));
    // Past a conflict retry: still byte-for-byte what their creator wrote.
    tokio::time::sleep(Duration::from_secs(11)).await;
    for before in &foreign {
        let now = api::<Secret>(&admin, ns)
            .get(&before.name_any())
            .await
            .unwrap();
        assert_eq!(
            fingerprint(&now),
            fingerprint(before),
            "{}",
            before.name_any()
        );
    }

    // Once the name is free, the next look mints it, owned by the identity.
    api::<Secret>(&admin, ns)
        .delete("bare-client", &DeleteParams::default())
        .await
        .unwrap();
    let ready = wait_condition(
        &api::<ClientIdentity>(&admin, ns),
        "bare",
        "Ready",
        "True",
        CONFLICT_RESOLVED,
    )
    .await;
    assert!(
        condition(&ready, "SecretConflict").is_none(),
        "{:?}",
        ready.status
    );
    let minted = api::<Secret>(&admin, ns).get("bare-client").await.unwrap();
    let owners = minted.owner_references();
    assert_eq!(owners.len(), 1);
    assert_eq!(Some(&owners[0].uid), ready.metadata.uid.as_ref());
    assert_eq!(
        minted
            .labels()
            .get(names::INSTANCE_LABEL)
            .map(String::as_str),
        Some(release)
    );
    // The gate serves it; the forged Secret's "certificate" never reached the data plane.
    api::<Secret>(&admin, ns)
        .delete("door-server-tls", &DeleteParams::default())
        .await
        .unwrap();
    wait_condition(
        &api::<ProtectedRoute>(&admin, ns),
        "door",
        "Ready",
        "True",
        CONFLICT_RESOLVED,
    )
    .await;
    let device = device_client(op.proxy, &minted, "door.own.test");
    eventually("bare to be admitted", T, async || {
        let resp = device.get("/").await.map_err(|e| e.to_string())?;
        (resp.status.as_u16() == 200)
            .then_some(())
            .ok_or(format!("{}", resp.status))
    })
    .await;
    op.stop().await.unwrap();
}

/// Creates the same bring-your-own CA Secret in every namespace of `namespaces`: the
/// strongest case, where only the release boundary (not the CA) keeps devices apart.
async fn shared_ca(admin: &Client, namespaces: &[&str]) {
    let ca = portcullis::pki::Ca::generate("shared").unwrap();
    for ns in namespaces {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "shared-ca"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": ca.cert_pem(), "tls.key": ca.key_pem()},
        }))
        .unwrap();
        match api::<Secret>(admin, ns)
            .create(&PostParams::default(), &secret)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                panic!("shared-ca exists in {ns}: a previous run left it; restart envtest")
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_releases_each_mint_and_admit_only_their_own() {
    let (alpha_ns, beta_ns, ns) = ("own-alpha-system", "own-beta-system", "own-two");
    let admin = setup(&[alpha_ns, beta_ns, ns]).await;
    shared_ca(&admin, &[alpha_ns, beta_ns]).await;
    // alpha: the first release, claims unlabelled objects; beta: labelled ones only.
    let alpha = InProcessOperator::start_as(
        admin.clone(),
        alpha_ns,
        "alpha-0",
        Instance::new("alpha", true).unwrap(),
        "shared-ca",
    )
    .await;
    let beta = InProcessOperator::start_as(
        admin.clone(),
        beta_ns,
        "beta-0",
        Instance::new("beta", false).unwrap(),
        "shared-ca",
    )
    .await;
    wait_data_plane(alpha.admin, T).await;
    wait_data_plane(beta.admin, T).await;

    let upstream = Upstream::start().await;
    let (a_host, b_host) = ("a.own.test", "b.own.test");
    let ids = api::<ClientIdentity>(&admin, ns);
    let routes = api::<ProtectedRoute>(&admin, ns);
    apply(&ids, &identity("a-phone", json!({}))).await.unwrap();
    apply(&ids, &for_release(identity("b-phone", json!({})), "beta"))
        .await
        .unwrap();
    apply(&routes, &url_route("a-door", &[a_host], upstream.addr))
        .await
        .unwrap();
    apply(
        &routes,
        &for_release(url_route("b-door", &[b_host], upstream.addr), "beta"),
    )
    .await
    .unwrap();
    for name in ["a-phone", "b-phone"] {
        wait_condition(&ids, name, "Ready", "True", T).await;
    }
    for name in ["a-door", "b-door"] {
        wait_condition(&routes, name, "Ready", "True", T).await;
    }
    // Each route counts only its release's identities (the default selector admits all).
    for name in ["a-door", "b-door"] {
        let status = routes.get(name).await.unwrap().status.unwrap();
        assert_eq!(status.admitted_identities, Some(1), "{name}: {status:?}");
    }

    // Each Secret was written by its own release only.
    let secrets = api::<Secret>(&admin, ns);
    let mut settled = BTreeMap::new();
    for (name, release) in [
        ("a-phone-client", "alpha"),
        ("a-door-server-tls", "alpha"),
        ("b-phone-client", "beta"),
        ("b-door-server-tls", "beta"),
    ] {
        let s = secrets.get(name).await.unwrap();
        assert_eq!(
            s.labels().get(names::INSTANCE_LABEL).map(String::as_str),
            Some(release),
            "{name}"
        );
        settled.insert(name, s);
    }

    // Each gate admits its own devices on its own hosts and nobody else's.
    let a_phone = &settled["a-phone-client"];
    let b_phone = &settled["b-phone-client"];
    admitted_as(
        &device_client(alpha.proxy, a_phone, a_host),
        "own-two/a-phone",
    )
    .await;
    admitted_as(
        &device_client(beta.proxy, b_phone, b_host),
        "own-two/b-phone",
    )
    .await;
    for (gate, device, host, what) in [
        (alpha.proxy, b_phone, a_host, "alpha refuses beta's device"),
        (beta.proxy, a_phone, b_host, "beta refuses alpha's device"),
        (
            alpha.proxy,
            a_phone,
            b_host,
            "alpha does not serve beta's route",
        ),
        (
            beta.proxy,
            b_phone,
            a_host,
            "beta does not serve alpha's route",
        ),
    ] {
        let outcome = device_client(gate, device, host).probe().await;
        assert!(outcome.is_refused(), "{what}: {outcome:?}");
    }

    // No fight: nothing is rewritten while both run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, before) in &settled {
        let now = secrets.get(name).await.unwrap();
        assert_eq!(
            fingerprint(&now),
            fingerprint(before),
            "{name} was rewritten"
        );
    }
    alpha.stop().await.unwrap();
    beta.stop().await.unwrap();
}

/// Waits until `device` gets a 200 from the upstream as `identity`.
async fn admitted_as(device: &common::TlsClient, identity: &str) {
    eventually(&format!("{identity} to be admitted"), T, async || {
        let resp = device.get("/").await.map_err(|e| e.to_string())?;
        if resp.status.as_u16() != 200 {
            return Err(format!("{} {}", resp.status, resp.text()));
        }
        match resp.echo().header(IDENTITY_HEADER) {
            Some(id) if id == identity => Ok(()),
            other => Err(format!("identity header {other:?}")),
        }
    })
    .await
}
