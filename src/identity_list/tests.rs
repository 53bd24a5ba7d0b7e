use std::time::UNIX_EPOCH;

use super::*;

const DAY: u64 = 86_400;

/// "Now" in every case: day 1000.
fn now() -> SystemTime {
    day(1000)
}

fn day(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(n * DAY)
}

fn cert(serial: &str, not_after_day: u64) -> Cert {
    Cert {
        serial: serial.into(),
        not_after: day(not_after_day),
    }
}

/// An identity with current certificate `new` (valid a year), optional superseded `old`
/// (ending on `old_ends`), and sightings (serial, day).
fn phone(old_ends: Option<u64>, seen: &[(&str, u64)]) -> Facts {
    Facts {
        name: "phone".into(),
        current: Some(cert("new", 1365)),
        previous: old_ends.map(|d| cert("old", d)).into_iter().collect(),
        seen: seen.iter().map(|(s, d)| (s.to_string(), day(*d))).collect(),
        ..Facts::default()
    }
}

#[test]
fn state_rules() {
    let expiring_soon = Facts {
        current: Some(cert("new", 1020)),
        ..phone(None, &[("new", 999)])
    };
    let cases: Vec<(&str, Facts, State, &[&str])> = vec![
        (
            "in use, far from expiry",
            phone(None, &[("new", 999)]),
            State::Ok,
            &["new"],
        ),
        (
            "never seen, nothing superseded: a new device",
            phone(None, &[]),
            State::Ok,
            &["new"],
        ),
        (
            "current expires within 30 days",
            expiring_soon,
            State::Expiring,
            &["new"],
        ),
        (
            "superseded still valid and seen after the current one",
            phone(Some(1100), &[("new", 990), ("old", 999)]),
            State::AwaitingDevice,
            &["new", "old"],
        ),
        (
            "superseded still valid, current never seen",
            phone(Some(1100), &[("old", 999)]),
            State::AwaitingDevice,
            &["new", "old"],
        ),
        (
            "superseded still valid, nothing ever seen",
            phone(Some(1100), &[]),
            State::AwaitingDevice,
            &["new", "old"],
        ),
        (
            "current seen last (both profiles renewed)",
            phone(Some(1100), &[("old", 990), ("new", 999)]),
            State::Ok,
            &["new", "old"],
        ),
        (
            "seen in the same minute: the current one counts as in use",
            phone(Some(1100), &[("old", 999), ("new", 999)]),
            State::Ok,
            &["new", "old"],
        ),
        (
            "superseded ended: no longer listed nor awaited",
            phone(Some(999), &[("old", 998)]),
            State::Ok,
            &["new"],
        ),
        (
            "revoked wins over everything",
            Facts {
                revoked: true,
                ..phone(Some(1100), &[("old", 999)])
            },
            State::Revoked,
            &["new", "old"],
        ),
        (
            "current ended",
            Facts {
                current: Some(cert("new", 999)),
                ..phone(None, &[("new", 998)])
            },
            State::Expired,
            &["new"],
        ),
        (
            "no certificate, reason known",
            Facts {
                current: None,
                blocked: Some("InvalidSpec".into()),
                ..phone(None, &[])
            },
            State::NotIssued(Some("InvalidSpec".into())),
            &[],
        ),
    ];
    for (what, facts, state, serials) in cases {
        let row = row(&facts, now());
        assert_eq!(row.state, state, "{what}");
        assert_eq!(row.serials, serials, "{what}");
        assert_eq!(row.expires, facts.current.map(|c| c.not_after), "{what}");
    }
}

#[test]
fn expiring_is_judged_on_the_certificate_in_use() {
    // The device still uses the old certificate (seen last) which ends in 10 days, while the
    // current one is far from expiry: the owner must deliver the new one (awaiting), and the
    // EXPIRES column shows the current certificate's notAfter.
    let facts = phone(Some(1010), &[("new", 900), ("old", 999)]);
    let row = row(&facts, now());
    assert_eq!(row.state, State::AwaitingDevice);
    assert_eq!(row.expires, Some(day(1365)));
    // Once the new one is in use, only its own expiry counts.
    let facts = phone(Some(1010), &[("new", 999), ("old", 900)]);
    assert_eq!(super::row(&facts, now()).state, State::Ok);
}

