//! The immutable view the data plane reads: routes, live identities, trust and cookie keys.
//!
//! Sources (the standalone file watcher, Kubernetes watches) build a [`Snapshot`] from
//! resources and publish it on a `watch` channel. The proxy never mutates it: a reload is a
//! new snapshot, so a half-applied configuration cannot exist.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;
use http::uri::Authority;
use kube::core::{Selector, SelectorExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// SHA-256 of a certificate's DER.
pub type Fingerprint = [u8; 32];

/// Hashes a certificate the way the snapshot indexes it.
pub fn fingerprint(cert_der: &[u8]) -> Fingerprint {
    Sha256::digest(cert_der).into()
}

/// A device certificate that may be admitted: issued by the CA, its ClientIdentity
/// present and not revoked, its serial not on the revocation ledger. An identity has one
/// per certificate a device may still hold: the current one and those a renewal
/// superseded, each until its own notAfter.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveCert {
    /// The ClientIdentity's name (`namespace/name` in Kubernetes).
    pub identity: String,
    /// Certificate serial, lowercase hex: what cookies carry.
    pub serial_hex: String,
    pub fingerprint: Fingerprint,
    /// The ClientIdentity's labels, matched by routes' identity selectors.
    pub labels: BTreeMap<String, String>,
    /// The certificate's notAfter: neither it nor a cookie it earned is admitted past
    /// this instant, whether or not a new snapshot arrives.
    pub not_after: SystemTime,
}

impl LiveCert {
    /// Whether the certificate is within its validity at `now` (notAfter is inclusive,
    /// as in X.509 and the TLS verifier).
    pub fn valid_at(&self, now: SystemTime) -> bool {
        now <= self.not_after
    }
}

/// The cookie a certificate-authenticated request earns on a route.
#[derive(Debug, Clone, PartialEq)]
pub struct CookiePolicy {
    pub name: String,
    pub ttl: Duration,
}

/// A path reachable without an identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Bypass {
    pub path_prefix: String,
    /// Empty: every method.
    pub methods: Vec<Method>,
}

/// One ProtectedRoute, resolved: no defaults or strings left to interpret.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Lowercase host names, no port.
    pub hosts: Vec<String>,
    /// `host:port` of the plain-HTTP upstream.
    pub upstream: Authority,
    /// `None` admits every live identity.
    pub selector: Option<Selector>,
    /// `None`: cookie fallback off.
    pub cookie: Option<CookiePolicy>,
    pub bypass: Vec<Bypass>,
    /// Which client request headers never reach the upstream beyond the built-in ones.
    pub headers: HeaderPolicy,
    /// Every response for these hosts carries [`HSTS`], replacing the upstream's own.
    pub hsts: bool,
}

/// The `Strict-Transport-Security` value a route with `hsts` sends: a year, and nothing
/// about subdomains, since other names under a home domain may still be plain http.
pub const HSTS: &str = "max-age=31536000";

/// A route's additions to the request headers the gate strips (`stripHeaders`,
/// `allowUnderscoreHeaders`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderPolicy {
    /// More names to strip, folded (lowercase, `_` as `-`).
    pub strip: Vec<HeaderPattern>,
    /// Forward names containing `_` (dropped by default, as nginx does).
    pub allow_underscores: bool,
}

/// A header name, or a name prefix (written with a trailing `*`).
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderPattern {
    /// Folded: lowercase, `_` written as `-`.
    pub name: String,
    /// Matches every name starting with `name`.
    pub prefix: bool,
}

impl HeaderPattern {
    /// Parses `X-Name` or `X-Prefix-*`; the caller has validated the name.
    pub fn parse(pattern: &str) -> HeaderPattern {
        let (name, prefix) = match pattern.strip_suffix('*') {
            Some(name) => (name, true),
            None => (pattern, false),
        };
        let name = name
            .bytes()
            .map(|b| char::from(fold(b)))
            .collect::<String>();
        HeaderPattern { name, prefix }
    }
}

