//! The Kubernetes source: watches ProtectedRoutes, ClientIdentities and the Secrets the
//! controller writes, and rebuilds the snapshot whenever any of them changes.
//!
//! ```text
//!  watch ProtectedRoute ─┐
//!  watch ClientIdentity ─┼─▶ reflector stores ─▶ (debounce) ─▶ build ─▶ watch::Sender
//!  watch Secrets ────────┤                                      └─ error: keep the last good
//!  watch named Secrets ──┘
//! ```
//! It only reads: the controller (possibly another replica, the lease holder) writes.
//!
//! Of the Secrets it caches only what it serves from: the ones the controller wrote
//! (label `app.kubernetes.io/managed-by=portcullis`), the ones a user named in
//! `serverCertificate.secretName` and labelled [`names::SERVER_CERTIFICATE_LABEL`], and by
//! name the CRL and cookie-key Secrets of the operator namespace. Every watch covers only
//! the [`Scope`]'s namespaces.
//!
//! It never reads the CA Secret: that holds the CA's private key, and this process faces
//! the internet. The controller publishes the CA certificate alone in the CRL Secret
//! ([`names::CA_CRT`]), and the data plane trusts that.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::live::{Held, live_certs};
use super::routes::resolve;
use crate::pki::previous::{PREVIOUS_CRT, parse_previous};
use crate::pki::{canonical_serial, parse_ledger_json};
use crate::resources::names;
use crate::resources::validate::cluster_route_problems;
use crate::resources::{ClientIdentity, Instance, ProtectedRoute};
use crate::scope::Scope;
use crate::snapshot::{RouteSource, Snapshot, SnapshotParts};
use crate::telemetry::{FailureLabels, Metrics};
use crate::{Error, Result};

/// Changes closer together than this are applied as one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Where the installation-wide Secrets live.
#[derive(Debug, Clone)]
pub struct ClusterSource {
    /// The operator's namespace (CA, cookie keys, CRL).
    pub namespace: String,
    /// Name of the CA Secret (bring-your-own allowed). Never read here: named in messages,
    /// and kept out of the cache of controller-written Secrets.
    pub ca_secret: String,
    /// The release: only its routes and identities are served and admitted.
    pub instance: Instance,
    /// The namespaces of routes, identities and their Secrets.
    pub scope: Scope,
}

struct Stores {
    routes: Store<ProtectedRoute>,
    identities: Store<ClientIdentity>,
    /// Written by the controller (managed-by label).
    managed_secrets: Store<Secret>,
    /// Users' server certificates, opted in by label.
    server_secrets: Store<Secret>,
    /// CRL (with the CA certificate) and cookie keys, by name in the operator namespace.
    own_secrets: Store<Secret>,
}

/// Watches the cluster and publishes a snapshot after every change until `shutdown`.
pub async fn run(
    client: Client,
    source: ClusterSource,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (routes, routes_w) = reflector::store();
    let (identities, identities_w) = reflector::store();
    let (managed_secrets, managed_w) = reflector::store();
    let (server_secrets, server_w) = reflector::store();
    let (own_secrets, own_w) = reflector::store();
    let cfg = watcher::Config::default;
    let scope = &source.scope;
    let labelled = |selector: String, fields: Option<String>| {
        scope.watch(&client, move |api: Api<Secret>| {
            let config = cfg().labels(&selector);
            watcher(
                api,
                fields.as_ref().map_or(config.clone(), |f| config.fields(f)),
            )
        })
    };
    // The controller labels the CA Secret it generates like everything it writes: leave it
    // (and its private key) out of this cache when the operator namespace is in scope.
    let not_the_ca = format!("metadata.name!={}", source.ca_secret);
    // The operator namespace's own Secrets, each watched by name (RBAC can grant exactly
    // these names; a watch by label could not be limited). Not the CA Secret.
    let named = crate::scope::merge(
        [names::CRL_SECRET, names::COOKIE_KEYS_SECRET]
            .into_iter()
            .map(|name| {
                watcher(
                    Api::<Secret>::namespaced(client.clone(), &source.namespace),
                    cfg().fields(&format!("metadata.name={name}")),
                )
            })
            .collect(),
    );
    let changes = futures_util::stream::select_all([
        touch(
            reflector(routes_w, scope.watch(&client, |api| watcher(api, cfg()))),
            |r: &ProtectedRoute| read_by_snapshot(&r.metadata, &r.spec),
        ),
        touch(
            reflector(
                identities_w,
                scope.watch(&client, |api| watcher(api, cfg())),
            ),
            |c: &ClientIdentity| read_by_snapshot(&c.metadata, &c.spec),
        ),
        touch(
            reflector(
                managed_w,
                labelled(names::managed_selector(), Some(not_the_ca)),
            ),
            secret_contents,
        ),
        touch(
            reflector(
                server_w,
                labelled(names::server_certificate_selector(), None),
            ),
            secret_contents,
        ),
        touch(reflector(own_w, named), secret_contents),
    ]);
    let stores = Stores {
        routes,
        identities,
        managed_secrets,
        server_secrets,
        own_secrets,
    };
    let mut changes = std::pin::pin!(changes);
    let mut generation = 0;
    loop {
        tokio::select! {
            change = changes.next() => if change.is_none() { return },
            () = shutdown.cancelled() => return,
        }
        // Let a burst (initial list, a kubectl apply of many objects) settle.
        let settle = tokio::time::sleep(DEBOUNCE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                () = &mut settle => break,
                change = changes.next() => if change.is_none() { return },
            }
        }
        if !stores.ready() {
            continue;
        }
        generation += 1;
        match build(&stores, &source, generation) {
            Ok(snapshot) => {
                tracing::info!(
                    generation,
                    routes = snapshot.routes().len(),
                    identities = snapshot.live_count(),
                    "snapshot updated"
                );
                metrics.snapshot_generation.set(generation as i64);
                metrics.observe_live(
                    snapshot
                        .live()
                        .map(|c| (c.identity.as_str(), c.serial_hex.as_str(), c.not_after)),
                );
                metrics
                    .config_reloads
                    .get_or_create(&FailureLabels { reason: "ok" })
                    .inc();
                tx.send_replace(Some(Arc::new(snapshot)));
            }
            Err(e) => {
                tracing::error!(error = %e, "cluster state rejected; still serving the last good snapshot");
                metrics
                    .config_reloads
                    .get_or_create(&FailureLabels { reason: "rejected" })
                    .inc();
            }
        }
    }
}

