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
mod tests {
    use super::*;

    fn cert(identity: &str, serial: &str) -> LiveCert {
        let mut fingerprint = [0u8; 32];
        fingerprint[..serial.len().min(32)]
            .copy_from_slice(&serial.as_bytes()[..serial.len().min(32)]);
        LiveCert {
            identity: identity.into(),
            serial_hex: serial.into(),
            fingerprint,
            labels: BTreeMap::new(),
            not_after: SystemTime::now() + Duration::from_secs(86_400),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn sighting(identity: &str, serial: &str, at: SystemTime) -> Sighting {
        Sighting {
            identity: identity.into(),
            serial_hex: serial.into(),
            at,
        }
    }

    #[test]
    fn a_busy_connection_reports_once_a_minute_per_serial() {
        let sightings = Arc::new(Sightings::default());
        let conn = ConnSightings::default();
        let (phone, app) = (cert("alice", "aa01"), cert("alice", "bb02"));
        for s in 0..50 {
            conn.saw(&sightings, &phone, at(s));
        }
        // Only the first request of the minute reached the shared tracker.
        assert_eq!(sightings.drain(), vec![sighting("alice", "aa01", at(0))]);
        assert_eq!(sightings.drain(), vec![]);
        // Another serial on the same connection (a cookie) is reported at once.
        conn.saw(&sightings, &app, at(50));
        conn.saw(&sightings, &app, at(55));
        // The next minute is reported again.
        conn.saw(&sightings, &app, at(61));
        assert_eq!(sightings.drain(), vec![sighting("alice", "bb02", at(61))]);
    }

    #[test]
    fn drain_gives_one_sighting_per_serial_with_its_newest_time() {
        let sightings = Sightings::default();
        sightings.saw(&cert("bob", "cc"), at(120));
        sightings.saw(&cert("alice", "aa"), at(60));
        sightings.saw(&cert("alice", "aa"), at(0));
        sightings.saw(&cert("alice", "bb"), at(30));
        assert_eq!(
            sightings.drain(),
            vec![
                sighting("alice", "aa", at(60)),
                sighting("alice", "bb", at(30)),
                sighting("bob", "cc", at(120)),
            ]
        );
        // A batch a writer could not deliver comes back; a newer sighting wins.
        sightings.saw(&cert("alice", "aa"), at(180));
        sightings.requeue(vec![
            sighting("alice", "aa", at(60)),
            sighting("bob", "cc", at(120)),
        ]);
        assert_eq!(
            sightings.drain(),
            vec![
                sighting("alice", "aa", at(180)),
                sighting("bob", "cc", at(120))
            ]
        );
    }

    #[test]
    fn open_connections_count_from_the_first_admission_until_the_connection_is_gone() {
        let sightings = Arc::new(Sightings::default());
        let (one, two, three) = (
            ConnSightings::default(),
            ConnSightings::default(),
            ConnSightings::default(),
        );
        assert!(sightings.open_connections().is_empty());
        one.saw(&sightings, &cert("alice", "aa"), at(0));
        one.saw(&sightings, &cert("alice", "aa"), at(120));
        two.saw(&sightings, &cert("alice", "bb"), at(0));
        // A connection counts once, for the first identity it was admitted as.
        three.saw(&sightings, &cert("bob", "cc"), at(0));
        three.saw(&sightings, &cert("alice", "aa"), at(1));
        assert_eq!(
            sightings.open_connections(),
            BTreeMap::from([("alice".into(), 2), ("bob".into(), 1)])
        );
        drop((one, three));
        assert_eq!(
            sightings.open_connections(),
            BTreeMap::from([("alice".into(), 1)])
        );
        // No entry is left behind for an identity without connections.
        drop(two);
        assert!(sightings.open_connections().is_empty());
        assert!(sightings.lock().open.is_empty());
    }

    #[test]
    fn report_lists_connections_and_serials_seen_across_drains() {
        let sightings = Arc::new(Sightings::default());
        let conn = ConnSightings::default();
        conn.saw(&sightings, &cert("alice", "aa"), at(0));
        sightings.saw(&cert("bob", "cc"), at(60));
        sightings.drain();
        let json = serde_json::to_value(sightings.report()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"identity": "alice", "openConnections": 1,
                 "seen": {"aa": "2027-01-15T08:00:00Z"}},
                {"identity": "bob", "openConnections": 0,
                 "seen": {"cc": "2027-01-15T08:01:00Z"}},
            ])
        );
        drop(conn);
        assert_eq!(sightings.report()[0].open_connections, 0);
    }

    #[test]
    fn serials_not_seen_for_30_days_are_forgotten() {
        let sightings = Sightings::default();
        let long_ago = SystemTime::now() - REMEMBERED_FOR - Duration::from_secs(60);
        sightings.saw(&cert("alice", "aa"), long_ago);
        sightings.saw(&cert("alice", "bb"), SystemTime::now());
        sightings.drain();
        let report = sightings.report();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].seen.keys().collect::<Vec<_>>(), vec!["bb"]);
    }

    #[tokio::test]
    async fn flush_every_hands_over_batches_and_drains_once_more_at_shutdown() {
        let sightings = Arc::new(Sightings::default());
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(flush_every(
            sightings.clone(),
            Duration::from_millis(20),
            shutdown.clone(),
            move |batch| {
                let _ = tx.send(batch);
                std::future::ready(())
            },
        ));
        sightings.saw(&cert("alice", "aa"), at(0));
        assert_eq!(
            rx.recv().await.unwrap(),
            vec![sighting("alice", "aa", at(0))]
        );
        // Long interval now irrelevant: shutdown flushes what is pending.
        sightings.saw(&cert("bob", "cc"), at(0));
        shutdown.cancel();
        task.await.unwrap();
        let mut rest = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            rest.extend(batch);
        }
        assert_eq!(rest, vec![sighting("bob", "cc", at(0))]);
    }

    #[tokio::test]
    async fn the_standalone_writer_records_seen_json_per_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        std::fs::create_dir_all(state.identity_dir("alice")).unwrap();
        let sightings = Arc::new(Sightings::default());
        sightings.saw(&cert("alice", "aa"), at(0));
        // Deleted meanwhile (no directory), and a name that would escape: both skipped.
        sightings.saw(&cert("gone", "bb"), at(0));
        sightings.saw(&cert("../escape", "cc"), at(0));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        keep_seen_files(sightings.clone(), state.clone(), FLUSH_EVERY, shutdown).await;
        assert_eq!(
            state.load_seen("alice").unwrap(),
            BTreeMap::from([("aa".into(), at(0))])
        );
        assert!(!state.identity_dir("gone").exists());
        assert!(!tmp.path().join("escape").exists());
        assert!(sightings.drain().is_empty(), "nothing to retry");
    }
}
