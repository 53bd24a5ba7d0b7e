//! Names of everything the controller writes: a contract with the data plane, which reads
//! the same Secrets, and with the CLI, which reads device Secrets and creates Enrollments.

/// Field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "portcullis";
/// Reporting controller name on Kubernetes Events.
pub const EVENT_REPORTER: &str = "portcullis-controller";
/// The Lease the controller replicas elect their leader on (operator namespace).
pub const LEASE_NAME: &str = "portcullis-controller";
/// The only finalizer: holds a ClientIdentity's deletion until its serial is on the CRL.
pub const CRL_FINALIZER: &str = "portcullis.dev/crl";

/// Default name of the CA Secret in the operator namespace (`kubernetes.io/tls`).
pub const CA_SECRET: &str = "portcullis-ca";
/// Cookie HMAC keys Secret in the operator namespace.
pub const COOKIE_KEYS_SECRET: &str = "portcullis-cookie-keys";
/// Key of [`COOKIE_KEYS_SECRET`]: newest first, one base64 32-byte key per line (the
/// standalone `cookie-keys` file format).
pub const COOKIE_KEYS_KEY: &str = "cookie-keys";
/// CRL Secret in the operator namespace.
pub const CRL_SECRET: &str = "portcullis-crl";
/// Key of [`CRL_SECRET`] holding the PEM CRL signed by the CA.
pub const CRL_KEY: &str = "crl.pem";
/// Key of [`CRL_SECRET`] holding the revocation ledger: a JSON array of
/// `{"serial": hex, "revokedAt": RFC 3339}`; serials of deleted identities stay on it.
pub const CRL_LEDGER_KEY: &str = "revoked.json";

/// `kubernetes.io/tls` Secret keys.
pub const TLS_CRT: &str = "tls.crt";
/// Private key, PKCS#8 PEM.
pub const TLS_KEY: &str = "tls.key";
/// The CA certificate, PEM: in identity Secrets, and in [`CRL_SECRET`], where the controller
/// publishes a copy of the CA Secret's certificate (never its key) for the data plane.
pub const CA_CRT: &str = "ca.crt";
/// The device's PKCS#12 file (identity Secrets).
pub const KEYSTORE_P12: &str = "keystore.p12";
/// The `.p12` password, exactly, without a newline (identity Secrets).
pub const KEYSTORE_PASSWORD: &str = "keystore.p12.password";
/// Type of CA, server and identity Secrets.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Label on every Secret the controller writes; the controllers watch Secrets by it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "portcullis";
/// Label naming the release (`--instance`) an object belongs to: on a ProtectedRoute or
/// ClientIdentity it assigns the object to that release (see [`crate::resources::Instance`]);
/// every Secret a release writes carries it.
pub const INSTANCE_LABEL: &str = "portcullis.dev/instance";
/// The instance name of a release started without `--instance`.
pub const DEFAULT_INSTANCE: &str = "portcullis";
/// Label a user puts (value `true`) on a Secret named in a ProtectedRoute's
/// `serverCertificate.secretName`: the data plane watches only labelled Secrets, so it
/// caches no Secret of the cluster that it does not serve from.
pub const SERVER_CERTIFICATE_LABEL: &str = "portcullis.dev/server-certificate";
/// Label on an identity Secret naming its ClientIdentity.
pub const IDENTITY_LABEL: &str = "portcullis.dev/identity";
/// Label on a server certificate Secret naming its ProtectedRoute.
pub const ROUTE_LABEL: &str = "portcullis.dev/route";
/// Annotation on an identity Secret: JSON of the spec fields it was minted from.
pub const ISSUED_FOR_ANNOTATION: &str = "portcullis.dev/issued-for";
/// Annotation on the CRL Secret: when `crl.pem` was signed (RFC 3339).
pub const CRL_SIGNED_AT_ANNOTATION: &str = "portcullis.dev/crl-signed-at";
/// Annotation on the CRL Secret: SHA-256 (hex) of the CA certificate that signed it.
pub const CRL_CA_ANNOTATION: &str = "portcullis.dev/crl-ca-sha256";
/// Annotation on the CRL Secret: SHA-256 (hex) of the ledger `crl.pem` lists.
pub const CRL_LEDGER_ANNOTATION: &str = "portcullis.dev/crl-ledger-sha256";

/// The label selector of the Secrets the controller writes.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}

/// The label selector of the Secrets release `instance` writes.
pub fn instance_selector(instance: &str) -> String {
    format!("{},{INSTANCE_LABEL}={instance}", managed_selector())
}

/// The label selector of users' server certificate Secrets.
pub fn server_certificate_selector() -> String {
    format!("{SERVER_CERTIFICATE_LABEL}=true")
}

/// The Secret holding a ClientIdentity's device files, in its namespace.
pub fn identity_secret_name(identity: &str) -> String {
    format!("{identity}-client")
}

/// The Secret holding a ProtectedRoute's minted server certificate, in its namespace.
pub fn route_secret_name(route: &str) -> String {
    format!("{route}-server-tls")
}