#[test]
fn last_seen_is_the_newest_sighting_with_its_serial() {
    let facts = phone(Some(1100), &[("old", 999), ("new", 990)]);
    assert_eq!(
        row(&facts, now()).last_seen,
        Some((Some("old".into()), day(999)))
    );
    // A status carrying only lastSeen (no serials) still shows when.
    let facts = Facts {
        last_seen: Some(day(995)),
        ..phone(None, &[])
    };
    assert_eq!(row(&facts, now()).last_seen, Some((None, day(995))));
    assert_eq!(row(&phone(None, &[]), now()).last_seen, None);
}

#[test]
fn table_aligns_columns_and_marks_unknowns() {
    let rows = vec![
        Row {
            name: "phone".into(),
            serials: vec!["0123456789abcdef".into(), "fedcba98".into()],
            expires: Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            last_seen: Some((
                Some("0123456789abcdef".into()),
                UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            )),
            state: State::AwaitingDevice,
            connections: Some(2),
        },
        Row {
            name: "tablet".into(),
            serials: vec![],
            expires: None,
            last_seen: None,
            state: State::NotIssued(None),
            connections: None,
        },
    ];
    let table = render(&rows);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("NAME     SERIAL(S)"), "{table}");
    assert!(
        lines[1].contains("01234567,fedcba98   2027-01-15T08:00:00Z"),
        "{table}"
    );
    assert!(
        lines[1].contains("2023-11-14T22:13:20Z (01234567)   awaiting device   2"),
        "{table}"
    );
    assert!(
        lines[2].contains("never") && lines[2].ends_with("not issued        -"),
        "{table}"
    );
    // Columns line up: STATE starts at the same offset in every line.
    let at = lines[0].find("STATE").unwrap();
    assert_eq!(lines[1].find("awaiting").unwrap(), at);
    assert_eq!(lines[2].find("not issued").unwrap(), at);
}

#[test]
fn cluster_facts_come_from_spec_and_status() {
    let ci: crate::resources::ClientIdentity = serde_json::from_value(serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "ClientIdentity",
        "metadata": {"name": "phone", "namespace": "home"},
        "spec": {"revoked": false},
        "status": {
            "serialNumber": "aa",
            "notAfter": "2027-01-15T08:00:00Z",
            "previous": [{"serialNumber": "bb", "notAfter": "2026-06-01T00:00:00Z"}],
            "seen": [{"serialNumber": "bb", "lastSeen": "2026-05-01T10:00:00Z"}],
            "lastSeen": "2026-05-01T10:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Issued",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }
    }))
    .unwrap();
    let facts = cluster::facts(&ci, true);
    assert_eq!(facts.name, "home/phone");
    assert_eq!(
        facts.current,
        Some(Cert {
            serial: "aa".into(),
            not_after: UNIX_EPOCH + Duration::from_secs(1_800_000_000)
        })
    );
    assert_eq!(facts.previous[0].serial, "bb");
    assert_eq!(facts.seen.keys().collect::<Vec<_>>(), vec!["bb"]);
    assert_eq!(
        (facts.revoked, facts.blocked, facts.connections),
        (false, None, None)
    );
    assert_eq!(cluster::facts(&ci, false).name, "phone");

    let mut blocked = ci.clone();
    let status = blocked.status.as_mut().unwrap();
    status.serial_number = None;
    status.conditions[0].status = "False".into();
    status.conditions[0].reason = "PasswordSecretMissing".into();
    let row = row(&cluster::facts(&blocked, false), now());
    assert_eq!(
        row.state,
        State::NotIssued(Some("PasswordSecretMissing".into()))
    );
}
