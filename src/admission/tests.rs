//! Every branch of the admission decision.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;

use super::*;
use crate::snapshot::{CookiePolicy, LiveCert};

const HOST: &str = "ha.example";
const KEY: [u8; 32] = [7; 32];
const OLD_KEY: [u8; 32] = [9; 32];

fn live(name: &str, serial: &str, fp: u8, room: &str) -> LiveCert {
    LiveCert {
        identity: name.into(),
        serial_hex: serial.into(),
        fingerprint: [fp; 32],
        labels: BTreeMap::from([("room".to_owned(), room.to_owned())]),
        not_after: now() + Duration::from_secs(30 * 86_400),
    }
}

fn route(selector: Option<&str>) -> Route {
    Route {
        name: "home-assistant".into(),
        hosts: vec![HOST.into()],
        upstream: "127.0.0.1:8123".parse().unwrap(),
        selector: selector.map(|s| {
            let (k, v) = s.split_once('=').unwrap();
            let labels = LabelSelector {
                match_labels: Some(BTreeMap::from([(k.to_owned(), v.to_owned())])),
                ..Default::default()
            };
            Selector::try_from(labels).unwrap()
        }),
        cookie: Some(CookiePolicy {
            name: "__Host-portcullis".into(),
            ttl: Duration::from_secs(3600),
        }),
        bypass: vec![Bypass {
            path_prefix: "/api/webhook/".into(),
            methods: vec![Method::POST],
        }],
        headers: Default::default(),
        hsts: false,
    }
}

fn snapshot(route: Route, keys: Vec<[u8; 32]>) -> Snapshot {
    let live = vec![
        live("alice", "a1", 1, "home"),
        live("bob", "b2", 2, "garage"),
    ];
    crate::snapshot::for_tests(route, live, keys)
}

struct Case<'a> {
    method: Method,
    path: &'a str,
    cert: Option<Fingerprint>,
    cookies: Vec<String>,
    now: SystemTime,
}

impl Case<'_> {
    fn get() -> Self {
        Case {
            method: Method::GET,
            path: "/",
            cert: None,
            cookies: vec![],
            now: now(),
        }
    }
    fn decide(&self, snap: &Snapshot) -> Decision {
        let route = snap.route(HOST).unwrap().clone();
        let cookies: Vec<&str> = self.cookies.iter().map(String::as_str).collect();
        admit(
            snap,
            &route,
            &Request {
                method: &self.method,
                path: self.path,
                host: HOST,
                client_cert: self.cert.as_ref(),
                cookies: &cookies,
                now: self.now,
            },
        )
    }
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn cookie(key: &[u8; 32], serial: &str, host: &str, expires_in: i64) -> String {
    let t = now().checked_add_signed(expires_in);
    issue_cookie(key, serial, host, t)
}

trait AddSigned {
    fn checked_add_signed(self, secs: i64) -> SystemTime;
}
impl AddSigned for SystemTime {
    fn checked_add_signed(self, secs: i64) -> SystemTime {
        if secs >= 0 {
            self + Duration::from_secs(secs as u64)
        } else {
            self - Duration::from_secs(secs.unsigned_abs())
        }
    }
}

#[test]
fn live_certificate_is_admitted_and_earns_a_cookie() {
    let snap = snapshot(route(None), vec![KEY]);
    let d = Case {
        cert: Some([1; 32]),
        ..Case::get()
    }
    .decide(&snap);
    let Decision::Certificate {
        cert,
        cookie_due: true,
    } = d
    else {
        panic!("{d:?}")
    };
    assert_eq!(cert.identity, "alice");
}

#[test]
fn fresh_cookie_is_not_reissued_but_an_aging_one_is() {
    let snap = snapshot(route(None), vec![KEY]);
    let fresh = Case {
        cert: Some([1; 32]),
        cookies: vec![cookie(&KEY, "a1", HOST, 3000)],
        ..Case::get()
    };
    assert!(matches!(
        fresh.decide(&snap),
        Decision::Certificate {
            cookie_due: false,
            ..
        }
    ));
    let aging = Case {
        cert: Some([1; 32]),
        cookies: vec![cookie(&KEY, "a1", HOST, 600)],
        ..Case::get()
    };
    assert!(matches!(
        aging.decide(&snap),
        Decision::Certificate {
            cookie_due: true,
            ..
        }
    ));
    // Another identity's cookie does not count as this one's.
    let other = Case {
        cert: Some([1; 32]),
        cookies: vec![cookie(&KEY, "b2", HOST, 3000)],
        ..Case::get()
    };
    assert!(matches!(
        other.decide(&snap),
        Decision::Certificate {
            cookie_due: true,
            ..
        }
    ));
}

