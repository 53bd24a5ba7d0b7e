//! Let's Encrypt's Pebble, a real ACME server for tests, with `pebble-challtestsrv` as its
//! DNS server: [`Pebble::start`] runs both on free loopback ports and kills them on drop
//! (printing their logs when the test is failing).
//!
//! ```text
//!  test ──ACME (HTTPS, trusts `ca_pem`)──▶ pebble ──DNS──▶ challtestsrv: every name is 127.0.0.1
//!                                            └──http-01 / tls-alpn-01──▶ 127.0.0.1:http_port / tls_port
//! ```
//! The binaries come from tests/pebble/build.sh (Go module proxy, cached under the target
//! dir). Pebble's own HTTPS certificate is minted here (no vendored keys); its issuing root
//! is new at every start, so [`Pebble::root_pem`] is fetched from the management API.
//! Validation is immediate (`PEBBLE_VA_NOSLEEP=1`) and no nonce is rejected on purpose
//! (`PEBBLE_WFE_NONCEREJECT=0`), so a test depends on neither luck nor sleeps.
//!
//! Include it at a test crate's root (it needs std, tempfile, rcgen and rustls only):
//! ```ignore
//! #[path = "common/pebble.rs"]
//! mod pebble;
//! ```
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// How long Pebble may take to answer its directory.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start Pebble with.
#[derive(Clone, Debug)]
pub struct PebbleOptions {
    /// Where Pebble connects for http-01 challenges (127.0.0.1:`http_port`).
    pub http_port: u16,
    /// Where Pebble connects for tls-alpn-01 challenges (127.0.0.1:`tls_port`).
    pub tls_port: u16,
    /// Lifetime of the certificates it issues (short ones exercise renewal).
    pub validity: Duration,
    /// Its ACME port: a second Pebble on the same one has the same directory URL (and
    /// knows none of the first one's accounts).
    pub acme_port: u16,
}

/// Answers one challenge: `(host, token, key authorization, its SHA-256)`.
pub type Answer<'a> = &'a dyn Fn(&str, &str, &str, [u8; 32]);

impl Default for PebbleOptions {
    fn default() -> Self {
        PebbleOptions {
            http_port: free_tcp_port(),
            tls_port: free_tcp_port(),
            validity: Duration::from_secs(3600),
            acme_port: free_tcp_port(),
        }
    }
}

/// Pebble and its DNS server, running.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    dir: tempfile::TempDir,
    acme_port: u16,
    management_port: u16,
    dns_port: u16,
    options: PebbleOptions,
    root_pem: String,
}

/// A Pebble not started yet: its ports, directory URL and HTTPS CA are known already, so
/// a gate can be configured for it (and see it down) before it runs.
pub struct Prepared {
    dir: tempfile::TempDir,
    acme_port: u16,
    options: PebbleOptions,
}

impl Prepared {
    /// The ACME directory URL it will serve.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The CA of its HTTPS certificate (PEM file).
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("https-ca.pem")
    }

    /// Starts it: [`Pebble::start`].
    pub fn start(self) -> Pebble {
        Pebble::run(self)
    }
}

impl Pebble {
    /// Picks its ports and mints its HTTPS certificate, without starting it.
    pub fn prepare(options: PebbleOptions) -> Prepared {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pebble-")
            .tempdir()
            .expect("a temp dir for Pebble");
        write_https_cert(dir.path());
        Prepared {
            dir,
            acme_port: options.acme_port,
            options,
        }
    }

    /// Starts both and waits until the directory and the DNS server answer; panics
    /// (quoting the logs) if either fails.
    pub fn start(options: PebbleOptions) -> Pebble {
        Self::prepare(options).start()
    }

