//! Helpers for tests against a real API server (tests/envtest): the CRDs from `crds/`,
//! namespaces, polling with deadlines, resource builders, Secret readers, TLS clients built
//! from a device Secret, the operator in-process or as the real binary, and [`scenario`],
//! the end-to-end run the Helm tests reuse to prove the operator's RBAC.
//!
//! It builds on `tests/common/mod.rs`; include both at the test crate's root:
//! ```ignore
//! mod common;
//! #[path = "common/cluster.rs"]
//! mod cluster;
//! ```
#![allow(dead_code)]

use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use portcullis::controller::names;
use portcullis::operator::Role;
use portcullis::resources::{ClientIdentity, ProtectedRoute};
use portcullis::scope::Scope;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize as _;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::common::{HOST, TestResult, TlsClient, Upstream};

/// Field manager of everything the tests apply.
pub const TEST_MANAGER: &str = "portcullis-tests";
/// API version of both kinds.
pub const API_VERSION: &str = "portcullis.dev/v1alpha1";
/// Header the data plane sets for admitted identities.
pub const IDENTITY_HEADER: &str = "x-portcullis-identity";
/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(25);

// ───────────────────────────── waiting ─────────────────────────────

/// Calls `check` until it returns `Ok`, every 25 ms, for at most `timeout`; panics with
/// `what` and the last `Err` (what was seen instead) when time runs out.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Objects with `status.conditions` and `status.observedGeneration`.
pub trait Conditions {
    fn conditions(&self) -> &[Condition];
    fn observed_generation(&self) -> Option<i64>;
}

impl Conditions for ClientIdentity {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    fn observed_generation(&self) -> Option<i64> {
        self.status.as_ref()?.observed_generation
    }
}

impl Conditions for ProtectedRoute {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    fn observed_generation(&self) -> Option<i64> {
        self.status.as_ref()?.observed_generation
    }
}

/// The condition of `type_`, if present.
pub fn condition<'a, K: Conditions>(obj: &'a K, type_: &str) -> Option<&'a Condition> {
    obj.conditions().iter().find(|c| c.type_ == type_)
}

fn describe_conditions(conditions: &[Condition]) -> String {
    let list: Vec<String> = conditions
        .iter()
        .map(|c| format!("{}={} {} ({})", c.type_, c.status, c.reason, c.message))
        .collect();
    format!("[{}]", list.join("; "))
}

/// Waits until `name` has condition `type_` with `status` (`True`/`False`), describing its
/// current generation (status.observedGeneration and the condition's own), and returns it.
pub async fn wait_condition<K>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> K
where
    K: Conditions + Resource + Clone + DeserializeOwned + Debug,
{
    let what = format!("{name}: {type_}={status}");
    eventually(&what, timeout, async || {
        let obj = api
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("not found")?;
        let generation = obj.meta().generation;
        let current = obj.observed_generation() == generation;
        match condition(&obj, type_) {
            Some(c) if c.status == status && current && c.observed_generation == generation => {
                Ok(obj)
            }
            _ => Err(format!(
                "generation {generation:?}, observed {:?}, conditions {}",
                obj.observed_generation(),
                describe_conditions(obj.conditions())
            )),
        }
    })
    .await
}

/// Waits until the Secret `name` exists and returns it.
pub async fn wait_secret(api: &Api<Secret>, name: &str, timeout: Duration) -> Secret {
    eventually(&format!("Secret {name}"), timeout, async || {
        api.get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_owned())
    })
    .await
}

/// Waits until `name` no longer exists.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    eventually(
        &format!("{name} to be deleted"),
        timeout,
        async || match api.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(obj) => Err(format!(
                "still there: deletionTimestamp {:?}, finalizers {:?}, ownerReferences {:?}",
                obj.meta().deletion_timestamp,
                obj.meta().finalizers,
                obj.meta()
                    .owner_references
                    .iter()
                    .flatten()
                    .map(|o| format!("{}/{}", o.kind, o.name))
                    .collect::<Vec<_>>()
            )),
        },
    )
    .await
}

