//! The CA Secret: created once when absent (create, never update), never replaced, and
//! watched so that every reconcile uses the CA it holds now.
//!
//! ```text
//!  bootstrap: GET ──absent──▶ generate ──CREATE──▶ 409 AlreadyExists? ──▶ GET (the winner's CA)
//!  watch (by name) ──▶ CaState (Ready | Missing | Invalid) ──▶ reconcile every object
//! ```
//! A Secret that does not parse is never overwritten: the controller refuses to issue,
//! reports why on every object's Ready condition and with a `CASecretInvalid` Event.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use ring::rand::{SecureRandom, SystemRandom};

use super::apply::{SecretSpec, secret_text};
use super::names::{
    CA_SECRET, COOKIE_KEYS_KEY, COOKIE_KEYS_SECRET, FIELD_MANAGER, TLS_CRT, TLS_KEY,
    TLS_SECRET_TYPE,
};
use super::{Error, Result};
use crate::pki::Ca;

/// Common name of a CA the controller generates.
pub const CA_COMMON_NAME: &str = "Portcullis CA";

/// What the CA Secret holds, as far as issuing is concerned.
#[derive(Clone, Debug)]
pub enum CaState {
    /// Not read yet.
    Unknown,
    /// The Secret does not exist; the message says what to do.
    Missing(String),
    /// The Secret exists but is unusable; the message says why and what to do.
    Invalid(String),
    /// Ready to sign.
    Ready(Arc<Ca>),
}

impl CaState {
    /// The CA, or the condition reason and message explaining why nothing can be issued.
    pub fn ca(&self) -> Result<&Arc<Ca>, (&'static str, String)> {
        match self {
            CaState::Ready(ca) => Ok(ca),
            CaState::Unknown => Err(("CANotReady", "the CA Secret has not been read yet".into())),
            CaState::Missing(m) => Err(("CASecretMissing", m.clone())),
            CaState::Invalid(m) => Err(("CASecretInvalid", m.clone())),
        }
    }

    /// Whether two states would issue the same way (same CA, same problem).
    pub fn same_as(&self, other: &CaState) -> bool {
        match (self, other) {
            (CaState::Ready(a), CaState::Ready(b)) => {
                a.cert_der() == b.cert_der() && a.key_pem() == b.key_pem()
            }
            (CaState::Missing(a), CaState::Missing(b))
            | (CaState::Invalid(a), CaState::Invalid(b)) => a == b,
            (CaState::Unknown, CaState::Unknown) => true,
            _ => false,
        }
    }

    /// The state a CA Secret (or its absence) gives.
    pub fn from_secret(namespace: &str, name: &str, secret: Option<&Secret>) -> CaState {
        let Some(secret) = secret else {
            return CaState::Missing(format!(
                "CA Secret {namespace}/{name} does not exist: create it (tls.crt = the CA \
                 certificate, tls.key = its PKCS#8 key) or restore it from a backup; nothing \
                 is issued until then"
            ));
        };
        let invalid = |reason: String| {
            CaState::Invalid(format!(
                "CA Secret {namespace}/{name} is not usable: {reason}. Portcullis issues nothing \
                 and never overwrites it: fix or restore it (tls.crt = the CA certificate, \
                 tls.key = its PKCS#8 key)"
            ))
        };
        let (Some(cert), Some(key)) = (secret_text(secret, TLS_CRT), secret_text(secret, TLS_KEY))
        else {
            return invalid(format!("it needs text keys {TLS_CRT} and {TLS_KEY}"));
        };
        match Ca::from_pem(cert, key) {
            Ok(ca) => CaState::Ready(Arc::new(ca)),
            Err(e) => invalid(e.to_string()),
        }
    }
}

/// The Secret a new CA is stored in (written by release `instance`).
pub fn ca_secret(namespace: &str, name: &str, ca: &Ca, instance: &str) -> Secret {
    SecretSpec {
        name: name.to_owned(),
        namespace,
        type_: TLS_SECRET_TYPE,
        instance,
        labels: Vec::new(),
        annotations: Vec::new(),
        owner: None,
        data: BTreeMap::from([
            (TLS_CRT.to_owned(), ca.cert_pem().as_bytes().to_vec()),
            (TLS_KEY.to_owned(), ca.key_pem().as_bytes().to_vec()),
        ]),
    }
    .build()
}

