//! When a certificate Portcullis minted must be minted again: one set of rules for the
//! standalone state directory and the Kubernetes controller.
//!
//! ```text
//!  stored cert ──┬─ from another CA? hosts / CN / key type / validity changed? ──▶ re-issue
//!                └─ within renewBefore of notAfter? ────────────────────────────▶ renew
//! ```
//! Re-issuing a device certificate forces its owner to re-import the `.p12`, so only a
//! change of the certificate itself (never of the `.p12` wrapping) triggers it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::CertInfo;
use crate::resources::KeyAlgorithm;
use crate::resources::validate::IdentityTiming;

/// Lifetime of a minted server certificate.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// A server certificate is renewed when it has less than this left.
pub const SERVER_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How far a device certificate's lifetime may differ from `validity` before it counts as
/// changed (issuance backdates `notBefore` by a few minutes).
pub const VALIDITY_TOLERANCE: Duration = Duration::from_secs(10 * 60);

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

/// A host as certificates and routes compare it: lowercase, IP addresses canonical.
pub fn normalize_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// The subjectAltNames of a certificate (DNS names and IP addresses), normalized.
pub fn san_hosts(der: &[u8]) -> BTreeSet<String> {
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
pub fn covers(sans: &BTreeSet<String>, host: &str) -> bool {
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
pub fn key_algorithm(der: &[u8]) -> Option<KeyAlgorithm> {
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
pub fn issued_by(leaf: &[u8], ca: &[u8]) -> bool {
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

/// When a certificate valid until `not_after` is due for renewal.
pub fn renew_at(not_after: SystemTime, renew_before: Duration) -> SystemTime {
    not_after
        .checked_sub(renew_before)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// What the spec asks of a device certificate.
#[derive(Clone, Copy, Debug)]
pub struct ClientWant<'a> {
    /// The subject common name.
    pub common_name: &'a str,
    /// The key type.
    pub key_algorithm: KeyAlgorithm,
    /// Lifetime and renewal window.
    pub timing: IdentityTiming,
}

/// Why a stored device certificate must be replaced, or `None` to keep it. `revoked`: its
/// serial is on the revocation list (the identity was revoked, then reinstated).
pub fn client_reissue_reason(
    cert_der: &[u8],
    info: &CertInfo,
    ca_der: &[u8],
    want: &ClientWant<'_>,
    revoked: bool,
    now: SystemTime,
) -> Option<String> {
    if !issued_by(cert_der, ca_der) {
        return Some("its certificate is from another CA".into());
    }
    if info.common_name.as_deref() != Some(want.common_name) {
        return Some(format!("commonName changed to {}", want.common_name));
    }
    if key_algorithm(cert_der) != Some(want.key_algorithm) {
        return Some("keyAlgorithm changed".into());
    }
    if revoked {
        return Some("its previous certificate is on the revocation list".into());
    }
    let lifetime = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    if lifetime.abs_diff(want.timing.validity) > VALIDITY_TOLERANCE {
        return Some("validity changed".into());
    }
    due(info.not_after, want.timing.renew_before, now)
}

/// Why a stored server certificate must be replaced (hosts changed, another CA, renewal),
/// or `None` to keep it. `hosts` must be normalized ([`normalize_host`]).
pub fn server_reissue_reason(
    cert_der: &[u8],
    info: &CertInfo,
    ca_der: &[u8],
    hosts: &[String],
    now: SystemTime,
) -> Option<String> {
    let want: BTreeSet<String> = hosts.iter().cloned().collect();
    if san_hosts(cert_der) != want {
        return Some("hosts changed".into());
    }
    if !issued_by(cert_der, ca_der) {
        return Some("it is from another CA".into());
    }
    due(info.not_after, SERVER_RENEW_BEFORE, now)
}

fn due(not_after: SystemTime, renew_before: Duration, now: SystemTime) -> Option<String> {
    (now >= renew_at(not_after, renew_before)).then(|| {
        format!(
            "renewal: expires {}",
            humantime::format_rfc3339_seconds(not_after)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    const DAY: Duration = Duration::from_secs(86_400);

    fn timing(validity: Duration, renew_before: Duration) -> IdentityTiming {
        IdentityTiming {
            validity,
            renew_before,
        }
    }

    #[test]
    fn client_rules() {
        let ca = Ca::generate("t").unwrap();
        let c = ca
            .issue_client("phone", KeyAlgorithm::EcdsaP256, 30 * DAY)
            .unwrap();
        let want = ClientWant {
            common_name: "phone",
            key_algorithm: KeyAlgorithm::EcdsaP256,
            timing: timing(30 * DAY, 10 * DAY),
        };
        let now = SystemTime::now();
        let reason = |w: &ClientWant<'_>, revoked, now| {
            client_reissue_reason(&c.cert_der, &c.info, ca.cert_der(), w, revoked, now)
        };
        assert_eq!(reason(&want, false, now), None);
        assert!(reason(&want, true, now).is_some());
        assert!(
            reason(&want, false, now + 21 * DAY)
                .unwrap()
                .starts_with("renewal")
        );
        let cn = ClientWant {
            common_name: "tablet",
            ..want
        };
        assert_eq!(
            reason(&cn, false, now).unwrap(),
            "commonName changed to tablet"
        );
        let alg = ClientWant {
            key_algorithm: KeyAlgorithm::Rsa2048,
            ..want
        };
        assert_eq!(reason(&alg, false, now).unwrap(), "keyAlgorithm changed");
        let val = ClientWant {
            timing: timing(365 * DAY, 30 * DAY),
            ..want
        };
        assert_eq!(reason(&val, false, now).unwrap(), "validity changed");
        let other = Ca::generate("t").unwrap();
        let r = client_reissue_reason(&c.cert_der, &c.info, other.cert_der(), &want, false, now);
        assert_eq!(r.unwrap(), "its certificate is from another CA");
    }

    #[test]
    fn server_rules() {
        let ca = Ca::generate("t").unwrap();
        let hosts = vec!["ha.example.test".to_owned(), "10.0.0.1".to_owned()];
        let s = ca.issue_server(&hosts, SERVER_VALIDITY).unwrap();
        let now = SystemTime::now();
        let reason = |hosts: &[String], now| {
            server_reissue_reason(&s.cert_der, &s.info, ca.cert_der(), hosts, now)
        };
        assert_eq!(reason(&hosts, now), None);
        assert_eq!(reason(&hosts[..1], now).unwrap(), "hosts changed");
        assert!(
            reason(&hosts, now + 61 * DAY)
                .unwrap()
                .starts_with("renewal")
        );
        assert!(covers(&san_hosts(&s.cert_der), "HA.example.test"));
        assert_eq!(normalize_host("HA.Example.TEST"), "ha.example.test");
    }

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
