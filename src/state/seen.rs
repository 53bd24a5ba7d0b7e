//! `identities/<name>/seen.json`: when the device was last admitted with each of its
//! certificates, written by the standalone gate once a minute at most and read by
//! `portcullis identity list`.
//!
//! ```json
//! {"serials": {"3f2a…": "2026-12-01T10:00:00Z"}}
//! ```

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::atomic::read_optional;
use super::{PUBLIC_MODE, StateDir, corrupt, dir_name, write_atomic};
use crate::Result;

/// File name in `identities/<name>/`.
pub const SEEN_JSON: &str = "seen.json";

/// Most serials kept per identity (the newest sightings): a device holds at most the current
/// certificate and a few superseded ones, and the file must not grow with every renewal.
const SERIALS_KEPT: usize = 8;

#[derive(Serialize, Deserialize, Default, PartialEq)]
struct SeenFile {
    /// Serial (lowercase hex) → RFC 3339 time of the last admission with it.
    #[serde(default)]
    serials: BTreeMap<String, String>,
}

impl StateDir {
    /// When each of an identity's serials was last seen; empty when never (or no file).
    pub fn load_seen(&self, name: &str) -> Result<BTreeMap<String, SystemTime>> {
        let path = self
            .identity_dir(dir_name("identity", name)?)
            .join(SEEN_JSON);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(BTreeMap::new());
        };
        let file: SeenFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e))?;
        file.serials
            .into_iter()
            .map(|(serial, at)| match humantime::parse_rfc3339_weak(&at) {
                Ok(at) => Ok((serial, at)),
                Err(e) => Err(corrupt(&path, format!("serial {serial}: {e}"))),
            })
            .collect()
    }

    /// Merges sightings (serial, time) into `seen.json`, keeping the newest time per serial
    /// and the [`SERIALS_KEPT`] most recently seen serials. Writes (atomically) only when
    /// something changed; returns whether it wrote. An identity without a directory (deleted
    /// meanwhile) is left alone; an unreadable file is replaced (Portcullis is its only
    /// writer and it holds nothing that cannot be seen again).
    pub fn record_seen(&self, name: &str, sightings: &[(String, SystemTime)]) -> Result<bool> {
        let dir = self.identity_dir(dir_name("identity", name)?);
        if !dir.is_dir() {
            return Ok(false);
        }
        let before = self.load_seen(name).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "replacing an unreadable {SEEN_JSON}");
            BTreeMap::new()
        });
        let after = merge_sightings(&before, sightings);
        if after == before {
            return Ok(false);
        }
        let file = SeenFile {
            serials: after
                .into_iter()
                .map(|(s, t)| (s, humantime::format_rfc3339_seconds(t).to_string()))
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&file).unwrap_or_default();
        json.push(b'\n');
        write_atomic(&dir.join(SEEN_JSON), &json, PUBLIC_MODE)?;
        Ok(true)
    }
}

/// `before` with `sightings` (serial, time) merged in: the newest time per serial (whole
/// seconds), at most the [`SERIALS_KEPT`] most recently seen serials; entries that are not
/// serials are ignored. Shared by `seen.json` and the ClientIdentity's `status.seen`.
pub fn merge_sightings(
    before: &BTreeMap<String, SystemTime>,
    sightings: &[(String, SystemTime)],
) -> BTreeMap<String, SystemTime> {
    let mut after = before.clone();
    for (serial, at) in sightings {
        if !is_serial(serial) {
            continue;
        }
        let at = whole_seconds(*at);
        let newest = after.entry(serial.clone()).or_insert(at);
        *newest = (*newest).max(at);
    }
    if after.len() > SERIALS_KEPT {
        let mut by_time: Vec<(SystemTime, String)> =
            after.iter().map(|(s, t)| (*t, s.clone())).collect();
        by_time.sort_by(|a, b| b.cmp(a));
        for (_, serial) in by_time.into_iter().skip(SERIALS_KEPT) {
            after.remove(&serial);
        }
    }
    after
}

/// The file keeps seconds: comparing at that precision keeps an unchanged sighting from
/// counting as a change.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// Lowercase hex, as [`crate::pki::CertInfo::serial_hex`] writes it.
fn is_serial(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn state_with(name: &str) -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        std::fs::create_dir_all(state.identity_dir(name)).unwrap();
        (tmp, state)
    }

    #[test]
    fn merges_newest_per_serial_and_writes_only_on_change() {
        let (_tmp, state) = state_with("phone");
        assert!(state.load_seen("phone").unwrap().is_empty());
        assert!(
            state
                .record_seen("phone", &[("aa01".into(), at(60))])
                .unwrap()
        );
        // Older and equal (to the second) sightings change nothing.
        let older = [
            ("aa01".into(), at(0)),
            ("aa01".into(), at(60) + Duration::from_millis(300)),
        ];
        assert!(!state.record_seen("phone", &older).unwrap());
        assert!(
            state
                .record_seen("phone", &[("bb02".into(), at(120))])
                .unwrap()
        );
        let seen = state.load_seen("phone").unwrap();
        assert_eq!(
            seen,
            BTreeMap::from([("aa01".into(), at(60)), ("bb02".into(), at(120))])
        );
        let text = std::fs::read_to_string(state.identity_dir("phone").join(SEEN_JSON)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json["serials"]["bb02"],
            humantime::format_rfc3339_seconds(at(120)).to_string()
        );
    }

    #[test]
    fn keeps_the_most_recently_seen_serials() {
        let (_tmp, state) = state_with("phone");
        let many: Vec<(String, SystemTime)> = (0..12u64)
            .map(|n| (format!("{n:02x}"), at(n * 60)))
            .collect();
        state.record_seen("phone", &many).unwrap();
        let seen = state.load_seen("phone").unwrap();
        assert_eq!(seen.len(), SERIALS_KEPT);
        assert!(seen.contains_key("0b") && !seen.contains_key("03"));
    }

    #[test]
    fn never_writes_outside_the_identity_directories_or_for_deleted_ones() {
        let (tmp, state) = state_with("phone");
        let one = [("aa".to_owned(), at(0))];
        for bad in ["../phone", "a/b", ".hidden", ""] {
            assert!(state.record_seen(bad, &one).is_err(), "{bad:?}");
        }
        assert!(!state.record_seen("gone", &one).unwrap());
        assert!(!state.identity_dir("gone").exists());
        // Not a serial: ignored rather than written.
        assert!(
            !state
                .record_seen("phone", &[("../x".into(), at(0))])
                .unwrap()
        );
        assert!(!tmp.path().join("identities/phone").join(SEEN_JSON).exists());
    }

    #[test]
    fn an_unreadable_file_is_an_error_to_readers_and_replaced_by_the_writer() {
        let (_tmp, state) = state_with("phone");
        let path = state.identity_dir("phone").join(SEEN_JSON);
        std::fs::write(&path, b"{oops").unwrap();
        let err = state.load_seen("phone").unwrap_err().to_string();
        assert!(err.contains("seen.json"), "{err}");
        assert!(state.record_seen("phone", &[("aa".into(), at(0))]).unwrap());
        assert_eq!(state.load_seen("phone").unwrap().len(), 1);
    }
}
