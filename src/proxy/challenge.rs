//! tls-alpn-01 on the gate's own TLS port: with a [`Challenges`] handle in the settings,
//! each snapshot's TLS configuration also offers `acme-tls/1` and answers it from the
//! pending challenges ([`ChallengeResolver`]); a connection that negotiated it is closed
//! right after the handshake.
//!
//! ```text
//!  snapshot.tls() ──(challenges configured)──▶ + acme-tls/1, ChallengeResolver ──▶ acceptor
//!  handshake done, ALPN acme-tls/1 ──▶ close_notify, counted; no HTTP, no admission
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::acme::tls_alpn::{ACME_TLS_ALPN, ChallengeResolver, Challenges};
use crate::telemetry::Metrics;

/// A worker's view of the challenges: the snapshot's config with challenges in front,
/// derived once per snapshot rather than per connection.
pub(super) struct ChallengeTls {
    challenges: Challenges,
    /// The last snapshot config seen, and what was derived from it.
    derived: Mutex<Option<(Arc<ServerConfig>, Arc<ServerConfig>)>>,
}

impl ChallengeTls {
    pub(super) fn new(challenges: Challenges) -> Self {
        ChallengeTls {
            challenges,
            derived: Mutex::default(),
        }
    }

    /// The configuration a new connection is accepted with, given the snapshot's own.
    pub(super) fn config(&self, base: &Arc<ServerConfig>) -> Arc<ServerConfig> {
        // Only this worker's thread takes the lock; a poisoned one still holds a valid pair.
        let mut derived = self.derived.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((from, config)) = derived.as_ref()
            && Arc::ptr_eq(from, base)
        {
            return config.clone();
        }
        let config = Arc::new(with_challenges(base, &self.challenges));
        *derived = Some((base.clone(), config.clone()));
        config
    }
}

/// `base` with `acme-tls/1` offered last (a client offering `h2` or `http/1.1` too still
/// gets those) and the challenges consulted before its own certificates.
pub(super) fn with_challenges(base: &ServerConfig, challenges: &Challenges) -> ServerConfig {
    let mut config = base.clone();
    config.cert_resolver = Arc::new(ChallengeResolver::new(
        base.cert_resolver.clone(),
        challenges.clone(),
    ));
    config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    config
}

/// Whether `tls` negotiated `acme-tls/1`; if so, ends it. A validation server's probe is
/// complete once it has seen the certificate: nothing after the handshake is read, so
/// no HTTP, no admission and no denial are logged for it.
pub(super) async fn closed_if_challenge(
    tls: &mut TlsStream<TcpStream>,
    metrics: &Metrics,
    within: Duration,
) -> bool {
    if tls.get_ref().1.alpn_protocol() != Some(ACME_TLS_ALPN) {
        return false;
    }
    metrics.acme_challenge_handshakes.inc();
    // close_notify, bounded: a peer that stops reading must not hold the slot.
    let _ = tokio::time::timeout(within, tls.shutdown()).await;
    true
}

#[cfg(test)]
mod tests {
    use rustls::server::ResolvesServerCertUsingSni;

    use super::*;

    /// A stand-in for a snapshot's configuration, with the gate's ALPN list.
    fn snapshot_config() -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ResolvesServerCertUsingSni::new()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    #[test]
    fn acme_tls_is_offered_after_the_gates_own_protocols() {
        let config = with_challenges(&snapshot_config(), &Challenges::default());
        let offered: Vec<&[u8]> = config.alpn_protocols.iter().map(Vec::as_slice).collect();
        assert_eq!(offered, [b"h2".as_slice(), b"http/1.1", ACME_TLS_ALPN]);
    }

    #[test]
    fn one_derived_config_per_snapshot() {
        let worker = ChallengeTls::new(Challenges::default());
        let first = snapshot_config();
        let derived = worker.config(&first);
        assert!(Arc::ptr_eq(&derived, &worker.config(&first)));
        // A new snapshot: derived afresh, so its certificates and trust apply.
        let second = snapshot_config();
        let next = worker.config(&second);
        assert!(!Arc::ptr_eq(&derived, &next));
        assert!(Arc::ptr_eq(&next, &worker.config(&second)));
    }
}
