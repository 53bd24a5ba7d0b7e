//! The Helm chart (helm/portcullis), proven rather than assumed.
//!
//! Rendering: `helm lint` and `helm template` for the defaults and every documented option,
//! deterministic output, the schema rejecting wrong types and unknown keys, restricted pod
//! security, CRDs identical to the generated file, no Secret ever templated.
//! Against a real API server (tests/envtest): the rendered manifests apply (server-side,
//! CRDs included); the operator binary, authenticated only as the chart's ServiceAccount
//! (a TokenRequest token), passes the end-to-end scenario; removing one verb from the
//! chart's RBAC makes it fail; `helm install`/`helm upgrade` reject bad values with the
//! schema's message and an upgrade never replaces the CA Secret.
//!
//! Helm comes from the Go module proxy (`go install helm.sh/helm/v3/cmd/helm@…`, cached
//! under target/helm/ by tests/helm/install-helm.sh).

// The shared cluster helpers (tests/common/cluster.rs) build on tests/common/mod.rs.
#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "envtest/mod.rs"]
#[allow(dead_code)]
mod envtest;
#[path = "helm/support.rs"]
mod support;

use std::time::Duration;

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};

use envtest::Envtest;
use futures_util::FutureExt;
use support::*;

/// A documented option: its name, its `helm` flags, and a check of what it renders.
type ChartOption = (&'static str, Vec<&'static str>, fn(&[Value]));

