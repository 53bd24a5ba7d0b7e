//! One leadership term: bootstrap the operator's Secrets, then run both controllers, the
//! CA watch and the CRL refresher until told to stop.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ca::{CaState, bootstrap, ensure_cookie_keys};
use super::context::{Context, Metrics, backoff};
use super::names::{instance_selector, server_certificate_selector};
use super::{Config, Error, identity, route};
use crate::pki::CRL_REFRESH;
use crate::resources::{ClientIdentity, ProtectedRoute};

/// Reconciles running at once per controller: minting RSA keys is CPU-heavy.
const CONCURRENCY: u16 = 4;

/// Runs the controllers until `stop` is cancelled. Never returns early: failures are
/// retried with backoff.
pub async fn lead(client: Client, config: Config, metrics: Arc<Metrics>, stop: CancellationToken) {
    let Some(initial) = retry(&stop, "reading the CA Secret", || {
        bootstrap(
            &client,
            &config.namespace,
            &config.ca_secret,
            &config.instance.name,
        )
    })
    .await
    else {
        return;
    };
    if retry(&stop, "creating the cookie keys", || {
        ensure_cookie_keys(&client, &config.namespace, &config.instance.name)
    })
    .await
    .is_none()
    {
        return;
    }
    let (ca_tx, ca_rx) = watch::channel(initial.clone());

    // Every watch covers the configured namespaces only (one watch per namespace, merged;
    // see crate::scope). Secrets: only those this release wrote, and
    // only their metadata (ownership is all the trigger needs).
    let scope = &config.scope;
    let all = watcher::Config::default;
    let owned = || {
        scope
            .watch(&client, |api: Api<PartialObjectMeta<Secret>>| {
                watcher(api, all().labels(&instance_selector(&config.instance.name)))
                    .default_backoff()
            })
            .touched_objects()
    };
    let (identity_store, identity_writer) = reflector::store();
    let identity_stream = scope
        .watch(&client, |api: Api<ClientIdentity>| {
            watcher(api, all()).default_backoff()
        })
        .reflect(identity_writer)
        .applied_objects();
    let (route_store, route_writer) = reflector::store();
    let route_stream = scope
        .watch(&client, |api: Api<ProtectedRoute>| {
            watcher(api, all()).default_backoff()
        })
        .reflect(route_writer)
        .applied_objects();
    let ctrl_config = controller::Config::default().concurrency(CONCURRENCY);
    let identities = Controller::for_stream(identity_stream, identity_store)
        .with_config(ctrl_config.clone())
        .owns_stream(owned())
        .reconcile_all_on(ca_changes(ca_rx.clone()));
    let routes = Controller::for_stream(route_stream, route_store)
        .with_config(ctrl_config)
        .owns_stream(owned())
        .reconcile_all_on(ca_changes(ca_rx.clone()));
    // Every identity change may change every route's admitted count.
    let route_store = routes.store();
    let brought_store = routes.store();
    let routes = routes.watches_stream(
        scope
            .watch(&client, |api: Api<ClientIdentity>| {
                watcher(api, all()).default_backoff()
            })
            .touched_objects(),
        move |_: ClientIdentity| {
            route_store
                .state()
                .iter()
                .map(|r| ObjectRef::from_obj(&**r))
                .collect::<Vec<_>>()
        },
    );
    // A brought server certificate (serverCertificate.secretName) is checked again when it
    // changes, or when it gets the label that makes the data plane read it.
    let routes = routes.watches_stream(
        scope
            .watch(&client, |api: Api<PartialObjectMeta<Secret>>| {
                watcher(api, all().labels(&server_certificate_selector())).default_backoff()
            })
            .touched_objects(),
        move |secret: PartialObjectMeta<Secret>| {
            let (ns, name) = (secret.metadata.namespace, secret.metadata.name);
            brought_store
                .state()
                .iter()
                .filter(|r| {
                    r.metadata.namespace == ns
                        && r.spec.server_certificate.secret_name.is_some()
                        && r.spec.server_certificate.secret_name == name
                })
                .map(|r| ObjectRef::from_obj(&**r))
                .collect::<Vec<_>>()
        },
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        ca_rx,
        identities.store(),
        metrics,
    ));
    report(&ctx, &initial).await;

    let identities = identities
        .graceful_shutdown_on(cancelled(stop.clone()))
        .run(identity::reconcile, identity::error_policy, ctx.clone())
        .for_each(|r| async move { log_result("ClientIdentity", r.map(|_| ())) });
    let routes = routes
        .graceful_shutdown_on(cancelled(stop.clone()))
        .run(route::reconcile, route::error_policy, ctx.clone())
        .for_each(|r| async move { log_result("ProtectedRoute", r.map(|_| ())) });
    tokio::join!(
        identities,
        routes,
        watch_ca(ctx.clone(), ca_tx, stop.clone()),
        refresh_crl(ctx, stop)
    );
}