// ───────────────────────────── the cluster ─────────────────────────────

/// The CRDs checked in under `crds/`.
pub fn repository_crds() -> Vec<CustomResourceDefinition> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/portcullis.yaml");
    let text = std::fs::read_to_string(path).expect("read crds/portcullis.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| CustomResourceDefinition::deserialize(doc).expect("a CRD document"))
        .collect()
}

/// Applies the CRDs from `crds/` (server-side apply) and waits until both are Established
/// and served.
pub async fn apply_crds(admin: &Client) -> TestResult {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let params = PatchParams::apply(TEST_MANAGER).force();
    for crd in repository_crds() {
        let name = crd.metadata.name.clone().expect("CRD name");
        crds.patch(&name, &params, &Patch::Apply(&crd)).await?;
        eventually(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            async || {
                let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
                let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
                let established = conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established
                    .then_some(())
                    .ok_or_else(|| format!("{conditions:?}"))
            },
        )
        .await;
    }
    // Established can precede the discovery of the new kinds by a moment.
    let ids: Api<ClientIdentity> = Api::all(admin.clone());
    let routes: Api<ProtectedRoute> = Api::all(admin.clone());
    eventually(
        "the new kinds to be served",
        Duration::from_secs(30),
        async || {
            let lp = ListParams::default().limit(1);
            ids.list(&lp).await.map_err(|e| e.to_string())?;
            routes.list(&lp).await.map_err(|e| e.to_string())?;
            Ok(())
        },
    )
    .await;
    Ok(())
}

/// Waits until the garbage collector (kube-controller-manager) can resolve the Portcullis
/// kinds, so that Secrets owned by a deleted ClientIdentity or ProtectedRoute are collected.
///
/// The collector refreshes its view of the API every 30 s, so for up to 30 s after the CRDs
/// are installed it cannot map their owner references and backs off on them. In a real
/// cluster the CRDs come long before any device; a test that deletes an owner calls this
/// first. The probe: ConfigMaps owned by a ClientIdentity that does not exist (a fresh one
/// every 2 s, so none has built up backoff); once one is collected, the kinds are known.
pub async fn wait_garbage_collector(admin: &Client, namespace: &str, timeout: Duration) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), namespace);
    let start = Instant::now();
    let mut probes: Vec<String> = Vec::new();
    let mut last = None::<Instant>;
    loop {
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            let n = probes.len();
            let name = format!("gc-probe-{}-{n}", std::process::id());
            let uid = format!("00000000-0000-4000-8000-{:012x}", rand_u48());
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": name, "ownerReferences": [{
                    "apiVersion": API_VERSION, "kind": "ClientIdentity",
                    "name": "gc-probe-owner", "uid": uid,
                }]},
            }))
            .expect("ConfigMap");
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => probes.push(name),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("creating a garbage-collector probe: {e}"),
            }
            last = Some(Instant::now());
        }
        for name in &probes {
            if api.get_opt(name).await.ok().flatten().is_none() {
                for other in &probes {
                    let _ = api.delete(other, &DeleteParams::default()).await;
                }
                return;
            }
        }
        assert!(
            start.elapsed() < timeout,
            "the garbage collector did not learn the Portcullis kinds within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rand_u48() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ u64::from(std::process::id()).rotate_left(24)) & 0xffff_ffff_ffff
}

