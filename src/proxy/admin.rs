//! Health, metrics and the identities seen, on a separate (by default loopback) port.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Sightings;
use crate::snapshot::SnapshotRx;
use crate::telemetry::Metrics;

/// Whether `/readyz` answers 200.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Ready once a snapshot is loaded: the data plane's readiness.
pub fn snapshot_loaded(snapshots: SnapshotRx) -> Readiness {
    Arc::new(move || snapshots.borrow().is_some())
}

/// Serves `/healthz` (the process runs), `/readyz` (`ready()` holds), `/metrics`
/// (Prometheus text) and, with a data plane's `sightings`, `/identities` (JSON: per
/// identity, its open connections and when each serial was last seen by this process)
/// until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    ready: Readiness,
    registry: Arc<Registry>,
    sightings: Option<Arc<Sightings>>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            () = shutdown.cancelled() => return,
        };
        let (ready, registry, sightings) = (ready.clone(), registry.clone(), sightings.clone());
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (status, content_type, body) = match req.uri().path() {
                "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
                "/readyz" if ready() => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
                "/readyz" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no configuration\n".to_owned(),
                ),
                "/metrics" => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    Metrics::encode(&registry),
                ),
                "/identities" if sightings.is_some() => (
                    StatusCode::OK,
                    "application/json",
                    identities(sightings.as_deref()),
                ),
                _ => (
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "not found\n".to_owned(),
                ),
            };
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(content_type),
            );
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// `/identities`: what this process saw, as JSON.
fn identities(sightings: Option<&Sightings>) -> String {
    let report = sightings.map(Sightings::report).unwrap_or_default();
    serde_json::to_string(&report).unwrap_or_default() + "\n"
}
