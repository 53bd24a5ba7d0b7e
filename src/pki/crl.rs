//! The certificate revocation list published beside the CA, for interop with other
//! verifiers (the proxy itself also admits only live identities).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateRevocationListParams, RevokedCertParams, SerialNumber};
use serde::{Deserialize, Serialize};

use super::{Ca, after_now, backdated_now, offset_time, serial_hex_of};
use crate::{Error, Result};

/// A serial number that must appear in the CRL, and when it was revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedSerial {
    /// The serial as [`super::CertInfo::serial_hex`] prints it.
    #[serde(rename = "serial")]
    pub serial_hex: String,
    /// When the identity was revoked or removed (RFC 3339 on disk).
    #[serde(with = "rfc3339")]
    pub revoked_at: SystemTime,
}

impl Ca {
    /// Signs a CRL (PEM) listing `revoked`, valid from a few minutes ago (clock skew) until
    /// `next_update` from now. Duplicate serials are listed once, with the earliest time.
    pub fn crl(
        &self,
        revoked: &[RevokedSerial],
        crl_number: u64,
        next_update: Duration,
    ) -> Result<String> {
        let what = "certificate revocation list";
        let mut by_serial: BTreeMap<Vec<u8>, SystemTime> = BTreeMap::new();
        for r in revoked {
            let serial = parse_serial_hex(&r.serial_hex)?;
            let at = by_serial.entry(serial).or_insert(r.revoked_at);
            *at = (*at).min(r.revoked_at);
        }
        // Backdated like the certificates: OpenSSL rejects a CRL that is "not yet valid".
        let this_update = backdated_now();
        let params = CertificateRevocationListParams {
            this_update,
            next_update: after_now(what, next_update)?,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: by_serial
                .into_iter()
                .map(|(serial, at)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    // A time no CRL can hold still lists the serial: being listed is what
                    // matters, the date is informational.
                    revocation_time: offset_time(at).unwrap_or(this_update),
                    // RFC 5280 §5.3.1: "unspecified" should be expressed by leaving it out.
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: self.key_id.clone(),
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| Error::pki(what, e))?;
        crl.pem().map_err(|e| Error::pki(what, e))
    }
}

/// `nextUpdate` of a published CRL.
pub const CRL_VALIDITY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// A CRL is re-signed when older than this, so it never reaches `nextUpdate` while the
/// gate or the controller runs.
pub const CRL_REFRESH: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Parses a serial written as hex, as printed by Portcullis or OpenSSL: case-insensitive,
/// `:` separators and a `0x` prefix allowed. Returns the big-endian magnitude.
pub fn parse_serial_hex(text: &str) -> Result<Vec<u8>> {
    let bad = |reason: &str| Error::pki(format!("serial number {text:?}"), reason);
    let trimmed = text.trim();
    let trimmed = trimmed.strip_prefix("0x").unwrap_or(trimmed);
    let mut digits: String = trimmed.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() {
        return Err(bad("is empty"));
    }
    if !digits.len().is_multiple_of(2) {
        digits.insert(0, '0');
    }
    let bytes = hex::decode(&digits).map_err(|_| bad("is not hexadecimal"))?;
    let magnitude = hex::decode(serial_hex_of(&bytes)).map_err(|_| bad("is not hexadecimal"))?;
    // RFC 5280 §4.1.2.2: at most 20 octets.
    if magnitude.len() > 20 {
        return Err(bad("is longer than 20 bytes"));
    }
    Ok(magnitude)
}

/// A serial in the form [`crate::pki::CertInfo::serial_hex`] uses, so ledgers written by
/// hand or by other tools compare equal.
pub fn canonical_serial(serial: &str) -> Option<String> {
    parse_serial_hex(serial).ok().map(hex::encode)
}

/// Reads a ledger as the CRL Secret's `revoked.json` holds it (a JSON array of
/// `{"serial", "revokedAt"}`); `Err` says what is wrong with it.
pub fn parse_ledger_json(bytes: &[u8]) -> std::result::Result<Vec<RevokedSerial>, String> {
    let ledger: Vec<RevokedSerial> =
        serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))?;
    for r in &ledger {
        parse_serial_hex(&r.serial_hex).map_err(|e| e.to_string())?;
    }
    Ok(ledger)
}

/// `SystemTime` as RFC 3339 text, so the ledger is readable and editable by hand.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::pki_types::{
        CertificateDer, CertificateRevocationListDer, UnixTime, pem::PemObject,
    };
    use rustls::server::WebPkiClientVerifier;
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;

    use super::*;
    use crate::resources::KeyAlgorithm;

    fn revoked(serial: &str) -> RevokedSerial {
        RevokedSerial {
            serial_hex: serial.to_owned(),
            revoked_at: SystemTime::now(),
        }
    }

    #[test]
    fn crl_lists_serials_and_webpki_honours_it() {
        let ca = Ca::generate("Portcullis CA test").unwrap();
        let hour = Duration::from_secs(3600);
        let bad = ca
            .issue_client("lost-phone", KeyAlgorithm::EcdsaP256, hour)
            .unwrap();
        let good = ca
            .issue_client("laptop", KeyAlgorithm::EcdsaP256, hour)
            .unwrap();
        let list = [
            revoked(&bad.info.serial_hex),
            revoked("0A:BC"),
            revoked("abc"),
        ];
        let pem = ca.crl(&list, 7, hour).unwrap();

        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref()).unwrap();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| serial_hex_of(r.raw_serial()))
            .collect();
        assert_eq!(serials.len(), 2, "duplicates are listed once: {serials:?}");
        assert!(serials.contains(&bad.info.serial_hex) && serials.contains(&"0abc".to_owned()));
        assert_eq!(
            crl.crl_number().map(|n| n.to_string()),
            Some("7".to_owned())
        );
        let (_, ca_x509) = X509Certificate::from_der(ca.cert_der()).unwrap();
        assert_eq!(crl.issuer(), ca_x509.subject());

        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.cert_der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls([der])
            .enforce_revocation_expiration()
            .build()
            .unwrap();
        let now = UnixTime::now();
        let check = |c: &crate::pki::IssuedCert| {
            verifier.verify_client_cert(&CertificateDer::from(c.cert_der.clone()), &[], now)
        };
        check(&good).unwrap();
        let err = check(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn empty_crl_and_odd_revocation_times_are_fine() {
        let ca = Ca::generate("A").unwrap();
        let pem = ca.crl(&[], 1, Duration::from_secs(60)).unwrap();
        assert!(pem.starts_with("-----BEGIN X509 CRL-----"));
        let odd = RevokedSerial {
            serial_hex: "01".into(),
            revoked_at: SystemTime::UNIX_EPOCH - Duration::from_secs(1),
        };
        ca.crl(&[odd], 2, Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn serial_hex_forms() {
        assert_eq!(parse_serial_hex("0x0A:bc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(parse_serial_hex("abc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(parse_serial_hex("00ff").unwrap(), vec![0xff]);
        assert!(parse_serial_hex("").is_err());
        assert!(parse_serial_hex("xyz").is_err());
        assert!(parse_serial_hex(&"11".repeat(21)).is_err());
    }

    #[test]
    fn revoked_serial_serde_is_rfc3339() {
        let r = RevokedSerial {
            serial_hex: "0abc".into(),
            revoked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"serial":"0abc","revokedAt":"2027-01-15T08:00:00Z"}"#
        );
        assert_eq!(serde_json::from_str::<RevokedSerial>(&json).unwrap(), r);
    }
}
