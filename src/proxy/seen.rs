//! Who was admitted, and when: the data plane's sightings of device certificates and the
//! connections each identity holds open, for `status.lastSeen`, `seen.json` and the admin
//! port's `/identities`.
//!
//! ```text
//!  request admitted by certificate or cookie (h1 fast path | hyper)
//!    ─▶ ConnSightings (per connection, two atomics: last serial, last minute)
//!         └─ another serial or another minute ─▶ Sightings (shared by every worker, one lock)
//!                                                  └─ drain() once a minute ─▶ a writer
//! ```
//! A keep-alive connection making a hundred requests a second takes the shared lock once a
//! minute; everything else on the request path is two relaxed atomic loads.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::snapshot::LiveCert;
use crate::state::StateDir;

/// How often writers drain the tracker: `lastSeen` is coarse on purpose.
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);

/// How long `/identities` remembers a serial this process saw: bounds the memory the
/// tracker holds to the certificates in use lately (the files and status keep the rest).
const REMEMBERED_FOR: Duration = Duration::from_secs(30 * 86_400);

/// The last time one certificate was admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// The identity's name as the snapshot knows it (`namespace/name` in Kubernetes).
    pub identity: String,
    /// The certificate's serial, lowercase hex.
    pub serial_hex: String,
    /// Coarse: the first admission in a minute on a connection.
    pub at: SystemTime,
}

/// What the data plane saw, shared by all its worker threads (hold it in an `Arc`).
#[derive(Debug, Default)]
pub struct Sightings {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Serial → (identity, newest time) since the last [`Sightings::drain`].
    pending: HashMap<String, (String, SystemTime)>,
    /// The same since start, for `/identities`; pruned to [`REMEMBERED_FOR`].
    remembered: HashMap<String, (String, SystemTime)>,
    /// Identity → connections admitted as it and still open. No zero entries.
    open: HashMap<String, usize>,
}

/// One identity as `/identities` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityReport {
    pub identity: String,
    pub open_connections: usize,
    /// Serial → RFC 3339 time of the last admission with it.
    pub seen: BTreeMap<String, String>,
}

// === impl Sightings ===

impl Sightings {
    /// Records that `cert` was admitted at `now`. Not throttled: the request path goes
    /// through [`ConnSightings::saw`], which calls this at most once a minute.
    pub fn saw(&self, cert: &LiveCert, now: SystemTime) {
        let inner = &mut *self.lock();
        for map in [&mut inner.pending, &mut inner.remembered] {
            note(map, &cert.identity, &cert.serial_hex, now);
        }
    }

    /// Takes what was seen since the last drain: one [`Sighting`] per serial, its newest
    /// time. For writers running off the request path (once a minute).
    pub fn drain(&self) -> Vec<Sighting> {
        let mut inner = self.lock();
        if let Some(horizon) = SystemTime::now().checked_sub(REMEMBERED_FOR) {
            inner.remembered.retain(|_, (_, at)| *at >= horizon);
        }
        let mut drained: Vec<Sighting> = std::mem::take(&mut inner.pending)
            .into_iter()
            .map(|(serial_hex, (identity, at))| Sighting {
                identity,
                serial_hex,
                at,
            })
            .collect();
        drained.sort_by(|a, b| (&a.identity, &a.serial_hex).cmp(&(&b.identity, &b.serial_hex)));
        drained
    }

    /// Puts back sightings a writer could not deliver, so the next drain retries them
    /// (newer sightings of the same serial win).
    pub fn requeue(&self, sightings: Vec<Sighting>) {
        let mut inner = self.lock();
        for s in sightings {
            note(&mut inner.pending, &s.identity, &s.serial_hex, s.at);
        }
    }

