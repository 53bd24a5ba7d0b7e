//! The Pebble harness proves itself without the gate: a minimal ACME order with the
//! instant-acme client, its http-01 challenge answered by this test on loopback, and the
//! issued chain verified against the root fetched from Pebble's management API.

#[path = "common/pebble.rs"]
mod pebble;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use pebble::{Pebble, PebbleOptions};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http01_order_is_issued_and_chains_to_the_fetched_root() {
    let options = PebbleOptions::default();
    let answers = serve_http01(options.http_port);
    let pebble = Pebble::start(options);
    assert!(pebble.root_pem().contains("BEGIN CERTIFICATE"));

    let (account, _credentials) = Account::builder_with_root(pebble.ca_pem_path())
        .expect("an ACME client trusting Pebble's HTTPS certificate")
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            pebble.directory_url(),
            None,
        )
        .await
        .expect("an account");
    let identifiers = [Identifier::Dns(HOST.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .expect("an order");
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.expect("an authorization");
        assert_eq!(authz.status, AuthorizationStatus::Pending);
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .expect("an http-01 challenge");
        answers.lock().unwrap().insert(
            challenge.token.clone(),
            challenge.key_authorization().as_str().to_owned(),
        );
        challenge.set_ready().await.expect("challenge ready");
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(30));
    let status = order.poll_ready(&retries).await.expect("order polled");
    assert_eq!(status, OrderStatus::Ready, "{}", pebble.logs());

    let key = rcgen::KeyPair::generate().expect("a key");
    let csr = rcgen::CertificateParams::new(vec![HOST.to_owned()])
        .and_then(|p| p.serialize_request(&key))
        .expect("a CSR");
    order.finalize_csr(csr.der()).await.expect("finalized");
    let chain_pem = order.poll_certificate(&retries).await.expect("certificate");

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

    // The short lifetime option reaches the certificate.
    let info = portcullis::pki::inspect(leaf).expect("the leaf parses");
    let lifetime = info.not_after.duration_since(info.not_before).unwrap();
    assert!(lifetime <= Duration::from_secs(3600 + 60), "{lifetime:?}");
}
