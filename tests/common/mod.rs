//! Shared support for integration tests: a CA with minted certificates, an in-process gate
//! (the real `proxy::serve` on a loopback port fed by a `watch` channel), a real upstream
//! (hyper 1, echoing what it received, streaming, WebSocket echo) and real clients (rustls +
//! hyper over TLS, tokio-tungstenite WebSockets, raw bytes).
//!
//! Everything binds `127.0.0.1:0`, so tests run in parallel without sharing anything.
#![allow(dead_code)]

pub mod enroll;
pub mod wire;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::pki::{Ca, IssuedCert};
use portcullis::proxy::{self, Limits, Settings};
use portcullis::resources::KeyAlgorithm;
use portcullis::snapshot::{
    Bypass, CookiePolicy, LiveCert, Route, RouteSource, Snapshot, SnapshotParts,
};
use portcullis::telemetry::{FailureLabels, Metrics, RequestLabels};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{WebSocketStream, tungstenite};
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult<T = ()> = Result<T, BoxError>;

/// The host every test route serves by default; clients send it as SNI.
pub const HOST: &str = "ha.test";
/// A second host the test server certificate covers (for a second route, or none).
pub const OTHER_HOST: &str = "other.test";
/// Also in the server certificate, never routed unless a test adds it.
pub const UNROUTED_HOST: &str = "unrouted.test";
pub const COOKIE_NAME: &str = "__Host-portcullis";
pub const COOKIE_TTL: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

// ───────────────────────────── PKI ─────────────────────────────

/// A CA, the server certificate every route presents, and helpers to mint device certs.
pub struct TestPki {
    pub ca: Ca,
    pub ca_name: String,
    pub server: IssuedCert,
}

impl TestPki {
    pub fn new() -> Self {
        Self::named("Portcullis Test CA")
    }

    pub fn named(ca_name: &str) -> Self {
        let ca = Ca::generate(ca_name).expect("CA");
        // 127.0.0.1 as an IP SAN, so a client may also connect without SNI.
        let hosts = [HOST, OTHER_HOST, UNROUTED_HOST, "127.0.0.1"].map(String::from);
        let server = ca.issue_server(&hosts, DAY).expect("server certificate");
        Self {
            ca,
            ca_name: ca_name.to_owned(),
            server,
        }
    }

    /// A device certificate signed by this CA (ECDSA P-256, valid a day).
    pub fn client(&self, common_name: &str) -> IssuedCert {
        self.ca
            .issue_client(common_name, KeyAlgorithm::EcdsaP256, DAY)
            .expect("client certificate")
    }

    /// A device certificate signed by this CA's key with an arbitrary validity window (for
    /// expired or not-yet-valid certificates, which `Ca` refuses to mint).
    pub fn client_with_validity(
        &self,
        common_name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> IssuedCert {
        use rcgen::{
            CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, PKCS_ECDSA_P256_SHA256,
        };
        let ca_key = KeyPair::from_pem(self.ca.key_pem()).expect("CA key");
        // Same subject encoding as `Ca::generate`, so the issuer name matches byte for byte.
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, self.ca_name.as_str());
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let mut serial = [0u8; 16];
        serial[..8].copy_from_slice(&rand_u64().to_be_bytes());
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let cert_der = cert.der().to_vec();
        IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            info: portcullis::pki::inspect(&cert_der).expect("inspect"),
            cert_der,
            key_der: key.serialize_der(),
        }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.ca.cert_der().to_vec())
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    u64::from_be_bytes(b)
}

/// The allowlist entry for a device certificate.
pub fn live(identity: &str, cert: &IssuedCert) -> LiveCert {
    live_with_labels(identity, cert, &[])
}

pub fn live_with_labels(identity: &str, cert: &IssuedCert, labels: &[(&str, &str)]) -> LiveCert {
    LiveCert {
        identity: identity.to_owned(),
        serial_hex: cert.info.serial_hex.clone(),
        fingerprint: cert.info.fingerprint,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        not_after: cert.info.not_after,
    }
}

