//! Kubernetes mode: the operator namespace's CA, CRL and cookie-key Secrets, every
//! ClientIdentity and ProtectedRoute, and the Secrets the controller wrote for them.
//!
//! ```text
//!  restore:  CA Secret exists? ──yes──▶ refuse (restore comes before the operator's first start)
//!            any Secret in the way? ──yes──▶ refuse, listing them
//!            namespaces ─▶ ClientIdentities, ProtectedRoutes (create; read back the new UIDs)
//!            ─▶ device and server Secrets (owner reference = new UID, the controller's labels
//!               and issued-for annotation, so it keeps them instead of re-issuing)
//!            ─▶ CRL, cookie keys ─▶ CA last
//!  any failure ─▶ what this restore created is deleted again
//! ```
//! Nothing existing is ever replaced: objects are created, and a custom resource already
//! there (applied by GitOps, say) is kept as it is and adopted as the owner.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ClusterContents, Error, Report, Result, SavedObject, SavedOwner, SavedSecret};
use crate::resources::names::{
    COOKIE_KEYS_SECRET, CRL_SECRET, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    identity_secret_name, route_secret_name,
};
use crate::resources::{ClientIdentity, Instance, ProtectedRoute};

/// Field manager of the objects a restore creates.
const RESTORE_MANAGER: &str = "portcullis-restore";

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

// === backup ===

/// Reads everything the backup holds from the cluster. `namespace` is the operator's, where
/// the CA Secret `ca_secret` lives; custom resources are read from every namespace, those of
/// release `instance` only (another release's devices are another CA's).
pub async fn collect_cluster(
    client: &Client,
    namespace: &str,
    ca_secret: &str,
    instance: &Instance,
) -> Result<ClusterContents> {
    let ops: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let get = async |name: &str| {
        ops.get_opt(name)
            .await
            .map_err(kube_error(format!("reading Secret {namespace}/{name}")))
    };
    let ca = get(ca_secret).await?.ok_or_else(|| {
        Error::Refused(format!(
            "there is no CA Secret {namespace}/{ca_secret}: pass the operator's namespace \
             (--namespace) and, for a bring-your-own CA, its Secret (--ca-secret)"
        ))
    })?;
    let crl = get(CRL_SECRET).await?;
    let cookie_keys = get(COOKIE_KEYS_SECRET).await?;

    let mut identities = list_all::<ClientIdentity>(client, "ClientIdentities").await?;
    identities.retain(|ci| instance.claims(ci.meta()));
    let mut routes = list_all::<ProtectedRoute>(client, "ProtectedRoutes").await?;
    routes.retain(|route| instance.claims(route.meta()));
    let mut owned_secrets = Vec::new();
    for ci in &identities {
        let secret = owned_secret(client, ci, &identity_secret_name(&ci.name_any())).await?;
        owned_secrets.extend(secret);
    }
    for route in &routes {
        // Only a minted certificate: a bring-your-own Secret (cert-manager) is not ours.
        let secret = owned_secret(client, route, &route_secret_name(&route.name_any())).await?;
        owned_secrets.extend(secret);
    }
    Ok(ClusterContents {
        namespace: namespace.to_owned(),
        ca: saved_secret(&ca, None),
        crl: crl.as_ref().map(|s| saved_secret(s, None)),
        cookie_keys: cookie_keys.as_ref().map(|s| saved_secret(s, None)),
        identities: identities
            .iter()
            .map(|ci| saved_object(ci, &ci.spec))
            .collect(),
        routes: routes.iter().map(|r| saved_object(r, &r.spec)).collect(),
        owned_secrets,
    })
}

async fn list_all<K>(client: &Client, what: &str) -> Result<Vec<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = Api::<K>::all(client.clone())
        .list(&Default::default())
        .await
        .map_err(kube_error(format!(
            "listing {what} (are the Portcullis CRDs installed, and may you list them in \
             every namespace?)"
        )))?;
    Ok(list.items)
}

