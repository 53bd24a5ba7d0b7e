//! The one-time password that wraps the downloads: a few common English words, easy to
//! read off a screen and type on a phone.

use ring::rand::SecureRandom;

use crate::{Error, Result};

/// Words in a one-time password. Each is one of BIP-39's 2048 English words (11 bits), so
/// five give 55 bits: enough for a file that only the browser which claimed the link ever
/// receives, and that stops mattering once the device has imported it.
pub const PASSWORD_WORDS: usize = 5;

/// A fresh one-time password, e.g. `orbit-pledge-canal-umbrella-fossil`: lowercase words
/// (3 to 8 letters, no two sharing their first four) joined by `-`.
pub fn one_time_password(rng: &dyn SecureRandom) -> Result<String> {
    let words = bip39::Language::English.word_list();
    let mut bytes = [0u8; 2 * PASSWORD_WORDS];
    rng.fill(&mut bytes)
        .map_err(|_| Error::pki("one-time password", "the system random generator failed"))?;
    // 2048 divides 65536: the low 11 bits of a uniform u16 pick each word uniformly.
    let picked: Vec<&str> = bytes
        .chunks_exact(2)
        .map(|pair| words[usize::from(u16::from_be_bytes([pair[0], pair[1]]) & 0x7ff)])
        .collect();
    Ok(picked.join("-"))
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;
    use crate::pki::MIN_PASSWORD_LEN;

    #[test]
    fn five_lowercase_words_joined_by_hyphens() {
        let rng = SystemRandom::new();
        let p = one_time_password(&rng).unwrap();
        let words: Vec<&str> = p.split('-').collect();
        assert_eq!(words.len(), PASSWORD_WORDS, "{p}");
        let list = bip39::Language::English.word_list();
        for w in &words {
            assert!(list.contains(w), "{w}");
            assert!(w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
        }
        assert!(p.len() >= MIN_PASSWORD_LEN);
        assert_ne!(p, one_time_password(&rng).unwrap());
    }
}