/// A route for `hosts` to `upstream` with the default cookie fallback and no bypass.
pub fn route(name: &str, hosts: &[&str], upstream: SocketAddr) -> Route {
    Route {
        name: name.to_owned(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        upstream: upstream.to_string().parse().expect("authority"),
        selector: None,
        cookie: Some(CookiePolicy {
            name: COOKIE_NAME.to_owned(),
            ttl: COOKIE_TTL,
        }),
        bypass: Vec::new(),
        headers: Default::default(),
        hsts: false,
    }
}

pub fn bypass(prefix: &str, methods: &[Method]) -> Bypass {
    Bypass {
        path_prefix: prefix.to_owned(),
        methods: methods.to_vec(),
    }
}

// ───────────────────────────── Gate ─────────────────────────────

/// What a snapshot is built from; tests mutate it and [`Gate::publish`] it.
#[derive(Clone)]
pub struct GateSpec {
    pub routes: Vec<Route>,
    pub live: Vec<LiveCert>,
    pub cookie_keys: Vec<[u8; 32]>,
}

/// The real proxy on a loopback port.
pub struct Gate {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    client_ca: Vec<CertificateDer<'static>>,
    spec: Mutex<GateSpec>,
    generation: AtomicU64,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    shutdown: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Gate {
    /// Starts a gate serving `spec` with `settings`.
    pub async fn start(pki: &TestPki, spec: GateSpec, settings: Settings) -> Gate {
        let server_chain = vec![CertificateDer::from(pki.server.cert_der.clone())];
        let server_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server.key_der.clone()));
        let client_ca = vec![pki.ca_der()];
        let snapshot = build(&spec, &client_ca, &server_chain, &server_key, 1);
        let (tx, rx) = watch::channel(Some(Arc::new(snapshot)));
        let listener = proxy::bind("127.0.0.1:0".parse().unwrap()).expect("bind gate");
        let addr = listener.local_addr().expect("gate addr");
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(proxy::serve(
            listener,
            rx,
            settings,
            metrics.clone(),
            shutdown.clone(),
        ));
        Gate {
            addr,
            metrics,
            ca_der: pki.ca_der(),
            server_chain,
            server_key,
            client_ca,
            spec: Mutex::new(spec),
            generation: AtomicU64::new(1),
            tx,
            shutdown,
            task: Mutex::new(Some(task)),
        }
    }

    /// One route `ha.test` → `upstream`, the given identities live, default settings.
    pub async fn simple(pki: &TestPki, upstream: SocketAddr, live: Vec<LiveCert>) -> Gate {
        Self::start(
            pki,
            spec(vec![route("ha", &[HOST], upstream)], live),
            Settings::default(),
        )
        .await
    }

    /// The current spec (a copy).
    pub fn spec(&self) -> GateSpec {
        self.spec.lock().unwrap().clone()
    }

    /// Changes the spec and publishes a new snapshot built from it.
    pub fn publish(&self, change: impl FnOnce(&mut GateSpec)) {
        let mut spec = self.spec.lock().unwrap();
        change(&mut spec);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let snapshot = build(
            &spec,
            &self.client_ca,
            &self.server_chain,
            &self.server_key,
            generation,
        );
        self.tx.send_replace(Some(Arc::new(snapshot)));
    }

    /// Removes `identity` from the live set (a revoke or a deleted ClientIdentity).
    pub fn revoke(&self, identity: &str) {
        self.publish(|s| s.live.retain(|c| c.identity != identity));
    }

    /// The newest snapshot, e.g. for its cookie keys.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone().expect("snapshot")
    }

    /// A TLS client for this gate: SNI `ha.test`, ALPN http/1.1, no client certificate.
    pub fn client(&self) -> TlsClient {
        TlsClient {
            addr: self.addr,
            roots: vec![self.ca_der.clone()],
            cert: None,
            sni: HOST.to_owned(),
            alpn: vec![b"http/1.1".to_vec()],
            tls12_only: false,
            resuming: None,
        }
    }

    /// `portcullis_handshake_failures_total{reason}`.
    pub fn handshake_failures(&self, reason: &'static str) -> u64 {
        self.metrics
            .handshake_failures
            .get_or_create(&FailureLabels { reason })
            .get()
    }

    /// `portcullis_open_connections`.
    pub fn open_connections(&self) -> i64 {
        self.metrics.open_connections.get()
    }

    /// `portcullis_requests_total{route, admission, reason}`.
    pub fn requests(&self, route: &str, admission: &'static str, reason: &'static str) -> u64 {
        let labels = RequestLabels {
            route: route.to_owned(),
            admission,
            reason,
        };
        self.metrics.requests.get_or_create(&labels).get()
    }

    /// Waits (bounded) until `check` holds; metrics are updated just after a connection's
    /// fate is sealed, so a client may observe the outcome a moment before the counter.
    pub async fn eventually(&self, what: &str, mut check: impl FnMut(&Gate) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(&self) {
        self.shutdown.cancel();
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn spec(routes: Vec<Route>, live: Vec<LiveCert>) -> GateSpec {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).expect("random");
    GateSpec {
        routes,
        live,
        cookie_keys: vec![key],
    }
}

fn build(
    spec: &GateSpec,
    client_ca: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    generation: u64,
) -> Snapshot {
    let parts = SnapshotParts {
        client_ca: client_ca.to_vec(),
        routes: spec
            .routes
            .iter()
            .map(|r| RouteSource {
                route: r.clone(),
                cert_chain: chain.to_vec(),
                key: key.clone_key(),
            })
            .collect(),
        live: spec.live.clone(),
        cookie_keys: spec.cookie_keys.clone(),
    };
    Snapshot::build(parts, generation).expect("snapshot builds")
}

/// Settings with every limit at its default except those a test changes.
pub fn settings_with(limits: impl FnOnce(&mut Limits)) -> Settings {
    let mut settings = Settings::default();
    limits(&mut settings.limits);
    settings
}

// ───────────────────────────── Upstream ─────────────────────────────

/// What the upstream received, as it echoes it back in JSON.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Echo {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    pub version: String,
    /// Lowercase name → every value, in order.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: u64,
    pub body_sha256: String,
}

