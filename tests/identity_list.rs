//! `portcullis identity list` against the real standalone gate: a device connects, the
//! admin port's `/identities` shows its connection and serial, the gate writes `seen.json`,
//! and the list shows LAST SEEN, STATE and CONNECTIONS (or says it cannot reach the gate).

mod common;
#[path = "common/standalone.rs"]
mod standalone;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{TlsClient, Upstream};
use standalone::{StandaloneProcess, free_port};

const HOST: &str = "ha.test";
const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn config(upstream: std::net::SocketAddr) -> String {
    standalone::config_yaml(HOST, upstream, &[("alice", ""), ("bob", "")])
}

/// `portcullis standalone` on loopback ports, writing seen.json every `flush`.
struct Gate(StandaloneProcess);

impl Gate {
    fn start(config: &Path, state: &Path, flush: &str) -> Gate {
        Gate(
            StandaloneProcess::builder(config, state)
                .args(["--seen-flush", flush])
                .start(),
        )
    }

    fn client(&self, identity: &str) -> TlsClient {
        TlsClient::standalone(self.0.port(), self.0.state(), Some(identity))
    }

    fn identities(&self) -> serde_json::Value {
        let (status, body) = self.0.admin_get("/identities").expect("admin answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    fn list(&self) -> (String, String) {
        list(
            self.0.state(),
            &format!("http://127.0.0.1:{}", self.0.admin()),
        )
    }

    /// SIGTERM, as `docker stop` sends it; waits for the exit.
    fn terminate(self) {
        self.0.terminate();
    }
}

/// `portcullis identity list --state-dir STATE --admin ADMIN`: (stdout, stderr).
fn list(state: &Path, admin: &str) -> (String, String) {
    let out: Output = Command::new(BIN)
        .args(["identity", "list", "--admin", admin])
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

/// The table's cells for `name`, split on runs of 2+ spaces.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serial(state: &Path, name: &str) -> String {
    let pem = std::fs::read_to_string(state.join("identities").join(name).join("tls.crt")).unwrap();
    portcullis::pki::inspect_pem(&pem).unwrap().serial_hex
}

async fn install() -> (Upstream, tempfile::TempDir, PathBuf, PathBuf) {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, state) = (dir.path().join("portcullis.yaml"), dir.path().join("state"));
    std::fs::write(&file, config(upstream.addr)).unwrap();
    (upstream, dir, file, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connection_shows_in_identities_seen_json_and_the_list() {
    let (_upstream, _dir, file, state) = install().await;
    let gate = Gate::start(&file, &state, "1s");
    let alice_serial = serial(&state, "alice");

    // Before any device: both listed, never seen, no connections.
    let (table, notes) = gate.list();
    assert_eq!(notes, "", "{notes}");
    assert_eq!(
        row(&table, "bob")[1..],
        [
            &serial(&state, "bob")[..8],
            expires(&state, "bob").as_str(),
            "never",
            "ok",
            "0"
        ]
    );

    // alice keeps a connection open.
    let mut alice = gate.client("alice").open().await.expect("connect");
    assert_eq!(alice.get("/").await.unwrap().status, 200);
    let identities = gate.identities();
    assert_eq!(identities[0]["identity"], "alice", "{identities}");
    assert_eq!(identities[0]["openConnections"], 1, "{identities}");
    assert!(
        identities[0]["seen"][&alice_serial].is_string(),
        "{identities}"
    );

    // Within a flush interval, seen.json names her serial, and the list shows it all.
    let seen_json = state.join("identities/alice/seen.json");
    wait_for("alice's seen.json", || seen_json.exists());
    let seen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&seen_json).unwrap()).unwrap();
    assert!(seen["serials"][&alice_serial].is_string(), "{seen}");
    let (table, _) = gate.list();
    let cells = row(&table, "alice");
    let short = &alice_serial[..8];
    assert_eq!(cells[1], short, "{table}");
    assert!(
        cells[3].ends_with(&format!("({short})")) && cells[3] != "never",
        "{table}"
    );
    assert_eq!(cells[4..], ["ok", "1"], "{table}");
    assert!(!state.join("identities/bob/seen.json").exists());

    // Once the gate is gone: the connections are unknown, and the list says why.
    drop(alice);
    drop(gate);
    let (table, notes) = list(&state, &format!("http://127.0.0.1:{}", free_port()));
    assert_eq!(row(&table, "alice")[5], "-", "{table}");
    assert!(
        notes.contains("connections unknown") && notes.contains("--admin"),
        "{notes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sightings_are_written_at_shutdown() {
    let (_upstream, _dir, file, state) = install().await;
    // The periodic flush never comes within the test: only the shutdown flush can write.
    let gate = Gate::start(&file, &state, "1h");
    assert_eq!(gate.client("bob").get("/").await.unwrap().status, 200);
    gate.terminate();
    let seen = state.join("identities/bob/seen.json");
    let seen: serde_json::Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert!(
        seen["serials"][&serial(&state, "bob")].is_string(),
        "{seen}"
    );
    assert!(!state.join("identities/alice/seen.json").exists());
}

fn expires(state: &Path, name: &str) -> String {
    let pem = std::fs::read_to_string(state.join("identities").join(name).join("tls.crt")).unwrap();
    let info = portcullis::pki::inspect_pem(&pem).unwrap();
    humantime::format_rfc3339_seconds(info.not_after).to_string()
}
