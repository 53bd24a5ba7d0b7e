use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A host (or several) served by Portcullis: who may reach which upstream.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "ProtectedRoute",
    namespaced,
    doc = "A host (or several) the Portcullis gate serves over mutual TLS: which devices \
           (ClientIdentities) are let in, and the upstream (e.g. Home Assistant) admitted \
           requests go to. Problems are reported in status.conditions (Ready).",
    status = "ProtectedRouteStatus",
    shortname = "proute",
    category = "portcullis",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Identities","type":"integer","jsonPath":".status.admittedIdentities"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProtectedRouteSpec {
    /// SNI / Host names this route serves, e.g. `ha.example.org`: DNS names or IP
    /// addresses, no port or wildcard.
    #[schemars(length(min = 1), transform = super::schema::hosts)]
    pub hosts: Vec<String>,
    /// Where admitted requests go.
    pub upstream: Upstream,
    /// The certificate the gate presents for these hosts. Default: issued by the Portcullis CA.
    #[serde(default, skip_serializing_if = "ServerCertificate::is_default")]
    pub server_certificate: ServerCertificate,
    /// Which devices are let in, and the cookie that lets certificate-less requests
    /// (Safari WebSockets) of an admitted browser through.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Paths reachable without an identity, e.g. `/api/webhook/` for Home Assistant
    /// webhooks. Empty by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bypass: Vec<BypassRule>,
    /// More request headers the gate removes before the upstream, beside its built-in list
    /// (other proxies' client-certificate headers, forward-auth user headers such as
    /// `X-Forwarded-User` or `Remote-User`): names like `X-Home-User`, or prefixes with a
    /// trailing `*` like `X-Corp-*`. Case and `_`/`-` do not matter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = super::schema::strip_headers)]
    pub strip_headers: Vec<String>,
    /// Forward request headers whose names contain `_`. Default false: they are dropped,
    /// as nginx does, because many stacks read `X_Name` as `X-Name`. Even when true, an
    /// underscore spelling of a header the gate sets or strips is dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_underscore_headers: bool,
    /// Send `Strict-Transport-Security: max-age=31536000` on every response for these
    /// hosts, so a browser that once reached them never tries plain http again. Default:
    /// on for `serverCertificate.acme` routes, off otherwise (a browser keeps it a year:
    /// turn it on only with a certificate phones trust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<bool>,
}

/// The upstream service: a Kubernetes Service (operator) or a URL (standalone); exactly
/// one of the two.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = super::schema::upstream)]
pub struct Upstream {
    /// A Service in the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// A plain `http://host:port` URL, e.g. `http://127.0.0.1:8123`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A Service name and port.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ServiceRef {
    /// Service name.
    pub name: String,
    /// Service port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// Where the server certificate comes from: at most one of `issue`, `secretName`, `files`
/// and `acme` (none means `issue`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = super::schema::server_certificate)]
pub struct ServerCertificate {
    /// Mint it with the Portcullis CA and renew it before expiry (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<IssueSpec>,
    /// Use this `kubernetes.io/tls` Secret instead (e.g. cert-manager / Let's Encrypt);
    /// reloaded when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Standalone only: read the certificate chain and its key from these PEM files, e.g.
    /// the Let's Encrypt or DuckDNS add-on's `/ssl/fullchain.pem` and `/ssl/privkey.pem`;
    /// reloaded when either changes. Refused in Kubernetes (use `secretName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<CertificateFiles>,
    /// Standalone only: a publicly trusted certificate from an ACME CA (Let's Encrypt by
    /// default), obtained and renewed by the gate, so a phone installs only its own
    /// identity. Refused in Kubernetes (use cert-manager and `secretName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeSpec>,
}

impl ServerCertificate {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// Whether the Portcullis CA mints the certificate (neither `secretName` nor `files`):
    /// then a phone does not trust it.
    pub fn is_minted(&self) -> bool {
        self.secret_name.is_none() && self.files.is_none() && self.acme.is_none()
    }