impl Echo {
    /// The single value of `name`; panics when it appears more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.headers.get(&name.to_ascii_lowercase())?;
        assert_eq!(values.len(), 1, "{name} appears more than once: {values:?}");
        Some(&values[0])
    }

    pub fn has(&self, name: &str) -> bool {
        self.headers.contains_key(&name.to_ascii_lowercase())
    }
}

/// Length of the `/stream` body.
pub const STREAM_LEN: usize = 8 * 1024 * 1024;
const STREAM_CHUNK: usize = 64 * 1024;

/// Byte `i` of the `/stream` body.
pub fn stream_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// A plain-HTTP service behind the gate:
/// - `GET /stream`: [`STREAM_LEN`] bytes, chunked;
/// - WebSocket upgrade on `/api/websocket`: echoes every text/binary message;
/// - anything else: 200 with an [`Echo`] of the request (body read to the end).
///
/// Every request head is also recorded, so tests can assert what never arrived.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Echo>>>,
    connections: Arc<AtomicUsize>,
    open_websockets: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let open_websockets = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted_count = connections.clone();
        let shutdown = CancellationToken::new();
        let state = UpstreamState {
            seen: seen.clone(),
            open_websockets: open_websockets.clone(),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                    () = stop.cancelled() => return,
                };
                accepted_count.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| upstream_handle(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            open_websockets,
            shutdown,
        }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Echo> {
        self.seen.lock().unwrap().clone()
    }

    /// Whether any request for exactly `path` (path and query) arrived.
    pub fn saw_path(&self, path: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|e| e.path == path)
    }

    /// Whether any request path contains `fragment`.
    pub fn saw_path_containing(&self, fragment: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.path.contains(fragment))
    }

    /// TCP connections the gate has opened to this upstream so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// WebSockets currently open on the upstream side.
    pub fn open_websockets(&self) -> usize {
        self.open_websockets.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Clone)]
struct UpstreamState {
    seen: Arc<Mutex<Vec<Echo>>>,
    open_websockets: Arc<AtomicUsize>,
}

type UpBody = BoxBody<Bytes, Infallible>;

fn head_of<B>(req: &Request<B>) -> Echo {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    Echo {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/".into(), |p| p.as_str().to_owned()),
        version: format!("{:?}", req.version()),
        headers,
        body_len: 0,
        body_sha256: String::new(),
    }
}

