//! Portcullis load generator: full mTLS handshakes, keep-alive requests, held WebSockets,
//! and the trivial upstream that both servers under test forward to.
//!
//! Every run prints exactly one JSON line on stdout, so `bench/run.sh` can tabulate it.
//! When `--server-pids` is given, the run also reports the CPU time (utime + stime from
//! `/proc/PID/stat`) those processes spent during the measured window, and their RSS
//! (`VmRSS` from `/proc/PID/status`) at the end: on two shared cores, CPU per operation is
//! a far steadier number than throughput.
//!
//! ```text
//! loadgen upstream   --listen 127.0.0.1:18080
//! loadgen handshakes --addr 127.0.0.1:8443 --sni bench.test --ca CA --cert C --key K \
//!                    --duration 10s --concurrency 8
//! loadgen requests   ... --connections 16 --duration 10s
//! loadgen websockets ... --count 1000 --hold 5s
//! loadgen pump       --listen 127.0.0.1:8444 --upstream 127.0.0.1:18080 --cert C --key K
//! ```
//!
//! Handshakes never resume (`Resumption::disabled()`, TLS 1.3 only, no tickets stored), so
//! each connection costs the server a full handshake with client-certificate verification.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

#[derive(Parser)]
#[command(about = "Load generator for Portcullis benchmarks (one JSON line per run)")]
struct Cli {
    /// Tokio worker threads.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Full mTLS handshakes (no resumption), one GET each, then close.
    Handshakes {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        duration: Duration,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Keep-alive HTTP/1.1 GETs over persistent mTLS connections; a cookie the server
    /// sets is sent back, as a browser does.
    Requests {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        duration: Duration,
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    /// Opens WebSockets on /api/websocket and holds them, reporting the server's RSS.
    Websockets {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// How long to hold them all open.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        hold: Duration,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// The upstream: 200 with a fixed 100-byte body; echoes WebSockets on /api/websocket.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:18080")]
        listen: SocketAddr,
    },
    /// The floor for any TLS-terminating proxy: TLS in, bytes copied to `--upstream` and
    /// back, no HTTP parsing and no client certificates. Not a gate; a yardstick.
    Pump {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        /// Server certificate chain and key (PEM).
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Args, Clone)]
struct Target {
    /// Server address (loopback only).
    #[arg(long)]
    addr: SocketAddr,
    /// TLS server name and Host header.
    #[arg(long)]
    sni: String,
    /// CA certificate(s) that sign the server certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Client certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Client private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Request path for handshakes/requests.
    #[arg(long, default_value = "/")]
    path: String,
    /// Server processes to account CPU time and RSS for (comma-separated PIDs).
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Free text echoed into the JSON line (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    let out = rt.block_on(async move {
        match cli.cmd {
            Cmd::Handshakes {
                target,
                duration,
                concurrency,
            } => handshakes(target, duration, concurrency).await,
            Cmd::Requests {
                target,
                duration,
                connections,
            } => requests(target, duration, connections).await,
            Cmd::Websockets {
                target,
                count,
                hold,
                concurrency,
            } => websockets(target, count, hold, concurrency).await,
            Cmd::Upstream { listen } => upstream(listen).await.map(|()| Value::Null),
            Cmd::Pump {
                listen,
                upstream,
                cert,
                key,
            } => pump(listen, upstream, cert, key)
                .await
                .map(|()| Value::Null),
        }
    })?;
    println!("{out}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// TLS client

fn client_config(t: &Target, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&t.ca)
        .with_context(|| format!("reading {}", t.ca.display()))?
    {
        roots.add(cert?)?;
    }
    let (chain, key) = cert_and_key(&t.cert, &t.key)?;
    let verifier = OnceVerifiedServer {
        webpki: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()?,
        verified: Default::default(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)?;
    // Every connection is a full handshake: no session cache, no tickets.
    config.resumption = Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A certificate chain and its private key, from PEM files.
fn cert_and_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    Ok((chain, key))
}

/// The server's certificate chain is checked in full once; later handshakes that present
/// the very same certificate skip the chain (as the gate does for client certificates)
/// but still verify the server's handshake signature. The load generator's CPU is shared
/// with the server under test, so every client-side cycle saved is one the server gets.
#[derive(Debug)]
struct OnceVerifiedServer {
    webpki: Arc<WebPkiServerVerifier>,
    verified: std::sync::OnceLock<Vec<u8>>,
}

impl ServerCertVerifier for OnceVerifiedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.verified.get().map(Vec::as_slice) == Some(end_entity.as_ref()) {
            return Ok(ServerCertVerified::assertion());
        }
        let ok =
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        // The first certificate that verifies is the one remembered.
        let _ = self.verified.set(end_entity.to_vec());
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

struct Client {
    connector: TlsConnector,
    addr: SocketAddr,
    sni: ServerName<'static>,
}

impl Client {
    fn new(t: &Target, alpn: &[&[u8]]) -> Result<Self> {
        if !t.addr.ip().is_loopback() {
            bail!("--addr must be a loopback address, got {}", t.addr);
        }
        Ok(Self {
            connector: TlsConnector::from(client_config(t, alpn)?),
            addr: t.addr,
            sni: ServerName::try_from(t.sni.clone())?,
        })
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await.context("connect")?;
        tcp.set_nodelay(true)?;
        let tls = self
            .connector
            .connect(self.sni.clone(), tcp)
            .await
            .context("tls")?;
        Ok(tls)
    }
}

/// A GET as a browser sends it: with the cookie the server set earlier, if any.
fn get(t: &Target, close: bool, cookie: Option<&HeaderValue>) -> Result<Request<Empty<Bytes>>> {
    let mut req = Request::get(t.path.as_str())
        .header(hyper::header::HOST, t.sni.as_str())
        .header(hyper::header::ACCEPT, "*/*");
    if let Some(cookie) = cookie {
        req = req.header(hyper::header::COOKIE, cookie);
    }
    if close {
        req = req.header(hyper::header::CONNECTION, "close");
    }
    Ok(req.body(Empty::new())?)
}

/// Sends `req`, reads the whole body, insists on 200. Returns the `name=value` of a cookie
/// the response sets, for the caller to send back as a browser would.
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
) -> Result<Option<HeaderValue>> {
    sender.ready().await.context("http")?;
    let resp = sender.send_request(req).await.context("http")?;
    let status = resp.status();
    let cookie = resp
        .headers()
        .get(hyper::header::SET_COOKIE)
        .and_then(|v| v.as_bytes().split(|&b| b == b';').next())
        .and_then(|pair| HeaderValue::from_bytes(pair).ok());
    resp.into_body().collect().await.context("body")?;
    if status != StatusCode::OK {
        bail!("status_{}", status.as_u16());
    }
    Ok(cookie)
}

// ---------------------------------------------------------------------------------------
// Accounting

/// (utime, stime) of a process (all its threads), in clock ticks.
fn user_sys_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

fn self_cpu_ticks() -> u64 {
    user_sys_ticks(std::process::id()).map_or(0, |(u, s)| u + s)
}

/// Summed (utime, stime) over `pids`; processes that are gone count nothing.
fn sum_ticks(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|&p| user_sys_ticks(p))
        .fold((0, 0), |(u, s), (du, ds)| (u + du, s + ds))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

struct Window {
    pids: Vec<u32>,
    clk_tck: u64,
    server_start: (u64, u64),
    self_start: u64,
    started: Instant,
}

/// What a window measured.
struct Measured {
    elapsed_s: f64,
    /// Server (user, system) CPU milliseconds, when server PIDs were given.
    server_ms: Option<(f64, f64)>,
    loadgen_ms: f64,
    server_rss_kib: Option<u64>,
}

impl Window {
    fn start(t: &Target) -> Self {
        let pids = t.server_pids.clone();
        let server_start = sum_ticks(&pids);
        Self {
            pids,
            clk_tck: t.clk_tck.max(1),
            server_start,
            self_start: self_cpu_ticks(),
            started: Instant::now(),
        }
    }

    fn finish(&self) -> Measured {
        let elapsed_s = self.started.elapsed().as_secs_f64();
        let ms = |ticks: u64| ticks as f64 * 1000.0 / self.clk_tck as f64;
        let server_ms = (!self.pids.is_empty()).then(|| {
            let (user, sys) = sum_ticks(&self.pids);
            (
                ms(user.saturating_sub(self.server_start.0)),
                ms(sys.saturating_sub(self.server_start.1)),
            )
        });
        Measured {
            elapsed_s,
            server_ms,
            loadgen_ms: ms(self_cpu_ticks().saturating_sub(self.self_start)),
            server_rss_kib: server_rss(&self.pids),
        }
    }
}

fn server_rss(pids: &[u32]) -> Option<u64> {
    (!pids.is_empty()).then(|| pids.iter().filter_map(|&p| rss_kib(p)).sum())
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, e: &anyhow::Error) {
        // Low-cardinality: the outermost context plus the root cause's first words.
        let root = e.root_cause().to_string();
        let root: String = root
            .split_whitespace()
            .take(6)
            .collect::<Vec<_>>()
            .join(" ");
        let key = if e.to_string() == root {
            root
        } else {
            format!("{e}: {root}")
        };
        *self.errors.entry(key).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn report(mode: &str, t: &Target, w: &Window, mut tally: Tally, extra: Value) -> Value {
    let m = w.finish();
    let elapsed = m.elapsed_s;
    let server_cpu_ms = m.server_ms.map(|(u, s)| u + s);
    tally.latencies_us.sort_unstable();
    let ok = tally.latencies_us.len() as u64;
    let errors: u64 = tally.errors.values().sum();
    let per_op = |cpu: f64| (ok > 0).then(|| round(cpu / ok as f64, 4));
    let mut out = json!({
        "mode": mode,
        "label": t.label,
        "ok": ok,
        "errors": errors,
        "error_kinds": tally.errors,
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(ok as f64 / elapsed, 1),
        "p50_ms": percentile(&tally.latencies_us, 50.0).map(|v| round(v, 3)),
        "p99_ms": percentile(&tally.latencies_us, 99.0).map(|v| round(v, 3)),
        "p999_ms": percentile(&tally.latencies_us, 99.9).map(|v| round(v, 3)),
        "max_ms": tally.latencies_us.last().map(|&v| round(v as f64 / 1000.0, 3)),
        "server_cpu_ms": server_cpu_ms.map(|v| round(v, 1)),
        "server_cpu_ms_per_op": server_cpu_ms.and_then(per_op),
        "server_user_ms_per_op": m.server_ms.and_then(|(u, _)| per_op(u)),
        "server_sys_ms_per_op": m.server_ms.and_then(|(_, s)| per_op(s)),
        "loadgen_cpu_ms": round(m.loadgen_ms, 1),
        "server_rss_kib": m.server_rss_kib,
    });
    if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
        out.extend(extra);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Modes

async fn handshakes(t: Target, duration: Duration, concurrency: usize) -> Result<Value> {
    let client = Arc::new(Client::new(&t, &[b"http/1.1"])?);
    // One request up front: fail fast with a clear message when the target is wrong.
    one_handshake(&client, &t)
        .await
        .context("first handshake failed")?;
    let window = Window::start(&t);
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, t) = (client.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let started = Instant::now();
                match one_handshake(&client, &t).await {
                    Ok(()) => tally
                        .latencies_us
                        .push(started.elapsed().as_micros() as u64),
                    Err(e) => {
                        tally.error(&e);
                        // Do not spin on a refusing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await?);
    }
    Ok(report(
        "handshakes",
        &t,
        &window,
        tally,
        json!({"concurrency": concurrency}),
    ))
}

/// TCP connect, full mTLS handshake, one GET, whole response, close.
async fn one_handshake(client: &Client, t: &Target) -> Result<()> {
    let tls = client.connect().await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .context("http")?;
    let conn = tokio::spawn(conn);
    let result = exchange(&mut sender, get(t, true, None)?).await.map(drop);
    drop(sender);
    // The server closes after `Connection: close`; wait so the socket is really gone.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    result
}

async fn requests(t: Target, duration: Duration, connections: usize) -> Result<Value> {
    let client = Arc::new(Client::new(&t, &[b"http/1.1"])?);
    // Open every connection before the clock starts: this mode measures requests only.
    let mut senders = Vec::new();
    for _ in 0..connections.max(1) {
        senders.push(
            open_keepalive(&client)
                .await
                .context("opening connections")?,
        );
    }
    // Warm each connection (and the servers' upstream pools) with one request. Like a
    // browser, keep the cookie a server sets and send it back: Portcullis then verifies
    // it instead of setting a fresh one on every response.
    let mut cookie = None;
    for sender in &mut senders {
        let set = exchange(sender, get(&t, false, cookie.as_ref())?)
            .await
            .context("first request failed")?;
        cookie = set.or(cookie);
    }
    let reconnects = Arc::new(AtomicU64::new(0));
    let window = Window::start(&t);
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for mut sender in senders {
        let (client, t, reconnects) = (client.clone(), t.clone(), reconnects.clone());
        let mut cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            // Latencies for a run of ~10^5..10^6 requests: reserve once.
            tally.latencies_us.reserve(1 << 16);
            while Instant::now() < deadline {
                let started = Instant::now();
                let req = match get(&t, false, cookie.as_ref()) {
                    Ok(req) => req,
                    Err(e) => {
                        tally.error(&e);
                        break;
                    }
                };
                match exchange(&mut sender, req).await {
                    Ok(set) => {
                        tally
                            .latencies_us
                            .push(started.elapsed().as_micros() as u64);
                        cookie = set.or(cookie);
                    }
                    Err(e) => {
                        tally.error(&e);
                        // The server closed the connection (or it broke): open a new one,
                        // which costs a handshake; counted so the report shows it.
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        match open_keepalive(&client).await {
                            Ok(s) => sender = s,
                            Err(e) => {
                                tally.error(&e);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await?);
    }
    Ok(report(
        "requests",
        &t,
        &window,
        tally,
        json!({"connections": connections, "reconnects": reconnects.load(Ordering::Relaxed)}),
    ))
}

async fn open_keepalive(
    client: &Client,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let tls = client.connect().await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .context("http")?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn websockets(t: Target, count: usize, hold: Duration, concurrency: usize) -> Result<Value> {
    let client = Arc::new(Client::new(&t, &[b"http/1.1"])?);
    let url = format!("wss://{}/api/websocket", t.sni);
    let rss_before = server_rss(&t.server_pids);
    let window = Window::start(&t);
    let opening = Arc::new(Semaphore::new(concurrency.max(1)));
    let (close_tx, close_rx) = watch::channel(false);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<Result<u64>>(count.max(1));
    let closed_clean = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (client, url, opening, opened_tx) = (
            client.clone(),
            url.clone(),
            opening.clone(),
            opened_tx.clone(),
        );
        let (mut close_rx, closed_clean, errors) =
            (close_rx.clone(), closed_clean.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await;
            let started = Instant::now();
            let ws = open_ws(&client, &url).await;
            drop(permit);
            let mut ws = match ws {
                Ok(ws) => {
                    let _ = opened_tx
                        .send(Ok(started.elapsed().as_micros() as u64))
                        .await;
                    ws
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e)).await;
                    return;
                }
            };
            // Hold until told to close, answering anything the server sends.
            loop {
                tokio::select! {
                    changed = close_rx.changed() => {
                        if changed.is_err() || *close_rx.borrow() { break; }
                    }
                    msg = ws.next() => match msg {
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            errors.lock().await.error(&anyhow!(e).context("ws dropped"));
                            return;
                        }
                        None => {
                            errors.lock().await.error(&anyhow!("server closed").context("ws dropped"));
                            return;
                        }
                    },
                }
            }
            // Still alive after the hold: ping-pong once more, then close politely.
            let alive = ws.send(Message::text("bye")).await.is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_secs(5), ws.next()).await,
                    Ok(Some(Ok(Message::Text(_))))
                );
            if alive {
                closed_clean.fetch_add(1, Ordering::Relaxed);
            } else {
                errors
                    .lock()
                    .await
                    .error(&anyhow!("no echo after hold").context("ws dropped"));
            }
            let _ = ws.close(None).await;
        }));
    }
    drop(opened_tx);
    let mut tally = Tally::default();
    let open_deadline =
        Instant::now() + Duration::from_secs(60) + Duration::from_millis(50) * count as u32;
    while tally.latencies_us.len() as u64 + tally.errors.values().sum::<u64>() < count as u64 {
        match tokio::time::timeout_at(open_deadline.into(), opened_rx.recv()).await {
            Ok(Some(Ok(us))) => tally.latencies_us.push(us),
            Ok(Some(Err(e))) => tally.error(&e),
            Ok(None) => break,
            Err(_) => {
                *tally.errors.entry("open timeout".into()).or_default() += 1;
                break;
            }
        }
    }
    let open_s = window.started.elapsed().as_secs_f64();
    let opened = tally.latencies_us.len();
    // Let allocators and buffers settle, then sample RSS through the hold; report the peak.
    let hold_until = Instant::now() + hold;
    let mut rss_peak: Option<u64> = None;
    tokio::time::sleep(Duration::from_secs(1).min(hold)).await;
    loop {
        if let Some(rss) = server_rss(&t.server_pids) {
            rss_peak = Some(rss_peak.map_or(rss, |p| p.max(rss)));
        }
        if Instant::now() >= hold_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250).min(hold_until - Instant::now())).await;
    }
    let _ = close_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    tally.merge(std::mem::take(&mut *errors.lock().await));
    let out = report(
        "websockets",
        &t,
        &window,
        tally,
        json!({
            "count": count,
            "opened": opened,
            "open_s": round(open_s, 3),
            "held_s": hold.as_secs_f64(),
            "alive_after_hold": closed_clean.load(Ordering::Relaxed),
            "server_rss_kib_before": rss_before,
            "server_rss_kib_held": rss_peak,
        }),
    );
    Ok(out)
}

type Ws = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// TLS + Upgrade on /api/websocket with the client certificate, then one echo round trip
/// so the tunnel is known to reach the upstream.
async fn open_ws(client: &Client, url: &str) -> Result<Ws> {
    let tls = client.connect().await?;
    let request = url.into_client_request()?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .context("ws upgrade")?;
    ws.send(Message::text("hello")).await.context("ws send")?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(_)))) => Ok(ws),
        Ok(other) => Err(anyhow!("unexpected {other:?}").context("ws echo")),
        Err(_) => Err(anyhow!("timeout").context("ws echo")),
    }
}

