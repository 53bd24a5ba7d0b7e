//! `portcullis operator` against a real API server (tests/envtest: kube-apiserver v1.34,
//! etcd, garbage collector), with real TLS clients and `openssl`.
//!
//! Two control planes per test binary, started on first use:
//! - the **shared** one runs one operator for the whole binary (in-process, on its own
//!   runtime thread; an installation watches every namespace, so two operators on one API
//!   server would fight). Its tests run in parallel, each in its own namespace with its own
//!   host names.
//! - the **exclusive** one is for tests that run their own operator (the real binary for
//!   restarts, a ServiceAccount for RBAC, or objects that could disturb other tests); they
//!   take turns through a lock.
//!
//! Operator logs: `target/tmp/operator-tests.log` (in-process) and
//! `target/tmp/operator-*.log` (binary).
//!
//! `operator_benchmark` is not a test but the benchmark behind BENCHMARKS.md (ignored; run
//! by `bench/operator.sh`).

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[allow(dead_code)]
mod envtest;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use portcullis::controller::names;
use portcullis::resources::{ClientIdentity, ProtectedRoute};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use sha2::{Digest, Sha256};

use cluster::*;
use common::{Upstream, WsFailure, ws_next, ws_roundtrip};
use envtest::Envtest;

/// Longest wait for one step (generous: debug builds, two cores shared with others).
const T: Duration = Duration::from_secs(30);
/// The design's bound on revocation taking effect in Kubernetes (DESIGN.md).
const REVOCATION_BOUND: Duration = Duration::from_secs(2);
/// The shared operator's namespace.
const OPERATOR_NS: &str = "portcullis-system";

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// In-process operators log here (a global subscriber; once per binary).
fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let file = std::fs::File::create(tmp("operator-tests.log")).expect("log file");
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .try_init();
    });
}

// ───────────────────────────── the shared control plane ─────────────────────────────

struct Shared {
    env: Envtest,
    /// The operator's data plane and admin port.
    proxy: SocketAddr,
    admin: SocketAddr,
    /// Its PROXY protocol port.
    proxy_protocol: SocketAddr,
}

/// The shared control plane with CRDs applied and one operator running for the binary.
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        init_logging();
        // Start the other control plane meanwhile (two cores: overlap the waits).
        std::thread::spawn(exclusive_env);
        let env = Envtest::start();
        let kubeconfig = env.kubeconfig.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        // Its own runtime: each test has one, and a client or task outlives none of them.
        std::thread::Builder::new()
            .name("shared-operator".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let config = envtest::config_at(&kubeconfig, None).await;
                    let client = Client::try_from(config).expect("client");
                    apply_crds(&client).await.expect("CRDs");
                    ensure_namespace(&client, OPERATOR_NS).await.expect("ns");
                    let op = InProcessOperator::start(client, OPERATOR_NS, "shared").await;
                    wait_data_plane(op.admin, T).await;
                    tx.send((op.proxy, op.admin, op.proxy_protocol))
                        .expect("send");
                    std::future::pending::<()>().await;
                });
            })
            .expect("thread");
        let (proxy, admin, proxy_protocol) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the shared operator started (see target/tmp/operator-tests.log)");
        Shared {
            env,
            proxy,
            admin,
            proxy_protocol,
        }
    })
}

/// The shared control plane, an admin client and namespace `ns` (created).
async fn setup(ns: &str) -> (&'static Shared, Client) {
    let s = shared();
    let admin = s.env.client().await;
    ensure_namespace(&admin, ns).await.expect("namespace");
    (s, admin)
}

// ───────────────────────────── the exclusive control plane ─────────────────────────────

static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The second control plane, CRDs applied as soon as it is up: the garbage collector
/// learns new kinds only every 30 s, so the earlier the better. [`shared`] starts it in the
/// background.
fn exclusive_env() -> &'static Envtest {
    static ENV: OnceLock<Envtest> = OnceLock::new();
    ENV.get_or_init(|| {
        let env = Envtest::start();
        let kubeconfig = env.kubeconfig.clone();
        // A runtime of its own (this may be called from a test's runtime).
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let config = envtest::config_at(&kubeconfig, None).await;
                apply_crds(&Client::try_from(config).expect("client"))
                    .await
                    .expect("CRDs");
            })
        })
        .join()
        .expect("CRDs on the exclusive control plane");
        env
    })
}

/// The second control plane, for one test at a time, cleared of Portcullis objects.
async fn exclusive() -> (
    tokio::sync::MutexGuard<'static, ()>,
    &'static Envtest,
    Client,
) {
    let guard = EXCLUSIVE.lock().await;
    init_logging();
    let env = exclusive_env();
    let admin = env.client().await;
    // A test that failed before may have left objects a new operator would pick up.
    remove_all_portcullis_objects(&admin)
        .await
        .expect("clean slate");
    (guard, env, admin)
}

// ───────────────────────────── helpers ─────────────────────────────

fn ids(client: &Client, ns: &str) -> Api<ClientIdentity> {
    Api::namespaced(client.clone(), ns)
}

fn routes(client: &Client, ns: &str) -> Api<ProtectedRoute> {
    Api::namespaced(client.clone(), ns)
}

fn secrets(client: &Client, ns: &str) -> Api<Secret> {
    Api::namespaced(client.clone(), ns)
}

/// Applies an identity and waits for its Secret and Ready=True.
async fn minted(client: &Client, ns: &str, name: &str, spec: serde_json::Value) -> Secret {
    apply(&ids(client, ns), &identity(name, spec))
        .await
        .expect("apply ClientIdentity");
    wait_secret(&secrets(client, ns), &names::identity_secret_name(name), T).await;
    wait_condition(&ids(client, ns), name, "Ready", "True", T).await;
    // Re-read: Ready may come with a Secret written after the first one seen.
    secrets(client, ns)
        .get(&names::identity_secret_name(name))
        .await
        .expect("Secret")
}

/// Applies a url route and waits for Ready=True.
async fn served(client: &Client, ns: &str, name: &str, host: &str, upstream: SocketAddr) {
    apply(&routes(client, ns), &url_route(name, &[host], upstream))
        .await
        .expect("apply ProtectedRoute");
    wait_condition(&routes(client, ns), name, "Ready", "True", T).await;
}

/// Waits until `device` gets a 200 from the upstream as `identity`; returns the response.
async fn admitted(device: &common::TlsClient, identity: &str) -> common::Resp {
    eventually(&format!("{identity} to be admitted"), T, async || {
        let resp = device.get("/api/").await.map_err(|e| e.to_string())?;
        if resp.status.as_u16() != 200 {
            return Err(format!("{} {}", resp.status, resp.text()));
        }
        match resp.echo().header(IDENTITY_HEADER) {
            Some(id) if id == identity => Ok(resp),
            other => Err(format!("identity header {other:?}")),
        }
    })
    .await
}

/// Waits until a new handshake with `device` is refused.
async fn refused(device: &common::TlsClient, within: Duration) {
    eventually("the device to be refused", within, async || {
        match device.probe().await {
            o if o.is_refused() => Ok(()),
            o => Err(format!("{o:?}")),
        }
    })
    .await
}

fn status_serial(ci: &ClientIdentity) -> String {
    ci.status
        .as_ref()
        .and_then(|s| s.serial_number.clone())
        .expect("status.serialNumber")
}

fn crl_pem(secret: &Secret) -> Result<Vec<u8>, String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(names::CRL_KEY))
        .map(|b| b.0.clone())
        .ok_or_else(|| "no crl.pem".into())
}

async fn wait_on_crl(admin: &Client, operator_ns: &str, serial: &str) -> Secret {
    let api = secrets(admin, operator_ns);
    eventually(&format!("serial {serial} on the CRL"), T, async || {
        let s = api
            .get_opt(names::CRL_SECRET)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no CRL Secret")?;
        crl_lists(&crl_pem(&s)?, serial)?;
        Ok(s)
    })
    .await
}