async fn upstream_handle(
    mut req: Request<Incoming>,
    state: UpstreamState,
) -> Result<Response<UpBody>, Infallible> {
    let mut echo = head_of(&req);
    state.seen.lock().unwrap().push(echo.clone());

    if req.uri().path() == "/api/websocket" && req.headers().contains_key(header::UPGRADE) {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return Ok(upstream_text(StatusCode::BAD_REQUEST, "no websocket key"));
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let open = state.open_websockets.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            open.fetch_add(1, Ordering::SeqCst);
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
            .body(Empty::new().boxed())
            .expect("101");
        return Ok(resp);
    }

    if req.uri().path() == "/events" {
        // Server-sent events that never end (Home Assistant's /api/stream, camera streams):
        // one event every 50 ms until the gate drops the connection.
        let ticks = futures_util::stream::unfold(0u64, |n| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let event = Bytes::from(format!("data: tick {n}\n\n"));
            Some((Ok::<_, Infallible>(Frame::data(event)), n + 1))
        });
        let resp = Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(ticks)))
            .expect("events response");
        return Ok(resp);
    }

    if req.uri().path() == "/stream" {
        let chunks = (0..STREAM_LEN).step_by(STREAM_CHUNK).map(|start| {
            let chunk: Vec<u8> = (start..(start + STREAM_CHUNK).min(STREAM_LEN))
                .map(stream_byte)
                .collect();
            Ok::<_, Infallible>(Frame::data(Bytes::from(chunk)))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let resp = Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(BodyExt::boxed(body))
            .expect("stream response");
        return Ok(resp);
    }

    // Read the body to the end, hashing as it streams.
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Ok(upstream_text(StatusCode::BAD_REQUEST, "body read failed"));
        };
        if let Some(data) = frame.data_ref() {
            len += data.len() as u64;
            hasher.update(data);
        }
    }
    echo.body_len = len;
    echo.body_sha256 = hex::encode(hasher.finalize());
    let json = serde_json::to_vec(&echo).expect("json");
    let resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        // A header the gate must pass back untouched.
        .header("x-upstream", "echo")
        .body(Full::new(Bytes::from(json)).boxed())
        .expect("echo response");
    Ok(resp)
}

fn upstream_text(status: StatusCode, text: &'static str) -> Response<UpBody> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *resp.status_mut() = status;
    resp
}

// ───────────────────────────── Clients ─────────────────────────────

pub type ReqBody = BoxBody<Bytes, Infallible>;

pub fn empty() -> ReqBody {
    Empty::new().boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into()).boxed()
}

/// `GET path` with no body (Host is added by the client unless set).
pub fn get(path: &str) -> Request<ReqBody> {
    Request::get(path).body(empty()).expect("request")
}

pub fn head(path: &str) -> Request<ReqBody> {
    Request::head(path).body(empty()).expect("request")
}

pub fn post(path: &str, body: impl Into<Bytes>) -> Request<ReqBody> {
    Request::post(path).body(full(body)).expect("request")
}

/// A response, body collected.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The upstream's echo of the request.
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected an upstream echo: {}",
            self.text()
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("ascii Set-Cookie").to_owned())
            .collect()
    }

    /// The value of the gate cookie set by this response, if any.
    pub fn gate_cookie(&self) -> Option<String> {
        self.set_cookies().iter().find_map(|c| {
            let pair = c.split(';').next()?;
            let (name, value) = pair.split_once('=')?;
            (name == COOKIE_NAME).then(|| value.to_owned())
        })
    }
}

/// How a TLS connection to the gate ended up.
#[derive(Debug)]
pub enum Outcome {
    /// The gate answered an HTTP request on it (status line read).
    Answered(u16),
    /// Refused: the handshake failed, or (TLS 1.3, where the client finishes first) the
    /// first read returned an alert, an error or EOF. The text says which.
    Refused(String),
}

impl Outcome {
    pub fn is_refused(&self) -> bool {
        matches!(self, Outcome::Refused(_))
    }

    pub fn refusal(&self) -> &str {
        match self {
            Outcome::Refused(why) => why,
            Outcome::Answered(status) => panic!("expected a refusal, the gate answered {status}"),
        }
    }
}

/// A TLS client configuration for one gate, built up per test.
#[derive(Clone)]
pub struct TlsClient {
    pub addr: SocketAddr,
    pub roots: Vec<CertificateDer<'static>>,
    pub cert: Option<(Vec<u8>, Vec<u8>)>,
    pub sni: String,
    pub alpn: Vec<Vec<u8>>,
    pub tls12_only: bool,
    /// Set by [`TlsClient::resuming`]: one configuration (and session cache) for every
    /// connection, resumption on.
    pub resuming: Option<Arc<rustls::ClientConfig>>,
}