/// The Secret `name` beside `owner`, when `owner` is its controlling owner.
async fn owned_secret<K>(client: &Client, owner: &K, name: &str) -> Result<Option<SavedSecret>>
where
    K: Resource<DynamicType = ()>,
{
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(kube_error(format!("reading Secret {ns}/{name}")))?;
    let uid = owner.meta().uid.as_deref();
    let owned = secret.filter(|s| {
        s.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
    });
    Ok(owned.map(|s| {
        let owner = SavedOwner {
            kind: K::kind(&()).into_owned(),
            name: owner.meta().name.clone().unwrap_or_default(),
        };
        saved_secret(&s, Some(owner))
    }))
}

fn saved_secret(secret: &Secret, owner: Option<SavedOwner>) -> SavedSecret {
    SavedSecret {
        namespace: secret.namespace().unwrap_or_default(),
        name: secret.name_any(),
        type_: secret.type_.clone(),
        labels: secret.labels().clone(),
        annotations: secret.annotations().clone(),
        owner,
        data: secret.data.clone().unwrap_or_default(),
    }
}

fn saved_object<K: Resource, S: Clone>(obj: &K, spec: &S) -> SavedObject<S> {
    let meta = obj.meta();
    SavedObject {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        spec: spec.clone(),
    }
}

// === restore ===

/// Restores `contents` into the cluster, the operator-namespace Secrets into `namespace`,
/// every Secret labelled as written by release `instance` (the operator's `--instance`).
/// Refuses (writing nothing) when the CA Secret or any other Secret already exists.
pub async fn restore_cluster(
    client: &Client,
    contents: &ClusterContents,
    namespace: &str,
    instance: &Instance,
) -> Result<Report> {
    let ops = operator_secrets(contents, namespace);
    preflight(client, contents, &ops).await?;
    let mut created = Created::default();
    match create_all(client, contents, &ops, instance, &mut created).await {
        Ok(report) => Ok(report),
        Err(e) => {
            let left = created.undo(client).await;
            let tail = if left.is_empty() {
                "everything this restore had created was deleted again".to_owned()
            } else {
                format!("these could not be deleted again: {}", left.join(", "))
            };
            Err(Error::Refused(format!("restore failed: {e}; {tail}")))
        }
    }
}

/// The CA, CRL and cookie-key Secrets, moved to the target operator namespace; the CA last,
/// so its presence means a restore finished.
fn operator_secrets(contents: &ClusterContents, namespace: &str) -> Vec<SavedSecret> {
    let mut list: Vec<SavedSecret> = [&contents.crl, &contents.cookie_keys]
        .into_iter()
        .flatten()
        .chain([&contents.ca])
        .cloned()
        .collect();
    for secret in &mut list {
        secret.namespace = namespace.to_owned();
    }
    list
}

async fn preflight(client: &Client, contents: &ClusterContents, ops: &[SavedSecret]) -> Result<()> {
    let ca = ops.last().expect("the CA is always there");
    if secret_exists(client, &ca.namespace, &ca.name).await? {
        return Err(Error::Refused(format!(
            "CA Secret {ns}/{name} already exists: a restore never replaces a CA. Restore must \
             run before the operator's first start, which creates a new CA. If that CA is one \
             you mean to discard (every device enrolled under it is locked out): stop the \
             operator (helm uninstall), `kubectl -n {ns} delete secret {name}` and run the \
             restore again before installing",
            ns = ca.namespace,
            name = ca.name
        )));
    }
    let mut in_the_way = Vec::new();
    for s in ops.iter().chain(&contents.owned_secrets) {
        if secret_exists(client, &s.namespace, &s.name).await? {
            in_the_way.push(format!("{}/{}", s.namespace, s.name));
        }
    }
    if !in_the_way.is_empty() {
        return Err(Error::Refused(format!(
            "these Secrets already exist and a restore never replaces one: {}. Delete them \
             (kubectl delete secret) if they are leftovers, then restore again; nothing was \
             written",
            in_the_way.join(", ")
        )));
    }
    // Fail before writing anything when the CRDs are missing.
    Api::<ClientIdentity>::all(client.clone())
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(kube_error(
            "listing ClientIdentities (install the CRDs first: kubectl apply --server-side \
             -f crds/)",
        ))?;
    Ok(())
}