/// The documented options (helm/portcullis/README.md).
fn options() -> Vec<ChartOption> {
    vec![
        ("defaults", vec![], |docs| {
            let svc = find(docs, "Service", Some("portcullis")).expect("data-plane Service");
            assert_eq!(svc["spec"]["type"], "LoadBalancer");
            assert_eq!(svc["spec"]["ports"][0]["port"], 8443);
            assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");
            assert_eq!(
                svc["spec"]["selector"]["app.kubernetes.io/component"], "proxy",
                "devices reach the proxy pods only"
            );
            let metrics =
                find(docs, "Service", Some("portcullis-metrics")).expect("metrics Service");
            assert_eq!(metrics["spec"]["ports"][0]["name"], "metrics");
            // Split: the controller and the proxy, each its own Deployment and account.
            for (name, role) in [
                ("portcullis-controller", "controller"),
                ("portcullis-proxy", "proxy"),
            ] {
                let d = find(docs, "Deployment", Some(name)).expect(name);
                assert_eq!(d["spec"]["replicas"], 1);
                assert_eq!(d["spec"]["template"]["spec"]["serviceAccountName"], name);
                assert!(deployment_args(d).contains(&format!("--role={role}")));
                assert!(find(docs, "ServiceAccount", Some(name)).is_some());
                assert!(find(docs, "ClusterRole", Some(name)).is_some());
            }
            assert!(find(docs, "Deployment", Some("portcullis")).is_none());
            assert!(
                !controller_args(docs)
                    .iter()
                    .any(|a| a.starts_with("--listen")),
                "the controller is not exposed"
            );
            for kind in [
                "ServiceMonitor",
                "IngressRouteTCP",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "PrometheusRule",
            ] {
                assert!(find(docs, kind, None).is_none(), "no {kind} by default");
            }
            assert!(
                !args(docs)
                    .iter()
                    .any(|a| a.starts_with("--watch-namespace"))
            );
        }),
        (
            "traefik passthrough",
            vec![
                "--set",
                "traefik.ingressRouteTCP.enabled=true",
                "--set",
                "traefik.ingressRouteTCP.hosts={ha.example.org,phone.example.org}",
                "--set",
                "service.type=ClusterIP",
            ],
            |docs| {
                let irt = find(docs, "IngressRouteTCP", None).expect("IngressRouteTCP");
                assert_eq!(irt["apiVersion"], "traefik.io/v1alpha1");
                assert_eq!(irt["spec"]["entryPoints"], json!(["websecure"]));
                assert_eq!(irt["spec"]["tls"]["passthrough"], true);
                let route = &irt["spec"]["routes"][0];
                assert_eq!(
                    route["match"],
                    "HostSNI(`ha.example.org`) || HostSNI(`phone.example.org`)"
                );
                assert_eq!(route["services"][0]["name"], "portcullis-proxy-protocol");
                assert_eq!(route["services"][0]["port"], 8444);
                assert_eq!(route["services"][0]["proxyProtocol"]["version"], 2);
                let svc = find(docs, "Service", Some("portcullis")).unwrap();
                assert_eq!(svc["spec"]["type"], "ClusterIP");
                proxy_protocol_only_from_traefik(docs);
            },
        ),
        (
            "traefik passthrough via ServersTransportTCP",
            vec![
                "--set",
                "traefik.ingressRouteTCP.enabled=true",
                "--set",
                "traefik.ingressRouteTCP.hosts={ha.example.org}",
                "--set",
                "traefik.ingressRouteTCP.proxyProtocolVia=serversTransport",
                "--set",
                "service.type=ClusterIP",
            ],
            |docs| {
                let irt = find(docs, "IngressRouteTCP", None).expect("IngressRouteTCP");
                let service = &irt["spec"]["routes"][0]["services"][0];
                assert_eq!(service["serversTransport"], "portcullis");
                assert!(service.get("proxyProtocol").is_none(), "{service}");
                let st = find(docs, "ServersTransportTCP", Some("portcullis"))
                    .expect("ServersTransportTCP");
                assert_eq!(st["apiVersion"], "traefik.io/v1alpha1");
                assert_eq!(st["spec"]["proxyProtocol"]["version"], 2);
                proxy_protocol_only_from_traefik(docs);
            },
        ),
        (
            "NodePort",
            vec![
                "--set",
                "service.type=NodePort",
                "--set",
                "service.nodePort=30443",
            ],
            |docs| {
                let svc = find(docs, "Service", Some("portcullis")).unwrap();
                assert_eq!(svc["spec"]["type"], "NodePort");
                assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30443);
            },
        ),
        (
            "ClusterIP",
            vec![
                "--set",
                "service.type=ClusterIP",
                "--set",
                "service.nodePort=30443",
            ],
            |docs| {
                let svc = find(docs, "Service", Some("portcullis")).unwrap();
                assert_eq!(svc["spec"]["type"], "ClusterIP");
                assert!(
                    svc["spec"]["ports"][0].get("nodePort").is_none(),
                    "no nodePort on ClusterIP"
                );
                assert!(svc["spec"].get("externalTrafficPolicy").is_none());
            },
        ),
        (
            "ServiceMonitor",
            vec!["--set", "metrics.serviceMonitor.enabled=true"],
            |docs| {
                let sm = find(docs, "ServiceMonitor", None).expect("ServiceMonitor");
                assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
                assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
                assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
                let selector = &sm["spec"]["selector"]["matchLabels"];
                let metrics = find(docs, "Service", Some("portcullis-metrics")).unwrap();
                for (k, v) in selector.as_object().unwrap() {
                    assert_eq!(
                        &metrics["metadata"]["labels"][k], v,
                        "selects the metrics Service"
                    );
                }
            },
        ),
        ("replicas 2", vec!["--set", "replicas=2"], |docs| {
            let proxy = find(docs, "Deployment", Some("portcullis-proxy")).unwrap();
            assert_eq!(proxy["spec"]["replicas"], 2);
            // A PodDisruptionBudget and a preferred (never required) anti-affinity, for
            // the workload with more than one replica only.
            let pdb = find(docs, "PodDisruptionBudget", Some("portcullis-proxy")).expect("PDB");
            assert_eq!(pdb["spec"]["maxUnavailable"], 1);
            assert_eq!(
                pdb["spec"]["selector"]["matchLabels"],
                proxy["spec"]["selector"]["matchLabels"]
            );
            let anti = &proxy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
            assert!(
                anti.get("requiredDuringSchedulingIgnoredDuringExecution")
                    .is_none()
            );
            let term = &anti["preferredDuringSchedulingIgnoredDuringExecution"][0];
            assert_eq!(
                term["podAffinityTerm"]["topologyKey"],
                "kubernetes.io/hostname"
            );
            assert_eq!(
                term["podAffinityTerm"]["labelSelector"]["matchLabels"],
                proxy["spec"]["selector"]["matchLabels"]
            );
            assert!(find(docs, "PodDisruptionBudget", Some("portcullis-controller")).is_none());
            let controller = find(docs, "Deployment", Some("portcullis-controller")).unwrap();
            assert!(
                controller["spec"]["template"]["spec"]
                    .get("affinity")
                    .is_none()
            );
        }),
        (
            "controller replicas 2",
            vec!["--set", "controller.replicas=2"],
            |docs| {
                let d = find(docs, "Deployment", Some("portcullis-controller")).unwrap();
                assert_eq!(d["spec"]["replicas"], 2);
                assert!(find(docs, "PodDisruptionBudget", Some("portcullis-controller")).is_some());
                assert!(find(docs, "PodDisruptionBudget", Some("portcullis-proxy")).is_none());
            },
        ),
        ("split: the proxy never writes a Secret", vec![], |docs| {
            // The exposed workload reads; it writes nothing but the ClientIdentity status
            // it reports lastSeen in, and what enrollment links need: the claim (a status
            // write), deleting used Enrollments, the claim's Event. No Lease.
            let role = find(docs, "ClusterRole", Some("portcullis-proxy")).unwrap();
            for rule in role["rules"].as_array().unwrap() {
                let allowed: &[&str] = match rule["resources"][0].as_str().unwrap() {
                    "clientidentities/status" => &["patch"],
                    "enrollments" => &["list", "delete"],
                    "enrollments/status" => &["update"],
                    "events" => &["create"],
                    _ => &["list", "watch", "get"],
                };
                for verb in rule["verbs"].as_array().unwrap() {
                    assert!(allowed.contains(&verb.as_str().unwrap()), "{rule}");
                }
            }
            // In the release namespace: the CRL (with the CA certificate) and cookie keys,
            // read by name; never the CA Secret, which holds the CA key.
            let own = find(docs, "Role", Some("portcullis-proxy")).unwrap();
            assert_eq!(
                own["rules"],
                json!([{"apiGroups": [""], "resources": ["secrets"],
                        "resourceNames": ["portcullis-crl", "portcullis-cookie-keys"],
                        "verbs": ["get", "list", "watch"]}])
            );
        }),
        (
            "combined",
            vec!["--set", "operator.mode=combined"],
            |docs| {
                let d = find(docs, "Deployment", Some("portcullis")).expect("one Deployment");
                assert!(deployment_args(d).contains(&"--role=all".to_owned()));
                assert_eq!(kinds(docs).iter().filter(|k| *k == "Deployment").count(), 1);
                assert_eq!(
                    d["spec"]["template"]["spec"]["serviceAccountName"],
                    "portcullis"
                );
                // The selector of earlier releases (immutable): upgrades keep working.
                assert_eq!(
                    d["spec"]["selector"]["matchLabels"],
                    json!({"app.kubernetes.io/name": "portcullis",
                           "app.kubernetes.io/instance": "portcullis"})
                );
            },
        ),
        (
            "watchNamespaces",
            vec!["--set", "watchNamespaces={home,lab}"],
            |docs| {
                // Roles per namespace instead of ClusterRoles, and the flag on both.
                assert!(find(docs, "ClusterRole", None).is_none());
                assert!(find(docs, "ClusterRoleBinding", None).is_none());
                for workload in ["portcullis-controller", "portcullis-proxy"] {
                    for ns in ["home", "lab"] {
                        let name = format!("{workload}-watch");
                        let role = docs
                            .iter()
                            .find(|d| {
                                d["kind"] == "Role"
                                    && d["metadata"]["name"] == name
                                    && d["metadata"]["namespace"] == ns
                            })
                            .unwrap_or_else(|| panic!("Role {ns}/{name}"));
                        assert!(!role["rules"].as_array().unwrap().is_empty());
                        assert!(docs.iter().any(|d| d["kind"] == "RoleBinding"
                            && d["metadata"]["name"] == name
                            && d["metadata"]["namespace"] == ns
                            && d["subjects"][0]["name"] == workload));
                    }
                    let d = find(docs, "Deployment", Some(workload)).unwrap();
                    assert!(deployment_args(d).contains(&"--watch-namespace=home,lab".to_owned()));
                }
            },
        ),
        (
            "networkPolicy",
            vec![
                "--set",
                "networkPolicy.enabled=true",
                "--set",
                "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
            ],
            |docs| {
                let proxy = find(docs, "NetworkPolicy", Some("portcullis-proxy")).expect("proxy");
                let ports: Vec<&Value> = proxy["spec"]["ingress"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| &r["ports"][0]["port"])
                    .collect();
                assert_eq!(ports, [&json!("https"), &json!("admin")]);
                assert_eq!(proxy["spec"]["policyTypes"], json!(["Ingress"]));
                assert_eq!(
                    proxy["spec"]["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"]["name"],
                    "monitoring"
                );
                let controller =
                    find(docs, "NetworkPolicy", Some("portcullis-controller")).expect("controller");
                assert_eq!(controller["spec"]["ingress"].as_array().unwrap().len(), 1);
                assert_eq!(
                    controller["spec"]["ingress"][0]["ports"][0]["port"],
                    "admin"
                );
            },
        ),
        (
            "prometheusRule",
            vec![
                "--set",
                "prometheusRule.enabled=true",
                "--set",
                "prometheusRule.labels.release=kube-prometheus-stack",
            ],
            |docs| {
                let rule = find(docs, "PrometheusRule", None).expect("PrometheusRule");
                assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
                assert_eq!(
                    rule["metadata"]["labels"]["release"],
                    "kube-prometheus-stack"
                );
                let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
                let alerts: Vec<&str> =
                    rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
                for alert in [
                    "PortcullisDeviceCertificateExpiringSoon",
                    "PortcullisRenewalPending",
                    "PortcullisDenialSpike",
                ] {
                    assert!(alerts.contains(&alert), "{alerts:?}");
                }
                // Every metric an alert reads is one the gate exports.
                let exported = exported_metric_names();
                for r in rules {
                    let expr = r["expr"].as_str().unwrap();
                    let used: Vec<&str> = expr
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .filter(|w| w.starts_with("portcullis_"))
                        .collect();
                    assert!(!used.is_empty(), "{expr}");
                    for m in used {
                        assert!(exported.contains(m), "{m} is not exported: {exported:?}");
                    }
                }
            },
        ),
        (
            "second release",
            vec!["--set", "operator.claimUnlabelled=false"],
            |docs| {
                let args = args(docs);
                assert!(
                    args.contains(&"--claim-unlabelled=false".to_owned()),
                    "{args:?}"
                );
                assert!(
                    args.contains(&"--instance=portcullis".to_owned()),
                    "{args:?}"
                );
            },
        ),
    ]
}