/// A request/response connection that stays open (keep-alive or HTTP/2).
pub struct HttpConn {
    sender: Sender,
    host: String,
    task: JoinHandle<()>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

impl TlsClient {
    /// A client of a `portcullis standalone` gate on 127.0.0.1:`port` whose state dir is
    /// `state`: trusts its CA (`ca/tls.crt`), SNI [`HOST`], ALPN http/1.1, and presents the
    /// device certificate of `identity` (`identities/NAME/tls.crt`, `tls.key`) if one is
    /// given.
    pub fn standalone(port: u16, state: &Path, identity: Option<&str>) -> TlsClient {
        use rustls::pki_types::pem::PemObject;
        let pem = |path: PathBuf| {
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let ca = pem(state.join("ca/tls.crt"));
        let cert = identity.map(|name| {
            let dir = state.join("identities").join(name);
            let cert = CertificateDer::from_pem_slice(&pem(dir.join("tls.crt"))).expect("tls.crt");
            let key =
                PrivatePkcs8KeyDer::from_pem_slice(&pem(dir.join("tls.key"))).expect("tls.key");
            (cert.to_vec(), key.secret_pkcs8_der().to_vec())
        });
        TlsClient {
            addr: ([127, 0, 0, 1], port).into(),
            roots: vec![CertificateDer::from_pem_slice(&ca).expect("the CA's PEM")],
            cert,
            sni: HOST.into(),
            alpn: vec![b"http/1.1".to_vec()],
            tls12_only: false,
            resuming: None,
        }
    }

    /// Present this client certificate.
    pub fn cert(mut self, cert: &IssuedCert) -> Self {
        self.cert = Some((cert.cert_der.clone(), cert.key_der.clone()));
        self
    }

    pub fn sni(mut self, sni: &str) -> Self {
        self.sni = sni.to_owned();
        self
    }

    /// Offer only `h2`.
    pub fn h2(mut self) -> Self {
        self.alpn = vec![b"h2".to_vec()];
        self
    }

    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Speak TLS 1.2 only (the client learns of a refused certificate in the handshake).
    pub fn tls12(mut self) -> Self {
        self.tls12_only = true;
        self
    }

    /// Freezes the configuration with session resumption on (tickets and session IDs), so
    /// later connections from this client may resume earlier sessions. Call it last.
    pub fn resuming(mut self) -> Self {
        let mut config = self.config();
        config.resumption = rustls::client::Resumption::in_memory_sessions(32);
        self.resuming = Some(Arc::new(config));
        self
    }

    pub fn config(&self) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let mut roots = rustls::RootCertStore::empty();
        for root in &self.roots {
            roots.add(root.clone()).expect("root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match &self.cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(cert.clone())],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
                )
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        config.resumption = rustls::client::Resumption::disabled();
        config
    }

    /// TCP + TLS handshake.
    pub async fn connect(&self) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        self.connect_over(tcp).await
    }

    /// TLS over an already connected stream (after a PROXY header, say).
    pub async fn connect_over(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.sni.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let config = self
            .resuming
            .clone()
            .unwrap_or_else(|| Arc::new(self.config()));
        let connector = TlsConnector::from(config);
        tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    /// The leaf certificate a new handshake sees (verified against [`Self::roots`]), or
    /// why the handshake failed.
    pub async fn served_leaf(&self) -> Result<Vec<u8>, String> {
        let tls = self.connect().await.map_err(|e| describe(&e))?;
        let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
        certs
            .first()
            .map(|c| c.to_vec())
            .ok_or_else(|| "no certificate".into())
    }

    /// Handshake, then one raw `GET /` on it: whether the gate answers or refuses.
    pub async fn probe(&self) -> Outcome {
        match self.connect().await {
            Ok(tls) => probe_stream(tls, &self.sni).await,
            Err(e) => Outcome::Refused(format!("handshake: {}", describe(&e))),
        }
    }

    /// Opens a keep-alive (HTTP/1.1) or multiplexed (h2, per ALPN) connection.
    pub async fn open(&self) -> TestResult<HttpConn> {
        let tls = self.connect().await?;
        http_conn_over(tls, &self.sni).await
    }

    /// One request on a fresh connection.
    pub async fn send(&self, req: Request<ReqBody>) -> TestResult<Resp> {
        let mut conn = self.open().await?;
        conn.send(req).await
    }

    pub async fn get(&self, path: &str) -> TestResult<Resp> {
        self.send(get(path)).await
    }

    /// Writes `bytes` verbatim after the handshake and reads until the gate closes (or
    /// `wait` passes). For requests clients would normalise or refuse to send.
    pub async fn raw(&self, bytes: &[u8], wait: Duration) -> TestResult<RawResponse> {
        let tls = self.connect().await?;
        raw_exchange(tls, bytes, wait).await
    }

    /// A WebSocket handshake on `path` (ALPN forced to http/1.1), with an optional gate
    /// cookie. `Err` carries the HTTP response when the gate refused the upgrade.
    pub async fn websocket(
        &self,
        path: &str,
        cookie: Option<&str>,
    ) -> Result<(Ws, tungstenite::handshake::client::Response), WsFailure> {
        let client = self.clone().alpn(&[b"http/1.1"]);
        let tls = client
            .connect()
            .await
            .map_err(|e| WsFailure::Io(describe(&e)))?;
        let mut request = format!("wss://{}{path}", self.sni)
            .into_client_request()
            .map_err(|e| WsFailure::Io(e.to_string()))?;
        if let Some(value) = cookie {
            let v = HeaderValue::from_str(&format!("{COOKIE_NAME}={value}")).expect("cookie");
            request.headers_mut().insert(header::COOKIE, v);
        }
        match tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(request, tls),
        )
        .await
        {
            Err(_) => Err(WsFailure::Io("WebSocket handshake timed out".into())),
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(tungstenite::Error::Http(resp))) => Err(WsFailure::Status(resp.status())),
            Ok(Err(e)) => Err(WsFailure::Io(e.to_string())),
        }
    }
}

