//! Real rustls handshakes in memory: a challenge hello gets the challenge certificate,
//! anything else the gate's own.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

const HOST: &str = "ha.acme.test";
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

/// The gate's resolver stand-in: one certificate for everything.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Accepts any certificate (an ACME validator checks the extension, not a chain).
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
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn server(challenges: &Challenges, own: &Arc<CertifiedKey>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = ChallengeResolver::new(Arc::new(Fixed(own.clone())), challenges.clone());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Arc::new(config)
}

/// Handshakes in memory; the leaf the client saw.
fn leaf_seen(
    server: Arc<ServerConfig>,
    alpn: &[&[u8]],
) -> std::result::Result<Vec<u8>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(HOST).unwrap();
    let mut client = ClientConnection::new(Arc::new(config), name)?;
    let mut server = ServerConnection::new(server)?;
    while client.is_handshaking() || server.is_handshaking() {
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        server.read_tls(&mut bytes.as_slice()).unwrap();
        server.process_new_packets()?;
        let mut bytes = Vec::new();
        server.write_tls(&mut bytes).unwrap();
        client.read_tls(&mut bytes.as_slice()).unwrap();
        client.process_new_packets()?;
    }
    let certs = client.peer_certificates().expect("a certificate");
    Ok(certs[0].to_vec())
}

fn own_cert() -> Arc<CertifiedKey> {
    Arc::new(challenge_cert("own.example.test", &[0; 32]).unwrap())
}

#[test]
fn a_challenge_hello_gets_the_challenge_certificate() {
    let (challenges, own) = (Challenges::default(), own_cert());
    let digest = [7u8; 32];
    challenges.insert("HA.acme.test", &digest).unwrap();
    let leaf = leaf_seen(server(&challenges, &own), &[ACME_TLS_ALPN]).unwrap();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == ACME_IDENTIFIER_OID)
        .expect("the acmeIdentifier extension");
    assert!(ext.critical);
    let mut expected = vec![0x04, 32];
    expected.extend_from_slice(&digest);
    assert_eq!(ext.value, expected.as_slice());
    let names = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", names.value.general_names),
        "[DNSName(\"HA.acme.test\")]"
    );
}

#[test]
fn other_hellos_get_the_gates_certificate_and_unknown_challenges_none() {
    let (challenges, own) = (Challenges::default(), own_cert());
    challenges.insert(HOST, &[7; 32]).unwrap();
    let own_der = own.cert[0].to_vec();
    let config = server(&challenges, &own);
    assert_eq!(leaf_seen(config.clone(), &[b"http/1.1"]).unwrap(), own_der);
    // acme-tls/1 among others is not a challenge (RFC 8737: offered alone).
    let mixed = leaf_seen(config.clone(), &[b"http/1.1", ACME_TLS_ALPN]).unwrap();
    assert_eq!(mixed, own_der);
    challenges.remove(HOST);
    assert!(leaf_seen(config, &[ACME_TLS_ALPN]).is_err());
}