// ---------------------------------------------------------------------------------------
// Upstream

/// 100 bytes, the size of a small JSON API answer.
const BODY: &[u8; 100] =
    b"{\"ok\":true,\"source\":\"portcullis-bench-upstream\",\"padding\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n";

async fn upstream(listen: SocketAddr) -> Result<()> {
    if !listen.ip().is_loopback() {
        bail!("--listen must be a loopback address");
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!("upstream listening on {listen}");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(upstream_handle);
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn pump(listen: SocketAddr, upstream: SocketAddr, cert: PathBuf, key: PathBuf) -> Result<()> {
    if !listen.ip().is_loopback() || !upstream.ip().is_loopback() {
        bail!("--listen and --upstream must be loopback addresses");
    }
    let (chain, key) = cert_and_key(&cert, &key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
        });
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn upstream_handle(mut req: Request<Incoming>) -> Result<Response<UpBody>> {
    let wants_ws = req.uri().path() == "/api/websocket"
        && req
            .headers()
            .get(hyper::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_ws {
        let Some(key) = req.headers().get("sec-websocket-key") else {
            return Ok(Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(Full::new(Bytes::from_static(b"no key\n")).boxed())?);
        };
        let accept = derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err()) {
                    break;
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "Upgrade")
            .header("sec-websocket-accept", accept)
            .body(Empty::new().boxed())?);
    }
    Ok(Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(BODY)).boxed())?)
}
