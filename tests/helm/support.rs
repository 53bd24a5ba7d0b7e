//! Support for tests/helm.rs: the Helm CLI (installed from the Go module proxy by
//! `install-helm.sh`, cached under target/), rendering, server-side apply of rendered
//! manifests with the kube client (what `kubectl apply --server-side` does), a kubeconfig
//! for a ServiceAccount token, the operator binary as a child process, and the operator's
//! end-to-end scenario (identity minted, route ready, identity revoked).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
    ValidationDirective,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{self, Scope};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::{Value, json};

/// Release name and namespace every test installs as (the operator namespace).
pub const RELEASE: &str = "portcullis";
pub const NAMESPACE: &str = "portcullis";
/// Field manager of the test's applies (as `helm`/`kubectl` would be).
pub const MANAGER: &str = "helm-test";

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    manifest_dir().join("helm/portcullis")
}

/// The Helm binary: `go install helm.sh/helm/v3/cmd/helm@…` through the Go module proxy
/// on first use (minutes, cold), then cached under target/helm/. Prints how long it took.
pub fn helm() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new(manifest_dir().join("tests/helm/install-helm.sh"))
            .env("CARGO_TARGET_DIR", manifest_dir().join("target"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/helm/install-helm.sh (needs Go and the Go module proxy)");
        assert!(out.status.success(), "tests/helm/install-helm.sh failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("install-helm.sh prints the path")
                .trim(),
        );
        eprintln!(
            "helm: {} ready after {:.1?}",
            path.display(),
            started.elapsed()
        );
        path
    })
}

/// `helm ARGS…`: stdout on success, stderr (with stdout) on failure.
pub fn run_helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm())
        .args(args)
        // No user Helm config or repositories leak in.
        .env(
            "HELM_CONFIG_HOME",
            manifest_dir().join("target/helm/config"),
        )
        .env("HELM_CACHE_HOME", manifest_dir().join("target/helm/cache"))
        .env("HELM_DATA_HOME", manifest_dir().join("target/helm/data"))
        .output()
        .map_err(|e| format!("running helm: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            stdout
        ))
    }
}

/// `helm template portcullis helm/portcullis -n portcullis --include-crds EXTRA…`.
pub fn template(extra: &[&str]) -> Result<String, String> {
    template_in(NAMESPACE, extra)
}

/// [`template`] into namespace `ns`.
pub fn template_in(ns: &str, extra: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        ns,
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    run_helm(&args)
}

/// `helm lint --strict helm/portcullis EXTRA…`.
pub fn lint(extra: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_helm(&args)
}

/// The documents of a multi-document YAML stream, as JSON (empty documents dropped).
pub fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML as JSON"))
        .collect()
}

/// The one document of `kind` (and `name`, if given).
pub fn find<'a>(docs: &'a [Value], kind: &str, name: Option<&str>) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
}