/// A stream of "something the snapshot reads changed" ticks. An update that leaves
/// `contents` as it was (a status write: `lastSeen`, conditions) is no tick, so the data
/// plane's TLS configuration and every connection's revocation watch are not rebuilt for
/// it. Watch errors are logged and retried with backoff.
fn touch<S, K>(
    stream: S,
    contents: fn(&K) -> u64,
) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = ()> + Send>>
where
    S: futures_util::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    K: kube::Resource + Send + 'static,
{
    let mut known: HashMap<(Option<String>, String), u64> = HashMap::new();
    let key = |k: &K| {
        (
            k.meta().namespace.clone(),
            k.meta().name.clone().unwrap_or_default(),
        )
    };
    Box::pin(stream.default_backoff().filter_map(move |event| {
        let tick = match event {
            Ok(watcher::Event::Init) => {
                known.clear();
                None
            }
            Ok(watcher::Event::InitApply(k)) => {
                known.insert(key(&k), contents(&k));
                None
            }
            Ok(watcher::Event::InitDone) => Some(()),
            Ok(watcher::Event::Apply(k)) => {
                let fresh = contents(&k);
                (known.insert(key(&k), fresh) != Some(fresh)).then_some(())
            }
            Ok(watcher::Event::Delete(k)) => {
                known.remove(&key(&k));
                Some(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch failed; retrying");
                None
            }
        };
        std::future::ready(tick)
    }))
}

/// What the snapshot reads of a ProtectedRoute or ClientIdentity: its spec, labels and
/// whether it is being deleted — not its status.
fn read_by_snapshot(meta: &ObjectMeta, spec: &impl serde::Serialize) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(spec).unwrap_or_default().hash(&mut h);
    meta.labels.hash(&mut h);
    meta.deletion_timestamp.as_ref().map(|t| t.0).hash(&mut h);
    meta.creation_timestamp.as_ref().map(|t| t.0).hash(&mut h);
    h.finish()
}

/// Everything of a Secret the snapshot may read.
fn secret_contents(secret: &Secret) -> u64 {
    let mut h = DefaultHasher::new();
    secret.type_.hash(&mut h);
    if let Some(data) = &secret.data {
        for (k, v) in data {
            (k, &v.0).hash(&mut h);
        }
    }
    h.finish()
}

fn reflector<K, W>(
    writer: reflector::store::Writer<K>,
    stream: W,
) -> impl futures_util::Stream<Item = W::Item> + Send
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    W: futures_util::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    reflector::reflector(writer, stream)
}

impl Stores {
    /// Every watch has listed once: a snapshot now is complete, not a prefix.
    fn ready(&self) -> bool {
        use futures_util::FutureExt;
        self.routes.wait_until_ready().now_or_never().is_some()
            && self.identities.wait_until_ready().now_or_never().is_some()
            && self
                .managed_secrets
                .wait_until_ready()
                .now_or_never()
                .is_some()
            && self
                .server_secrets
                .wait_until_ready()
                .now_or_never()
                .is_some()
            && self.own_secrets.wait_until_ready().now_or_never().is_some()
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let key = ObjectRef::new(name).within(namespace);
        self.managed_secrets
            .get(&key)
            .or_else(|| self.own_secrets.get(&key))
            .or_else(|| self.server_secrets.get(&key))
    }
}

