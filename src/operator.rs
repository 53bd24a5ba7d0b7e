//! `portcullis operator`: the controller (writes certificates and status, leader-elected)
//! and the data plane (fed by watches), in one process or split by `--role`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::enroll::Enrollments;
use crate::sources::cluster::{self, ClusterSource};
use crate::sources::cluster_enroll::{self, ClusterEnrollments};
use crate::telemetry::Metrics;
use crate::{Error, Result, controller, proxy};

/// How often the data plane clears out expired enrollment links.
const ENROLLMENT_SWEEP: Duration = Duration::from_secs(300);

/// Which parts of the operator this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Only the controller: scale it to 2 for a standby leader.
    Controller,
    /// Only the data plane: scale it with traffic.
    Proxy,
    /// Both (the default; what a home cluster wants).
    All,
}

/// Everything `portcullis operator` needs.
pub struct Options {
    pub role: Role,
    /// The operator's namespace: CA, cookie keys, CRL, Lease.
    pub namespace: String,
    /// The CA Secret's name (bring your own by naming it).
    pub ca_secret: String,
    /// This replica's name as Lease holder (the pod name).
    pub pod_name: String,
    /// The release: which ProtectedRoutes and ClientIdentities are its own.
    pub instance: crate::resources::Instance,
    /// The data plane's TLS listener (unused by the controller role).
    pub listener: Option<TcpListener>,
    /// A second data-plane listener where every connection must open with a PROXY
    /// protocol header (the port only the ingress proxy may reach); the main listener then
    /// needs no PROXY peers at all.
    pub proxy_protocol_listener: Option<TcpListener>,
    /// The namespaces watched (routes, identities, Enrollments, their Secrets).
    pub scope: crate::scope::Scope,
    /// Health and metrics.
    pub admin: TcpListener,
    /// How often the data plane reports what it saw to ClientIdentity status.
    pub seen_flush: std::time::Duration,
    pub settings: proxy::Settings,
}

/// Runs until `shutdown`. Health and metrics are served in every role.
pub async fn run(client: kube::Client, opts: Options, shutdown: CancellationToken) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let controller_metrics = Arc::new(controller::Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    controller_metrics.register(&mut registry);

    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut tasks = tokio::task::JoinSet::new();
    if opts.role != Role::Controller {
        let listener = opts
            .listener
            .ok_or_else(|| Error::Config("the proxy role needs a --listen address".into()))?;
        let mut settings = opts.settings;
        if settings.enrollments.is_none() {
            // Enrollment links: `Enrollment` objects, claimed with an optimistic-concurrency
            // status write (see sources::cluster_enroll); no Secret access needed.
            let store = Arc::new(ClusterEnrollments::in_scope(
                client.clone(),
                &opts.pod_name,
                opts.scope.clone(),
            ));
            settings.enrollments = Some(Arc::new(Enrollments::new(store.clone())));
            tasks.spawn(cluster_enroll::sweep_every(
                store,
                ENROLLMENT_SWEEP,
                shutdown.clone(),
            ));
        }
        let source = ClusterSource {
            namespace: opts.namespace.clone(),
            ca_secret: opts.ca_secret.clone(),
            instance: opts.instance.clone(),
            scope: opts.scope.clone(),
        };
        tasks.spawn(cluster::run(
            client.clone(),
            source,
            tx,
            metrics.clone(),
            shutdown.clone(),
        ));
        // The proxy's sightings (last seen, open connections): served on /identities and
        // reported to each ClientIdentity's status.
        let sightings = settings.sightings.clone();
        tasks.spawn(crate::sources::seen_status::report(
            client.clone(),
            sightings.clone(),
            opts.seen_flush,
            shutdown.clone(),
        ));
        if let Some(proxied) = opts.proxy_protocol_listener {
            tasks.spawn(proxy::serve(
                proxied,
                rx.clone(),
                proxy::Settings {
                    proxy_protocol_from: proxy::everyone(),
                    ..settings.clone()
                },
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(proxy::serve(
            listener,
            rx.clone(),
            settings,
            metrics,
            shutdown.clone(),
        ));
        let ready = proxy::snapshot_loaded(rx);
        tasks.spawn(proxy::serve_admin(
            opts.admin,
            ready,
            Arc::new(registry),
            Some(sightings),
            shutdown.clone(),
        ));
    } else {
        // Controller only: ready while it runs; it serves no snapshot.
        let ready: proxy::Readiness = Arc::new(|| true);
        tasks.spawn(proxy::serve_admin(
            opts.admin,
            ready,
            Arc::new(registry),
            None,
            shutdown.clone(),
        ));
    }
    if opts.role != Role::Proxy {
        let config = controller::Config {
            namespace: opts.namespace,
            ca_secret: opts.ca_secret,
            identity: opts.pod_name,
            instance: opts.instance,
            scope: opts.scope,
        };
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) =
                controller::run_with_metrics(client, config, controller_metrics, shutdown.clone())
                    .await
            {
                tracing::error!(error = %e, "controller stopped");
                shutdown.cancel();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// `portcullis identity export` in Kubernetes mode: the device files from the identity's
/// Secret. Refuses revoked identities and ones not minted yet, saying which.
pub async fn export_identity(
    client: kube::Client,
    namespace: &str,
    name: &str,
    format: crate::sources::ExportFormat,
    out: Option<&std::path::Path>,
) -> Result<crate::sources::Exported> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    let not_found = |what: String| Error::Config(what);
    let identities: Api<crate::resources::ClientIdentity> =
        Api::namespaced(client.clone(), namespace);
    let identity = identities
        .get_opt(name)
        .await
        .map_err(|e| Error::Config(format!("reading ClientIdentity {namespace}/{name}: {e}")))?
        .ok_or_else(|| {
            not_found(format!(
                "no ClientIdentity {name} in namespace {namespace} (try --namespace)"
            ))
        })?;
    if identity.spec.revoked {
        return Err(Error::Config(format!(
            "ClientIdentity {namespace}/{name} is revoked; its files would not be admitted"
        )));
    }
    let secret_name = controller::names::identity_secret_name(name);
    let secret = Api::<Secret>::namespaced(client, namespace)
        .get_opt(&secret_name)
        .await
        .map_err(|e| Error::Config(format!("reading Secret {namespace}/{secret_name}: {e}")))?
        .ok_or_else(|| not_found(format!("Secret {namespace}/{secret_name} does not exist yet: is the operator running? See `kubectl describe clientidentity {name}`")))?;
    let data = secret.data.unwrap_or_default();
    let read = |key: &str| {
        data.get(key).map(|b| b.0.clone()).ok_or_else(|| {
            Error::Config(format!("Secret {namespace}/{secret_name} has no key {key}"))
        })
    };
    let identity = format!("{namespace}/{name}");
    crate::sources::write_device_files(name, &identity, format, out, &read)
}
