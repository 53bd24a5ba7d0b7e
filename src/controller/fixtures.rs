//! Test fixtures: resources as the API server would hand them to a reconcile.

use std::time::Duration;

use crate::resources::{
    ClientAuth, ClientIdentity, ClientIdentitySpec, KeyAlgorithm, Pkcs12Spec, ProtectedRoute,
    ProtectedRouteSpec, ServerCertificate, ServiceRef, Upstream,
};

/// A day.
pub const DAY: Duration = Duration::from_secs(86_400);

/// A ClientIdentity `name` in namespace `home`, generation 1, with a uid.
pub fn identity(name: &str) -> ClientIdentity {
    let mut ci = ClientIdentity::new(
        name,
        ClientIdentitySpec {
            common_name: None,
            validity: Some("30d".into()),
            renew_before: Some("10d".into()),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            pkcs12: Pkcs12Spec::default(),
            revoked: false,
        },
    );
    ci.metadata.namespace = Some("home".into());
    ci.metadata.uid = Some(format!("uid-{name}"));
    ci.metadata.generation = Some(1);
    ci
}

/// A ProtectedRoute `name` in namespace `home` for `ha.example.test`, upstream Service
/// `ha:8123`, certificate issued.
pub fn route(name: &str) -> ProtectedRoute {
    let mut pr = ProtectedRoute::new(
        name,
        ProtectedRouteSpec {
            hosts: vec!["HA.example.test".into()],
            upstream: Upstream {
                service: Some(ServiceRef {
                    name: "ha".into(),
                    port: 8123,
                }),
                url: None,
            },
            server_certificate: ServerCertificate::default(),
            client_auth: ClientAuth::default(),
            bypass: Vec::new(),
            strip_headers: Vec::new(),
            allow_underscore_headers: false,
            hsts: None,
        },
    );
    pr.metadata.namespace = Some("home".into());
    pr.metadata.uid = Some(format!("uid-{name}"));
    pr.metadata.generation = Some(3);
    pr
}
