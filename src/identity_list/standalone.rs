//! The standalone list: the state directory's identity directories, and open connections
//! from the running gate's admin endpoint.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::{Cert, Facts, Row, row};
use crate::pki::inspect_pem;
use crate::pki::previous::parse_previous;
use crate::proxy::seen::IdentityReport;
use crate::state::StateDir;
use crate::{Error, Result};

/// The gate's admin address unless `--admin-listen` moved it.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// How long the admin endpoint gets to answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The rows for every identity directory in `state`, and notes for stderr (the admin
/// endpoint unreachable, an unreadable `seen.json`).
pub async fn list_standalone(state: &StateDir, admin: &str) -> Result<(Vec<Row>, Vec<String>)> {
    let mut notes = Vec::new();
    let mut facts = read_state(state, &mut notes)?;
    match open_connections(admin).await {
        Ok(open) => {
            for f in &mut facts {
                f.connections = Some(open.get(&f.name).copied().unwrap_or(0));
            }
        }
        Err(why) => notes.push(format!(
            "connections unknown: the gate's admin endpoint {admin} did not answer ({why}); \
             is `portcullis standalone` running? (pass its --admin-listen address with --admin)"
        )),
    }
    let now = SystemTime::now();
    Ok((facts.iter().map(|f| row(f, now)).collect(), notes))
}

/// One [`Facts`] per directory in `identities/`, sorted by name.
fn read_state(state: &StateDir, notes: &mut Vec<String>) -> Result<Vec<Facts>> {
    state.ensure_initialised()?;
    let dir = state.root().join("identities");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                action: "list",
                path: dir,
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    let revoked: HashSet<String> = state
        .load_revoked()?
        .into_iter()
        .map(|r| r.serial_hex)
        .collect();
    names
        .into_iter()
        .map(|name| identity(state, name, &revoked, notes))
        .collect()
}

fn identity(
    state: &StateDir,
    name: String,
    revoked: &HashSet<String>,
    notes: &mut Vec<String>,
) -> Result<Facts> {
    let cert_path = state.identity_dir(&name).join("tls.crt");
    let current = match std::fs::read_to_string(&cert_path) {
        Ok(pem) => {
            let info = inspect_pem(&pem).map_err(|e| Error::Corrupt {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
            Some(Cert {
                serial: info.serial_hex,
                not_after: info.not_after,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(Error::Io {
                action: "read",
                path: cert_path,
                source,
            });
        }
    };
    // What is on the ledger is never admitted again, whatever previous.crt holds.
    let previous = parse_previous(&state.load_previous(&name)?)
        .into_iter()
        .filter(|p| !revoked.contains(&p.info.serial_hex))
        .map(|p| Cert {
            serial: p.info.serial_hex,
            not_after: p.info.not_after,
        })
        .collect();
    let seen = state.load_seen(&name).unwrap_or_else(|e| {
        notes.push(format!("last seen unknown for {name}: {e}"));
        BTreeMap::new()
    });
    Ok(Facts {
        revoked: current
            .as_ref()
            .is_some_and(|c| revoked.contains(&c.serial)),
        name,
        current,
        previous,
        seen,
        ..Facts::default()
    })
}

/// `GET <admin>/identities` → open connections per identity.
async fn open_connections(admin: &str) -> std::result::Result<BTreeMap<String, usize>, String> {
    let reports: Vec<IdentityReport> = tokio::time::timeout(ADMIN_TIMEOUT, get_json(admin))
        .await
        .map_err(|_| format!("no answer within {}s", ADMIN_TIMEOUT.as_secs()))??;
    Ok(reports
        .into_iter()
        .map(|r| (r.identity, r.open_connections))
        .collect())
}

async fn get_json<T: serde::de::DeserializeOwned>(admin: &str) -> std::result::Result<T, String> {
    // `127.0.0.1:9090`, as --admin-listen takes it, means the same as with http://.
    let admin = match admin.contains("://") {
        true => admin.to_owned(),
        false => format!("http://{admin}"),
    };
    let base: http::Uri = admin.parse().map_err(|e| format!("not a URL: {e}"))?;
    if base.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported (the admin port has no TLS)".into());
    }
    let authority = base.authority().ok_or("the URL has no host")?.clone();
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = format!("{}/identities", base.path().trim_end_matches('/'));
    let req = http::Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("/identities answered {}", resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
}