    fn run(prepared: Prepared) -> Pebble {
        let bin = binaries();
        let Prepared {
            dir,
            acme_port,
            options,
        } = prepared;
        // Picked just before Pebble binds them: a port picked at `prepare` could be
        // handed out again meanwhile.
        let management_port = free_tcp_port();
        let (dns_port, dns_management) = (free_dns_port(), free_tcp_port());
        std::fs::write(
            dir.path().join("pebble.json"),
            config_json(acme_port, management_port, &options),
        )
        .expect("write pebble.json");

        let log = |name: &str| File::create(dir.path().join(name)).expect("a log file");
        let dns_log = log("challtestsrv.log");
        let dns = Command::new(bin.join("pebble-challtestsrv"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            // Every name is this machine; nothing else is served.
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""])
            .stdout(dns_log.try_clone().unwrap())
            .stderr(dns_log)
            .spawn()
            .expect("start pebble-challtestsrv");
        let pebble_log = log("pebble.log");
        let pebble = Command::new(bin.join("pebble"))
            .current_dir(dir.path())
            .args(["-config", "pebble.json"])
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(pebble_log.try_clone().unwrap())
            .stderr(pebble_log)
            .spawn()
            .expect("start pebble");
        let mut running = Pebble {
            pebble,
            dns,
            dir,
            acme_port,
            management_port,
            dns_port,
            options,
            root_pem: String::new(),
        };
        running.wait_ready();
        running.root_pem = running.management_get("/roots/0");
        running
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let answer = https_get(self.acme_port, "/dir", &self.ca_pem_path());
            // Pebble resolves over TCP: without challtestsrv's TCP server up, a validation
            // fails with "dial tcp …: connection refused".
            let dns_up = TcpStream::connect(("127.0.0.1", self.dns_port)).is_ok();
            if dns_up && answer.as_ref().is_ok_and(|(s, _)| *s == 200) {
                return;
            }
            let exited = [&mut self.pebble, &mut self.dns]
                .into_iter()
                .any(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                panic!(
                    "Pebble did not start (exited: {exited}; last answer {answer:?}); its \
                     logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// A new ACME account on this Pebble, its client trusting Pebble's HTTPS certificate.
    pub async fn account(&self) -> instant_acme::Account {
        let (account, _credentials) = instant_acme::Account::builder_with_root(self.ca_pem_path())
            .expect("an ACME client trusting Pebble's HTTPS certificate")
            .create(
                &instant_acme::NewAccount {
                    contact: &[],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory_url(),
                None,
            )
            .await
            .expect("an ACME account on Pebble");
        account
    }

    /// A whole order for `host` on this Pebble: a new account, every authorization's `kind`
    /// challenge answered by `answer`, then (once ready) a CSR for a fresh key. Returns the
    /// order's final status and the issued chain (PEM), or the status it stopped at when it
    /// never became ready.
    pub async fn order(
        &self,
        host: &str,
        kind: instant_acme::ChallengeType,
        answer: Answer<'_>,
    ) -> (instant_acme::OrderStatus, Option<String>) {
        use instant_acme::{AuthorizationStatus, Identifier, NewOrder, OrderStatus, RetryPolicy};
        let account = self.account().await;
        let identifiers = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .expect("an order");
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.expect("an authorization");
            assert_eq!(authz.status, AuthorizationStatus::Pending);
            let mut challenge = authz.challenge(kind.clone()).expect("the challenge");
            let key_authorization = challenge.key_authorization();
            let digest: [u8; 32] = key_authorization.digest().as_ref().try_into().unwrap();
            answer(host, &challenge.token, key_authorization.as_str(), digest);
            challenge.set_ready().await.expect("challenge ready");
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(30));
        let status = order.poll_ready(&retries).await.expect("order polled");
        if status != OrderStatus::Ready {
            return (status, None);
        }
        let key = rcgen::KeyPair::generate().expect("a key");
        let csr = rcgen::CertificateParams::new(vec![host.to_owned()])
            .and_then(|p| p.serialize_request(&key))
            .expect("a CSR");
        order.finalize_csr(csr.der()).await.expect("finalized");
        let chain = order.poll_certificate(&retries).await.expect("certificate");
        (order.state().status, Some(chain))
    }

    /// The CA of Pebble's own HTTPS certificate (PEM file): what an ACME client trusts.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("https-ca.pem")
    }

    /// The root that signs the certificates this Pebble issues (PEM).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// [`Self::root_pem`] as DER.
    pub fn root_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.root_pem.as_bytes()).expect("Pebble's root PEM")
    }