// ───────────────────────────── tests: shared control plane ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_from_the_repository_are_established_and_served() {
    let (s, admin) = setup("crds").await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for (name, kind, short) in [
        ("clientidentities.portcullis.dev", "ClientIdentity", "cid"),
        ("protectedroutes.portcullis.dev", "ProtectedRoute", "proute"),
    ] {
        let crd = crds.get(name).await.expect("CRD exists");
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == wanted && c.status == "True"),
                "{name}: {wanted} in {conditions:?}"
            );
        }
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert!(
            crd.spec
                .names
                .short_names
                .iter()
                .flatten()
                .any(|n| n == short),
            "{name}: short name {short}"
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: status subresource"
        );
        assert!(
            version
                .additional_printer_columns
                .iter()
                .flatten()
                .any(|c| c.name == "Ready"),
            "{name}: a Ready printer column"
        );
    }
    // Server-side apply of the same YAML again changes nothing (idempotent install).
    let before: Vec<_> = crds
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| (c.name_any(), c.metadata.generation))
        .collect();
    apply_crds(&admin).await.unwrap();
    let after: Vec<_> = crds
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| (c.name_any(), c.metadata.generation))
        .collect();
    assert_eq!(before, after);
    // The operator made its namespace's Secrets and took the Lease.
    let own = secrets(&admin, OPERATOR_NS);
    for name in [
        names::CA_SECRET,
        names::COOKIE_KEYS_SECRET,
        names::CRL_SECRET,
    ] {
        wait_secret(&own, name, T).await;
    }
    let lease = Api::<Lease>::namespaced(admin.clone(), OPERATOR_NS)
        .get(names::LEASE_NAME)
        .await
        .expect("Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("shared")
    );
    assert_eq!(admin_get(s.admin, "/healthz").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_identity_gets_its_secret_status_and_files_openssl_accepts() {
    let ns = "identity";
    let (_, admin) = setup(ns).await;
    let secret = minted(&admin, ns, "phone", json!({})).await;
    let ci = ids(&admin, ns).get("phone").await.unwrap();

    // The Secret: type, keys, owner, labels.
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "ca.crt",
            "keystore.p12",
            "keystore.p12.password",
            "tls.crt",
            "tls.key"
        ],
        "exactly the documented keys"
    );
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    let owner = &owners[0];
    assert_eq!(
        (
            owner.api_version.as_str(),
            owner.kind.as_str(),
            owner.name.as_str()
        ),
        ("portcullis.dev/v1alpha1", "ClientIdentity", "phone")
    );
    assert_eq!(Some(&owner.uid), ci.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(
        secret
            .labels()
            .get(names::MANAGED_BY_LABEL)
            .map(String::as_str),
        Some(names::MANAGED_BY_VALUE)
    );
    assert!(
        ci.finalizers().iter().any(|f| f == names::CRL_FINALIZER),
        "{:?}",
        ci.finalizers()
    );

    // The status describes the certificate in the Secret.
    let status = ci.status.clone().unwrap();
    let der = CertificateDer::from_pem_slice(data(&secret, "tls.crt")).expect("tls.crt PEM");
    let info = portcullis::pki::inspect(&der).expect("tls.crt parses");
    assert_eq!(
        status.serial_number.as_deref(),
        Some(info.serial_hex.as_str())
    );
    let fingerprint = hex::encode(Sha256::digest(&der));
    let reported = status
        .fingerprint_sha256
        .clone()
        .unwrap_or_default()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(reported, fingerprint, "status.fingerprintSha256");
    assert_eq!(status.secret_name.as_deref(), Some("phone-client"));
    assert_eq!(status.observed_generation, ci.metadata.generation);
    assert!(status.not_before.is_some() && status.not_after.is_some());
    let ready = condition(&ci, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.observed_generation),
        ("True", ci.metadata.generation)
    );
    let revoked = condition(&ci, "Revoked").map(|c| c.status.as_str());
    assert_ne!(revoked, Some("True"));

    // The files open in openssl: the .p12 (Legacy: 3DES + SHA-1 MAC, full chain) and the
    // certificate chains to ca.crt.
    let dir = tempfile::tempdir().unwrap();
    for key in ["keystore.p12", "ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(dir.path().join(key), data(&secret, key)).unwrap();
    }
    let pass = format!("pass:{}", text(&secret, "keystore.p12.password"));
    assert!(pass.len() >= 5 + 16, "a generated password is long");
    let (ok, info_text) = openssl(
        dir.path(),
        &[
            "pkcs12",
            "-info",
            "-nokeys",
            "-in",
            "keystore.p12",
            "-passin",
            &pass,
        ],
    );
    assert!(ok, "openssl pkcs12 -info: {info_text}");
    for needle in ["MAC: sha1", "pbeWithSHA1And3-KeyTripleDES-CBC"] {
        assert!(info_text.contains(needle), "{needle:?} in {info_text}");
    }
    assert_eq!(
        info_text.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "leaf and CA: {info_text}"
    );
    let (ok, out) = openssl(dir.path(), &["verify", "-CAfile", "ca.crt", "tls.crt"]);
    assert!(ok && out.contains("tls.crt: OK"), "openssl verify: {out}");
    // The key in the .p12 is the key of tls.crt.
    let (ok, keys_text) = openssl(
        dir.path(),
        &[
            "pkcs12",
            "-in",
            "keystore.p12",
            "-passin",
            &pass,
            "-nocerts",
            "-nodes",
        ],
    );
    assert!(ok, "{keys_text}");
    std::fs::write(dir.path().join("p12.key"), &keys_text).unwrap();
    let (_, from_p12) = openssl(dir.path(), &["pkey", "-in", "p12.key", "-pubout"]);
    let (_, from_crt) = openssl(dir.path(), &["x509", "-in", "tls.crt", "-noout", "-pubkey"]);
    assert!(
        from_p12.contains("PUBLIC KEY") && from_p12 == from_crt,
        "{from_p12}\n{from_crt}"
    );

    // An RSA identity for an old device, Modern profile.
    let rsa = minted(
        &admin,
        ns,
        "old-tablet",
        json!({"keyAlgorithm": "RSA-2048", "pkcs12": {"profile": "Modern"}, "commonName": "Old Tablet"}),
    )
    .await;
    for key in ["keystore.p12", "tls.crt"] {
        std::fs::write(dir.path().join(format!("rsa-{key}")), data(&rsa, key)).unwrap();
    }
    let (_, x509) = openssl(
        dir.path(),
        &["x509", "-in", "rsa-tls.crt", "-noout", "-text"],
    );
    assert!(x509.contains("Public-Key: (2048 bit)"), "{x509}");
    assert!(x509.contains("CN = Old Tablet"), "{x509}");
    let pass = format!("pass:{}", text(&rsa, "keystore.p12.password"));
    let (ok, info_text) = openssl(
        dir.path(),
        &[
            "pkcs12",
            "-info",
            "-nokeys",
            "-in",
            "rsa-keystore.p12",
            "-passin",
            &pass,
        ],
    );
    assert!(ok && info_text.contains("AES-256-CBC"), "{info_text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_serves_a_minted_identity_through_the_data_plane() {
    let ns = "route";
    let host = "ha.test";
    let (s, admin) = setup(ns).await;
    let upstream = Upstream::start().await;
    let secret = minted(&admin, ns, "laptop", json!({})).await;
    served(&admin, ns, "home-assistant", host, upstream.addr).await;

    let route = routes(&admin, ns).get("home-assistant").await.unwrap();
    let status = route.status.clone().unwrap();
    assert_eq!(status.hosts, [host]);
    assert!(status.admitted_identities.unwrap_or(0) >= 1, "{status:?}");
    let server = wait_secret(&secrets(&admin, ns), "home-assistant-server-tls", T).await;
    assert_eq!(
        server.metadata.owner_references.unwrap_or_default()[0].name,
        "home-assistant"
    );

    // With the minted certificate: through to the upstream, as route/laptop.
    let device = device_client(s.proxy, &secret, host);
    let resp = admitted(&device, "route/laptop").await;
    let echo = resp.echo();
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    assert_eq!(echo.header("x-forwarded-host"), Some(host));
    // Cookie fallback is on by default: a certificate request earns the cookie, and the
    // cookie alone is then enough (Safari's certificate-less WebSocket).
    let cookie = resp.gate_cookie().expect("a cookie is set");
    let anonymous = anonymous_client(s.proxy, data(&secret, "ca.crt"), host);
    let with_cookie = anonymous
        .send(common::with_headers(
            common::get("/api/"),
            &[("cookie", &common::cookie_header(&cookie))],
        ))
        .await
        .unwrap();
    assert_eq!(with_cookie.status.as_u16(), 200, "{}", with_cookie.text());
    assert_eq!(
        with_cookie.echo().header(IDENTITY_HEADER),
        Some("route/laptop")
    );

    // Without a certificate or cookie: 403 and nothing reaches the upstream.
    let before = upstream.seen().len();
    let resp = anonymous.get("/api/states").await.unwrap();
    assert_eq!(resp.status.as_u16(), 403, "{}", resp.text());
    assert!(
        resp.text().to_lowercase().contains("certificate"),
        "{}",
        resp.text()
    );
    assert_eq!(upstream.seen().len(), before);

    // A WebSocket with the certificate works (Home Assistant's /api/websocket).
    let (mut ws, _) = device
        .websocket("/api/websocket", None)
        .await
        .expect("WebSocket");
    ws_roundtrip(&mut ws, "hello").await;
}

