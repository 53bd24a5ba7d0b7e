//! Leaf certificates: one per route (server) and one per device (client).

use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::PrivatePkcs8KeyDer;

use super::{Ca, IssuedCert, after_now, backdated_now, inspect};
use crate::resources::KeyAlgorithm;
use crate::{Error, Result};

impl Ca {
    /// Issues a server certificate for a route: ECDSA P-256, every host as a subjectAltName
    /// (IP address strings become IP SANs), EKU serverAuth, CN = the first host.
    pub fn issue_server(&self, hosts: &[String], validity: Duration) -> Result<IssuedCert> {
        let what = format!("server certificate for {}", hosts.join(", "));
        let Some(first) = hosts.first() else {
            return Err(Error::pki("server certificate", "no host names given"));
        };
        if let Some(bad) = hosts.iter().find(|h| !is_valid_host(h)) {
            return Err(Error::pki(
                what,
                format!("{bad:?} is not a valid DNS name or IP address"),
            ));
        }
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(|e| {
            Error::pki(
                &what,
                format!("a host is not a valid DNS name or IP address: {e}"),
            )
        })?;
        params.distinguished_name = common_name(first);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = generate_key(&what, KeyAlgorithm::EcdsaP256)?;
        self.sign(&what, params, key, validity)
    }

    /// Issues a device certificate: EKU clientAuth, a random positive serial, and a
    /// `notBefore` backdated a few minutes for devices with slow clocks.
    pub fn issue_client(
        &self,
        common_name: &str,
        alg: KeyAlgorithm,
        validity: Duration,
    ) -> Result<IssuedCert> {
        let what = format!("client certificate for {common_name:?}");
        if common_name.trim().is_empty() {
            return Err(Error::pki(what, "the common name is empty"));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = self::common_name(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = generate_key(&what, alg)?;
        self.sign(&what, params, key, validity)
    }

    /// Fills in what every leaf shares and signs it with the CA key.
    fn sign(
        &self,
        what: &str,
        mut params: CertificateParams,
        key: KeyPair,
        validity: Duration,
    ) -> Result<IssuedCert> {
        if validity.is_zero() {
            return Err(Error::pki(what, "the validity is zero"));
        }
        params.not_before = backdated_now();
        params.not_after = after_now(what, validity)?;
        params.serial_number = Some(random_serial()?);
        // CA:FALSE stated explicitly, so no verifier can mistake a leaf for an issuer.
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::pki(what, e))?;
        let cert_der = cert.der().to_vec();
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            info: inspect(&cert_der)?,
            cert_der,
            key_der: key.serialize_der(),
        })
    }
}

/// rcgen accepts any IA5 text as a DNS name; a typo such as a space would only surface as
/// a TLS failure on the device, so check the syntax here (wildcards allowed as `*.`).
fn is_valid_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    rustls::pki_types::ServerName::try_from(name).is_ok()
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A random positive serial of up to 127 bits: unpredictable serials keep a collision
/// attack on the signature out of reach, and no counter has to survive restarts.
pub(crate) fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::pki("serial number", "the system random generator failed"))?;
    // Clear the sign bit: a negative serial is invalid DER for certificates.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn generate_key(what: &str, alg: KeyAlgorithm) -> Result<KeyPair> {
    match alg {
        KeyAlgorithm::EcdsaP256 => {
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| Error::pki(what, e))
        }
        KeyAlgorithm::Rsa2048 => rsa_key(what, 2048),
        KeyAlgorithm::Rsa3072 => rsa_key(what, 3072),
    }
}

