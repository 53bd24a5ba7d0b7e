//! What a ClientIdentity's Secret should hold, decided without touching the cluster: read
//! the Secret back, decide keep / re-export / re-issue, build the Secret to apply.
//!
//! Re-issuing (a new certificate) forces the owner to re-import on the device, so it
//! happens only when the certificate itself must change (the rules of
//! [`crate::pki::renewal`]); a change of the `.p12` wrapping (profile, password) re-exports
//! the same certificate and key.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use serde::{Deserialize, Serialize};

use super::apply::{SecretSpec, owner_ref, secret_bytes, secret_text};
use super::names::{
    CA_CRT, IDENTITY_LABEL, ISSUED_FOR_ANNOTATION, KEYSTORE_P12, KEYSTORE_PASSWORD, TLS_CRT,
    TLS_KEY, TLS_SECRET_TYPE, identity_secret_name,
};
use super::{Error, Result};
use crate::pki::previous::PREVIOUS_CRT;
use crate::pki::renewal::{ClientWant, client_reissue_reason};
use crate::pki::{
    Ca, IssuedCert, MIN_PASSWORD_LEN, first_cert_der, generate_password, inspect, key_der_from_pem,
    key_for_cert,
};
use crate::resources::{ClientIdentity, KeyAlgorithm, Pkcs12Profile, SecretKeyRef};

/// The `portcullis.dev/issued-for` annotation: the spec fields the Secret was minted from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IssuedFor {
    /// Certificate common name.
    pub common_name: String,
    /// Key type.
    pub key_algorithm: KeyAlgorithm,
    /// Certificate lifetime in seconds.
    pub validity_seconds: u64,
    /// How `keystore.p12` is encrypted.
    pub pkcs12_profile: Pkcs12Profile,
}

/// What the spec asks of the Secret.
#[derive(Clone, Copy, Debug)]
pub struct Want<'a> {
    /// The certificate.
    pub client: ClientWant<'a>,
    /// How `keystore.p12` is encrypted.
    pub profile: Pkcs12Profile,
    /// From `passwordSecretRef`; `None`: keep the one handed out, or generate one.
    pub password: Option<&'a str>,
}

impl Want<'_> {
    /// The annotation a Secret minted for this spec carries.
    pub fn issued_for(&self) -> IssuedFor {
        IssuedFor {
            common_name: self.client.common_name.to_owned(),
            key_algorithm: self.client.key_algorithm,
            validity_seconds: self.client.timing.validity.as_secs(),
            pkcs12_profile: self.profile,
        }
    }
}

/// An identity Secret read back.
pub struct Stored {
    /// Certificate and key (the key checked against the certificate).
    pub cert: IssuedCert,
    /// `ca.crt`.
    pub ca_pem: Option<String>,
    /// `keystore.p12`.
    pub p12: Option<Vec<u8>>,
    /// `keystore.p12.password`.
    pub password: Option<String>,
    /// The annotation, when present and parsable.
    pub issued_for: Option<IssuedFor>,
    /// `previous.crt`: certificates a renewal superseded that a device may still hold.
    pub previous: String,
}

/// Reads an identity Secret; `Err` says why its certificate or key is unusable (it is then
/// re-issued: unlike the CA, a device's credentials are replaceable).
pub fn read_stored(secret: &Secret) -> Result<Stored, String> {
    let cert_pem = secret_text(secret, TLS_CRT).ok_or(format!("{TLS_CRT} is missing"))?;
    let key_pem = secret_text(secret, TLS_KEY).ok_or(format!("{TLS_KEY} is missing"))?;
    let cert_der = first_cert_der(cert_pem).map_err(|e| format!("{TLS_CRT}: {e}"))?;
    let info = inspect(&cert_der).map_err(|e| format!("{TLS_CRT}: {e}"))?;
    key_for_cert(&cert_der, key_pem).map_err(|e| format!("{TLS_KEY}: {e}"))?;
    let key_der = key_der_from_pem(key_pem).map_err(|e| format!("{TLS_KEY}: {e}"))?;
    let issued_for = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ISSUED_FOR_ANNOTATION))
        .and_then(|json| serde_json::from_str(json).ok());
    Ok(Stored {
        cert: IssuedCert {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            key_der,
            info,
        },
        ca_pem: secret_text(secret, CA_CRT).map(str::to_owned),
        p12: secret_bytes(secret, KEYSTORE_P12).map(<[u8]>::to_vec),
        password: secret_text(secret, KEYSTORE_PASSWORD).map(str::to_owned),
        issued_for,
        previous: secret_text(secret, PREVIOUS_CRT)
            .unwrap_or_default()
            .to_owned(),
    })
}

/// What to do with the Secret.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// It is right as it is.
    Keep,
    /// Same certificate and key, new `keystore.p12` (and password), for this reason.
    Reexport(String),
    /// A new certificate, for this reason; `first` when the identity never had one.
    Issue {
        /// Why.
        reason: String,
        /// No certificate existed.
        first: bool,
    },
}

