//! The resource kinds, shared by the Kubernetes operator and standalone mode.
//!
//! The same structs are the CRD schema (`portcullis crd`), the Kubernetes objects the
//! operator watches, and the documents of a standalone config file (`Enrollment`'s spec is
//! the standalone gate's enrollment record). Every `///` comment on a field becomes
//! `kubectl explain` text.

mod client_identity;
mod enrollment;
mod instance;
pub mod names;
mod protected_route;
pub mod schema;
mod time;
pub mod validate;

pub use client_identity::{
    ClientIdentity, ClientIdentitySpec, ClientIdentityStatus, KeyAlgorithm, Pkcs12Profile,
    Pkcs12Spec, PreviousCertificate, SecretKeyRef, SeenCertificate,
};
pub use enrollment::{
    ENROLLMENT_IDENTITY_LABEL, Enrollment, EnrollmentSpec, EnrollmentStatus, TOKEN_HASH_LABEL,
    token_hash_label,
};
pub use instance::Instance;
pub use protected_route::{
    AcmeChallenge, AcmeSpec, BypassRule, CertificateFiles, ClientAuth, CookieFallback, IssueSpec,
    LETS_ENCRYPT, ProtectedRoute, ProtectedRouteSpec, ProtectedRouteStatus, ServerCertificate,
    ServiceRef, Upstream,
};
pub use time::{from_time, to_time};

pub use validate::{Problem, identity_problems, route_problems};

use kube::CustomResourceExt;

/// The CRD YAML for every kind, as printed by `portcullis crd` and checked in under `crds/`.
pub fn crd_yaml() -> String {
    let mut out = String::new();
    for crd in [
        ProtectedRoute::crd(),
        ClientIdentity::crd(),
        Enrollment::crd(),
    ] {
        out.push_str("---\n");
        // Serialising a CRD built from our own types cannot fail.
        out.push_str(&serde_yaml::to_string(&crd).expect("CRD serialises to YAML"));
    }
    out
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    fn crds() -> Vec<serde_json::Value> {
        [
            ProtectedRoute::crd(),
            ClientIdentity::crd(),
            Enrollment::crd(),
        ]
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect()
    }

    /// kubectl renders a future time in a `date` column as `<invalid>`: only past times
    /// (the creation timestamp) may be dates; expiries are strings, as in cert-manager.
    #[test]
    fn date_columns_are_past_times_only() {
        for crd in crds() {
            for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]
                .as_array()
                .unwrap()
            {
                if column["type"] == "date" {
                    assert_eq!(
                        column["jsonPath"], ".metadata.creationTimestamp",
                        "{column}"
                    );
                }
            }
        }
    }

    /// `kubectl explain protectedroute` prints the top-level description: a real one, not
    /// the derive macro's boilerplate.
    #[test]
    fn every_kind_has_a_real_description() {
        for crd in crds() {
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let text = schema["description"].as_str().unwrap_or_default();
            assert!(
                text.len() > 60 && !text.contains("Auto-generated"),
                "{}: {text:?}",
                crd["metadata"]["name"]
            );
        }
    }
}
