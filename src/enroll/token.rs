//! The link's secret: 192 random bits as 32 base64url characters. Only its SHA-256 is
//! stored; the token itself exists in the printed URL and QR code, nowhere else.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Error, Result};

/// Random bytes in a token (≥ 128 bits are required; 192 encode without padding).
const TOKEN_BYTES: usize = 24;
const _: () = assert!(
    TOKEN_BYTES * 8 >= 128,
    "a token holds at least 128 random bits"
);
/// Characters in a token's text.
pub const TOKEN_LEN: usize = TOKEN_BYTES * 4 / 3;

/// An enrollment token, as it appears in the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

// Never print a token by accident (a `{:?}` in a log line).
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A fresh token from the operating system's CSPRNG.
    pub fn generate(rng: &dyn SecureRandom) -> Result<Token> {
        let mut bytes = [0u8; TOKEN_BYTES];
        rng.fill(&mut bytes)
            .map_err(|_| Error::pki("enrollment token", "the system random generator failed"))?;
        Ok(Token(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// A token from a URL path segment; `None` unless it is exactly a token's shape.
    pub fn parse(text: &str) -> Option<Token> {
        let shaped = text.len() == TOKEN_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        // 32 characters are exactly 24 bytes: no padding, no spare bits, one spelling.
        (shaped && URL_SAFE_NO_PAD.decode(text).is_ok()).then(|| Token(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token text, lowercase hex: what a record stores and is found by.
    pub fn hash_hex(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

/// Compares two token hashes in constant time.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether `text` has the shape of a token hash (64 lowercase hex digits), so that it is
/// safe as a file or object name.
pub fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;

    #[test]
    fn tokens_are_long_random_and_parse_back() {
        let rng = SystemRandom::new();
        let a = Token::generate(&rng).unwrap();
        let b = Token::generate(&rng).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), TOKEN_LEN);
        assert_eq!(Token::parse(a.as_str()), Some(a.clone()));
        assert!(is_hash(&a.hash_hex()));
        assert!(same_hash(&a.hash_hex(), &a.hash_hex()));
        assert!(!same_hash(&a.hash_hex(), &b.hash_hex()));
        assert!(!same_hash(&a.hash_hex(), ""));
        assert_eq!(format!("{a:?}"), "Token(..)");
    }

    #[test]
    fn only_the_exact_shape_parses() {
        let good = "A".repeat(TOKEN_LEN);
        assert!(Token::parse(&good).is_some());
        for bad in [
            String::new(),
            "A".repeat(TOKEN_LEN - 1),
            "A".repeat(TOKEN_LEN + 1),
            format!("{}=", "A".repeat(TOKEN_LEN - 1)),
            format!("{}+", "A".repeat(TOKEN_LEN - 1)),
            format!("{}/", "A".repeat(TOKEN_LEN - 1)),
            format!("{}é", "A".repeat(TOKEN_LEN - 2)),
            "../".repeat(TOKEN_LEN / 3 + 1)[..TOKEN_LEN].to_owned(),
        ] {
            assert_eq!(Token::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_hash_is_sha256_of_the_text() {
        let t = Token::parse(&"A".repeat(TOKEN_LEN)).unwrap();
        assert_eq!(t.hash_hex(), hex::encode(Sha256::digest("A".repeat(32))));
        assert!(!is_hash(&t.hash_hex().to_uppercase()));
        assert!(!is_hash("../x"));
    }
}