/// The data plane's container args (the proxy Deployment, or the combined one).
fn args(docs: &[Value]) -> Vec<String> {
    let deploy = find(docs, "Deployment", Some("portcullis-proxy"))
        .or_else(|| find(docs, "Deployment", Some("portcullis")))
        .expect("the data-plane Deployment");
    deployment_args(deploy)
}

/// The controller Deployment's container args.
fn controller_args(docs: &[Value]) -> Vec<String> {
    deployment_args(find(docs, "Deployment", Some("portcullis-controller")).expect("controller"))
}

fn deployment_args(deploy: &Value) -> Vec<String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// PROXY headers are accepted on their own port only, which only Traefik's pods may
/// reach: never from the pod CIDR on the main port.
fn proxy_protocol_only_from_traefik(docs: &[Value]) {
    let args = args(docs);
    assert!(
        args.contains(&"--proxy-protocol-listen=0.0.0.0:8444".to_owned()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--proxy-protocol-from")),
        "{args:?}"
    );
    let svc = find(docs, "Service", Some("portcullis-proxy-protocol")).expect("its Service");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "proxy-protocol");
    let main = find(docs, "Service", Some("portcullis")).unwrap();
    assert_eq!(main["spec"]["ports"].as_array().unwrap().len(), 1, "{main}");
    let policy = find(docs, "NetworkPolicy", Some("portcullis-proxy")).expect("NetworkPolicy");
    let rule = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ports"][0]["port"] == "proxy-protocol")
        .expect("a rule for the PROXY port");
    assert_eq!(
        rule["from"],
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "traefik"}}}])
    );
}

/// The names of the metrics the gate exports (src/telemetry.rs), as scraped: one sample
/// in every labelled family, since a family without samples is not encoded.
fn exported_metric_names() -> std::collections::BTreeSet<String> {
    use portcullis::telemetry::*;
    let metrics = Metrics::default();
    let failure = FailureLabels { reason: "x" };
    let identity = "home/phone".to_owned();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: "r".into(),
            admission: "denied",
            reason: "x",
        })
        .inc();
    metrics.handshake_failures.get_or_create(&failure).inc();
    metrics.config_reloads.get_or_create(&failure).inc();
    metrics.enrollment_refusals.get_or_create(&failure).inc();
    metrics
        .cert_expiry
        .get_or_create(&CertLabels {
            kind: "ca",
            name: "x".into(),
        })
        .set(1);
    metrics
        .device_cert_expiry
        .get_or_create(&DeviceCertLabels {
            identity: identity.clone(),
            serial: "0a".into(),
        })
        .set(1);
    metrics
        .renewal_pending
        .get_or_create(&IdentityLabels { identity })
        .set(1);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    Metrics::encode(&registry)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// One workload running `--role all` as one ServiceAccount ("portcullis"): what the tests
/// of the operator binary under the chart's RBAC install.
const COMBINED: &[&str] = &["--set", "operator.mode=combined"];

fn render(extra: &[&str]) -> Vec<Value> {
    documents(&template(extra).unwrap_or_else(|e| panic!("helm template {extra:?}: {e}")))
}

#[test]
fn chart_version_follows_the_crate() {
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let chart: serde_yaml::Value = serde_yaml::from_str(&chart).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        chart["version"].as_str(),
        Some(version),
        "Chart.yaml version"
    );
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(version),
        "Chart.yaml appVersion"
    );
    // The default image tag is the appVersion, so it follows the crate too.
    let docs = render(&[]);
    let deploy = find(&docs, "Deployment", None).unwrap();
    let image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(image.ends_with(&format!(":{version}")), "{image}");
}

/// The names the chart hard-codes are the ones the code uses.
#[test]
fn chart_names_match_the_code() {
    use portcullis::controller::names;
    let docs = render(&[]);
    let role = find(&docs, "Role", Some("portcullis-controller")).expect("the Lease Role");
    let named: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("resourceNames").is_some())
        .collect();
    assert_eq!(named.len(), 2);
    assert_eq!(named[0]["resourceNames"], json!([names::LEASE_NAME]));
    let own = json!([
        names::CA_SECRET,
        names::CRL_SECRET,
        names::COOKIE_KEYS_SECRET
    ]);
    assert_eq!(named[1]["resourceNames"], own);
    let proxy = find(&docs, "Role", Some("portcullis-proxy")).unwrap();
    // The proxy: the CRL (which carries the CA certificate) and cookie keys, not the CA.
    assert_eq!(
        proxy["rules"][0]["resourceNames"],
        json!([names::CRL_SECRET, names::COOKIE_KEYS_SECRET])
    );
    assert!(args(&docs).contains(&format!("--ca-secret={}", names::CA_SECRET)));
    let notes = std::fs::read_to_string(chart_dir().join("templates/NOTES.txt")).unwrap();
    assert!(notes.contains(&format!("secret {}", names::identity_secret_name("phone"))));
    assert!(notes.contains(&names::KEYSTORE_P12.replace('.', "\\.")));
    assert!(notes.contains(&names::KEYSTORE_PASSWORD.replace('.', "\\.")));
}

#[test]
fn chart_crds_are_the_generated_file() {
    let generated = std::fs::read(manifest_dir().join("crds/portcullis.yaml")).unwrap();
    let in_chart = std::fs::read(chart_dir().join("crds/portcullis.yaml")).unwrap();
    assert!(
        generated == in_chart,
        "helm/portcullis/crds/portcullis.yaml differs from crds/portcullis.yaml: run `make crds`"
    );
    let files: Vec<_> = std::fs::read_dir(chart_dir().join("crds"))
        .unwrap()
        .collect();
    assert_eq!(
        files.len(),
        1,
        "the chart's crds/ holds exactly the generated file"
    );
}