    /// Whether the route sends HSTS when `spec.hsts` is not set: only with a certificate
    /// every browser trusts, since a browser keeps the policy for a year.
    pub fn hsts_by_default(&self) -> bool {
        self.acme.is_some()
    }
}

/// Let's Encrypt's production directory, the default ACME CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// A server certificate from an ACME CA.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeSpec {
    /// Contact address for the ACME account, e.g. `you@example.com`.
    #[schemars(length(min = 3, max = 254))]
    pub email: String,
    /// The ACME directory URL. Default: Let's Encrypt production
    /// (`https://acme-v02.api.letsencrypt.org/directory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub directory: Option<String>,
    /// How the CA checks that this box answers for the hosts: `tls-alpn-01` (default, on
    /// the gate's own TLS port, which must be reachable as port 443) or `http-01` (needs
    /// `--http-listen`, reachable as port 80).
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// A PEM file of the CA(s) that signed the directory's own HTTPS certificate, for a
    /// private ACME server (step-ca, Pebble). Default: the public web's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub ca_file: Option<String>,
    /// Until the first ACME certificate arrives, serve one from the Portcullis CA (phones
    /// warn about it; never click through a warning on an untrusted network). Default
    /// false: the route is not served until its certificate is issued.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_issued_fallback: bool,
}

impl AcmeSpec {
    /// The directory URL, defaulted.
    pub fn directory_url(&self) -> &str {
        self.directory.as_deref().unwrap_or(LETS_ENCRYPT)
    }
}

/// The ACME challenge type.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum AcmeChallenge {
    /// Answered in the TLS handshake on the gate's port (RFC 8737).
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// Answered over plain HTTP by `--http-listen`.
    #[serde(rename = "http-01")]
    Http01,
}

/// A certificate and its key in PEM files (paths relative to the config file's directory).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateFiles {
    /// The certificate chain, leaf first, e.g. `/ssl/fullchain.pem`.
    #[schemars(length(min = 1, max = 4096))]
    pub certificate: String,
    /// The leaf's private key (PKCS#8, SEC1 or PKCS#1 PEM), e.g. `/ssl/privkey.pem`.
    #[schemars(length(min = 1, max = 4096))]
    pub key: String,
}

/// Options for a minted server certificate (none yet).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct IssueSpec {}

/// Client authentication for a route.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuth {
    /// Label selector over ClientIdentities allowed in; empty admits every identity of the
    /// installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_selector: Option<LabelSelector>,
    /// The cookie a certificate-authenticated browser earns for later certificate-less
    /// requests.
    #[serde(default)]
    pub cookie_fallback: CookieFallback,
}

/// The HMAC cookie fallback. Safari/iOS send no client certificate on WebSocket
/// handshakes; this cookie, earned with a certificate, lets them through.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CookieFallback {
    /// Whether certificate-authenticated requests earn a cookie. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a cookie stays valid, e.g. `1h`, `30m`, between 1m and 7d. Default `1h`.
    /// Durations are whole numbers with a unit `d`, `h`, `m` or `s`, e.g. `1h30m`.
    #[serde(default = "default_cookie_ttl")]
    #[schemars(transform = super::schema::duration)]
    pub ttl: String,
    /// Cookie name; must start with `__Host-`. Default `__Host-portcullis`.
    #[serde(default = "default_cookie_name")]
    #[schemars(regex(pattern = r"^__Host-[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"))]
    pub name: String,
}

impl Default for CookieFallback {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: default_cookie_ttl(),
            name: default_cookie_name(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_cookie_ttl() -> String {
    "1h".into()
}
fn default_cookie_name() -> String {
    "__Host-portcullis".into()
}

/// A path reachable without an identity.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BypassRule {
    /// Path prefix, starting with `/`, e.g. `/api/webhook/`.
    #[schemars(regex(pattern = r"^/"))]
    pub path_prefix: String,
    /// HTTP methods allowed on it (e.g. `[POST]`); empty or absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
}

/// Observed state of a ProtectedRoute.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtectedRouteStatus {
    /// `Ready` with a reason and a message a person can act on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Hosts currently served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Number of live identities this route admits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_identities: Option<i64>,
}
