//! The pure parts of the ProtectedRoute reconcile: the server certificate Secret, the
//! checks of a brought Secret and of the upstream Service, the admitted count, the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::core::{Selector, SelectorExt};

use super::apply::{SecretSpec, owner_ref, secret_text};
use super::conditions::{READY, Want, merge};
use super::names::{
    ROUTE_LABEL, SERVER_CERTIFICATE_LABEL, TLS_CRT, TLS_KEY, TLS_SECRET_TYPE, route_secret_name,
};
use super::ownership::{SECRET_CONFLICT, SECRET_NOT_OWNED};
use super::{Error, Result};
use crate::pki::renewal::{covers, normalize_host, san_hosts};
use crate::pki::{IssuedCert, first_cert_der, inspect, key_der_from_pem, key_for_cert};
use crate::resources::{ClientIdentity, ProtectedRoute, ProtectedRouteStatus, ServiceRef};

/// Why a route is not ready: a condition reason and what to do.
pub type Blocked = (&'static str, String);

/// The hosts a route serves: lowercase, IP addresses canonical, duplicates dropped.
pub fn normalized_hosts(hosts: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(hosts.len());
    for host in hosts.iter().map(|h| normalize_host(h)) {
        if !out.contains(&host) {
            out.push(host);
        }
    }
    out
}

/// Reads a `kubernetes.io/tls` Secret: the first certificate of `tls.crt` and the key that
/// must match it.
pub fn read_tls(secret: &Secret) -> Result<IssuedCert, String> {
    let cert_pem = secret_text(secret, TLS_CRT).ok_or(format!("it has no {TLS_CRT}"))?;
    let key_pem = secret_text(secret, TLS_KEY).ok_or(format!("it has no {TLS_KEY}"))?;
    let cert_der = first_cert_der(cert_pem).map_err(|e| format!("{TLS_CRT}: {e}"))?;
    let info = inspect(&cert_der).map_err(|e| format!("{TLS_CRT}: {e}"))?;
    key_for_cert(&cert_der, key_pem).map_err(|e| format!("{TLS_KEY}: {e}"))?;
    let key_der = key_der_from_pem(key_pem).map_err(|e| format!("{TLS_KEY}: {e}"))?;
    Ok(IssuedCert {
        cert_pem: cert_pem.to_owned(),
        key_pem: key_pem.to_owned(),
        cert_der,
        key_der,
        info,
    })
}

/// Checks a brought (`secretName`) server certificate Secret.
pub fn check_own_secret(
    ns: &str,
    name: &str,
    secret: Option<&Secret>,
    hosts: &[String],
    now: SystemTime,
) -> Result<IssuedCert, Blocked> {
    let Some(secret) = secret else {
        return Err((
            "ServerSecretMissing",
            format!(
                "Secret {ns}/{name} (spec.serverCertificate.secretName) does not exist; create it or use `issue: {{}}`"
            ),
        ));
    };
    let invalid = |why: String| {
        (
            "ServerSecretInvalid",
            format!("Secret {ns}/{name} is not a usable server certificate: {why}"),
        )
    };
    let cert = read_tls(secret).map_err(invalid)?;
    if cert.info.not_after <= now {
        let expired = humantime::format_rfc3339_seconds(cert.info.not_after);
        return Err(invalid(format!("it expired on {expired}")));
    }
    let sans = san_hosts(&cert.cert_der);
    if let Some(host) = hosts.iter().find(|h| !covers(&sans, h)) {
        return Err(invalid(format!("it does not cover {host}")));
    }
    // The data plane watches Secrets by label only (it caches no other Secret).
    let labelled = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVER_CERTIFICATE_LABEL))
        .is_some_and(|v| v == "true");
    if !labelled {
        return Err((
            "ServerSecretUnlabelled",
            format!(
                "Secret {ns}/{name} lacks the label {SERVER_CERTIFICATE_LABEL}=true, so the data plane does not read it; run: kubectl label secret -n {ns} {name} {SERVER_CERTIFICATE_LABEL}=true (cert-manager: add it under the Certificate's secretTemplate.labels)"
            ),
        ));
    }
    Ok(cert)
}

/// Checks that the upstream Service exists and has the port.
pub fn check_service(ns: &str, svc: &ServiceRef, service: Option<&Service>) -> Result<(), Blocked> {
    let Some(service) = service else {
        return Err((
            "UpstreamServiceMissing",
            format!(
                "Service {ns}/{} (spec.upstream.service.name) does not exist; create it or fix the name",
                svc.name
            ),
        ));
    };
    let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
    if !ports
        .into_iter()
        .flatten()
        .any(|p| i32::from(svc.port) == p.port)
    {
        return Err((
            "UpstreamServiceMissing",
            format!(
                "Service {ns}/{} has no port {} (spec.upstream.service.port)",
                svc.name, svc.port
            ),
        ));
    }
    Ok(())
}

/// Live, non-revoked ClientIdentities of the installation that `selector` admits (none
/// admits all).
pub fn admitted(identities: &[Arc<ClientIdentity>], selector: Option<&LabelSelector>) -> i64 {
    let selector = match selector.cloned().map(Selector::try_from) {
        None => Selector::default(),
        Some(Ok(s)) => s,
        // An invalid selector is reported as InvalidSpec; it admits nobody.
        Some(Err(_)) => return 0,
    };
    let count = identities
        .iter()
        .filter(|ci| !ci.spec.revoked && ci.metadata.deletion_timestamp.is_none())
        .filter(|ci| selector.matches(ci.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
        .count();
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The `<name>-server-tls` Secret of a route, owned by it.
pub fn server_secret(
    pr: &ProtectedRoute,
    ns: &str,
    instance: &str,
    cert: &IssuedCert,
) -> Result<Secret> {
    let name = pr
        .metadata
        .name
        .as_deref()
        .ok_or(Error::Unnamed("ProtectedRoute"))?;
    Ok(SecretSpec {
        name: route_secret_name(name),
        namespace: ns,
        type_: TLS_SECRET_TYPE,
        instance,
        labels: vec![(ROUTE_LABEL, name.to_owned())],
        annotations: Vec::new(),
        owner: owner_ref(pr),
        data: BTreeMap::from([
            (TLS_CRT.to_owned(), cert.cert_pem.as_bytes().to_vec()),
            (TLS_KEY.to_owned(), cert.key_pem.as_bytes().to_vec()),
        ]),
    }
    .build())
}

/// The route's status: `Ready` (with `message` when ready, else the blocking reason), the
/// hosts served (none while not ready) and the admitted count.
pub fn route_status(
    pr: &ProtectedRoute,
    outcome: &Result<String, Blocked>,
    hosts: &[String],
    admitted: i64,
    now: &Time,
) -> ProtectedRouteStatus {
    let mut wanted = vec![match outcome {
        Ok(message) => Want::yes(READY, "Ready", message.clone()),
        Err((reason, message)) => Want::no(READY, reason, message.clone()),
    }];
    if let Err((SECRET_CONFLICT, message)) = outcome {
        wanted.push(Want::yes(
            SECRET_CONFLICT,
            SECRET_NOT_OWNED,
            message.clone(),
        ));
    }
    let existing = pr.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    ProtectedRouteStatus {
        conditions: merge(existing, &wanted, pr.metadata.generation, now),
        observed_generation: pr.metadata.generation,
        hosts: if outcome.is_ok() {
            hosts.to_vec()
        } else {
            Vec::new()
        },
        admitted_identities: Some(admitted),
    }
}

#[cfg(test)]
#[path = "route_plan_tests.rs"]
mod tests;
