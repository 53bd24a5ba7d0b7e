//! Enrollment links in Kubernetes mode: `Enrollment` objects in the identity's namespace,
//! the data plane's [`EnrollmentStore`] over them, and what `portcullis enroll --namespace`
//! writes.
//!
//! ```text
//!  pending / claimed   LIST enrollments (all namespaces) by portcullis.dev/token-hash,
//!                      then the full hash compared in constant time
//!  claim               PUT enrollments/NAME/status {claimedAt, claimedBy} carrying the
//!                      resourceVersion read: one replica's write succeeds, every other gets
//!                      409 Conflict and, reading again, finds the link claimed
//!  sweep               DELETE what nobody can use any more (uid precondition)
//! ```
//! Reads go to the API server on every claim (no reflector): a claim is rare and must see
//! the newest state, the download that follows a claim on another replica must find it
//! claimed at once, and a watch would keep every sealed bundle of the cluster in each
//! replica's memory for links that are mostly never used. Only POSTs look anything up (the
//! landing page does not), and failed claims are rate-limited per client address. The
//! data plane needs no Secret access for any of this: the bundle is sealed under the token.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::enroll::{CLAIM_TTL, EnrollmentRecord, EnrollmentStore, same_hash};
use crate::resources::{
    ClientIdentity, ENROLLMENT_IDENTITY_LABEL, Enrollment, EnrollmentStatus, TOKEN_HASH_LABEL,
    token_hash_label,
};
use crate::{Error, Result};

/// How often a claim whose write met a concurrent change (409) looks again.
const CLAIM_ATTEMPTS: usize = 3;
/// `reportingController` of the `Enrolled` Event.
const EVENT_REPORTER: &str = "portcullis-proxy";

/// The data plane's view of the cluster's Enrollments.
#[derive(Clone)]
pub struct ClusterEnrollments {
    client: Client,
    /// This replica's name, written as `status.claimedBy`.
    replica: String,
    /// Where Enrollments are looked for (the watched namespaces).
    scope: crate::scope::Scope,
}

impl std::fmt::Debug for ClusterEnrollments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterEnrollments")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl ClusterEnrollments {
    /// Enrollments in every namespace.
    pub fn new(client: Client, replica: impl Into<String>) -> Self {
        Self::in_scope(client, replica, crate::scope::Scope::Cluster)
    }

    /// Enrollments in `scope`'s namespaces only.
    pub fn in_scope(
        client: Client,
        replica: impl Into<String>,
        scope: crate::scope::Scope,
    ) -> Self {
        ClusterEnrollments {
            client,
            replica: replica.into(),
            scope,
        }
    }

    /// Every Enrollment in scope matching `params`.
    async fn list(&self, params: &ListParams) -> Result<Vec<Enrollment>> {
        let mut all = Vec::new();
        for api in self.scope.apis::<Enrollment>(&self.client) {
            let list = api
                .list(params)
                .await
                .map_err(|e| kube_error("listing Enrollments", e))?;
            all.extend(list.items);
        }
        Ok(all)
    }

    /// The Enrollment whose token hashes to `token_hash` (several only by a forged label:
    /// the full hash decides), unless it is being deleted.
    async fn find(&self, token_hash: &str) -> Result<Option<Enrollment>> {
        let selector = format!("{TOKEN_HASH_LABEL}={}", token_hash_label(token_hash));
        let list = self.list(&ListParams::default().labels(&selector)).await?;
        Ok(list.into_iter().find(|e| {
            same_hash(&e.spec.token_hash, token_hash) && e.metadata.deletion_timestamp.is_none()
        }))
    }

    /// Claims: one status write at the resourceVersion read.
    async fn claim_once(&self, record: &EnrollmentRecord) -> Result<bool> {
        for _ in 0..CLAIM_ATTEMPTS {
            let Some(mut found) = self.find(&record.token_hash).await? else {
                return Ok(false);
            };
            // Claimed meanwhile, or not what the caller checked: nothing to win.
            if found.is_claimed() || record_of(&found).as_ref() != Some(record) {
                return Ok(false);
            }
            let (namespace, name) = (found.namespace().unwrap_or_default(), found.name_any());
            found.status = Some(EnrollmentStatus {
                claimed_at: Some(Time(now())),
                claimed_by: Some(self.replica.clone()),
            });
            // `found` carries metadata.resourceVersion: the API server applies the write only
            // if the object is unchanged since it was read (optimistic concurrency).
            let api = Api::<Enrollment>::namespaced(self.client.clone(), &namespace);
            match api
                .replace_status(&name, &PostParams::default(), &found)
                .await
            {
                Ok(_) => {
                    tokio::spawn(claimed_event(
                        self.client.clone(),
                        found,
                        self.replica.clone(),
                    ));
                    return Ok(true);
                }
                // Another replica (or an edit) got there first: read again; a claim is final.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(enrollment = %name, "claim write conflicted; reading again");
                    continue;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
                // Fail closed: an unknown outcome is no win (the link may be used up; the
                // admin runs `portcullis enroll` again).
                Err(e) => return Err(kube_error("claiming an Enrollment", e)),
            }
        }
        Ok(false)
    }

    /// Deletes the Enrollments nobody can use any more. See [`EnrollmentStore::sweep`].
    async fn sweep_once(&self, now: SystemTime, grace: Duration) -> Result<usize> {
        let all = self.list(&ListParams::default()).await?;
        let mut removed = 0;
        for found in all {
            let grace = if found.is_claimed() {
                grace
            } else {
                Duration::ZERO
            };
            let done = found.spec.expiry().is_some_and(|at| at + grace <= now);
            if done && delete(&self.client, &found).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The record as the data plane keys it: the identity as `namespace/name`, the snapshot's
/// key (and the one the bundle was sealed for, so an object moved to another namespace does
/// not open).
fn record_of(found: &Enrollment) -> Option<EnrollmentRecord> {
    let namespace = found.namespace()?;
    let mut record = found.spec.clone();
    record.identity = format!("{namespace}/{}", found.spec.identity);
    Some(record)
}

impl EnrollmentStore for ClusterEnrollments {
    fn pending(&self, token_hash: String) -> BoxFuture<'_, Result<Option<EnrollmentRecord>>> {
        Box::pin(async move {
            let found = self.find(&token_hash).await?;
            Ok(found
                .filter(|e| !e.is_claimed())
                .as_ref()
                .and_then(record_of))
        })
    }

    fn claim(&self, record: EnrollmentRecord) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move { self.claim_once(&record).await })
    }

    fn claimed(&self, token_hash: String) -> BoxFuture<'_, Result<Option<EnrollmentRecord>>> {
        Box::pin(async move {
            let found = self.find(&token_hash).await?;
            Ok(found
                .filter(Enrollment::is_claimed)
                .as_ref()
                .and_then(record_of))
        })
    }

    fn sweep(&self, now: SystemTime, grace: Duration) -> BoxFuture<'_, Result<usize>> {
        Box::pin(self.sweep_once(now, grace))
    }
}