/// Reads the CA Secret, creating it with a new CA when absent and `name` is the default.
/// A bring-your-own name that does not exist is reported, not created: a typo must not
/// silently start a second CA.
pub async fn bootstrap(
    client: &Client,
    namespace: &str,
    name: &str,
    instance: &str,
) -> Result<CaState> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(secret) = api.get_opt(name).await? {
        return Ok(CaState::from_secret(namespace, name, Some(&secret)));
    }
    if name != CA_SECRET {
        return Ok(CaState::from_secret(namespace, name, None));
    }
    let ca = Ca::generate(CA_COMMON_NAME)?;
    let secret = ca_secret(namespace, name, &ca, instance);
    match api.create(&post_params(), &secret).await {
        Ok(created) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "created the certificate authority");
            Ok(CaState::from_secret(namespace, name, Some(&created)))
        }
        // Another replica won the race: use its CA, never ours.
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let secret = api.get_opt(name).await?;
            Ok(CaState::from_secret(namespace, name, secret.as_ref()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the cookie keys Secret with one fresh key when absent. An existing one is left
/// alone even when it does not parse: replacing it would log every browser out.
pub async fn ensure_cookie_keys(client: &Client, namespace: &str, instance: &str) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(existing) = api.get_opt(COOKIE_KEYS_SECRET).await? {
        if let Err(e) =
            parse_cookie_keys(secret_text(&existing, COOKIE_KEYS_KEY).unwrap_or_default())
        {
            tracing::error!(secret = %format!("{namespace}/{COOKIE_KEYS_SECRET}"), "cookie keys are unusable: {e}; left unchanged");
        }
        return Ok(());
    }
    let secret = cookie_keys_secret(namespace, &random_key()?, instance);
    match api.create(&post_params(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{COOKIE_KEYS_SECRET}"), "created the cookie keys");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The cookie keys Secret holding `key` (the standalone `cookie-keys` format), written by
/// release `instance`.
pub fn cookie_keys_secret(namespace: &str, key: &[u8; 32], instance: &str) -> Secret {
    SecretSpec {
        name: COOKIE_KEYS_SECRET.to_owned(),
        namespace,
        type_: "Opaque",
        instance,
        labels: Vec::new(),
        annotations: Vec::new(),
        owner: None,
        data: BTreeMap::from([(
            COOKIE_KEYS_KEY.to_owned(),
            format!("{}\n", BASE64.encode(key)).into_bytes(),
        )]),
    }
    .build()
}

/// Parses the cookie keys text: newest first, one base64 32-byte key per line (the
/// standalone `cookie-keys` file format, parsed by the same code).
pub fn parse_cookie_keys(text: &str) -> Result<Vec<[u8; 32]>, String> {
    let origin = format!("key {COOKIE_KEYS_KEY}");
    crate::state::parse_cookie_keys(std::path::Path::new(&origin), text.as_bytes())
        .map_err(|e| e.to_string())
}

fn random_key() -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).map_err(|_| {
        Error::Pki(crate::Error::pki(
            "cookie key",
            "the system random generator failed",
        ))
    })?;
    Ok(key)
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_secret_roundtrips_and_bad_ones_are_reported() {
        let ca = Ca::generate("t").unwrap();
        let secret = ca_secret("ops", CA_SECRET, &ca, "portcullis");
        assert_eq!(secret.type_.as_deref(), Some(TLS_SECRET_TYPE));
        let state = CaState::from_secret("ops", CA_SECRET, Some(&secret));
        assert!(matches!(&state, CaState::Ready(c) if c.cert_der() == ca.cert_der()));
        assert!(state.same_as(&CaState::from_secret("ops", CA_SECRET, Some(&secret))));

        let mut broken = secret.clone();
        broken.data.get_or_insert_default().remove(TLS_KEY);
        let (reason, msg) = CaState::from_secret("ops", "my-ca", Some(&broken))
            .ca()
            .map(|_| ())
            .unwrap_err();
        assert_eq!(reason, "CASecretInvalid");
        assert!(
            msg.contains("ops/my-ca") && msg.contains("never overwrites"),
            "{msg}"
        );

        let other = Ca::generate("t").unwrap();
        let mut mismatched = secret;
        mismatched.data.get_or_insert_default().insert(
            TLS_KEY.into(),
            k8s_openapi::ByteString(other.key_pem().as_bytes().to_vec()),
        );
        assert!(
            matches!(CaState::from_secret("ops", CA_SECRET, Some(&mismatched)), CaState::Invalid(m) if m.contains("does not match"))
        );
        assert!(matches!(
            CaState::from_secret("ops", "x", None).ca(),
            Err(("CASecretMissing", _))
        ));
    }

    #[test]
    fn cookie_keys_use_the_state_file_format() {
        let secret = cookie_keys_secret("ops", &[7; 32], "portcullis");
        let text = secret_text(&secret, COOKIE_KEYS_KEY).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1);
        assert_eq!(parse_cookie_keys(text).unwrap(), vec![[7; 32]]);
        assert!(parse_cookie_keys("").is_err());
        assert!(parse_cookie_keys("AAAA\n").is_err());
    }
}