#[test]
fn lint_and_template_pass_for_every_documented_option() {
    for (name, extra, check) in options() {
        lint(&extra).unwrap_or_else(|e| panic!("helm lint ({name}): {e}"));
        let first = template(&extra).unwrap_or_else(|e| panic!("helm template ({name}): {e}"));
        let second = template(&extra).unwrap();
        assert!(
            first == second,
            "helm template ({name}) is not deterministic"
        );
        let docs = documents(&first);
        check(&docs);
        // CRDs included (--include-crds), and never a Secret: the CA, cookie keys and
        // device files come from the operator at runtime, so upgrades cannot replace them.
        let kinds = kinds(&docs);
        assert!(
            kinds.contains("CustomResourceDefinition"),
            "{name}: {kinds:?}"
        );
        assert!(
            !kinds.contains("Secret"),
            "{name}: the chart must not template Secrets"
        );
        for doc in &docs {
            if doc["kind"] == "CustomResourceDefinition" {
                continue;
            }
            let labels = &doc["metadata"]["labels"];
            for key in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
                "helm.sh/chart",
            ] {
                assert!(
                    labels.get(key).is_some(),
                    "{name}: {} lacks {key}",
                    doc["kind"]
                );
            }
        }
        eprintln!("{name}: lint ok, {} objects, deterministic", docs.len());
    }
}

#[test]
fn bad_values_fail_with_the_schema_message() {
    let err = template(&["--set", "replicas=two"]).expect_err("a string for replicas");
    assert!(
        err.contains("/replicas") && err.contains("got string, want integer"),
        "schema message: {err}"
    );
    let err = template(&["--set", "replica=2"]).expect_err("an unknown top-level key");
    assert!(
        err.contains("additional properties 'replica' not allowed"),
        "{err}"
    );
    let err = template(&["--set", "service.type=External"]).expect_err("an unknown Service type");
    assert!(err.contains("/service/type"), "{err}");
    let err = template(&["--set", "service.prot=8443"]).expect_err("a typo in a nested key");
    assert!(err.contains("'prot' not allowed"), "{err}");
    let err = template(&["--set", "operator.mode=both"]).expect_err("an unknown mode");
    assert!(err.contains("/operator/mode"), "{err}");
    let err = template(&["--set", "watchNamespaces={Home}"]).expect_err("not a namespace");
    assert!(err.contains("/watchNamespaces/0"), "{err}");
    let err = template(&["--set", "traefik.proxyProtocolPort=8443"])
        .expect_err("the PROXY port on the main port");
    assert!(err.contains("/traefik/proxyProtocolPort"), "{err}");
    let err = template(&["--set", "traefik.ingressRouteTCP.enabled=true"])
        .expect_err("Traefik without hosts");
    assert!(
        err.contains("traefik.ingressRouteTCP.hosts must list"),
        "{err}"
    );
    // helm lint reports the same.
    let err = lint(&["--set", "replicas=two"]).expect_err("lint with a wrong type");
    assert!(err.contains("got string, want integer"), "{err}");
}

#[test]
fn the_pod_is_restricted_probed_and_sized() {
    let docs = render(&[]);
    let deploy = find(&docs, "Deployment", Some("portcullis-proxy")).unwrap();
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["serviceAccountName"], "portcullis-proxy");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    let ports: Vec<(String, i64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [("https".into(), 8443), ("admin".into(), 9090)]);
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "20m", "memory": "32Mi"})
    );
    assert_eq!(c["resources"]["limits"], json!({"memory": "128Mi"}));
    let env = c["env"].as_array().unwrap();
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env.iter().find(|e| e["name"] == name).expect(name);
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], path);
    }
    let args = args(&docs);
    for expected in [
        "operator",
        "--role=proxy",
        "--ca-secret=portcullis-ca",
        "--instance=portcullis",
        "--claim-unlabelled=true",
        "--listen=0.0.0.0:8443",
        "--admin-listen=0.0.0.0:9090",
        "--log-json",
    ] {
        assert!(
            args.contains(&expected.to_owned()),
            "{expected} in {args:?}"
        );
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--proxy-protocol")),
        "{args:?}"
    );
    let controller = find(&docs, "Deployment", Some("portcullis-controller")).unwrap();
    let pod = &controller["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["containers"][0]["securityContext"], *sc);
    assert_eq!(
        pod["containers"][0]["ports"],
        json!([{"name": "admin", "containerPort": 9090, "protocol": "TCP"}])
    );
}