/// A header-name byte as the gate compares names: lowercase, with `_` read as `-`, the
/// way CGI/WSGI-style stacks read them.
pub const fn fold(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

impl Route {
    /// Whether this route lets the holder of `cert` in.
    pub fn admits(&self, cert: &LiveCert) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.matches(&cert.labels))
    }
}

/// A route together with the server certificate it presents.
pub struct RouteSource {
    pub route: Route,
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Everything a source gathers to build a snapshot.
pub struct SnapshotParts {
    /// Trust anchors for client certificates (the installation's CA).
    pub client_ca: Vec<CertificateDer<'static>>,
    pub routes: Vec<RouteSource>,
    pub live: Vec<LiveCert>,
    /// Newest first: sign with `[0]`, accept all.
    pub cookie_keys: Vec<[u8; 32]>,
}

/// The data plane's whole world at one instant.
pub struct Snapshot {
    pub generation: u64,
    routes: Vec<Arc<Route>>,
    route_by_host: HashMap<String, usize>,
    live_by_fingerprint: HashMap<Fingerprint, Arc<LiveCert>>,
    live_by_serial: HashMap<String, Arc<LiveCert>>,
    cookie_keys: Vec<[u8; 32]>,
    tls: Arc<ServerConfig>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("routes", &self.routes.len())
            .field("live", &self.live_by_serial.len())
            .finish()
    }
}

impl Snapshot {
    /// Validates and indexes `parts`. Fails (and the caller keeps its previous snapshot)
    /// when a host is claimed twice, a key does not fit, or no cookie key exists.
    pub fn build(parts: SnapshotParts, generation: u64) -> Result<Snapshot> {
        let SnapshotParts {
            client_ca,
            routes: sources,
            live,
            cookie_keys,
        } = parts;
        if cookie_keys.is_empty() {
            return Err(Error::Config(
                "no cookie key: the cookie-keys ring is empty".into(),
            ));
        }
        let provider = Arc::new(provider());
        let mut certs = SniResolver::default();
        let mut routes = Vec::with_capacity(sources.len());
        let mut route_by_host = HashMap::new();
        for (index, source) in sources.into_iter().enumerate() {
            let key = provider
                .key_provider
                .load_private_key(source.key)
                .map_err(|e| Error::Tls {
                    what: format!("route {}: server key", source.route.name),
                    source: e,
                })?;
            let certified = Arc::new(CertifiedKey::new(source.cert_chain, key));
            for host in &source.route.hosts {
                if let Some(other) = route_by_host.insert(host.clone(), index) {
                    let other: &Arc<Route> = &routes[other];
                    return Err(Error::Config(format!(
                        "host {host} is served by both route {} and route {}; give each host one route",
                        other.name, source.route.name
                    )));
                }
                certs.by_host.insert(host.clone(), certified.clone());
            }
            certs.fallback.get_or_insert(certified);
            routes.push(Arc::new(source.route));
        }

        let live: Vec<Arc<LiveCert>> = live.into_iter().map(Arc::new).collect();
        let live_by_fingerprint = live.iter().map(|c| (c.fingerprint, c.clone())).collect();
        let live_by_serial = live
            .iter()
            .map(|c| (c.serial_hex.clone(), c.clone()))
            .collect();

        let verifier = LiveCertVerifier::new(client_ca, &live, provider.clone())?;
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Tls {
                what: "protocol versions".into(),
                source: e,
            })?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(certs));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tls.ignore_client_order = true;
        // One resumption ticket per handshake, not rustls' two: a browser resumes one
        // connection and multiplexes over it, and each ticket is a cache entry + a record.
        tls.send_tls13_tickets = 1;

        Ok(Snapshot {
            generation,
            routes,
            route_by_host,
            live_by_fingerprint,
            live_by_serial,
            cookie_keys,
            tls: Arc::new(tls),
        })
    }

    /// The route serving `host` (lowercase, no port).
    pub fn route(&self, host: &str) -> Option<&Arc<Route>> {
        self.route_by_host.get(host).map(|&i| &self.routes[i])
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn live_by_fingerprint(&self, fp: &Fingerprint) -> Option<&Arc<LiveCert>> {
        self.live_by_fingerprint.get(fp)
    }

    pub fn live_by_serial(&self, serial_hex: &str) -> Option<&Arc<LiveCert>> {
        self.live_by_serial.get(serial_hex)
    }

    pub fn live_count(&self) -> usize {
        self.live_by_serial.len()
    }

    /// Newest first.
    pub fn cookie_keys(&self) -> &[[u8; 32]] {
        &self.cookie_keys
    }

    /// The TLS configuration for new connections.
    pub fn tls(&self) -> &Arc<ServerConfig> {
        &self.tls
    }
}

