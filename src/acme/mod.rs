//! Publicly trusted server certificates for standalone routes by ACME (issue 14).
//!
//! ```text
//!  accepted config ──▶ manager: a task per `serverCertificate.acme` route
//!        ├─ schedule: when (renew at 2/3 of the lifetime; backoff, Retry-After on disk)
//!        ├─ order: challenges answered by the gate ─┬─ tls_alpn: on its TLS port
//!        │                                          └─ http01: on --http-listen
//!        └─ store: routes/<route>/acme/certificate.pem ──▶ file source ──▶ snapshot
//! ```
//! The data plane never waits for the CA: a route without a certificate is simply not in
//! the snapshot (or serves a self-issued one if the user asked), the others serve.

pub mod client;
pub mod http01;
pub mod manager;
pub mod order;
pub mod problem;
pub mod schedule;
pub mod store;
pub mod tls_alpn;

pub use manager::{AcmeRoute, Manager, acme_routes};
pub use order::Responders;