/// A chart bump must not restart the gate (and drop every WebSocket) unless the pod spec
/// changed: no chart or app version in the pod template's labels.
#[test]
fn pod_templates_do_not_change_with_the_chart_version() {
    for extra in [&[][..], &["--set", "operator.mode=combined"][..]] {
        let docs = render(extra);
        let templates = |docs: &[Value]| -> Vec<Value> {
            docs.iter()
                .filter(|d| d["kind"] == "Deployment")
                .map(|d| d["spec"]["template"].clone())
                .collect()
        };
        let before = templates(&docs);
        assert!(!before.is_empty());
        for t in &before {
            let labels = t["metadata"]["labels"].as_object().unwrap();
            for key in ["helm.sh/chart", "app.kubernetes.io/version"] {
                assert!(!labels.contains_key(key), "{key} in pod labels {labels:?}");
            }
        }
        // The same chart at another version renders the same pod templates.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("portcullis");
        copy_dir(&chart_dir(), &copy);
        let chart_yaml = copy.join("Chart.yaml");
        let text = std::fs::read_to_string(&chart_yaml).unwrap();
        let bumped: String = text
            .lines()
            .map(|l| {
                if l.starts_with("version:") {
                    "version: 9.9.9".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&chart_yaml, bumped).unwrap();
        let mut args = vec!["template", "portcullis", copy.to_str().unwrap()];
        args.extend_from_slice(extra);
        let bumped_docs = documents(&run_helm(&args).unwrap());
        assert!(
            bumped_docs
                .iter()
                .any(|d| d["metadata"]["labels"]["helm.sh/chart"] == "portcullis-9.9.9"),
            "the bump took effect"
        );
        assert_eq!(templates(&bumped_docs), before, "{extra:?}");
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every documented option's manifests, CRDs included, apply server-side to a real API
/// server (with Traefik 3's real CRDs, tests/vendor/, and a stand-in for ServiceMonitor's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_apply_to_a_real_api_server() {
    let env = Envtest::start();
    let admin = env.client().await;
    for crds in [
        "tests/helm/stub-crds.yaml",
        "tests/vendor/traefik-v3-crds.yaml",
    ] {
        let yaml = std::fs::read_to_string(manifest_dir().join(crds)).unwrap();
        apply(&admin, &documents(&yaml)).await.unwrap();
    }
    for (i, (name, extra, _)) in options().into_iter().enumerate() {
        let ns = format!("apply-{i}");
        let yaml = template_in(&ns, &extra).unwrap();
        let docs = documents(&yaml);
        apply(&admin, &docs)
            .await
            .unwrap_or_else(|e| panic!("applying the chart ({name}): {e}"));
        eprintln!("{name}: {} objects applied", docs.len());
    }
    // What the API server stored is what was rendered, e.g. the Deployment's pod security.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(admin.clone(), "apply-0");
    let d = deployments.get("portcullis-proxy").await.unwrap();
    let sc = d.spec.unwrap().template.spec.unwrap().containers[0]
        .security_context
        .clone()
        .unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
}

/// The GitOps examples hold values the chart accepts, and the device and route examples
/// are valid objects for the CRDs on a real API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gitops_examples_are_valid() {
    let dir = manifest_dir().join("examples/k8s");
    let read = |name: &str| documents(&std::fs::read_to_string(dir.join(name)).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let values_of = |doc: &Value, label: &str| {
        let path = tmp.path().join(format!("{label}.yaml"));
        std::fs::write(&path, serde_yaml::to_string(doc).unwrap()).unwrap();
        path
    };
    // Flux HelmRelease: chart path and values.
    let flux = read("helmrelease-flux.yaml");
    let release = find(&flux, "HelmRelease", None).expect("a HelmRelease");
    assert_eq!(
        release["spec"]["chart"]["spec"]["chart"],
        "./helm/portcullis"
    );
    let flux_values = values_of(&release["spec"]["values"], "flux");
    // Argo CD Application: chart path and valuesObject.
    let argo = read("application-argocd.yaml");
    let app = find(&argo, "Application", Some("portcullis")).expect("an Application");
    assert_eq!(app["spec"]["source"]["path"], "helm/portcullis");
    let argo_values = values_of(&app["spec"]["source"]["helm"]["valuesObject"], "argo");
    for values in [flux_values, argo_values] {
        let file = values.to_str().unwrap();
        lint(&["-f", file]).unwrap_or_else(|e| panic!("helm lint -f {file}: {e}"));
        template(&["-f", file]).unwrap_or_else(|e| panic!("helm template -f {file}: {e}"));
    }
    // Kustomization lists the device and route files.
    let kustomization = read("kustomization.yaml");
    for resource in kustomization[0]["resources"].as_array().unwrap() {
        assert!(dir.join(resource.as_str().unwrap()).is_file(), "{resource}");
    }

    let env = Envtest::start();
    let admin = env.client().await;
    apply(&admin, &render(&[]))
        .await
        .expect("the chart applies");
    let mut objects = read("protectedroute-home-assistant.yaml");
    objects.extend(read("clientidentity.yaml"));
    assert_eq!(
        kinds(&objects),
        ["ClientIdentity".to_owned(), "ProtectedRoute".to_owned()].into()
    );
    let route = find(&objects, "ProtectedRoute", None).unwrap();
    assert_eq!(
        route["spec"]["upstream"]["service"],
        json!({"name": "home-assistant", "port": 8123})
    );
    apply(&admin, &objects)
        .await
        .expect("the examples validate against the CRDs");
}

/// Installs the chart (as rendered, optionally edited) and returns a kubeconfig for its
/// ServiceAccount, once RBAC lets that account list ClientIdentities.
async fn install(
    env_kubeconfig: &std::path::Path,
    admin: &Client,
    docs: &[Value],
    dir: &std::path::Path,
) -> std::path::PathBuf {
    apply(admin, docs).await.expect("the chart applies");
    service_account(env_kubeconfig, admin, dir).await
}

/// A kubeconfig for the installed chart's ServiceAccount (a TokenRequest token), once its
/// RBAC is in effect.
async fn service_account(
    env_kubeconfig: &std::path::Path,
    admin: &Client,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let kubeconfig = service_account_kubeconfig(
        env_kubeconfig,
        admin,
        NAMESPACE,
        "portcullis",
        &dir.join("sa-kubeconfig"),
    )
    .await;
    // RBAC is enforced within a fraction of a second of the bindings being created.
    let sa = client_from(&kubeconfig).await;
    wait_for(
        "the ServiceAccount's RBAC to take effect",
        Duration::from_secs(10),
        async || {
            identities(&sa, "default")
                .list(&Default::default())
                .await
                .ok()
        },
    )
    .await
    .expect("the chart's ServiceAccount can list ClientIdentities");
    kubeconfig
}

/// Whether the account behind `client` may `verb` `resource` (in `ns`, named `name`).
async fn can(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
    name: Option<&str>,
) -> bool {
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "verb": verb, "group": group, "resource": resource,
            "namespace": ns, "name": name,
        }}
    }))
    .unwrap();
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await.unwrap();
    answer.status.unwrap().allowed
}

/// The edits the RBAC tests make to the rendered chart: drop `verb` from every rule of a
/// ClusterRole or Role whose resources are exactly `resources` (at least one has it).
fn without_verb(mut docs: Vec<Value>, resources: Value, verb: &str) -> Vec<Value> {
    let mut removed = 0;
    for role in docs
        .iter_mut()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        let rules = role["rules"].as_array_mut().unwrap();
        for rule in rules.iter_mut().filter(|r| r["resources"] == resources) {
            let verbs = rule["verbs"].as_array_mut().unwrap();
            let before = verbs.len();
            verbs.retain(|v| v != verb);
            removed += before - verbs.len();
        }
        // A rule without verbs is invalid: drop it.
        rules.retain(|r| !r["verbs"].as_array().unwrap().is_empty());
    }
    assert!(removed > 0, "no rendered rule for {resources} had {verb}");
    docs
}

/// The shared end-to-end scenario (tests/common/cluster.rs), run with the operator holding
/// only the chart ServiceAccount's credentials. `Err` carries the panic message of the step
/// that did not happen.
async fn shared_scenario(
    admin: &Client,
    sa: cluster::Credentials,
    ns: &str,
    step: Duration,
    scope: Option<portcullis::scope::Scope>,
) -> Result<cluster::ScenarioReport, String> {
    let mut opts = cluster::ScenarioOptions::new(NAMESPACE, ns);
    opts.timeout = step;
    if let Some(scope) = scope {
        opts.scope = scope;
    }
    // The scenario panics at the step that does not happen: catch that here. (Its future
    // is not `Send`-general, so it runs on this task rather than a spawned one.)
    let run = cluster::scenario(sa, admin.clone(), &opts);
    match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".into())),
    }
}