/// Traefik's way in (`--proxy-protocol-listen`): there every connection must open with a
/// PROXY header, whose address becomes the client's; the main port never takes one, so a
/// pod that can reach it cannot forge a client address (Home Assistant's login ban, the
/// enrollment rate limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_proxy_protocol_port_takes_a_client_address_from_a_header() {
    use tokio::io::AsyncWriteExt;
    let (ns, host) = ("pp", "pp.ha.test");
    let (s, admin) = setup(ns).await;
    let upstream = Upstream::start().await;
    let secret = minted(&admin, ns, "phone", json!({})).await;
    served(&admin, ns, "ha", host, upstream.addr).await;
    admitted(&device_client(s.proxy, &secret, host), "pp/phone").await;
    let header = b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 443\r\n";

    let via_traefik = device_client(s.proxy_protocol, &secret, host);
    let mut tcp = tokio::net::TcpStream::connect(s.proxy_protocol)
        .await
        .unwrap();
    tcp.write_all(header).await.unwrap();
    let tls = via_traefik
        .connect_over(tcp)
        .await
        .expect("TLS after the header");
    let echo = common::http_conn_over(tls, host)
        .await
        .unwrap()
        .get("/api/")
        .await
        .unwrap()
        .echo();
    assert_eq!(echo.header("x-forwarded-for"), Some("203.0.113.7"));
    assert_eq!(echo.header(IDENTITY_HEADER), Some("pp/phone"));
    // Without the header the PROXY port refuses the connection.
    assert!(via_traefik.probe().await.is_refused());

    // The main port: a PROXY header is no TLS, whoever sends it.
    let direct = device_client(s.proxy, &secret, host);
    let mut tcp = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
    tcp.write_all(header).await.unwrap();
    if let Ok(tls) = direct.connect_over(tcp).await {
        let answer = match common::http_conn_over(tls, host).await {
            Ok(mut conn) => conn.get("/api/").await.map(|r| r.status.as_u16()).ok(),
            Err(_) => None,
        };
        assert_eq!(answer, None, "the main port took a PROXY header");
    }
}