async fn secret_exists(client: &Client, ns: &str, name: &str) -> Result<bool> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let found = api
        .get_metadata_opt(name)
        .await
        .map_err(kube_error(format!("reading Secret {ns}/{name}")))?;
    Ok(found.is_some())
}

async fn create_all(
    client: &Client,
    contents: &ClusterContents,
    ops: &[SavedSecret],
    instance: &Instance,
    created: &mut Created,
) -> Result<Report> {
    let mut report = Report::default();
    let namespaces = contents
        .identities
        .iter()
        .map(|o| &o.namespace)
        .chain(contents.routes.iter().map(|o| &o.namespace))
        .chain(contents.owned_secrets.iter().map(|s| &s.namespace))
        .chain(ops.iter().map(|s| &s.namespace));
    for ns in namespaces.collect::<std::collections::BTreeSet<_>>() {
        ensure_namespace(client, ns, created, &mut report).await?;
    }

    let mut uids = BTreeMap::new();
    for saved in &contents.identities {
        let ci = ClientIdentity::new(&saved.name, saved.spec.clone());
        let uid = create_or_keep(client, saved, ci, created, &mut report).await?;
        uids.insert(
            (
                "ClientIdentity",
                saved.namespace.as_str(),
                saved.name.as_str(),
            ),
            uid,
        );
    }
    for saved in &contents.routes {
        let route = ProtectedRoute::new(&saved.name, saved.spec.clone());
        let uid = create_or_keep(client, saved, route, created, &mut report).await?;
        uids.insert(
            (
                "ProtectedRoute",
                saved.namespace.as_str(),
                saved.name.as_str(),
            ),
            uid,
        );
    }

    for saved in contents.owned_secrets.iter().chain(ops) {
        let owner = match &saved.owner {
            None => None,
            Some(o) => {
                let key = (o.kind.as_str(), saved.namespace.as_str(), o.name.as_str());
                let uid = uids.get(&key).ok_or_else(|| {
                    Error::Refused(format!(
                        "Secret {}/{} is owned by {} {}, which the backup does not hold",
                        saved.namespace, saved.name, o.kind, o.name
                    ))
                })?;
                Some(owner_reference(o, uid))
            }
        };
        let secret = restored_secret(saved, owner, instance);
        let api: Api<Secret> = Api::namespaced(client.clone(), &saved.namespace);
        api.create(&post_params(), &secret)
            .await
            .map_err(kube_error(format!(
                "creating Secret {}/{}",
                saved.namespace, saved.name
            )))?;
        created.push(Kind::Secret, &saved.namespace, &saved.name);
        report
            .lines
            .push(format!("Secret {}/{}", saved.namespace, saved.name));
    }
    Ok(report)
}

/// Labels a restored Secret carries: the ones it was backed up with, and the controller's
/// own, as the restoring release writes them (it watches Secrets by them, and a Secret of
/// another release is not its to keep). A label every restored Secret must carry is one
/// line here.
fn restored_labels(
    saved: &BTreeMap<String, String>,
    instance: &Instance,
) -> BTreeMap<String, String> {
    let mut labels = saved.clone();
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    labels.insert(INSTANCE_LABEL.to_owned(), instance.name.clone());
    labels
}

fn restored_secret(
    saved: &SavedSecret,
    owner: Option<OwnerReference>,
    instance: &Instance,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(saved.name.clone()),
            namespace: Some(saved.namespace.clone()),
            labels: Some(restored_labels(&saved.labels, instance)),
            annotations: (!saved.annotations.is_empty()).then(|| saved.annotations.clone()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: saved.type_.clone(),
        data: Some(saved.data.clone()),
        ..Secret::default()
    }
}