/// Decides between keeping, re-exporting and re-issuing. `revoked`: the stored serial is on
/// the CRL (the identity was revoked, then reinstated).
pub fn plan(
    stored: Option<&Result<Stored, String>>,
    want: &Want<'_>,
    ca: &Ca,
    revoked: bool,
    now: SystemTime,
) -> Plan {
    let s = match stored {
        None => {
            return Plan::Issue {
                reason: "new identity".into(),
                first: true,
            };
        }
        Some(Err(why)) => {
            return Plan::Issue {
                reason: format!("its Secret is unusable ({why})"),
                first: false,
            };
        }
        Some(Ok(s)) => s,
    };
    let c = &s.cert;
    if let Some(reason) = client_reissue_reason(
        &c.cert_der,
        &c.info,
        ca.cert_der(),
        &want.client,
        revoked,
        now,
    ) {
        return Plan::Issue {
            reason,
            first: false,
        };
    }
    let reexport = if s.p12.is_none() {
        Some(format!("{KEYSTORE_P12} is missing"))
    } else if s
        .password
        .as_deref()
        .is_none_or(|p| p.chars().count() < MIN_PASSWORD_LEN)
    {
        Some(format!("{KEYSTORE_PASSWORD} is missing or too short"))
    } else if want
        .password
        .is_some_and(|p| s.password.as_deref() != Some(p))
    {
        Some("the password in passwordSecretRef changed".into())
    } else if s.issued_for.as_ref().map(|f| f.pkcs12_profile) != Some(want.profile) {
        Some("the pkcs12 profile changed".into())
    } else if s.ca_pem.as_deref() != Some(ca.cert_pem()) {
        Some(format!("{CA_CRT} changed"))
    } else if s.issued_for.as_ref() != Some(&want.issued_for()) {
        Some("the spec it was minted from changed".into())
    } else {
        None
    };
    reexport.map_or(Plan::Keep, Plan::Reexport)
}

/// The `.p12` password: the configured one, else the one already handed out, else new.
pub fn password_for(want: &Want<'_>, stored: Option<&Stored>) -> String {
    if let Some(p) = want.password {
        return p.to_owned();
    }
    stored
        .and_then(|s| s.password.clone())
        .filter(|p| p.chars().count() >= MIN_PASSWORD_LEN)
        .unwrap_or_else(generate_password)
}

/// Reads the password `r` points at from its Secret (`None`: the Secret does not exist).
/// `Err` is a condition reason and a message saying what to do.
pub fn password_from_secret(
    namespace: &str,
    r: &SecretKeyRef,
    secret: Option<&Secret>,
) -> Result<String, (&'static str, String)> {
    let (name, key) = (&r.name, &r.key);
    let Some(secret) = secret else {
        return Err((
            "PasswordSecretMissing",
            format!(
                "Secret {namespace}/{name} named by spec.pkcs12.passwordSecretRef does not exist; \
                 create it: kubectl -n {namespace} create secret generic {name} --from-literal={key}=PASSWORD"
            ),
        ));
    };
    let Some(bytes) = secret_bytes(secret, key) else {
        return Err((
            "PasswordSecretMissing",
            format!(
                "Secret {namespace}/{name} has no key {key:?}; add it or fix spec.pkcs12.passwordSecretRef.key"
            ),
        ));
    };
    let text = std::str::from_utf8(bytes).map_err(|_| {
        (
            "PasswordSecretInvalid",
            format!("key {key:?} of Secret {namespace}/{name} is not UTF-8 text"),
        )
    })?;
    // Same rule as standalone password files: one trailing newline is not part of it.
    let password = text.strip_suffix('\n').unwrap_or(text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err((
            "PasswordSecretInvalid",
            format!(
                "the password in Secret {namespace}/{name} key {key:?} has {len} characters; use at \
                 least {MIN_PASSWORD_LEN} (macOS and iOS refuse files with short or empty passwords)"
            ),
        ));
    }
    Ok(password.to_owned())
}

/// The Secret holding a device's files.
pub struct IdentityFiles<'a> {
    /// Certificate and key.
    pub cert: &'a IssuedCert,
    /// The CA certificate, PEM.
    pub ca_pem: &'a str,
    /// The `.p12` file.
    pub p12: &'a [u8],
    /// Its password.
    pub password: &'a str,
    /// What it was minted from.
    pub issued_for: &'a IssuedFor,
    /// Superseded certificates still admitted (`previous.crt`; left out when empty).
    pub previous: &'a str,
}

/// The `<name>-client` Secret for `ci`, owned by it.
pub fn identity_secret(
    ci: &ClientIdentity,
    namespace: &str,
    instance: &str,
    files: &IdentityFiles<'_>,
) -> Result<Secret> {
    let name = ci
        .metadata
        .name
        .as_deref()
        .ok_or(Error::Unnamed("ClientIdentity"))?;
    let issued_for = serde_json::to_string(files.issued_for).map_err(|source| Error::Json {
        what: "the issued-for annotation",
        source,
    })?;
    let mut data = BTreeMap::from([
        (TLS_CRT.to_owned(), files.cert.cert_pem.as_bytes().to_vec()),
        (TLS_KEY.to_owned(), files.cert.key_pem.as_bytes().to_vec()),
        (CA_CRT.to_owned(), files.ca_pem.as_bytes().to_vec()),
        (KEYSTORE_P12.to_owned(), files.p12.to_vec()),
        (
            KEYSTORE_PASSWORD.to_owned(),
            files.password.as_bytes().to_vec(),
        ),
    ]);
    if !files.previous.is_empty() {
        data.insert(PREVIOUS_CRT.to_owned(), files.previous.as_bytes().to_vec());
    }
    Ok(SecretSpec {
        name: identity_secret_name(name),
        namespace,
        type_: TLS_SECRET_TYPE,
        instance,
        labels: vec![(IDENTITY_LABEL, name.to_owned())],
        annotations: vec![(ISSUED_FOR_ANNOTATION, issued_for)],
        owner: owner_ref(ci),
        data,
    }
    .build())
}

#[cfg(test)]
#[path = "identity_plan_tests.rs"]
mod tests;
