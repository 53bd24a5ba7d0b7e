//! Enrollment links in operator mode, on a real API server (tests/envtest): the real
//! `portcullis enroll --namespace` binary with a kubeconfig, two `portcullis operator
//! --role proxy` processes racing for one link, and a data plane bound to nothing but the
//! chart's proxy-only rules.
//!
//! One control plane for the binary; its tests take turns (each runs its own operator,
//! and two controllers on one API server would fight). Logs: `target/tmp/enroll-*.log`.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[allow(dead_code)]
mod envtest;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use portcullis::controller::names;
use portcullis::resources::{ClientIdentity, Enrollment, ProtectedRoute};
use serde_json::json;

use cluster::*;
use common::enroll::{PrintedLink, openssl_opens_bytes};
use common::{TlsClient, Upstream, get, post};
use envtest::Envtest;

/// Longest wait for one step (debug builds, two cores shared with others).
const T: Duration = Duration::from_secs(30);
const CLAIM_COOKIE: &str = "__Secure-portcullis-enroll";

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The control plane (CRDs applied) for one test at a time, and an admin client.
async fn setup() -> (
    tokio::sync::MutexGuard<'static, ()>,
    &'static Envtest,
    Client,
) {
    static ENV: OnceLock<Envtest> = OnceLock::new();
    let guard = TURN.lock().await;
    let env = ENV.get_or_init(Envtest::start);
    let admin = env.client().await;
    apply_crds(&admin).await.expect("CRDs");
    let enrollments: Api<Enrollment> = Api::all(admin.clone());
    eventually("Enrollments to be served", T, async || {
        enrollments
            .list(&ListParams::default().limit(1))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    (guard, env, admin)
}

/// The real `portcullis enroll NAME --namespace NS ARGS…` with the admin kubeconfig.
fn enroll(kubeconfig: &Path, ns: &str, name: &str, args: &[&str]) -> Output {
    Command::new(operator_binary())
        .args(["enroll", name, "--namespace", ns])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("PORTCULLIS_STATE_DIR")
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .expect("run portcullis enroll")
}

fn link(kubeconfig: &Path, ns: &str, name: &str, url: &str) -> PrintedLink {
    PrintedLink::from_output(&enroll(
        kubeconfig,
        ns,
        name,
        &["--url", url, "--ttl", "10m"],
    ))
}

async fn enrollments_of(admin: &Client, ns: &str, identity: &str) -> Vec<Enrollment> {
    Api::<Enrollment>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels(&format!("portcullis.dev/identity={identity}")))
        .await
        .unwrap()
        .items
}

/// A ClientIdentity with its Secret minted, and a route serving `host` that admits it
/// (forwarding to the returned upstream).
async fn device_and_route(admin: &Client, ns: &str, name: &str, host: &str) -> (Secret, Upstream) {
    let upstream = Upstream::start().await;
    let ids: Api<ClientIdentity> = Api::namespaced(admin.clone(), ns);
    apply(&ids, &identity(name, json!({}))).await.unwrap();
    let routes: Api<ProtectedRoute> = Api::namespaced(admin.clone(), ns);
    apply(&routes, &url_route("ha", &[host], upstream.addr))
        .await
        .unwrap();
    wait_condition(&routes, "ha", "Ready", "True", T).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let secret = wait_secret(&secrets, &names::identity_secret_name(name), T).await;
    (secret, upstream)
}

/// Waits until the data plane at `proxy` admits the device (its snapshot holds the
/// identity and the route).
async fn admits(proxy: std::net::SocketAddr, secret: &Secret, host: &str) {
    let device = device_client(proxy, secret, host);
    eventually("the device to be admitted", T, async || {
        let resp = device.get("/").await.map_err(|e| e.to_string())?;
        (resp.status == StatusCode::OK)
            .then_some(())
            .ok_or(format!("{}", resp.status))
    })
    .await;
}

fn with_cookie(path: &str, cookie: &str) -> http::Request<common::ReqBody> {
    let mut req = get(path);
    req.headers_mut().insert(
        http::header::COOKIE,
        format!("{CLAIM_COOKIE}={cookie}").parse().unwrap(),
    );
    req
}

fn claim_cookie(resp: &common::Resp) -> String {
    resp.set_cookies()
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{CLAIM_COOKIE}=")))
        .and_then(|rest| rest.split(';').next())
        .expect("a claim cookie")
        .to_owned()
}

/// A certificate-less device at `proxy`, trusting the CA in the identity Secret.
fn browser(proxy: std::net::SocketAddr, secret: &Secret, host: &str) -> TlsClient {
    anonymous_client(proxy, data(secret, names::CA_CRT), host)
}

/// 1. `portcullis enroll --namespace` stores an Enrollment holding neither the token nor a
///    key in clear, owned by the identity; a second enroll replaces it.
/// 2. Two proxy replicas (separate processes, one controller) racing for one link: eight
///    concurrent claims spread over both → exactly one 303; the winner's downloads work on
///    both replicas; the .p12 opens with the one-time password.
/// 3. Deleting the identity removes its links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxy_replicas_let_exactly_one_claim_win() {
    let (_turn, env, admin) = setup().await;
    let (op_ns, ns, host) = ("enroll-system", "enroll-home", "enroll.ha.test");
    ensure_namespace(&admin, op_ns).await.unwrap();
    ensure_namespace(&admin, ns).await.unwrap();
    let log = tmp("enroll-replicas.log");
    let _ = std::fs::remove_file(&log);
    let start = |pod: &str, role: &str| {
        OperatorProcess::spawn(OperatorArgs {
            kubeconfig: &env.kubeconfig,
            namespace: op_ns,
            pod_name: pod,
            role,
            log: &log,
        })
    };
    let _controller = start("controller", "controller");
    let (a, b) = (start("proxy-a", "proxy"), start("proxy-b", "proxy"));
    let (secret, _upstream) = device_and_route(&admin, ns, "phone", host).await;
    for proxy in [&a, &b] {
        wait_data_plane(proxy.admin, T).await;
        admits(proxy.proxy, &secret, host).await;
    }

    // Clear errors first: no --url, an unknown identity, a revoked one.
    let out = enroll(&env.kubeconfig, ns, "phone", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --url"));
    let url = format!("https://{host}:{}", a.proxy.port());
    let out = enroll(&env.kubeconfig, ns, "nobody", &["--url", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no ClientIdentity nobody in namespace enroll-home"),
        "{stderr}"
    );

    // 1. The stored link.
    let first = link(&env.kubeconfig, ns, "phone", &url);
    assert!(
        first
            .url
            .starts_with(&format!("{url}/.well-known/portcullis/enroll/"))
    );
    let stored = enrollments_of(&admin, ns, "phone").await;
    assert_eq!(stored.len(), 1);
    let object = &stored[0];
    let ci = Api::<ClientIdentity>::namespaced(admin.clone(), ns)
        .get("phone")
        .await
        .unwrap();
    let owner = &object.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("ClientIdentity", ci.metadata.uid.as_ref())
    );
    assert_eq!(object.spec.identity, "phone");
    assert_eq!(object.spec.token_hash, first.token_hash());
    assert_eq!(
        object
            .labels()
            .get("portcullis.dev/token-hash")
            .map(String::as_str),
        Some(&first.token_hash()[..63])
    );
    assert!(object.status.is_none());
    let json = serde_json::to_string(object).unwrap();
    let key_pem = text(&secret, names::TLS_KEY);
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for secret_text in [
        first.token(),
        first.password.as_str(),
        &key_body[..40],
        "PRIVATE KEY",
        text(&secret, names::KEYSTORE_PASSWORD).as_str(),
    ] {
        assert!(
            !json.contains(secret_text),
            "{secret_text:?} in the Enrollment"
        );
    }

    // A second enroll cancels the first link.
    let second = link(&env.kubeconfig, ns, "phone", &url);
    let stored = enrollments_of(&admin, ns, "phone").await;
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].name_any(), object.name_any());
    assert_eq!(stored[0].spec.token_hash, second.token_hash());
    let cancelled = browser(a.proxy, &secret, host)
        .send(post(first.path(), ""))
        .await
        .unwrap();
    assert_eq!(cancelled.status, StatusCode::NOT_FOUND);

    // 2. The race: eight claims, alternating replicas, all at once.
    let claims: Vec<_> = (0..8)
        .map(|i| {
            let proxy = if i % 2 == 0 { a.proxy } else { b.proxy };
            let device = browser(proxy, &secret, host);
            let path = second.path().to_owned();
            tokio::spawn(async move { device.send(post(&path, "")).await.unwrap() })
        })
        .collect();
    let mut winners = Vec::new();
    for claim in claims {
        let resp = claim.await.unwrap();
        match resp.status {
            StatusCode::SEE_OTHER => winners.push(resp),
            StatusCode::NOT_FOUND => assert_eq!(resp.body, cancelled.body, "the generic page"),
            other => panic!("claim answered {other}: {}", resp.text()),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins");
    let cookie = claim_cookie(&winners[0]);
    let mut p12s = Vec::new();
    for proxy in [a.proxy, b.proxy] {
        let device = browser(proxy, &secret, host);
        let page = device
            .send(with_cookie(
                &format!("{}/downloads", second.path()),
                &cookie,
            ))
            .await
            .unwrap();
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let p12 = device
            .send(with_cookie(
                &format!("{}/certificate.p12", second.path()),
                &cookie,
            ))
            .await
            .unwrap();
        assert_eq!(p12.status, StatusCode::OK);
        let profile = device
            .send(with_cookie(
                &format!("{}/profile.mobileconfig", second.path()),
                &cookie,
            ))
            .await
            .unwrap();
        assert_eq!(profile.status, StatusCode::OK);
        assert!(profile.text().contains("com.apple.security.pkcs12"));
        p12s.push(p12.body);
        // Without the cookie: the generic page, on either replica.
        let stranger = device
            .get(&format!("{}/certificate.p12", second.path()))
            .await
            .unwrap();
        assert_eq!(stranger.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(p12s[0], p12s[1]);
    assert!(openssl_opens_bytes(&p12s[0], &second.password));
    assert!(!openssl_opens_bytes(
        &p12s[0],
        &text(&secret, names::KEYSTORE_PASSWORD)
    ));
    // The claim is on record, once.
    let claimed = enrollments_of(&admin, ns, "phone").await.remove(0);
    let status = claimed.status.clone().expect("a claimed status");
    assert!(status.claimed_at.is_some());
    assert!(
        ["proxy-a", "proxy-b"].contains(&status.claimed_by.as_deref().unwrap_or_default()),
        "{status:?}"
    );
    let mut counted = 0.0;
    for proxy in [&a, &b] {
        counted += metric_sum(
            &metrics(proxy.admin).await,
            "portcullis_enrollments_total",
            "identity=\"enroll-home/phone\"",
        );
    }
    assert_eq!(counted, 1.0);
    enrolled_event(&admin, ns, "phone").await;
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("enrollment link claimed"));
    for token in [first.token(), second.token()] {
        assert!(!log_text.contains(token), "a token in the log");
    }

    // A revoked identity gets no link.
    let ids: Api<ClientIdentity> = Api::namespaced(admin.clone(), ns);
    patch_spec(&ids, "phone", json!({"revoked": true}))
        .await
        .unwrap();
    let out = enroll(&env.kubeconfig, ns, "phone", &["--url", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ClientIdentity enroll-home/phone is revoked"),
        "{stderr}"
    );

    // 3. Deleting the identity removes its links (owner reference).
    wait_garbage_collector(&admin, ns, Duration::from_secs(60)).await;
    ids.delete("phone", &DeleteParams::default()).await.unwrap();
    wait_gone(&ids, "phone", T).await;
    let enrollments: Api<Enrollment> = Api::namespaced(admin.clone(), ns);
    wait_gone(&enrollments, &claimed.name_any(), T).await;
}

/// Waits for the `Enrolled` Event on ClientIdentity `name`.
async fn enrolled_event(admin: &Client, ns: &str, name: &str) {
    eventually("an Enrolled Event", T, async || {
        let reasons = event_reasons(admin, ns, name).await?;
        reasons
            .iter()
            .any(|r| r == "Enrolled")
            .then_some(())
            .ok_or(format!("{reasons:?}"))
    })
    .await;
}

/// The rules helm/portcullis/templates/rbac.yaml renders for the proxy workload
/// (copied, like tests/operator.rs's `chart_rbac`; tests/helm.rs checks the chart).
fn chart_proxy_rules(name: &str) -> ClusterRole {
    let mut rules = chart_data_plane_rules();
    rules.push(
        json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}),
    );
    rules.push(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}));
    serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))
        .expect("ClusterRole")
}

