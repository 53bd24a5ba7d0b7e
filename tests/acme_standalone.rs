//! `serverCertificate.acme` end to end: the real `portcullis standalone` gets its server
//! certificate from Pebble (a real ACME server) by tls-alpn-01 on its own TLS port,
//! renews it under open connections, survives Pebble being down at start without holding
//! up its other routes, and reuses what it stored after a restart.

mod common;
#[path = "common/pebble.rs"]
mod pebble;
#[path = "common/standalone.rs"]
mod standalone;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use pebble::{Pebble, PebbleOptions, free_tcp_port};
use rustls::pki_types::CertificateDer;
use standalone::StandaloneProcess;

/// Resolved to 127.0.0.1 by pebble-challtestsrv.
const ACME_HOST: &str = "ha.acme.test";
/// First issuance: account, order, validation, finalize.
const ISSUED_WITHIN: Duration = Duration::from_secs(60);

/// A config: route `ha` for [`ACME_HOST`] with an ACME certificate from `directory`
/// (trusting `ca_file`), route `lan` for [`HOST`] with a Portcullis one, identity alice.
fn config(upstream: std::net::SocketAddr, directory: &str, ca_file: &Path) -> String {
    let lan = standalone::config_yaml(HOST, upstream, &[("alice", "")])
        .replace("name: home-assistant", "name: lan");
    format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: ProtectedRoute\nmetadata:\n  name: ha\n\
         spec:\n  hosts: [{ACME_HOST}]\n  upstream:\n    url: http://{upstream}\n  \
         serverCertificate:\n    acme:\n      email: owner@acme.test\n      \
         directory: {directory}\n      caFile: {}\n---\n{lan}",
        ca_file.display()
    )
}

/// Writes [`config`] (for `upstream`, `directory` and `ca_file`, changed by `edit`) into
/// `dir`; returns the file.
fn write_config(
    dir: &Path,
    upstream: &Upstream,
    directory: &str,
    ca_file: &Path,
    edit: fn(String) -> String,
) -> PathBuf {
    let file = dir.join("portcullis.yaml");
    std::fs::write(&file, edit(config(upstream.addr, directory, ca_file))).unwrap();
    file
}

/// A second ACME route's host.
const SECOND_ACME_HOST: &str = "two.acme.test";

/// [`config`] plus a copy of its ACME route, `two`, for [`SECOND_ACME_HOST`].
fn with_a_second_acme_route(yaml: String) -> String {
    let first = yaml.split("---\n").next().unwrap_or_default();
    let second = first
        .replace("name: ha\n", "name: two\n")
        .replace(&format!("[{ACME_HOST}]"), &format!("[{SECOND_ACME_HOST}]"));
    format!("{yaml}---\n{second}")
}

/// The config as [`config`] writes it.
fn as_is(yaml: String) -> String {
    yaml
}

/// alice's client for the ACME route, trusting only Pebble's root.
fn acme_client(gate: &StandaloneProcess, root: CertificateDer<'static>) -> TlsClient {
    let mut client = TlsClient::standalone(gate.port(), gate.state(), Some("alice")).sni(ACME_HOST);
    client.roots = vec![root];
    client
}

