//! Where enrollments live between `portcullis enroll` and the claim, and the claim itself.
//!
//! Standalone: files in the state directory.
//! ```text
//!  enrollments/pending/<tokenHash>.json   created by `enroll` (0600)
//!  enrollments/claimed/<tokenHash>.json   the claim: rename(2) from pending/, which only
//!                                         one caller can win, in any number of processes
//! ```
//! A Kubernetes store (an `Enrollment` custom resource whose spec is the same record) would
//! claim with an update carrying the object's resourceVersion, which likewise succeeds for
//! exactly one replica.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use super::record::EnrollmentRecord;
use super::token::is_hash;
use crate::state::{SECRET_MODE, write_atomic};
use crate::{Error, Result};

/// The data plane's view of the enrollments. Methods are async so that a store backed by
/// an API server fits; the file store runs its file calls on the blocking pool.
pub trait EnrollmentStore: Send + Sync + std::fmt::Debug {
    /// The unclaimed enrollment whose token hashes to `token_hash`.
    fn pending(&self, token_hash: String) -> BoxFuture<'_, Result<Option<EnrollmentRecord>>>;
    /// Claims `record`: `true` for exactly one caller, however many race (threads,
    /// processes, replicas); `false` when it was claimed or cancelled meanwhile.
    fn claim(&self, record: EnrollmentRecord) -> BoxFuture<'_, Result<bool>>;
    /// A claimed enrollment, whose downloads the claiming browser may still fetch.
    fn claimed(&self, token_hash: String) -> BoxFuture<'_, Result<Option<EnrollmentRecord>>>;
    /// Removes enrollments nobody can use any more: unclaimed ones past their expiry,
    /// claimed ones `grace` after it. Returns how many went.
    fn sweep(&self, now: SystemTime, grace: Duration) -> BoxFuture<'_, Result<usize>>;
}

/// Enrollments as files under `<state>/enrollments/`.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// The store under the state directory's `enrollments/`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStore { root: root.into() }
    }

    fn pending_dir(&self) -> PathBuf {
        self.root.join("pending")
    }

    fn claimed_dir(&self) -> PathBuf {
        self.root.join("claimed")
    }

    fn file(dir: PathBuf, token_hash: &str) -> Option<PathBuf> {
        // The hash becomes a file name: nothing but hex may get there.
        is_hash(token_hash).then(|| dir.join(format!("{token_hash}.json")))
    }

    /// Stores `record` and cancels every other enrollment of the same identity, pending or
    /// claimed (a new link replaces the old one).
    pub fn create(&self, record: &EnrollmentRecord) -> Result<()> {
        let Some(path) = Self::file(self.pending_dir(), &record.token_hash) else {
            return Err(Error::Config(format!(
                "enrollment for {}: the token hash is not 64 hex digits",
                record.identity
            )));
        };
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::pki("enrollment record", format!("cannot encode: {e}")))?;
        write_atomic(&path, &json, SECRET_MODE)?;
        for dir in [self.pending_dir(), self.claimed_dir()] {
            for (other, old) in read_dir(&dir)? {
                if other != path && old.is_some_and(|r| r.identity == record.identity) {
                    remove(&other)?;
                }
            }
        }
        Ok(())
    }

    /// See [`EnrollmentStore::pending`].
    pub fn pending_sync(&self, token_hash: &str) -> Result<Option<EnrollmentRecord>> {
        Self::file(self.pending_dir(), token_hash).map_or(Ok(None), |p| read(&p))
    }

    /// See [`EnrollmentStore::claimed`].
    pub fn claimed_sync(&self, token_hash: &str) -> Result<Option<EnrollmentRecord>> {
        Self::file(self.claimed_dir(), token_hash).map_or(Ok(None), |p| read(&p))
    }

    /// See [`EnrollmentStore::claim`]: one `rename(2)`, atomic on one file system. Every
    /// racer but the first finds the source gone (ENOENT).
    pub fn claim_sync(&self, record: &EnrollmentRecord) -> Result<bool> {
        let hash = &record.token_hash;
        let (Some(from), Some(to)) = (
            Self::file(self.pending_dir(), hash),
            Self::file(self.claimed_dir(), hash),
        ) else {
            return Ok(false);
        };
        let claimed = self.claimed_dir();
        std::fs::create_dir_all(&claimed).map_err(|source| Error::Io {
            action: "create directory",
            path: claimed,
            source,
        })?;
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Io {
                action: "claim (rename)",
                path: from,
                source,
            }),
        }
    }

    /// See [`EnrollmentStore::sweep`]. Files that do not parse are left for a human.
    pub fn sweep_sync(&self, now: SystemTime, grace: Duration) -> Result<usize> {
        let mut removed = 0;
        for (dir, grace) in [
            (self.pending_dir(), Duration::ZERO),
            (self.claimed_dir(), grace),
        ] {
            for (path, record) in read_dir(&dir)? {
                let done = record
                    .and_then(|r| r.expiry())
                    .is_some_and(|at| at + grace <= now);
                if done {
                    remove(&path)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

impl EnrollmentStore for FileStore {
    fn pending(&self, token_hash: String) -> BoxFuture<'_, Result<Option<EnrollmentRecord>>> {
        let store = self.clone();
        blocking(move || store.pending_sync(&token_hash))
    }

    fn claim(&self, record: EnrollmentRecord) -> BoxFuture<'_, Result<bool>> {
        let store = self.clone();
        blocking(move || store.claim_sync(&record))
    }

    fn claimed(&self, token_hash: String) -> BoxFuture<'_, Result<Option<EnrollmentRecord>>> {
        let store = self.clone();
        blocking(move || store.claimed_sync(&token_hash))
    }

    fn sweep(&self, now: SystemTime, grace: Duration) -> BoxFuture<'_, Result<usize>> {
        let store = self.clone();
        blocking(move || store.sweep_sync(now, grace))
    }
}

