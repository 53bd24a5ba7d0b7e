//! tls-alpn-01 on the running gate's own TLS port: Pebble validates an order against the
//! in-process gate (its `tlsPort` is the gate's port); ordinary clients on that port are
//! served as before; an `acme-tls/1` hello for a host without a pending challenge gets no
//! certificate, and a challenge connection carries no HTTP.

mod common;
#[path = "common/pebble.rs"]
mod pebble;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use instant_acme::{ChallengeType, OrderStatus};
use pebble::{Pebble, PebbleOptions};
use portcullis::acme::tls_alpn::{ACME_TLS_ALPN, Challenges};
use portcullis::pki::IssuedCert;
use portcullis::proxy::Settings;
use portcullis::telemetry::Metrics;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resolved to 127.0.0.1 (the gate) by pebble-challtestsrv.
const ACME_HOST: &str = "alpn.acme.test";

struct Env {
    up: Upstream,
    gate: Gate,
    challenges: Challenges,
    pki: TestPki,
    alice: IssuedCert,
}

/// A gate for `ha.test` with alice live and a challenges handle wired in.
async fn env() -> Env {
    let up = Upstream::start().await;
    let pki = TestPki::new();
    let alice = pki.client("alice");
    let challenges = Challenges::default();
    let settings = Settings {
        acme_challenges: Some(challenges.clone()),
        ..Settings::default()
    };
    let routes = vec![route("ha", &[HOST], up.addr)];
    let gate = Gate::start(&pki, spec(routes, vec![live("alice", &alice)]), settings).await;
    Env {
        up,
        gate,
        challenges,
        pki,
        alice,
    }
}

fn challenge_handshakes(gate: &Gate) -> u64 {
    gate.metrics.acme_challenge_handshakes.get()
}

/// The gate's metrics text has no request counted at all.
fn no_requests_counted(gate: &Gate) -> bool {
    let mut registry = prometheus_client::registry::Registry::default();
    gate.metrics.register(&mut registry);
    !Metrics::encode(&registry).contains("portcullis_requests_total{")
}

/// An order for [`ACME_HOST`] by tls-alpn-01, its challenge put in `challenges`; returns
/// the order's final status.
async fn order_by_tls_alpn01(pebble: &Pebble, challenges: &Challenges) -> OrderStatus {
    let answer = |host: &str, _: &str, _: &str, digest: [u8; 32]| {
        challenges
            .insert(host, &digest)
            .expect("a challenge certificate");
    };
    let (status, _) = pebble
        .order(ACME_HOST, ChallengeType::TlsAlpn01, &answer)
        .await;
    challenges.remove(ACME_HOST);
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_validates_tls_alpn01_against_the_running_gate() {
    let e = env().await;
    let pebble = Pebble::start(PebbleOptions {
        tls_port: e.gate.addr.port(),
        ..PebbleOptions::default()
    });
    let status = order_by_tls_alpn01(&pebble, &e.challenges).await;
    assert_eq!(status, OrderStatus::Valid, "{}", pebble.logs());
    // Pebble's validation connections were answered as challenges, nothing else.
    assert!(challenge_handshakes(&e.gate) >= 1);
    assert!(e.up.seen().is_empty());
    assert!(no_requests_counted(&e.gate));
    e.gate
        .eventually("the challenge connections are closed", |g| {
            g.open_connections() == 0
        })
        .await;
}

#[tokio::test]
async fn ordinary_clients_on_the_same_port_are_served_as_before() {
    let e = env().await;
    // A pending challenge for another host changes nothing for ha.test.
    e.challenges.insert(ACME_HOST, &[7; 32]).unwrap();
    let server_cert = CertificateDer::from(e.pki.server.cert_der.clone());
    for alpn in [
        &[b"http/1.1".as_slice()][..],
        &[b"h2"],
        &[b"http/1.1", ACME_TLS_ALPN],
    ] {
        let client = e.gate.client().alpn(alpn);
        // The route's own certificate (the client trusts only the gate's CA) ...
        let tls = client.connect().await.expect("handshake");
        let (_, session) = tls.get_ref();
        assert_eq!(session.peer_certificates().unwrap()[0], server_cert);
        assert_ne!(session.alpn_protocol(), Some(ACME_TLS_ALPN), "{alpn:?}");
        drop(tls);
        // ... and the device certificate is still what admits.
        let without = client.get("/").await.expect("an answer");
        assert_eq!(without.status, http::StatusCode::FORBIDDEN, "{alpn:?}");
        let with_cert = client
            .clone()
            .cert(&e.alice)
            .get("/")
            .await
            .expect("an answer");
        assert_eq!(with_cert.status, http::StatusCode::OK, "{alpn:?}");
    }
    assert_eq!(challenge_handshakes(&e.gate), 0);
}

#[tokio::test]
async fn an_acme_hello_without_a_pending_challenge_gets_no_certificate() {
    let e = env().await;
    e.challenges.insert(ACME_HOST, &[7; 32]).unwrap();
    for host in [HOST, UNROUTED_HOST] {
        // The client trusts the gate's CA: the route's certificate would complete it.
        let client = e.gate.client().sni(host).alpn(&[ACME_TLS_ALPN]);
        let refused = client.connect().await;
        assert!(refused.is_err(), "{host}: handshake completed");
        let with_cert = client.clone().cert(&e.alice);
        assert!(
            with_cert.connect().await.is_err(),
            "{host}: with a device cert"
        );
    }
    // A challenge removed is no longer answered.
    e.challenges.remove(ACME_HOST);
    assert!(any_cert_handshake(&e.gate, ACME_HOST).await.is_err());
    assert_eq!(challenge_handshakes(&e.gate), 0);
    assert!(e.up.seen().is_empty());
    assert!(no_requests_counted(&e.gate));
}

#[tokio::test]
async fn a_challenge_connection_is_closed_after_the_handshake_without_http() {
    let e = env().await;
    e.challenges.insert(ACME_HOST, &[7; 32]).unwrap();
    let mut tls = any_cert_handshake(&e.gate, ACME_HOST)
        .await
        .expect("the challenge handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(ACME_TLS_ALPN));
    let presented = session.peer_certificates().unwrap()[0].clone();
    assert_ne!(presented.as_ref(), e.pki.server.cert_der.as_slice());
    // Whatever the peer sends, nothing comes back but the close.
    let _ = tls
        .write_all(b"GET / HTTP/1.1\r\nHost: alpn.acme.test\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gate kept the connection open");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    assert_eq!(challenge_handshakes(&e.gate), 1);
    assert!(e.up.seen().is_empty());
    assert!(no_requests_counted(&e.gate));
}

#[tokio::test]
async fn without_a_challenges_handle_acme_tls_is_not_offered() {
    let up = Upstream::start().await;
    let pki = TestPki::new();
    let gate = Gate::simple(&pki, up.addr, vec![]).await;
    let client = gate.client().alpn(&[ACME_TLS_ALPN]);
    assert!(client.connect().await.is_err());
    let both = gate.client().alpn(&[b"http/1.1", ACME_TLS_ALPN]);
    let tls = both.connect().await.expect("http/1.1 still negotiated");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(b"http/1.1".as_slice())
    );
}

/// TLS to the gate as a validation server does it: SNI `host`, only `acme-tls/1`, any
/// certificate accepted (it checks the acmeIdentifier extension, not a chain).
async fn any_cert_handshake(
    gate: &Gate,
    host: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let tcp = tokio::net::TcpStream::connect(gate.addr).await?;
    let name = ServerName::try_from(host.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