#[test]
fn no_cookie_is_set_when_the_fallback_is_off() {
    let mut r = route(None);
    r.cookie = None;
    let snap = snapshot(r, vec![KEY]);
    let d = Case {
        cert: Some([1; 32]),
        ..Case::get()
    }
    .decide(&snap);
    assert!(matches!(
        d,
        Decision::Certificate {
            cookie_due: false,
            ..
        }
    ));
    let by_cookie = Case {
        cookies: vec![cookie(&KEY, "a1", HOST, 600)],
        ..Case::get()
    };
    assert_eq!(
        by_cookie.decide(&snap),
        Decision::Deny(DenyReason::NoCredentials)
    );
}

#[test]
fn certificate_not_live_is_denied() {
    let snap = snapshot(route(None), vec![KEY]);
    let d = Case {
        cert: Some([3; 32]),
        ..Case::get()
    }
    .decide(&snap);
    assert_eq!(d, Decision::Deny(DenyReason::CertificateNotLive));
}

#[test]
fn selector_limits_who_the_route_admits() {
    let snap = snapshot(route(Some("room=home")), vec![KEY]);
    assert!(matches!(
        Case {
            cert: Some([1; 32]),
            ..Case::get()
        }
        .decide(&snap),
        Decision::Certificate { .. }
    ));
    assert_eq!(
        Case {
            cert: Some([2; 32]),
            ..Case::get()
        }
        .decide(&snap),
        Decision::Deny(DenyReason::NotAdmitted)
    );
    let bob_cookie = Case {
        cookies: vec![cookie(&KEY, "b2", HOST, 600)],
        ..Case::get()
    };
    assert_eq!(
        bob_cookie.decide(&snap),
        Decision::Deny(DenyReason::NotAdmitted)
    );
}

#[test]
fn nothing_at_all_is_denied() {
    let snap = snapshot(route(None), vec![KEY]);
    assert_eq!(
        Case::get().decide(&snap),
        Decision::Deny(DenyReason::NoCredentials)
    );
}

#[test]
fn valid_cookie_is_admitted_under_current_and_previous_key() {
    let snap = snapshot(route(None), vec![KEY, OLD_KEY]);
    for key in [KEY, OLD_KEY] {
        let d = Case {
            cookies: vec![cookie(&key, "a1", HOST, 60)],
            ..Case::get()
        }
        .decide(&snap);
        let Decision::Cookie { cert } = d else {
            panic!("{d:?}")
        };
        assert_eq!(cert.identity, "alice");
    }
}

#[test]
fn bad_cookies_are_denied_with_a_reason() {
    let snap = snapshot(route(None), vec![KEY]);
    let deny = |c: String| {
        Case {
            cookies: vec![c],
            ..Case::get()
        }
        .decide(&snap)
    };
    let good = cookie(&KEY, "a1", HOST, 60);

    let mut tampered = good.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(deny(tampered), Decision::Deny(DenyReason::CookieInvalid));
    // Swapping the serial breaks the MAC.
    assert_eq!(
        deny(good.replacen("a1", "b2", 1)),
        Decision::Deny(DenyReason::CookieInvalid)
    );
    assert_eq!(
        deny(cookie(&[1; 32], "a1", HOST, 60)),
        Decision::Deny(DenyReason::CookieInvalid)
    );
    assert_eq!(
        deny(cookie(&KEY, "a1", "other.example", 60)),
        Decision::Deny(DenyReason::CookieInvalid)
    );
    assert_eq!(
        deny(cookie(&KEY, "a1", HOST, -1)),
        Decision::Deny(DenyReason::CookieExpired)
    );
    assert_eq!(
        deny(cookie(&KEY, "dead", HOST, 60)),
        Decision::Deny(DenyReason::CookieIdentityGone)
    );
    for junk in [
        "",
        "v1",
        "v1...",
        "v2.a1.1.x",
        "v1.zz.1.AAAA",
        &"v1.a1.9.".repeat(100),
    ] {
        assert_eq!(
            deny(junk.to_owned()),
            Decision::Deny(DenyReason::CookieInvalid),
            "{junk}"
        );
    }
}

#[test]
fn one_good_cookie_among_junk_is_enough() {
    let snap = snapshot(route(None), vec![KEY]);
    let c = Case {
        cookies: vec!["junk".into(), cookie(&KEY, "a1", HOST, 60)],
        ..Case::get()
    };
    assert!(matches!(c.decide(&snap), Decision::Cookie { .. }));
}

