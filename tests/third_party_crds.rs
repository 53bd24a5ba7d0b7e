//! The chart and the examples against the real CRDs of what they plug into, on a real API
//! server (tests/envtest): Traefik's IngressRouteTCP / ServersTransportTCP for each Traefik
//! major k3s ships, the Argo CD / Flux objects of examples/k8s/ in their documented order,
//! and the cert-manager example (ClusterIssuer, Certificate, the route naming its Secret).
//!
//! The CRDs are vendored, pinned and unmodified, under tests/vendor/ (source, version and
//! licence in tests/vendor/README.md; tests/vendor/refresh.sh refreshes them). Objects are
//! applied server-side with strict field validation, as `kubectl apply --server-side` does:
//! a field the CRD does not declare is an error, not silently pruned.
//!
//! One API server serves every test here (a `static` Envtest); the tests use disjoint
//! namespaces and CRDs, except the Portcullis CRDs: the tests that install them take
//! [`PORTCULLIS_CRDS`], and the one that needs them absent removes them first.

#[path = "envtest/mod.rs"]
#[allow(dead_code)]
mod envtest;
#[path = "helm/support.rs"]
mod support;

use std::sync::OnceLock;

use kube::api::{DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde_json::Value;

use envtest::Envtest;
use support::*;

/// Held by a test while it relies on the Portcullis CRDs being present or absent.
static PORTCULLIS_CRDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Removes the Portcullis CRDs (another test may have installed them) and waits until
/// the API server no longer serves them.
async fn remove_portcullis_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ours = |crd: &CustomResourceDefinition| crd.spec.group == "portcullis.dev";
    for crd in api.list(&Default::default()).await.unwrap().items {
        if ours(&crd) {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.delete(&name, &Default::default()).await.unwrap();
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(ours)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the Portcullis CRDs stay"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The one control plane of this test binary.
async fn client() -> Client {
    static ENV: OnceLock<Envtest> = OnceLock::new();
    ENV.get_or_init(Envtest::start).client().await
}

fn vendored(file: &str) -> Vec<Value> {
    let path = manifest_dir().join("tests/vendor").join(file);
    documents(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
}

/// The `# Source:` line of a vendored file (which module and version it came from).
fn source_of(file: &str) -> String {
    let path = manifest_dir().join("tests/vendor").join(file);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# Source: "))
        .expect("a vendored file names its source")
        .to_owned()
}

fn example(file: &str) -> Vec<Value> {
    let path = manifest_dir().join("examples/k8s").join(file);
    documents(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
}

/// [`support::apply_one`] (strict, as kubectl), creating the object's namespace first.
async fn apply_strict(client: &Client, doc: &Value) -> Result<(), String> {
    if let Some(ns) = doc["metadata"]["namespace"].as_str() {
        ensure_namespace(client, ns).await?;
    }
    support::apply_one(client, doc).await
}

/// Every document in order, each retried briefly ([`support::apply_retrying`]).
async fn apply_all(client: &Client, docs: &[Value]) -> Result<(), String> {
    for doc in docs {
        if let Some(ns) = doc["metadata"]["namespace"].as_str() {
            ensure_namespace(client, ns).await?;
        }
        support::apply_retrying(client, doc).await?;
    }
    Ok(())
}

/// The chart's Traefik objects for `proxyProtocolVia` = `via`, in namespace `ns`.
fn traefik_objects(ns: &str, via: &str) -> Vec<Value> {
    let via = format!("traefik.ingressRouteTCP.proxyProtocolVia={via}");
    let yaml = template_in(
        ns,
        &[
            "--set",
            "traefik.ingressRouteTCP.enabled=true",
            "--set",
            "traefik.ingressRouteTCP.hosts={ha.example.org}",
            "--set",
            "service.type=ClusterIP",
            "--set",
            &via,
        ],
    )
    .unwrap_or_else(|e| panic!("helm template ({via}): {e}"));
    documents(&yaml)
        .into_iter()
        .filter(|d| {
            d["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("traefik.io/"))
        })
        .collect()
}

/// What the API server stored for the route's service: the PROXY protocol settings must
/// have survived (a field the schema lacks would be an error, never silently dropped).
async fn stored_route_service(client: &Client, ns: &str) -> Value {
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("traefik.io", "v1alpha1", "IngressRouteTCP"),
        "ingressroutetcps",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let route = api.get(RELEASE).await.expect("the stored IngressRouteTCP");
    assert_eq!(route.data["spec"]["tls"]["passthrough"], true);
    route.data["spec"]["routes"][0]["services"][0].clone()
}

/// Per Traefik major: the default (`proxyProtocolVia: service`) applies to Traefik 2.11 and
/// 3.x CRDs alike; `serversTransport` needs Traefik 3 (v2 has neither the ServersTransportTCP
/// kind nor a route service's `serversTransport` field). Traefik 2 first, then its CRDs are
/// replaced by Traefik 3's, as a k3s upgrade past 1.31 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_objects_apply_to_the_traefik_crds_k3s_ships() {
    let client = client().await;
    let mut results = Vec::new();

    // Traefik 2.11 (k3s <= 1.31).
    apply(&client, &vendored("traefik-v2-crds.yaml"))
        .await
        .unwrap();
    let v2 = source_of("traefik-v2-crds.yaml");
    apply_all(&client, &traefik_objects("traefik-v2-service", "service"))
        .await
        .unwrap_or_else(|e| panic!("the default must apply to Traefik 2 ({v2}): {e}"));
    let service = stored_route_service(&client, "traefik-v2-service").await;
    assert_eq!(service["proxyProtocol"]["version"], 2, "{service}");
    results.push(format!("{v2}: proxyProtocolVia=service applies"));

    let objects = traefik_objects("traefik-v2-transport", "serversTransport");
    let route = find(&objects, "IngressRouteTCP", None).unwrap();
    let err = apply_strict(&client, route)
        .await
        .expect_err("Traefik 2's IngressRouteTCP has no services[].serversTransport");
    assert!(
        err.contains("serversTransport") && err.contains("field not declared in schema"),
        "{err}"
    );
    let transport = find(&objects, "ServersTransportTCP", None).unwrap();
    let err = apply_strict(&client, transport)
        .await
        .expect_err("Traefik 2 has no ServersTransportTCP");
    assert!(err.contains("does not serve this kind"), "{err}");
    results.push(format!(
        "{v2}: proxyProtocolVia=serversTransport refused (no ServersTransportTCP kind, no serversTransport field)"
    ));

    // Traefik 3 (k3s >= 1.32): both ways.
    apply(&client, &vendored("traefik-v3-crds.yaml"))
        .await
        .unwrap();
    let v3 = source_of("traefik-v3-crds.yaml");
    apply_all(&client, &traefik_objects("traefik-v3-service", "service"))
        .await
        .unwrap_or_else(|e| panic!("the default must apply to Traefik 3 ({v3}): {e}"));
    let service = stored_route_service(&client, "traefik-v3-service").await;
    assert_eq!(service["proxyProtocol"]["version"], 2, "{service}");
    results.push(format!("{v3}: proxyProtocolVia=service applies"));

    apply_all(
        &client,
        &traefik_objects("traefik-v3-transport", "serversTransport"),
    )
    .await
    .unwrap_or_else(|e| panic!("serversTransport must apply to Traefik 3 ({v3}): {e}"));
    let service = stored_route_service(&client, "traefik-v3-transport").await;
    assert_eq!(service["serversTransport"], RELEASE, "{service}");
    assert!(service.get("proxyProtocol").is_none(), "{service}");
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("traefik.io", "v1alpha1", "ServersTransportTCP"),
        "serverstransporttcps",
    );
    let transports: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "traefik-v3-transport", &ar);
    let stored = transports.get(RELEASE).await.unwrap();
    assert_eq!(stored.data["spec"]["proxyProtocol"]["version"], 2);
    results.push(format!("{v3}: proxyProtocolVia=serversTransport applies"));

    eprintln!("{}", results.join("\n"));
}

/// The chart's default is the way that works on every Traefik k3s ships.
#[test]
fn the_default_proxy_protocol_way_works_on_traefik_2_and_3() {
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        values["traefik"]["ingressRouteTCP"]["proxyProtocolVia"].as_str(),
        Some("service"),
        "serversTransport fails on Traefik 2 (k3s <= 1.31): see traefik_objects_apply_to_the_traefik_crds_k3s_ships"
    );
}

/// A LoadBalancer on 443 (or 80) is refused with a message saying why and what to do; the
/// ways that work render.
#[test]
fn a_load_balancer_on_traefiks_ports_is_refused() {
    for port in ["443", "80"] {
        let err = template(&["--set", &format!("service.port={port}")])
            .expect_err("LoadBalancer on a port Traefik holds");
        for words in [
            &format!("service.port {port} with service.type LoadBalancer"),
            "Traefik's LoadBalancer already holds ports 80 and 443",
            "svclb pods stay Pending",
            "traefik.ingressRouteTCP.enabled=true with service.type=ClusterIP",
            "service.checkTraefikPorts=false",
        ] {
            assert!(err.contains(words), "{words:?} in {err}");
        }
    }
    for ok in [
        vec![],
        vec![
            "--set",
            "service.port=443",
            "--set",
            "service.type=ClusterIP",
        ],
        vec![
            "--set",
            "service.port=443",
            "--set",
            "service.type=NodePort",
        ],
        vec![
            "--set",
            "service.port=443",
            "--set",
            "service.checkTraefikPorts=false",
        ],
        vec![
            "--set",
            "service.port=443",
            "--set",
            "service.type=ClusterIP",
            "--set",
            "traefik.ingressRouteTCP.enabled=true",
            "--set",
            "traefik.ingressRouteTCP.hosts={ha.example.org}",
        ],
    ] {
        let docs = documents(&template(&ok).unwrap_or_else(|e| panic!("{ok:?}: {e}")));
        assert!(find(&docs, "Service", Some(RELEASE)).is_some(), "{ok:?}");
    }
}

/// The HelmChartConfig that keeps client addresses through ServiceLB into Traefik: in
/// kube-system, named after k3s's Traefik chart, `externalTrafficPolicy: Local` in the
/// values k3s merges into that chart.
#[test]
fn the_traefik_helmchartconfig_example_keeps_client_addresses() {
    let docs = example("traefik-helmchartconfig.yaml");
    let config = find(&docs, "HelmChartConfig", Some("traefik")).expect("a HelmChartConfig");
    assert_eq!(config["apiVersion"], "helm.cattle.io/v1");
    assert_eq!(config["metadata"]["namespace"], "kube-system");
    let values: serde_yaml::Value =
        serde_yaml::from_str(config["spec"]["valuesContent"].as_str().unwrap()).unwrap();
    assert_eq!(
        values["service"]["spec"]["externalTrafficPolicy"].as_str(),
        Some("Local")
    );
}

/// The GitOps examples in their documented order on a real API server: Argo CD's and Flux's
/// CRDs (as installing them does), then the Applications, GitRepository, HelmRelease and
/// Kustomizations, validated against those real schemas; the devices are refused while the
/// Portcullis CRDs are missing (why the order matters) and apply once the chart's CRDs are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitops_examples_validate_against_argo_cd_and_flux_in_order() {
    let client = client().await;
    let _crds = PORTCULLIS_CRDS.lock().await;
    remove_portcullis_crds(&client).await;
    let mut devices = example("protectedroute-home-assistant.yaml");
    devices.extend(example("clientidentity.yaml"));

    // 1. Argo CD and Flux installed: their CRDs.
    for file in [
        "argocd-application-crd.yaml",
        "flux-gitrepository-crd.yaml",
        "flux-helmrelease-crd.yaml",
        "flux-kustomization-crd.yaml",
    ] {
        apply(&client, &vendored(file))
            .await
            .unwrap_or_else(|e| panic!("{file} ({}): {e}", source_of(file)));
    }

    // 2. What a user commits: the Applications, or the Flux source, release and Kustomizations.
    let mut gitops = example("application-argocd.yaml");
    gitops.extend(example("helmrelease-flux.yaml"));
    gitops.extend(example("kustomization-flux.yaml"));
    assert_eq!(
        kinds(&gitops),
        [
            "Application",
            "GitRepository",
            "HelmRelease",
            "Kustomization",
            "Namespace"
        ]
        .map(str::to_owned)
        .into()
    );
    apply_all(&client, &gitops)
        .await
        .unwrap_or_else(|e| panic!("the GitOps examples against the real CRDs: {e}"));

    // Before the chart's CRDs exist the devices cannot apply: what the ordering prevents.
    let early = apply_strict(&client, &devices[0]).await;
    assert!(
        early
            .as_ref()
            .is_err_and(|e| e.contains("does not serve this kind")),
        "{early:?}"
    );

    // 3. The operator's sync installs the chart's CRDs; then the devices apply.
    let crds: Vec<Value> = documents(&template(&[]).unwrap())
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    apply(&client, &crds).await.unwrap();
    apply_all(&client, &devices)
        .await
        .unwrap_or_else(|e| panic!("the device examples against the chart's CRDs: {e}"));
}

/// The examples spell out the order: Argo CD's devices Application comes in a later wave,
/// skips the dry run while the CRDs are missing and retries; Flux's devices Kustomization
/// depends on the one that waits for the HelmRelease.
#[test]
fn gitops_examples_order_crds_before_custom_resources() {
    let argo = example("application-argocd.yaml");
    let wave = |name: &str| -> i64 {
        let app = find(&argo, "Application", Some(name)).unwrap();
        app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(wave("portcullis") < wave("portcullis-devices"));
    let devices = find(&argo, "Application", Some("portcullis-devices")).unwrap();
    let policy = &devices["spec"]["syncPolicy"];
    assert!(
        policy["syncOptions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("SkipDryRunOnMissingResource=true")),
        "{policy}"
    );
    assert!(policy["retry"]["limit"].as_i64().unwrap() > 0, "{policy}");

    let flux = example("kustomization-flux.yaml");
    let operator = find(&flux, "Kustomization", Some("portcullis")).unwrap();
    assert_eq!(operator["spec"]["wait"], true);
    let devices = find(&flux, "Kustomization", Some("portcullis-devices")).unwrap();
    assert_eq!(
        devices["spec"]["dependsOn"][0]["name"], "portcullis",
        "{devices}"
    );
}

/// examples/k8s/cert-manager.yaml with its commented DNS-01 solver in use (the comment
/// markers of that block removed), as a ClusterIssuer `letsencrypt-dns`.
fn cert_manager_dns01_issuer() -> Value {
    let path = manifest_dir().join("examples/k8s/cert-manager.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut in_block = false;
    let mut yaml = String::new();
    for line in text.lines() {
        in_block = line == "      # - dns01:" || (in_block && line.starts_with("      #   "));
        match in_block {
            true => yaml += &line.replacen("# ", "", 1),
            false => yaml += line,
        }
        yaml.push('\n');
    }
    let docs = documents(&yaml);
    let mut issuer = find(&docs, "ClusterIssuer", None).unwrap().clone();
    let solvers = issuer["spec"]["acme"]["solvers"].as_array().unwrap();
    assert!(
        solvers.iter().any(|s| s.get("dns01").is_some()),
        "the example's DNS-01 alternative: {solvers:?}"
    );
    issuer["metadata"]["name"] = "letsencrypt-dns".into();
    issuer
}

/// The cert-manager example for a publicly trusted certificate: the ClusterIssuer (HTTP-01
/// through Traefik, and its DNS-01 alternative), the Certificate and the ProtectedRoute
/// naming its Secret, validated strictly against cert-manager's own CRDs and the chart's.
/// Applied in a namespace of its own (the GitOps test owns `home-assistant`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_example_validates_against_cert_managers_crds() {
    let client = client().await;
    let _crds = PORTCULLIS_CRDS.lock().await;
    let ns = "cert-manager-example";
    let mut docs = example("cert-manager.yaml");
    assert_eq!(
        kinds(&docs),
        ["Certificate", "ClusterIssuer", "ProtectedRoute"]
            .map(str::to_owned)
            .into()
    );
    for doc in &mut docs {
        if doc["metadata"].get("namespace").is_some() {
            doc["metadata"]["namespace"] = ns.into();
        }
    }
    let certificate = find(&docs, "Certificate", None).unwrap();

    // Without cert-manager, its kinds do not exist: install cert-manager first.
    let early = apply_strict(&client, certificate).await;
    assert!(
        early
            .as_ref()
            .is_err_and(|e| e.contains("does not serve this kind")),
        "{early:?}"
    );

    let mut crds = Vec::new();
    for file in [
        "cert-manager-certificates-crd.yaml",
        "cert-manager-clusterissuers-crd.yaml",
    ] {
        crds.extend(vendored(file));
    }
    // The chart's CRDs as Helm installs them (helm/portcullis/crds/, not templated).
    let chart_crds = chart_dir().join("crds/portcullis.yaml");
    crds.extend(documents(&std::fs::read_to_string(chart_crds).unwrap()));
    apply(&client, &crds).await.unwrap();
    let source = source_of("cert-manager-certificates-crd.yaml");
    apply_all(&client, &docs)
        .await
        .unwrap_or_else(|e| panic!("examples/k8s/cert-manager.yaml against {source}: {e}"));
    apply_retrying(&client, &cert_manager_dns01_issuer())
        .await
        .unwrap_or_else(|e| panic!("the DNS-01 alternative against {source}: {e}"));

    // What cert-manager will write: the Secret the route names, with the label the data
    // plane watches for, stored as applied.
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let stored = api.get("ha-example-com").await.unwrap();
    assert_eq!(
        stored.data["spec"]["secretTemplate"]["labels"]
            [portcullis::resources::names::SERVER_CERTIFICATE_LABEL],
        "true",
        "{:?}",
        stored.data
    );
}

/// The example's Certificate and ProtectedRoute fit together: the Secret the route names is
/// the one the Certificate writes, in the route's namespace, labelled for the data plane,
/// for every host of the route.
#[test]
fn cert_manager_example_writes_the_secret_its_route_reads() {
    let docs = example("cert-manager.yaml");
    let cert = find(&docs, "Certificate", None).unwrap();
    let route = find(&docs, "ProtectedRoute", None).unwrap();
    assert_eq!(
        cert["metadata"]["namespace"],
        route["metadata"]["namespace"]
    );
    assert_eq!(
        cert["spec"]["secretName"],
        route["spec"]["serverCertificate"]["secretName"]
    );
    let label = portcullis::resources::names::SERVER_CERTIFICATE_LABEL;
    assert_eq!(cert["spec"]["secretTemplate"]["labels"][label], "true");
    assert_eq!(cert["spec"]["dnsNames"], route["spec"]["hosts"]);
    let issuer = find(&docs, "ClusterIssuer", None).unwrap();
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
}