#[derive(Debug)]
pub enum WsFailure {
    Status(StatusCode),
    Io(String),
}

/// Hyper client handshake over an established TLS stream, protocol per ALPN.
pub async fn http_conn_over(tls: TlsStream<TcpStream>, host: &str) -> TestResult<HttpConn> {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender: Sender::H2(sender),
            host: host.to_owned(),
            task,
        })
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender: Sender::H1(sender),
            host: host.to_owned(),
            task,
        })
    }
}

impl HttpConn {
    /// Sends `req` (origin-form URI). HTTP/1.1 gets a `Host` unless one is set; HTTP/2 gets
    /// an absolute URI whose authority is the `Host` header (or the SNI name).
    pub async fn send(&mut self, req: Request<ReqBody>) -> TestResult<Resp> {
        let resp = self.send_streaming(req).await?;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(20), body.collect()).await??;
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: body.to_bytes(),
        })
    }

    pub async fn get(&mut self, path: &str) -> TestResult<Resp> {
        self.send(get(path)).await
    }

    /// Sends `req` and returns as soon as the response head arrives; the body is left to
    /// the caller (for endless streams).
    pub async fn send_streaming(
        &mut self,
        req: Request<ReqBody>,
    ) -> TestResult<Response<Incoming>> {
        let req = self.prepare(req)?;
        let resp = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await?;
                tokio::time::timeout(Duration::from_secs(20), sender.send_request(req)).await??
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                tokio::time::timeout(Duration::from_secs(20), sender.send_request(req)).await??
            }
        };
        Ok(resp)
    }

    fn prepare(&self, mut req: Request<ReqBody>) -> TestResult<Request<ReqBody>> {
        match &self.sender {
            Sender::H1(_) => {
                if !req.headers().contains_key(header::HOST) {
                    req.headers_mut()
                        .insert(header::HOST, HeaderValue::from_str(&self.host)?);
                }
            }
            Sender::H2(_) => {
                let authority = match req.headers_mut().remove(header::HOST) {
                    Some(v) => v.to_str()?.to_owned(),
                    None => self.host.clone(),
                };
                let path = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                *req.uri_mut() = format!("https://{authority}{path}").parse()?;
                *req.version_mut() = Version::HTTP_2;
            }
        }
        Ok(req)
    }

    /// Whether the server closed the connection within `deadline`.
    pub async fn closed_within(&mut self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, &mut self.task).await.is_ok()
    }
}

/// Raw bytes read back from the gate.
#[derive(Debug)]
pub struct RawResponse {
    pub bytes: Vec<u8>,
    /// The gate closed the connection (EOF or error) before the wait ran out.
    pub closed: bool,
    pub error: Option<String>,
}