/// Deletes every ClientIdentity and ProtectedRoute in the cluster, dropping finalizers (no
/// operator needs to run), and waits until they are gone: a clean slate for a test that
/// runs its own operator on a control plane other tests used before.
pub async fn remove_all_portcullis_objects(admin: &Client) -> TestResult {
    let ids: Api<ClientIdentity> = Api::all(admin.clone());
    let routes: Api<ProtectedRoute> = Api::all(admin.clone());
    let unfinalize = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    for ci in ids.list(&ListParams::default()).await?.items {
        let (name, ns) = (
            ci.metadata.name.clone().unwrap_or_default(),
            ci.metadata.namespace.clone().unwrap_or_default(),
        );
        let api: Api<ClientIdentity> = Api::namespaced(admin.clone(), &ns);
        let _ = api.patch(&name, &PatchParams::default(), &unfinalize).await;
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
    for pr in routes.list(&ListParams::default()).await?.items {
        let (name, ns) = (
            pr.metadata.name.clone().unwrap_or_default(),
            pr.metadata.namespace.clone().unwrap_or_default(),
        );
        let api: Api<ProtectedRoute> = Api::namespaced(admin.clone(), &ns);
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
    eventually(
        "no Portcullis objects left",
        Duration::from_secs(30),
        async || {
            let n = ids
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len()
                + routes
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len();
            (n == 0).then_some(()).ok_or(format!("{n} left"))
        },
    )
    .await;
    Ok(())
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(admin: &Client, name: &str) -> TestResult {
    let api: Api<Namespace> = Api::all(admin.clone());
    if api.get_opt(name).await?.is_none() {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Server-side applies `obj` (a full object: apiVersion, kind, metadata.name) as the test
/// field manager.
pub async fn apply<K>(api: &Api<K>, obj: &Value) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let name = obj["metadata"]["name"].as_str().expect("metadata.name");
    api.patch(
        name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Merge-patches `spec` of `name` (e.g. `{"revoked": true}`).
pub async fn patch_spec<K>(api: &Api<K>, name: &str, spec: Value) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
}

/// A ClientIdentity object.
pub fn identity(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClientIdentity",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// A ProtectedRoute object for `hosts` with `spec` merged in (e.g. `{"upstream": …}`).
pub fn route(name: &str, hosts: &[&str], spec: Value) -> Value {
    let mut full = json!({ "hosts": hosts });
    for (k, v) in spec.as_object().expect("spec is an object") {
        full[k] = v.clone();
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "ProtectedRoute",
        "metadata": {"name": name},
        "spec": full,
    })
}

/// A ProtectedRoute for `hosts` to `http://<upstream>`.
pub fn url_route(name: &str, hosts: &[&str], upstream: SocketAddr) -> Value {
    route(
        name,
        hosts,
        json!({"upstream": {"url": format!("http://{upstream}")}}),
    )
}

/// The kube API error's status (e.g. a 422 from schema validation), if that is what it is.
pub fn api_status(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

// ───────────────────────────── Secrets and clients ─────────────────────────────

/// `key` of `secret` (panics naming it when absent).
pub fn data<'a>(secret: &'a Secret, key: &str) -> &'a [u8] {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .unwrap_or_else(|| {
            panic!(
                "Secret {:?} has no key {key}",
                secret.metadata.name.as_deref()
            )
        })
}

/// `key` of `secret` as UTF-8.
pub fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(data(secret, key).to_vec()).expect("UTF-8 Secret value")
}

/// A TLS client for the data plane at `addr` presenting the device certificate of an
/// identity Secret (`tls.crt`, `tls.key`), trusting its `ca.crt`, SNI `host`.
pub fn device_client(addr: SocketAddr, secret: &Secret, host: &str) -> TlsClient {
    let cert = CertificateDer::from_pem_slice(data(secret, names::TLS_CRT)).expect("tls.crt");
    let key = match PrivateKeyDer::from_pem_slice(data(secret, names::TLS_KEY)).expect("tls.key") {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        other => panic!("tls.key is not PKCS#8: {other:?}"),
    };
    TlsClient {
        cert: Some((cert.to_vec(), key)),
        ..anonymous_client(addr, data(secret, names::CA_CRT), host)
    }
}

/// A TLS client without a certificate, trusting the CA in `ca_pem`.
pub fn anonymous_client(addr: SocketAddr, ca_pem: &[u8], host: &str) -> TlsClient {
    let roots = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("CA PEM");
    TlsClient {
        addr,
        roots,
        cert: None,
        sni: host.to_owned(),
        alpn: vec![b"http/1.1".to_vec()],
        tls12_only: false,
        resuming: None,
    }
}

/// Runs `openssl args…` in `dir`: success and stdout + stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI must be installed");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Whether `openssl crl -text` lists `serial_hex` in `crl_pem`.
pub fn crl_lists(crl_pem: &[u8], serial_hex: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("crl.pem"), crl_pem).map_err(|e| e.to_string())?;
    let (ok, text) = openssl(dir.path(), &["crl", "-in", "crl.pem", "-noout", "-text"]);
    let line = format!("Serial Number: {}", serial_hex.to_uppercase());
    if ok && text.contains(&line) {
        Ok(())
    } else {
        Err(format!("{line:?} not in: {text}"))
    }
}