/// ring can sign with RSA but not generate RSA keys, so the `rsa` crate makes the key and
/// ring takes it over as PKCS#8.
fn rsa_key(what: &str, bits: usize) -> Result<KeyPair> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
        .map_err(|e| Error::pki(what, format!("RSA-{bits} key generation failed: {e}")))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| Error::pki(what, format!("RSA key encoding failed: {e}")))?;
    let pkcs8 = PrivatePkcs8KeyDer::from(der.as_bytes());
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_RSA_SHA256).map_err(|e| Error::pki(what, e))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;

    use super::*;
    use crate::pki::{key_for_cert, parse_cert};

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.cert_der().to_vec()))
            .unwrap();
        Arc::new(roots)
    }

    /// Chains `leaf` to `ca` with webpki, the verifier the proxy itself uses.
    pub(crate) fn verify_client(ca: &Ca, leaf: &[u8]) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider)
            .allow_unknown_revocation_status()
            .build()
            .unwrap();
        let leaf = CertificateDer::from(leaf.to_vec());
        verifier
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn ecdsa_client_cert_chains_and_describes_itself() {
        let ca = Ca::generate("Portcullis CA test").unwrap();
        let day = Duration::from_secs(86_400);
        let c = ca
            .issue_client("alice-phone", KeyAlgorithm::EcdsaP256, day)
            .unwrap();
        verify_client(&ca, &c.cert_der).unwrap();
        assert_eq!(c.info.common_name.as_deref(), Some("alice-phone"));
        assert!(c.info.serial_hex.len() <= 32 && c.info.serial_hex.len().is_multiple_of(2));
        assert!(c.info.not_before <= SystemTime::now() - Duration::from_secs(4 * 60));
        assert!(c.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        key_for_cert(&c.cert_der, &c.key_pem).unwrap();
        let x509 = parse_cert(&c.cert_der).unwrap();
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let other = ca
            .issue_client("bob", KeyAlgorithm::EcdsaP256, day)
            .unwrap();
        assert_ne!(c.info.serial_hex, other.info.serial_hex);
    }

    #[test]
    fn rsa_2048_client_cert_chains() {
        let ca = Ca::generate("Portcullis CA test").unwrap();
        let c = ca
            .issue_client("old-tablet", KeyAlgorithm::Rsa2048, Duration::from_secs(60))
            .unwrap();
        verify_client(&ca, &c.cert_der).unwrap();
        let x509 = parse_cert(&c.cert_der).unwrap();
        assert_eq!(x509.public_key().parsed().unwrap().key_size(), 2048);
        key_for_cert(&c.cert_der, &c.key_pem).unwrap();
    }

    #[test]
    fn client_cert_from_another_ca_is_rejected() {
        let ca = Ca::generate("A").unwrap();
        let other = Ca::generate("B").unwrap();
        let c = other
            .issue_client("eve", KeyAlgorithm::EcdsaP256, Duration::from_secs(60))
            .unwrap();
        assert!(verify_client(&ca, &c.cert_der).is_err());
    }

    #[test]
    fn server_cert_has_dns_and_ip_sans() {
        let ca = Ca::generate("Portcullis CA test").unwrap();
        let hosts = vec!["ha.example.test".to_owned(), "192.168.1.10".to_owned()];
        let s = ca.issue_server(&hosts, Duration::from_secs(3600)).unwrap();
        assert_eq!(s.info.common_name.as_deref(), Some("ha.example.test"));
        assert_eq!(s.info.dns_names, vec!["ha.example.test".to_owned()]);

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(&ca), provider)
            .build()
            .unwrap();
        let leaf = CertificateDer::from(s.cert_der.clone());
        for host in ["ha.example.test", "192.168.1.10"] {
            let name = ServerName::try_from(host).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .unwrap();
        }
        let wrong = ServerName::try_from("other.example.test").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &wrong, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let ca = Ca::generate("A").unwrap();
        let hour = Duration::from_secs(3600);
        assert!(ca.issue_server(&[], hour).is_err());
        assert!(ca.issue_server(&["bad host".into()], hour).is_err());
        ca.issue_server(&["*.example.test".into()], hour).unwrap();
        assert!(ca.issue_client(" ", KeyAlgorithm::EcdsaP256, hour).is_err());
        assert!(
            ca.issue_client("x", KeyAlgorithm::EcdsaP256, Duration::ZERO)
                .is_err()
        );
        let err = ca
            .issue_client("x", KeyAlgorithm::EcdsaP256, Duration::MAX)
            .unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }
}
