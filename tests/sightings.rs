//! Last seen and open connections, through the real data plane: real TLS clients against
//! `proxy::serve`, on the HTTP/1.1 fast path, through hyper (HTTP/2), with a cookie and over
//! a WebSocket, read back from the `Sightings` the mode's wiring would hold.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use portcullis::proxy::{Settings, Sighting, Sightings};

type R = TestResult;

struct Env {
    _up: Upstream,
    gate: Gate,
    sightings: Arc<Sightings>,
    alice: portcullis::pki::IssuedCert,
    bob: portcullis::pki::IssuedCert,
}

async fn env() -> Env {
    let pki = TestPki::new();
    let up = Upstream::start().await;
    let (alice, bob) = (pki.client("alice-phone"), pki.client("bob-laptop"));
    let mut route = route("ha", &[HOST], up.addr);
    route.bypass = vec![bypass("/api/webhook/", &[])];
    let spec = spec(vec![route], vec![live("alice", &alice), live("bob", &bob)]);
    let sightings = Arc::new(Sightings::default());
    let settings = Settings {
        sightings: sightings.clone(),
        ..Settings::default()
    };
    let gate = Gate::start(&pki, spec, settings).await;
    Env {
        _up: up,
        gate,
        sightings,
        alice,
        bob,
    }
}

fn open(list: &[(&str, usize)]) -> BTreeMap<String, usize> {
    list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Waits (up to 5 s) until the open-connections view equals `want`.
async fn connections_become(sightings: &Sightings, want: &[(&str, usize)]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sightings.open_connections() != open(want) {
        assert!(
            Instant::now() < deadline,
            "open connections stayed {:?}, want {want:?}",
            sightings.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn serials(drained: &[Sighting]) -> Vec<(&str, &str)> {
    drained
        .iter()
        .map(|s| (s.identity.as_str(), s.serial_hex.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_requests_on_both_http_paths_are_seen_once_a_minute_and_counted_while_open() -> R
{
    let e = env().await;
    // HTTP/1.1: the fast path.
    let mut alice = e.gate.client().cert(&e.alice).open().await?;
    for _ in 0..20 {
        assert_eq!(alice.get("/").await?.status, 200);
    }
    // HTTP/2: hyper's path.
    let mut bob = e.gate.client().cert(&e.bob).h2().open().await?;
    assert_eq!(bob.get("/").await?.status, 200);
    assert_eq!(bob.get("/").await?.status, 200);

    connections_become(&e.sightings, &[("alice", 1), ("bob", 1)]).await;
    let drained = e.sightings.drain();
    assert_eq!(
        serials(&drained),
        vec![
            ("alice", e.alice.info.serial_hex.as_str()),
            ("bob", e.bob.info.serial_hex.as_str())
        ]
    );
    // More requests within the minute reach nobody: nothing new to drain.
    alice.get("/").await?;
    bob.get("/").await?;
    let again = e.sightings.drain();
    assert!(
        again.is_empty() || again.iter().all(|s| drained.iter().any(|d| d.at < s.at)),
        "only a new minute is reported again: {again:?}"
    );

    // A second connection of alice's counts; closing them brings the count down to nothing.
    let mut second = e.gate.client().cert(&e.alice).open().await?;
    second.get("/").await?;
    connections_become(&e.sightings, &[("alice", 2), ("bob", 1)]).await;
    drop((alice, second));
    connections_become(&e.sightings, &[("bob", 1)]).await;
    drop(bob);
    connections_become(&e.sightings, &[]).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_websocket_counts_until_it_closes_and_anonymous_requests_are_not_seen() -> R {
    let e = env().await;
    let cookie = e
        .gate
        .client()
        .cert(&e.alice)
        .get("/")
        .await?
        .gate_cookie()
        .expect("a cookie");
    connections_become(&e.sightings, &[]).await;
    e.sightings.drain();

    // Certificate-less, as Safari opens Home Assistant's WebSocket: admitted by the cookie.
    let (mut ws, _) = e
        .gate
        .client()
        .websocket("/api/websocket", Some(&cookie))
        .await
        .expect("WebSocket by cookie");
    ws_roundtrip(&mut ws, "hello").await;
    // The upgraded connection outlives hyper's: it still counts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    connections_become(&e.sightings, &[("alice", 1)]).await;
    assert_eq!(
        serials(&e.sightings.drain()),
        vec![("alice", e.alice.info.serial_hex.as_str())]
    );

    // A bypass path and a refused request leave no trace.
    let anonymous = e.gate.client();
    assert_eq!(anonymous.get("/api/webhook/x").await?.status, 200);
    assert_eq!(anonymous.get("/").await?.status, 403);
    assert!(e.sightings.drain().is_empty());

    drop(ws);
    connections_become(&e.sightings, &[]).await;
    let report = e.sightings.report();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].identity, "alice");
    assert!(report[0].seen.contains_key(&e.alice.info.serial_hex));
    Ok(())
}
