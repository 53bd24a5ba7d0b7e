//! The hook for the gate's own pages (enrollment links, `/.well-known/portcullis/`):
//! answered before admission, never forwarded, never logged with their path.

use std::sync::Arc;
use std::time::SystemTime;

use http::Request;
use http_body_util::{BodyExt, Full};

use super::conn::ConnInfo;
use super::{Body, Shared};
use crate::enroll::{self, EnrollRequest};
use crate::snapshot::{Route, Snapshot};

/// Answers a request for a reserved path on `route`.
pub(super) async fn serve<B>(
    req: &Request<B>,
    shared: &Shared,
    conn: &ConnInfo,
    snapshot: &Arc<Snapshot>,
    route: &Route,
) -> http::Response<Body> {
    let resp = match &shared.settings.enrollments {
        Some(service) => {
            service
                .handle(EnrollRequest {
                    method: req.method(),
                    path: req.uri().path(),
                    headers: req.headers(),
                    client: super::canonical_ip(conn.client.ip()),
                    route,
                    snapshot,
                    now: SystemTime::now(),
                    metrics: &shared.metrics,
                })
                .await
        }
        None => enroll::invalid(),
    };
    // HEAD over HTTP/2 loses its body in conn.rs; HTTP/1 in hyper.
    resp.map(|bytes| Full::new(bytes).map_err(|never| match never {}).boxed())
}