/// Clears out expired Enrollments every `interval` until `shutdown`, so that links nobody
/// used do not pile up where no claim comes by (a claim also sweeps, at most once a minute).
/// Several replicas may sweep at once: a delete that finds the object gone is no error.
pub async fn sweep_every(
    store: Arc<ClusterEnrollments>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        match store.sweep_once(SystemTime::now(), CLAIM_TTL).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "expired enrollment links removed"),
            Err(e) => tracing::warn!(error = %e, "cannot clear out expired enrollment links"),
        }
    }
}

/// An `Enrolled` Event on the ClientIdentity (`kubectl describe clientidentity`). Best
/// effort, off the request: the claim is already won, and the log line and metric are the
/// record that counts. A fresh object each time, so `create` is the only right it needs.
async fn claimed_event(client: Client, found: Enrollment, replica: String) {
    let namespace = found.namespace().unwrap_or_default();
    let identity = &found.spec.identity;
    let uid = found
        .owner_references()
        .iter()
        .find(|o| o.kind == ClientIdentity::kind(&()))
        .map(|o| o.uid.clone());
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{identity}.enrolled-")),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now())),
        action: Some("Claim".into()),
        reason: Some("Enrolled".into()),
        type_: Some("Normal".into()),
        note: Some(format!(
            "enrollment link {} claimed by a device (replica {replica}); its downloads work \
             for a few minutes, in that browser only",
            found.name_any()
        )),
        regarding: Some(ObjectReference {
            api_version: Some(ClientIdentity::api_version(&()).into_owned()),
            kind: Some(ClientIdentity::kind(&()).into_owned()),
            name: Some(identity.clone()),
            namespace: Some(namespace.clone()),
            uid,
            ..ObjectReference::default()
        }),
        reporting_controller: Some(EVENT_REPORTER.into()),
        reporting_instance: Some(replica),
        ..Event::default()
    };
    let api = Api::<Event>::namespaced(client, &namespace);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        tracing::warn!(error = %e, identity = %format!("{namespace}/{identity}"), "cannot publish the Enrolled event");
    }
}

/// Deletes `found` if it is still that object; `false` when it was gone already.
async fn delete(client: &Client, found: &Enrollment) -> Result<bool> {
    let api = Api::<Enrollment>::namespaced(client.clone(), &found.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: found.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&found.name_any(), &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(kube_error("deleting an Enrollment", e)),
    }
}

/// Stores `record` (its `identity` the identity's bare name) as an Enrollment owned by
/// `identity`, then deletes the identity's other Enrollments, claimed or not: a new link
/// cancels the previous one. Returns the new object's name.
pub async fn create_enrollment(
    client: &Client,
    identity: &ClientIdentity,
    record: &EnrollmentRecord,
) -> Result<String> {
    let namespace = identity.namespace().unwrap_or_default();
    let name = identity.name_any();
    let owner = OwnerReference {
        api_version: ClientIdentity::api_version(&()).into_owned(),
        kind: ClientIdentity::kind(&()).into_owned(),
        name: name.clone(),
        uid: identity.uid().unwrap_or_default(),
        ..OwnerReference::default()
    };
    let mut object = Enrollment::new("", record.clone());
    object.metadata.name = None;
    object.metadata.generate_name = Some(format!("{name}-"));
    object.metadata.namespace = Some(namespace.clone());
    object.metadata.owner_references = Some(vec![owner]);
    object.metadata.labels = Some(
        [
            (ENROLLMENT_IDENTITY_LABEL.to_owned(), name.clone()),
            (
                TOKEN_HASH_LABEL.to_owned(),
                token_hash_label(&record.token_hash).to_owned(),
            ),
        ]
        .into(),
    );
    let api = Api::<Enrollment>::namespaced(client.clone(), &namespace);
    let created = api
        .create(&PostParams::default(), &object)
        .await
        .map_err(|e| kube_error(&format!("creating an Enrollment in {namespace}"), e))?;
    let selector = format!("{ENROLLMENT_IDENTITY_LABEL}={name}");
    let previous = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| kube_error(&format!("listing Enrollments in {namespace}"), e))?;
    for old in previous.items {
        if old.uid() != created.uid() {
            delete(client, &old).await?;
        }
    }
    Ok(created.name_any())
}

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

fn kube_error(action: &str, e: kube::Error) -> Error {
    Error::Config(format!("{action}: {e}"))
}
