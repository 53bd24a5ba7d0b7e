//! The Pebble harness proves itself without the gate: a minimal ACME order with the
//! instant-acme client, its http-01 challenge answered by this test on loopback, and the
//! issued chain verified against the root fetched from Pebble's management API. Then the
//! gate's tls-alpn-01 resolver ([`portcullis::acme::tls_alpn`]) passes Pebble's validation.

#[path = "common/pebble.rs"]
mod pebble;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use instant_acme::ChallengeType;
use pebble::{Answer, Pebble, PebbleOptions};
use portcullis::acme::tls_alpn::{ACME_TLS_ALPN, ChallengeResolver, Challenges};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Resolved to 127.0.0.1 by pebble-challtestsrv, like every name.
const HOST: &str = "smoke.acme.test";

/// Tokens to key authorizations, served under `/.well-known/acme-challenge/`.
type Answers = Arc<Mutex<HashMap<String, String>>>;

/// A tiny HTTP/1.x server for http-01 challenges on 127.0.0.1:`port`.
fn serve_http01(port: u16) -> Answers {
    let answers = Answers::default();
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the http-01 port");
    let served = answers.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut line = String::new();
            let mut reader = BufReader::new(&stream);
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let token = line
                .split_whitespace()
                .nth(1)
                .and_then(|path| path.strip_prefix("/.well-known/acme-challenge/"))
                .unwrap_or_default()
                .to_owned();
            let answer = served.lock().unwrap().get(&token).cloned();
            let response = match answer {
                Some(body) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = (&stream).write_all(response.as_bytes());
        }
    });
    answers
}

/// An order for [`HOST`], one `kind` challenge answered by `answer`, and the issued chain
/// (PEM), checked against Pebble's root.
async fn issue(pebble: &Pebble, kind: ChallengeType, answer: Answer<'_>) -> String {
    let (status, chain) = pebble.order(HOST, kind, answer).await;
    let chain_pem = chain.unwrap_or_else(|| panic!("order {status:?}: {}", pebble.logs()));
    verify_chain(pebble, &chain_pem);
    chain_pem
}

/// The chain verifies for [`HOST`] against the root fetched from Pebble.
fn verify_chain(pebble: &Pebble, chain_pem: &str) {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("the chain's PEM");
    let (leaf, intermediates) = chain.split_first().expect("a leaf");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.root_der()).expect("Pebble's root");
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("a verifier");
    let now = UnixTime::since_unix_epoch(UNIX_EPOCH.elapsed().unwrap());
    let name = ServerName::try_from(HOST).unwrap();
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .expect("the issued chain verifies against the fetched root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http01_order_is_issued_and_chains_to_the_fetched_root() {
    let options = PebbleOptions::default();
    let answers = serve_http01(options.http_port);
    let pebble = Pebble::start(options);
    assert!(pebble.root_pem().contains("BEGIN CERTIFICATE"));
    let answer = |_: &str, token: &str, key_authorization: &str, _| {
        answers
            .lock()
            .unwrap()
            .insert(token.to_owned(), key_authorization.to_owned());
    };
    let chain_pem = issue(&pebble, ChallengeType::Http01, &answer).await;

    // The short lifetime option reaches the certificate.
    let leaf = CertificateDer::from_pem_slice(chain_pem.as_bytes()).unwrap();
    let info = portcullis::pki::inspect(&leaf).expect("the leaf parses");
    let lifetime = info.not_after.duration_since(info.not_before).unwrap();
    assert!(lifetime <= Duration::from_secs(3600 + 60), "{lifetime:?}");
}

/// The gate's own certificates: none (a challenge must never fall through to them).
#[derive(Debug)]
struct NoCerts;

impl rustls::server::ResolvesServerCert for NoCerts {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

/// A TLS listener on 127.0.0.1:`port` answering with [`ChallengeResolver`]: handshake,
/// then close, as the gate does for `acme-tls/1`.
async fn serve_tls_alpn01(port: u16, challenges: Challenges) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the tls-alpn-01 port");
    let resolver = ChallengeResolver::new(Arc::new(NoCerts), challenges);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gates_tls_alpn01_resolver_passes_pebbles_validation() {
    let options = PebbleOptions::default();
    let challenges = Challenges::default();
    serve_tls_alpn01(options.tls_port, challenges.clone()).await;
    let pebble = Pebble::start(options);
    let answer = |host: &str, _: &str, _: &str, digest: [u8; 32]| {
        challenges
            .insert(host, &digest)
            .expect("a challenge certificate");
    };
    issue(&pebble, ChallengeType::TlsAlpn01, &answer).await;
}
