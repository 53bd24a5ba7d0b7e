//! The Kubernetes controller: the part of the operator that writes to the cluster.
//!
//! ```text
//!  Lease portcullis-controller ──leader?──▶ lead():
//!    CA Secret (create if absent, never replace) ──watch──▶ CaState ──▶ reconcile all
//!    cookie keys Secret (create if absent)
//!    Controller<ClientIdentity>.owns(Secret)  ──▶ <name>-client Secret, status, CRL
//!    Controller<ProtectedRoute>.owns(Secret)  ──▶ <name>-server-tls Secret, status
//!    CRL refresher ──▶ portcullis-crl (re-signed daily and when the CA changes; carries
//!                      the CA certificate, ca.crt, for the data plane: never the key)
//!  leadership lost / shutdown ──▶ every controller stops; the next leader takes over
//! ```
//! Every write is a server-side apply with field manager `portcullis`, made only when the
//! object differs from what is wanted: reconciling an unchanged world writes nothing. The
//! data plane reads the same Secrets (see [`names`]) and never imports this module.

mod apply;
mod ca;
mod conditions;
mod context;
mod crl;
mod error;
#[cfg(test)]
mod fixtures;
mod identity;
mod identity_plan;
mod identity_status;
mod leading;
mod ownership;
/// Names of what the controller writes (they live with the resources: the data plane reads
/// the same objects).
pub use crate::resources::names;
mod route;
mod route_plan;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use crate::resources::Instance;
pub use ca::CaState;
pub use context::Metrics;
pub use error::{Error, Result};
pub use ownership::{
    Ownership, SECRET_CONFLICT, SecretOwnership, identity_secret_ownership, ownership,
};

/// Lease duration (seconds): a dead leader is replaced after at most this long.
pub const LEASE_DURATION: u64 = 15;
/// The leader renews this many seconds before its lease would expire.
pub const LEASE_GRACE: u64 = 5;

/// Where the controller keeps its own objects and who it is.
#[derive(Clone, Debug)]
pub struct Config {
    /// The operator's namespace: CA, cookie keys, CRL and Lease live here.
    pub namespace: String,
    /// Name of the CA Secret; default [`names::CA_SECRET`]. Another name is a
    /// bring-your-own CA: it is used, never created.
    pub ca_secret: String,
    /// This replica's identity as Lease holder (the pod name).
    pub identity: String,
    /// The release: which objects it acts on, the label on every Secret it writes.
    pub instance: Instance,
    /// The namespaces whose ClientIdentities and ProtectedRoutes it reconciles.
    pub scope: crate::scope::Scope,
}

impl Config {
    /// A config with the default CA Secret name and instance.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Config {
            namespace: namespace.into(),
            ca_secret: names::CA_SECRET.to_owned(),
            identity: identity.into(),
            instance: Instance::default(),
            scope: crate::scope::Scope::Cluster,
        }
    }
}

/// Runs the controller until `shutdown` is cancelled: elects a leader on the Lease
/// [`names::LEASE_NAME`], runs the controllers only while leading. Metrics are not
/// registered anywhere; use [`run_with_metrics`] to export them.
pub async fn run(client: Client, config: Config, shutdown: CancellationToken) -> crate::Result<()> {
    run_with_metrics(client, config, Arc::default(), shutdown).await
}

/// [`run`], counting reconciles and failures in `metrics` (see [`Metrics::register`]).
pub async fn run_with_metrics(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> crate::Result<()> {
    let manager = LeaseManagerBuilder::new(client.clone(), names::LEASE_NAME)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(LEASE_DURATION)
        .with_grace(LEASE_GRACE)
        .build()
        .await
        .map_err(Error::from)?;
    let (mut leader, lease_task) = manager.watch().await;
    let result = follow(&client, &config, &metrics, &shutdown, &mut leader).await;
    // Closing the channel makes the manager release the Lease, so a standby takes over
    // at once instead of after the lease duration.
    drop(leader);
    match lease_task.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("releasing the leader lease: {e}"),
        Err(e) => tracing::warn!("leader lease task: {e}"),
    }
    result
}

/// Why a leadership term ended.
enum End {
    Shutdown,
    Lost,
    LeaseGone,
    Crashed(Option<tokio::task::JoinError>),
}

/// Waits for leadership, leads until it is lost, and again, until shutdown.
async fn follow(
    client: &Client,
    config: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
    leader: &mut watch::Receiver<bool>,
) -> crate::Result<()> {
    let lease_gone = || {
        Error::unusable(
            format!("Lease {}/{}", config.namespace, names::LEASE_NAME),
            "leader election stopped",
        )
    };
    loop {
        while !*leader.borrow_and_update() {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                changed = leader.changed() => changed.map_err(|_| lease_gone())?,
            }
        }
        tracing::info!(identity = %config.identity, "leader: running the controllers");
        let stop = shutdown.child_token();
        let mut term = tokio::spawn(leading::lead(
            client.clone(),
            config.clone(),
            metrics.clone(),
            stop.clone(),
        ));
        let end = loop {
            tokio::select! {
                // Shutdown first: it also ends the term (its token is a child), and that
                // must not read as a crash.
                biased;
                () = shutdown.cancelled() => break End::Shutdown,
                changed = leader.changed() => match changed {
                    Ok(()) if *leader.borrow_and_update() => {}
                    Ok(()) => break End::Lost,
                    Err(_) => break End::LeaseGone,
                },
                ended = &mut term, if !shutdown.is_cancelled() => break End::Crashed(ended.err()),
            }
        };
        stop.cancel();
        if !matches!(end, End::Crashed(_))
            && let Err(e) = term.await
        {
            tracing::error!("controllers: {e}");
        }
        match end {
            End::Shutdown => return Ok(()),
            End::Lost => {}
            End::LeaseGone => return Err(lease_gone().into()),
            End::Crashed(e) => {
                // lead() returns only when told to stop: step down, let a replica retry.
                tracing::error!("the controllers stopped unexpectedly: {e:?}");
                return Err(lease_gone().into());
            }
        }
        tracing::warn!(identity = %config.identity, "lost leadership: controllers stopped");
    }
}
