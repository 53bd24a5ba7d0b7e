use std::time::Duration;

use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

use super::*;
use crate::controller::conditions::time;
use crate::controller::fixtures::{DAY, identity, route};
use crate::pki::Ca;

#[test]
fn hosts_are_normalized_once() {
    let hosts = normalized_hosts(&[
        "HA.example.test".into(),
        "ha.example.test".into(),
        "::0001".into(),
    ]);
    assert_eq!(hosts, ["ha.example.test", "::1"]);
}

#[test]
fn minted_server_secret_roundtrips() {
    let ca = Ca::generate("t").unwrap();
    let pr = route("ha");
    let cert = ca.issue_server(&["ha.example.test".into()], DAY).unwrap();
    let secret = server_secret(&pr, "home", "portcullis", &cert).unwrap();
    assert_eq!(secret.metadata.name.as_deref(), Some("ha-server-tls"));
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        secret.metadata.labels.as_ref().unwrap()["portcullis.dev/route"],
        "ha"
    );
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.controller,
            owner.block_owner_deletion
        ),
        ("ProtectedRoute", Some(true), Some(true))
    );
    assert_eq!(read_tls(&secret).unwrap().info, cert.info);
}

#[test]
fn brought_secret_is_checked() {
    let ca = Ca::generate("t").unwrap();
    let pr = route("ha");
    let now = std::time::SystemTime::now();
    let hosts = vec!["ha.example.test".to_owned()];
    let (reason, msg) = check_own_secret("home", "le-cert", None, &hosts, now).unwrap_err();
    assert_eq!(reason, "ServerSecretMissing");
    assert!(msg.contains("home/le-cert"), "{msg}");

    let wildcard = ca.issue_server(&["*.example.test".into()], DAY).unwrap();
    let mut secret = server_secret(&pr, "home", "portcullis", &wildcard).unwrap();
    // Usable, but the data plane would not see it without the opt-in label.
    let (reason, msg) =
        check_own_secret("home", "le-cert", Some(&secret), &hosts, now).unwrap_err();
    assert_eq!(reason, "ServerSecretUnlabelled");
    assert!(
        msg.contains("kubectl label secret -n home le-cert portcullis.dev/server-certificate=true"),
        "{msg}"
    );
    secret
        .metadata
        .labels
        .get_or_insert_default()
        .insert(SERVER_CERTIFICATE_LABEL.into(), "true".into());
    assert!(check_own_secret("home", "le-cert", Some(&secret), &hosts, now).is_ok());
    let (reason, msg) = check_own_secret(
        "home",
        "le-cert",
        Some(&secret),
        &["other.test".into()],
        now,
    )
    .unwrap_err();
    assert_eq!(reason, "ServerSecretInvalid");
    assert!(msg.contains("does not cover other.test"), "{msg}");
    let (_, msg) =
        check_own_secret("home", "le-cert", Some(&secret), &hosts, now + 2 * DAY).unwrap_err();
    assert!(msg.contains("expired"), "{msg}");
    let (reason, msg) =
        check_own_secret("home", "le-cert", Some(&Secret::default()), &hosts, now).unwrap_err();
    assert_eq!(reason, "ServerSecretInvalid");
    assert!(msg.contains("no tls.crt"), "{msg}");
}

#[test]
fn upstream_service_must_exist_with_the_port() {
    let svc = ServiceRef {
        name: "ha".into(),
        port: 8123,
    };
    let (reason, msg) = check_service("home", &svc, None).unwrap_err();
    assert_eq!(reason, "UpstreamServiceMissing");
    assert!(msg.contains("Service home/ha"), "{msg}");
    let service = |port| Service {
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    assert!(check_service("home", &svc, Some(&service(8123))).is_ok());
    let (_, msg) = check_service("home", &svc, Some(&service(80))).unwrap_err();
    assert!(msg.contains("no port 8123"), "{msg}");
}

#[test]
fn admitted_counts_live_matching_identities() {
    let labelled = |name: &str, room: &str| {
        let mut ci = identity(name);
        ci.metadata.labels = Some(BTreeMap::from([("room".to_owned(), room.to_owned())]));
        Arc::new(ci)
    };
    let mut revoked = identity("old");
    revoked.spec.revoked = true;
    let all = vec![
        labelled("a", "kitchen"),
        labelled("b", "hall"),
        Arc::new(identity("c")),
        Arc::new(revoked),
    ];
    assert_eq!(admitted(&all, None), 3);
    let kitchen = LabelSelector {
        match_labels: Some(BTreeMap::from([("room".into(), "kitchen".into())])),
        ..LabelSelector::default()
    };
    assert_eq!(admitted(&all, Some(&kitchen)), 1);
    let bad = LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "room".into(),
            operator: "Bogus".into(),
            values: None,
        }]),
        ..LabelSelector::default()
    };
    assert_eq!(admitted(&all, Some(&bad)), 0);
}

#[test]
fn status_is_stable_and_hosts_only_while_ready() {
    let mut pr = route("ha");
    let t0 = time(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let t1 = time(std::time::UNIX_EPOCH + Duration::from_secs(1_800_003_600));
    let hosts = vec!["ha.example.test".to_owned()];
    let ready = route_status(&pr, &Ok("serving".into()), &hosts, 2, &t0);
    assert_eq!(
        (
            ready.hosts.clone(),
            ready.admitted_identities,
            ready.observed_generation
        ),
        (hosts.clone(), Some(2), Some(3))
    );
    pr.status = Some(ready.clone());
    assert_eq!(
        route_status(&pr, &Ok("serving".into()), &hosts, 2, &t1),
        ready
    );
    let blocked = route_status(
        &pr,
        &Err(("UpstreamServiceMissing", "create it".into())),
        &hosts,
        2,
        &t1,
    );
    assert!(blocked.hosts.is_empty());
    let c = &blocked.conditions[0];
    assert_eq!(
        (
            c.status.as_str(),
            c.reason.as_str(),
            &c.last_transition_time
        ),
        ("False", "UpstreamServiceMissing", &t1)
    );
}