/// Runs file calls on the blocking pool: a slow disk must not stall a proxy worker.
fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> BoxFuture<'static, Result<T>> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| Err(Error::Config(format!("enrollment store task failed: {e}"))))
    })
}

/// The store a gate serves from, shared by its workers.
pub type SharedStore = Arc<dyn EnrollmentStore>;

fn read(path: &Path) -> Result<Option<EnrollmentRecord>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path: path.to_owned(),
                reason: format!("not an enrollment record: {e}"),
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// The `*.json` records in `dir` (none when it does not exist), each with its contents
/// when they parse. Temp files of unfinished writes start with a dot and are skipped.
fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, Option<EnrollmentRecord>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                action: "list",
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        // A file claimed or removed meanwhile is simply gone.
        let record = read(&path).ok().flatten();
        out.push((path, record));
    }
    Ok(out)
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            action: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::enroll::record::rfc3339;

    fn record(identity: &str, n: u8, expires: SystemTime) -> EnrollmentRecord {
        EnrollmentRecord {
            identity: identity.into(),
            route: None,
            host: None,
            token_hash: hex::encode([n; 32]),
            expires_at: rfc3339(expires),
            bundle: "AQ==".into(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn claim_moves_the_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("enrollments"));
        let r = record("alice", 1, at(2_000_000_000));
        store.create(&r).unwrap();
        assert_eq!(store.pending_sync(&r.token_hash).unwrap(), Some(r.clone()));
        assert_eq!(store.claimed_sync(&r.token_hash).unwrap(), None);
        assert!(store.claim_sync(&r).unwrap());
        assert!(!store.claim_sync(&r).unwrap());
        assert_eq!(store.pending_sync(&r.token_hash).unwrap(), None);
        assert_eq!(store.claimed_sync(&r.token_hash).unwrap(), Some(r));
        // Names that are not hashes never reach the file system.
        assert_eq!(store.pending_sync("../../etc/passwd").unwrap(), None);
    }

    #[test]
    fn a_new_enrollment_cancels_the_identity_s_previous_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let (old, claimed, bob) = (
            record("alice", 1, at(2_000_000_000)),
            record("alice", 2, at(2_000_000_000)),
            record("bob", 3, at(2_000_000_000)),
        );
        for r in [&old, &claimed, &bob] {
            store.create(r).unwrap();
        }
        // Creating `claimed` cancelled `old`.
        assert_eq!(store.pending_sync(&old.token_hash).unwrap(), None);
        assert!(store.claim_sync(&claimed).unwrap());
        let new = record("alice", 4, at(2_000_000_000));
        store.create(&new).unwrap();
        assert_eq!(store.claimed_sync(&claimed.token_hash).unwrap(), None);
        assert!(store.pending_sync(&new.token_hash).unwrap().is_some());
        assert!(store.pending_sync(&bob.token_hash).unwrap().is_some());
    }

    #[test]
    fn sweep_removes_what_nobody_can_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let expired = record("a", 1, at(100));
        let live = record("b", 2, at(1_000));
        let claimed = record("c", 3, at(100));
        for r in [&expired, &live, &claimed] {
            store.create(r).unwrap();
        }
        assert!(store.claim_sync(&claimed).unwrap());
        let grace = Duration::from_secs(600);
        assert_eq!(store.sweep_sync(at(200), grace).unwrap(), 1);
        assert!(store.claimed_sync(&claimed.token_hash).unwrap().is_some());
        assert_eq!(store.sweep_sync(at(700), grace).unwrap(), 1);
        assert!(store.pending_sync(&live.token_hash).unwrap().is_some());
    }

    #[test]
    fn concurrent_claims_have_exactly_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let r = record("alice", 9, at(2_000_000_000));
        store.create(&r).unwrap();
        let n = 16;
        let barrier = Arc::new(Barrier::new(n));
        let winners: usize = (0..n)
            .map(|_| {
                let (store, r, barrier) = (store.clone(), r.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.claim_sync(&r).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(winners, 1);
    }
}