impl Snapshot {
    /// Every live certificate.
    pub fn live(&self) -> impl Iterator<Item = &Arc<LiveCert>> {
        self.live_by_serial.values()
    }

    /// Every live certificate of `identity` (a renewal can leave more than one).
    pub fn live_of<'a>(&'a self, identity: &'a str) -> impl Iterator<Item = &'a Arc<LiveCert>> {
        self.live().filter(move |cert| cert.identity == identity)
    }
}

/// ring, with TLS 1.3 suites in the server's order of preference: AES-128-GCM and
/// ChaCha20 run a SHA-256 key schedule, cheaper than AES-256-GCM's SHA-384 on CPUs
/// without SHA-512 instructions, at no loss of security that matters here.
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        id if id == suite::TLS13_AES_128_GCM_SHA256.suite() => 0,
        id if id == suite::TLS13_CHACHA20_POLY1305_SHA256.suite() => 1,
        id if id == suite::TLS13_AES_256_GCM_SHA384.suite() => 2,
        _ => 3,
    };
    provider.cipher_suites.sort_by_key(rank);
    provider
}

/// Picks the server certificate by SNI; clients without SNI (an IP address in the URL)
/// get the first route's certificate.
#[derive(Debug, Default)]
struct SniResolver {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            // rustls lowercases nothing: SNI is case-insensitive.
            Some(name) => self
                .by_host
                .get(name)
                .or_else(|| self.by_host.get(&name.to_ascii_lowercase()))
                .or(self.fallback.as_ref())
                .cloned(),
            None => self.fallback.clone(),
        }
    }
}

/// Client-certificate check: a chain to the CA (webpki) *and* a certificate on the
/// allowlist of live identities. A certificate the CA signed for an identity that was
/// since revoked or deleted fails the handshake, so no CRL lookup is needed on the hot
/// path; the CRL is still published for other software.
///
/// The chain check of an allowlisted certificate is done once per snapshot: the
/// allowlist pins the certificate's exact bytes (SHA-256), so the CA's signature on them
/// cannot change; only the validity window is re-checked per handshake. That is a quarter
/// of a handshake's CPU (see BENCHMARKS.md). The client still proves its key in every
/// handshake (CertificateVerify).
#[derive(Debug)]
struct LiveCertVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    live: std::collections::HashSet<Fingerprint>,
    /// Live certificates whose chain verified, with their notAfter.
    verified: std::sync::RwLock<HashMap<Fingerprint, UnixTime>>,
}

impl LiveCertVerifier {
    fn new(
        roots: Vec<CertificateDer<'static>>,
        live: &[Arc<LiveCert>],
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root).map_err(|e| Error::Tls {
                what: "client CA certificate".into(),
                source: e,
            })?;
        }
        let chain = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            // Certificate-less requests must reach admission (cookie, bypass, 403 page).
            .allow_unauthenticated()
            // Revocation is the allowlist below, not a CRL.
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| Error::Config(format!("client certificate verifier: {e}")))?;
        Ok(Self {
            chain,
            live: live.iter().map(|c| c.fingerprint).collect(),
            verified: Default::default(),
        })
    }

    /// The notAfter of a certificate whose chain already verified in this snapshot.
    fn verified_until(&self, fp: &Fingerprint) -> Option<UnixTime> {
        // A poisoned lock only means a panic elsewhere mid-insert: the map is still valid.
        let map = self.verified.read().unwrap_or_else(|p| p.into_inner());
        map.get(fp).copied()
    }

    fn remember(&self, fp: Fingerprint, end_entity: &CertificateDer<'_>) {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity) else {
            return; // webpki accepted it, so this cannot happen; just skip the cache.
        };
        let Ok(secs) = u64::try_from(cert.validity().not_after.timestamp()) else {
            return;
        };
        let not_after = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
        let mut map = self.verified.write().unwrap_or_else(|p| p.into_inner());
        map.insert(fp, not_after);
    }
}

