//! The CRDs refuse at apply time what the gate would reject (src/resources/schema.rs):
//! `kubectl apply` against a real API server (tests/envtest) of each invalid object fails
//! with the rule's message, every duration of the shared table
//! (src/resources/validate/duration_cases.rs) is accepted or refused as the Rust parser
//! decides, and the examples in examples/k8s/ still apply.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[allow(dead_code)]
mod envtest;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use portcullis::resources::schema::{
    COMMON_NAME_MESSAGE, DURATION_MESSAGE, HOSTS_MESSAGE, SERVER_CERTIFICATE_MESSAGE,
    STRIP_HEADERS_MESSAGE, UPSTREAM_MESSAGE,
};
use serde_json::{Value, json};

include!("../src/resources/validate/duration_cases.rs");

const NS: &str = "home-assistant";

/// `kubectl apply -f -` of `docs` (YAML or JSON); `Ok(stdout)` or `Err(stderr)`.
fn kubectl_apply(kubeconfig: &Path, docs: &str) -> Result<String, String> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "apply",
            "--server-side",
            "--field-manager=crd-test",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(docs.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

fn identity(name: &str, spec: Value) -> String {
    json!({"apiVersion": cluster::API_VERSION, "kind": "ClientIdentity",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
    .to_string()
}

fn route(name: &str, spec: Value) -> String {
    let mut full =
        json!({"hosts": ["ha.example.org"], "upstream": {"url": "http://127.0.0.1:8123"}});
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    json!({"apiVersion": cluster::API_VERSION, "kind": "ProtectedRoute",
           "metadata": {"name": name, "namespace": NS}, "spec": full})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_refused_at_apply_time() {
    let env = envtest::Envtest::start_with(&["--controllers=none"]);
    let admin = env.client().await;
    cluster::apply_crds(&admin).await.unwrap();
    cluster::ensure_namespace(&admin, NS).await.unwrap();
    let kc = env.kubeconfig.clone();

    // Each invalid object, and a part of the message the API server must answer with.
    let long_cn = "x".repeat(65);
    let invalid: Vec<(&str, String, &str)> = vec![
        (
            "both upstreams",
            route(
                "r1",
                json!({"upstream": {"url": "http://127.0.0.1:8123",
                                     "service": {"name": "ha", "port": 8123}}}),
            ),
            UPSTREAM_MESSAGE,
        ),
        (
            "no upstream",
            route("r2", json!({"upstream": {}})),
            UPSTREAM_MESSAGE,
        ),
        (
            "two certificate sources",
            route(
                "r3",
                json!({"serverCertificate": {"issue": {}, "secretName": "ha-tls"}}),
            ),
            SERVER_CERTIFICATE_MESSAGE,
        ),
        (
            "a Secret and files",
            route(
                "r3f",
                json!({"serverCertificate": {"secretName": "ha-tls",
                       "files": {"certificate": "/ssl/fullchain.pem", "key": "/ssl/privkey.pem"}}}),
            ),
            SERVER_CERTIFICATE_MESSAGE,
        ),
        (
            "a Secret and ACME",
            route(
                "r3a",
                json!({"serverCertificate": {"secretName": "ha-tls",
                       "acme": {"email": "me@example.com"}}}),
            ),
            SERVER_CERTIFICATE_MESSAGE,
        ),
        (
            "host with a port",
            route("r4", json!({"hosts": ["ha.example.org:8443"]})),
            HOSTS_MESSAGE,
        ),
        (
            "host as a URL",
            route("r5", json!({"hosts": ["https://ha.example.org"]})),
            HOSTS_MESSAGE,
        ),
        (
            "wildcard host",
            route("r6", json!({"hosts": ["ok.example.org", "*.example.org"]})),
            HOSTS_MESSAGE,
        ),
        (
            "numeric last label",
            route("r7", json!({"hosts": ["1.2.3"]})),
            HOSTS_MESSAGE,
        ),
        (
            "cookie ttl with a space",
            route(
                "r8",
                json!({"clientAuth": {"cookieFallback": {"ttl": "1 h"}}}),
            ),
            DURATION_MESSAGE,
        ),
        (
            "strip header with a space",
            route("r9", json!({"stripHeaders": ["X-Ok", "X Bad"]})),
            STRIP_HEADERS_MESSAGE,
        ),
        (
            "strip header with a * inside",
            route("r10", json!({"stripHeaders": ["X-*-User"]})),
            STRIP_HEADERS_MESSAGE,
        ),
        (
            "blank commonName",
            identity("i1", json!({"commonName": "  "})),
            COMMON_NAME_MESSAGE,
        ),
        (
            "commonName over 64 characters",
            identity("i2", json!({"commonName": long_cn})),
            "64",
        ),
        (
            "renewBefore in Go's fractions",
            identity("i3", json!({"renewBefore": "1.5h"})),
            DURATION_MESSAGE,
        ),
    ];
    let mut failures = Vec::new();
    for (what, doc, message) in &invalid {
        match kubectl_apply(&kc, doc) {
            Ok(out) => failures.push(format!("{what}: accepted ({out})")),
            Err(err) if !err.contains(message) => {
                failures.push(format!("{what}: refused without {message:?}: {err}"))
            }
            Err(err) => eprintln!("{what}: {}", err.trim()),
        }
    }

    // The shared duration table, as a ClientIdentity's validity.
    for (i, &(text, secs)) in DURATION_CASES.iter().enumerate() {
        let doc = identity(&format!("d{i}"), json!({"validity": text}));
        match (kubectl_apply(&kc, &doc), secs) {
            (Ok(_), Some(_)) => {}
            (Err(err), None) if err.contains(DURATION_MESSAGE) || err.contains("Too long") => {}
            (result, _) => failures.push(format!("duration {text:?}: {result:?}")),
        }
    }

    // The examples still apply, the valid forms of the rules' fields too.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/k8s");
    for file in ["protectedroute-home-assistant.yaml", "clientidentity.yaml"] {
        let text = std::fs::read_to_string(examples.join(file)).unwrap();
        if let Err(err) = kubectl_apply(&kc, &text) {
            failures.push(format!("examples/k8s/{file}: {err}"));
        }
    }
    let valid = [
        route(
            "v1",
            json!({"hosts": ["HA.Example.org", "192.168.1.10", "::1", "fe80::1:2", "localhost"]}),
        ),
        route(
            "v2",
            json!({"upstream": {"service": {"name": "ha", "port": 8123}},
                   "serverCertificate": {"secretName": "ha-tls"}}),
        ),
        // Accepted by the schema (standalone uses it); the controller refuses it in status.
        route(
            "v4",
            json!({"serverCertificate": {"files": {"certificate": "/ssl/fullchain.pem",
                                                   "key": "/ssl/privkey.pem"}}}),
        ),
        // Accepted by the schema (standalone uses it); the controller refuses it in status.
        route(
            "v5",
            json!({"serverCertificate": {"acme": {"email": "me@example.com",
                                                  "challenge": "http-01"}}}),
        ),
        identity(
            "v3",
            json!({"commonName": "x".repeat(64), "renewBefore": "30d"}),
        ),
        route(
            "v4",
            json!({"stripHeaders": ["X-Home-User", "x_corp_*"], "allowUnderscoreHeaders": true}),
        ),
    ];
    for doc in &valid {
        if let Err(err) = kubectl_apply(&kc, doc) {
            failures.push(format!("valid object refused: {err}\n{doc}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `kubectl KUBECTL_ARGS -f FILE`; `Ok(stdout)` or `Err(stderr)`.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// Helm creates `crds/` on first install (an ordinary create, manager `helm`) and never
/// upgrades them. Applying a changed CRD server-side then conflicts with Helm's fields;
/// the documented command (helm/portcullis/README.md, "Upgrades, CRDs") takes them over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_upgrade_over_helm_needs_force_conflicts() {
    let env = envtest::Envtest::start_with(&["--controllers=none"]);
    let kc = env.kubeconfig.clone();
    let dir = tempfile::tempdir().unwrap();
    // An older chart's CRDs: the same, with another limit.
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/portcullis/crds");
    let current = std::fs::read_to_string(crds.join("portcullis.yaml")).unwrap();
    let old = dir.path().join("old.yaml");
    std::fs::write(&old, current.replace("maxLength: 64", "maxLength: 60")).unwrap();
    let old = old.to_str().unwrap();
    let crds = crds.to_str().unwrap();
    kubectl(&kc, &["create", "--field-manager=helm", "-f", old]).unwrap();

    let err = kubectl(&kc, &["apply", "--server-side", "-f", crds]).unwrap_err();
    assert!(err.contains("conflict"), "{err}");
    kubectl(
        &kc,
        &["apply", "--server-side", "--force-conflicts", "-f", crds],
    )
    .unwrap();
    let explained = kubectl(
        &kc,
        &[
            "get",
            "crd",
            "clientidentities.portcullis.dev",
            "-o",
            "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.commonName.maxLength}",
        ],
    )
    .unwrap();
    assert_eq!(explained, "64");
}
