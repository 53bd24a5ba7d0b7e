//! The claim cookie: what lets the browser that claimed a link (and only it) fetch the
//! downloads for a few minutes.
//!
//! `e1.<expiry>.<mac>`, where the MAC is HMAC-SHA256 over a purpose string, the token's
//! hash and the expiry, keyed by HKDF(newest cookie key, this purpose). The admission
//! cookie (`v1.<serial>.<expiry>.<mac>`) is keyed by the cookie key itself over other
//! fields: neither cookie verifies as the other, and this one is also scoped by `Path` to
//! one link's URLs, which the gate answers itself and never forwards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{hkdf, hmac};

/// The cookie's name. `__Secure-`: browsers accept it only over HTTPS with `Secure`.
/// Not `__Host-`: that prefix requires `Path=/`, and this cookie must stay on one link.
pub const CLAIM_COOKIE: &str = "__Secure-portcullis-enroll";
/// How long the claiming browser may fetch the downloads.
pub const CLAIM_TTL: Duration = Duration::from_secs(10 * 60);

const VERSION: &str = "e1";
/// The MAC's purpose: never the admission cookie's.
const PURPOSE: &[u8] = b"portcullis enrollment claim cookie v1";
const SALT: &[u8] = b"portcullis cookie key purposes";
/// Longest value parsed; ours are ~60 bytes.
const MAX_VALUE_LEN: usize = 128;

/// The claim-cookie key derived from one cookie key (the ring's newest signs).
fn key(cookie_key: &[u8; 32]) -> Option<hmac::Key> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(cookie_key);
    let okm = prk.expand(&[PURPOSE], hmac::HMAC_SHA256).ok()?;
    Some(hmac::Key::from(okm))
}

fn message(token_hash: &str, expires: u64) -> Vec<u8> {
    // NUL separators: no field can hold one, so the encoding is unambiguous.
    let mut m = PURPOSE.to_vec();
    for part in [token_hash.as_bytes(), expires.to_string().as_bytes()] {
        m.push(0);
        m.extend_from_slice(part);
    }
    m
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A claim-cookie value for the link whose token hashes to `token_hash`.
pub fn issue(cookie_key: &[u8; 32], token_hash: &str, expires: SystemTime) -> Option<String> {
    let expires = unix(expires);
    let tag = hmac::sign(&key(cookie_key)?, &message(token_hash, expires));
    Some(format!(
        "{VERSION}.{expires}.{}",
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    ))
}

/// Whether `value` is a live claim cookie for `token_hash` under any of `keys`.
pub fn verify(keys: &[[u8; 32]], value: &str, token_hash: &str, now: SystemTime) -> bool {
    if value.len() > MAX_VALUE_LEN {
        return false;
    }
    let mut parts = value.split('.');
    let (Some(VERSION), Some(expires), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(expires), Ok(tag)) = (expires.parse::<u64>(), URL_SAFE_NO_PAD.decode(tag)) else {
        return false;
    };
    let msg = message(token_hash, expires);
    // hmac::verify compares in constant time.
    let genuine = keys
        .iter()
        .filter_map(key)
        .any(|k| hmac::verify(&k, &msg, &tag).is_ok());
    genuine && now < UNIX_EPOCH + Duration::from_secs(expires)
}

/// The `Set-Cookie` value: host-only (no `Domain`), HTTPS-only, out of reach of scripts,
/// never sent on cross-site requests, and only to `path` (the link's own URLs).
pub fn set_cookie_header(value: &str, path: &str) -> String {
    format!(
        "{CLAIM_COOKIE}={value}; Path={path}; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        CLAIM_TTL.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::verify_cookie;

    const KEY: [u8; 32] = [7; 32];
    const OTHER: [u8; 32] = [8; 32];

    fn hash(n: u8) -> String {
        hex::encode([n; 32])
    }

    #[test]
    fn verifies_for_its_token_until_expiry_under_any_ring_key() {
        let now = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let v = issue(&KEY, &hash(1), now + CLAIM_TTL).unwrap();
        assert!(verify(&[KEY], &v, &hash(1), now));
        assert!(verify(&[OTHER, KEY], &v, &hash(1), now), "after a rotation");
        assert!(!verify(&[OTHER], &v, &hash(1), now));
        assert!(!verify(&[KEY], &v, &hash(2), now), "another link");
        assert!(!verify(&[KEY], &v, &hash(1), now + CLAIM_TTL));
        let forged = v.replace(".1900000600.", ".1900009999.");
        assert_ne!(forged, v);
        assert!(!verify(&[KEY], &forged, &hash(1), now));
        for junk in ["", "e1", "e1..", "e1.1.x.y", &"e1.1.".repeat(40)] {
            assert!(!verify(&[KEY], junk, &hash(1), now), "{junk:?}");
        }
    }

    #[test]
    fn never_an_admission_cookie() {
        let now = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let v = issue(&KEY, &hash(1), now + CLAIM_TTL).unwrap();
        for host in ["ha.test", "", &hash(1)] {
            assert!(verify_cookie(&[KEY], &v, host, now).is_err());
        }
        // Nor the other way round: an admission cookie is no claim.
        let admission = crate::admission::issue_cookie(&KEY, "01ab", "ha.test", now + CLAIM_TTL);
        assert!(!verify(&[KEY], &admission, &hash(1), now));
    }

    #[test]
    fn header_scopes_the_cookie() {
        let h = set_cookie_header("e1.1.x", "/.well-known/portcullis/enroll/T");
        assert_eq!(
            h,
            "__Secure-portcullis-enroll=e1.1.x; Path=/.well-known/portcullis/enroll/T; \
             Max-Age=600; Secure; HttpOnly; SameSite=Strict"
        );
    }
}
