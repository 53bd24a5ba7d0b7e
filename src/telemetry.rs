//! Logs and Prometheus metrics.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `portcullis_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    /// certificate | cookie | bypass | denied
    pub admission: &'static str,
    /// The deny reason, empty when admitted.
    pub reason: &'static str,
}

/// Labels of `portcullis_handshake_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reason: &'static str,
}

/// Labels of `portcullis_certificate_expiry_timestamp_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `ca`, `route` or `identity`.
    pub kind: &'static str,
    pub name: String,
}

/// Labels of `portcullis_enrollments_total`. Never a client address: it is unbounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnrollmentLabels {
    pub identity: String,
    /// ios | macos | android | desktop
    pub platform: &'static str,
}

/// Every metric the gate exports. Cheap to update from the hot path (atomics).
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub handshake_failures: Family<FailureLabels, Counter>,
    pub open_connections: Gauge,
    pub open_websockets: Gauge,
    pub cert_expiry: Family<CertLabels, Gauge<i64, AtomicI64>>,
    pub config_reloads: Family<FailureLabels, Counter>,
    pub snapshot_generation: Gauge,
    pub enrollments: Family<EnrollmentLabels, Counter>,
    /// Failed enrollment claims by reason (invalid / rate_limited).
    pub enrollment_refusals: Family<FailureLabels, Counter>,
}

impl Metrics {
    /// Registers every metric under the `portcullis_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("portcullis");
        r.register(
            "requests",
            "Requests by route and admission path",
            self.requests.clone(),
        );
        r.register(
            "handshake_failures",
            "TLS handshakes that failed, by reason",
            self.handshake_failures.clone(),
        );
        r.register(
            "open_connections",
            "Open client connections",
            self.open_connections.clone(),
        );
        r.register(
            "open_websockets",
            "Open upgraded connections",
            self.open_websockets.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of each certificate in use",
            self.cert_expiry.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads by result (ok / rejected)",
            self.config_reloads.clone(),
        );
        r.register(
            "snapshot_generation",
            "Generation of the configuration being served",
            self.snapshot_generation.clone(),
        );
        r.register(
            "enrollments",
            "Enrollment links claimed, by identity and platform",
            self.enrollments.clone(),
        );
        r.register(
            "enrollment_refusals",
            "Enrollment link claims refused (invalid, used or expired link; rate limited)",
            self.enrollment_refusals.clone(),
        );
    }

    /// The registry text for `/metrics`.
    pub fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, registry);
        out
    }
}

/// Installs the tracing subscriber: human-readable by default, JSON with `json`.
/// `RUST_LOG` overrides the level (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
