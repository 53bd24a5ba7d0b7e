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

/// Labels of `portcullis_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// challenge | redirect | not_found
    pub outcome: &'static str,
}

/// Labels of `portcullis_certificate_expiry_timestamp_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `ca`, `route` or `identity`.
    pub kind: &'static str,
    pub name: String,
}

/// Labels of `portcullis_device_certificate_expiry_timestamp_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceCertLabels {
    /// `name` (standalone) or `namespace/name`.
    pub identity: String,
    /// Serial, lowercase hex.
    pub serial: String,
}

/// Labels of per-identity gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub identity: String,
}

/// Labels of `portcullis_enrollments_total`. Never a client address: it is unbounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnrollmentLabels {
    pub identity: String,
    /// ios | macos | android | desktop
    pub platform: &'static str,
}

/// Every metric the gate exports. Cheap to update from the hot path (atomics).
/// Labels of `acme_orders`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcmeOrderLabels {
    pub route: String,
    /// `issued`, or why not: the ACME problem type (`dns`, `connection`, `rateLimited`, …)
    /// or `unreachable`, `timeout`, `config`, `internal`.
    pub result: String,
}

/// A route label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

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
    /// notAfter of every admitted device certificate (current and superseded).
    pub device_cert_expiry: Family<DeviceCertLabels, Gauge<i64, AtomicI64>>,
    /// Superseded certificates still admitted, per identity: a renewal not yet delivered
    /// (or a second copy of the identity, e.g. the Home Assistant app's, not yet updated).
    pub renewal_pending: Family<IdentityLabels, Gauge>,
    /// Handshakes that negotiated `acme-tls/1` (an ACME server validating a challenge),
    /// closed right after; neither requests nor handshake failures.
    pub acme_challenge_handshakes: Counter,
    /// ACME orders by route and result.
    pub acme_orders: Family<AcmeOrderLabels, Counter>,
    /// ACME orders that failed in a row, by route (0 once one succeeds).
    pub acme_failures: Family<RouteLabels, Gauge>,
    /// Requests on the plain-HTTP listener (`--http-listen`), by what they got.
    pub http_requests: Family<OutcomeLabels, Counter>,
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
            "device_certificate_expiry_timestamp_seconds",
            "notAfter of each admitted device certificate, by identity and serial",
            self.device_cert_expiry.clone(),
        );
        r.register(
            "renewal_pending",
            "Superseded device certificates still admitted, by identity (alert when the oldest nears its expiry)",
            self.renewal_pending.clone(),
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
        r.register(
            "acme_challenge_handshakes",
            "TLS handshakes answering an ACME tls-alpn-01 challenge, closed after the handshake",
            self.acme_challenge_handshakes.clone(),
        );
        r.register(
            "acme_orders",
            "ACME certificate orders by route and result (issued, or the ACME problem type: dns, connection, rateLimited, …; unreachable, timeout, config, internal)",
            self.acme_orders.clone(),
        );
        r.register(
            "acme_consecutive_failures",
            "ACME orders of a route that failed in a row (alert when it stays above 0)",
            self.acme_failures.clone(),
        );
        r.register(
            "http_requests",
            "Requests on the plain-HTTP listener: ACME http-01 challenge answered, redirect to https, or not found",
            self.http_requests.clone(),
        );
    }

    /// Replaces the device-certificate gauges with those of a newly published live set of
    /// `(identity, serial, notAfter)`.
    pub fn observe_live<'a>(
        &self,
        live: impl Iterator<Item = (&'a str, &'a str, std::time::SystemTime)>,
    ) {
        self.device_cert_expiry.clear();
        self.renewal_pending.clear();
        let mut per_identity: std::collections::HashMap<&str, i64> = Default::default();
        for (identity, serial, not_after) in live {
            let secs = not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let labels = DeviceCertLabels {
                identity: identity.to_owned(),
                serial: serial.to_owned(),
            };
            self.device_cert_expiry
                .get_or_create(&labels)
                .set(i64::try_from(secs).unwrap_or(i64::MAX));
            *per_identity.entry(identity).or_default() += 1;
        }
        for (identity, certs) in per_identity {
            let labels = IdentityLabels {
                identity: identity.to_owned(),
            };
            self.renewal_pending.get_or_create(&labels).set(certs - 1);
        }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn live_set_gauges_name_each_serial_and_count_superseded_ones() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        metrics.observe_live(
            [
                ("home/phone", "0b", t(2000)),
                ("home/phone", "0a", t(1000)),
                ("laptop", "0c", t(3000)),
            ]
            .into_iter(),
        );
        let text = Metrics::encode(&registry);
        for line in [
            r#"portcullis_device_certificate_expiry_timestamp_seconds{identity="home/phone",serial="0a"} 1000"#,
            r#"portcullis_renewal_pending{identity="home/phone"} 1"#,
            r#"portcullis_renewal_pending{identity="laptop"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // A new live set replaces the old one: nothing stale is left behind.
        metrics.observe_live([("laptop", "0c", t(3000))].into_iter());
        let text = Metrics::encode(&registry);
        assert!(!text.contains("home/phone"), "{text}");
    }
}