/// The data plane caches only labelled Secrets: a server certificate brought with
/// `serverCertificate.secretName` is served once it carries
/// `portcullis.dev/server-certificate=true`; before, the route says what to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brought_server_certificate_is_served_once_labelled() {
    let (ns, host) = ("brought", "brought.ha.test");
    let (s, admin) = setup(ns).await;
    let upstream = Upstream::start().await;
    let device_secret = minted(&admin, ns, "phone", json!({})).await;
    // A certificate for the host, chaining to the gate's CA: minted for a first route,
    // copied, and that route deleted.
    served(&admin, ns, "minted", host, upstream.addr).await;
    let minted_tls = wait_secret(&secrets(&admin, ns), "minted-server-tls", T).await;
    routes(&admin, ns)
        .delete("minted", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&routes(&admin, ns), "minted", T).await;
    let brought: Secret = serde_json::from_value(json!({
        "metadata": {"name": "brought-tls"},
        "type": "kubernetes.io/tls",
        "data": serde_json::to_value(&minted_tls.data).unwrap(),
    }))
    .unwrap();
    secrets(&admin, ns)
        .create(&PostParams::default(), &brought)
        .await
        .unwrap();

    let spec = json!({"upstream": {"url": format!("http://{}", upstream.addr)},
                      "serverCertificate": {"secretName": "brought-tls"}});
    apply(&routes(&admin, ns), &route("ha", &[host], spec))
        .await
        .unwrap();
    let r = wait_condition(&routes(&admin, ns), "ha", "Ready", "False", T).await;
    let c = condition(&r, "Ready").unwrap();
    assert_eq!(c.reason, "ServerSecretUnlabelled", "{c:?}");
    assert!(
        c.message.contains(&format!(
            "kubectl label secret -n {ns} brought-tls {}=true",
            names::SERVER_CERTIFICATE_LABEL
        )),
        "{}",
        c.message
    );

    secrets(&admin, ns)
        .patch(
            "brought-tls",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {
                names::SERVER_CERTIFICATE_LABEL: "true"}}})),
        )
        .await
        .unwrap();
    wait_condition(&routes(&admin, ns), "ha", "Ready", "True", T).await;
    admitted(
        &device_client(s.proxy, &device_secret, host),
        "brought/phone",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_refuses_handshakes_and_closes_the_open_websocket_within_2s() {
    let ns = "revoke";
    let host = "revoke.ha.test";
    let (s, admin) = setup(ns).await;
    let upstream = Upstream::start().await;
    let secret = minted(&admin, ns, "tablet", json!({})).await;
    let bystander = minted(&admin, ns, "bystander", json!({})).await;
    served(&admin, ns, "ha", host, upstream.addr).await;
    let serial = status_serial(&ids(&admin, ns).get("tablet").await.unwrap());

    let device = device_client(s.proxy, &secret, host);
    let cookie = admitted(&device, "revoke/tablet")
        .await
        .gate_cookie()
        .unwrap();
    let other = device_client(s.proxy, &bystander, host);
    admitted(&other, "revoke/bystander").await;
    let (mut ws, _) = device
        .websocket("/api/websocket", None)
        .await
        .expect("WebSocket");
    ws_roundtrip(&mut ws, "before").await;
    let (mut other_ws, _) = other
        .websocket("/api/websocket", None)
        .await
        .expect("WebSocket");
    ws_roundtrip(&mut other_ws, "before").await;
    assert_eq!(upstream.open_websockets(), 2);

    let written = Instant::now();
    patch_spec(&ids(&admin, ns), "tablet", json!({"revoked": true}))
        .await
        .unwrap();
    let closed = async {
        let end = ws_next(&mut ws, REVOCATION_BOUND * 3).await;
        (end, written.elapsed())
    };
    let refused_at = async {
        refused(&device, REVOCATION_BOUND * 3).await;
        written.elapsed()
    };
    let ((end, closed_after), refused_after) = tokio::join!(closed, refused_at);
    assert_eq!(end, Ok(None), "the revoked device's WebSocket was closed");
    assert!(
        closed_after <= REVOCATION_BOUND,
        "WebSocket closed {closed_after:?} after the API write (bound {REVOCATION_BOUND:?})"
    );
    assert!(
        refused_after <= REVOCATION_BOUND,
        "handshake refused {refused_after:?} after the API write (bound {REVOCATION_BOUND:?})"
    );
    // Its cookie is dead too; the WebSocket upgrade with it is refused.
    let anonymous = anonymous_client(s.proxy, data(&secret, "ca.crt"), host);
    let with_cookie = anonymous
        .send(common::with_headers(
            common::get("/api/"),
            &[("cookie", &common::cookie_header(&cookie))],
        ))
        .await
        .unwrap();
    assert_eq!(with_cookie.status.as_u16(), 403);
    match anonymous.websocket("/api/websocket", Some(&cookie)).await {
        Err(WsFailure::Status(status)) => assert_eq!(status.as_u16(), 403),
        Err(e) => panic!("expected 403, got {e:?}"),
        Ok(_) => panic!("a revoked identity's cookie opened a WebSocket"),
    }
    // Per identity, never "close everything": the other device's WebSocket lives on.
    ws_roundtrip(&mut other_ws, "after").await;
    admitted(&other, "revoke/bystander").await;
    eventually(
        "the upstream to see one WebSocket",
        T,
        async || match upstream.open_websockets() {
            1 => Ok(()),
            n => Err(format!("{n} open")),
        },
    )
    .await;

    // Status, CRL (signed by the CA, listing the serial), and the Secret is kept.
    let ci = wait_condition(&ids(&admin, ns), "tablet", "Revoked", "True", T).await;
    let ready = condition(&ci, "Ready").unwrap();
    assert_eq!(ready.status, "False", "{ready:?}");
    let crl = wait_on_crl(&admin, OPERATOR_NS, &serial).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crl.pem"), crl_pem(&crl).unwrap()).unwrap();
    std::fs::write(dir.path().join("ca.crt"), data(&secret, "ca.crt")).unwrap();
    let (ok, out) = openssl(
        dir.path(),
        &["crl", "-in", "crl.pem", "-noout", "-CAfile", "ca.crt"],
    );
    assert!(ok && out.contains("verify OK"), "CRL signature: {out}");
    assert!(
        secrets(&admin, ns)
            .get_opt("tablet-client")
            .await
            .unwrap()
            .is_some(),
        "revoking keeps the Secret"
    );

    // Reinstating issues a new certificate (the old serial stays on the CRL).
    patch_spec(&ids(&admin, ns), "tablet", json!({"revoked": false}))
        .await
        .unwrap();
    let ci = eventually("a new serial", T, async || {
        let ci = ids(&admin, ns)
            .get("tablet")
            .await
            .map_err(|e| e.to_string())?;
        let ready = condition(&ci, "Ready").is_some_and(|c| c.status == "True");
        match ci.status.as_ref().and_then(|s| s.serial_number.clone()) {
            Some(new) if new != serial && ready => Ok(ci),
            other => Err(format!("serial {other:?}, ready {ready}")),
        }
    })
    .await;
    let renewed = secrets(&admin, ns).get("tablet-client").await.unwrap();
    admitted(&device_client(s.proxy, &renewed, host), "revoke/tablet").await;
    refused(&device, T).await;
    assert_ne!(status_serial(&ci), serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_identity_releases_its_finalizer_and_the_secret_is_garbage_collected() {
    let ns = "delete";
    let host = "delete.ha.test";
    let (s, admin) = setup(ns).await;
    let upstream = Upstream::start().await;
    let secret = minted(&admin, ns, "watch", json!({})).await;
    served(&admin, ns, "ha", host, upstream.addr).await;
    let serial = status_serial(&ids(&admin, ns).get("watch").await.unwrap());
    let device = device_client(s.proxy, &secret, host);
    admitted(&device, "delete/watch").await;
    wait_garbage_collector(&admin, ns, Duration::from_secs(60)).await;

    ids(&admin, ns)
        .delete("watch", &DeleteParams::default())
        .await
        .unwrap();
    // The finalizer holds the object only until its serial is on the CRL.
    wait_gone(&ids(&admin, ns), "watch", T).await;
    wait_on_crl(&admin, OPERATOR_NS, &serial).await;
    // The kube-controller-manager's garbage collector deletes the owned Secret.
    wait_gone(&secrets(&admin, ns), "watch-client", T).await;
    refused(&device, T).await;

    // Deleting a route takes its server certificate Secret with it.
    routes(&admin, ns)
        .delete("ha", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&routes(&admin, ns), "ha", T).await;
    wait_gone(&secrets(&admin, ns), "ha-server-tls", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_rejects_what_the_schema_forbids_naming_the_field() {
    let ns = "schema";
    let (_, admin) = setup(ns).await;
    let upstream = json!({"upstream": {"url": "http://127.0.0.1:8123"}});
    let identities = ids(&admin, ns);
    let route_api = routes(&admin, ns);
    let cases: Vec<(&str, kube::Error, &[&str])> = vec![
        (
            "keyAlgorithm: DSA",
            apply(
                &identities,
                &identity("dsa", json!({"keyAlgorithm": "DSA"})),
            )
            .await
            .unwrap_err(),
            &[
                "spec.keyAlgorithm",
                "Unsupported value",
                "\"DSA\"",
                "ECDSA-P256",
            ],
        ),
        (
            "pkcs12.profile: Weak",
            apply(
                &identities,
                &identity("weak", json!({"pkcs12": {"profile": "Weak"}})),
            )
            .await
            .unwrap_err(),
            &["spec.pkcs12.profile", "Unsupported value"],
        ),
        (
            "no hosts",
            apply(
                &route_api,
                &json!({"apiVersion": API_VERSION, "kind": "ProtectedRoute",
                    "metadata": {"name": "nohosts"}, "spec": upstream.clone()}),
            )
            .await
            .unwrap_err(),
            &["spec.hosts", "Required value"],
        ),
        (
            "hosts: []",
            apply(&route_api, &route("empty", &[], upstream.clone()))
                .await
                .unwrap_err(),
            &["spec.hosts"],
        ),
        (
            "bypass pathPrefix without /",
            apply(
                &route_api,
                &route(
                    "bypass",
                    &["bypass.schema.test"],
                    json!({"upstream": {"url": "http://127.0.0.1:8123"},
                        "bypass": [{"pathPrefix": "api/webhook/"}]}),
                ),
            )
            .await
            .unwrap_err(),
            &["spec.bypass[0].pathPrefix"],
        ),
        (
            "cookie name without __Host-",
            apply(
                &route_api,
                &route(
                    "cookie",
                    &["cookie.schema.test"],
                    json!({"upstream": {"url": "http://127.0.0.1:8123"},
                        "clientAuth": {"cookieFallback": {"name": "session"}}}),
                ),
            )
            .await
            .unwrap_err(),
            &["spec.clientAuth.cookieFallback.name"],
        ),
        (
            "service port 70000",
            apply(
                &route_api,
                &route(
                    "port",
                    &["port.schema.test"],
                    json!({"upstream": {"service": {"name": "ha", "port": 70000}}}),
                ),
            )
            .await
            .unwrap_err(),
            &["spec.upstream.service.port"],
        ),
    ];
    for (what, error, needles) in cases {
        let status = api_status(&error).unwrap_or_else(|| panic!("{what}: {error}"));
        assert_eq!(
            (status.code, status.reason.as_str()),
            (422, "Invalid"),
            "{what}: {status:?}"
        );
        for needle in needles {
            assert!(
                status.message.contains(needle),
                "{what}: {needle:?} not in {:?}",
                status.message
            );
        }
    }
    // Nothing was stored.
    assert!(
        identities
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        route_api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_reports_what_the_schema_cannot_catch() {
    let ns = "invalid";
    let (s, admin) = setup(ns).await;
    let upstream = Upstream::start().await;
    let url = format!("http://{}", upstream.addr);
    let route_api = routes(&admin, ns);
    let identities = ids(&admin, ns);
    // (route, hosts, spec, reason, words the message must contain)
    let route_cases: [(&str, &str, serde_json::Value, &str, &[&str]); 6] = [
        (
            "bad-ttl",
            "ttl.invalid.test",
            json!({"upstream": {"url": url}, "clientAuth": {"cookieFallback": {"ttl": "5s"}}}),
            "InvalidSpec",
            &["spec.clientAuth.cookieFallback.ttl", "5s"],
        ),
        (
            "url-with-path",
            "path.invalid.test",
            json!({"upstream": {"url": "http://127.0.0.1:8123/lovelace"}}),
            "InvalidSpec",
            &["spec.upstream.url"],
        ),
        (
            "no-service",
            "svc.invalid.test",
            json!({"upstream": {"service": {"name": "home-assistant", "port": 8123}}}),
            "UpstreamServiceMissing",
            &["home-assistant", "spec.upstream.service.name"],
        ),
        (
            "no-secret",
            "secret.invalid.test",
            json!({"upstream": {"url": url}, "serverCertificate": {"secretName": "letsencrypt-ha"}}),
            "ServerSecretMissing",
            &["letsencrypt-ha", "spec.serverCertificate.secretName"],
        ),
        // Standalone-only certificate sources: accepted by the schema, refused here.
        (
            "acme",
            "acme.invalid.test",
            json!({"upstream": {"url": url},
                   "serverCertificate": {"acme": {"email": "me@example.com"}}}),
            "InvalidSpec",
            &["spec.serverCertificate.acme", "cert-manager", "secretName"],
        ),
        (
            "files",
            "files.invalid.test",
            json!({"upstream": {"url": url}, "serverCertificate": {"files":
                   {"certificate": "/ssl/fullchain.pem", "key": "/ssl/privkey.pem"}}}),
            "InvalidSpec",
            &["spec.serverCertificate.files", "secretName"],
        ),
    ];
    for (name, host, spec, _, _) in &route_cases {
        apply(&route_api, &route(name, &[host], spec.clone()))
            .await
            .unwrap();
    }
    let identity_cases: [(&str, serde_json::Value, &str, &[&str]); 3] = [
        (
            "bad-validity",
            // Well-formed (the API server accepts it) but too short.
            json!({"validity": "10m"}),
            "InvalidSpec",
            &["spec.validity", "at least 1h"],
        ),
        (
            "renew-too-late",
            json!({"validity": "30d", "renewBefore": "60d"}),
            "InvalidSpec",
            &["spec.renewBefore"],
        ),
        (
            "no-password",
            json!({"pkcs12": {"passwordSecretRef": {"name": "phone-p12"}}}),
            "PasswordSecretMissing",
            &["phone-p12", "passwordSecretRef"],
        ),
    ];
    for (name, spec, _, _) in &identity_cases {
        apply(&identities, &identity(name, spec.clone()))
            .await
            .unwrap();
    }

    for (name, _, _, reason, words) in &route_cases {
        let r = wait_condition(&route_api, name, "Ready", "False", T).await;
        let c = condition(&r, "Ready").unwrap();
        assert_eq!(c.reason, *reason, "{name}: {c:?}");
        for w in *words {
            assert!(
                c.message.contains(w),
                "{name}: {w:?} not in {:?}",
                c.message
            );
        }
        assert!(
            r.status.unwrap().hosts.is_empty(),
            "{name}: a route that is not ready serves no hosts"
        );
    }
    for (name, _, reason, words) in &identity_cases {
        let ci = wait_condition(&identities, name, "Ready", "False", T).await;
        let c = condition(&ci, "Ready").unwrap();
        assert_eq!(c.reason, *reason, "{name}: {c:?}");
        for w in *words {
            assert!(
                c.message.contains(w),
                "{name}: {w:?} not in {:?}",
                c.message
            );
        }
        let secret = names::identity_secret_name(name);
        assert!(
            secrets(&admin, ns)
                .get_opt(&secret)
                .await
                .unwrap()
                .is_none(),
            "{name}: nothing is minted for an unusable spec"
        );
    }
    // A Warning Event says so too.
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    eventually("Warning InvalidSpec Events", T, async || {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let warned: Vec<String> = list
            .items
            .iter()
            .filter(|e| {
                e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("InvalidSpec")
            })
            .filter_map(|e| e.regarding.as_ref()?.name.clone())
            .collect();
        ["bad-ttl", "bad-validity"]
            .iter()
            .all(|n| warned.iter().any(|w| w == n))
            .then_some(())
            .ok_or_else(|| format!("{warned:?}"))
    })
    .await;

    // The data plane did not take the bad route: the host is unknown to it.
    let fine = minted(&admin, ns, "fine", json!({})).await;
    let probe = device_client(s.proxy, &fine, "ttl.invalid.test")
        .get("/")
        .await;
    assert!(
        probe.as_ref().map_or(true, |r| r.status.as_u16() != 200),
        "a route with an invalid spec was served: {:?}",
        probe.map(|r| r.status)
    );

    // Fixing the spec makes it Ready (a new generation, observed).
    patch_spec(
        &route_api,
        "bad-ttl",
        json!({"clientAuth": {"cookieFallback": {"ttl": "30m"}}}),
    )
    .await
    .unwrap();
    let fixed = wait_condition(&route_api, "bad-ttl", "Ready", "True", T).await;
    assert_eq!(fixed.metadata.generation, Some(2));
    admitted(
        &device_client(s.proxy, &fine, "ttl.invalid.test"),
        "invalid/fine",
    )
    .await;
    patch_spec(&identities, "bad-validity", json!({"validity": "90d"}))
        .await
        .unwrap();
    wait_condition(&identities, "bad-validity", "Ready", "True", T).await;
}

// ───────────────────────────── tests: exclusive control plane ─────────────────────────────

/// The rules of helm/portcullis/templates/rbac.yaml (role `all`), copied: this checks that
/// the code needs no more than the chart grants; the Helm tests check the chart itself.
fn chart_rbac(namespace: &str) -> (ClusterRole, Role) {
    let mut rules = chart_data_plane_rules();
    // What the controller adds (role `all`).
    rules.extend([
        json!({"apiGroups": ["portcullis.dev"], "resources": ["clientidentities"], "verbs": ["patch"]}),
        json!({"apiGroups": ["portcullis.dev"], "resources": ["protectedroutes/status"],
             "verbs": ["patch"]}),
        json!({"apiGroups": ["portcullis.dev"],
             "resources": ["clientidentities/finalizers", "protectedroutes/finalizers"],
             "verbs": ["update"]}),
        json!({"apiGroups": [""], "resources": ["secrets"],
             "verbs": ["get", "list", "watch", "create", "patch"]}),
        json!({"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}),
        json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}),
    ]);
    let cluster_role = serde_json::from_value(json!({
        "metadata": {"name": format!("{namespace}-operator")},
        "rules": rules,
    }))
    .expect("ClusterRole");
    let role = serde_json::from_value(json!({
        "metadata": {"name": "operator", "namespace": namespace},
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": [names::LEASE_NAME], "verbs": ["get", "patch"]},
        ],
    }))
    .expect("Role");
    (cluster_role, role)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_runs_with_a_service_account_bound_to_the_chart_rbac() {
    let (_guard, env, admin) = exclusive().await;
    let (op_ns, account) = ("rbac-system", "portcullis");
    ensure_namespace(&admin, op_ns).await.unwrap();
    let config = env.config().await;
    let operator = service_account_client(&admin, &config, op_ns, account)
        .await
        .unwrap();
    // Before any binding, the API server refuses the ServiceAccount (RBAC is on).
    let denied = Api::<Secret>::all(operator.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_status(&denied).map(|s| s.code), Some(403), "{denied}");

    let (cluster_role, role) = chart_rbac(op_ns);
    let subject = json!([{"kind": "ServiceAccount", "name": account, "namespace": op_ns}]);
    let cr_name = cluster_role.name_any();
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &cluster_role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": cr_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cr_name},
        "subjects": subject,
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    Api::<Role>::namespaced(admin.clone(), op_ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let role_binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "operator", "namespace": op_ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator"},
        "subjects": subject,
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), op_ns)
        .create(&PostParams::default(), &role_binding)
        .await
        .unwrap();
    // Bindings reach the authorizer's cache within a moment.
    let probe = Api::<Secret>::all(operator.clone());
    eventually("the binding to take effect", T, async || {
        probe
            .list(&ListParams::default().limit(1))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    // Still least privilege: no reading other kinds.
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::all(operator.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_status(&pods).map(|s| s.code), Some(403));

    let mut opts = ScenarioOptions::new(op_ns, "rbac-home");
    opts.host = "rbac.ha.test".into();
    let report = scenario(operator, admin.clone(), &opts).await.unwrap();
    println!("scenario under the chart's RBAC: {report:?}");
    assert_eq!(
        report.controller_failures, 0.0,
        "a reconcile failed under the chart's RBAC (see target/tmp/operator-tests.log)"
    );
}

/// What must not change when the operator restarts.
#[derive(Debug, PartialEq)]
struct Minted {
    ca_data: BTreeMap<String, Vec<u8>>,
    /// (name, resourceVersion) of every Secret the operator wrote.
    secret_versions: Vec<(String, String)>,
    /// (identity, serial, the ClientIdentity's spec and status as JSON, less what the data
    /// plane writes there: lastSeen and seen).
    identities: Vec<(String, String, String)>,
    /// resourceVersion of the route (its status).
    route_version: String,
}

async fn minted_state(admin: &Client, op_ns: &str, ns: &str) -> Minted {
    let ca = secrets(admin, op_ns).get(names::CA_SECRET).await.unwrap();
    let ca_data = ca
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let mut secret_versions = Vec::new();
    for (namespace, name) in [
        (op_ns, names::CA_SECRET),
        (op_ns, names::COOKIE_KEYS_SECRET),
        (op_ns, names::CRL_SECRET),
        (ns, "phone-client"),
        (ns, "old-laptop-client"),
        (ns, "ha-server-tls"),
    ] {
        let s = secrets(admin, namespace).get(name).await.unwrap();
        secret_versions.push((name.to_owned(), s.resource_version().unwrap()));
    }
    let mut identities = Vec::new();
    for name in ["phone", "old-laptop"] {
        let ci = ids(admin, ns).get(name).await.unwrap();
        let mut status = ci.status.clone().unwrap_or_default();
        (status.last_seen, status.seen) = (None, Vec::new());
        let written =
            json!({"spec": ci.spec, "status": status, "generation": ci.metadata.generation});
        identities.push((name.to_owned(), status_serial(&ci), written.to_string()));
    }
    let route_version = routes(admin, ns)
        .get("ha")
        .await
        .unwrap()
        .resource_version()
        .unwrap();
    Minted {
        ca_data,
        secret_versions,
        identities,
        route_version,
    }
}

/// Waits until controller `holder` (admin port `controller_admin`) leads and has reconciled
/// both identities and the route, then lets a short observation window pass: "nothing was
/// re-minted" needs time in which it could have been.
async fn settled(client: &Client, op_ns: &str, holder: &str, controller_admin: SocketAddr) {
    let leases = Api::<Lease>::namespaced(client.clone(), op_ns);
    eventually(&format!("{holder} to lead"), T, async || {
        let lease = leases
            .get(names::LEASE_NAME)
            .await
            .map_err(|e| e.to_string())?;
        let h = lease.spec.and_then(|s| s.holder_identity);
        (h.as_deref() == Some(holder))
            .then_some(())
            .ok_or(format!("holder {h:?}"))
    })
    .await;
    eventually("reconciles of 2 identities and 1 route", T, async || {
        let m = metrics(controller_admin).await;
        let sum = |labels| metric_sum(&m, "portcullis_controller_reconciles_total", labels);
        let (i, r) = (
            sum("kind=\"ClientIdentity\""),
            sum("kind=\"ProtectedRoute\""),
        );
        (i >= 2.0 && r >= 1.0)
            .then_some(())
            .ok_or(format!("{i} identity, {r} route reconciles"))
    })
    .await;
    // The observation window: "nothing was re-minted" needs time in which it could have been.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = metrics(controller_admin).await;
    let failures = metric_sum(&m, "portcullis_controller_failures_total", "");
    assert_eq!(failures, 0.0, "reconcile failures after the restart:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_operator_mints_nothing_new() {
    let (_guard, env, admin) = exclusive().await;
    let (op_ns, ns, host) = ("restart-system", "restart-home", "restart.ha.test");
    ensure_namespace(&admin, op_ns).await.unwrap();
    ensure_namespace(&admin, ns).await.unwrap();
    let operators = Operators::new(&env.kubeconfig, op_ns, tmp("operator-restart.log"));
    let upstream = Upstream::start().await;
    let mut op = operators.start("operator-a", "all");
    wait_data_plane(op.admin, T).await;
    let phone = minted(&admin, ns, "phone", json!({})).await;
    minted(
        &admin,
        ns,
        "old-laptop",
        json!({"keyAlgorithm": "RSA-2048"}),
    )
    .await;
    served(&admin, ns, "ha", host, upstream.addr).await;
    admitted(&device_client(op.proxy, &phone, host), "restart-home/phone").await;
    settled(&admin, op_ns, "operator-a", op.admin).await;
    let before = minted_state(&admin, op_ns, ns).await;

    // 1. A graceful restart as a new pod (a rollout): SIGTERM releases the Lease.
    let exit = op.terminate().await;
    assert!(
        exit.success(),
        "SIGTERM exit: {exit:?}\n{}",
        op.log_tail(30)
    );
    let mut op = operators.start("operator-b", "all");
    wait_data_plane(op.admin, T).await;
    settled(&admin, op_ns, "operator-b", op.admin).await;
    assert_eq!(
        minted_state(&admin, op_ns, ns).await,
        before,
        "after SIGTERM + start"
    );
    admitted(&device_client(op.proxy, &phone, host), "restart-home/phone").await;

    // 2. A crash (SIGKILL) and the same pod coming back: it still holds the Lease.
    op.kill().await;
    let mut op = operators.start("operator-b", "all");
    wait_data_plane(op.admin, T).await;
    settled(&admin, op_ns, "operator-b", op.admin).await;
    assert_eq!(
        minted_state(&admin, op_ns, ns).await,
        before,
        "after SIGKILL + start"
    );
    admitted(&device_client(op.proxy, &phone, host), "restart-home/phone").await;
    let exit = op.terminate().await;
    assert!(exit.success(), "{exit:?}");

    // 3. Split roles: a controller and a separate data plane, same state.
    let mut controller = operators.start("controller-c", "controller");
    let mut proxy = operators.start("proxy-c", "proxy");
    wait_data_plane(proxy.admin, T).await;
    settled(&admin, op_ns, "controller-c", controller.admin).await;
    assert_eq!(minted_state(&admin, op_ns, ns).await, before, "split roles");
    let (status, body) = admin_get(proxy.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        !body.contains("portcullis_controller_reconciles_total{"),
        "the proxy role runs no controller"
    );
    let device = device_client(proxy.proxy, &phone, host);
    admitted(&device, "restart-home/phone").await;
    // The data plane follows the controller's writes: revoke through the split pair.
    patch_spec(&ids(&admin, ns), "phone", json!({"revoked": true}))
        .await
        .unwrap();
    refused(&device, T).await;

    // Clean up while a controller runs to release the finalizers.
    for name in ["phone", "old-laptop"] {
        ids(&admin, ns)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone(&ids(&admin, ns), name, T).await;
    }
    assert!(controller.terminate().await.success());
    assert!(proxy.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_claimed_twice_does_not_freeze_the_data_plane() {
    let (_guard, _env, admin) = exclusive().await;
    let (op_ns, first_ns, second_ns) = ("dup-system", "dup-first", "dup-second");
    let host = "dup.ha.test";
    for ns in [op_ns, first_ns, second_ns] {
        ensure_namespace(&admin, ns).await.unwrap();
    }
    let op = InProcessOperator::start(admin.clone(), op_ns, "dup").await;
    wait_data_plane(op.admin, T).await;
    let (first_up, second_up) = (Upstream::start().await, Upstream::start().await);
    let one = minted(&admin, first_ns, "one", json!({})).await;
    served(&admin, first_ns, "ha", host, first_up.addr).await;
    let device_one = device_client(op.proxy, &one, host);
    admitted(&device_one, "dup-first/one").await;

    // Another namespace claims the same host (a typo, or a tenant).
    apply(
        &routes(&admin, second_ns),
        &url_route("ha", &[host], second_up.addr),
    )
    .await
    .unwrap();
    // Wait until the controller has looked at it (whatever it reports about the conflict).
    eventually("the second route's status", T, async || {
        let r = routes(&admin, second_ns)
            .get("ha")
            .await
            .map_err(|e| e.to_string())?;
        let current =
            r.status.as_ref().and_then(|s| s.observed_generation) == r.metadata.generation;
        current
            .then_some(())
            .ok_or_else(|| format!("{:?}", r.status))
    })
    .await;
    // The older route keeps the host...
    admitted(&device_one, "dup-first/one").await;
    assert!(second_up.seen().is_empty(), "the newer route took the host");
    // ...and the data plane keeps following the cluster: a new identity is admitted, a
    // revoked one is locked out.
    let two = minted(&admin, first_ns, "two", json!({})).await;
    admitted(&device_client(op.proxy, &two, host), "dup-first/two").await;
    patch_spec(&ids(&admin, first_ns), "one", json!({"revoked": true}))
        .await
        .unwrap();
    refused(&device_one, REVOCATION_BOUND * 2).await;

    for name in ["one", "two"] {
        ids(&admin, first_ns)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone(&ids(&admin, first_ns), name, T).await;
    }
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_device_certificate_does_not_freeze_the_data_plane() {
    let (_guard, _env, admin) = exclusive().await;
    let (op_ns, ns, host) = ("broken-system", "broken-home", "broken.ha.test");
    for n in [op_ns, ns] {
        ensure_namespace(&admin, n).await.unwrap();
    }
    let op = InProcessOperator::start(admin.clone(), op_ns, "broken").await;
    wait_data_plane(op.admin, T).await;
    let upstream = Upstream::start().await;
    let victim = minted(&admin, ns, "victim", json!({})).await;
    minted(&admin, ns, "broken", json!({})).await;
    served(&admin, ns, "ha", host, upstream.addr).await;
    let device = device_client(op.proxy, &victim, host);
    admitted(&device, "broken-home/victim").await;

    // A user breaks one identity: an unusable spec (so the controller leaves its Secret
    // alone) and a certificate that is PEM but not X.509.
    patch_spec(&ids(&admin, ns), "broken", json!({"validity": "10m"}))
        .await
        .unwrap();
    wait_condition(&ids(&admin, ns), "broken", "Ready", "False", T).await;
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    secrets(&admin, ns)
        .patch(
            "broken-client",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"stringData": {"tls.crt": garbage}})),
        )
        .await
        .unwrap();
    // Every other identity keeps following the cluster.
    patch_spec(&ids(&admin, ns), "victim", json!({"revoked": true}))
        .await
        .unwrap();
    refused(&device, REVOCATION_BOUND * 2).await;
    let fresh = minted(&admin, ns, "fresh", json!({})).await;
    admitted(&device_client(op.proxy, &fresh, host), "broken-home/fresh").await;

    for name in ["victim", "broken", "fresh"] {
        ids(&admin, ns)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone(&ids(&admin, ns), name, T).await;
    }
    op.stop().await.unwrap();
}

/// Sends SIGCONT to the stopped process when dropped (also when the test fails).
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -STOP {pid}");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_leaves_the_data_plane_serving() {
    let (_guard, env, admin) = exclusive().await;
    let (op_ns, ns, host) = ("outage-system", "outage-home", "outage.ha.test");
    for n in [op_ns, ns] {
        ensure_namespace(&admin, n).await.unwrap();
    }
    let op =
        Operators::new(&env.kubeconfig, op_ns, tmp("operator-outage.log")).start("outage", "all");
    wait_data_plane(op.admin, T).await;
    let upstream = Upstream::start().await;
    let phone = minted(&admin, ns, "phone", json!({})).await;
    let laptop = minted(&admin, ns, "laptop", json!({})).await;
    served(&admin, ns, "ha", host, upstream.addr).await;
    let device = device_client(op.proxy, &phone, host);
    admitted(&device, "outage-home/phone").await;
    let (mut ws, _) = device
        .websocket("/api/websocket", None)
        .await
        .expect("WebSocket");

    // The API server, etcd and the controller manager stop answering (SIGSTOP: connections
    // hang rather than fail, the harder case for a client).
    let frozen = Frozen::freeze(env.pid());
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(5) {
        admitted(&device, "outage-home/phone").await;
        admitted(
            &device_client(op.proxy, &laptop, host),
            "outage-home/laptop",
        )
        .await;
        let anonymous = anonymous_client(op.proxy, data(&phone, "ca.crt"), host);
        assert_eq!(anonymous.get("/").await.unwrap().status.as_u16(), 403);
        ws_roundtrip(&mut ws, "during the outage").await;
        assert_eq!(admin_get(op.admin, "/readyz").await.unwrap().0, 200);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(frozen);

    // Back: the operator picks up where it was (watches resume, nothing re-minted).
    let before = status_serial(&ids(&admin, ns).get("phone").await.unwrap());
    patch_spec(&ids(&admin, ns), "phone", json!({"revoked": true}))
        .await
        .unwrap();
    refused(&device, T).await;
    assert_eq!(
        ws_next(&mut ws, T).await,
        Ok(None),
        "the WebSocket is closed"
    );
    admitted(
        &device_client(op.proxy, &laptop, host),
        "outage-home/laptop",
    )
    .await;
    let fresh = minted(&admin, ns, "fresh", json!({})).await;
    admitted(&device_client(op.proxy, &fresh, host), "outage-home/fresh").await;
    let after = secrets(&admin, ns).get("phone-client").await.unwrap();
    assert_eq!(data(&after, "tls.crt"), data(&phone, "tls.crt"));
    assert_eq!(
        status_serial(&ids(&admin, ns).get("phone").await.unwrap()),
        before
    );
    for name in ["phone", "laptop", "fresh"] {
        ids(&admin, ns)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone(&ids(&admin, ns), name, T).await;
    }
    drop(op);
}

// ───────────────────────────── the benchmark ─────────────────────────────

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The numbers behind BENCHMARKS.md `## Operator`; run by `bench/operator.sh`. Its own
/// control plane, the operator binary (`PORTCULLIS_BIN`, e.g. a release build), nothing else
/// running on it. Prints a Markdown table; asserts only that things happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: bench/operator.sh"]
async fn operator_benchmark() {
    let bulk: usize = env_or("BENCH_IDENTITIES", 500);
    let idle_secs: u64 = env_or("BENCH_IDLE_SECS", 30);
    let env = Envtest::start();
    let admin = env.client().await;
    apply_crds(&admin).await.unwrap();
    let (op_ns, ns, bulk_ns, host) = ("bench-system", "bench", "bench-bulk", "bench.ha.test");
    for n in [op_ns, ns, bulk_ns] {
        ensure_namespace(&admin, n).await.unwrap();
    }
    let op =
        Operators::new(&env.kubeconfig, op_ns, tmp("operator-bench.log")).start("bench", "all");
    wait_data_plane(op.admin, T).await;
    let rss_start = op.status_kb("VmRSS");
    let identities = ids(&admin, ns);
    let secret_api = secrets(&admin, ns);

    // 1. Apply → Secret exists (and → Ready), one at a time.
    let (mut to_secret, mut to_ready) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let name = format!("latency-{i}");
        let secret_name = names::identity_secret_name(&name);
        let t0 = Instant::now();
        apply(&identities, &identity(&name, json!({})))
            .await
            .unwrap();
        loop {
            if secret_api.get_opt(&secret_name).await.unwrap().is_some() {
                break;
            }
            assert!(t0.elapsed() < T, "no Secret for {name}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_secret.push(t0.elapsed());
        loop {
            let ci = identities.get(&name).await.unwrap();
            if condition(&ci, "Ready").is_some_and(|c| c.status == "True") {
                break;
            }
            assert!(t0.elapsed() < T, "{name} not Ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_ready.push(t0.elapsed());
    }

    // 2. revoked: true → refused handshake, closed WebSocket.
    let upstream = Upstream::start().await;
    served(&admin, ns, "ha", host, upstream.addr).await;
    let (mut to_refused, mut to_closed) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let name = format!("latency-{i}");
        let secret = secret_api
            .get(&names::identity_secret_name(&name))
            .await
            .unwrap();
        let device = device_client(op.proxy, &secret, host);
        admitted(&device, &format!("{ns}/{name}")).await;
        let (mut ws, _) = device
            .websocket("/api/websocket", None)
            .await
            .expect("WebSocket");
        ws_roundtrip(&mut ws, "ping").await;
        let t0 = Instant::now();
        patch_spec(&identities, &name, json!({"revoked": true}))
            .await
            .unwrap();
        let closed = async {
            assert_eq!(ws_next(&mut ws, T).await, Ok(None));
            t0.elapsed()
        };
        let refused_at = async {
            loop {
                if device.probe().await.is_refused() {
                    return t0.elapsed();
                }
                assert!(t0.elapsed() < T, "never refused");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (c, r) = tokio::join!(closed, refused_at);
        to_closed.push(c);
        to_refused.push(r);
    }

    // 3. Many identities at once (applied 16 at a time, as a GitOps sync would).
    use futures_util::StreamExt;
    let bulk_ids = ids(&admin, bulk_ns);
    let bulk_secrets = secrets(&admin, bulk_ns);
    let bulk_ticks = op.cpu_ticks();
    let t0 = Instant::now();
    futures_util::stream::iter(0..bulk)
        .map(|i| {
            let api = bulk_ids.clone();
            async move {
                apply(&api, &identity(&format!("device-{i:04}"), json!({})))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let applied = t0.elapsed();
    let selector = ListParams::default().labels(names::IDENTITY_LABEL);
    let mut peak_rss = 0;
    loop {
        peak_rss = peak_rss.max(op.status_kb("VmRSS"));
        let n = bulk_secrets
            .list_metadata(&selector)
            .await
            .unwrap()
            .items
            .len();
        if n == bulk {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "{n}/{bulk} Secrets"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_secrets = t0.elapsed();
    loop {
        let list = bulk_ids.list(&ListParams::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|ci| condition(*ci, "Ready").is_some_and(|c| c.status == "True"))
            .count();
        if ready == bulk {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "{ready}/{bulk} Ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_ready = t0.elapsed();
    let bulk_ticks = op.cpu_ticks() - bulk_ticks;
    let rss_after = op.status_kb("VmRSS");
    let hwm = op.status_kb("VmHWM");

    // 4. Idle: no polling loops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let clk_tck: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let before = op.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle_ticks = op.cpu_ticks() - before;
    let idle_ms = idle_ticks as f64 * 1000.0 / clk_tck;
    let bulk_cpu_ms = bulk_ticks as f64 * 1000.0 / clk_tck;
    let rss_idle = op.status_kb("VmRSS");

    let max = |v: &[Duration]| *v.iter().max().unwrap();
    println!("\n| measurement | result |\n| --- | --- |");
    println!(
        "| apply ClientIdentity → its Secret exists (median of {}, max) | **{}** ({}) |",
        to_secret.len(),
        ms(median(to_secret.clone())),
        ms(max(&to_secret))
    );
    println!(
        "| apply ClientIdentity → status Ready=True (median, max) | {} ({}) |",
        ms(median(to_ready.clone())),
        ms(max(&to_ready))
    );
    println!(
        "| `revoked: true` → new handshake refused (median of {}, max) | **{}** ({}) |",
        to_refused.len(),
        ms(median(to_refused.clone())),
        ms(max(&to_refused))
    );
    println!(
        "| `revoked: true` → open WebSocket closed (median of {}, max) | **{}** ({}) |",
        to_closed.len(),
        ms(median(to_closed.clone())),
        ms(max(&to_closed))
    );
    println!(
        "| {bulk} ClientIdentities applied (16 in flight) | {:.1} s |",
        applied.as_secs_f64()
    );
    println!(
        "| … until all {bulk} have their Secret | **{:.1} s** |",
        all_secrets.as_secs_f64()
    );
    println!(
        "| … until all {bulk} are Ready | {:.1} s |",
        all_ready.as_secs_f64()
    );
    println!(
        "| operator CPU for those {bulk} (utime+stime) | {:.1} s ({:.1} ms per identity) |",
        bulk_cpu_ms / 1000.0,
        bulk_cpu_ms / bulk as f64
    );
    println!(
        "| operator RSS: started / after {bulk} / peak (VmHWM) / idle after | {:.1} / {:.1} / {:.1} / {:.1} MiB |",
        rss_start as f64 / 1024.0,
        rss_after.max(peak_rss) as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_idle as f64 / 1024.0
    );
    println!(
        "| operator CPU while idle for {idle_secs} s after that (utime+stime) | **{idle_ms:.0} ms** ({:.3} % of a core) |",
        idle_ms / (idle_secs as f64 * 10.0)
    );
    println!("\noperator binary: {}", operator_binary().display());
}

/// The proxy's snapshot generation (`portcullis_snapshot_generation`).
async fn generation(admin: SocketAddr) -> f64 {
    metric_sum(&metrics(admin).await, "portcullis_snapshot_generation", "")
}

/// Waits until the proxy at `admin` serves a snapshot newer than `before`.
async fn rebuilt(admin: SocketAddr, before: f64) {
    eventually("the data plane to rebuild", T, async || {
        let now = generation(admin).await;
        (now > before)
            .then_some(())
            .ok_or(format!("generation {now}"))
    })
    .await;
}

/// Device lifecycle on the real API server, with split roles so the data plane runs on
/// while the controller is stopped: a renewal keeps the old certificate admitted; the
/// revocation ledger outranks whatever a Secret holds; status writes rebuild nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_the_old_certificate_and_the_ledger_outranks_every_secret() {
    let (_guard, env, admin) = exclusive().await;
    let (op_ns, ns, host) = ("ledger-system", "ledger-home", "ledger.ha.test");
    ensure_namespace(&admin, op_ns).await.unwrap();
    ensure_namespace(&admin, ns).await.unwrap();
    let operators = Operators::new(&env.kubeconfig, op_ns, tmp("operator-ledger.log"));
    let upstream = Upstream::start().await;
    let mut controller = operators.start("ledger-controller", "controller");
    let mut proxy = operators.start("ledger-proxy", "proxy");
    wait_data_plane(proxy.admin, T).await;
    let v1 = minted(&admin, ns, "phone", json!({})).await;
    served(&admin, ns, "ha", host, upstream.addr).await;
    let first = device_client(proxy.proxy, &v1, host);
    admitted(&first, "ledger-home/phone").await;
    let serial1 = status_serial(&ids(&admin, ns).get("phone").await.unwrap());

    // 1. A re-issue (here a spec change) never revokes what the phone holds.
    patch_spec(&ids(&admin, ns), "phone", json!({"commonName": "phone-2"}))
        .await
        .unwrap();
    let ci = eventually("a re-issued certificate", T, async || {
        let ci = ids(&admin, ns)
            .get("phone")
            .await
            .map_err(|e| e.to_string())?;
        match ci.status.as_ref().and_then(|s| s.serial_number.clone()) {
            Some(s) if s != serial1 => Ok(ci),
            other => Err(format!("serial {other:?}")),
        }
    })
    .await;
    let serial2 = status_serial(&ci);
    let previous: Vec<&str> = ci
        .status
        .as_ref()
        .map(|s| {
            s.previous
                .iter()
                .map(|p| p.serial_number.as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(previous, [serial1.as_str()], "status.previous");
    let v2 = secrets(&admin, ns).get("phone-client").await.unwrap();
    let kept = portcullis::pki::inspect_pem(&text(&v2, "previous.crt")).unwrap();
    assert_eq!(kept.serial_hex, serial1, "previous.crt");
    let second = device_client(proxy.proxy, &v2, host);
    admitted(&second, "ledger-home/phone").await;
    admitted(&first, "ledger-home/phone").await;
    let crl = secrets(&admin, op_ns).get(names::CRL_SECRET).await;
    if let Ok(crl) = crl {
        assert!(
            crl_lists(&crl_pem(&crl).unwrap(), &serial1).is_err(),
            "a renewal put the superseded serial on the CRL"
        );
    }

    // 2. Revoking takes every serial of the identity.
    patch_spec(&ids(&admin, ns), "phone", json!({"revoked": true}))
        .await
        .unwrap();
    refused(&first, T).await;
    refused(&second, T).await;
    wait_on_crl(&admin, op_ns, &serial1).await;
    wait_on_crl(&admin, op_ns, &serial2).await;

    // 3. Reinstated while no controller runs: the Secret still holds serial2 (and
    // previous.crt serial1), but the ledger keeps both out.
    assert!(controller.terminate().await.success());
    let before = generation(proxy.admin).await;
    patch_spec(&ids(&admin, ns), "phone", json!({"revoked": false}))
        .await
        .unwrap();
    rebuilt(proxy.admin, before).await;
    assert!(first.probe().await.is_refused(), "serial1 after un-revoke");
    assert!(second.probe().await.is_refused(), "serial2 after un-revoke");

    // 4. A Secret restored from a backup with a revoked certificate is refused too.
    let before = generation(proxy.admin).await;
    let restore = json!({"data": {
        "tls.crt": base64(data(&v1, "tls.crt")),
        "tls.key": base64(data(&v1, "tls.key")),
        "previous.crt": null,
    }});
    secrets(&admin, ns)
        .patch(
            "phone-client",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&restore),
        )
        .await
        .unwrap();
    rebuilt(proxy.admin, before).await;
    assert!(first.probe().await.is_refused(), "restored serial1");

    // 5. The data plane's lastSeen writer reports to status, and that write rebuilds
    // nothing on any data plane.
    let before = generation(proxy.admin).await;
    let sightings = std::sync::Arc::new(portcullis::proxy::Sightings::default());
    let seen_cert = portcullis::snapshot::LiveCert {
        identity: format!("{ns}/phone"),
        serial_hex: serial2.clone(),
        fingerprint: [0; 32],
        labels: Default::default(),
        not_after: std::time::SystemTime::now() + Duration::from_secs(3600),
    };
    sightings.saw(&seen_cert, std::time::SystemTime::now());
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn(portcullis::sources::seen_status::report(
        admin.clone(),
        sightings,
        Duration::from_millis(200),
        stop.clone(),
    ));
    eventually("status.seen to be written", T, async || {
        let ci = ids(&admin, ns)
            .get("phone")
            .await
            .map_err(|e| e.to_string())?;
        let status = ci.status.unwrap_or_default();
        let seen: Vec<&str> = status
            .seen
            .iter()
            .map(|s| s.serial_number.as_str())
            .collect();
        (seen == [serial2.as_str()] && status.last_seen.is_some())
            .then_some(())
            .ok_or(format!("seen {seen:?}, lastSeen {:?}", status.last_seen))
    })
    .await;
    stop.cancel();
    writer.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        generation(proxy.admin).await,
        before,
        "a status write rebuilt the snapshot"
    );

    // 6. The controller back: a fresh certificate; the revoked serials stay out.
    let mut controller = operators.start("ledger-controller-2", "controller");
    let ci = eventually("a fresh certificate", T, async || {
        let ci = ids(&admin, ns)
            .get("phone")
            .await
            .map_err(|e| e.to_string())?;
        let ready = condition(&ci, "Ready").is_some_and(|c| c.status == "True");
        match ci.status.as_ref().and_then(|s| s.serial_number.clone()) {
            Some(s) if s != serial1 && s != serial2 && ready => Ok(ci),
            other => Err(format!("serial {other:?}, ready {ready}")),
        }
    })
    .await;
    assert!(
        ci.status.as_ref().is_some_and(|s| s.previous.is_empty()),
        "revoked certificates are not listed as admitted: {:?}",
        ci.status
    );
    let v3 = secrets(&admin, ns).get("phone-client").await.unwrap();
    admitted(&device_client(proxy.proxy, &v3, host), "ledger-home/phone").await;
    assert!(first.probe().await.is_refused());
    assert!(second.probe().await.is_refused());

    ids(&admin, ns)
        .delete("phone", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&ids(&admin, ns), "phone", T).await;
    assert!(controller.terminate().await.success());
    assert!(proxy.terminate().await.success());
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