/// Whether `secret` has an owner reference with `uid`.
fn owned_by(secret: &Secret, uid: Option<&str>) -> bool {
    uid.is_some_and(|uid| secret.owner_references().iter().any(|o| o.uid == uid))
}

fn secret_bytes<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret.data.as_ref()?.get(key).map(|b| b.0.as_slice())
}

/// Builds a snapshot from the stores. A route or identity whose Secret is missing or
/// broken is left out (and logged) rather than failing everything; a broken CA or cookie
/// key ring fails the whole build, so the last good snapshot keeps serving.
fn build(stores: &Stores, source: &ClusterSource, generation: u64) -> Result<Snapshot> {
    let ns = &source.namespace;
    let client_ca = published_ca(stores, source)?;
    let cookie_keys = stores
        .secret(ns, names::COOKIE_KEYS_SECRET)
        .and_then(|s| {
            let origin = format!("Secret {ns}/{}", names::COOKIE_KEYS_SECRET);
            secret_bytes(&s, names::COOKIE_KEYS_KEY)
                .map(|bytes| crate::state::parse_cookie_keys(std::path::Path::new(&origin), bytes))
        })
        .ok_or_else(|| {
            Error::Config(format!(
                "cookie key Secret {ns}/{} not found yet",
                names::COOKIE_KEYS_SECRET
            ))
        })??;

    // A host claimed by several routes (another namespace, a typo) goes to the oldest; the
    // others are left out rather than failing the build, which would freeze the data plane
    // (revocations included) and keep a new replica from ever becoming ready.
    let mut candidates = stores.routes.state();
    candidates.retain(|r| source.instance.claims(&r.metadata));
    candidates.sort_by_cached_key(|r| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.namespace(),
            r.name_any(),
        )
    });
    let mut routes: Vec<RouteSource> = Vec::new();
    let mut claimed: std::collections::HashMap<String, String> = Default::default();
    for route in candidates {
        let name = format!(
            "{}/{}",
            route.namespace().unwrap_or_default(),
            route.name_any()
        );
        match route_source(stores, &route) {
            Ok(r) => {
                if let Some((host, owner)) = r
                    .route
                    .hosts
                    .iter()
                    .find_map(|h| claimed.get(h).map(|owner| (h, owner)))
                {
                    tracing::warn!(route = %name, %host, served_by = %owner, "route not served: its host is served by an older route");
                    continue;
                }
                for host in &r.route.hosts {
                    claimed.insert(host.clone(), name.clone());
                }
                routes.push(r);
            }
            Err(e) => tracing::warn!(route = %name, error = %e, "route not served"),
        }
    }
    let ledger = revocation_ledger(stores, ns)?;
    let now = std::time::SystemTime::now();
    let mut live = Vec::new();
    for identity in stores.identities.state() {
        if identity.spec.revoked
            || identity.metadata.deletion_timestamp.is_some()
            || !source.instance.claims(&identity.metadata)
        {
            continue;
        }
        let namespace = identity.namespace().unwrap_or_default();
        let name = format!("{namespace}/{}", identity.name_any());
        let secret_name = names::identity_secret_name(&identity.name_any());
        let Some(secret) = stores.secret(&namespace, &secret_name) else {
            continue; // Not minted yet.
        };
        // A Secret of that name the identity does not own (see controller::ownership) is
        // not its certificate.
        if !owned_by(&secret, identity.metadata.uid.as_deref()) {
            tracing::warn!(identity = %name, secret = %secret_name, "Secret not owned by the identity; device not admitted");
            continue;
        }
        let Some(cert) = secret_bytes(&secret, names::TLS_CRT) else {
            continue;
        };
        // One unreadable certificate leaves that device out, never the whole snapshot.
        let current = match crate::pki::first_cert_der(&String::from_utf8_lossy(cert))
            .and_then(|der| crate::pki::inspect(&der))
        {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(identity = %name, error = %e, "device certificate unreadable; device not admitted");
                continue;
            }
        };
        let previous = secret_bytes(&secret, PREVIOUS_CRT)
            .map(|pem| parse_previous(&String::from_utf8_lossy(pem)))
            .unwrap_or_default();
        let held = Held {
            identity: name,
            labels: identity.labels(),
            certs: std::iter::once(&current)
                .chain(previous.iter().map(|p| &p.info))
                .collect(),
        };
        live.extend(live_certs(&held, |s| ledger.contains(s), now));
    }
    Snapshot::build(
        SnapshotParts {
            client_ca,
            routes,
            live,
            cookie_keys,
        },
        generation,
    )
}

