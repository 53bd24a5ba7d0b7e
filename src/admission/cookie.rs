//! The fallback cookie: `v1.<serial>.<expiry>.<mac>`, where the HMAC-SHA256 also covers
//! the host, so a cookie minted for one route is worthless on another.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;

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
