//! The Kubernetes list: each ClientIdentity's spec and status. Open connections live in
//! each proxy replica (its admin port's `/identities`), so the list leaves them out.

use std::time::SystemTime;

use crate::resources::from_time;
use kube::api::{Api, ListParams};

use super::{Cert, Facts, Row, row};
use crate::resources::ClientIdentity;
use crate::{Error, Result};

/// The rows for the ClientIdentities in `namespace`, or in every namespace (names then
/// read `namespace/name`).
pub async fn list_cluster(client: kube::Client, namespace: Option<&str>) -> Result<Vec<Row>> {
    let api: Api<ClientIdentity> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let where_ = namespace.map_or("any namespace".to_owned(), |ns| format!("namespace {ns}"));
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::Config(format!("listing ClientIdentities in {where_}: {e}")))?;
    let now = SystemTime::now();
    let mut facts: Vec<Facts> = list
        .items
        .iter()
        .map(|ci| facts(ci, namespace.is_none()))
        .collect();
    facts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(facts.iter().map(|f| row(f, now)).collect())
}

/// What a ClientIdentity's spec and status say.
pub(super) fn facts(ci: &ClientIdentity, qualified: bool) -> Facts {
    let name = ci.metadata.name.clone().unwrap_or_default();
    let name = match (&ci.metadata.namespace, qualified) {
        (Some(ns), true) => format!("{ns}/{name}"),
        _ => name,
    };
    let Some(status) = &ci.status else {
        return Facts {
            name,
            revoked: ci.spec.revoked,
            ..Facts::default()
        };
    };
    let current = match (&status.serial_number, &status.not_after) {
        (Some(serial), Some(not_after)) => Some(Cert {
            serial: serial.clone(),
            not_after: from_time(not_after),
        }),
        _ => None,
    };
    // Why no certificate: the Ready condition's reason, when it is not simply revoked.
    let blocked = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason != "Revoked")
        .map(|c| c.reason.clone());
    Facts {
        name,
        current,
        previous: status
            .previous
            .iter()
            .map(|p| Cert {
                serial: p.serial_number.clone(),
                not_after: from_time(&p.not_after),
            })
            .collect(),
        seen: status
            .seen
            .iter()
            .map(|s| (s.serial_number.clone(), from_time(&s.last_seen)))
            .collect(),
        last_seen: status.last_seen.as_ref().map(from_time),
        revoked: ci.spec.revoked,
        blocked,
        connections: None,
    }
}