impl ClientCertVerifier for LiveCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        if let Some(not_after) = self.verified_until(&fp) {
            return if now.as_secs() <= not_after.as_secs() {
                Ok(ClientCertVerified::assertion())
            } else {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired,
                ))
            };
        }
        // The full check also classifies refusals (unknown CA, expired) for the metrics.
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.live.contains(&fp) {
            self.remember(fp, end_entity);
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// What the proxy holds: the newest snapshot, `None` until a source produced the first.
pub type SnapshotRx = tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>;

/// A snapshot of one route, for unit tests elsewhere in the crate: a self-signed
/// certificate for the route's first host serves as both CA and server certificate.
#[cfg(test)]
pub(crate) fn for_tests(route: Route, live: Vec<LiveCert>, cookie_keys: Vec<[u8; 32]>) -> Snapshot {
    let host = route.hosts.first().cloned().unwrap_or_default();
    let cert = rcgen::generate_simple_self_signed(vec![host]).expect("self-signed certificate");
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    let parts = SnapshotParts {
        client_ca: vec![der.clone()],
        routes: vec![RouteSource {
            route,
            cert_chain: vec![der],
            key,
        }],
        live,
        cookie_keys,
    };
    Snapshot::build(parts, 1).expect("test snapshot")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::Ca;
    use crate::resources::KeyAlgorithm;

    fn der(cert: &crate::pki::IssuedCert) -> CertificateDer<'static> {
        CertificateDer::from(cert.cert_der.clone())
    }

    #[test]
    fn verifier_checks_the_chain_once_then_only_the_validity_window() {
        let ca = Ca::generate("test CA").unwrap();
        let day = Duration::from_secs(86_400);
        let alice = ca
            .issue_client("alice", KeyAlgorithm::EcdsaP256, day)
            .unwrap();
        let stranger = ca
            .issue_client("stranger", KeyAlgorithm::EcdsaP256, day)
            .unwrap();
        let live = vec![Arc::new(LiveCert {
            identity: "alice".into(),
            serial_hex: alice.info.serial_hex.clone(),
            fingerprint: fingerprint(&alice.cert_der),
            labels: Default::default(),
            not_after: alice.info.not_after,
        })];
        let provider = Arc::new(provider());
        let roots = vec![CertificateDer::from(ca.cert_der().to_vec())];
        let verifier = LiveCertVerifier::new(roots, &live, provider).unwrap();
        let now = UnixTime::now();

        assert!(verifier.verify_client_cert(&der(&alice), &[], now).is_ok());
        assert!(
            verifier
                .verified_until(&fingerprint(&alice.cert_der))
                .is_some()
        );
        assert!(
            verifier.verify_client_cert(&der(&alice), &[], now).is_ok(),
            "cached"
        );
        let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs()) + 2 * day);
        assert_eq!(
            verifier.verify_client_cert(&der(&alice), &[], later).err(),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
            )),
            "the cache must not outlive the certificate"
        );
        // Signed by the CA but not a live identity: never cached, always refused.
        for _ in 0..2 {
            assert_eq!(
                verifier.verify_client_cert(&der(&stranger), &[], now).err(),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked
                ))
            );
        }
        assert!(
            verifier
                .verified_until(&fingerprint(&stranger.cert_der))
                .is_none()
        );
    }
}
