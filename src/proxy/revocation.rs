//! Closing what a revoked or deleted identity, or one its route stopped admitting, still
//! holds open.

use std::time::{Duration, SystemTime};

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

    /// The notAfter of this credential's certificate while `snapshot` would still admit it
    /// on this host; `None` once it would not.
    fn admitted_until(&self, snapshot: &Snapshot) -> Option<SystemTime> {
        let cert = match &self.credential {
            Credential::Certificate(fp) => snapshot.live_by_fingerprint(fp),
            Credential::Serial(serial) => snapshot.live_by_serial(serial),
        }?;
        let admits = match &self.host {
            Some(host) => snapshot.route(host).is_some_and(|route| route.admits(cert)),
            None => true,
        };
        admits.then_some(cert.not_after)
    }
}

/// Completes once a published snapshot no longer admits `admitted` (the identity was
/// revoked or deleted, or the route for its host is gone or no longer selects it), or
/// once its certificate passes its notAfter, with or without a new snapshot. Never
/// completes for anonymous (bypass) connections. Only this credential's holders are woken
/// to close, so a change never disturbs anyone else.
pub async fn gone(mut snapshots: SnapshotRx, admitted: Option<Admitted>) {
    let Some(admitted) = admitted else {
        return std::future::pending().await;
    };
    let mut ends = snapshots
        .borrow()
        .as_ref()
        .and_then(|s| admitted.admitted_until(s));
    let mut source_alive = true;
    loop {
        tokio::select! {
            changed = snapshots.changed(), if source_alive => {
                if changed.is_err() {
                    // The source is gone (shutdown): only the certificate's end remains.
                    source_alive = false;
                    continue;
                }
                if let Some(snapshot) = &*snapshots.borrow_and_update() {
                    match admitted.admitted_until(snapshot) {
                        Some(not_after) => ends = Some(not_after),
                        None => return,
                    }
                }
            }
            () = until(ends) => return,
        }
    }
}

/// Sleeps until just past `end` (notAfter is inclusive); forever without one.
async fn until(end: Option<SystemTime>) {
    match end {
        Some(end) => {
            let left = end.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(left + Duration::from_secs(1)).await;
        }
        None => std::future::pending().await,
    }
}
