//! `Enrollment`: one pending enrollment link in Kubernetes mode, created by
//! `portcullis enroll NAME --namespace NS` in the identity's namespace and claimed once by a
//! data-plane replica. Its spec is the record the standalone gate keeps as a file
//! (`enroll::EnrollmentRecord`); no field holds a secret in clear: the token is stored
//! nowhere (only its hash), and the downloads are sealed under a key derived from it.
//!
//! ```text
//!  portcullis enroll ──create──▶ Enrollment {spec: record}           (owner: ClientIdentity)
//!  proxy replica ──list by portcullis.dev/token-hash──▶ compare the full hash
//!                ──replace status {claimedAt} @resourceVersion──▶ one winner (409 for the rest)
//!                ──delete──▶ once expired (claimed ones after the claim cookie's lifetime)
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label naming the ClientIdentity (same namespace) an Enrollment hands out.
pub const ENROLLMENT_IDENTITY_LABEL: &str = "portcullis.dev/identity";
/// Label holding the first 63 hex digits of the token hash (a label value's maximum
/// length): how a data-plane replica finds the Enrollment of a link it is shown.
pub const TOKEN_HASH_LABEL: &str = "portcullis.dev/token-hash";

/// The value of [`TOKEN_HASH_LABEL`] for a token hash (lowercase hex).
pub fn token_hash_label(token_hash: &str) -> &str {
    token_hash.get(..63).unwrap_or(token_hash)
}

/// A one-time enrollment link's server side: who it enrolls, until when, and the sealed
/// downloads. Created by `portcullis enroll`; a new one for the same identity replaces it.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "Enrollment",
    namespaced,
    doc = "A one-time enrollment link made by `portcullis enroll NAME --namespace NS`: the \
           device that claims it first gets the identity's certificate. Holds no secret in clear.",
    status = "EnrollmentStatus",
    category = "portcullis",
    printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".spec.identity"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Claimed","type":"string","jsonPath":".status.claimedAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSpec {
    /// The ClientIdentity whose certificate the link hands out. In Kubernetes its name, in
    /// the Enrollment's own namespace.
    pub identity: String,
    /// The route whose host the printed URL names (informational: a claim is accepted on
    /// any route that admits the identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The host the printed URL names (informational, like `route`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// SHA-256 of the link's token, lowercase hex. The token itself is stored nowhere.
    pub token_hash: String,
    /// When the link stops working (RFC 3339, UTC).
    pub expires_at: String,
    /// The `.p12` and `.mobileconfig`, AES-256-GCM under a key derived from the token
    /// (base64): unreadable without the link.
    pub bundle: String,
}

/// What happened to the link. Written once, by the data-plane replica that won the claim.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentStatus {
    /// When a device claimed the link; unset while it waits. Only one claim succeeds: the
    /// write carries the resourceVersion the replica read, so every other replica's is
    /// refused (409 Conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<Time>,
    /// The data-plane replica (pod name) that served the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
}

impl Enrollment {
    /// Whether a device has claimed the link.
    pub fn is_claimed(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.claimed_at.is_some())
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn labels_and_schema() {
        let hash = "ab".repeat(32);
        assert_eq!(token_hash_label(&hash).len(), 63);
        assert_eq!(token_hash_label("abc"), "abc");
        let crd = serde_json::to_value(Enrollment::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "enrollments.portcullis.dev");
        let version = &crd["spec"]["versions"][0];
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for field in ["identity", "tokenHash", "expiresAt", "bundle"] {
            assert!(
                spec["required"].as_array().unwrap().contains(&field.into()),
                "{field} required"
            );
            assert!(
                spec["properties"][field]["description"].is_string(),
                "{field} documented"
            );
        }
        // A future time is "<invalid>" as a kubectl date column: the expiry is a string.
        let expires = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "Expires")
            .unwrap();
        assert_eq!(expires["type"], "string");
        assert!(version["subresources"]["status"].is_object());
    }
}