/// A data plane authenticated as a ServiceAccount bound to nothing but the chart's
/// proxy-only rules serves a link, records the claim, publishes the Event and clears out
/// an expired link; it cannot create (forge) an Enrollment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_proxy_rules_are_enough_to_serve_a_link() {
    let (_turn, env, admin) = setup().await;
    let (op_ns, ns, host) = (
        "enroll-rbac-system",
        "enroll-rbac-home",
        "rbac.enroll.ha.test",
    );
    ensure_namespace(&admin, op_ns).await.unwrap();
    ensure_namespace(&admin, ns).await.unwrap();
    let config = env.config().await;
    let account = service_account_client(&admin, &config, op_ns, "proxy")
        .await
        .unwrap();
    let role = chart_proxy_rules("enroll-proxy");
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "enroll-proxy"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "enroll-proxy"},
        "subjects": [{"kind": "ServiceAccount", "name": "proxy", "namespace": op_ns}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let probe: Api<Enrollment> = Api::all(account.clone());
    eventually("the binding to take effect", T, async || {
        probe
            .list(&ListParams::default().limit(1))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;

    let log = tmp("enroll-rbac.log");
    let _ = std::fs::remove_file(&log);
    let _controller = OperatorProcess::spawn(OperatorArgs {
        kubeconfig: &env.kubeconfig,
        namespace: op_ns,
        pod_name: "controller",
        role: "controller",
        log: &log,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (proxy, proxy_admin) = (
        listener.local_addr().unwrap(),
        admin_listener.local_addr().unwrap(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    tokio::spawn(portcullis::operator::run(
        account.clone(),
        portcullis::operator::Options {
            role: portcullis::operator::Role::Proxy,
            namespace: op_ns.into(),
            ca_secret: names::CA_SECRET.into(),
            pod_name: "rbac-proxy".into(),
            instance: portcullis::resources::Instance::default(),
            listener: Some(listener),
            proxy_protocol_listener: None,
            scope: portcullis::scope::Scope::Cluster,
            admin: admin_listener,
            seen_flush: portcullis::proxy::seen::FLUSH_EVERY,
            settings: portcullis::proxy::Settings::default(),
        },
        stop.clone(),
    ));
    let (secret, _upstream) = device_and_route(&admin, ns, "tablet", host).await;
    wait_data_plane(proxy_admin, T).await;
    admits(proxy, &secret, host).await;

    // An expired link of another identity, for the sweep a claim starts.
    let enrollments: Api<Enrollment> = Api::namespaced(admin.clone(), ns);
    let expired: Enrollment = serde_json::from_value(json!({
        "apiVersion": API_VERSION, "kind": "Enrollment",
        "metadata": {"name": "expired", "namespace": ns},
        "spec": {"identity": "gone", "tokenHash": "00".repeat(32),
                 "expiresAt": "2020-01-01T00:00:00Z", "bundle": "AQ=="},
    }))
    .unwrap();
    enrollments
        .create(&PostParams::default(), &expired)
        .await
        .unwrap();
    // The data plane cannot make links of its own.
    let forged = Api::<Enrollment>::namespaced(account.clone(), ns)
        .create(&PostParams::default(), &expired)
        .await
        .unwrap_err();
    assert_eq!(api_status(&forged).map(|s| s.code), Some(403), "{forged}");

    let printed = link(
        &env.kubeconfig,
        ns,
        "tablet",
        &format!("https://{host}:{}", proxy.port()),
    );
    let device = browser(proxy, &secret, host);
    let claimed = device.send(post(printed.path(), "")).await.unwrap();
    assert_eq!(claimed.status, StatusCode::SEE_OTHER, "{}", claimed.text());
    let cookie = claim_cookie(&claimed);
    let p12 = device
        .send(with_cookie(
            &format!("{}/certificate.p12", printed.path()),
            &cookie,
        ))
        .await
        .unwrap();
    assert_eq!(p12.status, StatusCode::OK);
    assert!(openssl_opens_bytes(&p12.body, &printed.password));
    let stored = enrollments_of(&admin, ns, "tablet").await;
    assert_eq!(
        stored[0]
            .status
            .as_ref()
            .and_then(|s| s.claimed_by.as_deref()),
        Some("rbac-proxy")
    );
    enrolled_event(&admin, ns, "tablet").await;
    wait_gone(&enrollments, "expired", T).await;

    // Clean up while the controller runs (it releases the finalizer).
    let ids: Api<ClientIdentity> = Api::namespaced(admin.clone(), ns);
    ids.delete("tablet", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&ids, "tablet", T).await;
}

/// The store alone, as two replicas: rounds of sixteen simultaneous claims of one
/// Enrollment (a barrier releases them together) have exactly one winner each; afterwards
/// the link is claimed for every replica and pending for none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_claims_through_the_store_have_one_winner() {
    use portcullis::enroll::EnrollmentStore;
    use portcullis::sources::cluster_enroll::ClusterEnrollments;
    use std::sync::Arc;
    let (_turn, env, admin) = setup().await;
    let ns = "enroll-store";
    ensure_namespace(&admin, ns).await.unwrap();
    // No operator runs here: an identity without its Secret gets a clear refusal.
    let ids: Api<ClientIdentity> = Api::namespaced(admin.clone(), ns);
    apply(&ids, &identity("unminted", json!({}))).await.unwrap();
    let out = enroll(
        &env.kubeconfig,
        ns,
        "unminted",
        &["--url", "https://ha.example.com"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Secret enroll-store/unminted-client does not exist yet"),
        "{stderr}"
    );

    let replicas = [
        Arc::new(ClusterEnrollments::new(admin.clone(), "replica-a")),
        Arc::new(ClusterEnrollments::new(admin.clone(), "replica-b")),
    ];
    let enrollments: Api<Enrollment> = Api::namespaced(admin.clone(), ns);
    for round in 0..5u8 {
        let hash = hex::encode([round; 32]);
        let object: Enrollment = serde_json::from_value(json!({
            "apiVersion": API_VERSION, "kind": "Enrollment",
            "metadata": {"name": format!("round-{round}"), "namespace": ns,
                         "labels": {"portcullis.dev/token-hash": &hash[..63]}},
            "spec": {"identity": "phone", "tokenHash": hash,
                     "expiresAt": "2099-01-01T00:00:00Z", "bundle": "AQ=="},
        }))
        .unwrap();
        enrollments
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
        let record = replicas[0]
            .pending(hash.clone())
            .await
            .unwrap()
            .expect("pending");
        assert_eq!(record.identity, format!("{ns}/phone"));
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let claims: Vec<_> = (0..16)
            .map(|i| {
                let (store, record, barrier) =
                    (replicas[i % 2].clone(), record.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.claim(record).await.unwrap()
                })
            })
            .collect();
        let mut won = 0;
        for claim in claims {
            won += usize::from(claim.await.unwrap());
        }
        assert_eq!(won, 1, "round {round}");
        for store in &replicas {
            assert!(store.pending(hash.clone()).await.unwrap().is_none());
            assert!(store.claimed(hash.clone()).await.unwrap().is_some());
        }
    }
}
