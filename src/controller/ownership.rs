//! Whether a Secret the controller is about to write is its own, and what makes it so.
//!
//! ```text
//!  <name>-client / <route>-server-tls:
//!    absent                                         ──▶ Missing: mint it
//!    owner reference with the owner's UID, and no
//!    instance label or this release's               ──▶ Owned: keep, renew, re-export
//!    anything else (labels alone prove nothing)     ──▶ Foreign: never written;
//!                                                       SecretConflict on the owner
//! ```
//! Anyone who may create Secrets can set labels; only the API server hands out UIDs, and an
//! owner reference carrying the UID of this very ClientIdentity or ProtectedRoute cannot
//! predate it. Pure, so each case is tested without a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use super::apply::owner_ref;
use super::names::{IDENTITY_LABEL, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::resources::ClientIdentity;

/// Condition type (and `Ready` reason) while a Secret someone else owns holds the name.
pub const SECRET_CONFLICT: &str = "SecretConflict";
/// Reason of the `SecretConflict` condition.
pub const SECRET_NOT_OWNED: &str = "SecretNotOwned";

/// What the controller found where it would write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// No Secret of that name.
    Missing,
    /// The Secret is the owner's: the controller may write it.
    Owned,
    /// Someone else's Secret: never written. Why it is not ours.
    Foreign(String),
}

/// Whose `secret` is, for an owner with UID `owner_uid` in release `instance`.
pub fn ownership(secret: Option<&Secret>, owner_uid: Option<&str>, instance: &str) -> Ownership {
    let Some(secret) = secret else {
        return Ownership::Missing;
    };
    let Some(uid) = owner_uid else {
        return Ownership::Foreign("its owner has no UID yet".into());
    };
    if !secret.owner_references().iter().any(|o| o.uid == uid) {
        return Ownership::Foreign(format!(
            "it has no owner reference to this object (uid {uid}); labels alone do not make \
             it Portcullis's"
        ));
    }
    match other_release(secret, instance) {
        Some(why) => Ownership::Foreign(why),
        None => Ownership::Owned,
    }
}

/// Why a Secret belongs to another release, if its instance label names one.
fn other_release(secret: &Secret, instance: &str) -> Option<String> {
    let label = secret.labels().get(INSTANCE_LABEL)?;
    (label != instance).then(|| {
        format!(
            "it belongs to Portcullis release {label:?} (label {INSTANCE_LABEL}), not to \
             {instance:?}: two releases claim the same object; label the object with the one \
             release that should own it"
        )
    })
}

/// Why an operator-namespace Secret without an owner object (the CRL) is not this
/// release's: not labelled as written by Portcullis, or labelled for another release.
pub fn operator_secret_conflict(secret: &Secret, instance: &str) -> Option<String> {
    if secret.labels().get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY_VALUE) {
        return Some(format!(
            "it was not written by Portcullis (no label {MANAGED_BY_LABEL}={MANAGED_BY_VALUE}); \
             Portcullis never overwrites it: rename or delete it"
        ));
    }
    other_release(secret, instance)
        .map(|why| format!("{why}; each release needs its own operator namespace"))
}

/// The `SecretConflict` message: which Secret, why it is not `owner`'s, what to do.
pub fn conflict_message(secret: &str, owner: &str, why: &str) -> String {
    format!(
        "Secret {secret} exists but is not {owner}'s: {why}. Portcullis does not overwrite \
         it: delete it (or rename it, if something else uses it); it is minted as soon as the \
         name is free"
    )
}

/// What makes a Secret a ClientIdentity's in release `instance`: the controlling owner
/// reference (with the identity's UID) and the labels. For restoring an identity Secret
/// into a cluster where the ClientIdentity has a new UID.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretOwnership {
    /// The controlling owner reference to the ClientIdentity.
    pub owner: OwnerReference,
    /// `app.kubernetes.io/managed-by`, `portcullis.dev/instance`, `portcullis.dev/identity`.
    pub labels: BTreeMap<String, String>,
}

/// The ownership of `ci`'s `<name>-client` Secret in release `instance`; `None` until the
/// ClientIdentity has a name and UID (read it back from the API server after creating it).
pub fn identity_secret_ownership(ci: &ClientIdentity, instance: &str) -> Option<SecretOwnership> {
    let name = ci.meta().name.clone()?;
    Some(SecretOwnership {
        owner: owner_ref(ci)?,
        labels: BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
            (INSTANCE_LABEL.to_owned(), instance.to_owned()),
            (IDENTITY_LABEL.to_owned(), name),
        ]),
    })
}

