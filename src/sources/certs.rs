//! Facts about stored certificates that decide whether to re-issue them: the names they
//! cover, their key type, their issuer.

use std::collections::BTreeSet;
use std::net::IpAddr;

use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::resources::KeyAlgorithm;

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

/// A host as certificates and routes compare it: lowercase, IP addresses canonical.
pub(crate) fn normalize_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// The subjectAltNames of a certificate (DNS names and IP addresses), normalized.
pub(crate) fn san_hosts(der: &[u8]) -> BTreeSet<String> {
    let Some(cert) = parse(der) else {
        return BTreeSet::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return BTreeSet::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            GeneralName::IPAddress(b) => ip_from_bytes(b).map(|ip| ip.to_string()),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Whether a certificate with `sans` is valid for `host` (one-label wildcards included).
pub(crate) fn covers(sans: &BTreeSet<String>, host: &str) -> bool {
    let host = normalize_host(host);
    if sans.contains(&host) {
        return true;
    }
    let Some((_, parent)) = host.split_once('.') else {
        return false;
    };
    host.parse::<IpAddr>().is_err() && sans.contains(&format!("*.{parent}"))
}

/// The key algorithm of a certificate, when it is one Portcullis issues.
pub(crate) fn key_algorithm(der: &[u8]) -> Option<KeyAlgorithm> {
    let cert = parse(der)?;
    match cert.public_key().parsed().ok()? {
        PublicKey::EC(_) => Some(KeyAlgorithm::EcdsaP256),
        PublicKey::RSA(rsa) if rsa.key_size() == 2048 => Some(KeyAlgorithm::Rsa2048),
        PublicKey::RSA(rsa) if rsa.key_size() == 3072 => Some(KeyAlgorithm::Rsa3072),
        _ => None,
    }
}

/// Whether `leaf` names `ca` as its issuer (subject and, when both carry one, key id).
/// Certificates from a CA the user since replaced must be re-issued.
pub(crate) fn issued_by(leaf: &[u8], ca: &[u8]) -> bool {
    let (Some(leaf), Some(ca)) = (parse(leaf), parse(ca)) else {
        return false;
    };
    if leaf.issuer().as_raw() != ca.subject().as_raw() {
        return false;
    }
    let aki = leaf
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        });
    let ski = ca
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        });
    match (aki, ski) {
        (Some(a), Some(s)) => a == s,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::Ca;

    #[test]
    fn sans_cover_hosts_and_issuer_matches() {
        let ca = Ca::generate("t").unwrap();
        let other = Ca::generate("t").unwrap();
        let hosts = vec!["HA.example.test".to_owned(), "127.0.0.1".to_owned()];
        let cert = ca.issue_server(&hosts, Duration::from_secs(60)).unwrap();
        let sans = san_hosts(&cert.cert_der);
        assert!(covers(&sans, "ha.example.test") && covers(&sans, "127.0.0.1"));
        assert!(!covers(&sans, "other.example.test"));
        let wild: BTreeSet<String> = ["*.example.test".to_owned()].into();
        assert!(covers(&wild, "ha.example.test") && !covers(&wild, "a.b.example.test"));
        assert!(issued_by(&cert.cert_der, ca.cert_der()));
        assert!(!issued_by(&cert.cert_der, other.cert_der()));
        assert_eq!(key_algorithm(&cert.cert_der), Some(KeyAlgorithm::EcdsaP256));
    }
}
