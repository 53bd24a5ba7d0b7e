//! The fallback cookie: `v1.<serial>.<expiry>.<mac>`, where the HMAC-SHA256 also covers
//! the host, so a cookie minted for one route is worthless on another.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::snapshot::CookiePolicy;

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v1";
/// Longest cookie value we bother to parse; ours are ~90 bytes.
const MAX_VALUE_LEN: usize = 256;

/// Why a cookie was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieError {
    /// Malformed, wrong MAC, or minted for another host.
    Invalid,
    Expired,
}

fn mac(key: &[u8; 32], serial: &str, host: &str, expires: u64) -> HmacSha256 {
    // new_from_slice cannot fail for HMAC: any key length is valid.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    // NUL separators: none of the fields can contain one, so the encoding is unambiguous.
    for part in [VERSION, serial, host, &expires.to_string()] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    mac
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Mints a cookie value for the certificate `serial` on `host`, valid until `expires`.
pub fn issue_cookie(key: &[u8; 32], serial: &str, host: &str, expires: SystemTime) -> String {
    let expires = unix(expires);
    let tag = mac(key, serial, host, expires).finalize().into_bytes();
    format!(
        "{VERSION}.{serial}.{expires}.{}",
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// When a cookie minted now should expire: its TTL, but never past the notAfter of the
/// certificate that earned it (whole seconds, as the cookie carries it).
pub fn capped_expiry(wanted: SystemTime, not_after: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix(wanted.min(not_after)))
}

/// The `Set-Cookie` header value for a cookie. `__Host-` names require `Secure`, `Path=/`
/// and no `Domain`; `SameSite=Lax` keeps it off cross-site subrequests.
pub fn set_cookie_header(name: &str, value: &str, ttl: Duration) -> String {
    format!(
        "{name}={value}; Max-Age={}; Path=/; Secure; HttpOnly; SameSite=Lax",
        ttl.as_secs()
    )
}

/// Returns the certificate serial the cookie vouches for.
pub fn verify_cookie(
    keys: &[[u8; 32]],
    value: &str,
    host: &str,
    now: SystemTime,
) -> Result<String, CookieError> {
    verify_cookie_until(keys, value, host, now).map(|(serial, _)| serial)
}

/// Like [`verify_cookie`], also returning when the cookie expires.
pub(super) fn verify_cookie_until(
    keys: &[[u8; 32]],
    value: &str,
    host: &str,
    now: SystemTime,
) -> Result<(String, SystemTime), CookieError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(CookieError::Invalid);
    }
    let mut parts = value.split('.');
    let (Some(VERSION), Some(serial), Some(expires), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(CookieError::Invalid);
    };
    if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CookieError::Invalid);
    }
    let expires: u64 = expires.parse().map_err(|_| CookieError::Invalid)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| CookieError::Invalid)?;
    // verify_slice compares in constant time; try the newest key first.
    let genuine = keys
        .iter()
        .any(|key| mac(key, serial, host, expires).verify_slice(&tag).is_ok());
    if !genuine {
        return Err(CookieError::Invalid);
    }
    // Check expiry only after the MAC, so an attacker learns nothing from the difference.
    let expires_at = UNIX_EPOCH + Duration::from_secs(expires);
    if expires_at <= now {
        return Err(CookieError::Expired);
    }
    Ok((serial.to_owned(), expires_at))
}

/// Every value of cookie `name` in the request's `Cookie` headers (HTTP/2 may split them).
pub fn cookie_values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
        .collect()
}

/// How long one connection may hand out the same minted cookie. Short, so the `Max-Age`
/// it carries stays within a minute of the expiry signed into it.
const REUSE_FOR: Duration = Duration::from_secs(60);

/// Mints `Set-Cookie` values for one client connection, handing out the last one again
/// for up to [`REUSE_FOR`]: a client that never stores the cookie (curl, scripts, API
/// clients) would otherwise cost an HMAC and a few allocations on every request.
#[derive(Debug, Default)]
pub struct CookieMint {
    last: Mutex<Option<Minted>>,
}

#[derive(Debug)]
struct Minted {
    key: [u8; 32],
    serial: String,
    host: String,
    policy: CookiePolicy,
    reuse_until: SystemTime,
    header: HeaderValue,
}

