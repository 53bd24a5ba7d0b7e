//! The standalone source: load the config file once at start, then watch it and reload.
//!
//! Editors replace files by rename and the file may vanish for a moment, so the watch is on
//! the *directories* of every file that matters (the config, the password and certificate
//! files it names, the state dir's `cookie-keys`). Any event there, after a short debounce,
//! re-reads those files; only a change of their contents reloads. A slow poll catches what
//! events miss (symlinks swapped elsewhere), and an hourly pass renews certificates.

use std::collections::HashSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, interval_at, timeout_at};
use tokio_util::sync::CancellationToken;

use super::config::{Config, load_config};
use super::reconcile::{Expiry, reconcile};
use crate::snapshot::Snapshot;
use crate::state::StateDir;
use crate::telemetry::{CertLabels, FailureLabels, Metrics};
use crate::{Error, Result};

/// Quiet time after a file event before reloading: one save often makes several events.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest wait for quiet, so a busy directory cannot delay a revocation.
const MAX_SETTLE: Duration = Duration::from_millis(400);
/// Content check without an event.
const POLL: Duration = Duration::from_secs(60);
/// Renewal pass (certificates nearing expiry), even when nothing changed.
const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// A successful load.
pub struct Loaded {
    pub snapshot: Arc<Snapshot>,
    pub config: Config,
    /// Whether this load created the CA (the installation's first start).
    pub created_ca: bool,
    /// What changed on disk (already logged).
    pub changes: Vec<String>,
    /// The certificates in use.
    pub expiries: Vec<Expiry>,
}

/// Loads the config, reconciles the state directory and builds snapshot `generation`.
/// Blocking: it may generate keys.
/// Only generation 1 may create the CA: one vanishing under a running gate (a wiped or
/// remounted state dir) must not be replaced silently, locking out every device.
pub fn load(config: &Path, state: &StateDir, generation: u64) -> Result<Loaded> {
    let config = load_config(config)?;
    if generation > 1 && !state.ca_cert_path().exists() && !state.ca_key_path().exists() {
        return Err(Error::Corrupt {
            path: state.ca_cert_path(),
            reason: "the CA disappeared while the gate was running; restore ca/ from a backup, \
                     or restart the gate to create a new CA (every device must then be \
                     re-enrolled)"
                .into(),
        });
    }
    let outcome = reconcile(&config, state)?;
    let snapshot = Arc::new(Snapshot::build(outcome.parts, generation)?);
    Ok(Loaded {
        snapshot,
        config,
        created_ca: outcome.created_ca,
        changes: outcome.changes,
        expiries: outcome.expiries,
    })
}

/// The first load, before serving. Any problem is returned (config problems one per line)
/// so the process can exit with it; nothing is served from a bad config.
pub fn load_initial(config: &Path, state: &StateDir, metrics: &Metrics) -> Result<Initial> {
    // Check the config before touching the disk, so a typo never creates a state dir.
    let parsed = load_config(config)?;
    prepare_state_dir(state.root())?;
    // The one watched file the load may create: made first, so it does not count as an edit.
    state.load_or_create_cookie_keys()?;
    // The files' contents *before* the load: [`run`] compares against them, so an edit
    // saved while the gate starts (after this read, before its watch) is still applied.
    let config_path = std::path::absolute(config).unwrap_or_else(|_| config.to_owned());
    let mut files = Files::new(&config_path, state);
    files.track(Some(&parsed), None::<&mut notify::RecommendedWatcher>);
    files.changed();
    let loaded = load(config, state, 1)?;
    record(metrics, &loaded);
    Ok(Initial {
        loaded,
        files: Watched(files),
    })
}

/// The first load and what [`run`] watches from there.
pub struct Initial {
    pub loaded: Loaded,
    pub files: Watched,
}

/// The files a load read, as they were before it (opaque; hand it to [`run`]).
pub struct Watched(Files);

