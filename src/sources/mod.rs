//! Sources turn resources into snapshots. Standalone mode has one: a YAML file of
//! ProtectedRoutes and ClientIdentities plus a local state directory.
//!
//! ```text
//!  config file ──config::load_config──▶ Config (valid, every problem reported otherwise)
//!                                          │
//!  state dir ◀──reconcile (CA, certs, .p12, CRL)──┘──▶ SnapshotParts ──▶ Snapshot
//!                                                                        │
//!  file::run: watch the file's directory, debounce, reload ───────▶ watch::Sender
//! ```
//! A rejected update never replaces the snapshot being served.

// The certificate checks are shared with the Kubernetes controller.
use crate::pki::renewal as certs;
pub mod cluster;
pub mod cluster_enroll;
pub mod config;
mod devices;
mod enroll;
mod external;
pub mod file;
mod identities;
mod live;
pub mod reconcile;
mod routes;
pub mod seen_status;
mod yaml;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use config::{
    API_VERSION, Config, ConfigErrors, ConfigProblem, Location, load_config, parse_config,
};
pub use devices::{
    ExportFormat, Exported, export_identity, instructions, live_credentials, write_device_files,
};
pub use enroll::{EnrollCluster, EnrollStandalone, Enrolled, enroll_cluster, enroll_standalone};
pub use external::OwnCert;
pub use reconcile::{Expiry, Outcome, reconcile};

/// A resource's `metadata.name` (the config loader guarantees it is present).
pub(crate) fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}