impl CookieMint {
    /// The `Set-Cookie` value for certificate `serial` on `host`, signed with `key`, valid
    /// for the policy's TTL but never past `not_after`, the certificate's.
    pub fn set_cookie(
        &self,
        key: &[u8; 32],
        policy: &CookiePolicy,
        serial: &str,
        host: &str,
        now: SystemTime,
        not_after: SystemTime,
    ) -> Option<HeaderValue> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = last.as_ref()
            && now < m.reuse_until
            && m.key == *key
            && m.serial == serial
            && m.host == host
            && m.policy == *policy
        {
            return Some(m.header.clone());
        }
        let expires = capped_expiry(now + policy.ttl, not_after);
        let left = Duration::from_secs(unix(not_after).saturating_sub(unix(now)));
        let max_age = policy.ttl.min(left);
        let value = issue_cookie(key, serial, host, expires);
        let header = HeaderValue::from_str(&set_cookie_header(&policy.name, &value, max_age));
        // Serials are hex and hosts validated: the value is always valid header text.
        let header = header.ok()?;
        *last = Some(Minted {
            key: *key,
            serial: serial.to_owned(),
            host: host.to_owned(),
            policy: policy.clone(),
            reuse_until: now + REUSE_FOR.min(policy.ttl / 2),
            header: header.clone(),
        });
        Some(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const HOST: &str = "ha.example.com";

    /// A certificate notAfter far beyond every cookie in these tests.
    fn far() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(4_000_000_000)
    }

    fn policy() -> CookiePolicy {
        CookiePolicy {
            name: "__Host-portcullis".into(),
            ttl: Duration::from_secs(3600),
        }
    }

    fn header_value(h: &HeaderValue) -> &str {
        h.to_str().expect("ascii")
    }

    #[test]
    fn minted_cookie_has_the_host_prefix_attributes_and_verifies() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let set = CookieMint::default()
            .set_cookie(&KEY, &policy(), "a1", HOST, now, far())
            .expect("minted");
        let set = header_value(&set);
        let value = set
            .strip_prefix("__Host-portcullis=")
            .and_then(|rest| rest.split_once(';'))
            .map(|(value, _)| value)
            .expect("name=value;");
        assert!(value.starts_with("v1.a1."), "{set}");
        assert!(
            set.ends_with("; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax"),
            "{set}"
        );
        assert!(!set.contains("Domain"));
        assert_eq!(verify_cookie(&[KEY], value, HOST, now), Ok("a1".into()));
        assert_eq!(
            verify_cookie(&[KEY], value, HOST, now + Duration::from_secs(3600)),
            Err(CookieError::Expired)
        );
    }

    #[test]
    fn a_connection_reuses_its_cookie_for_a_minute_and_only_for_the_same_grant() {
        let mint = CookieMint::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = mint.set_cookie(&KEY, &policy(), "a1", HOST, now, far());
        let later = now + Duration::from_secs(59);
        assert_eq!(
            mint.set_cookie(&KEY, &policy(), "a1", HOST, later, far()),
            first
        );

        let minute = now + Duration::from_secs(60);
        assert_ne!(
            mint.set_cookie(&KEY, &policy(), "a1", HOST, minute, far()),
            first
        );
        let again = mint.set_cookie(&KEY, &policy(), "a1", HOST, minute, far());
        // Another serial, host, key or policy is never served a cached value.
        assert_ne!(
            mint.set_cookie(&KEY, &policy(), "b2", HOST, minute, far()),
            again
        );
        let again = mint.set_cookie(&KEY, &policy(), "a1", HOST, minute, far());
        assert_ne!(
            mint.set_cookie(&KEY, &policy(), "a1", "other.example.com", minute, far()),
            again
        );
        let again = mint.set_cookie(&KEY, &policy(), "a1", HOST, minute, far());
        assert_ne!(
            mint.set_cookie(&[8; 32], &policy(), "a1", HOST, minute, far()),
            again
        );
        let again = mint.set_cookie(&KEY, &policy(), "a1", HOST, minute, far());
        let short = CookiePolicy {
            ttl: Duration::from_secs(600),
            ..policy()
        };
        assert_ne!(
            mint.set_cookie(&KEY, &short, "a1", HOST, minute, far()),
            again
        );
    }

    #[test]
    fn a_cookie_never_outlives_the_certificate_that_earned_it() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let not_after = now + Duration::from_secs(600);
        let set = CookieMint::default()
            .set_cookie(&KEY, &policy(), "a1", HOST, now, not_after)
            .expect("minted");
        let set = header_value(&set);
        assert!(set.contains("; Max-Age=600;"), "{set}");
        let value = set
            .strip_prefix("__Host-portcullis=")
            .and_then(|rest| rest.split_once(';'))
            .map(|(value, _)| value)
            .expect("name=value;");
        assert_eq!(
            verify_cookie(&[KEY], value, HOST, not_after - Duration::from_secs(1)),
            Ok("a1".into())
        );
        assert_eq!(
            verify_cookie(&[KEY], value, HOST, not_after),
            Err(CookieError::Expired),
            "signed expiry is the certificate's notAfter"
        );
    }
}
