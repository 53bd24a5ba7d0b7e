//! `admit` against a model, over generated snapshots and requests: a small universe of
//! identities (some live, some expired, some unknown), cookies minted under known and
//! unknown keys for live, revoked and unknown serials, selectors, bypass rules and hostile
//! paths. The model states the contract independently of the code: certificate first,
//! then a valid cookie, then a bypass match, else denied — and never a panic.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;
use proptest::prelude::*;

use super::*;
use crate::snapshot::{CookiePolicy, LiveCert};

const HOST: &str = "ha.example";
const ROOMS: [&str; 2] = ["home", "garage"];
/// Cookie keys: the snapshot holds a subset of the first two; the third is an attacker's.
const KEYS: [[u8; 32]; 3] = [[7; 32], [9; 32], [13; 32]];
/// Identities 0..IDENTITIES exist; serials and fingerprints beyond them are unknown.
const IDENTITIES: usize = 4;
const PREFIX: &str = "/api/webhook/";

fn base() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// `offset` seconds from the base instant.
fn at(offset: i64) -> SystemTime {
    let span = Duration::from_secs(offset.unsigned_abs());
    if offset >= 0 {
        base() + span
    } else {
        base() - span
    }
}

fn serial(i: usize) -> String {
    format!("{:x}", 0xa0 + i)
}

fn fingerprint(i: usize) -> Fingerprint {
    [i as u8 + 1; 32]
}

/// One identity of the universe, whether or not the snapshot holds it.
#[derive(Debug, Clone)]
struct Identity {
    live: bool,
    room: usize,
    /// notAfter, seconds from the base instant.
    ends: i64,
}

/// A cookie as generated: either well formed from these parts, or any text.
#[derive(Debug, Clone)]
enum GenCookie {
    Minted {
        key: usize,
        serial: usize,
        other_host: bool,
        expires: i64,
    },
    Text(String),
}

#[derive(Debug, Clone)]
struct World {
    identities: Vec<Identity>,
    keys: Vec<usize>,
    selector: Option<usize>,
    cookies_on: bool,
    bypass_methods: Option<Vec<Method>>,
    method: Method,
    path: String,
    cert: Option<usize>,
    cookies: Vec<GenCookie>,
    now: i64,
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![Just(Method::GET), Just(Method::POST), Just(Method::PUT)]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_owned()),
        Just(format!("{PREFIX}abc")),
        Just(format!("{PREFIX}..%2fconfig")),
        Just(format!("{PREFIX}../config")),
        Just(format!("{PREFIX}a//b")),
        Just(format!("{PREFIX}a\\b")),
        "/api/webhook/[a-z0-9./%;_-]{0,12}",
        "[ -~]{0,24}",
        any::<String>(),
    ]
}

fn cookie() -> impl Strategy<Value = GenCookie> {
    prop_oneof![
        6 => (0..KEYS.len(), 0..IDENTITIES + 1, proptest::bool::weighted(0.2), -50i64..50).prop_map(
            |(key, serial, other_host, expires)| GenCookie::Minted { key, serial, other_host, expires }
        ),
        1 => "[ -~]{0,40}".prop_map(GenCookie::Text),
        1 => any::<String>().prop_map(GenCookie::Text),
    ]
}

fn identity() -> impl Strategy<Value = Identity> {
    (proptest::bool::weighted(0.8), 0..ROOMS.len(), -50i64..50)
        .prop_map(|(live, room, ends)| Identity { live, room, ends })
}