/// The reference the controller itself puts on its Secrets (see `controller::apply`).
fn owner_reference(owner: &SavedOwner, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "portcullis.dev/v1alpha1".to_owned(),
        kind: owner.kind.clone(),
        name: owner.name.clone(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Creates the object, or keeps the one already there; returns its UID.
async fn create_or_keep<K, S>(
    client: &Client,
    saved: &SavedObject<S>,
    mut obj: K,
    created: &mut Created,
    report: &mut Report,
) -> Result<String>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).into_owned();
    let (ns, name) = (saved.namespace.as_str(), saved.name.as_str());
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let existing = api
        .get_opt(name)
        .await
        .map_err(kube_error(format!("reading {kind} {ns}/{name}")))?;
    let (result, kept) = match existing {
        Some(found) => (found, true),
        None => {
            let meta = obj.meta_mut();
            meta.namespace = Some(ns.to_owned());
            meta.labels = (!saved.labels.is_empty()).then(|| saved.labels.clone());
            meta.annotations = (!saved.annotations.is_empty()).then(|| saved.annotations.clone());
            let made = api
                .create(&post_params(), &obj)
                .await
                .map_err(kube_error(format!("creating {kind} {ns}/{name}")))?;
            created.push(
                Kind::Custom(kind.clone(), kube::core::ApiResource::erase::<K>(&())),
                ns,
                name,
            );
            (made, false)
        }
    };
    if kept {
        report.notes.push(format!(
            "{kind} {ns}/{name} already existed and was kept as it is (its spec wins over \
             the backup's)"
        ));
    } else {
        report.lines.push(format!("{kind} {ns}/{name}"));
    }
    result
        .meta()
        .uid
        .clone()
        .ok_or_else(|| Error::Refused(format!("{kind} {ns}/{name} came back without a UID")))
}

async fn ensure_namespace(
    client: &Client,
    ns: &str,
    created: &mut Created,
    report: &mut Report,
) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let found = api
        .get_metadata_opt(ns)
        .await
        .map_err(kube_error(format!("reading Namespace {ns}")))?;
    if found.is_none() {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        api.create(&post_params(), &namespace)
            .await
            .map_err(kube_error(format!("creating Namespace {ns}")))?;
        created.push(Kind::Namespace, "", ns);
        report.lines.push(format!("Namespace {ns}"));
    }
    Ok(())
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(RESTORE_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

// === undo ===

enum Kind {
    Namespace,
    Secret,
    Custom(String, kube::core::ApiResource),
}

/// What this restore created, to delete again (newest first) when a later step fails.
#[derive(Default)]
struct Created(Vec<(Kind, String, String)>);

impl Created {
    fn push(&mut self, kind: Kind, ns: &str, name: &str) {
        self.0.push((kind, ns.to_owned(), name.to_owned()));
    }

    /// Deletes everything, newest first; returns what could not be deleted.
    async fn undo(self, client: &Client) -> Vec<String> {
        let mut left = Vec::new();
        for (kind, ns, name) in self.0.into_iter().rev() {
            let dp = DeleteParams::default();
            let (label, result) = match &kind {
                Kind::Namespace => (
                    format!("Namespace {name}"),
                    Api::<Namespace>::all(client.clone())
                        .delete(&name, &dp)
                        .await
                        .map(drop),
                ),
                Kind::Secret => (
                    format!("Secret {ns}/{name}"),
                    Api::<Secret>::namespaced(client.clone(), &ns)
                        .delete(&name, &dp)
                        .await
                        .map(drop),
                ),
                Kind::Custom(kind, resource) => (
                    format!("{kind} {ns}/{name}"),
                    Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), &ns, resource)
                        .delete(&name, &dp)
                        .await
                        .map(drop),
                ),
            };
            if result.is_err() {
                left.push(label);
            }
        }
        left
    }
}