/// Waits until a new handshake verifies and shows a leaf other than `not`.
async fn wait_leaf(
    gate: &StandaloneProcess,
    client: &TlsClient,
    not: Option<&[u8]>,
    within: Duration,
) -> Vec<u8> {
    let deadline = Instant::now() + within;
    loop {
        let served = client.served_leaf().await;
        match served {
            Ok(leaf) if Some(leaf.as_slice()) != not => return leaf,
            other if Instant::now() >= deadline => panic!(
                "no new ACME certificate served within {within:?} (last: {other:?}); gate log:\n{}",
                gate.log_tail(40)
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until the gate has counted an order ending in `result`.
async fn wait_orders(gate: &StandaloneProcess, result: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while orders(gate, result) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no order ended in {result} within {within:?}: {}",
            gate.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn orders(gate: &StandaloneProcess, result: &str) -> f64 {
    let (_, metrics) = gate.admin_get("/metrics").expect("metrics");
    metric_value(
        &metrics,
        &format!("portcullis_acme_orders_total{{route=\"ha\",result=\"{result}\"}}"),
    )
}

fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// curl to the ACME route trusting only Pebble's root (no Portcullis CA): the HTTP status,
/// with alice's device certificate or without one.
fn curl(gate: &StandaloneProcess, root_pem: &Path, device: bool) -> String {
    let port = gate.port();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ])
    .arg("--cacert")
    .arg(root_pem)
    .args(["--resolve", &format!("{ACME_HOST}:{port}:127.0.0.1")]);
    if device {
        let dir = gate.state().join("identities/alice");
        cmd.arg("--cert")
            .arg(dir.join("tls.crt"))
            .arg("--key")
            .arg(dir.join("tls.key"));
    }
    let out = cmd
        .arg(format!("https://{ACME_HOST}:{port}/"))
        .output()
        .expect("run curl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_a_trusted_certificate_and_renews_it_under_open_connections() {
    let upstream = Upstream::start().await;
    let port = free_tcp_port();
    // 30 s certificates: renewal is due 20 s after each is issued.
    let pebble = Pebble::start(PebbleOptions {
        tls_port: port,
        validity: Duration::from_secs(30),
        ..PebbleOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &upstream,
        &pebble.directory_url(),
        &pebble.ca_pem_path(),
        as_is,
    );
    let gate = StandaloneProcess::builder(&file, &dir.path().join("state"))
        .port(port)
        .start();

    let alice = acme_client(&gate, pebble.root_der());
    let first = wait_leaf(&gate, &alice, None, ISSUED_WITHIN).await;
    assert_eq!(orders(&gate, "issued"), 1.0);

    // Any client trusting the public (here: Pebble's) root completes the handshake; the
    // device certificate is still what lets a request in.
    let root_pem = dir.path().join("pebble-root.pem");
    std::fs::write(&root_pem, pebble.root_pem()).unwrap();
    assert_eq!(curl(&gate, &root_pem, false), "403");
    assert_eq!(curl(&gate, &root_pem, true), "200");
    // A publicly trusted certificate: HSTS by default; the CA-minted route has none.
    let hsts = |r: &Resp| r.header("strict-transport-security").map(str::to_owned);
    let resp = alice.get("/").await.unwrap();
    assert_eq!(hsts(&resp).as_deref(), Some("max-age=31536000"));
    let lan = TlsClient::standalone(gate.port(), gate.state(), Some("alice"));
    assert_eq!(hsts(&lan.get("/").await.unwrap()), None);

    // Renewal: new handshakes get the new certificate; a keep-alive connection and a
    // WebSocket opened on the old one keep working.
    let mut open = alice.open().await.expect("keep-alive connection");
    assert_eq!(open.get("/").await.unwrap().status, 200);
    let (mut ws, _) = alice
        .websocket("/api/websocket", None)
        .await
        .expect("WebSocket");
    ws_roundtrip(&mut ws, "before renewal").await;
    // The owner changes the contact address: the renewal's order updates the account.
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        yaml.replace("owner@acme.test", "new-owner@acme.test"),
    )
    .unwrap();
    let second = wait_leaf(&gate, &alice, Some(&first), Duration::from_secs(45)).await;
    assert_ne!(first, second);
    assert_eq!(
        open.get("/")
            .await
            .expect("the keep-alive connection survives the renewal")
            .status,
        200
    );
    ws_roundtrip(&mut ws, "after renewal").await;
    assert!(orders(&gate, "issued") >= 2.0);
    let log = gate.log();
    assert!(log.contains("registered an ACME account"), "{log}");
    assert_eq!(
        log.matches("registered an ACME account").count(),
        1,
        "one account, reused for the renewal"
    );
    assert!(
        log.contains("the ACME account's contact is now new-owner@acme.test"),
        "{log}"
    );
    let accounts = dir.path().join("state/acme/accounts");
    let account = std::fs::read_dir(&accounts)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let account = std::fs::read_to_string(account).unwrap();
    assert!(account.contains("\"new-owner@acme.test\""), "{account}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reuses_the_stored_certificate_without_a_new_order() {
    let upstream = Upstream::start().await;
    let port = free_tcp_port();
    let pebble = Pebble::start(PebbleOptions {
        tls_port: port,
        ..PebbleOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = write_config(
        dir.path(),
        &upstream,
        &pebble.directory_url(),
        &pebble.ca_pem_path(),
        with_a_second_acme_route,
    );

    let gate = StandaloneProcess::builder(&file, &state).port(port).start();
    let alice = acme_client(&gate, pebble.root_der());
    let issued = wait_leaf(&gate, &alice, None, ISSUED_WITHIN).await;
    let alice_two = alice.clone().sni(SECOND_ACME_HOST);
    let issued_two = wait_leaf(&gate, &alice_two, None, ISSUED_WITHIN).await;
    // Two routes on one directory: one account.
    let log = gate.log();
    assert_eq!(
        log.matches("registered an ACME account").count(),
        1,
        "{log}"
    );
    assert!(gate.terminate().success());
    // Nothing pending: no failure, no order in flight (a gate that kept ordering would
    // leave its in-flight mark here).
    assert!(!state.join("routes/ha/acme/attempts.json").exists());
    let stored = state.join("routes/ha/acme/certificate.pem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&stored).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // The owner changes the contact address meanwhile.
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        yaml.replace("owner@acme.test", "new-owner@acme.test"),
    )
    .unwrap();
    let gate = StandaloneProcess::builder(&file, &state).port(port).start();
    // Served at once, from the disk: the same certificates, and no order at all.
    assert_eq!(alice.served_leaf().await.unwrap(), issued);
    assert_eq!(alice_two.served_leaf().await.unwrap(), issued_two);
    assert_eq!(alice.get("/").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = gate.log();
    assert!(!log.contains("ordering a certificate"), "{log}");
    assert_eq!(orders(&gate, "issued"), 0.0);
    // The account follows the contact at its next use (an order), not before.
    let accounts = state.join("acme/accounts");
    let account = std::fs::read_dir(&accounts)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        std::fs::read_to_string(&account)
            .unwrap()
            .contains("\"owner@acme.test\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_holds_back_only_its_route_until_it_answers() {
    let upstream = Upstream::start().await;
    let port = free_tcp_port();
    let prepared = Pebble::prepare(PebbleOptions {
        tls_port: port,
        ..PebbleOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &upstream,
        &prepared.directory_url(),
        &prepared.ca_pem_path(),
        as_is,
    );
    let gate = StandaloneProcess::builder(&file, &dir.path().join("state"))
        .port(port)
        .start();

    // The other route serves; the ACME route has no certificate and says why.
    let lan = TlsClient::standalone(gate.port(), gate.state(), Some("alice"));
    assert_eq!(lan.get("/").await.unwrap().status, 200);
    wait_orders(&gate, "unreachable", Duration::from_secs(20)).await;
    let log = gate.log();
    assert!(
        log.contains("route ha is not served: no ACME certificate yet"),
        "{log}"
    );
    assert!(log.contains("cannot talk to the ACME directory"), "{log}");
    assert!(
        log.contains("the route is not served until a certificate is issued"),
        "{log}"
    );
    let attempts = std::fs::read_to_string(gate.state().join("routes/ha/acme/attempts.json"))
        .expect("the backoff is on disk");
    assert!(attempts.contains("\"failures\": 1"), "{attempts}");
    let pebble = prepared.start();
    let alice = acme_client(&gate, pebble.root_der());
    assert!(
        alice.served_leaf().await.is_err(),
        "nothing served for it yet"
    );

    // The retry after the first backoff (15 s) finds the CA up.
    wait_leaf(&gate, &alice, None, Duration::from_secs(45)).await;
    assert_eq!(alice.get("/").await.unwrap().status, 200);
    assert_eq!(lan.get("/").await.unwrap().status, 200);
    assert!(!gate.state().join("routes/ha/acme/attempts.json").exists());
}

/// [`config`] with `challenge: http-01`.
fn http01(yaml: String) -> String {
    yaml.replace(
        "      email: owner@acme.test\n",
        "      email: owner@acme.test\n      challenge: http-01\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issues_through_the_plain_http_listener() {
    let upstream = Upstream::start().await;
    let (port, http_port) = (free_tcp_port(), free_tcp_port());
    let pebble = Pebble::start(PebbleOptions {
        tls_port: port,
        http_port,
        ..PebbleOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &upstream,
        &pebble.directory_url(),
        &pebble.ca_pem_path(),
        http01,
    );
    let gate = StandaloneProcess::builder(&file, &dir.path().join("state"))
        .port(port)
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .start();

    let alice = acme_client(&gate, pebble.root_der());
    wait_leaf(&gate, &alice, None, ISSUED_WITHIN).await;
    assert_eq!(alice.get("/").await.unwrap().status, 200);
    let (_, metrics) = gate.admin_get("/metrics").expect("metrics");
    let answered = metric_value(
        &metrics,
        "portcullis_http_requests_total{outcome=\"challenge\"}",
    );
    assert!(answered >= 1.0, "{metrics}");
    assert_eq!(
        metric_value(&metrics, "portcullis_acme_challenge_handshakes_total"),
        0.0,
        "validated over http, not on the TLS port"
    );
    // Now served, the host's plain-HTTP requests are sent to https.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .args(["--resolve", &format!("{ACME_HOST}:{http_port}:127.0.0.1")])
        .arg(format!("http://{ACME_HOST}:{http_port}/lovelace?x=1"))
        .output()
        .expect("run curl");
    let out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out, format!("308 https://{ACME_HOST}/lovelace?x=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_without_the_plain_http_listener_says_so_without_ordering() {
    let upstream = Upstream::start().await;
    let prepared = Pebble::prepare(PebbleOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &upstream,
        &prepared.directory_url(),
        &prepared.ca_pem_path(),
        http01,
    );
    let gate = StandaloneProcess::start(&file, &dir.path().join("state"));
    wait_orders(&gate, "config", Duration::from_secs(20)).await;
    let log = gate.log();
    assert!(
        log.contains("needs the plain-HTTP listener: start the gate with --http-listen"),
        "{log}"
    );
    // The CA was never asked: not even an account.
    assert!(!gate.state().join("acme/accounts").exists(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_issued_fallback_serves_a_portcullis_certificate_until_the_first_issuance() {
    let upstream = Upstream::start().await;
    // Never started: the CA stays unreachable for the whole test.
    let prepared = Pebble::prepare(PebbleOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let fallback = |yaml: String| {
        yaml.replace(
            "      email: owner@acme.test\n",
            "      email: owner@acme.test\n      selfIssuedFallback: true\n",
        )
    };
    let file = write_config(
        dir.path(),
        &upstream,
        &prepared.directory_url(),
        &prepared.ca_pem_path(),
        fallback,
    );
    let gate = StandaloneProcess::start(&file, &dir.path().join("state"));
    // Served, with a certificate from the installation's own CA (what the opt-in means).
    let own_ca = TlsClient::standalone(gate.port(), gate.state(), Some("alice")).sni(ACME_HOST);
    assert_eq!(own_ca.get("/").await.unwrap().status, 200);
    let log = gate.log();
    assert!(
        log.contains("serving a certificate of the Portcullis CA until then"),
        "{log}"
    );
}

#[test]
fn check_refuses_a_wildcard_for_acme_and_points_to_dns_01_tools() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    let yaml = config(
        ([127, 0, 0, 1], 8123).into(),
        "https://acme.example/dir",
        Path::new("ca.pem"),
    )
    .replace(&format!("[{ACME_HOST}]"), "['*.example.com']");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.hosts[0]"), "{err}");
    assert!(err.contains("only by DNS-01"), "{err}");
    assert!(err.contains("serverCertificate.files"), "{err}");
    // And the private CA file it names does not exist: said before any order.
    assert!(
        err.contains("spec.serverCertificate.acme.caFile: cannot read the caFile"),
        "{err}"
    );
}

/// An HTTPS server on loopback answering every request as a CA over its rate limit does
/// (429, a problem document, `Retry-After: 3600`), counting the requests. Pebble cannot be
/// made to send Retry-After on demand.
struct RateLimitedCa {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl RateLimitedCa {
    async fn start(ca_file: &Path) -> RateLimitedCa {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ca = portcullis::pki::Ca::generate("Rate-limited test CA").unwrap();
        std::fs::write(ca_file, ca.cert_pem()).unwrap();
        let cert = ca
            .issue_server(&["127.0.0.1".into()], Duration::from_secs(3600))
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_der.clone().into());
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(cert.cert_der.clone())], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many requests","status":429}"#;
                    let response = format!(
                        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3600\r\n\
                         Content-Type: application/problem+json\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        RateLimitedCa {
            addr,
            requests,
            _task: task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_is_honoured_across_restarts() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let ca = RateLimitedCa::start(&ca_file).await;
    let (file, state) = (dir.path().join("portcullis.yaml"), dir.path().join("state"));
    let directory = format!("https://{}/dir", ca.addr);
    std::fs::write(&file, config(upstream.addr, &directory, &ca_file)).unwrap();

    let gate = StandaloneProcess::start(&file, &state);
    wait_orders(&gate, "rateLimited", Duration::from_secs(20)).await;
    let log = gate.log();
    assert!(
        log.contains("answered HTTP 429 and asks to wait until"),
        "{log}"
    );
    let attempts = std::fs::read_to_string(state.join("routes/ha/acme/attempts.json")).unwrap();
    let attempts: serde_json::Value = serde_json::from_str(&attempts).unwrap();
    let not_before = attempts["notBefore"].as_u64().expect("notBefore");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The CA's hour, not the 15 s of a first failure.
    assert!(not_before >= now + 3500, "{attempts}");
    assert!(gate.terminate().success());

    // A restart keeps waiting: the CA hears nothing more.
    let asked = ca.requests();
    let gate = StandaloneProcess::start(&file, &state);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ca.requests(), asked, "{}", gate.log());
    let log = gate.log();
    assert!(log.contains("next ACME order in"), "{log}");
    assert!(!log.contains("ordering a certificate"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_validation_names_the_problem_and_what_to_check() {
    let upstream = Upstream::start().await;
    // Pebble validates on a port where nothing listens: a port forward to the wrong place.
    let pebble = Pebble::start(PebbleOptions {
        tls_port: free_tcp_port(),
        ..PebbleOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &upstream,
        &pebble.directory_url(),
        &pebble.ca_pem_path(),
        as_is,
    );
    let gate = StandaloneProcess::start(&file, &dir.path().join("state"));
    // Pebble calls it `unauthorized` (Let's Encrypt: `connection`); both get the advice.
    wait_orders(&gate, "unauthorized", Duration::from_secs(30)).await;
    let log = gate.log();
    assert!(log.contains("(unauthorized)"), "{log}");
    assert!(log.contains("Failed to connect to"), "{log}");
    assert!(
        log.contains("port 443 (tls-alpn-01: the gate's --listen port) is open to the internet"),
        "{log}"
    );
    let (_, metrics) = gate.admin_get("/metrics").expect("metrics");
    assert_eq!(
        metric_value(
            &metrics,
            "portcullis_acme_consecutive_failures{route=\"ha\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_ca_forgot_is_set_aside_and_a_new_one_registered() {
    let upstream = Upstream::start().await;
    let (port, acme_port) = (free_tcp_port(), free_tcp_port());
    let options = PebbleOptions {
        tls_port: port,
        acme_port,
        ..PebbleOptions::default()
    };
    let first = Pebble::start(options.clone());
    let dir = tempfile::tempdir().unwrap();
    let (file, state) = (dir.path().join("portcullis.yaml"), dir.path().join("state"));
    let yaml = config(upstream.addr, &first.directory_url(), &first.ca_pem_path());
    std::fs::write(&file, &yaml).unwrap();
    let gate = StandaloneProcess::builder(&file, &state).port(port).start();
    let on_first = acme_client(&gate, first.root_der());
    let issued = wait_leaf(&gate, &on_first, None, ISSUED_WITHIN).await;

    // The CA is reset (same URL, no accounts), and the route wants one more name: the
    // stored account is refused at the next order.
    drop(first);
    let second = Pebble::start(options);
    let moved = yaml
        .replace(
            &format!("[{ACME_HOST}]"),
            &format!("[{ACME_HOST}, www.acme.test]"),
        )
        .replace(
            &first_ca_line(&yaml),
            &format!("caFile: {}", second.ca_pem_path().display()),
        );
    std::fs::write(&file, moved).unwrap();
    // Until the new one arrives, the old certificate keeps serving the host it covers.
    gate.wait_log("does not cover www.acme.test yet", Duration::from_secs(10))
        .await;
    assert_eq!(on_first.served_leaf().await.unwrap(), issued);
    assert_eq!(on_first.get("/").await.unwrap().status, 200);
    let alice = acme_client(&gate, second.root_der());
    wait_leaf(&gate, &alice, None, Duration::from_secs(60)).await;
    assert_eq!(alice.get("/").await.unwrap().status, 200);
    let log = gate.log();
    assert!(
        log.contains("the CA does not know the stored ACME account"),
        "{log}"
    );
    assert_eq!(
        log.matches("registered an ACME account").count(),
        2,
        "{log}"
    );
    let retired = std::fs::read_dir(state.join("acme/accounts"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".retired-")
        })
        .count();
    assert_eq!(retired, 1, "the old key is kept aside, not deleted");
}

/// The `caFile: …` line of a [`config`].
fn first_ca_line(yaml: &str) -> String {
    yaml.lines()
        .find_map(|l| l.trim().starts_with("caFile:").then(|| l.trim().to_owned()))
        .expect("a caFile line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_never_answers_holds_up_only_its_own_routes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let upstream = Upstream::start().await;
    let port = free_tcp_port();
    let pebble = Pebble::start(PebbleOptions {
        tls_port: port,
        ..PebbleOptions::default()
    });
    // Accepts connections and never says a word (not even a TLS ServerHello).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("https://{}/dir", silent.local_addr().unwrap());
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            open.push(tcp);
        }
    });
    // First only route `ha`, on the silent directory: its order hangs there.
    let ca = pebble.ca_pem_path();
    let on_silent = config(upstream.addr, &silent_url, &ca);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(&file, &on_silent).unwrap();
    let gate = StandaloneProcess::builder(&file, &dir.path().join("state"))
        .port(port)
        .start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "never asked: {}",
            gate.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Then route `two`, on Pebble: issued while `ha` still waits.
    let on_pebble = with_a_second_acme_route(config(upstream.addr, &pebble.directory_url(), &ca));
    let two = on_pebble.rsplit("---\n").next().unwrap();
    std::fs::write(&file, format!("{on_silent}---\n{two}")).unwrap();
    let alice_two = acme_client(&gate, pebble.root_der()).sni(SECOND_ACME_HOST);
    wait_leaf(&gate, &alice_two, None, Duration::from_secs(30)).await;
    assert_eq!(alice_two.get("/").await.unwrap().status, 200);
    assert_eq!(orders(&gate, "issued"), 0.0, "route ha is still waiting");
    held.abort();
}
