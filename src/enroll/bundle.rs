//! The downloads, sealed: the `.p12` and `.mobileconfig` (both wrapped with the one-time
//! password) encrypted with AES-256-GCM under a key derived from the token (HKDF-SHA256).
//! The store holds only the ciphertext and the token's hash, so whoever reads the store
//! (a backup, a Kubernetes user allowed to read Enrollments) learns nothing usable.
//!
//! ```text
//!  sealed = base64( 0x01 ‖ nonce[12] ‖ AES-256-GCM(key, nonce, aad, json{p12, mobileconfig}) )
//!  key    = HKDF-SHA256(salt = "portcullis enrollment bundle", ikm = token, info = "v1 key")
//!  aad    = identity ‖ 0 ‖ expiresAt (unix seconds)
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use super::token::Token;
use crate::{Error, Result};

const VERSION: u8 = 1;
const SALT: &[u8] = b"portcullis enrollment bundle";
const INFO: &[u8] = b"v1 key";

/// What a device downloads.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// PKCS#12, Legacy profile, wrapped with the one-time password.
    #[serde(with = "b64")]
    pub p12: Vec<u8>,
    /// Apple configuration profile holding the same `.p12`, password not embedded.
    #[serde(with = "b64")]
    pub mobileconfig: Vec<u8>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("p12", &self.p12.len())
            .field("mobileconfig", &self.mobileconfig.len())
            .finish()
    }
}

/// What the ciphertext is bound to: moving it to another identity's record, or extending
/// the record's expiry, makes it fail to open.
pub struct Binding<'a> {
    pub identity: &'a str,
    pub expires_at: SystemTime,
}

impl Binding<'_> {
    fn aad(&self) -> Vec<u8> {
        let secs = self
            .expires_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut aad = self.identity.as_bytes().to_vec();
        aad.push(0);
        aad.extend_from_slice(secs.to_string().as_bytes());
        aad
    }
}

fn key(token: &Token) -> Result<LessSafeKey> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(token.as_str().as_bytes());
    let okm = prk
        .expand(&[INFO], &AES_256_GCM)
        .map_err(|_| Error::pki("enrollment bundle", "key derivation failed"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Encrypts `bundle` for `token`; the result is the record's `bundle` field.
pub fn seal(
    bundle: &Bundle,
    token: &Token,
    binding: &Binding<'_>,
    rng: &dyn SecureRandom,
) -> Result<String> {
    let what = "enrollment bundle";
    let mut plain =
        serde_json::to_vec(bundle).map_err(|e| Error::pki(what, format!("cannot encode: {e}")))?;
    // One encryption per token-derived key: a random nonce cannot repeat under it.
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce)
        .map_err(|_| Error::pki(what, "the system random generator failed"))?;
    key(token)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(binding.aad()),
            &mut plain,
        )
        .map_err(|_| Error::pki(what, "encryption failed"))?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plain.len());
    sealed.push(VERSION);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&plain);
    Ok(BASE64.encode(sealed))
}

/// Decrypts a record's `bundle` with the token from the URL. `None` for anything that does
/// not open: a wrong token, a tampered or moved record, an unknown format.
pub fn open(sealed: &str, token: &Token, binding: &Binding<'_>) -> Option<Bundle> {
    let bytes = BASE64.decode(sealed).ok()?;
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION || rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = ciphertext.to_vec();
    let plain = key(token)
        .ok()?
        .open_in_place(nonce, Aad::from(binding.aad()), &mut buf)
        .ok()?;
    serde_json::from_slice(plain).ok()
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ring::rand::SystemRandom;

    use super::*;

    fn sample() -> Bundle {
        Bundle {
            p12: vec![1, 2, 3, 0, 255],
            mobileconfig: b"<plist/>".to_vec(),
        }
    }

    #[test]
    fn seals_and_opens_only_with_the_same_token_and_binding() {
        let rng = SystemRandom::new();
        let token = Token::generate(&rng).unwrap();
        let other = Token::generate(&rng).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let binding = Binding {
            identity: "alice",
            expires_at: at,
        };
        let sealed = seal(&sample(), &token, &binding, &rng).unwrap();
        assert_eq!(open(&sealed, &token, &binding), Some(sample()));
        // Nothing of the plaintext shows.
        assert!(!sealed.contains("PGxpc3Q"), "{sealed}");

        assert_eq!(open(&sealed, &other, &binding), None);
        let moved = Binding {
            identity: "mallory",
            expires_at: at,
        };
        assert_eq!(open(&sealed, &token, &moved), None);
        let extended = Binding {
            identity: "alice",
            expires_at: at + Duration::from_secs(3600),
        };
        assert_eq!(open(&sealed, &token, &extended), None);
    }

    #[test]
    fn damaged_ciphertext_does_not_open() {
        let rng = SystemRandom::new();
        let token = Token::generate(&rng).unwrap();
        let binding = Binding {
            identity: "a",
            expires_at: UNIX_EPOCH,
        };
        let sealed = seal(&sample(), &token, &binding, &rng).unwrap();
        let mut bytes = BASE64.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(open(&BASE64.encode(&bytes), &token, &binding), None);
        bytes[0] = 2;
        assert_eq!(open(&BASE64.encode(&bytes), &token, &binding), None);
        for junk in ["", "AQ==", "not base64!"] {
            assert_eq!(open(junk, &token, &binding), None);
        }
    }

    #[test]
    fn two_seals_of_the_same_bundle_differ() {
        let rng = SystemRandom::new();
        let token = Token::generate(&rng).unwrap();
        let binding = Binding {
            identity: "a",
            expires_at: UNIX_EPOCH,
        };
        let a = seal(&sample(), &token, &binding, &rng).unwrap();
        let b = seal(&sample(), &token, &binding, &rng).unwrap();
        assert_ne!(a, b);
    }
}