/// Creates the state directory (mode 0700) and proves it writable, so a wrong path fails
/// with one clear message before anything else happens.
fn prepare_state_dir(root: &Path) -> Result<()> {
    let fail = |action, e: std::io::Error| Error::Io {
        action,
        path: root.to_owned(),
        source: std::io::Error::new(
            e.kind(),
            format!("{e}; choose a writable directory with --state-dir"),
        ),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| fail("create the state directory", e))?;
    let probe = root.join(".portcullis-write-check");
    std::fs::write(&probe, b"").map_err(|e| fail("write into the state directory", e))?;
    // The probe proved the point; a leftover empty file would be harmless.
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Watches the config and reloads it until `shutdown`. Each good reload publishes
/// generation + 1 (and the config on `configs`, for the ACME manager); a bad one is logged
/// (every problem) and the old snapshot stays.
pub async fn run(
    config: PathBuf,
    state: StateDir,
    Watched(mut files): Watched,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    configs: watch::Sender<Config>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let config = std::path::absolute(&config).unwrap_or(config);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event| {
        if is_change(&event) {
            // The receiver is gone only when `run` returned.
            let _ = events_tx.send(event);
        }
    });
    // Without a watcher (inotify limits reached), the poll below still applies changes.
    let mut watcher = watcher
        .inspect_err(|e| tracing::warn!("cannot watch files ({e}); polling every {POLL:?}"))
        .ok();
    // Watch from now on; anything that changed since the initial load read the files is
    // applied at once (the first tick below), not at the next edit.
    files.track(None, watcher.as_mut());
    let mut poll = interval_at(Instant::now(), POLL);
    let mut renew = interval_at(Instant::now() + RENEW_CHECK, RENEW_CHECK);
    let reloader = Reloader {
        config,
        state,
        tx,
        metrics,
    };
    loop {
        let renewal = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(event) = events.recv() => {
                if let Err(e) = event {
                    tracing::warn!("file watch: {e}");
                }
                settle(&mut events).await;
                false
            }
            _ = poll.tick() => false,
            _ = renew.tick() => true,
        };
        let changed = files.changed();
        if !changed && !renewal {
            continue;
        }
        let Some(config) = reloader.reload(changed).await else {
            continue;
        };
        if files.track(Some(&config), watcher.as_mut()) {
            // New files to follow: start comparing from their current contents.
            files.changed();
        }
        configs.send_replace(config);
    }
}

/// Whether a watch event may mean new contents. Opening or reading a file is not: every
/// check reads the files, and reacting to that re-read them every debounce period forever.
fn is_change(event: &notify::Result<notify::Event>) -> bool {
    use notify::EventKind::Access;
    use notify::event::{AccessKind, AccessMode};
    match event {
        Ok(event) => match event.kind {
            Access(AccessKind::Close(AccessMode::Write)) => true,
            Access(_) => false,
            _ => true,
        },
        Err(_) => true,
    }
}