/// RBAC is proven: with only the chart ServiceAccounts' tokens (TokenRequest API) the
/// controller and the proxy, each with its own account, pass the whole shared scenario —
/// Lease, CA and cookie keys, data plane watches, identity minted with an Issued Event,
/// route Ready and serving the device, revocation (CRL, refused handshake), deletion
/// through the finalizer — without one failed API call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_rbac_passes_the_operator_scenario() {
    let env = Envtest::start();
    let admin = env.client().await;
    let dir = tempfile::tempdir().unwrap();
    apply(&admin, &render(&[]))
        .await
        .expect("the chart applies");
    let (controller, proxy) = split_accounts(&env.kubeconfig, &admin, dir.path(), "default").await;
    let proxy_reader = proxy.clone();
    // Generous per-step limit: the last step waits for the garbage collector, which learns
    // of a new CRD's kind only on its periodic resync (up to ~30 s, plus its backoff).
    let started = std::time::Instant::now();
    let credentials = cluster::Credentials::Split { controller, proxy };
    let report = shared_scenario(&admin, credentials, "home", Duration::from_secs(120), None)
        .await
        .unwrap_or_else(|e| panic!("the scenario failed with the chart's RBAC: {e}"));
    eprintln!(
        "shared scenario with the chart's ServiceAccounts in {:.1?}: {report:?}",
        started.elapsed()
    );
    assert_eq!(
        report.controller_failures, 0.0,
        "no reconcile failed (e.g. forbidden)"
    );
    assert!(
        report.event_reasons.iter().any(|r| r == "Issued"),
        "{report:?}"
    );
    // The proxy admitted the scenario's devices without ever reading the CA Secret.
    proxy_cannot_read_the_ca(&admin, &proxy_reader).await;
}

/// The proxy's account is refused the CA Secret (it holds the CA's private key), which
/// exists; the CRL Secret it reads instead holds the CA certificate and no key.
async fn proxy_cannot_read_the_ca(admin: &Client, proxy: &Client) {
    let own = Api::<Secret>::namespaced(admin.clone(), NAMESPACE);
    let ca = own
        .get("portcullis-ca")
        .await
        .expect("the controller created the CA");
    let crl = own
        .get("portcullis-crl")
        .await
        .expect("the controller wrote the CRL");
    let data = |s: &Secret, key: &str| s.data.as_ref().and_then(|d| d.get(key)).cloned();
    assert_eq!(
        data(&crl, "ca.crt"),
        data(&ca, "tls.crt"),
        "the CA certificate is published in the CRL Secret"
    );
    for (key, value) in crl.data.iter().flatten() {
        assert!(
            !String::from_utf8_lossy(&value.0).contains("PRIVATE KEY"),
            "portcullis-crl {key} holds a private key"
        );
    }
    let err = Api::<Secret>::namespaced(proxy.clone(), NAMESPACE)
        .get("portcullis-ca")
        .await
        .expect_err("the proxy read the CA Secret");
    match err {
        kube::Error::Api(s) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("{other}"),
    }
}

/// Clients for the chart's two ServiceAccounts (split mode), once RBAC lets each list
/// ClientIdentities in `ns`.
async fn split_accounts(
    env_kubeconfig: &std::path::Path,
    admin: &Client,
    dir: &std::path::Path,
    ns: &str,
) -> (Client, Client) {
    let mut clients = Vec::new();
    for account in ["portcullis-controller", "portcullis-proxy"] {
        let kubeconfig = service_account_kubeconfig(
            env_kubeconfig,
            admin,
            NAMESPACE,
            account,
            &dir.join(format!("{account}-kubeconfig")),
        )
        .await;
        let client = client_from(&kubeconfig).await;
        wait_for(
            "the ServiceAccount's RBAC to take effect",
            Duration::from_secs(10),
            async || identities(&client, ns).list(&Default::default()).await.ok(),
        )
        .await
        .unwrap_or_else(|e| panic!("{account} can list ClientIdentities in {ns}: {e}"));
        clients.push(client);
    }
    let proxy = clients.pop().unwrap();
    (clients.pop().unwrap(), proxy)
}

/// The proxy's account (the process facing the internet) cannot write any Secret,
/// anywhere; with `watchNamespaces` neither account can read a Secret outside those
/// namespaces (nor the release namespace's, but for the CA, CRL and cookie keys by name);
/// and the controller and the proxy, each with its own account and watching only `home`,
/// still do the whole job there while an identity elsewhere is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_account_writes_no_secret_and_reads_none_outside_watch_namespaces() {
    use portcullis::scope::Scope;
    let env = Envtest::start();
    let admin = env.client().await;
    let dir = tempfile::tempdir().unwrap();
    ensure_namespace(&admin, "elsewhere").await.unwrap();
    apply(&admin, &render(&["--set", "watchNamespaces={home}"]))
        .await
        .expect("the chart applies");
    let (controller, proxy) = split_accounts(&env.kubeconfig, &admin, dir.path(), "home").await;

    let (home, release, elsewhere) = (Some("home"), Some(NAMESPACE), Some("elsewhere"));
    for ns in [home, release, elsewhere, None] {
        for verb in ["create", "update", "patch", "delete", "deletecollection"] {
            assert!(
                !can(&proxy, verb, "", "secrets", ns, None).await,
                "the proxy may {verb} Secrets in {ns:?}"
            );
        }
    }
    for (allowed, verb, ns, name) in [
        (true, "list", home, None),
        (true, "watch", home, None),
        (false, "get", home, Some("any")),
        (false, "list", elsewhere, None),
        (false, "get", elsewhere, Some("any")),
        (false, "list", None, None),
        (false, "list", release, None),
        (true, "watch", release, Some("portcullis-crl")),
        (true, "get", release, Some("portcullis-cookie-keys")),
        // The CA Secret holds the CA key: the proxy reads the certificate in portcullis-crl.
        (false, "get", release, Some("portcullis-ca")),
        (false, "list", release, Some("portcullis-ca")),
        (false, "watch", release, Some("portcullis-ca")),
        (
            false,
            "get",
            release,
            Some("sh.helm.release.v1.portcullis.v1"),
        ),
    ] {
        assert_eq!(
            can(&proxy, verb, "", "secrets", ns, name).await,
            allowed,
            "proxy: {verb} secrets in {ns:?} named {name:?}"
        );
    }
    for (allowed, verb, ns) in [
        (true, "create", home),
        (false, "list", elsewhere),
        (false, "create", elsewhere),
        (false, "list", None),
    ] {
        assert_eq!(
            can(&controller, verb, "", "secrets", ns, None).await,
            allowed,
            "controller: {verb} secrets in {ns:?}"
        );
    }
    // Not only the review: the API server refuses the requests themselves.
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) => s.code,
        other => panic!("{other}"),
    };
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "forged"}, "stringData": {"a": "b"}}))
            .unwrap();
    let err = Api::<Secret>::namespaced(proxy.clone(), "home")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_err();
    assert_eq!(refused(err), 403);
    let err = Api::<Secret>::namespaced(proxy.clone(), "elsewhere")
        .list(&Default::default())
        .await
        .unwrap_err();
    assert_eq!(refused(err), 403);

    // An identity outside the watched namespaces is nobody's business.
    let outside = identities(&admin, "elsewhere");
    let ci: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "ClientIdentity",
        "metadata": {"name": "stranger"}, "spec": {}
    }))
    .unwrap();
    outside.create(&PostParams::default(), &ci).await.unwrap();

    let proxy_reader = proxy.clone();
    let credentials = cluster::Credentials::Split { controller, proxy };
    let scope = Scope::Namespaces(vec!["home".into()]);
    let report = shared_scenario(
        &admin,
        credentials,
        "home",
        Duration::from_secs(120),
        Some(scope),
    )
    .await
    .unwrap_or_else(|e| panic!("the scenario failed watching only home: {e}"));
    assert_eq!(report.controller_failures, 0.0, "{report:?}");
    // The devices were admitted with the CA certificate the controller published; the CA
    // Secret itself, which exists now, stays out of the proxy's reach.
    proxy_cannot_read_the_ca(&admin, &proxy_reader).await;
    let stranger = Api::<Secret>::namespaced(admin.clone(), "elsewhere")
        .get_opt("stranger-client")
        .await
        .unwrap();
    assert!(stranger.is_none(), "minted outside watchNamespaces");
    let status = outside.get("stranger").await.unwrap().data["status"].clone();
    assert!(
        status.is_null(),
        "reconciled outside watchNamespaces: {status}"
    );
}

