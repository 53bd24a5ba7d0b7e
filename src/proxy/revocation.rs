//! Closing what a revoked or deleted identity, or one its route stopped admitting, still
//! holds open.

use crate::snapshot::{Fingerprint, Snapshot, SnapshotRx};

/// What identifies the credential a connection or tunnel was admitted with.
#[derive(Debug, Clone)]
pub enum Credential {
    Certificate(Fingerprint),
    /// A certificate serial, as carried by a cookie.
    Serial(String),
}

/// A credential and the host it was admitted on.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub credential: Credential,
    /// `None` when the host is not known (a TLS connection without SNI): then only the
    /// identity itself has to stay live.
    pub host: Option<String>,
}

impl Admitted {
    /// What a request admitted on `host` holds once it outlives its request (a tunnel, a
    /// streamed response): the certificate serial, which a cookie carries too.
    pub fn serial_on(serial: &str, host: &str) -> Self {
        Self {
            credential: Credential::Serial(serial.to_owned()),
            host: Some(host.to_owned()),
        }
    }

    /// Whether `snapshot` would still admit this credential on this host.
    fn holds(&self, snapshot: &Snapshot) -> bool {
        let cert = match &self.credential {
            Credential::Certificate(fp) => snapshot.live_by_fingerprint(fp),
            Credential::Serial(serial) => snapshot.live_by_serial(serial),
        };
        let Some(cert) = cert else {
            return false;
        };
        match &self.host {
            Some(host) => snapshot.route(host).is_some_and(|route| route.admits(cert)),
            None => true,
        }
    }
}

/// Completes once a published snapshot no longer admits `admitted`: the identity was
/// revoked or deleted, or the route for its host is gone or no longer selects it. Never
/// completes for anonymous (bypass) connections. Only this credential's holders are woken
/// to close, so a change never disturbs anyone else.
pub async fn gone(mut snapshots: SnapshotRx, admitted: Option<Admitted>) {
    let Some(admitted) = admitted else {
        return std::future::pending().await;
    };
    loop {
        if snapshots.changed().await.is_err() {
            // The source is gone (shutdown): nothing will ever revoke again.
            return std::future::pending().await;
        }
        let still_admitted = match &*snapshots.borrow_and_update() {
            Some(snapshot) => admitted.holds(snapshot),
            None => true,
        };
        if !still_admitted {
            return;
        }
    }
}
