//! Apple configuration profiles (`.mobileconfig`): a device's `.p12` wrapped so that an
//! iPhone, iPad or Mac installs it from Settings (or System Settings) in a few taps.
//!
//! ```text
//!  Configuration  dev.portcullis.identity.<identity>         (replaces itself on renewal)
//!  └ com.apple.security.pkcs12  dev.portcullis.identity.<identity>.pkcs12
//!       PayloadContent = the .p12, Password = only when asked
//! ```
//! Identifiers and UUIDs are derived from the identity alone, so a renewed profile replaces
//! the old one on the device instead of piling up beside it.

use plist::Data;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// What goes into a profile.
pub struct MobileConfig<'a> {
    /// Stable identity key: `alice-iphone` (standalone) or `namespace/name` (Kubernetes).
    /// PayloadIdentifier and PayloadUUIDs are derived from it, so a renewed profile replaces
    /// the old one on the device.
    pub identity: &'a str,
    /// Human name shown by iOS, e.g. the ClientIdentity's commonName.
    pub display_name: &'a str,
    /// A PKCS#12 file (Legacy profile: PBE-SHA1-3DES, SHA-1 MAC — what iOS imports).
    pub p12: &'a [u8],
    /// Embed the .p12 password in the profile (`Password` key); `None`: iOS asks for it at
    /// install.
    pub password: Option<&'a str>,
}

/// The MIME type to serve it with.
pub const MOBILECONFIG_CONTENT_TYPE: &str = "application/x-apple-aspen-config";

/// Reverse-DNS prefix of every profile's PayloadIdentifier.
const IDENTIFIER_PREFIX: &str = "dev.portcullis.identity";

/// The top-level profile. Keys in alphabetical order, as Apple's tools write them.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Profile<'a> {
    payload_content: [Pkcs12Payload<'a>; 1],
    payload_description: String,
    payload_display_name: String,
    payload_identifier: String,
    payload_organization: &'static str,
    payload_removal_disallowed: bool,
    payload_type: &'static str,
    #[serde(rename = "PayloadUUID")]
    payload_uuid: String,
    payload_version: u32,
}

/// The one payload: the identity's `.p12`.
///
/// There is deliberately no `com.apple.security.root` payload for the Portcullis CA. That CA
/// also signs the gate's server certificates, and a root installed by a profile can be
/// switched to full trust (Settings → General → About → Certificate Trust Settings): the
/// device would then accept any certificate the CA key signs, for every site, so whoever
/// held that key (the gate, a backup of its state) could intercept all of its TLS. The
/// client side does not need it: the `.p12` already carries the CA certificate in the chain.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Pkcs12Payload<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    payload_certificate_file_name: String,
    payload_content: Data,
    payload_description: &'static str,
    payload_display_name: &'a str,
    payload_identifier: String,
    payload_type: &'static str,
    #[serde(rename = "PayloadUUID")]
    payload_uuid: String,
    payload_version: u32,
}

/// The `.mobileconfig` (XML plist) bytes.
pub fn mobileconfig(m: &MobileConfig<'_>) -> Result<Vec<u8>> {
    let what = || format!("mobileconfig for {:?}", m.identity);
    let file_stem = check_identity(m.identity).map_err(|reason| Error::pki(what(), reason))?;
    if m.p12.is_empty() {
        return Err(Error::pki(what(), "the PKCS#12 file is empty"));
    }
    if m.password.is_some_and(str::is_empty) {
        // iOS cannot import a password-less .p12, so an empty password is a caller's slip.
        return Err(Error::pki(what(), "the embedded password is empty"));
    }
    let display_name = match m.display_name.trim() {
        "" => m.identity,
        name => name,
    };
    let identifier = payload_identifier(m.identity);
    let pkcs12_identifier = format!("{identifier}.pkcs12");
    let profile = Profile {
        payload_content: [Pkcs12Payload {
            password: m.password,
            payload_certificate_file_name: format!("{file_stem}.p12"),
            payload_content: Data::new(m.p12.to_vec()),
            payload_description: "The client certificate and private key of this device.",
            payload_display_name: display_name,
            payload_uuid: payload_uuid(&pkcs12_identifier),
            payload_identifier: pkcs12_identifier,
            payload_type: "com.apple.security.pkcs12",
            payload_version: 1,
        }],
        payload_description: format!(
            "A client certificate for Portcullis: lets {display_name} through the \
             mutual-TLS gate in front of Home Assistant."
        ),
        payload_display_name: format!("Portcullis: {display_name}"),
        payload_uuid: payload_uuid(&identifier),
        payload_identifier: identifier,
        payload_organization: "Portcullis",
        payload_removal_disallowed: false,
        payload_type: "Configuration",
        payload_version: 1,
    };
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, &profile).map_err(|e| Error::pki(what(), e))?;
    out.push(b'\n');
    Ok(out)
}

