//! The standalone binary end to end, as a user runs it: a config file on disk, a real
//! upstream, real TLS clients; edits to the file apply without a restart.

mod common;
#[path = "common/standalone.rs"]
mod standalone;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Outcome, TlsClient, Upstream, ws_next, ws_roundtrip};
use standalone::{StandaloneProcess, free_port};

const HOST: &str = "ha.test";

fn config(upstream: std::net::SocketAddr, alice_revoked: bool, extra: &str) -> String {
    let alice = format!("revoked: {alice_revoked}");
    standalone::config_yaml(HOST, upstream, &[("alice", &alice), ("bob", "")]) + extra
}

/// Writes like an editor: a new file renamed over the old one.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A config file for the real upstream and a state dir, both in a temp dir.
struct Install {
    upstream: Upstream,
    file: PathBuf,
    state: PathBuf,
    dir: tempfile::TempDir,
}

impl Install {
    async fn new() -> Install {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (file, state) = (dir.path().join("portcullis.yaml"), dir.path().join("state"));
        let install = Install {
            upstream,
            file,
            state,
            dir,
        };
        install.save(false, "");
        install
    }

    fn save(&self, alice_revoked: bool, extra: &str) {
        save(
            &self.file,
            &config(self.upstream.addr, alice_revoked, extra),
        );
    }

    fn start(&self) -> StandaloneProcess {
        StandaloneProcess::start(&self.file, &self.state)
    }
}

