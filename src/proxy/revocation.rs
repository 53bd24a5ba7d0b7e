//! Closing what a revoked or deleted identity still holds open.

use crate::snapshot::{Fingerprint, Snapshot, SnapshotRx};

/// What identifies the credential a connection or tunnel was admitted with.
#[derive(Debug, Clone)]
pub enum Credential {
    Certificate(Fingerprint),
    /// A certificate serial, as carried by a cookie.
    Serial(String),
}

impl Credential {
    fn is_live(&self, snapshot: &Snapshot) -> bool {
        match self {
            Credential::Certificate(fp) => snapshot.live_by_fingerprint(fp).is_some(),
            Credential::Serial(serial) => snapshot.live_by_serial(serial).is_some(),
        }
    }
}

/// Completes once a published snapshot no longer holds `credential`; never completes for
/// anonymous (bypass) connections. Only this credential's holders are woken to close, so
/// a revoke never disturbs anyone else.
pub async fn gone(mut snapshots: SnapshotRx, credential: Option<Credential>) {
    let Some(credential) = credential else {
        return std::future::pending().await;
    };
    loop {
        if snapshots.changed().await.is_err() {
            // The source is gone (shutdown): nothing will ever revoke again.
            return std::future::pending().await;
        }
        let still_live = match &*snapshots.borrow_and_update() {
            Some(snapshot) => credential.is_live(snapshot),
            None => true,
        };
        if !still_live {
            return;
        }
    }
}
