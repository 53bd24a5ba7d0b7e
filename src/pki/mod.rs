//! The installation's small certificate authority: device and server certificates, the CRL
//! and the `.p12` / `.mobileconfig` files handed to devices.
//!
//! ```text
//!  Ca::generate / Ca::from_pem ──▶ Ca ──issue_server──▶ IssuedCert (route)
//!                                  │ ──issue_client──▶ IssuedCert ──export_pkcs12──▶ .p12
//!                                  └ ──crl(revoked)──▶ crl.pem
//! ```
//! [`mobileconfig()`] wraps a `.p12` in an Apple configuration profile for iPhones and Macs.
//! Everything is pure Rust (rcgen + ring, rsa for RSA key generation, p12-keystore); nothing
//! links OpenSSL. Certificates are described by [`CertInfo`], read back from the DER with
//! x509-parser, so what we report is exactly what a verifier sees.

mod ca;
mod crl;
mod issue;
pub mod mobileconfig;
pub mod pkcs12;
pub mod previous;
pub mod renewal;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{Error, Result};

pub use ca::Ca;
pub use crl::{
    CRL_REFRESH, CRL_VALIDITY, RevokedSerial, canonical_serial, parse_ledger_json, parse_serial_hex,
};
pub use mobileconfig::{MOBILECONFIG_CONTENT_TYPE, MobileConfig, mobileconfig};
pub use pkcs12::{MIN_PASSWORD_LEN, export_pkcs12, generate_password};

/// A certificate and its private key, in the encodings the rest of Portcullis needs.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// What the certificate says, read back from `cert_der`.
    pub info: CertInfo,
}

// Hand-written so that a stray `{:?}` in a log line never prints a private key.
impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The facts about a certificate that Portcullis reports and decides on.
#[derive(Clone, Debug, PartialEq)]
pub struct CertInfo {
    /// Serial number: lowercase hex of its big-endian magnitude, even length, no separators
    /// (DER sign padding removed), so one certificate always yields one string.
    pub serial_hex: String,
    /// SHA-256 of the DER encoding (what `openssl x509 -fingerprint -sha256` shows).
    pub fingerprint: [u8; 32],
    /// The subject's first common name, if any.
    pub common_name: Option<String>,
    /// DNS names in the subjectAltName extension (IP addresses are not listed here).
    pub dns_names: Vec<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// The fingerprint as lowercase hex, as the ClientIdentity status shows it.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }
}

/// Describes a DER certificate.
pub fn inspect(cert_der: &[u8]) -> Result<CertInfo> {
    let x509 = parse_cert(cert_der)?;
    Ok(info_of(&x509, cert_der))
}

/// Describes the first certificate of a PEM text.
pub fn inspect_pem(cert_pem: &str) -> Result<CertInfo> {
    inspect(&first_cert_der(cert_pem)?)
}

/// Parses DER into x509-parser's view, refusing trailing bytes.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>> {
    match X509Certificate::from_der(der) {
        Ok(([], x509)) => Ok(x509),
        Ok(_) => Err(Error::pki(
            "certificate",
            "trailing bytes after the DER certificate",
        )),
        Err(e) => Err(Error::pki(
            "certificate",
            format!("not a valid X.509 certificate: {e}"),
        )),
    }
}

pub(crate) fn info_of(x509: &X509Certificate<'_>, der: &[u8]) -> CertInfo {
    let common_name = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let dns_names = match x509.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let validity = x509.validity();
    CertInfo {
        serial_hex: serial_hex_of(x509.raw_serial()),
        fingerprint: Sha256::digest(der).into(),
        common_name,
        dns_names,
        not_before: system_time(validity.not_before.timestamp()),
        not_after: system_time(validity.not_after.timestamp()),
    }
}

/// Canonical serial text: the DER INTEGER's content bytes without leading zero bytes.
pub(crate) fn serial_hex_of(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    match &raw[start..] {
        [] => "00".to_owned(),
        magnitude => hex::encode(magnitude),
    }
}

fn system_time(unix_seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(unix_seconds.unsigned_abs());
    let t = if unix_seconds >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    // Only reachable for dates no platform can represent; the epoch is a safe "long ago".
    t.unwrap_or(UNIX_EPOCH)
}

/// The DER of the first `CERTIFICATE` block; other PEM sections are skipped.
pub(crate) fn first_cert_der(pem: &str) -> Result<Vec<u8>> {
    let mut certs = cert_ders(pem)?;
    if certs.is_empty() {
        return Err(Error::pki(
            "certificate",
            "no -----BEGIN CERTIFICATE----- block found",
        ));
    }
    Ok(certs.swap_remove(0))
}

