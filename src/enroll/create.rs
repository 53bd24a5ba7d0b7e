//! Making a link: the token, the one-time password, the wrapped and sealed downloads, and
//! the record to store. The same for every store; only where the record goes differs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SecureRandom;

use super::PREFIX;
use super::bundle::{Binding, Bundle, seal};
use super::password::one_time_password;
use super::record::{EnrollmentRecord, rfc3339};
use super::token::Token;
use crate::pki::mobileconfig::{MobileConfig, mobileconfig};
use crate::pki::{IssuedCert, export_pkcs12};
use crate::resources::Pkcs12Profile;
use crate::{Error, Result};

/// The longest a link may live: it is meant to be used within minutes.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a link is made from.
pub struct NewEnrollment<'a> {
    /// The ClientIdentity's name (its key for the profile's identifiers, too).
    pub identity: &'a str,
    /// The name iOS shows for the profile, e.g. the certificate's common name.
    pub display_name: &'a str,
    /// The identity's current certificate and key.
    pub cert: &'a IssuedCert,
    /// The CA certificate, for the chain in the `.p12`.
    pub ca_cert_der: &'a [u8],
    /// `https://host[:port]` where the gate is reached from the device.
    pub base_url: &'a str,
    /// The route and host the URL names (kept in the record as hints).
    pub route: Option<&'a str>,
    pub host: Option<&'a str>,
    pub ttl: Duration,
    pub now: SystemTime,
}

/// A new link: the record to store and what to show the admin, once.
pub struct Created {
    pub record: EnrollmentRecord,
    /// The link (holds the token).
    pub url: String,
    pub password: String,
    pub expires_at: SystemTime,
}

// The URL and password are secrets: never in debug output.
impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("identity", &self.record.identity)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Checks a `--ttl`: more than nothing, at most [`MAX_TTL`].
pub fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::Config(
            "--ttl must be longer than 0s (e.g. 15m)".into(),
        ));
    }
    if ttl > MAX_TTL {
        return Err(Error::Config(format!(
            "--ttl {} is longer than the 24h maximum: an enrollment link is meant to be used \
             within minutes; create a new one when the device is at hand",
            humantime::format_duration(ttl)
        )));
    }
    Ok(())
}

/// Checks and normalises `--url`: `https://host[:port]`, no path.
pub fn base_url(url: &str) -> Result<String> {
    let trimmed = url.trim().trim_end_matches('/');
    let uri: http::Uri = trimmed
        .parse()
        .map_err(|e| Error::Config(format!("--url {url:?} is not a URL: {e}")))?;
    let path_empty = uri
        .path_and_query()
        .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty());
    if uri.scheme_str() != Some("https") || uri.host().is_none() || !path_empty {
        return Err(Error::Config(format!(
            "--url {url:?} must be https://HOST[:PORT] (the gate serves TLS only; no path), \
             e.g. https://ha.example.com:8443"
        )));
    }
    Ok(trimmed.to_owned())
}

/// Makes a link for `n.identity`: a fresh token and one-time password, the `.p12`
/// (Legacy profile, for iOS) and `.mobileconfig` (password not embedded) wrapped with it,
/// sealed under the token.
pub fn prepare(n: &NewEnrollment<'_>, rng: &dyn SecureRandom) -> Result<Created> {
    check_ttl(n.ttl)?;
    let base = base_url(n.base_url)?;
    // Whole seconds: the record's RFC 3339 text and the ciphertext's binding must agree.
    let expires_at = UNIX_EPOCH
        + Duration::from_secs(
            (n.now + n.ttl)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
    let token = Token::generate(rng)?;
    let password = one_time_password(rng)?;
    let p12 = export_pkcs12(
        n.cert,
        n.ca_cert_der,
        n.display_name,
        &password,
        Pkcs12Profile::Legacy,
    )?;
    let profile = mobileconfig(&MobileConfig {
        identity: n.identity,
        display_name: n.display_name,
        p12: &p12,
        password: None,
    })?;
    let bundle = Bundle {
        p12,
        mobileconfig: profile,
    };
    let binding = Binding {
        identity: n.identity,
        expires_at,
    };
    let record = EnrollmentRecord {
        identity: n.identity.to_owned(),
        route: n.route.map(str::to_owned),
        host: n.host.map(str::to_owned),
        token_hash: token.hash_hex(),
        expires_at: rfc3339(expires_at),
        bundle: seal(&bundle, &token, &binding, rng)?,
    };
    Ok(Created {
        url: format!("{base}{PREFIX}{}", token.as_str()),
        record,
        password,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        assert!(check_ttl(Duration::from_secs(15 * 60)).is_ok());
        assert!(check_ttl(MAX_TTL).is_ok());
        let long = check_ttl(MAX_TTL + Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(long.contains("24h maximum"), "{long}");
        assert!(check_ttl(Duration::ZERO).is_err());
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("https://ha.example.com:8443/").unwrap(),
            "https://ha.example.com:8443"
        );
        assert_eq!(
            base_url("https://[::1]:8443").unwrap(),
            "https://[::1]:8443"
        );
        for bad in [
            "http://ha.example.com",
            "ha.example.com",
            "https://ha.example.com/x",
            "https://",
        ] {
            let e = base_url(bad).unwrap_err().to_string();
            assert!(e.contains("--url"), "{bad}: {e}");
        }
    }
}
