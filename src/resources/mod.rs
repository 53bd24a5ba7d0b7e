//! The resource kinds, shared by the Kubernetes operator and standalone mode.
//!
//! The same structs are the CRD schema (`portcullis crd`), the Kubernetes objects the
//! operator watches, and the documents of a standalone config file (`Enrollment`'s spec is
//! the standalone gate's enrollment record). Every `///` comment on a field becomes
//! `kubectl explain` text.

mod client_identity;
mod enrollment;
pub mod names;
mod protected_route;
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
pub use protected_route::{
    BypassRule, ClientAuth, CookieFallback, IssueSpec, ProtectedRoute, ProtectedRouteSpec,
    ProtectedRouteStatus, ServerCertificate, ServiceRef, Upstream,
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
