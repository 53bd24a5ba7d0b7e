use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One device (a phone, a laptop, a tablet) and its client certificate.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "ClientIdentity",
    namespaced,
    doc = "One device (a phone, a laptop, a tablet) allowed through the Portcullis gate: the \
           operator issues its client certificate and keeps it renewed, and writes the .p12 \
           file to the Secret named in status.secretName. Set spec.revoked to lock it out.",
    status = "ClientIdentityStatus",
    shortname = "cid",
    category = "portcullis",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Revoked","type":"boolean","jsonPath":".spec.revoked"}"#,
    // A string, as cert-manager does: kubectl renders a future `date` as `<invalid>`.
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Serial","type":"string","priority":1,"jsonPath":".status.serialNumber"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClientIdentitySpec {
    /// Certificate subject common name, at most 64 characters. Default: the resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::schema::common_name)]
    pub common_name: Option<String>,
    /// Certificate lifetime, at least 1h, e.g. `365d`. Default `365d`. Durations are whole
    /// numbers with a unit `d`, `h`, `m` or `s`, e.g. `90d`, `1h30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::schema::duration)]
    pub validity: Option<String>,
    /// Re-issue this long before expiry, e.g. `30d`. Default: a third of the validity,
    /// at most 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::schema::duration)]
    pub renew_before: Option<String>,
    /// Key type: `ECDSA-P256` (default) or RSA for old devices.
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
    /// The PKCS#12 (.p12) file handed to the device.
    #[serde(default)]
    pub pkcs12: Pkcs12Spec,
    /// A revoked identity is locked out at once: new handshakes, cookies and open
    /// connections.
    #[serde(default)]
    pub revoked: bool,
}

/// Client key algorithm.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 (default): small and fast.
    #[default]
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
    /// RSA 2048-bit, for old devices.
    #[serde(rename = "RSA-2048")]
    Rsa2048,
    /// RSA 3072-bit.
    #[serde(rename = "RSA-3072")]
    Rsa3072,
}

/// How the .p12 file is written.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pkcs12Spec {
    /// `Legacy` (PBE-SHA1-3DES, SHA-1 MAC; what iPhones, Macs and older Android import)
    /// or `Modern` (AES-256-CBC, PBKDF2-HMAC-SHA256, SHA-256 MAC).
    #[serde(default)]
    pub profile: Pkcs12Profile,
    /// Secret key holding the .p12 password; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

/// PKCS#12 encryption profile.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Pkcs12Profile {
    /// PBE-SHA1-3DES keys and certificates, SHA-1 MAC: Apple devices need this.
    #[default]
    Legacy,
    /// PBES2 AES-256-CBC with PBKDF2-HMAC-SHA256, SHA-256 MAC.
    Modern,
}

/// A key in a Secret (standalone mode: a file path in `name`, relative to the config).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key in the Secret. Default `password`.
    #[serde(default = "default_password_key")]
    pub key: String,
}

fn default_password_key() -> String {
    "password".into()
}

/// Observed state of a ClientIdentity.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientIdentityStatus {
    /// Serial number of the current certificate (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// SHA-256 fingerprint of the current certificate (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
    /// Start of the certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// End of the certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// The Secret holding the device's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Ready / Revoked / ExpiringSoon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the device was last admitted (coarse: written by the data plane at most once
    /// a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// Certificates a renewal superseded that the device may still hold: each stays
    /// admitted until its notAfter or until the identity is revoked or deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<PreviousCertificate>,
    /// Which certificates the device was admitted with, and when last (written by the data
    /// plane, at most once a minute per identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<SeenCertificate>,
}

/// A superseded certificate still admitted.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousCertificate {
    /// Serial number (hex).
    pub serial_number: String,
    /// End of its validity: it is admitted until then.
    pub not_after: Time,
}

/// When the device last presented one of its certificates (or a cookie it earned).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeenCertificate {
    /// Serial number (hex).
    pub serial_number: String,
    /// Last admission with it (coarse).
    pub last_seen: Time,
}