/// Checks the identity key and returns its last segment (the name, for the file name).
/// Keys are `name` or `namespace/name` of Kubernetes-style names, so they fit a
/// reverse-DNS PayloadIdentifier once the `/` becomes a `.`.
fn check_identity(identity: &str) -> std::result::Result<&str, &'static str> {
    let segments: Vec<&str> = identity.split('/').collect();
    let valid = |s: &&str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    match segments.as_slice() {
        [.., name] if segments.len() <= 2 && segments.iter().all(valid) => Ok(*name),
        _ => Err("the identity must be NAME or NAMESPACE/NAME of letters, digits, '-' and '.'"),
    }
}

/// `dev.portcullis.identity.<identity>`, with the namespace separator as a dot.
fn payload_identifier(identity: &str) -> String {
    format!("{IDENTIFIER_PREFIX}.{}", identity.replace('/', "."))
}

/// A UUID derived from the identifier: the first 16 bytes of its SHA-256, marked as an
/// RFC 9562 version 8 (custom, name-based) UUID with the RFC variant. Stable, so that
/// the same identity always yields the same profile UUIDs.
fn payload_uuid(identifier: &str) -> String {
    let digest = Sha256::digest(identifier.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10xx
    let h = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use plist::{Dictionary, Value};

    use super::*;

    const P12: &[u8] = b"\x30\x82not-really-a-p12\x00\xff";

    fn profile(identity: &str, password: Option<&str>) -> Dictionary {
        let bytes = mobileconfig(&MobileConfig {
            identity,
            display_name: "Alice's iPhone",
            p12: P12,
            password,
        })
        .unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("<?xml"), "{text}");
        assert!(text.contains("<!DOCTYPE plist"), "{text}");
        Value::from_reader_xml(text.as_bytes())
            .unwrap()
            .into_dictionary()
            .unwrap()
    }

    fn string<'a>(d: &'a Dictionary, key: &str) -> &'a str {
        d.get(key).and_then(Value::as_string).unwrap_or_default()
    }

    fn pkcs12_payload(d: &Dictionary) -> &Dictionary {
        let content = d.get("PayloadContent").and_then(Value::as_array).unwrap();
        assert_eq!(content.len(), 1, "one payload, no root CA: {content:?}");
        content[0].as_dictionary().unwrap()
    }

    fn is_uuid(s: &str) -> bool {
        let groups: Vec<&str> = s.split('-').collect();
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups
                .iter()
                .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
    }

    #[test]
    fn profile_holds_one_pkcs12_payload_with_the_file() {
        let top = profile("alice-iphone", None);
        assert_eq!(string(&top, "PayloadType"), "Configuration");
        assert_eq!(top.get("PayloadVersion"), Some(&Value::from(1)));
        assert_eq!(
            string(&top, "PayloadIdentifier"),
            "dev.portcullis.identity.alice-iphone"
        );
        assert_eq!(
            string(&top, "PayloadDisplayName"),
            "Portcullis: Alice's iPhone"
        );
        assert!(string(&top, "PayloadDescription").contains("client certificate for Portcullis"));
        assert_eq!(
            top.get("PayloadRemovalDisallowed"),
            Some(&Value::Boolean(false))
        );

        let p = pkcs12_payload(&top);
        assert_eq!(string(p, "PayloadType"), "com.apple.security.pkcs12");
        assert_eq!(p.get("PayloadContent").and_then(Value::as_data), Some(P12));
        assert_eq!(string(p, "PayloadCertificateFileName"), "alice-iphone.p12");
        assert_eq!(string(p, "PayloadDisplayName"), "Alice's iPhone");
        assert_eq!(
            string(p, "PayloadIdentifier"),
            "dev.portcullis.identity.alice-iphone.pkcs12"
        );
        assert_eq!(p.get("PayloadVersion"), Some(&Value::from(1)));
        assert!(p.get("Password").is_none(), "iOS asks for it: {p:?}");
        for uuid in [string(&top, "PayloadUUID"), string(p, "PayloadUUID")] {
            assert!(is_uuid(uuid), "{uuid}");
            assert_eq!(&uuid[14..15], "8", "version 8: {uuid}");
            assert!("89AB".contains(&uuid[19..20]), "RFC variant: {uuid}");
        }
        assert_ne!(string(&top, "PayloadUUID"), string(p, "PayloadUUID"));
    }

    #[test]
    fn password_is_embedded_only_when_asked() {
        let top = profile("alice-iphone", Some("k7mqz-4hx2n-pw9ta-3rcuj"));
        let p = pkcs12_payload(&top);
        assert_eq!(string(p, "Password"), "k7mqz-4hx2n-pw9ta-3rcuj");
    }

    #[test]
    fn identifiers_are_stable_per_identity_and_distinct_across_identities() {
        let ids = |identity| {
            let top = profile(identity, None);
            let p = pkcs12_payload(&top);
            [
                string(&top, "PayloadIdentifier").to_owned(),
                string(&top, "PayloadUUID").to_owned(),
                string(p, "PayloadIdentifier").to_owned(),
                string(p, "PayloadUUID").to_owned(),
            ]
        };
        assert_eq!(ids("alice-iphone"), ids("alice-iphone"));
        let (alice, bob) = (ids("alice-iphone"), ids("bob-laptop"));
        for (a, b) in alice.iter().zip(&bob) {
            assert_ne!(a, b);
        }
        let namespaced = ids("home/alice-iphone");
        assert_eq!(namespaced[0], "dev.portcullis.identity.home.alice-iphone");
        assert_ne!(namespaced[1], alice[1]);
        let top = profile("home/alice-iphone", None);
        let file = string(pkcs12_payload(&top), "PayloadCertificateFileName");
        assert_eq!(file, "alice-iphone.p12");
    }

    #[test]
    fn bad_inputs_are_errors_not_broken_profiles() {
        let make = |identity, p12, password| {
            mobileconfig(&MobileConfig {
                identity,
                display_name: "x",
                p12,
                password,
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        for identity in ["", "a/b/c", "/a", "a/", "a b", "a<b>"] {
            let err = make(identity, P12, None).unwrap_err();
            assert!(err.contains("NAMESPACE/NAME"), "{identity:?}: {err}");
        }
        assert!(make("a", b"", None).unwrap_err().contains("empty"));
        assert!(make("a", P12, Some("")).unwrap_err().contains("password"));
    }

    #[test]
    fn display_name_is_escaped_and_defaults_to_the_identity() {
        let bytes = mobileconfig(&MobileConfig {
            identity: "alice-iphone",
            display_name: "<Alice & \"Bob\">",
            p12: P12,
            password: None,
        })
        .unwrap();
        let top = Value::from_reader_xml(bytes.as_slice()).unwrap();
        let top = top.as_dictionary().unwrap();
        assert_eq!(
            string(pkcs12_payload(top), "PayloadDisplayName"),
            "<Alice & \"Bob\">"
        );
        let bytes = mobileconfig(&MobileConfig {
            identity: "alice-iphone",
            display_name: " ",
            p12: P12,
            password: None,
        })
        .unwrap();
        let top = Value::from_reader_xml(bytes.as_slice()).unwrap();
        let name = string(top.as_dictionary().unwrap(), "PayloadDisplayName");
        assert_eq!(name, "Portcullis: alice-iphone");
    }
}