    pub fn options(&self) -> &PebbleOptions {
        &self.options
    }

    /// A GET on the management API; panics unless it answers 200.
    pub fn management_get(&self, path: &str) -> String {
        match https_get(self.management_port, path, &self.ca_pem_path()) {
            Ok((200, body)) => body,
            other => panic!("Pebble management {path}: {other:?}\n{}", self.logs()),
        }
    }

    /// Both logs, for a failure message.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "── pebble ──\n{}\n── pebble-challtestsrv ──\n{}",
            read("pebble.log"),
            read("challtestsrv.log")
        )
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Pebble's config: listeners on loopback, challenge ports, one profile with `validity`.
fn config_json(acme_port: u16, management_port: u16, options: &PebbleOptions) -> String {
    format!(
        r#"{{"pebble": {{
  "listenAddress": "127.0.0.1:{acme_port}",
  "managementListenAddress": "127.0.0.1:{management_port}",
  "certificate": "https.pem",
  "privateKey": "https.key",
  "httpPort": {http},
  "tlsPort": {tls},
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false,
  "retryAfter": {{"authz": 1, "order": 1}},
  "keyAlgorithm": "ecdsa",
  "profiles": {{"default": {{"description": "test", "validityPeriod": {validity}}}}}
}}}}"#,
        http = options.http_port,
        tls = options.tls_port,
        validity = options.validity.as_secs(),
    )
}

/// Mints a CA and a certificate for 127.0.0.1 / localhost into `dir`: `https.pem`,
/// `https.key` for Pebble, `https-ca.pem` for its clients.
fn write_https_cert(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Pebble test HTTPS CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    let cert = params.signed_by(&key, &issuer).expect("certificate");
    for (name, text) in [
        ("https.pem", cert.pem()),
        ("https.key", key.serialize_pem()),
        ("https-ca.pem", ca_cert.pem()),
    ] {
        std::fs::write(dir.join(name), text).expect("write Pebble's HTTPS files");
    }
}

/// An HTTP/1.0 GET over TLS to 127.0.0.1:`port`, trusting the CA in `ca_pem`.
fn https_get(port: u16, path: &str, ca_pem: &Path) -> std::io::Result<(u16, String)> {
    let other = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).map_err(|e| other(&e))? {
        roots
            .add(cert.map_err(|e| other(&e))?)
            .map_err(|e| other(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| other(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").map_err(|e| other(&e))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| other(&e))?;
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Pebble refuses requests without a User-Agent, as RFC 8555 lets it.
    write!(
        tls,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: portcullis-tests\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    // Go closes without close_notify after HTTP/1.0; what arrived is the whole answer.
    if let Err(e) = tls.read_to_end(&mut answer)
        && e.kind() != std::io::ErrorKind::UnexpectedEof
    {
        return Err(e);
    }
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| other(&"no HTTP status line"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// The directory with `pebble` and `pebble-challtestsrv`: `$PEBBLE_DIR`, else built once
/// per test binary by tests/pebble/build.sh into the target dir (skipped when current).
fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        // target/debug/deps/<test binary>: the target dir is three levels up.
        let exe = std::env::current_exe().expect("the test binary's path");
        let target = exe
            .ancestors()
            .nth(3)
            .map_or_else(|| manifest.join("target"), Path::to_owned);
        let out = Command::new(manifest.join("tests/pebble/build.sh"))
            .env("CARGO_TARGET_DIR", target)
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/pebble/build.sh (needs Go and the Go module proxy)");
        assert!(out.status.success(), "tests/pebble/build.sh failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build.sh prints its output dir")
                .trim(),
        )
    })
}

/// A loopback TCP port nothing listens on (at the time of asking), never one this test
/// process was given before: picked ports are bound later, by other processes, and the
/// kernel may offer a port again until then.
pub fn free_tcp_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free TCP port")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A loopback port free for both UDP and TCP (at the time of asking): challtestsrv serves
/// DNS on both, and a free UDP port whose TCP twin was taken left it without the TCP
/// server Pebble resolves over (it logs the bind error and keeps running).
fn free_dns_port() -> u16 {
    loop {
        let port = free_tcp_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