impl RawResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response, if any.
    pub fn status(&self) -> Option<u16> {
        let text = self.text();
        let line = text.lines().next()?;
        let mut parts = line.split(' ');
        (parts.next()?.starts_with("HTTP/")).then_some(())?;
        parts.next()?.parse().ok()
    }

    /// Status codes of every response in the bytes (status lines at line starts).
    pub fn statuses(&self) -> Vec<u16> {
        self.text()
            .split("\r\n")
            .filter(|l| l.starts_with("HTTP/1.1 "))
            .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
            .collect()
    }
}

/// Writes `bytes`, then reads until EOF/error or until `wait` passes.
pub async fn raw_exchange<S>(mut stream: S, bytes: &[u8], wait: Duration) -> TestResult<RawResponse>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut error = None;
    if let Err(e) = stream.write_all(bytes).await {
        error = Some(describe(&e));
    } else if let Err(e) = stream.flush().await {
        error = Some(describe(&e));
    }
    let mut out = Vec::new();
    let mut closed = error.is_some();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 64 * 1024];
    while !closed {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => closed = true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                closed = true;
                error = Some(describe(&e));
            }
        }
    }
    Ok(RawResponse {
        bytes: out,
        closed,
        error,
    })
}

async fn probe_stream(mut tls: TlsStream<TcpStream>, host: &str) -> Outcome {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if let Err(e) = tls.write_all(request.as_bytes()).await {
        return Outcome::Refused(format!("write: {}", describe(&e)));
    }
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Err(_) => return Outcome::Refused("read timed out".into()),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Ok(Err(e)) => return Outcome::Refused(format!("read: {}", describe(&e))),
        }
    }
    let text = String::from_utf8_lossy(&got);
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
    {
        Some(status) => Outcome::Answered(status),
        None => Outcome::Refused(format!("read: EOF after {:?}", text)),
    }
}

/// An I/O error with the TLS alert or rustls error inside it spelt out.
pub fn describe(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => format!("{tls:?}"),
        None => format!("{:?}: {e}", e.kind()),
    }
}

/// Reads the next data message within `deadline`: `Some(text)` for text or binary, `None`
/// when the socket closed (close frame, EOF or error) or nothing came in time (see `Err`).
pub async fn ws_next(ws: &mut Ws, deadline: Duration) -> Result<Option<String>, &'static str> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Err(_) => return Err("no message before the deadline"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(tungstenite::Message::Close(_)))) => {
                return Ok(None);
            }
            Ok(Some(Ok(tungstenite::Message::Text(t)))) => return Ok(Some(t.to_string())),
            Ok(Some(Ok(tungstenite::Message::Binary(b)))) => {
                return Ok(Some(String::from_utf8_lossy(&b).into_owned()));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Sends `text` and expects it echoed within 5 s.
pub async fn ws_roundtrip(ws: &mut Ws, text: &str) {
    ws.send(tungstenite::Message::text(text.to_owned()))
        .await
        .expect("send on the WebSocket");
    let got = ws_next(ws, Duration::from_secs(5)).await;
    assert_eq!(got, Ok(Some(text.to_owned())), "echo of {text:?}");
}

/// A header pair for `Request` builders.
pub fn hv(name: &'static str, value: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(value).expect("header value"),
    )
}

/// `req` with extra headers.
pub fn with_headers(
    mut req: Request<ReqBody>,
    headers: &[(&'static str, &str)],
) -> Request<ReqBody> {
    for (name, value) in headers {
        let (n, v) = hv(name, value);
        req.headers_mut().append(n, v);
    }
    req
}

/// The `Cookie` header value carrying a gate cookie.
pub fn cookie_header(value: &str) -> String {
    format!("{COOKIE_NAME}={value}")
}

/// Runs a blocking command off the runtime.
pub async fn run(
    program: &str,
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
) -> (bool, String, String) {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::process::{Command, Stdio};
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
        if let Some(mut pipe) = child.stdin.take() {
            use std::io::Write;
            if let Some(input) = stdin {
                let _ = pipe.write_all(&input);
            }
        }
        let out = child.wait_with_output().expect("wait");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("command task")
}

#[allow(unused_imports)]
pub use tokio_tungstenite::tungstenite::Message;

/// Reads `body` until it ends (cleanly or with an error): `true` if that happened within
/// `deadline`, `false` if data was still flowing (or stalled) when it passed.
pub async fn body_ends_within(body: &mut Incoming, deadline: Duration) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(end, body.frame()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Reads the next data frame of `body` within 5 s.
pub async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .ok()??
            .ok()?;
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}
