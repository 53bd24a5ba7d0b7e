//! The watcher end to end: file edits (in place and by rename) reach the snapshot
//! receiver, and a bad edit keeps the last good snapshot. Timeouts only bound a hang;
//! nothing here measures speed.

use super::*;

const CONFIG: &str = "\
apiVersion: portcullis.dev/v1alpha1
kind: ProtectedRoute
metadata:
  name: ha
spec:
  hosts: [ha.example.test]
  upstream:
    url: http://127.0.0.1:8123
---
apiVersion: portcullis.dev/v1alpha1
kind: ClientIdentity
metadata:
  name: alice
spec:
  revoked: false
";

type Rx = watch::Receiver<Option<Arc<Snapshot>>>;

async fn next(rx: &mut Rx) -> Arc<Snapshot> {
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("no reload within 20 s")
        .expect("sender alive");
    rx.borrow_and_update().clone().expect("a snapshot")
}

/// A gate's file source over [`CONFIG`]: loaded once (`load_initial`), then `before_watch`
/// runs (an edit saved while the gate starts), then `run` watches.
struct Watching {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: StateDir,
    metrics: Arc<Metrics>,
    rx: Rx,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn watching(before_watch: impl FnOnce(&Path)) -> Watching {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("standalone.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let state = StateDir::new(dir.path().join("state"));
    let metrics = Arc::new(Metrics::default());
    let initial = load_initial(&config, &state, &metrics).unwrap();
    assert_eq!(initial.loaded.snapshot.live_count(), 1);
    before_watch(&config);
    let (tx, rx) = watch::channel(Some(initial.loaded.snapshot));
    let (configs, _) = watch::channel(initial.loaded.config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(
        config.clone(),
        state.clone(),
        initial.files,
        tx,
        configs,
        metrics.clone(),
        shutdown.clone(),
    ));
    Watching {
        _dir: dir,
        config,
        state,
        metrics,
        rx,
        shutdown,
        task,
    }
}

impl Watching {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reload_and_bad_edits_keep_the_last_good_snapshot() {
    let mut w = watching(|_| {}).await;
    let (config, state, metrics, rx) = (w.config.clone(), w.state.clone(), &w.metrics, &mut w.rx);
    // Let the watcher start before the first edit.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Revoke in place.
    std::fs::write(&config, CONFIG.replace("revoked: false", "revoked: true")).unwrap();
    let snap = next(rx).await;
    assert_eq!((snap.generation, snap.live_count()), (2, 0));

    // A typo is rejected: no new snapshot, counted as rejected.
    std::fs::write(&config, CONFIG.replace("revoked: false", "revokd: false")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!rx.has_changed().unwrap());
    let rejected = FailureLabels { reason: "rejected" };
    assert_eq!(metrics.config_reloads.get_or_create(&rejected).get(), 1);

    // Fixed by an editor-style replace (write elsewhere, rename over).
    let tmp = config.with_file_name(".standalone.yaml.swp");
    std::fs::write(&tmp, CONFIG).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    let snap = next(rx).await;
    assert_eq!((snap.generation, snap.live_count()), (3, 1));

    // A cookie key rotation is a reload too.
    let keys = state.rotate_cookie_keys().unwrap();
    let snap = next(rx).await;
    assert_eq!(snap.cookie_keys(), keys.as_slice());

    // A CA that vanishes under the running gate is never silently replaced.
    std::fs::remove_dir_all(state.root().join("ca")).unwrap();
    std::fs::write(&config, CONFIG.replace("revoked: false", "revoked: true")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!rx.has_changed().unwrap());
    assert_eq!(metrics.config_reloads.get_or_create(&rejected).get(), 2);
    assert!(!state.ca_cert_path().exists());
    w.stop().await;
}

/// An edit saved while the gate starts — after the initial load read the file, before the
/// watch began — is applied as soon as the watch begins, without waiting for another edit
/// (it used to be lost: the watch took the edited file as its starting point).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_saved_during_start_up_is_not_lost() {
    let revoke = |config: &Path| {
        std::fs::write(config, CONFIG.replace("revoked: false", "revoked: true")).unwrap();
    };
    let mut w = watching(revoke).await;
    let snap = next(&mut w.rx).await;
    assert_eq!((snap.generation, snap.live_count()), (2, 0));
    w.stop().await;
}

/// A first start (which creates the cookie keys) is no edit: nothing is reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_reloads_nothing() {
    let mut w = watching(|_| {}).await;
    let reloaded = tokio::time::timeout(Duration::from_secs(2), w.rx.changed()).await;
    assert!(reloaded.is_err(), "a reload without an edit");
    w.stop().await;
}
