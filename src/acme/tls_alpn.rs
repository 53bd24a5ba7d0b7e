//! tls-alpn-01 (RFC 8737): the ACME server proves that we control a host by opening TLS to
//! it offering only the ALPN protocol `acme-tls/1`; we must answer with a self-signed
//! certificate for that host whose critical `acmeIdentifier` extension holds the SHA-256 of
//! the challenge's key authorization.
//!
//! ```text
//!  ClientHello ──ALPN exactly [acme-tls/1]?──yes──▶ Challenges[SNI] (or no certificate)
//!                        └──no──▶ the gate's own resolver, unchanged
//! ```
//! The gate answers on its own TLS port, so no extra port is opened. A challenge
//! connection carries no HTTP: whoever accepts it closes it after the handshake.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{Error, Result};

/// The ALPN protocol of tls-alpn-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Challenge certificates by host (lowercase), shared between the ACME client that
/// adds them and the resolver that serves them.
#[derive(Clone, Default)]
pub struct Challenges(Arc<RwLock<HashMap<String, Arc<CertifiedKey>>>>);

impl fmt::Debug for Challenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self.read().keys().cloned().collect();
        f.debug_tuple("Challenges").field(&hosts).finish()
    }
}

impl Challenges {
    /// Serves a challenge certificate for `host` with the key authorization's SHA-256
    /// (`KeyAuthorization::digest` in instant-acme) until [`Self::remove`].
    pub fn insert(&self, host: &str, digest: &[u8; 32]) -> Result<()> {
        let cert = Arc::new(challenge_cert(host, digest)?);
        self.write().insert(host.to_ascii_lowercase(), cert);
        Ok(())
    }

    /// Stops serving `host`'s challenge (validated, or given up).
    pub fn remove(&self, host: &str) {
        self.write().remove(&host.to_ascii_lowercase());
    }

    fn get(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.read().get(&host.to_ascii_lowercase()).cloned()
    }

    // A panic while holding the lock leaves a plain map behind: still usable.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A self-signed certificate for `host` carrying `digest` in the acmeIdentifier extension.
pub fn challenge_cert(host: &str, digest: &[u8; 32]) -> Result<CertifiedKey> {
    let fail = |e: &dyn fmt::Display| Error::pki(format!("tls-alpn-01 certificate for {host}"), e);
    let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(|e| fail(&e))?;
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(digest));
    let key = KeyPair::generate().map_err(|e| fail(&e))?;
    let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = any_supported_type(&der).map_err(|e| fail(&e))?;
    Ok(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing,
    ))
}

/// The gate's resolver, with tls-alpn-01 challenges answered in front of it.
#[derive(Debug)]
pub struct ChallengeResolver {
    inner: Arc<dyn ResolvesServerCert>,
    challenges: Challenges,
}

impl ChallengeResolver {
    pub fn new(inner: Arc<dyn ResolvesServerCert>, challenges: Challenges) -> Self {
        ChallengeResolver { inner, challenges }
    }
}

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if !is_challenge(&hello) {
            return self.inner.resolve(hello);
        }
        // Never the route's real certificate on a challenge hello: an unknown host gets
        // none, and the handshake fails.
        hello
            .server_name()
            .and_then(|host| self.challenges.get(host))
    }
}

/// RFC 8737 §3: the validating server offers `acme-tls/1` and nothing else.
fn is_challenge(hello: &ClientHello<'_>) -> bool {
    hello.alpn().is_some_and(|mut protocols| {
        protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
    })
}

#[cfg(test)]
mod tests;