/// A second missing verb, found by the shared scenario: without `patch` on
/// `clientidentities/status` the device files are minted but the identity never reports
/// Ready, so the scenario fails there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_status_verb_fails_the_scenario() {
    let env = Envtest::start();
    let admin = env.client().await;
    let dir = tempfile::tempdir().unwrap();
    let docs = without_verb(
        render(COMBINED),
        json!(["clientidentities/status"]),
        "patch",
    );
    let kubeconfig = install(&env.kubeconfig, &admin, &docs, dir.path()).await;
    let sa = client_from(&kubeconfig).await;
    let err = shared_scenario(&admin, sa.into(), "home", Duration::from_secs(15), None)
        .await
        .expect_err("the scenario must fail without patch on the ClientIdentity status");
    eprintln!("scenario failed as it must: {err}");
    assert!(
        err.contains("Ready=True"),
        "fails where the status should appear: {err}"
    );
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "home");
    assert!(
        secrets
            .get_opt("scenario-device-client")
            .await
            .unwrap()
            .is_some(),
        "minting itself was allowed"
    );
}

/// The same RBAC runs the real binary: `portcullis operator` out of cluster with a
/// kubeconfig holding the ServiceAccount's token mints an identity, readies a route and
/// revokes the identity; the ServiceAccount is refused what the chart does not grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_binary_runs_on_the_chart_service_account() {
    let env = Envtest::start();
    let admin = env.client().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = install(&env.kubeconfig, &admin, &render(COMBINED), dir.path()).await;

    // Least privilege, spot-checked: what it needs, and what the chart must not grant.
    let sa = client_from(&kubeconfig).await;
    let (ns, home, lease) = (Some(NAMESPACE), Some("home"), Some("portcullis-controller"));
    let (coordination, crds, pd) = (
        "coordination.k8s.io",
        "apiextensions.k8s.io",
        "portcullis.dev",
    );
    for (allowed, verb, group, resource, namespace, name) in [
        (true, "create", "", "secrets", home, None),
        (true, "patch", coordination, "leases", ns, lease),
        (false, "delete", "", "secrets", home, None),
        (false, "update", "", "secrets", home, None),
        (false, "list", "", "configmaps", ns, None),
        (false, "create", coordination, "leases", home, None),
        (false, "patch", coordination, "leases", ns, Some("other")),
        (false, "delete", pd, "clientidentities", home, None),
        (false, "create", pd, "protectedroutes", home, None),
        (
            false,
            "update",
            crds,
            "customresourcedefinitions",
            None,
            None,
        ),
    ] {
        assert_eq!(
            can(&sa, verb, group, resource, namespace, name).await,
            allowed,
            "{verb} {group}/{resource} in {namespace:?} named {name:?}"
        );
    }

    let operator = Operator::start(
        &kubeconfig,
        NAMESPACE,
        "portcullis-0",
        &dir.path().join("operator.log"),
    );
    let started = std::time::Instant::now();
    let result = scenario(&admin, NAMESPACE, "home", "phone", Duration::from_secs(60)).await;
    if let Err(e) = &result {
        panic!(
            "scenario failed with the chart's RBAC: {e}\n--- operator log ---\n{}",
            operator.log_tail(60)
        );
    }
    eprintln!(
        "scenario passed with the chart's ServiceAccount in {:.1?}",
        started.elapsed()
    );
    let log = operator.log_text();
    assert!(
        !log.contains("forbidden"),
        "a request was forbidden:\n{}",
        operator.log_tail(60)
    );
    // The CA was created by the operator, in its namespace.
    let own: Api<Secret> = Api::namespaced(admin.clone(), NAMESPACE);
    assert!(own.get_opt("portcullis-ca").await.unwrap().is_some());
}

/// A missing verb fails the scenario: without `create` on Secrets the operator binary
/// cannot create the CA (nor mint anything), and its log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_verb_fails_the_scenario() {
    let env = Envtest::start();
    let admin = env.client().await;
    let dir = tempfile::tempdir().unwrap();
    let docs = without_verb(render(COMBINED), json!(["secrets"]), "create");
    let kubeconfig = install(&env.kubeconfig, &admin, &docs, dir.path()).await;

    let operator = Operator::start(
        &kubeconfig,
        NAMESPACE,
        "portcullis-0",
        &dir.path().join("operator.log"),
    );
    let err = scenario(&admin, NAMESPACE, "home", "phone", Duration::from_secs(20))
        .await
        .expect_err("the scenario must fail without create on Secrets");
    eprintln!("scenario failed as it must: {err}");
    assert!(
        err.contains("Secret home/phone-client"),
        "fails at minting: {err}"
    );
    let log = operator.log_text();
    assert!(
        log.contains("forbidden") && log.contains("secrets"),
        "the operator reports the forbidden Secret create:\n{}",
        operator.log_tail(40)
    );
    let own: Api<Secret> = Api::namespaced(admin.clone(), NAMESPACE);
    assert!(
        own.get_opt("portcullis-ca").await.unwrap().is_none(),
        "no CA without create"
    );
}

