use super::*;

fn cert(identity: &str, serial: &str) -> LiveCert {
    let mut fingerprint = [0u8; 32];
    fingerprint[..serial.len().min(32)].copy_from_slice(&serial.as_bytes()[..serial.len().min(32)]);
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