/// A free loopback port (bound, then released: the caller binds it again soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ───────────────────────────── the operator ─────────────────────────────

/// `GET path` on the operator's plain-HTTP admin port: status and body.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let io = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let bytes = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

/// Waits until the data plane reports ready (`/readyz` 200: it has a snapshot).
pub async fn wait_data_plane(admin: SocketAddr, timeout: Duration) {
    eventually(
        "the data plane to be ready",
        timeout,
        async || match admin_get(admin, "/readyz").await? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        },
    )
    .await
}

/// The sum of every sample of metric `name` (OpenMetrics text; counters end in `_total`)
/// whose labels contain `labels` (e.g. `kind="ClientIdentity"`; empty: all).
pub fn metric_sum(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/metrics` of the operator at `admin`.
pub async fn metrics(admin: SocketAddr) -> String {
    match admin_get(admin, "/metrics").await {
        Ok((200, body)) => body,
        other => panic!("/metrics: {other:?}"),
    }
}

/// Whose credentials the operator runs with: one account for `--role all`, or the chart's
/// two (the controller's and the proxy's) for the split workloads.
pub enum Credentials {
    Combined(Client),
    Split { controller: Client, proxy: Client },
}

impl From<Client> for Credentials {
    fn from(client: Client) -> Self {
        Credentials::Combined(client)
    }
}

/// `portcullis::operator::run` on the current runtime (role `all`, or a controller and a
/// proxy with their own credentials), the data plane and admin ports on free loopback
/// ports.
pub struct InProcessOperator {
    pub proxy: SocketAddr,
    /// The data plane's PROXY protocol port (`--proxy-protocol-listen`).
    pub proxy_protocol: SocketAddr,
    /// The data plane's admin port (readiness, its metrics).
    pub admin: SocketAddr,
    /// The controller's admin port (its metrics); `admin` when combined.
    pub controller_admin: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<portcullis::Result<()>>>,
}

impl InProcessOperator {
    pub async fn start(client: Client, namespace: &str, pod_name: &str) -> Self {
        Self::launch(
            client.into(),
            namespace,
            pod_name,
            Scope::Cluster,
            portcullis::resources::Instance::default(),
            names::CA_SECRET,
        )
        .await
    }

    /// [`InProcessOperator::start`] as release `instance`, with CA Secret `ca_secret`.
    pub async fn start_as(
        client: Client,
        namespace: &str,
        pod_name: &str,
        instance: portcullis::resources::Instance,
        ca_secret: &str,
    ) -> Self {
        Self::launch(
            client.into(),
            namespace,
            pod_name,
            Scope::Cluster,
            instance,
            ca_secret,
        )
        .await
    }

    /// [`InProcessOperator::start`] with `credentials` and watching `scope`.
    pub async fn start_with(
        credentials: Credentials,
        namespace: &str,
        pod_name: &str,
        scope: Scope,
    ) -> Self {
        let instance = portcullis::resources::Instance::default();
        Self::launch(
            credentials,
            namespace,
            pod_name,
            scope,
            instance,
            names::CA_SECRET,
        )
        .await
    }

    async fn launch(
        credentials: Credentials,
        namespace: &str,
        pod_name: &str,
        scope: Scope,
        instance: portcullis::resources::Instance,
        ca_secret: &str,
    ) -> Self {
        let stop = CancellationToken::new();
        let options = async |role, listeners: Option<(TcpListener, TcpListener)>| {
            let (listener, proxy_protocol_listener) = listeners.unzip();
            let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
            let addr = admin.local_addr().expect("addr");
            let opts = portcullis::operator::Options {
                role,
                namespace: namespace.to_owned(),
                ca_secret: ca_secret.to_owned(),
                pod_name: pod_name.to_owned(),
                instance: instance.clone(),
                listener,
                proxy_protocol_listener,
                scope: scope.clone(),
                admin,
                seen_flush: portcullis::proxy::seen::FLUSH_EVERY,
                settings: portcullis::proxy::Settings::default(),
            };
            (opts, addr)
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = listener.local_addr().expect("addr");
        let proxied = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind PROXY port");
        let proxy_protocol = proxied.local_addr().expect("addr");
        let listeners = Some((listener, proxied));
        let run =
            |client, opts| tokio::spawn(portcullis::operator::run(client, opts, stop.clone()));
        match credentials {
            Credentials::Combined(client) => {
                let (opts, admin) = options(Role::All, listeners).await;
                InProcessOperator {
                    proxy,
                    proxy_protocol,
                    admin,
                    controller_admin: admin,
                    tasks: vec![run(client, opts)],
                    stop: stop.clone(),
                }
            }
            Credentials::Split {
                controller,
                proxy: proxy_client,
            } => {
                let (c_opts, controller_admin) = options(Role::Controller, None).await;
                let (p_opts, admin) = options(Role::Proxy, listeners).await;
                InProcessOperator {
                    proxy,
                    proxy_protocol,
                    admin,
                    controller_admin,
                    tasks: vec![run(controller, c_opts), run(proxy_client, p_opts)],
                    stop: stop.clone(),
                }
            }
        }
    }

    /// Shuts it down (releasing the Lease) and waits for it.
    pub async fn stop(mut self) -> TestResult {
        self.stop.cancel();
        for task in std::mem::take(&mut self.tasks) {
            tokio::time::timeout(Duration::from_secs(30), task).await???;
        }
        Ok(())
    }
}

impl Drop for InProcessOperator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The real `portcullis operator` binary (`PORTCULLIS_BIN`, else the one cargo built for
/// this test), logging to a file; killed when dropped.
pub struct OperatorProcess {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

/// How to start [`OperatorProcess`].
pub struct OperatorArgs<'a> {
    pub kubeconfig: &'a Path,
    /// `--namespace`.
    pub namespace: &'a str,
    /// `--pod-name` (the Lease holder identity).
    pub pod_name: &'a str,
    /// `--role`: `all`, `controller` or `proxy`.
    pub role: &'a str,
    /// stderr goes here (appended).
    pub log: &'a Path,
}

/// Starts the [`OperatorProcess`]es of one test: one `--namespace`, one log file that they
/// all append to (removed here first, so it holds this run only).
pub struct Operators<'a> {
    kubeconfig: &'a Path,
    namespace: &'a str,
    log: PathBuf,
}

impl<'a> Operators<'a> {
    pub fn new(kubeconfig: &'a Path, namespace: &'a str, log: PathBuf) -> Self {
        let _ = std::fs::remove_file(&log);
        Operators {
            kubeconfig,
            namespace,
            log,
        }
    }

    /// `--pod-name pod_name --role role`.
    pub fn start(&self, pod_name: &str, role: &str) -> OperatorProcess {
        OperatorProcess::spawn(OperatorArgs {
            kubeconfig: self.kubeconfig,
            namespace: self.namespace,
            pod_name,
            role,
            log: &self.log,
        })
    }
}

/// The operator binary the tests run.
pub fn operator_binary() -> PathBuf {
    std::env::var_os("PORTCULLIS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_portcullis")))
}

impl OperatorProcess {
    pub fn spawn(args: OperatorArgs<'_>) -> Self {
        let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.log)
            .expect("operator log file");
        let child = Command::new(operator_binary())
            .arg("operator")
            .args(["--role", args.role, "--namespace", args.namespace])
            .args(["--pod-name", args.pod_name])
            .arg(format!("--listen={proxy}"))
            .arg(format!("--admin-listen={admin}"))
            .env("KUBECONFIG", args.kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the portcullis binary");
        OperatorProcess {
            child,
            proxy,
            admin,
            log: args.log.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (a graceful stop: connections drain, the Lease is released), then waits.
    pub async fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {}", self.pid());
        self.wait(Duration::from_secs(30)).await
    }

    /// SIGKILL (a crash: nothing is released), then waits.
    pub async fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.wait(Duration::from_secs(10)).await
    }

    async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let log = self.log.clone();
        eventually("the operator to exit", timeout, async || {
            self.child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("still running; log {}", log.display()))
        })
        .await
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `utime + stime` of the process so far, in clock ticks (`/proc/PID/stat`).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name (which may contain spaces) start at field 3.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields[11].parse().expect("utime");
        let stime: u64 = fields[12].parse().expect("stime");
        utime + stime
    }

    /// `field` of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ───────────────────────────── RBAC ─────────────────────────────

/// A client authenticating as ServiceAccount `namespace/name` (created when absent) with a
/// fresh token from the TokenRequest API; `config` is the admin's (server and CA).
pub async fn service_account_client(
    admin: &Client,
    config: &kube::Config,
    namespace: &str,
    name: &str,
) -> TestResult<Client> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    ensure_namespace(admin, namespace).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    if accounts.get_opt(name).await?.is_none() {
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        accounts.create(&PostParams::default(), &sa).await?;
    }
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }))?;
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .ok_or("TokenRequest without status")?
        .token;
    let mut config = config.clone();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Ok(Client::try_from(config)?)
}

// ───────────────────────────── the scenario ─────────────────────────────

/// Where [`scenario`] runs. Namespaces are created when absent.
#[derive(Clone, Debug)]
pub struct ScenarioOptions {
    /// The operator's namespace (CA, cookie keys, CRL, Lease).
    pub operator_namespace: String,
    /// Where the ClientIdentity and ProtectedRoute are applied.
    pub namespace: String,
    /// The route's host (SNI); must be unique in the cluster.
    pub host: String,
    /// Longest wait for each step.
    pub timeout: Duration,
    /// The namespaces the operator watches (`namespace` must be one of them).
    pub scope: Scope,
}

impl ScenarioOptions {
    pub fn new(operator_namespace: &str, namespace: &str) -> Self {
        ScenarioOptions {
            operator_namespace: operator_namespace.to_owned(),
            namespace: namespace.to_owned(),
            host: HOST.to_owned(),
            timeout: Duration::from_secs(30),
            scope: Scope::Cluster,
        }
    }
}

/// What [`scenario`] measured and saw.
#[derive(Debug)]
pub struct ScenarioReport {
    /// From applying the ClientIdentity to its Secret existing.
    pub secret_after: Duration,
    /// From the `revoked: true` write to the first refused handshake.
    pub refused_after: Duration,
    /// The identity's certificate serial.
    pub serial: String,
    /// Events the controller published in the namespace (reason list).
    pub event_reasons: Vec<String>,
    /// `portcullis_controller_failures_total` at the end (0 unless an API call failed,
    /// e.g. for lack of a permission; the log says which).
    pub controller_failures: f64,
}

/// The operator's whole job once, end to end, with the operator running **in-process with
/// `operator`'s credentials** (e.g. a ServiceAccount bound by the Helm chart's RBAC) while
/// `admin` plays the user. Proves every API call the operator makes is permitted:
///
/// 1. CRDs applied (admin); the operator starts: Lease, CA and cookie-key Secrets, the data
///    plane lists and watches (ready = every watch listed).
/// 2. A ClientIdentity → its `<name>-client` Secret with the five keys and an owner
///    reference; status Ready=True with serial and fingerprint; an `Issued` Event.
/// 3. A ProtectedRoute (url upstream) → Ready=True; a request with the device certificate
///    reaches the upstream with `X-Portcullis-Identity: <ns>/<name>`; without one → 403.
/// 4. `revoked: true` → the handshake is refused, the serial is on the CRL Secret, the
///    Revoked condition is set.
/// 5. Delete → the finalizer is released, the Secret is garbage-collected.
///
/// Panics (with what was seen) when a step does not happen within `opts.timeout`; the
/// operator is stopped before returning.
pub async fn scenario(
    operator: impl Into<Credentials>,
    admin: Client,
    opts: &ScenarioOptions,
) -> TestResult<ScenarioReport> {
    let t = opts.timeout;
    let ns = opts.namespace.as_str();
    apply_crds(&admin).await?;
    ensure_namespace(&admin, &opts.operator_namespace).await?;
    ensure_namespace(&admin, ns).await?;
    let upstream = Upstream::start().await;
    let op = InProcessOperator::start_with(
        operator.into(),
        &opts.operator_namespace,
        "scenario",
        opts.scope.clone(),
    )
    .await;
    let failures = async |op: &InProcessOperator| {
        metric_sum(
            &metrics(op.controller_admin).await,
            "portcullis_controller_failures_total",
            "",
        )
    };
    wait_data_plane(op.admin, t).await;

    let leases: Api<Lease> = Api::namespaced(admin.clone(), &opts.operator_namespace);
    eventually("the controller to hold the Lease", t, async || {
        let lease = leases
            .get_opt(names::LEASE_NAME)
            .await
            .map_err(|e| e.to_string())?;
        let holder = lease.and_then(|l| l.spec?.holder_identity);
        (holder.as_deref() == Some("scenario"))
            .then_some(())
            .ok_or_else(|| format!("holder {holder:?}"))
    })
    .await;

    // 2. An identity.
    let name = "scenario-device";
    let ids: Api<ClientIdentity> = Api::namespaced(admin.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let applied = Instant::now();
    apply(&ids, &identity(name, json!({}))).await?;
    let secret_name = names::identity_secret_name(name);
    let secret = wait_secret(&secrets, &secret_name, t).await;
    let secret_after = applied.elapsed();
    for key in [
        names::TLS_CRT,
        names::TLS_KEY,
        names::CA_CRT,
        names::KEYSTORE_P12,
        names::KEYSTORE_PASSWORD,
    ] {
        assert!(!data(&secret, key).is_empty(), "{secret_name}: {key} empty");
    }
    let ci = wait_condition(&ids, name, "Ready", "True", t).await;
    let owner = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .ok_or("the Secret has no controller owner reference")?;
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("ClientIdentity", ci.metadata.uid.as_ref())
    );
    let status = ci.status.clone().ok_or("status")?;
    let serial = status.serial_number.clone().ok_or("status.serialNumber")?;
    assert!(status.fingerprint_sha256.is_some(), "{status:?}");

    // 3. A route and a request through the data plane.
    let routes: Api<ProtectedRoute> = Api::namespaced(admin.clone(), ns);
    apply(
        &routes,
        &url_route("scenario-route", &[&opts.host], upstream.addr),
    )
    .await?;
    wait_condition(&routes, "scenario-route", "Ready", "True", t).await;
    let device = device_client(op.proxy, &secret, &opts.host);
    let expected = format!("{ns}/{name}");
    eventually("the device to be admitted", t, async || {
        let resp = device.get("/scenario").await.map_err(|e| e.to_string())?;
        let seen = (resp.status.as_u16() == 200).then(|| resp.echo());
        match seen.as_ref().and_then(|e| e.header(IDENTITY_HEADER)) {
            Some(id) if id == expected => Ok(()),
            _ => Err(format!("{} {}", resp.status, resp.text())),
        }
    })
    .await;
    let anonymous = anonymous_client(op.proxy, data(&secret, names::CA_CRT), &opts.host);
    let resp = anonymous.get("/scenario").await?;
    assert_eq!(resp.status.as_u16(), 403, "{}", resp.text());

    // 4. Revoke.
    let revoked_at = Instant::now();
    patch_spec(&ids, name, json!({"revoked": true})).await?;
    eventually(
        "the revoked device to be refused",
        t,
        async || match device.probe().await {
            o if o.is_refused() => Ok(()),
            o => Err(format!("{o:?}")),
        },
    )
    .await;
    let refused_after = revoked_at.elapsed();
    let crl: Api<Secret> = Api::namespaced(admin.clone(), &opts.operator_namespace);
    eventually("the serial on the CRL", t, async || {
        let s = crl
            .get_opt(names::CRL_SECRET)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no CRL Secret")?;
        let pem = s
            .data
            .as_ref()
            .and_then(|d| d.get(names::CRL_KEY))
            .ok_or("no crl.pem")?;
        crl_lists(&pem.0, &serial)
    })
    .await;
    wait_condition(&ids, name, "Revoked", "True", t).await;

    // Events (events.k8s.io) for what a user should notice.
    let event_reasons = eventually("an Issued Event", t, async || {
        let reasons = event_reasons(&admin, ns, name).await?;
        reasons
            .iter()
            .any(|r| r == "Issued")
            .then(|| reasons.clone())
            .ok_or_else(|| format!("{reasons:?}"))
    })
    .await;

    // 5. Delete: the finalizer goes, then the Secret (garbage collector).
    wait_garbage_collector(&admin, ns, Duration::from_secs(60)).await;
    ids.delete(name, &DeleteParams::default()).await?;
    wait_gone(&ids, name, t).await;
    wait_gone(&secrets, &secret_name, t).await;
    routes
        .delete("scenario-route", &DeleteParams::default())
        .await?;
    wait_gone(&routes, "scenario-route", t).await;

    let controller_failures = failures(&op).await;
    op.stop().await?;
    Ok(ScenarioReport {
        secret_after,
        refused_after,
        serial,
        event_reasons,
        controller_failures,
    })
}

/// The reasons of the Events (events.k8s.io) about object `name` in `ns`.
pub async fn event_reasons(admin: &Client, ns: &str, name: &str) -> Result<Vec<String>, String> {
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    let list = events
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason.clone())
        .collect())
}

/// The ClusterRole rules of helm/portcullis/templates/rbac.yaml that every data plane gets
/// (roles `all` and `proxy`), copied: the RBAC tests check that the code needs no more than
/// the chart grants; tests/helm.rs checks the chart renders them.
pub fn chart_data_plane_rules() -> Vec<Value> {
    vec![
        json!({"apiGroups": ["portcullis.dev"], "resources": ["clientidentities", "protectedroutes"],
               "verbs": ["list", "watch"]}),
        json!({"apiGroups": ["portcullis.dev"], "resources": ["clientidentities"], "verbs": ["get"]}),
        json!({"apiGroups": ["portcullis.dev"], "resources": ["clientidentities/status"],
               "verbs": ["patch"]}),
        json!({"apiGroups": ["portcullis.dev"], "resources": ["enrollments"],
               "verbs": ["list", "delete"]}),
        json!({"apiGroups": ["portcullis.dev"], "resources": ["enrollments/status"],
               "verbs": ["update"]}),
    ]
}