fn world() -> impl Strategy<Value = World> {
    (
        proptest::collection::vec(identity(), IDENTITIES),
        proptest::sample::subsequence(vec![0usize, 1], 1..=2),
        proptest::option::of(0..ROOMS.len()),
        proptest::bool::weighted(0.8),
        proptest::option::of(proptest::sample::subsequence(
            vec![Method::GET, Method::POST],
            0..=2,
        )),
        (method(), path()),
        proptest::option::weighted(0.5, 0..IDENTITIES + 2),
        proptest::collection::vec(cookie(), 0..4),
        -50i64..50,
    )
        .prop_map(
            |(
                identities,
                keys,
                selector,
                cookies_on,
                bypass_methods,
                (method, path),
                cert,
                cookies,
                now,
            )| World {
                identities,
                keys,
                selector,
                cookies_on,
                bypass_methods,
                method,
                path,
                cert,
                cookies,
                now,
            },
        )
}

impl World {
    fn route(&self) -> Route {
        Route {
            name: "home-assistant".into(),
            hosts: vec![HOST.into()],
            upstream: "127.0.0.1:8123".parse().expect("address"),
            headers: Default::default(),
            hsts: false,
            selector: self.selector.map(|room| {
                let labels = LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "room".to_owned(),
                        ROOMS[room].to_owned(),
                    )])),
                    ..Default::default()
                };
                Selector::try_from(labels).expect("selector")
            }),
            cookie: self.cookies_on.then(|| CookiePolicy {
                name: "__Host-portcullis".into(),
                ttl: Duration::from_secs(3600),
            }),
            bypass: self
                .bypass_methods
                .iter()
                .map(|methods| Bypass {
                    path_prefix: PREFIX.into(),
                    methods: methods.clone(),
                })
                .collect(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let live = self
            .identities
            .iter()
            .enumerate()
            .filter(|(_, id)| id.live)
            .map(|(i, id)| LiveCert {
                identity: format!("id{i}"),
                serial_hex: serial(i),
                fingerprint: fingerprint(i),
                labels: BTreeMap::from([("room".to_owned(), ROOMS[id.room].to_owned())]),
                not_after: at(id.ends),
            })
            .collect();
        let keys = self.keys.iter().map(|&k| KEYS[k]).collect();
        crate::snapshot::for_tests(self.route(), live, keys)
    }

    fn cookie_values(&self) -> Vec<String> {
        self.cookies
            .iter()
            .map(|c| match c {
                GenCookie::Minted {
                    key,
                    serial: s,
                    other_host,
                    expires,
                } => {
                    let host = if *other_host { "other.example" } else { HOST };
                    issue_cookie(&KEYS[*key], &serial(*s), host, at(*expires))
                }
                GenCookie::Text(text) => text.clone(),
            })
            .collect()
    }

    // === the model ===

    /// Identity `i`, if it is live.
    fn live(&self, i: usize) -> Option<&Identity> {
        self.identities.get(i).filter(|id| id.live)
    }

    fn selects(&self, id: &Identity) -> bool {
        self.selector.is_none_or(|room| room == id.room)
    }

    fn unexpired(&self, id: &Identity) -> bool {
        self.now <= id.ends
    }

    /// The identity a certificate admits: live, within its notAfter, selected.
    fn by_certificate(&self) -> Option<usize> {
        let i = self.cert?;
        let id = self.live(i)?;
        (self.unexpired(id) && self.selects(id)).then_some(i)
    }

    /// The identities a cookie admits: the route has the fallback, and a cookie signed with
    /// a key the snapshot holds, for this host, not yet expired, names a live identity
    /// within its certificate's notAfter whom the selector admits.
    fn by_cookie(&self) -> Vec<usize> {
        if !self.cookies_on {
            return vec![];
        }
        self.cookies
            .iter()
            .filter_map(|c| match c {
                GenCookie::Minted {
                    key,
                    serial,
                    other_host: false,
                    expires,
                } if self.keys.contains(key) && *expires > self.now => {
                    let id = self.live(*serial)?;
                    (self.unexpired(id) && self.selects(id)).then_some(*serial)
                }
                _ => None,
            })
            .collect()
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // A failure prints its minimal case; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn admit_follows_the_model(world in world()) {
        let snapshot = world.snapshot();
        let route = snapshot.route(HOST).expect("the route").clone();
        let values = world.cookie_values();
        let cookies: Vec<&str> = values.iter().map(String::as_str).collect();
        let fp = world.cert.map(fingerprint);
        let now = at(world.now);
        let decision = admit(
            &snapshot,
            &route,
            &Request {
                method: &world.method,
                path: &world.path,
                host: HOST,
                client_cert: fp.as_ref(),
                cookies: &cookies,
                now,
            },
        );

        let by_cookie = world.by_cookie();
        let bypass = route.bypass.iter().any(|b| bypass_matches(b, &world.method, &world.path));
        match (&decision, world.by_certificate()) {
            (Decision::Certificate { cert, cookie_due }, Some(i)) => {
                prop_assert_eq!(&cert.serial_hex, &serial(i));
                prop_assert!(!cookie_due || world.cookies_on, "a cookie due without the fallback");
            }
            (decision, Some(i)) => prop_assert!(false, "identity {i} is admitted by certificate, got {decision:?}"),
            (Decision::Certificate { .. }, None) => prop_assert!(false, "admitted by a certificate the model refuses: {decision:?}"),
            (Decision::Cookie { cert }, None) => {
                prop_assert!(
                    by_cookie.iter().any(|&i| cert.serial_hex == serial(i)),
                    "cookie admission of {} without a valid cookie for it", cert.serial_hex
                );
                // A cookie never admits a revoked, expired or unknown serial.
                let live = snapshot.live_by_serial(&cert.serial_hex);
                prop_assert!(live.is_some_and(|c| c.valid_at(now) && route.admits(c)));
            }
            (_, None) if !by_cookie.is_empty() => prop_assert!(false, "a valid cookie was refused: {decision:?}"),
            (Decision::Bypass, None) => prop_assert!(bypass, "bypass without a matching rule"),
            (Decision::Deny(reason), None) => {
                prop_assert!(!bypass, "a bypass path was denied");
                // The certificate's problem is what a denial reports.
                let expected = world.cert.map(|i| match world.live(i) {
                    None => DenyReason::CertificateNotLive,
                    Some(id) if !world.unexpired(id) => DenyReason::CertificateExpired,
                    Some(_) => DenyReason::NotAdmitted,
                });
                if let Some(expected) = expected {
                    prop_assert_eq!(*reason, expected);
                }
            }
        }
    }

    /// Whatever the bytes, cookie verification never panics and never accepts a value it
    /// did not mint.
    #[test]
    fn arbitrary_cookie_text_is_never_valid(text in any::<String>(), now in -50i64..50) {
        prop_assert!(verify_cookie(&KEYS, &text, HOST, at(now)).is_err());
    }
}