#[test]
fn certificate_problem_is_reported_before_cookie_problem() {
    let snap = snapshot(route(None), vec![KEY]);
    let c = Case {
        cert: Some([3; 32]),
        cookies: vec!["junk".into()],
        ..Case::get()
    };
    assert_eq!(
        c.decide(&snap),
        Decision::Deny(DenyReason::CertificateNotLive)
    );
}

#[test]
fn bypass_needs_prefix_method_and_a_canonical_path() {
    let snap = snapshot(route(None), vec![KEY]);
    let post = |path| {
        Case {
            method: Method::POST,
            path,
            ..Case::get()
        }
        .decide(&snap)
    };
    assert_eq!(post("/api/webhook/abc123"), Decision::Bypass);
    assert_eq!(
        post("/api/webhook/abc?x=1"),
        Decision::Bypass,
        "query is not part of path"
    );
    let get = Case {
        path: "/api/webhook/abc",
        ..Case::get()
    };
    assert_eq!(get.decide(&snap), Decision::Deny(DenyReason::NoCredentials));
    for trick in [
        "/api/webhook/../config",
        "/api/webhook/./x",
        "/api/webhook/..;/config",
        "/api/webhook/..;jsessionid=x/config",
        "/api/webhook/.;/x",
        "/api/webhook/%2e%2e/config",
        "/api/webhook/%2E%2E/config",
        "/api/webhook/..%2fconfig",
        "/api/webhook/x%2F..%2F..%2Fconfig",
        "/api/webhook//x",
        "/api/webhook/x\\..\\config",
        "/api/webhook/%252e%252e/config",
        "/api/webhookx",
        "/api/webhook",
        "/API/webhook/x",
        "api/webhook/x",
    ] {
        assert_eq!(
            post(trick),
            Decision::Deny(DenyReason::NoCredentials),
            "{trick}"
        );
    }
}

#[test]
fn cookie_values_reads_every_cookie_header() {
    let mut h = http::HeaderMap::new();
    h.append(
        http::header::COOKIE,
        "a=1; __Host-portcullis=one".parse().unwrap(),
    );
    h.append(
        http::header::COOKIE,
        "__Host-portcullis=\"two\"".parse().unwrap(),
    );
    assert_eq!(cookie_values(&h, "__Host-portcullis"), vec!["one", "two"]);
    assert!(cookie_values(&h, "missing").is_empty());
}

/// alice's certificate ends 100 s after `now()`; bob's is far off.
fn snapshot_with_alice_ending_soon() -> Snapshot {
    let mut alice = live("alice", "a1", 1, "home");
    alice.not_after = now() + Duration::from_secs(100);
    let live = vec![alice, live("bob", "b2", 2, "garage")];
    crate::snapshot::for_tests(route(None), live, vec![KEY])
}

#[test]
fn a_certificate_past_its_not_after_is_refused_even_without_a_new_snapshot() {
    let snap = snapshot_with_alice_ending_soon();
    let at = |secs: u64| Case {
        cert: Some([1; 32]),
        now: now() + Duration::from_secs(secs),
        ..Case::get()
    };
    assert!(matches!(
        at(100).decide(&snap),
        Decision::Certificate { .. }
    ));
    assert_eq!(
        at(101).decide(&snap),
        Decision::Deny(DenyReason::CertificateExpired)
    );
}

#[test]
fn a_cookie_is_refused_past_the_not_after_of_the_certificate_that_earned_it() {
    let snap = snapshot_with_alice_ending_soon();
    // A cookie signed to last an hour (minted before the cap existed, or by a bug).
    let long = Case {
        cookies: vec![cookie(&KEY, "a1", HOST, 3600)],
        now: now() + Duration::from_secs(101),
        ..Case::get()
    };
    assert_eq!(
        long.decide(&snap),
        Decision::Deny(DenyReason::CookieExpired)
    );
    let before = Case {
        now: now() + Duration::from_secs(99),
        ..long
    };
    assert!(matches!(before.decide(&snap), Decision::Cookie { .. }));
}

#[test]
fn a_cookie_capped_at_the_certificates_end_is_not_minted_again_on_every_request() {
    let snap = snapshot_with_alice_ending_soon();
    let capped = Case {
        cert: Some([1; 32]),
        cookies: vec![cookie(&KEY, "a1", HOST, 100)],
        ..Case::get()
    };
    assert!(matches!(
        capped.decide(&snap),
        Decision::Certificate {
            cookie_due: false,
            ..
        }
    ));
}
