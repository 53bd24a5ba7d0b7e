//! The certificate authority: created once per installation, or brought by the user.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::prelude::{ParsedExtension, X509Certificate, X509Name};

use super::{CertInfo, after_now, backdated_now, cert_ders, info_of, key_for_cert, parse_cert};
use crate::{Error, Result};

/// How long a generated CA is valid. Replacing a CA means re-enrolling every device, so it
/// is long; leaves are short-lived and renewed instead.
pub(crate) const CA_VALIDITY: Duration = Duration::from_secs(3653 * 24 * 3600);

/// The installation's certificate authority: its certificate, key and ready-to-use signer.
pub struct Ca {
    pub(super) issuer: Issuer<'static, KeyPair>,
    /// The CA's subject key identifier, repeated as the authority key identifier of the
    /// CRL. Taken from the certificate so a bring-your-own CA's SHA-1 identifiers still match.
    pub(super) key_id: KeyIdMethod,
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    info: CertInfo,
}

// The key must never reach a log line through `{:?}`.
impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA: ECDSA P-256, `CA:TRUE, pathlen:0` (it signs leaves only), key usage
    /// keyCertSign + cRLSign + digitalSignature, valid for [`CA_VALIDITY`].
    pub fn generate(common_name: &str) -> Result<Ca> {
        let what = "generating the CA";
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| Error::pki(what, e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        // CrlSign is required: without it rcgen refuses to sign the CRL and webpki rejects it.
        params.key_usages = ca_key_usages();
        params.not_before = backdated_now();
        params.not_after = after_now(what, CA_VALIDITY)?;
        params.serial_number = Some(super::issue::random_serial()?);
        let cert = params.self_signed(&key).map_err(|e| Error::pki(what, e))?;
        // One code path for new and loaded CAs, so a fresh CA is exactly what a restart sees.
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from PEM (a stored one, or the user's own). Refuses a certificate that is
    /// not a CA, cannot sign CRLs, has expired, or whose key does not match.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let what = "CA certificate";
        let mut ders = cert_ders(cert_pem)?;
        let cert_der = match ders.len() {
            1 => ders.swap_remove(0),
            0 => {
                return Err(Error::pki(
                    what,
                    "no -----BEGIN CERTIFICATE----- block found",
                ));
            }
            n => {
                return Err(Error::pki(
                    what,
                    format!(
                        "the file holds {n} certificates; it must hold only the CA certificate \
                         that signs device certificates (intermediate chains are not supported)"
                    ),
                ));
            }
        };
        let x509 = parse_cert(&cert_der)?;
        check_is_usable_ca(&x509)?;
        let key = key_for_cert(&cert_der, key_pem)
            .map_err(|e| Error::pki("CA private key", pki_reason(e)))?;

        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(x509.subject());
        params.key_usages = ca_key_usages();
        params.key_identifier_method = subject_key_id(&x509).unwrap_or(KeyIdMethod::Sha256);
        let key_id = params.key_identifier_method.clone();
        let issuer = Issuer::new(params, key);
        check_issuer_name_roundtrips(&issuer, &x509)?;

        let info = info_of(&x509, &cert_der);
        Ok(Ca {
            issuer,
            key_id,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            info,
        })
    }

    /// The CA certificate, PEM (what devices and verifiers trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Store it mode 0600.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// What the CA certificate says (name, serial, expiry).
    pub fn info(&self) -> &CertInfo {
        &self.info
    }
}

fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

fn pki_reason(e: Error) -> String {
    match e {
        Error::Pki { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn check_is_usable_ca(x509: &X509Certificate<'_>) -> Result<()> {
    let what = "CA certificate";
    let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err(Error::pki(
            what,
            "is not a CA certificate (basicConstraints CA:TRUE is missing); \
             did you pass a server or client certificate?",
        ));
    }
    match x509.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() || !ku.value.crl_sign() => {
            return Err(Error::pki(
                what,
                "its key usage must include keyCertSign and cRLSign \
                 (Portcullis signs device certificates and a revocation list)",
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(Error::pki(what, format!("unreadable key usage: {e}"))),
    }
    let not_after = x509.validity().not_after;
    if not_after.timestamp() <= time::OffsetDateTime::now_utc().unix_timestamp() {
        return Err(Error::pki(what, format!("expired on {not_after}")));
    }
    Ok(())
}

fn subject_key_id(x509: &X509Certificate<'_>) -> Option<KeyIdMethod> {
    x509.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
            }
            _ => None,
        })
}

/// Rebuilds the subject for rcgen, keeping each value's string type. Best effort: anything
/// rcgen cannot express is caught by [`check_issuer_name_roundtrips`].
fn distinguished_name(name: &X509Name<'_>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for attr in name.iter().flat_map(|rdn| rdn.iter()) {
        let Some(arcs) = attr.attr_type().iter() else {
            continue;
        };
        let ty = DnType::from_oid(&arcs.collect::<Vec<u64>>());
        let value = attr.attr_value();
        let Ok(text) = std::str::from_utf8(value.data) else {
            continue;
        };
        let dn_value = match value.tag() {
            Tag::PrintableString => text.try_into().map(DnValue::PrintableString).ok(),
            Tag::Ia5String => text.try_into().map(DnValue::Ia5String).ok(),
            _ => Some(DnValue::Utf8String(text.to_owned())),
        };
        if let Some(v) = dn_value {
            dn.push(ty, v);
        }
    }
    dn
}

/// Verifiers (webpki in particular) chain a leaf to its CA by comparing the leaf's issuer
/// name with the CA's subject byte for byte. Sign a probe and compare, so an exotic
/// bring-your-own CA subject fails here with a clear message, not later at every handshake.
fn check_issuer_name_roundtrips(
    issuer: &Issuer<'_, KeyPair>,
    x509: &X509Certificate<'_>,
) -> Result<()> {
    let probe = CertificateParams::default()
        .signed_by(issuer.key(), issuer)
        .map_err(|e| Error::pki("CA private key", format!("cannot sign with it: {e}")))?;
    let probe = parse_cert(probe.der())?;
    if probe.issuer().as_raw() != x509.subject().as_raw() {
        return Err(Error::pki(
            "CA certificate",
            format!(
                "its subject ({}) uses an encoding Portcullis cannot reproduce \
                 (multi-valued or repeated attributes, or unusual string types); \
                 use a CA with a simple subject such as CN=My Home CA",
                x509.subject()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn generate_then_from_pem_roundtrips() {
        let ca = Ca::generate("Portcullis CA test").unwrap();
        assert_eq!(ca.info().common_name.as_deref(), Some("Portcullis CA test"));
        let x509 = parse_cert(ca.cert_der()).unwrap();
        let bc = x509.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        let years = ca
            .info()
            .not_after
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / (365 * 24 * 3600);
        assert_eq!(years, 10);

        let loaded = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.info(), ca.info());
        assert!(!format!("{loaded:?}").contains("PRIVATE"));
    }

    #[test]
    fn ca_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Ca>();
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = Ca::generate("A").unwrap();
        let b = Ca::generate("B").unwrap();
        let err = Ca::from_pem(a.cert_pem(), b.key_pem())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn leaf_certificate_is_not_a_ca() {
        let ca = Ca::generate("A").unwrap();
        let leaf = ca
            .issue_server(&["example.test".into()], Duration::from_secs(3600))
            .unwrap();
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a CA certificate"), "{err}");
    }

    #[test]
    fn two_certificates_are_refused() {
        let ca = Ca::generate("A").unwrap();
        let both = format!("{}{}", ca.cert_pem(), ca.cert_pem());
        let err = Ca::from_pem(&both, ca.key_pem()).unwrap_err().to_string();
        assert!(err.contains("holds 2 certificates"), "{err}");
    }

    #[test]
    fn byo_ca_with_rich_subject_keeps_its_name() {
        // A CA made elsewhere: PrintableString values, several attributes, custom SKI.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CountryName,
            DnValue::PrintableString("DE".try_into().unwrap()),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Home");
        params
            .distinguished_name
            .push(DnType::CommonName, "My Home CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_identifier_method = KeyIdMethod::PreSpecified(vec![7; 20]);
        let cert = params.self_signed(&key).unwrap();
        let ca = Ca::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
        assert_eq!(ca.info().common_name.as_deref(), Some("My Home CA"));
        assert_eq!(ca.key_id, KeyIdMethod::PreSpecified(vec![7; 20]));
    }
}
