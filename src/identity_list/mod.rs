//! `portcullis identity list`: one row per device identity — its serial(s), expiry, when
//! it was last seen, what needs doing, and its open connections where the CLI can know them.
//!
//! ```text
//!  standalone: identities/<name>/{tls.crt, previous.crt, seen.json} + revoked.yaml ─┐
//!              + the running gate's admin /identities (connections)                 ├─▶ Facts ─▶ row() ─▶ table
//!  Kubernetes: ClientIdentity spec.revoked + status (serialNumber, previous, seen)  ─┘
//! ```
//! [`row`] holds the rules, shared by both modes and free of I/O.

mod cluster;
mod standalone;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

pub use cluster::list_cluster;
pub use standalone::{DEFAULT_ADMIN, list_standalone};

/// A certificate in use is `expiring` this long before its notAfter.
pub const EXPIRING_WITHIN: Duration = Duration::from_secs(30 * 86_400);

/// One of an identity's certificates.
#[derive(Clone, Debug, PartialEq)]
pub struct Cert {
    /// Serial, lowercase hex.
    pub serial: String,
    pub not_after: SystemTime,
}

/// What is known of one identity, in either mode.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// `name`, or `namespace/name` across namespaces.
    pub name: String,
    /// The current certificate, once issued.
    pub current: Option<Cert>,
    /// Certificates a renewal superseded that may still be admitted, newest first.
    pub previous: Vec<Cert>,
    /// Serial → last admission with it.
    pub seen: BTreeMap<String, SystemTime>,
    /// A last admission not attributed to a serial (a status with `lastSeen` only).
    pub last_seen: Option<SystemTime>,
    /// Revoked (standalone: the current serial is on the ledger; Kubernetes: spec.revoked).
    pub revoked: bool,
    /// Why no certificate could be issued (Kubernetes: the Ready condition's reason).
    pub blocked: Option<String>,
    /// Open connections, when known.
    pub connections: Option<usize>,
}

/// What the owner should know first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// In use and not expiring soon.
    Ok,
    /// The certificate in use ends within [`EXPIRING_WITHIN`].
    Expiring,
    /// A renewed certificate has not reached the device: a superseded one is still valid and
    /// was seen more recently than the current one, or the current one was never seen.
    /// `portcullis enroll` delivers it.
    AwaitingDevice,
    /// The current certificate has ended.
    Expired,
    Revoked,
    /// No certificate yet, and why when known.
    NotIssued(Option<String>),
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Ok => f.write_str("ok"),
            State::Expiring => f.write_str("expiring"),
            State::AwaitingDevice => f.write_str("awaiting device"),
            State::Expired => f.write_str("expired"),
            State::Revoked => f.write_str("revoked"),
            State::NotIssued(None) => f.write_str("not issued"),
            State::NotIssued(Some(why)) => write!(f, "not issued ({why})"),
        }
    }
}

/// One line of the list.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    /// The current serial first, then superseded ones still valid.
    pub serials: Vec<String>,
    /// The current certificate's notAfter.
    pub expires: Option<SystemTime>,
    /// The newest admission, and with which serial when known.
    pub last_seen: Option<(Option<String>, SystemTime)>,
    pub state: State,
    pub connections: Option<usize>,
}

/// The row for `facts` at `now`: the state rules, in order —
/// revoked; not issued; expired (the current certificate ended); awaiting device (a
/// superseded certificate is still valid and the current one is not the one seen last, or
/// was never seen); expiring (within 30 days of the notAfter of the certificate in use: the
/// one seen last, else the current one); ok.
pub fn row(facts: &Facts, now: SystemTime) -> Row {
    let current = facts.current.as_ref();
    let valid_previous: Vec<&Cert> = facts
        .previous
        .iter()
        .filter(|p| now <= p.not_after && current.is_none_or(|c| c.serial != p.serial))
        .collect();
    let serials = current
        .into_iter()
        .chain(valid_previous.iter().copied())
        .map(|c| c.serial.clone())
        .collect();
    let seen = |c: &Cert| facts.seen.get(&c.serial).copied();
    let state = match current {
        _ if facts.revoked => State::Revoked,
        None => State::NotIssued(facts.blocked.clone()),
        Some(c) if now > c.not_after => State::Expired,
        Some(c) => {
            // Ties go to the current certificate: it is the one that should be in use.
            let newest_previous = valid_previous.iter().copied().max_by_key(|p| seen(p));
            let in_use = match newest_previous {
                Some(p) if seen(p) > seen(c) => p,
                _ => c,
            };
            let awaiting =
                !valid_previous.is_empty() && (seen(c).is_none() || in_use.serial != c.serial);
            if awaiting {
                State::AwaitingDevice
            } else if in_use.not_after.duration_since(now).unwrap_or_default() <= EXPIRING_WITHIN {
                State::Expiring
            } else {
                State::Ok
            }
        }
    };
    Row {
        name: facts.name.clone(),
        serials,
        expires: current.map(|c| c.not_after),
        last_seen: last_seen(facts),
        state,
        connections: facts.connections,
    }
}

/// The newest admission: by serial, or the unattributed `lastSeen` when that is newer.
fn last_seen(facts: &Facts) -> Option<(Option<String>, SystemTime)> {
    let by_serial = facts
        .seen
        .iter()
        .max_by_key(|(_, at)| **at)
        .map(|(serial, at)| (Some(serial.clone()), *at));
    match (by_serial, facts.last_seen) {
        (Some(s), Some(any)) if any > s.1 => Some((None, any)),
        (None, Some(any)) => Some((None, any)),
        (s, _) => s,
    }
}

/// The rows as an aligned table with a header line. Serials are shortened to their first 8
/// hex digits, like abbreviated commit hashes: enough to tell an identity's certificates
/// apart, and the table stays readable.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "NAME",
        "SERIAL(S)",
        "EXPIRES",
        "LAST SEEN",
        "STATE",
        "CONNECTIONS",
    ];
    let mut lines: Vec<[String; 6]> = vec![header.map(str::to_owned)];
    for r in rows {
        lines.push([
            r.name.clone(),
            if r.serials.is_empty() {
                "-".into()
            } else {
                let short: Vec<&str> = r.serials.iter().map(|s| short(s)).collect();
                short.join(",")
            },
            r.expires.map_or("-".into(), rfc3339),
            match &r.last_seen {
                None => "never".into(),
                Some((Some(serial), at)) => format!("{} ({})", rfc3339(*at), short(serial)),
                Some((None, at)) => rfc3339(*at),
            },
            r.state.to_string(),
            r.connections.map_or("-".into(), |n| n.to_string()),
        ]);
    }
    let mut widths = [0usize; 6];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (cell, w) in line.iter().zip(widths) {
            let _ = write!(text, "{cell:<w$}   ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// A serial's first 8 hex digits.
fn short(serial: &str) -> &str {
    serial.get(..8).unwrap_or(serial)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests;