/// Waits until events stop for [`DEBOUNCE`] (at most [`MAX_SETTLE`]).
async fn settle<T>(events: &mut mpsc::UnboundedReceiver<T>) {
    let deadline = Instant::now() + MAX_SETTLE;
    loop {
        let quiet = (Instant::now() + DEBOUNCE).min(deadline);
        match timeout_at(quiet, events.recv()).await {
            Ok(Some(_)) if Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

struct Reloader {
    config: PathBuf,
    state: StateDir,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// Reloads; publishes when `publish` or when certificates changed (renewal). Returns
    /// the new config when it was accepted.
    async fn reload(&self, publish: bool) -> Option<Config> {
        let serving = self.tx.borrow().as_ref().map_or(0, |s| s.generation);
        let (config, state) = (self.config.clone(), self.state.clone());
        let result = tokio::task::spawn_blocking(move || load(&config, &state, serving + 1)).await;
        let reason = |reason| FailureLabels { reason };
        match result {
            Ok(Ok(loaded)) if publish || !loaded.changes.is_empty() => {
                record(&self.metrics, &loaded);
                let snap = &loaded.snapshot;
                let (generation, routes, identities) =
                    (snap.generation, snap.routes().len(), snap.live_count());
                self.tx.send_replace(Some(loaded.snapshot.clone()));
                self.metrics
                    .config_reloads
                    .get_or_create(&reason("ok"))
                    .inc();
                tracing::info!(generation, routes, identities, "config reloaded");
                Some(loaded.config)
            }
            Ok(Ok(loaded)) => Some(loaded.config),
            Ok(Err(e)) => {
                for line in e.to_string().lines() {
                    tracing::error!("{line}");
                }
                tracing::error!("configuration rejected; still serving generation {serving}");
                self.metrics
                    .config_reloads
                    .get_or_create(&reason("rejected"))
                    .inc();
                None
            }
            Err(e) => {
                tracing::error!("reload failed: {e}; still serving generation {serving}");
                self.metrics
                    .config_reloads
                    .get_or_create(&reason("rejected"))
                    .inc();
                None
            }
        }
    }
}

/// Updates the generation and certificate expiry metrics for a published load.
fn record(metrics: &Metrics, loaded: &Loaded) {
    metrics
        .snapshot_generation
        .set(i64::try_from(loaded.snapshot.generation).unwrap_or(i64::MAX));
    metrics.observe_live(
        loaded
            .snapshot
            .live()
            .map(|c| (c.identity.as_str(), c.serial_hex.as_str(), c.not_after)),
    );
    metrics.cert_expiry.clear();
    for e in &loaded.expiries {
        let secs = e
            .not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let labels = CertLabels {
            kind: e.kind,
            name: e.name.clone(),
        };
        metrics
            .cert_expiry
            .get_or_create(&labels)
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
    }
}

/// The files whose contents decide a reload, and the directories watched for them.
struct Files {
    config: PathBuf,
    cookie_keys: PathBuf,
    state: StateDir,
    paths: Vec<PathBuf>,
    dirs: HashSet<PathBuf>,
    contents: Vec<Option<Vec<u8>>>,
}

impl Files {
    fn new(config: &Path, state: &StateDir) -> Self {
        let cookie_keys = state.cookie_keys_path();
        let cookie_keys = std::path::absolute(&cookie_keys).unwrap_or(cookie_keys);
        let paths = vec![config.to_owned(), cookie_keys.clone()];
        Files {
            config: config.to_owned(),
            cookie_keys,
            state: state.clone(),
            paths,
            dirs: HashSet::new(),
            contents: Vec::new(),
        }
    }

    /// Follows the files `config` names (only the config file itself while none is
    /// valid). Returns whether the set of files changed.
    fn track(&mut self, config: Option<&Config>, mut watcher: Option<&mut impl Watcher>) -> bool {
        let before = self.paths.clone();
        if let Some(config) = config {
            let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
            self.paths = config.watched.iter().map(absolute).collect();
            self.paths.push(self.cookie_keys.clone());
            // Written by the ACME manager: a new certificate is a reload like any edit.
            // Its directory is made now, so the watch (on directories) can start at once.
            let acme: Vec<PathBuf> = config
                .routes
                .iter()
                .filter(|r| r.spec.server_certificate.acme.is_some())
                .map(|r| {
                    absolute(
                        &self
                            .state
                            .acme_certificate_path(super::name_of(&r.metadata)),
                    )
                })
                .collect();
            for dir in acme.iter().filter_map(|p| p.parent()) {
                if let Err(e) = std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                {
                    tracing::warn!("cannot create {}: {e}", dir.display());
                }
            }
            self.paths.extend(acme);
        }
        let dirs: Vec<PathBuf> = self
            .paths
            .iter()
            .filter_map(|p| p.parent())
            .map(Path::to_owned)
            .collect();
        for dir in dirs {
            let Some(watcher) = watcher.as_deref_mut() else {
                break;
            };
            if self.dirs.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir);
                }
                Err(e) => tracing::warn!(
                    "cannot watch {}: {e}; its changes are polled",
                    dir.display()
                ),
            }
        }
        if !self.paths.contains(&self.config) {
            self.paths.insert(0, self.config.clone());
        }
        self.paths != before
    }

    /// Re-reads the files; whether any content changed since the last call.
    fn changed(&mut self) -> bool {
        let contents: Vec<Option<Vec<u8>>> =
            self.paths.iter().map(|p| std::fs::read(p).ok()).collect();
        let changed = contents != self.contents;
        self.contents = contents;
        changed
    }
}

#[cfg(test)]
mod tests;