/// The DER of every `CERTIFICATE` block, in order.
pub(crate) fn cert_ders(pem: &str) -> Result<Vec<Vec<u8>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::pki("certificate", format!("invalid PEM: {e}")))
}

/// The certificates (DER) of an ACME `caFile`: a readable PEM file with at least one.
/// Errors name the file and say what it should hold.
pub(crate) fn ca_file_certs(file: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the caFile {}: {e}", file.display()))?;
    let certs = cert_ders(&pem).map_err(|e| format!("the caFile {}: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the caFile {} holds no -----BEGIN CERTIFICATE----- block; give the PEM file of \
             the CA that signed the ACME server's HTTPS certificate",
            file.display()
        ));
    }
    Ok(certs)
}

/// A PKCS#8 private key from PEM, with a hint for the other encodings ring cannot read.
pub(crate) fn key_der_from_pem(pem: &str) -> Result<Vec<u8>> {
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(PrivateKeyDer::Pkcs8(k)) => Ok(k.secret_pkcs8_der().to_vec()),
        Ok(_) => Err(Error::pki(
            "private key",
            "not PKCS#8 (BEGIN PRIVATE KEY); convert it with \
             `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`",
        )),
        Err(e) => Err(Error::pki(
            "private key",
            format!("no usable PEM private key: {e}"),
        )),
    }
}

/// Loads a PKCS#8 key and checks that it belongs to `cert`: a key that signs for some other
/// certificate would make every handshake fail later, far from the cause.
pub(crate) fn key_for_cert(cert_der: &[u8], key_pem: &str) -> Result<rcgen::KeyPair> {
    let key_der = key_der_from_pem(key_pem)?;
    let key = rcgen::KeyPair::try_from(key_der.as_slice()).map_err(|e| {
        Error::pki(
            "private key",
            format!("unsupported or invalid key ({e}); ECDSA P-256/P-384 and RSA are supported"),
        )
    })?;
    let x509 = parse_cert(cert_der)?;
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(Error::pki(
            "private key",
            "does not match the certificate's public key",
        ));
    }
    Ok(key)
}

/// Backdating of `notBefore` and `thisUpdate`, so a device whose clock runs a little slow
/// accepts a certificate or CRL minted a moment ago.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The start of a validity period: now, backdated by [`CLOCK_SKEW`].
pub(crate) fn backdated_now() -> OffsetDateTime {
    OffsetDateTime::now_utc() - CLOCK_SKEW
}

/// `now + d` for a certificate field, with a clear error instead of an overflow panic.
pub(crate) fn after_now(what: &str, d: Duration) -> Result<OffsetDateTime> {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| OffsetDateTime::now_utc().checked_add(d))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| {
            let d = humantime::format_duration(d);
            Error::pki(what, format!("a validity of {d} is too long"))
        })
}

/// A `SystemTime` for rcgen; `None` outside 1970..=9999, which certificates cannot hold.
/// (`OffsetDateTime::from` would panic instead.)
pub(crate) fn offset_time(t: SystemTime) -> Option<OffsetDateTime> {
    let since_epoch = t.duration_since(UNIX_EPOCH).ok()?;
    let t = OffsetDateTime::UNIX_EPOCH.checked_add(time::Duration::try_from(since_epoch).ok()?)?;
    (t.year() <= 9999).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_strips_sign_padding_only() {
        assert_eq!(serial_hex_of(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex_of(&[0x0a, 0xbc]), "0abc");
        assert_eq!(serial_hex_of(&[0x00]), "00");
        assert_eq!(serial_hex_of(&[]), "00");
    }

    #[test]
    fn inspect_pem_rejects_text_without_certificate() {
        let err = inspect_pem("hello").unwrap_err().to_string();
        assert!(err.contains("no -----BEGIN CERTIFICATE-----"), "{err}");
    }

    #[test]
    fn times_out_of_range_are_refused_not_panics() {
        let far = Duration::from_secs(20_000 * 365 * 86_400);
        assert!(after_now("x", far).is_err());
        assert!(offset_time(UNIX_EPOCH + far).is_none());
        assert!(offset_time(UNIX_EPOCH - Duration::from_secs(1)).is_none());
        assert_eq!(offset_time(UNIX_EPOCH).map(|t| t.unix_timestamp()), Some(0));
    }

    #[test]
    fn key_pem_in_pkcs1_gets_a_conversion_hint() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let err = key_der_from_pem(pem).unwrap_err().to_string();
        assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
    }
}
