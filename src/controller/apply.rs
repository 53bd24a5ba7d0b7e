//! Writing to the cluster: server-side apply with field manager `portcullis`, and only when
//! the object differs from what is wanted, so an unchanged world sees no writes at all.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::names::{FIELD_MANAGER, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use super::{Error, Result};

/// Server-side apply params: our field manager, taking over fields another manager set.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The owner reference a child of `owner` carries: the controller, blocking the owner's
/// foreground deletion until the child is gone.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..owner.controller_owner_ref(&())?
    })
}

/// A Secret labelled as ours: managed by Portcullis, written by release `instance`.
pub struct SecretSpec<'a> {
    /// Secret name.
    pub name: String,
    /// Secret namespace.
    pub namespace: &'a str,
    /// `kubernetes.io/tls` or `Opaque`.
    pub type_: &'static str,
    /// The release writing it (label `portcullis.dev/instance`).
    pub instance: &'a str,
    /// Labels besides `app.kubernetes.io/managed-by` and the instance.
    pub labels: Vec<(&'static str, String)>,
    /// Annotations.
    pub annotations: Vec<(&'static str, String)>,
    /// The controlling owner, if any.
    pub owner: Option<OwnerReference>,
    /// The Secret's data.
    pub data: BTreeMap<String, Vec<u8>>,
}

impl SecretSpec<'_> {
    /// The Secret object to apply.
    pub fn build(self) -> Secret {
        let mut labels = BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
            (INSTANCE_LABEL.to_owned(), self.instance.to_owned()),
        ]);
        labels.extend(self.labels.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let annotations: BTreeMap<String, String> = self
            .annotations
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name),
                namespace: Some(self.namespace.to_owned()),
                labels: Some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                owner_references: self.owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            type_: Some(self.type_.to_owned()),
            data: Some(
                self.data
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v)))
                    .collect(),
            ),
            ..Secret::default()
        }
    }
}

/// Whether `existing` already holds everything `desired` sets: type, every data key,
/// labels, annotations and owner references. Extra keys others added do not count, so
/// their presence never causes a write on every reconcile.
pub fn secret_up_to_date(desired: &Secret, existing: &Secret) -> bool {
    let subset = |want: Option<&BTreeMap<String, String>>,
                  have: Option<&BTreeMap<String, String>>| {
        want.into_iter()
            .flatten()
            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    };
    let data_ok = desired
        .data
        .iter()
        .flatten()
        .all(|(k, v)| existing.data.as_ref().and_then(|d| d.get(k)) == Some(v));
    let owners_ok = desired
        .owner_references()
        .iter()
        .all(|o| existing.owner_references().contains(o));
    desired.type_ == existing.type_
        && data_ok
        && owners_ok
        && subset(
            desired.metadata.labels.as_ref(),
            existing.metadata.labels.as_ref(),
        )
        && subset(
            desired.metadata.annotations.as_ref(),
            existing.metadata.annotations.as_ref(),
        )
}

/// Applies `desired` unless `existing` is already up to date. Returns whether it wrote.
pub async fn apply_secret(
    api: &Api<Secret>,
    desired: &Secret,
    existing: Option<&Secret>,
) -> Result<bool> {
    if existing.is_some_and(|e| secret_up_to_date(desired, e)) {
        return Ok(false);
    }
    let name = desired
        .metadata
        .name
        .as_deref()
        .ok_or(Error::Unnamed("Secret"))?;
    api.patch(name, &apply_params(), &Patch::Apply(desired))
        .await?;
    Ok(true)
}

/// Applies `status` to `obj`'s status subresource unless it already has it (compared as
/// JSON, so fields we do not manage never cause a write). Returns whether it wrote.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    obj: &K,
    status: &S,
    current: Option<&S>,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;
    Ok(true)
}

/// A Secret's value as text, if present and UTF-8.
pub fn secret_text<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    let bytes = secret.data.as_ref()?.get(key)?;
    std::str::from_utf8(&bytes.0).ok()
}

/// A Secret's value as bytes, if present.
pub fn secret_bytes<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret.data.as_ref()?.get(key).map(|b| b.0.as_slice())
}

/// `namespace/name` of an object, for messages.
pub fn full_name<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The name and namespace of a namespaced object from the API.
pub fn name_ns<K: Resource>(obj: &K, kind: &'static str) -> Result<(String, String)> {
    let meta = obj.meta();
    match (&meta.name, &meta.namespace) {
        (Some(n), Some(ns)) => Ok((n.clone(), ns.clone())),
        _ => Err(Error::Unnamed(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::names::TLS_SECRET_TYPE;

    fn spec() -> Secret {
        SecretSpec {
            name: "a-client".into(),
            namespace: "home",
            type_: TLS_SECRET_TYPE,
            instance: "portcullis",
            labels: vec![("portcullis.dev/identity", "a".into())],
            annotations: vec![("portcullis.dev/issued-for", "{}".into())],
            owner: None,
            data: BTreeMap::from([("tls.crt".to_owned(), b"x".to_vec())]),
        }
        .build()
    }

    #[test]
    fn up_to_date_ignores_what_others_add() {
        let desired = spec();
        let mut existing = desired.clone();
        assert!(secret_up_to_date(&desired, &existing));
        existing.labels_mut().insert("extra".into(), "1".into());
        existing
            .data
            .get_or_insert_default()
            .insert("other".into(), ByteString(vec![1]));
        existing.metadata.resource_version = Some("7".into());
        assert!(secret_up_to_date(&desired, &existing));

        let mut changed = existing.clone();
        changed
            .data
            .get_or_insert_default()
            .insert("tls.crt".into(), ByteString(b"y".to_vec()));
        assert!(!secret_up_to_date(&desired, &changed));
        let mut unlabelled = existing.clone();
        unlabelled.labels_mut().remove(MANAGED_BY_LABEL);
        assert!(!secret_up_to_date(&desired, &unlabelled));
        let mut retyped = existing;
        retyped.type_ = Some("Opaque".into());
        assert!(!secret_up_to_date(&desired, &retyped));
    }
}