pub fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Polls `f` every 200 ms until it yields a value or `timeout` passes.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Server-side applies every document (CRDs first, then waits until they are Established,
/// then the rest into their namespaces, created when absent) — `kubectl apply
/// --server-side --force-conflicts -f` with the kube client.
pub async fn apply(client: &Client, docs: &[Value]) -> Result<(), String> {
    let (crds, rest): (Vec<&Value>, Vec<&Value>) = docs
        .iter()
        .partition(|d| d["kind"] == "CustomResourceDefinition");
    for crd in &crds {
        apply_one(client, crd).await?;
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in &crds {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            async || {
                let crd = api.get_opt(&name).await.ok()??;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await?;
    }
    let namespaces: BTreeSet<&str> = rest
        .iter()
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    for ns in namespaces {
        ensure_namespace(client, ns).await?;
    }
    for doc in rest {
        apply_retrying(client, doc).await?;
    }
    Ok(())
}

/// [`apply_one`], retrying for a few seconds: a CRD just created or replaced takes a moment
/// to be discovered and served with its new schema.
pub async fn apply_retrying(client: &Client, doc: &Value) -> Result<(), String> {
    let mut last = String::new();
    let ok = wait_for(
        "apply",
        Duration::from_secs(15),
        async || match apply_one(client, doc).await {
            Ok(()) => Some(()),
            Err(e) => {
                last = e;
                None
            }
        },
    )
    .await;
    ok.map_err(|_| last.clone())
}

/// Server-side apply of one object with strict field validation (kubectl's default): an
/// undeclared field, a wrong type or an unknown kind is an error naming it.
pub async fn apply_one(client: &Client, doc: &Value) -> Result<(), String> {
    let obj: DynamicObject =
        serde_json::from_value(doc.clone()).map_err(|e| format!("not an object: {e}"))?;
    let types = obj
        .types
        .as_ref()
        .ok_or("a document has no apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(types).map_err(|e| e.to_string())?;
    let what = format!("{} {}", types.kind, obj.name_any());
    let (ar, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{what}: the API server does not serve this kind: {e}"))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj.namespace().ok_or(format!("{what} has no namespace"))?;
            Api::namespaced_with(client.clone(), &ns, &ar)
        }
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let mut params = PatchParams::apply(MANAGER).force();
    params.field_validation = Some(ValidationDirective::Strict);
    api.patch(&obj.name_any(), &params, &Patch::Apply(&obj))
        .await
        .map_err(|e| format!("applying {what}: {e}"))?;
    Ok(())
}

pub async fn ensure_namespace(client: &Client, ns: &str) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    match api.create(&PostParams::default(), &n).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(format!("creating namespace {ns}: {e}")),
    }
}

/// A kubeconfig for the ServiceAccount `ns/name`: same server and CA as the admin one,
/// authenticated by a token from the TokenRequest API.
pub async fn service_account_kubeconfig(
    admin_kubeconfig: &Path,
    admin: &Client,
    ns: &str,
    name: &str,
    out: &Path,
) -> PathBuf {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}
    }))
    .unwrap();
    let token = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("TokenRequest for the chart's ServiceAccount")
        .status
        .expect("TokenRequest status")
        .token;
    let admin_kc = Kubeconfig::read_from(admin_kubeconfig).expect("admin kubeconfig");
    let cluster = admin_kc.clusters[0].cluster.clone().expect("a cluster");
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {
            "server": cluster.server,
            "certificate-authority-data": cluster.certificate_authority_data,
        }}],
        "contexts": [{"name": "sa", "context": {"cluster": "envtest", "user": "sa", "namespace": ns}}],
        "current-context": "sa",
        "users": [{"name": "sa", "user": {"token": token}}],
    });
    std::fs::write(out, serde_yaml::to_string(&kubeconfig).unwrap()).expect("write kubeconfig");
    out.to_owned()
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("usable kubeconfig");
    Client::try_from(config).expect("kube client")
}

/// `portcullis operator` as a child process, authenticated by `kubeconfig`, logging to a
/// file. Stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(kubeconfig: &Path, namespace: &str, pod_name: &str, log: &Path) -> Operator {
        let file = std::fs::File::create(log).expect("operator log file");
        // PORTCULLIS_BIN runs another build, e.g. the static one from `make static`.
        let bin = std::env::var_os("PORTCULLIS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_portcullis")));
        let child = Command::new(bin)
            .args(["operator", "--role", "all", "--namespace", namespace])
            // Loopback, free ports: nothing here is reachable from outside the machine.
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", pod_name)
            .env("RUST_LOG", "info,portcullis=debug")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start portcullis operator");
        Operator {
            child,
            log: log.to_owned(),
        }
    }

    /// Its log so far (for failure messages and assertions).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops it the way Kubernetes stops a pod (SIGTERM: it releases the Lease), waiting
    /// up to 12 s before SIGKILL.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..120 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("portcullis.dev", "v1alpha1", kind),
        plural,
    )
}

pub fn identities(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &resource("ClientIdentity", "clientidentities"),
    )
}

pub fn routes(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &resource("ProtectedRoute", "protectedroutes"),
    )
}

/// `(status, reason)` of condition `type_` in an object's status.
pub fn condition(obj: &DynamicObject, type_: &str) -> Option<(String, String)> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// What the scenario observed.
#[derive(Debug)]
pub struct Observed {
    /// The minted identity's serial (hex).
    pub serial: String,
    /// The CA certificate (PEM) the identity's Secret carries.
    pub ca_crt: Vec<u8>,
}