/// A TLS client of `gate`, presenting `identity`'s device certificate if one is given.
fn client(gate: &StandaloneProcess, identity: Option<&str>) -> TlsClient {
    TlsClient::standalone(gate.port(), gate.state(), identity)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_file_revokes_at_once_and_bad_edits_keep_serving() {
    let install = Install::new().await;
    let gate = install.start();

    let (alice, bob) = (client(&gate, Some("alice")), client(&gate, Some("bob")));
    assert_eq!(alice.get("/").await.unwrap().status, 200);
    assert_eq!(client(&gate, None).get("/").await.unwrap().status, 403);
    let (mut alice_ws, _) = alice
        .websocket("/api/websocket", None)
        .await
        .expect("alice WebSocket");
    let (mut bob_ws, _) = bob
        .websocket("/api/websocket", None)
        .await
        .expect("bob WebSocket");
    ws_roundtrip(&mut alice_ws, "hello").await;

    // A broken edit is rejected; everything keeps working as before.
    install.save(false, "---\nkind: ClientIdentity\nspec: [oops\n");
    tokio::time::sleep(Duration::from_millis(600)).await;
    ws_roundtrip(&mut alice_ws, "still here").await;
    assert_eq!(bob.get("/").await.unwrap().status, 200);

    // Revoking alice in the file closes her open WebSocket within a second; bob's stays.
    let saved = Instant::now();
    install.save(true, "");
    let closed = ws_next(&mut alice_ws, Duration::from_secs(1)).await;
    assert_eq!(
        closed,
        Ok(None),
        "alice's WebSocket must close within 1 s of the save"
    );
    eprintln!(
        "alice's WebSocket closed {:?} after the save",
        saved.elapsed()
    );
    ws_roundtrip(&mut bob_ws, "bob unaffected").await;
    match alice.probe().await {
        Outcome::Refused(_) => {}
        other => panic!("alice's certificate must fail the handshake, got {other:?}"),
    }
    let crl = String::from_utf8(read(&install.state.join("crl.pem"))).unwrap();
    assert!(crl.contains("BEGIN X509 CRL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_ca_and_every_device_certificate() {
    let install = Install::new().await;
    let files = [
        "ca/tls.crt",
        "ca/tls.key",
        "cookie-keys",
        "routes/home-assistant/tls.crt",
        "identities/alice/tls.crt",
        "identities/alice/tls.key",
        "identities/alice/keystore.p12",
        "identities/bob/tls.crt",
    ];

    let gate = install.start();
    let before: Vec<Vec<u8>> = files.iter().map(|f| read(&install.state.join(f))).collect();
    let alice = client(&gate, Some("alice"));
    let cookie = alice
        .get("/")
        .await
        .unwrap()
        .gate_cookie()
        .expect("a cookie");
    drop(gate);

    let gate = install.start();
    for (name, bytes) in files.iter().zip(&before) {
        assert_eq!(
            &read(&install.state.join(name)),
            bytes,
            "{name} changed across a restart"
        );
    }
    // The same device files still work, and so does a cookie from before the restart.
    assert_eq!(
        client(&gate, Some("alice")).get("/").await.unwrap().status,
        200
    );
    let (mut ws, _) = client(&gate, None)
        .websocket("/api/websocket", Some(&cookie))
        .await
        .expect("a cookie from before the restart opens the WebSocket");
    ws_roundtrip(&mut ws, "after restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gate_on_the_same_port_is_refused() {
    // Each worker has its own socket on the port (SO_REUSEPORT); a second gate, e.g. a
    // forgotten manual run next to the service, must not join it and take a share of
    // the connections with another configuration.
    let install = Install::new().await;
    let gate = install.start();

    let other_state = install.dir.path().join("other-state");
    let mut second = standalone::command(&install.file, &other_state, gate.port(), free_port())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run a second gate");
    let deadline = Instant::now() + Duration::from_secs(10);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second gate is running on the first gate's port");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "the second gate started: {stderr}"
    );
    assert!(
        stderr.contains("another process holds the port") && stderr.contains("--listen"),
        "{stderr}"
    );
    // Every new connection still reaches the first gate.
    let alice = client(&gate, Some("alice"));
    for _ in 0..8 {
        assert_eq!(alice.get("/").await.unwrap().status, 200);
    }
}

/// Read system calls the process has made so far (`syscr` in /proc/PID/io).
fn read_syscalls(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("syscr: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("syscr in /proc/PID/io")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gate_does_not_keep_rereading_its_files() {
    // Reading a watched file raises an "opened" event; reacting to it re-read the files
    // every debounce period, forever.
    let install = Install::new().await;
    let gate = install.start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = gate.pid();
    let before = read_syscalls(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = read_syscalls(pid) - before;
    assert!(reads < 10, "{reads} read calls in 2 idle seconds");
    // And an edit is still noticed.
    install.save(true, "");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !client(&gate, Some("alice")).probe().await.is_refused() {
        assert!(Instant::now() < deadline, "the revoke was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_keeps_the_old_certificate_admitted_and_a_revoke_takes_both() {
    let install = Install::new().await;
    let gate = install.start();
    let old = client(&gate, Some("alice"));
    assert_eq!(old.get("/").await.unwrap().status, 200);
    let (mut old_ws, _) = old
        .websocket("/api/websocket", None)
        .await
        .expect("WebSocket with the first certificate");
    let first = read(&install.state.join("identities/alice/tls.crt"));

    // A spec change re-issues alice's certificate; the phone still holds the first one.
    let renamed = |revoked: bool| {
        config(install.upstream.addr, revoked, "").replacen(
            "  name: alice\nspec:\n",
            "  name: alice\nspec:\n  commonName: alice-renamed\n",
            1,
        )
    };
    save(&install.file, &renamed(false));
    let deadline = Instant::now() + Duration::from_secs(10);
    while read(&install.state.join("identities/alice/tls.crt")) == first {
        assert!(Instant::now() < deadline, "alice was not re-issued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = client(&gate, Some("alice"));
    assert_eq!(new.get("/").await.unwrap().status, 200, "new certificate");
    assert_eq!(
        old.get("/").await.unwrap().status,
        200,
        "a re-issue must not lock out the certificate the device holds"
    );
    ws_roundtrip(&mut old_ws, "still open after the renewal").await;
    assert_eq!(
        read(&install.state.join("identities/alice/previous.crt")),
        first,
        "previous.crt holds the superseded certificate"
    );
    let ledger = std::fs::read_to_string(install.state.join("revoked.yaml")).unwrap_or_default();
    assert!(
        !ledger.contains("serial:"),
        "nothing revoked by a renewal: {ledger}"
    );

    // Revoking the identity takes every serial it has: both handshakes and the WebSocket.
    save(&install.file, &renamed(true));
    assert_eq!(
        ws_next(&mut old_ws, Duration::from_secs(2)).await,
        Ok(None),
        "the old certificate's WebSocket closes on revoke"
    );
    for (which, client) in [("old", &old), ("new", &new)] {
        assert!(
            client.probe().await.is_refused(),
            "{which} certificate after revoke"
        );
    }
}

/// A route on `ha.test` and the IP address `127.0.0.1` admitting the identities that match
/// `selector` (one `key: value`), and two identities, alice and bob, both of the household.
fn selecting(upstream: std::net::SocketAddr, selector: &str) -> String {
    let identity = |name: &str| {
        format!(
            "---\napiVersion: portcullis.dev/v1alpha1\nkind: ClientIdentity\nmetadata:\n  \
             name: {name}\n  labels:\n    household: home\n    person: {name}\nspec: {{}}\n"
        )
    };
    format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: ProtectedRoute\nmetadata:\n  \
         name: home-assistant\nspec:\n  hosts: [{HOST}, 127.0.0.1]\n  upstream:\n    \
         url: http://{upstream}\n  clientAuth:\n    identitySelector:\n      matchLabels:\n        \
         {selector}\n"
    ) + &identity("alice")
        + &identity("bob")
}

/// Regression: a connection without SNI (a client given the gate's IP address) was held
/// only to its identity staying live, so when the route it was admitted on stopped
/// selecting the identity it stayed open. It is closed now like a revoked identity's, and
/// one still admitted stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_change_closes_connections_without_sni() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, state) = (dir.path().join("portcullis.yaml"), dir.path().join("state"));
    save(&file, &selecting(upstream.addr, "household: home"));
    let gate = StandaloneProcess::start(&file, &state);
    // An IP address as the server name: rustls sends no SNI for it.
    let by_ip = |identity: &str| client(&gate, Some(identity)).sni("127.0.0.1");

    let mut alice_conn = by_ip("alice").open().await.unwrap();
    assert_eq!(alice_conn.get("/").await.unwrap().status, 200);
    let mut bob_conn = by_ip("bob").open().await.unwrap();
    assert_eq!(bob_conn.get("/").await.unwrap().status, 200);
    let (mut alice_ws, _) = by_ip("alice")
        .websocket("/api/websocket", None)
        .await
        .expect("alice's WebSocket");
    let (mut bob_ws, _) = by_ip("bob")
        .websocket("/api/websocket", None)
        .await
        .expect("bob's WebSocket");
    ws_roundtrip(&mut alice_ws, "hello").await;

    // The route now selects bob only.
    let saved = Instant::now();
    save(&file, &selecting(upstream.addr, "person: bob"));
    assert!(
        alice_conn.closed_within(Duration::from_secs(3)).await,
        "alice's keep-alive connection without SNI must close once the route stops selecting her"
    );
    eprintln!(
        "alice's connection closed {:?} after the save",
        saved.elapsed()
    );
    assert_eq!(
        ws_next(&mut alice_ws, Duration::from_secs(3)).await,
        Ok(None),
        "alice's WebSocket must close"
    );
    ws_roundtrip(&mut bob_ws, "bob unaffected").await;
    assert!(!bob_conn.closed_within(Duration::from_millis(300)).await);
    assert_eq!(bob_conn.get("/").await.unwrap().status, 200);
    assert_eq!(by_ip("alice").get("/").await.unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_off_for_a_ca_minted_route_until_the_file_turns_it_on() {
    let install = Install::new().await;
    let gate = install.start();
    let sts = |resp: &common::Resp| resp.header("strict-transport-security").map(str::to_owned);
    let alice = client(&gate, Some("alice"));
    // The default for a certificate no phone trusts: no header, admitted or refused.
    assert_eq!(sts(&alice.get("/").await.unwrap()), None);
    assert_eq!(sts(&client(&gate, None).get("/").await.unwrap()), None);

    let on = config(install.upstream.addr, false, "")
        .replace("spec:\n  hosts:", "spec:\n  hsts: true\n  hosts:");
    save(&install.file, &on);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sts(&alice.get("/").await.unwrap()).is_none() {
        assert!(Instant::now() < deadline, "hsts: true was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = client(&gate, None).get("/").await.unwrap();
    assert_eq!(refused.status, 403);
    assert_eq!(sts(&refused).as_deref(), Some("max-age=31536000"));
}