/// Why the chart grants `update` on `clientidentities/finalizers` and
/// `protectedroutes/finalizers`: with the OwnerReferencesPermissionEnforcement admission
/// plugin (off by default, on in hardened clusters) a Secret with a `blockOwnerDeletion`
/// owner reference may only be written by whoever may update its owner's finalizers.
/// Without that rule the operator cannot mint; with the chart's RBAC it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_reference_enforcement_needs_the_finalizers_rule() {
    let env = Envtest::start_with(&[
        "--apiserver-arg=--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
    ]);
    let admin = env.client().await;
    let dir = tempfile::tempdir().unwrap();
    let finalizers = json!(["clientidentities/finalizers", "protectedroutes/finalizers"]);
    let docs = without_verb(render(COMBINED), finalizers, "update");
    let kubeconfig = install(&env.kubeconfig, &admin, &docs, dir.path()).await;
    let mut operator = Operator::start(
        &kubeconfig,
        NAMESPACE,
        "portcullis-0",
        &dir.path().join("a.log"),
    );
    let err = scenario(&admin, NAMESPACE, "home", "phone", Duration::from_secs(15))
        .await
        .expect_err("no minting without update on the owners' finalizers");
    assert!(
        err.contains("Secret home/phone-client"),
        "fails at minting: {err}"
    );
    let log = operator.log_text();
    assert!(
        log.contains("cannot set blockOwnerDeletion"),
        "the API server says why:\n{}",
        operator.log_tail(30)
    );
    operator.stop();

    // The chart as rendered: the same cluster, and minting works.
    apply(&admin, &render(COMBINED))
        .await
        .expect("the chart applies");
    let operator = Operator::start(
        &kubeconfig,
        NAMESPACE,
        "portcullis-1",
        &dir.path().join("b.log"),
    );
    scenario(
        &admin,
        NAMESPACE,
        "home2",
        "tablet",
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("with the chart's RBAC: {e}\n{}", operator.log_tail(40)));
}

/// `helm install` and `helm upgrade` against the real API server: invalid values fail with
/// the schema's message and install nothing; the NOTES' two commands work as pasted; an
/// upgrade with other values (and a new operator pod) never replaces the CA Secret — same
/// object, same bytes — and devices minted after it chain to the same CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_never_replaces_the_ca_secret() {
    let env = Envtest::start();
    let admin = env.client().await;
    let dir = tempfile::tempdir().unwrap();
    let chart = chart_dir();
    let (chart, kc) = (chart.to_str().unwrap(), env.kubeconfig.to_str().unwrap());
    let helm = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&[RELEASE, chart, "--namespace", NAMESPACE, "--kubeconfig", kc]);
        run_helm(&all)
    };

    let err = helm(&["install", "--create-namespace", "--set", "replicas=two"])
        .expect_err("helm install with a wrong-typed value");
    assert!(
        err.contains("at '/replicas': got string, want integer"),
        "{err}"
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(admin.clone(), NAMESPACE);
    assert!(
        deployments.get_opt("portcullis").await.unwrap().is_none(),
        "nothing installed"
    );

    let notes = helm(&[
        "install",
        "--create-namespace",
        "--set",
        "operator.mode=combined",
    ])
    .expect("helm install");
    for next in [
        "kind: ClientIdentity",
        "kubectl -n home-assistant get secret phone-client -o jsonpath='{.data.keystore\\.p12}' | base64 -d > phone.p12",
        "{.data.keystore\\.p12\\.password}",
    ] {
        assert!(notes.contains(next), "NOTES tell {next:?}:\n{notes}");
    }
    let kubeconfig = service_account(&env.kubeconfig, &admin, dir.path()).await;
    let own: Api<Secret> = Api::namespaced(admin.clone(), NAMESPACE);

    let mut first = Operator::start(
        &kubeconfig,
        NAMESPACE,
        "portcullis-old",
        &dir.path().join("old.log"),
    );
    let before = scenario(&admin, NAMESPACE, "home", "phone", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("before the upgrade: {e}\n{}", first.log_tail(40)));

    // The NOTES' first command works as pasted (its heredoc YAML applies), and the Secret
    // its second command exports appears with the .p12 and its password.
    let heredoc: String = notes
        .lines()
        .skip_while(|l| !l.starts_with("kubectl apply -n home-assistant -f - <<'YAML'"))
        .skip(1)
        .take_while(|l| *l != "YAML")
        .map(|l| format!("{l}\n"))
        .collect();
    let mut pasted = documents(&heredoc);
    assert_eq!(
        kinds(&pasted),
        ["ClientIdentity".to_owned(), "ProtectedRoute".to_owned()].into()
    );
    for doc in &mut pasted {
        doc["metadata"]["namespace"] = json!("home-assistant");
    }
    apply(&admin, &pasted)
        .await
        .expect("the NOTES' YAML applies");
    let exported: Api<Secret> = Api::namespaced(admin.clone(), "home-assistant");
    wait_for(
        "home-assistant/phone-client",
        Duration::from_secs(60),
        async || {
            let data = exported.get_opt("phone-client").await.ok()??.data?;
            (data.contains_key("keystore.p12") && data.contains_key("keystore.p12.password"))
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", first.log_tail(40)));

    let ca_before = own.get("portcullis-ca").await.unwrap();
    // The rollout: the old pod stops (SIGTERM releases the Lease), the new one starts.
    first.stop();

    let out = helm(&[
        "upgrade",
        "--set",
        "operator.mode=combined",
        "--set",
        "replicas=2",
        "--set",
        "service.type=NodePort",
        "--set",
        "operator.logJson=false",
        "--set",
        "image.tag=0.1.1",
        "--set",
        "resources.limits.memory=256Mi",
    ])
    .expect("helm upgrade");
    assert!(out.contains("REVISION: 2"), "{out}");
    let manifest = run_helm(&[
        "get",
        "manifest",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        kc,
    ])
    .expect("helm get manifest");
    assert!(
        !kinds(&documents(&manifest)).contains("Secret"),
        "the chart never templates a Secret"
    );
    let d = deployments.get("portcullis").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(2), "the upgrade applied");

    let second = Operator::start(
        &kubeconfig,
        NAMESPACE,
        "portcullis-new",
        &dir.path().join("new.log"),
    );
    let after = scenario(&admin, NAMESPACE, "home", "tablet", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("after the upgrade: {e}\n{}", second.log_tail(40)));
    let ca_after = own.get("portcullis-ca").await.unwrap();

    assert_eq!(
        ca_after.metadata.uid, ca_before.metadata.uid,
        "the same CA Secret object"
    );
    assert_eq!(
        ca_after.metadata.resource_version, ca_before.metadata.resource_version,
        "the CA Secret was not written to"
    );
    assert!(
        ca_after.data == ca_before.data,
        "the CA certificate and key are unchanged"
    );
    let ca_crt = &ca_after.data.as_ref().unwrap()["tls.crt"].0;
    assert_eq!(&before.ca_crt, ca_crt, "the first device chains to the CA");
    assert_eq!(
        &after.ca_crt, ca_crt,
        "a device minted after the upgrade chains to the same CA"
    );
}