/// The operator's end-to-end scenario, driven as a user would (with `user`, an admin
/// client) against an operator already running with its own credentials:
/// 1. a Service `home-assistant:8123`, a ClientIdentity and a ProtectedRoute for it in
///    namespace `apps_ns`;
/// 2. the identity is minted: `<name>-client` holds tls.crt, tls.key, ca.crt, keystore.p12
///    and its password, and the identity is Ready with a serial;
/// 3. the route is Ready, admits 1 identity, and has its server certificate Secret;
/// 4. revoking the identity: Revoked=True, its serial on the CRL ledger in the operator
///    namespace, and the route admits 0.
///
/// Each step waits at most `step`. Errors name the step and what was last seen.
pub async fn scenario(
    user: &Client,
    operator_ns: &str,
    apps_ns: &str,
    identity: &str,
    step: Duration,
) -> Result<Observed, String> {
    ensure_namespace(user, apps_ns).await?;
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(user.clone(), apps_ns);
    let svc = serde_json::from_value(json!({
        "metadata": {"name": "home-assistant"},
        "spec": {"ports": [{"name": "http", "port": 8123}]}
    }))
    .unwrap();
    match services.create(&PostParams::default(), &svc).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(format!("creating Service home-assistant: {e}")),
    }
    let ids = identities(user, apps_ns);
    let ci: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "ClientIdentity",
        "metadata": {"name": identity, "labels": {"device": identity}},
        "spec": {}
    }))
    .unwrap();
    ids.create(&PostParams::default(), &ci)
        .await
        .map_err(|e| format!("creating ClientIdentity {identity}: {e}"))?;
    let route_name = format!("home-assistant-{identity}");
    let rts = routes(user, apps_ns);
    let pr: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "ProtectedRoute",
        "metadata": {"name": route_name},
        "spec": {
            "hosts": [format!("{identity}.ha.example.org")],
            "upstream": {"service": {"name": "home-assistant", "port": 8123}},
            "clientAuth": {"identitySelector": {"matchLabels": {"device": identity}}}
        }
    }))
    .unwrap();
    rts.create(&PostParams::default(), &pr)
        .await
        .map_err(|e| format!("creating ProtectedRoute {route_name}: {e}"))?;

    // 2. Minted.
    let secrets: Api<Secret> = Api::namespaced(user.clone(), apps_ns);
    let secret_name = format!("{identity}-client");
    let keys = [
        "tls.crt",
        "tls.key",
        "ca.crt",
        "keystore.p12",
        "keystore.p12.password",
    ];
    let secret = wait_for(
        &format!("Secret {apps_ns}/{secret_name} with the device files"),
        step,
        async || {
            let s = secrets.get_opt(&secret_name).await.ok()??;
            let data = s.data.as_ref()?;
            keys.iter()
                .all(|k| data.get(*k).is_some_and(|v| !v.0.is_empty()))
                .then_some(s)
        },
    )
    .await?;
    let serial = wait_for(
        &format!("ClientIdentity {identity} Ready with a serial"),
        step,
        async || {
            let ci = ids.get(identity).await.ok()?;
            let ready = condition(&ci, "Ready")?;
            (ready.0 == "True").then(|| {
                ci.data["status"]["serialNumber"]
                    .as_str()
                    .map(str::to_owned)
            })?
        },
    )
    .await;
    let serial = explain(serial, &ids, identity).await?;

    // 3. Route ready.
    let ready = wait_for(
        &format!("ProtectedRoute {route_name} Ready admitting 1 identity"),
        step,
        async || {
            let r = rts.get(&route_name).await.ok()?;
            (condition(&r, "Ready")?.0 == "True" && r.data["status"]["admittedIdentities"] == 1)
                .then_some(())
        },
    )
    .await;
    explain(ready, &rts, &route_name).await?;
    wait_for(
        &format!("Secret {apps_ns}/{route_name}-server-tls"),
        step,
        async || {
            secrets
                .get_opt(&format!("{route_name}-server-tls"))
                .await
                .ok()?
        },
    )
    .await?;

    // 4. Revoked.
    ids.patch(
        identity,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"revoked": true}})),
    )
    .await
    .map_err(|e| format!("revoking ClientIdentity {identity}: {e}"))?;
    let revoked = wait_for(
        &format!("ClientIdentity {identity} Revoked=True"),
        step,
        async || {
            let ci = ids.get(identity).await.ok()?;
            (condition(&ci, "Revoked")?.0 == "True").then_some(())
        },
    )
    .await;
    explain(revoked, &ids, identity).await?;
    let own: Api<Secret> = Api::namespaced(user.clone(), operator_ns);
    let serial_lower = serial.to_ascii_lowercase();
    wait_for(
        &format!("serial {serial} on the CRL ledger {operator_ns}/portcullis-crl"),
        step,
        async || {
            let crl = own.get_opt("portcullis-crl").await.ok()??;
            let ledger = crl.data.as_ref()?.get("revoked.json")?;
            String::from_utf8_lossy(&ledger.0)
                .to_ascii_lowercase()
                .contains(&serial_lower)
                .then_some(())
        },
    )
    .await?;
    wait_for(
        &format!("ProtectedRoute {route_name} admitting 0 identities"),
        step,
        async || {
            let r = rts.get(&route_name).await.ok()?;
            (r.data["status"]["admittedIdentities"] == 0).then_some(())
        },
    )
    .await?;

    let ca_crt = secret.data.as_ref().unwrap()["ca.crt"].0.clone();
    Ok(Observed { serial, ca_crt })
}

/// `r`, its error completed with the object's last status (what the operator reported).
async fn explain<T>(
    r: Result<T, String>,
    api: &Api<DynamicObject>,
    name: &str,
) -> Result<T, String> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => {
            let status = match api.get(name).await {
                Ok(o) => o.data["status"].to_string(),
                Err(err) => format!("unreadable: {err}"),
            };
            Err(format!("{e}; last status of {name}: {status}"))
        }
    }
}