/// The property is only as good as what the generator reaches: with a fixed seed, the
/// cases reach every kind of decision, and cookies whose certificate has passed its
/// notAfter while the cookie itself is still within its TTL.
#[test]
fn the_generator_reaches_every_branch() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = world();
    let mut seen = BTreeMap::<&str, usize>::new();
    for _ in 0..512 {
        let world = strategy
            .new_tree(&mut runner)
            .expect("a generated world")
            .current();
        let kind = match (world.by_certificate(), world.by_cookie().is_empty()) {
            (Some(_), _) => "certificate",
            (None, false) => "cookie",
            (None, true) => "other",
        };
        *seen.entry(kind).or_default() += 1;
        let outlived = world.cookies_on
            && world.cookies.iter().any(|c| {
                matches!(c, GenCookie::Minted { key, serial, other_host: false, expires }
                    if world.keys.contains(key) && *expires > world.now
                        && world.live(*serial).is_some_and(|id| !world.unexpired(id)))
            });
        if outlived {
            *seen.entry("cookie outliving its certificate").or_default() += 1;
        }
    }
    for kind in [
        "certificate",
        "cookie",
        "other",
        "cookie outliving its certificate",
    ] {
        assert!(seen.get(kind).is_some_and(|&n| n >= 10), "{kind}: {seen:?}");
    }
}
