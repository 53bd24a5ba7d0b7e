//! `portcullis backup` / `restore` in Kubernetes mode on real API servers (tests/envtest):
//! an installation is backed up from one control plane and restored into a fresh one,
//! where the operator then starts on the restored objects. Logs: target/tmp/backup-*.log.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[allow(dead_code)]
mod envtest;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use portcullis::controller::names;
use portcullis::resources::{ClientIdentity, ProtectedRoute};
use serde_json::json;

use cluster::*;
use common::Upstream;
use envtest::Envtest;

const T: Duration = Duration::from_secs(60);
const OPERATOR_NS: &str = "portcullis-system";
const NS: &str = "home";
const HOST: &str = "ha.test";
const PASSWORD: &str = "correct horse battery staple";

fn portcullis(kubeconfig: &Path, args: &[&str], password_file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .arg("--password-file")
        .arg(password_file)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("PORTCULLIS_BACKUP_PASSWORD")
        .output()
        .expect("run portcullis")
}

fn output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn secret(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("read Secret")
}

fn with_cookie(cookie: &str) -> hyper::Request<common::ReqBody> {
    common::with_headers(
        common::get("/"),
        &[("cookie", &common::cookie_header(cookie))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_cluster_keeps_ca_devices_revocations_and_cookies() {
    // Two control planes, started together (two cores: overlap the waits).
    let second = std::thread::spawn(Envtest::start);
    let first = Envtest::start();
    let admin = first.client().await;
    apply_crds(&admin).await.unwrap();
    for ns in [OPERATOR_NS, NS] {
        ensure_namespace(&admin, ns).await.unwrap();
    }
    let upstream = Upstream::start().await;

    // Before: a phone (re-issued once, so its first certificate lives on in previous.crt),
    // a tablet that is then revoked, one route; the phone earns a cookie.
    let op = InProcessOperator::start(admin.clone(), OPERATOR_NS, "before").await;
    wait_data_plane(op.admin, T).await;
    let ids: Api<ClientIdentity> = Api::namespaced(admin.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    apply(&ids, &identity("phone", json!({}))).await.unwrap();
    apply(&ids, &identity("tablet", json!({}))).await.unwrap();
    // Another release's device: not this backup's to keep.
    let mut theirs = identity("theirs", json!({}));
    theirs["metadata"]["labels"] = json!({ names::INSTANCE_LABEL: "other-release" });
    apply(&ids, &theirs).await.unwrap();
    apply(
        &Api::<ProtectedRoute>::namespaced(admin.clone(), NS),
        &url_route("ha", &[HOST], upstream.addr),
    )
    .await
    .unwrap();
    let phone_first = wait_secret(&secrets, "phone-client", T).await;
    let tablet = wait_secret(&secrets, "tablet-client", T).await;
    wait_condition(&ids, "phone", "Ready", "True", T).await;
    let phone_device = device_client(op.proxy, &phone_first, HOST);
    let cookie = eventually("the phone admitted", T, async || {
        let resp = phone_device.get("/").await.map_err(|e| e.to_string())?;
        match resp.status.as_u16() {
            200 => resp.gate_cookie().ok_or("no cookie".to_owned()),
            other => Err(format!("{other} {}", resp.text())),
        }
    })
    .await;
    patch_spec(&ids, "phone", json!({"commonName": "phones-new-name"}))
        .await
        .unwrap();
    let phone = eventually("the phone re-issued", T, async || {
        let s = secrets
            .get("phone-client")
            .await
            .map_err(|e| e.to_string())?;
        let renewed = data(&s, names::TLS_CRT) != data(&phone_first, names::TLS_CRT);
        (renewed
            && s.data
                .as_ref()
                .is_some_and(|d| d.contains_key("previous.crt")))
        .then_some(s)
        .ok_or("not yet".to_owned())
    })
    .await;
    patch_spec(&ids, "tablet", json!({"revoked": true}))
        .await
        .unwrap();
    let tablet_device = device_client(op.proxy, &tablet, HOST);
    eventually("the tablet refused", T, async || {
        match tablet_device.probe().await {
            o if o.is_refused() => Ok(()),
            o => Err(format!("{o:?}")),
        }
    })
    .await;
    wait_condition(&ids, "tablet", "Revoked", "True", T).await;
    op.stop().await.unwrap();
    let before_ca = secret(&admin, OPERATOR_NS, names::CA_SECRET).await.unwrap();
    let before_cookies = secret(&admin, OPERATOR_NS, names::COOKIE_KEYS_SECRET)
        .await
        .unwrap();

    // Backup, with the real binary and the first control plane's kubeconfig.
    let tmp = tempfile::tempdir().unwrap();
    let (password, wrong, file) = (
        tmp.path().join("password"),
        tmp.path().join("wrong"),
        tmp.path().join("cluster.age"),
    );
    std::fs::write(&password, PASSWORD).unwrap();
    std::fs::write(&wrong, "not the password").unwrap();
    let file_arg = file.to_str().unwrap();
    let out = portcullis(
        &first.kubeconfig,
        &["backup", "--namespace", OPERATOR_NS, "-o", file_arg],
        &password,
    );
    assert!(out.status.success(), "{}", output(&out));
    assert!(
        output(&out).contains("2 ClientIdentities, 1 ProtectedRoutes"),
        "{}",
        output(&out)
    );

    // A fresh control plane: CRDs first (as helm or kubectl would), no operator yet.
    let second: Envtest = second.join().expect("second control plane");
    let fresh = second.client().await;
    apply_crds(&fresh).await.unwrap();
    let restore = |pw: &PathBuf| {
        portcullis(
            &second.kubeconfig,
            &["restore", file_arg, "--namespace", OPERATOR_NS],
            pw,
        )
    };

    // A wrong password: a clear error, nothing written.
    let out = restore(&wrong);
    assert!(!out.status.success());
    assert!(output(&out).contains("wrong password"), "{}", output(&out));
    let fresh_ids: Api<ClientIdentity> = Api::all(fresh.clone());
    assert!(
        fresh_ids
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        secret(&fresh, OPERATOR_NS, names::CA_SECRET)
            .await
            .is_none()
    );

    let out = restore(&password);
    assert!(out.status.success(), "{}", output(&out));
    // Once restored, the CA exists: a second restore is refused, naming it.
    let out = restore(&password);
    assert!(!out.status.success());
    let said = output(&out);
    assert!(
        said.contains(&format!(
            "CA Secret {OPERATOR_NS}/{} already exists",
            names::CA_SECRET
        )),
        "{said}"
    );

    // The restored Secrets are owned by the restored identities' new UIDs.
    let restored_ids: Api<ClientIdentity> = Api::namespaced(fresh.clone(), NS);
    assert!(
        restored_ids.get_opt("theirs").await.unwrap().is_none(),
        "another release's ClientIdentity is not in this release's backup"
    );
    let restored_phone = secret(&fresh, NS, "phone-client").await.unwrap();
    let new_uid = restored_ids.get("phone").await.unwrap().uid();
    let owner = &restored_phone.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("ClientIdentity", new_uid.as_ref())
    );
    assert_ne!(new_uid, ids.get("phone").await.unwrap().uid(), "a new UID");

    assert_eq!(
        restored_phone
            .labels()
            .get(names::INSTANCE_LABEL)
            .map(String::as_str),
        Some(names::DEFAULT_INSTANCE),
        "labelled for the release that will run on it"
    );
    let restored_version = restored_phone.resource_version();

    // After: the operator starts on the restored objects.
    let op = InProcessOperator::start(fresh.clone(), OPERATOR_NS, "after").await;
    wait_data_plane(op.admin, T).await;
    let restored_secrets: Api<Secret> = Api::namespaced(fresh.clone(), NS);
    wait_condition(&restored_ids, "phone", "Ready", "True", T).await;
    wait_condition(&restored_ids, "tablet", "Revoked", "True", T).await;
    wait_condition(
        &Api::<ProtectedRoute>::namespaced(fresh.clone(), NS),
        "ha",
        "Ready",
        "True",
        T,
    )
    .await;

    // No new CA, no re-issued device: the very same bytes.
    let after_ca = secret(&fresh, OPERATOR_NS, names::CA_SECRET).await.unwrap();
    assert_eq!(
        data(&after_ca, names::TLS_KEY),
        data(&before_ca, names::TLS_KEY)
    );
    let after_cookies = secret(&fresh, OPERATOR_NS, names::COOKIE_KEYS_SECRET)
        .await
        .unwrap();
    assert_eq!(
        data(&after_cookies, names::COOKIE_KEYS_KEY),
        data(&before_cookies, names::COOKIE_KEYS_KEY)
    );
    let after_phone = restored_secrets.get("phone-client").await.unwrap();
    assert_eq!(
        data(&after_phone, names::TLS_CRT),
        data(&phone, names::TLS_CRT)
    );
    // Not even re-exported: the controller found the Secret exactly as it would write it.
    assert_eq!(
        after_phone.resource_version(),
        restored_version,
        "the controller rewrote the restored phone Secret"
    );
    let reasons = event_reasons(&fresh, NS, "phone").await.unwrap();
    assert!(
        !reasons.iter().any(|r| r == "Issued" || r == "Renewed"),
        "the restored operator re-issued the phone: {reasons:?}"
    );

    // Through the data plane: both of the phone's certificates and its cookie are in, the
    // revoked tablet is out.
    for (what, secret) in [("first", &phone_first), ("current", &phone)] {
        let client = device_client(op.proxy, secret, HOST);
        eventually(
            &format!("the phone's {what} certificate admitted"),
            T,
            async || {
                let resp = client.get("/").await.map_err(|e| e.to_string())?;
                (resp.status.as_u16() == 200)
                    .then_some(())
                    .ok_or_else(|| format!("{} {}", resp.status, resp.text()))
            },
        )
        .await;
    }
    let tablet_device = device_client(op.proxy, &tablet, HOST);
    assert!(
        tablet_device.probe().await.is_refused(),
        "the revoked tablet"
    );
    let anonymous = anonymous_client(op.proxy, data(&phone, names::CA_CRT), HOST);
    let resp = anonymous.send(with_cookie(&cookie)).await.unwrap();
    assert_eq!(resp.status.as_u16(), 200, "the cookie: {}", resp.text());
    let resp = anonymous.get("/").await.unwrap();
    assert_eq!(resp.status.as_u16(), 403);
    op.stop().await.unwrap();
}