/// A future that completes when `token` is cancelled (`Send + Sync`, as kube requires).
async fn cancelled(token: CancellationToken) {
    token.cancelled_owned().await;
}

/// Calls `f` until it succeeds or `stop` is cancelled (`None`).
async fn retry<T, F: Future<Output = Result<T, Error>>>(
    stop: &CancellationToken,
    what: &str,
    mut f: impl FnMut() -> F,
) -> Option<T> {
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                attempt += 1;
                tracing::warn!(attempt, "{what}: {e}");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(backoff(attempt)) => {}
        }
    }
}

fn log_result<T, Q: std::fmt::Display>(kind: &str, r: Result<T, controller::Error<Error, Q>>) {
    match r {
        // Reconcile failures were logged by the error policy.
        Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
        Err(controller::Error::ObjectNotFound(obj)) => tracing::debug!(kind, "{obj} is gone"),
        Err(e) => tracing::warn!(kind, "controller: {e}"),
    }
}

/// A stream that yields whenever the CA state changes, to reconcile every object.
fn ca_changes(
    rx: watch::Receiver<CaState>,
) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    })
}

/// Watches the CA Secret by name and publishes each change of what it holds.
async fn watch_ca(ctx: Arc<Context>, tx: watch::Sender<CaState>, stop: CancellationToken) {
    let (ns, name) = (ctx.config.namespace.clone(), ctx.config.ca_secret.clone());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = pin!(watcher(api, wc).default_backoff());
    let mut listed = false;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            e = events.next() => e,
        };
        let secret = match event {
            None => return,
            Some(Ok(watcher::Event::Init)) => {
                listed = false;
                continue;
            }
            Some(Ok(watcher::Event::InitApply(s))) => {
                listed = true;
                Some(s)
            }
            Some(Ok(watcher::Event::InitDone)) if listed => continue,
            Some(Ok(watcher::Event::InitDone | watcher::Event::Delete(_))) => None,
            Some(Ok(watcher::Event::Apply(s))) => Some(s),
            Some(Err(e)) => {
                tracing::warn!("watching the CA Secret {ns}/{name}: {e}");
                continue;
            }
        };
        let state = CaState::from_secret(&ns, &name, secret.as_ref());
        let changed = tx.send_if_modified(|current| {
            let changed = !current.same_as(&state);
            if changed {
                *current = state.clone();
            }
            changed
        });
        if changed {
            report(&ctx, &state).await;
        }
    }
}

/// Logs (and for an unusable CA, publishes an Event on the Secret about) the CA state.
async fn report(ctx: &Context, state: &CaState) {
    match state {
        CaState::Ready(ca) => tracing::info!(
            subject = ca.info().common_name.as_deref().unwrap_or_default(),
            expires = %humantime::format_rfc3339_seconds(ca.info().not_after),
            "certificate authority loaded"
        ),
        CaState::Unknown => {}
        CaState::Missing(message) => tracing::error!("{message}"),
        CaState::Invalid(message) => {
            tracing::error!("{message}");
            let secret = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                namespace: Some(ctx.config.namespace.clone()),
                name: Some(ctx.config.ca_secret.clone()),
                ..ObjectReference::default()
            };
            ctx.event(&secret, true, "CASecretInvalid", message.clone())
                .await;
        }
    }
}

/// Keeps `crl.pem` signed: daily, and at once when the CA changes.
async fn refresh_crl(ctx: Arc<Context>, stop: CancellationToken) {
    let mut ca_rx = ctx.ca.clone();
    let mut failures = 0;
    loop {
        let ca = ca_rx.borrow_and_update().ca().ok().cloned();
        let wait = match ctx.crl.publish(ca.as_deref(), &[]).await {
            Ok(next) => {
                failures = 0;
                next.and_then(|t| t.duration_since(SystemTime::now()).ok())
                    .unwrap_or(CRL_REFRESH)
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(attempt = failures, "publishing the CRL: {e}");
                backoff(failures)
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait.max(Duration::from_secs(1))) => {}
            changed = ca_rx.changed() => if changed.is_err() { return },
        }
    }
}
