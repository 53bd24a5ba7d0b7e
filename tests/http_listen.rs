//! `portcullis standalone --http-listen`: the real binary's plain-HTTP listener, spoken to
//! over raw loopback TCP. It redirects configured hosts to https, answers nothing else,
//! cuts slow and oversized heads, and says how to fix a bind it cannot make.

#[path = "common/standalone.rs"]
mod standalone;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use standalone::{StandaloneProcess, free_port};

const HOST: &str = "ha.test";
/// How long a test waits for an answer it expects.
const WAIT: Duration = Duration::from_secs(5);

/// A gate with a plain-HTTP listener, its config file and its temp dir.
struct Gate {
    gate: StandaloneProcess,
    http: u16,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

fn config(host: &str) -> String {
    // The upstream is never reached: nothing on this listener is proxied.
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    standalone::config_yaml(host, upstream, &[])
}

fn start() -> Gate {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(&file, config(HOST)).unwrap();
    let http = free_port();
    let gate = StandaloneProcess::builder(&file, &dir.path().join("state"))
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .start();
    Gate {
        gate,
        http,
        file,
        _dir: dir,
    }
}

/// Sends `request` and reads until the gate closes (within [`WAIT`]). A reset ends the
/// answer too: closing with unread request bytes resets the connection.
fn exchange(port: u16, request: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let _ = tcp.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!(
                    "no end to the answer within {WAIT:?}: {}",
                    String::from_utf8_lossy(&answer)
                )
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or(answer)
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split_once("\r\n\r\n")?.0;
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[test]
fn configured_hosts_are_redirected_and_nothing_else_is_answered() {
    let g = start();

    let answer = exchange(g.http, &get("/lovelace/0?edit=1&q=a%20b", "HA.test:80"));
    assert_eq!(status(&answer), "308", "{answer}");
    assert_eq!(
        header(&answer, "location"),
        Some("https://ha.test/lovelace/0?edit=1&q=a%20b"),
        "{answer}"
    );
    // Any method: a redirect, never a request sent on.
    let post = format!(
        "POST /api/states HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\
         Connection: close\r\n\r\nhello"
    );
    let answer = exchange(g.http, &post);
    assert_eq!(status(&answer), "308", "{answer}");
    assert_eq!(
        header(&answer, "location"),
        Some("https://ha.test/api/states")
    );

    let answer = exchange(g.http, &get("/", "other.test"));
    assert_eq!(status(&answer), "404", "{answer}");
    assert_eq!(body(&answer), "no route for this host\n");
    assert!(header(&answer, "location").is_none(), "{answer}");
    for no_host in [
        "GET / HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let answer = exchange(g.http, no_host);
        assert_eq!(status(&answer), "404", "{no_host:?}: {answer}");
        assert!(body(&answer).contains("no Host header"), "{answer}");
    }

    // No challenge is pending: an unknown token is not found, even on a configured host.
    let answer = exchange(g.http, &get("/.well-known/acme-challenge/abc123", HOST));
    assert_eq!(status(&answer), "404", "{answer}");
    assert_eq!(body(&answer), "unknown ACME challenge token\n");

    let (_, metrics) = g.gate.admin_get("/metrics").expect("metrics");
    for line in [
        r#"portcullis_http_requests_total{outcome="redirect"} 2"#,
        r#"portcullis_http_requests_total{outcome="not_found"} 4"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    // The hosts come from the newest configuration: a renamed host redirects without a
    // restart, and the old one no longer does.
    std::fs::write(&g.file, config("home.test")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&exchange(g.http, &get("/", "home.test"))) != "308" {
        assert!(
            Instant::now() < deadline,
            "the new host was never redirected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&exchange(g.http, &get("/", HOST))), "404");
}

#[test]
fn oversized_and_trickling_heads_are_cut() {
    let g = start();
    let pad = "p".repeat(16 * 1024);
    let big = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: {pad}\r\n\r\n");
    let answer = exchange(g.http, &big);
    assert_eq!(status(&answer), "431", "{answer:?}");

    // A slow-loris client: one byte of a head that never ends, every 500 ms.
    let mut tcp = TcpStream::connect(("127.0.0.1", g.http)).unwrap();
    let started = Instant::now();
    let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: ");
    let mut cut = None;
    for byte in head.bytes().chain(std::iter::repeat(b'p')) {
        if tcp.write_all(&[byte]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let cut = cut.expect("a head trickling in for 20 s was never cut");
    // The header-read timeout is 10 s (the second write after the close is the one that fails).
    assert!(
        cut >= Duration::from_secs(9) && cut < Duration::from_secs(13),
        "cut after {cut:?}"
    );
}

/// The gate's command line with only `--http-listen` worth binding: `(status ok, stderr)`.
/// The bind comes before the config is read, so the config need not exist.
fn bind_only(wrapper: &[&str], http: &str) -> (bool, String) {
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    let out = cmd
        .args(["standalone", "--config", "/nonexistent/portcullis.yaml"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--http-listen", http])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bind_it_cannot_make_names_the_flag_and_the_fix() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let (ok, stderr) = bind_only(&[], &addr);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}"))
            && stderr.contains("another process holds the port")
            && stderr.contains("--http-listen"),
        "{stderr}"
    );

    // Port 80 without the privilege: as root, drop to nobody first.
    let unprivileged_start: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    if unprivileged_start <= 80 {
        eprintln!("skipped the port-80 case: this kernel lets anyone bind it");
        return;
    }
    let wrapper: &[&str] = match is_root() {
        true if Path::new("/usr/bin/setpriv").exists() => &[
            "/usr/bin/setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        true => {
            eprintln!("skipped the port-80 case: root, and no setpriv to drop privileges");
            return;
        }
        false => &[],
    };
    let (ok, stderr) = bind_only(wrapper, "127.0.0.1:80");
    assert!(!ok);
    for part in [
        "cannot listen on 127.0.0.1:80",
        "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "forward the port",
        "--http-listen",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uid = s.lines().find(|l| l.starts_with("Uid:"))?;
            Some(uid.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false)
}

/// The example unit parses as systemd reads it (`systemd-analyze verify`, where present),
/// starting this build's binary with the flags it names.
#[test]
fn the_systemd_example_verifies() {
    let Ok(status) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: no systemd-analyze here");
        return;
    };
    assert!(status.status.success());
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd/portcullis.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for part in [
        "--listen 0.0.0.0:443",
        "--http-listen 0.0.0.0:80",
        "--state-dir /var/lib/portcullis",
        "StateDirectory=portcullis",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ] {
        assert!(
            text.contains(part),
            "{part:?} missing from {}",
            unit.display()
        );
    }
    // verify checks that ExecStart's binary exists: this build's stands in.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("portcullis.service");
    let bin = env!("CARGO_BIN_EXE_portcullis");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/portcullis ", &format!("{bin} ")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