    /// Open connections per identity, counted from the connection's first admitted request
    /// until it and any WebSocket it carries close. Identities without any are absent.
    pub fn open_connections(&self) -> BTreeMap<String, usize> {
        self.lock()
            .open
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// This process's view, per identity: open connections and the serials seen in the last
    /// 30 days (what the admin port's `/identities` answers).
    pub fn report(&self) -> Vec<IdentityReport> {
        let inner = self.lock();
        let mut reports: BTreeMap<&str, IdentityReport> = BTreeMap::new();
        let seen = inner
            .remembered
            .iter()
            .map(|(serial, (identity, at))| (identity, Some((serial, at))));
        let open = inner.open.keys().map(|identity| (identity, None));
        for (identity, seen) in open.chain(seen) {
            let report = reports.entry(identity).or_insert_with(|| IdentityReport {
                identity: identity.clone(),
                open_connections: inner.open.get(identity).copied().unwrap_or(0),
                seen: BTreeMap::new(),
            });
            if let Some((serial, at)) = seen {
                report.seen.insert(serial.clone(), rfc3339(*at));
            }
        }
        reports.into_values().collect()
    }

    fn opened(&self, identity: &str) {
        *self.lock().open.entry(identity.to_owned()).or_default() += 1;
    }

    fn closed(&self, identity: &str) {
        let mut inner = self.lock();
        if let Some(n) = inner.open.get_mut(identity) {
            *n -= 1;
            if *n == 0 {
                inner.open.remove(identity);
            }
        }
    }

    /// The lock is never held across a call that could panic half-way, so a poisoned one
    /// still holds consistent maps.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps the newest time per serial.
fn note(
    map: &mut HashMap<String, (String, SystemTime)>,
    identity: &str,
    serial: &str,
    at: SystemTime,
) {
    match map.get_mut(serial) {
        Some((_, newest)) => *newest = (*newest).max(at),
        None => {
            map.insert(serial.to_owned(), (identity.to_owned(), at));
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

// === impl ConnSightings ===

/// What one client connection remembers of its sightings, so that a busy connection
/// reports once a minute. Lives in the connection's [`super::conn::Open`], which a
/// WebSocket tunnel holds too: the connection counts as open until both are gone.
#[derive(Debug, Default)]
pub struct ConnSightings {
    /// [`key`] of the certificate last reported; 0 before the first.
    key: AtomicU64,
    /// Minute (since the epoch) of the last report.
    minute: AtomicU64,
    /// Set at the connection's first admitted request: the identity it counts for.
    counted: OnceLock<Counted>,
}

impl ConnSightings {
    /// Notes that a request on this connection was admitted as `cert` at `now`: the first
    /// one counts the connection as the identity's (an HTTP/2 connection carrying cookies of
    /// several identities counts for the first), and the shared tracker hears of `cert`
    /// once per minute and serial.
    pub fn saw(&self, sightings: &Arc<Sightings>, cert: &LiveCert, now: SystemTime) {
        let (key, minute) = (key(cert), minute(now));
        // Relaxed: a race between two streams of one connection costs one extra report.
        if self.key.load(Relaxed) == key && self.minute.load(Relaxed) == minute {
            return;
        }
        self.counted.get_or_init(|| {
            sightings.opened(&cert.identity);
            Counted {
                sightings: sightings.clone(),
                identity: cert.identity.clone(),
            }
        });
        sightings.saw(cert, now);
        self.key.store(key, Relaxed);
        self.minute.store(minute, Relaxed);
    }
}

/// A connection counted in [`Sightings::open_connections`] until dropped.
#[derive(Debug)]
struct Counted {
    sightings: Arc<Sightings>,
    identity: String,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.sightings.closed(&self.identity);
    }
}

/// A certificate's fingerprint prefix, never 0 (0 means "nothing reported yet").
fn key(cert: &LiveCert) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&cert.fingerprint[..8]);
    u64::from_le_bytes(prefix) | 1
}

fn minute(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

// === writers ===

/// Drains `sightings` every `every` and once more at `shutdown`, handing each non-empty
/// batch to `write` (which may [`Sightings::requeue`] what it could not deliver).
pub async fn flush_every<F, Fut>(
    sightings: Arc<Sightings>,
    every: Duration,
    shutdown: CancellationToken,
    mut write: F,
) where
    F: FnMut(Vec<Sighting>) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = tokio::time::Instant::now() + every;
    let mut tick = tokio::time::interval_at(start, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            () = shutdown.cancelled() => true,
        };
        let batch = sightings.drain();
        if !batch.is_empty() {
            write(batch).await;
        }
        if stopping {
            return;
        }
    }
}

/// The standalone writer: merges each batch into `identities/<name>/seen.json`, every
/// `every` and at shutdown. A failed write is logged and retried with the next batch.
pub async fn keep_seen_files(
    sightings: Arc<Sightings>,
    state: StateDir,
    every: Duration,
    shutdown: CancellationToken,
) {
    let requeue = sightings.clone();
    flush_every(sightings, every, shutdown, move |batch| {
        let (state, requeue) = (state.clone(), requeue.clone());
        async move {
            let written = tokio::task::spawn_blocking(move || write_seen_files(&state, batch));
            if let Ok(failed) = written.await {
                requeue.requeue(failed);
            }
        }
    })
    .await;
}

/// Writes a batch into the state directory; returns the sightings to retry (their file could
/// not be written). Identities without a directory (deleted meanwhile) are skipped.
fn write_seen_files(state: &StateDir, batch: Vec<Sighting>) -> Vec<Sighting> {
    let mut by_identity: BTreeMap<String, Vec<Sighting>> = BTreeMap::new();
    for s in batch {
        by_identity.entry(s.identity.clone()).or_default().push(s);
    }
    let mut failed = Vec::new();
    for (identity, sightings) in by_identity {
        let serials: Vec<(String, SystemTime)> = sightings
            .iter()
            .map(|s| (s.serial_hex.clone(), s.at))
            .collect();
        match state.record_seen(&identity, &serials) {
            Ok(_) => {}
            // The disk may come back (full, remounted): retry with the next batch.
            Err(e @ crate::Error::Io { .. }) => {
                tracing::warn!(identity = %identity, error = %e, "cannot record when the device was last seen; will retry");
                failed.extend(sightings);
            }
            Err(e) => {
                tracing::warn!(identity = %identity, error = %e, "cannot record when the device was last seen")
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests;
