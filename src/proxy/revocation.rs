//! Closing what a revoked or deleted identity, or one its route stopped admitting, still
//! holds open.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::snapshot::{Fingerprint, Snapshot, SnapshotRx};

/// What identifies the credential a connection or tunnel was admitted with.
#[derive(Debug, Clone)]
pub enum Credential {
    Certificate(Fingerprint),
    /// A certificate serial, as carried by a cookie.
    Serial(String),
}

/// A credential and where it was admitted.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub credential: Credential,
    pub on: Hosts,
}

/// Which routes' selectors a holder of a credential answers to.
#[derive(Debug, Clone)]
pub enum Hosts {
    /// The one host a request, or a connection's SNI, named.
    One(String),
    /// A TLS connection without SNI (a client given an IP address): the Host header picks
    /// the route per request, so the connection answers to every route it has been
    /// admitted on by its certificate so far.
    Seen(Arc<SeenHosts>),
}

/// The hosts a connection without SNI was admitted on by its certificate; at most one
/// entry per route, since only routed hosts are admitted.
#[derive(Debug, Default)]
pub struct SeenHosts {
    hosts: Mutex<Vec<String>>,
    /// Wakes the connection's watch to check a newly added host against the newest
    /// snapshot: the request was admitted on an older one.
    added: Notify,
}

impl SeenHosts {
    pub fn add(&self, host: &str) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_owned());
            drop(hosts);
            self.added.notify_one();
        }
    }

    fn all(&self, mut admits: impl FnMut(&str) -> bool) -> bool {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.iter().all(|h| admits(h))
    }
}

impl Admitted {
    /// What a request admitted on `host` holds once it outlives its request (a tunnel, a
    /// streamed response): the certificate serial, which a cookie carries too.
    pub fn serial_on(serial: &str, host: &str) -> Self {
        Self {
            credential: Credential::Serial(serial.to_owned()),
            on: Hosts::One(host.to_owned()),
        }
    }

    /// The notAfter of this credential's certificate while `snapshot` would still admit it
    /// on its hosts; `None` once it would not.
    fn admitted_until(&self, snapshot: &Snapshot) -> Option<SystemTime> {
        let cert = match &self.credential {
            Credential::Certificate(fp) => snapshot.live_by_fingerprint(fp),
            Credential::Serial(serial) => snapshot.live_by_serial(serial),
        }?;
        let admits_on = |host: &str| snapshot.route(host).is_some_and(|route| route.admits(cert));
        let admits = match &self.on {
            Hosts::One(host) => admits_on(host),
            Hosts::Seen(seen) => seen.all(admits_on),
        };
        admits.then_some(cert.not_after)
    }

    /// Completes when a host is added to a connection without SNI; never otherwise.
    async fn hosts_added(&self) {
        match &self.on {
            Hosts::Seen(seen) => seen.added.notified().await,
            Hosts::One(_) => std::future::pending().await,
        }
    }
}

/// Completes once a published snapshot no longer admits `admitted` (the identity was
/// revoked or deleted, or the route for one of its hosts is gone or no longer selects
/// it), or
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
            }
            () = admitted.hosts_added() => {}
            () = until(ends) => return,
        }
        if let Some(snapshot) = &*snapshots.borrow_and_update() {
            match admitted.admitted_until(snapshot) {
                Some(not_after) => ends = Some(not_after),
                None => return,
            }
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
