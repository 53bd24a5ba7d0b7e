// The one table of durations, shared by the Rust parser's unit tests
// (src/resources/validate/tests.rs) and the test against the real API server
// (tests/crd_validation.rs), which applies each one as a ClientIdentity's `validity`.
// `Some(seconds)`: accepted by both; `None`: refused by both.
// Grammar: one or more `<1-9 digits><d|h|m|s>`, summed, at most 32 characters.

/// Durations and what both sides make of them.
pub const DURATION_CASES: &[(&str, Option<u64>)] = &[
    ("1h", Some(3_600)),
    ("30m", Some(1_800)),
    ("90s", Some(90)),
    ("365d", Some(365 * 86_400)),
    ("1h30m", Some(5_400)),
    ("1d12h", Some(129_600)),
    ("2h45m30s", Some(9_930)),
    ("1m1h", Some(3_660)),
    ("0s", Some(0)),
    ("999999999d", Some(999_999_999 * 86_400)),
    ("1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d", Some(16 * 86_400)),
    ("", None),
    ("1", None),
    ("h", None),
    ("1.5h", None),
    ("-1h", None),
    ("+1h", None),
    ("1H", None),
    ("1 h", None),
    ("1h 30m", None),
    (" 1h", None),
    ("1w", None),
    ("1y", None),
    ("1ms", None),
    ("1us", None),
    ("1hour", None),
    ("30min", None),
    ("forever", None),
    ("1000000000s", None),
    ("1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d", None),
];