impl SecretOwnership {
    /// Makes `secret` owned: its owner references become exactly this one, the labels are
    /// added (others kept).
    pub fn apply_to(&self, secret: &mut Secret) {
        secret.metadata.owner_references = Some(vec![self.owner.clone()]);
        secret.labels_mut().extend(self.labels.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::identity;

    fn secret(owner_uid: Option<&str>, labels: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("phone-client".into());
        s.metadata.owner_references = owner_uid.map(|uid| {
            vec![OwnerReference {
                api_version: "portcullis.dev/v1alpha1".into(),
                kind: "ClientIdentity".into(),
                name: "phone".into(),
                uid: uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        });
        for (k, v) in labels {
            s.labels_mut().insert((*k).into(), (*v).into());
        }
        s
    }

    const ME: &str = "portcullis";

    #[test]
    fn absent_is_missing_and_an_owner_reference_with_our_uid_is_owned() {
        assert_eq!(ownership(None, Some("u1"), ME), Ownership::Missing);
        assert_eq!(
            ownership(Some(&secret(Some("u1"), &[])), Some("u1"), ME),
            Ownership::Owned
        );
        let labelled = secret(Some("u1"), &[(INSTANCE_LABEL, ME)]);
        assert_eq!(ownership(Some(&labelled), Some("u1"), ME), Ownership::Owned);
    }

    #[test]
    fn labels_without_our_uid_are_foreign() {
        let forged = [
            (MANAGED_BY_LABEL, MANAGED_BY_VALUE),
            (INSTANCE_LABEL, ME),
            (IDENTITY_LABEL, "phone"),
        ];
        for foreign in [
            secret(None, &[]),
            secret(None, &forged),
            secret(Some("u-of-a-deleted-phone"), &forged),
        ] {
            match ownership(Some(&foreign), Some("u1"), ME) {
                Ownership::Foreign(why) => assert!(why.contains("uid u1"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            ownership(Some(&secret(Some("u1"), &[])), None, ME),
            Ownership::Foreign(_)
        ));
    }

    #[test]
    fn our_uid_under_another_release_label_is_foreign() {
        let theirs = secret(Some("u1"), &[(INSTANCE_LABEL, "other")]);
        match ownership(Some(&theirs), Some("u1"), ME) {
            Ownership::Foreign(why) => assert!(why.contains("\"other\""), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn operator_secrets_need_our_labels() {
        assert!(
            operator_secret_conflict(&secret(None, &[(MANAGED_BY_LABEL, MANAGED_BY_VALUE)]), ME)
                .is_none()
        );
        let legacy_or_ours = secret(
            None,
            &[(MANAGED_BY_LABEL, MANAGED_BY_VALUE), (INSTANCE_LABEL, ME)],
        );
        assert!(operator_secret_conflict(&legacy_or_ours, ME).is_none());
        assert!(
            operator_secret_conflict(&secret(None, &[]), ME)
                .is_some_and(|m| m.contains("rename or delete"))
        );
        let other = secret(
            None,
            &[(MANAGED_BY_LABEL, MANAGED_BY_VALUE), (INSTANCE_LABEL, "b")],
        );
        assert!(
            operator_secret_conflict(&other, ME)
                .is_some_and(|m| m.contains("own operator namespace"))
        );
    }

    #[test]
    fn restored_secrets_are_owned_by_the_new_uid() {
        let ci = identity("phone");
        let made = identity_secret_ownership(&ci, "gate").unwrap();
        let mut restored = secret(Some("uid-of-the-old-cluster"), &[("keep", "me")]);
        made.apply_to(&mut restored);
        assert_eq!(
            ownership(Some(&restored), Some("uid-phone"), "gate"),
            Ownership::Owned
        );
        assert_eq!(
            restored.labels().get("keep").map(String::as_str),
            Some("me")
        );
        assert_eq!(
            restored.labels().get(IDENTITY_LABEL).map(String::as_str),
            Some("phone")
        );
        assert_eq!(restored.owner_references().len(), 1);
        let mut unsaved = identity("new");
        unsaved.metadata.uid = None;
        assert!(identity_secret_ownership(&unsaved, "gate").is_none());
    }
}