/// The CA certificate the controller published in the CRL Secret (copied from the CA
/// Secret, without its key). Until it is there (first start, an upgrade from a release
/// that did not publish it) the build fails, so the last good snapshot keeps serving and a
/// new replica stays unready, saying what it waits for.
fn published_ca(stores: &Stores, source: &ClusterSource) -> Result<Vec<CertificateDer<'static>>> {
    let ns = &source.namespace;
    let (crl, key) = (names::CRL_SECRET, names::CA_CRT);
    let pem = stores
        .secret(ns, crl)
        .and_then(|s| secret_bytes(&s, key).map(<[u8]>::to_vec))
        .filter(|pem| !pem.is_empty())
        .ok_or_else(|| {
            Error::Config(format!(
                "CA certificate not published yet: waiting for the controller to copy it from \
                 CA Secret {ns}/{} into key {key} of Secret {ns}/{crl} (check that a \
                 controller is running and leading, and its log)",
                source.ca_secret
            ))
        })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("Secret {ns}/{crl}: {key}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "Secret {ns}/{crl}: {key} holds no -----BEGIN CERTIFICATE----- block"
        )));
    }
    Ok(certs)
}

/// The serials on the revocation ledger (the CRL Secret's `revoked.json`): never admitted,
/// whatever an identity Secret holds (a Secret restored from a backup, an identity revoked
/// and reinstated while the controller is down). A ledger that does not parse fails the
/// build, so the last good snapshot keeps serving rather than forgetting revocations.
fn revocation_ledger(stores: &Stores, ns: &str) -> Result<HashSet<String>> {
    let Some(secret) = stores.secret(ns, names::CRL_SECRET) else {
        return Ok(HashSet::new()); // Nothing revoked yet.
    };
    let Some(bytes) = secret_bytes(&secret, names::CRL_LEDGER_KEY) else {
        return Ok(HashSet::new());
    };
    let ledger = parse_ledger_json(bytes).map_err(|e| {
        Error::Config(format!(
            "revocation ledger {} of Secret {ns}/{} {e}; restore it from a backup",
            names::CRL_LEDGER_KEY,
            names::CRL_SECRET
        ))
    })?;
    Ok(ledger
        .into_iter()
        .filter_map(|r| canonical_serial(&r.serial_hex))
        .collect())
}

/// A route with its server certificate; `upstream.service` becomes the Service's cluster
/// DNS name.
fn route_source(stores: &Stores, route: &ProtectedRoute) -> Result<RouteSource> {
    let namespace = route.namespace().unwrap_or_default();
    let name = route.name_any();
    let mut spec = route.spec.clone();
    if let Some(svc) = spec.upstream.service.take() {
        spec.upstream.url = Some(format!("http://{}.{namespace}.svc:{}", svc.name, svc.port));
    }
    let resolved = resolve(&format!("{namespace}/{name}"), &spec)?;
    if let Some(problem) = cluster_route_problems(&spec).first() {
        return Err(Error::Config(format!(
            "ProtectedRoute {namespace}/{name}: {problem}"
        )));
    }
    let secret_name = spec
        .server_certificate
        .secret_name
        .clone()
        .unwrap_or_else(|| names::route_secret_name(&name));
    let secret = stores.secret(&namespace, &secret_name).ok_or_else(|| {
        let hint = if spec.server_certificate.secret_name.is_some() {
            format!(
                " (the data plane reads only Secrets labelled {}=true: kubectl label secret -n {namespace} {secret_name} {}=true)",
                names::SERVER_CERTIFICATE_LABEL,
                names::SERVER_CERTIFICATE_LABEL
            )
        } else {
            String::new()
        };
        Error::Config(format!(
            "server certificate Secret {namespace}/{secret_name} not found{hint}"
        ))
    })?;
    // A minted certificate is served only from the route's own Secret; a brought one
    // (`secretName`) is the user's by definition.
    if spec.server_certificate.secret_name.is_none()
        && !owned_by(&secret, route.metadata.uid.as_deref())
    {
        return Err(Error::Config(format!(
            "Secret {namespace}/{secret_name} is not owned by the route (SecretConflict)"
        )));
    }
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::Config(format!("Secret {namespace}/{secret_name}: {what}: {e}"))
    };
    let cert_chain =
        CertificateDer::pem_slice_iter(secret_bytes(&secret, "tls.crt").unwrap_or_default())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("tls.crt", &e))?;
    let key = PrivateKeyDer::from_pem_slice(secret_bytes(&secret, "tls.key").unwrap_or_default())
        .map_err(|e| bad("tls.key", &e))?;
    Ok(RouteSource {
        route: resolved,
        cert_chain,
        key,
    })
}
