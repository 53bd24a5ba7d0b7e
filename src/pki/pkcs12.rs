//! PKCS#12 (`.p12`) files: the one format every phone and browser imports.

use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
    PrivateKeyChain,
};
use rand::seq::SliceRandom;

use super::IssuedCert;
use crate::resources::Pkcs12Profile;
use crate::{Error, Result};

/// Shortest accepted password. macOS and iOS refuse password-less files outright, and a
/// short password over SHA-1 key derivation falls to an offline guess.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Iterations for the legacy profile: what `openssl pkcs12 -legacy` uses, and what older
/// Apple importers are known to accept.
const LEGACY_ITERATIONS: u32 = 2048;
const MODERN_ITERATIONS: u32 = 10_000;

/// Writes the device's key, its certificate and the CA certificate (the full chain) into a
/// password-protected PKCS#12 file.
///
/// - [`Pkcs12Profile::Legacy`]: PBE-SHA1-3DES for the key and the certificates, SHA-1 MAC,
///   2048 iterations. Apple devices reject the AES files OpenSSL 3 writes by default.
/// - [`Pkcs12Profile::Modern`]: PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC), SHA-256 MAC.
pub fn export_pkcs12(
    leaf: &IssuedCert,
    ca_cert_der: &[u8],
    friendly_name: &str,
    password: &str,
    profile: Pkcs12Profile,
) -> Result<Vec<u8>> {
    let what = format!("PKCS#12 file for {friendly_name:?}");
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::pki(
            what,
            format!(
                "the password must be at least {MIN_PASSWORD_LEN} characters \
                 (macOS and iOS refuse files without a password)"
            ),
        ));
    }
    let p12 = |e: p12_keystore::error::Error| Error::pki(&what, e);
    let key = PrivateKey::from_der(&leaf.key_der).map_err(p12)?;
    let certs = [
        Certificate::from_der(&leaf.cert_der).map_err(p12)?,
        Certificate::from_der(ca_cert_der).map_err(p12)?,
    ];
    // The local key id ties the key bag to the leaf's certificate bag; the leaf's
    // fingerprint is unique and stable for the file's lifetime.
    let chain = PrivateKeyChain::new(leaf.info.fingerprint.to_vec(), key, certs);
    let mut store = KeyStore::new();
    store.add_entry(friendly_name, KeyStoreEntry::PrivateKeyChain(chain));

    let writer = store.writer(password);
    let writer = match profile {
        Pkcs12Profile::Legacy => writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .encryption_iterations(LEGACY_ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha1)
            .mac_iterations(LEGACY_ITERATIONS),
        Pkcs12Profile::Modern => writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .encryption_iterations(MODERN_ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha256)
            .mac_iterations(MODERN_ITERATIONS),
    };
    writer.write().map_err(p12)
}

/// Lowercase letters and digits without look-alikes (0/o, 1/l/i): typed by hand on phone
/// keyboards, where case switches and ambiguous glyphs cause most failed imports.
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A fresh `.p12` password: four groups of five characters (about 99 bits) from the OS
/// random generator, e.g. `k7mqz-4hx2n-pw9ta-3rcuj`.
pub fn generate_password() -> String {
    let mut rng = rand::rngs::OsRng;
    let groups: Vec<String> = (0..4)
        .map(|_| {
            (0..5)
                .filter_map(|_| ALPHABET.choose(&mut rng).map(|b| char::from(*b)))
                .collect()
        })
        .collect();
    groups.join("-")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use p12_keystore::Pkcs12ImportPolicy;

    use super::*;
    use crate::pki::Ca;
    use crate::resources::KeyAlgorithm;

    fn device() -> (Ca, IssuedCert) {
        let ca = Ca::generate("Portcullis CA test").unwrap();
        let leaf = ca
            .issue_client("alice", KeyAlgorithm::EcdsaP256, Duration::from_secs(60))
            .unwrap();
        (ca, leaf)
    }

    #[test]
    fn both_profiles_roundtrip_with_full_chain() {
        let (ca, leaf) = device();
        for profile in [Pkcs12Profile::Legacy, Pkcs12Profile::Modern] {
            let pw = generate_password();
            let der = export_pkcs12(&leaf, ca.cert_der(), "alice", &pw, profile).unwrap();
            let store = KeyStore::from_pkcs12(&der, &pw, Pkcs12ImportPolicy::Strict).unwrap();
            let (alias, chain) = store.private_key_chain().unwrap();
            assert_eq!(alias, "alice");
            assert_eq!(chain.key().as_der(), leaf.key_der.as_slice());
            let certs: Vec<&[u8]> = chain.certs().iter().map(|c| c.as_der()).collect();
            assert_eq!(
                certs,
                vec![leaf.cert_der.as_slice(), ca.cert_der()],
                "{profile:?}"
            );
            assert!(
                KeyStore::from_pkcs12(&der, "wrong-password", Pkcs12ImportPolicy::Strict).is_err()
            );
        }
    }

    #[test]
    fn short_or_empty_password_is_refused() {
        let (ca, leaf) = device();
        for pw in ["", "1234567"] {
            let err = export_pkcs12(&leaf, ca.cert_der(), "alice", pw, Pkcs12Profile::Legacy)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("\"alice\"") && err.contains("at least 8"),
                "{err}"
            );
        }
    }

    #[test]
    fn generated_passwords_are_long_unambiguous_and_distinct() {
        let a = generate_password();
        assert_eq!(a.len(), 23);
        assert!(
            a.chars().all(|c| c == '-' || ALPHABET.contains(&(c as u8))),
            "{a}"
        );
        assert!(!a.contains(['0', 'o', '1', 'l', 'i']));
        assert_ne!(a, generate_password());
    }
}
