//! Scripted API-call tests: a reconcile runs against a fake API server that expects an
//! exact sequence of calls (method and path), answers each, and records what was sent.
//! A reconcile that makes a call the script lacks times out; one that makes fewer calls
//! leaves the script unfinished. Either fails the test.

mod identity;
mod live;
mod route;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower_test::mock::{self, Handle};

use super::Config;
use super::ca::CaState;
use super::context::Context;
use crate::resources::ClientIdentity;

/// How a scripted call is answered, given the request body.
pub type Reply = Box<dyn FnOnce(&Value) -> (StatusCode, Value) + Send>;

/// One expected API call.
pub struct Step {
    method: Method,
    path: String,
    reply: Reply,
}

/// A call seen by the fake API server.
#[derive(Debug)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub body: Value,
}

/// Expects `method path` and answers with `reply`.
pub fn step(
    method: Method,
    path: &str,
    reply: impl FnOnce(&Value) -> (StatusCode, Value) + Send + 'static,
) -> Step {
    Step {
        method,
        path: path.to_owned(),
        reply: Box::new(reply),
    }
}

/// 404 NotFound, as the API server says it.
pub fn not_found(_: &Value) -> (StatusCode, Value) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"});
    (StatusCode::NOT_FOUND, status)
}

/// 200 with the request body (what an apply of a full object returns).
pub fn echo(body: &Value) -> (StatusCode, Value) {
    (StatusCode::OK, body.clone())
}

/// 200 with `value`.
pub fn ok(value: Value) -> impl FnOnce(&Value) -> (StatusCode, Value) + Send + 'static {
    move |_| (StatusCode::OK, value)
}

/// A context whose client talks to the returned handle, with `ca` as the CA state and the
/// operator namespace `ops`.
pub fn context(ca: CaState) -> (Arc<Context>, Handle<Request<Body>, Response<Body>>) {
    context_with(ca, &[])
}

/// [`context`] whose ClientIdentity cache has listed `identities`.
pub fn context_with(
    ca: CaState,
    identities: &[ClientIdentity],
) -> (Arc<Context>, Handle<Request<Body>, Response<Body>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "home");
    let (tx, rx) = watch::channel(ca);
    // The sender may go: receivers keep the last value.
    drop(tx);
    let mut writer = Writer::<ClientIdentity>::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    for ci in identities {
        writer.apply_watcher_event(&watcher::Event::InitApply(ci.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let identities = writer.as_reader();
    let ctx = Context::new(
        client,
        Config::new("ops", "test-pod"),
        rx,
        identities,
        Arc::default(),
    );
    (Arc::new(ctx), handle)
}

/// Runs `reconcile` against `steps`; returns its result and every call made.
pub async fn scripted<T>(
    mut handle: Handle<Request<Body>, Response<Body>>,
    steps: Vec<Step>,
    reconcile: impl Future<Output = T>,
) -> (T, Vec<Seen>) {
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for step in steps {
            let Some((request, send)) = handle.next_request().await else {
                panic!("the client went away before {} {}", step.method, step.path);
            };
            let (parts, body) = request.into_parts();
            assert_eq!(
                (&parts.method, parts.uri.path()),
                (&step.method, step.path.as_str()),
                "unexpected call"
            );
            let bytes = body.collect_bytes().await.expect("request body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON body")
            };
            let (status, reply) = (step.reply)(&body);
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
                .expect("response");
            send.send_response(response);
            seen.push(Seen {
                method: parts.method,
                uri: parts.uri.to_string(),
                body,
            });
        }
        // Keep the handle: a call beyond the script then hangs (and times out) instead of
        // failing in a way a reconcile might swallow (Event publishing does).
        (seen, handle)
    });
    let result = tokio::time::timeout(Duration::from_secs(30), reconcile)
        .await
        .expect("the reconcile waited for a call the script does not have");
    let (seen, _handle) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the reconcile made fewer calls than scripted")
        .expect("fake API server");
    (result, seen)
}
