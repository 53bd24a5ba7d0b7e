//! What every reconcile shares: the client, the CA, the CRL writer, the event recorder,
//! metrics, and per-object failure counts for exponential backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::Config;
use super::ca::CaState;
use super::crl::Crl;
use super::error::Error;
use super::names::EVENT_REPORTER;
use crate::resources::ClientIdentity;

/// First retry delay after a failed reconcile; doubles per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Longest retry delay after failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Labels of `portcullis_controller_reconciles_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `ClientIdentity` or `ProtectedRoute`.
    pub kind: &'static str,
}

/// Labels of `portcullis_controller_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `ClientIdentity` or `ProtectedRoute`.
    pub kind: &'static str,
    /// [`Error::metric_label`].
    pub error: &'static str,
}

/// The controller's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles started, by kind.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconciles failed, by kind and error.
    pub failures: Family<FailureLabels, Counter>,
}

impl Metrics {
    /// Registers the metrics under `portcullis_controller_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("portcullis_controller");
        r.register(
            "reconciles",
            "Reconciles started, by kind",
            self.reconciles.clone(),
        );
        r.register(
            "failures",
            "Reconciles failed, by kind and error",
            self.failures.clone(),
        );
    }
}

/// Shared by every reconcile of both controllers.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Namespace and names of the operator's own Secrets.
    pub config: Config,
    /// The CA as the CA Secret currently holds it.
    pub ca: watch::Receiver<CaState>,
    /// Writer of the CRL Secret.
    pub crl: Crl,
    /// Every ClientIdentity of the installation (for routes' admitted counts).
    pub identities: Store<ClientIdentity>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Reconcile and failure counters.
    pub metrics: Arc<Metrics>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for the controllers of one leadership term.
    pub fn new(
        client: Client,
        config: Config,
        ca: watch::Receiver<CaState>,
        identities: Store<ClientIdentity>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: EVENT_REPORTER.into(),
            instance: Some(config.identity.clone()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            crl: Crl::new(
                client.clone(),
                config.namespace.clone(),
                config.instance.name.clone(),
            ),
            client,
            config,
            ca,
            identities,
            metrics,
            failures: Mutex::default(),
        }
    }

    /// The current CA state.
    pub fn ca_state(&self) -> CaState {
        self.ca.borrow().clone()
    }

    /// Publishes an Event about `regarding`; failing to publish is logged, never fatal.
    pub async fn event(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(truncate(note, 1000)),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(reason, "could not publish an Event: {e}");
        }
    }

    /// Counts a reconcile of `kind`.
    pub fn reconciling(&self, kind: &'static str) {
        self.metrics
            .reconciles
            .get_or_create(&ReconcileLabels { kind })
            .inc();
    }

    /// Forgets the failures of `obj` after a successful reconcile.
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&key(obj));
        }
    }

    /// The error policy: counts the failure and retries after an exponentially growing
    /// delay per object ([`BACKOFF_BASE`] doubling up to [`BACKOFF_MAX`]).
    pub fn failed<K: Resource<DynamicType = ()>>(&self, obj: &K, error: &Error) -> Action {
        let kind = kind_str::<K>();
        self.metrics
            .failures
            .get_or_create(&FailureLabels {
                kind,
                error: error.metric_label(),
            })
            .inc();
        let attempt = match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(key(obj)).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        let delay = backoff(attempt);
        tracing::warn!(object = %key(obj), attempt, retry_in = ?delay, "reconcile failed: {error}");
        Action::requeue(delay)
    }
}

/// The delay before retry number `attempt` (1-based).
pub fn backoff(attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

fn kind_str<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "ClientIdentity" => "ClientIdentity",
        "ProtectedRoute" => "ProtectedRoute",
        _ => "other",
    }
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("{}/{}", K::kind(&()), super::apply::full_name(obj))
}

/// Cuts `text` to at most `max` bytes on a character boundary (Event notes are limited).
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), BACKOFF_BASE);
        assert_eq!(backoff(2), BACKOFF_BASE * 2);
        assert_eq!(backoff(4), BACKOFF_BASE * 8);
        assert_eq!(backoff(30), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("äbc".into(), 1), "");
        assert_eq!(truncate("äbc".into(), 2), "ä");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
