//! Enrollment links on the real proxy (in process): real TLS clients without certificates
//! open, claim and download a link; the store is the standalone file store in a temp dir.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::enroll::openssl_opens;
use common::{
    COOKIE_NAME, Gate, HOST, OTHER_HOST, ReqBody, Resp, TestResult, Upstream, get, live, post,
    route, spec,
};
use http::{Request, StatusCode};
use portcullis::enroll::{
    CLAIM_COOKIE, Created, EnrollmentRecord, Enrollments, FileStore, Limiter, NewEnrollment,
    PREFIX, prepare,
};
use portcullis::pki::IssuedCert;
use portcullis::proxy::Settings;

type R = TestResult;

struct Env {
    gate: Gate,
    upstream: Upstream,
    pki: common::TestPki,
    alice: IssuedCert,
    store: FileStore,
    _dir: tempfile::TempDir,
}

/// One route `ha.test` admitting every live identity, `other.test` admitting only
/// `role=admin`; alice, dave and erin are live (no labels).
async fn env_with(limiter: Limiter) -> Env {
    let upstream = Upstream::start().await;
    let pki = common::TestPki::new();
    let alice = pki.client("alice");
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("enrollments"));
    let service = Enrollments::with_limiter(Some(Arc::new(store.clone())), limiter);
    let settings = Settings {
        enrollments: Some(Arc::new(service)),
        ..Settings::default()
    };
    let mut admins = route("admins", &[OTHER_HOST], upstream.addr);
    admins.selector = Some(kube::core::Selector::from_iter([("role", "admin")]));
    let routes = vec![route("ha", &[HOST], upstream.addr), admins];
    let live = vec![
        live("alice", &alice),
        live("dave", &pki.client("dave")),
        live("erin", &pki.client("erin")),
    ];
    let gate = Gate::start(&pki, spec(routes, live), settings).await;
    Env {
        gate,
        upstream,
        pki,
        alice,
        store,
        _dir: dir,
    }
}

async fn env() -> Env {
    env_with(Limiter::default()).await
}

impl Env {
    /// A link for `identity` (alice's certificate), expiring `ttl` after `now`.
    fn enroll_at(&self, identity: &str, now: SystemTime, ttl: Duration) -> Link {
        let ca = self.pki.ca_der();
        let created = prepare(
            &NewEnrollment {
                identity,
                display_name: identity,
                cert: &self.alice,
                ca_cert_der: ca.as_ref(),
                base_url: &format!("https://{HOST}"),
                route: Some("ha"),
                host: Some(HOST),
                ttl,
                now,
            },
            &ring::rand::SystemRandom::new(),
        )
        .expect("prepare");
        self.store.create(&created.record).expect("store");
        Link(created)
    }

    fn enroll(&self, identity: &str) -> Link {
        self.enroll_at(identity, SystemTime::now(), Duration::from_secs(900))
    }

    /// A browser without a certificate.
    async fn send(&self, req: Request<ReqBody>) -> TestResult<Resp> {
        self.gate.client().send(req).await
    }
}

struct Link(Created);

impl Link {
    fn path(&self) -> String {
        self.0
            .url
            .strip_prefix(&format!("https://{HOST}"))
            .expect("link on ha.test")
            .to_owned()
    }

    fn record(&self) -> &EnrollmentRecord {
        &self.0.record
    }
}

fn with_cookie(mut req: Request<ReqBody>, name: &str, value: &str) -> Request<ReqBody> {
    let v = format!("{name}={value}").parse().unwrap();
    req.headers_mut().insert(http::header::COOKIE, v);
    req
}

fn claim_cookie(resp: &Resp) -> String {
    resp.set_cookies()
        .iter()
        .find_map(|c| {
            let (name, rest) = c.split_once('=')?;
            (name == CLAIM_COOKIE).then(|| rest.split(';').next().unwrap_or("").to_owned())
        })
        .expect("a claim cookie")
}

/// Every enrollment response carries these.
fn assert_guarded(resp: &Resp) {
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    let csp = resp.header("content-security-policy").expect("CSP");
    for part in [
        "default-src 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_a_button_and_uses_nothing_up() -> R {
    let e = env().await;
    let link = e.enroll("alice");
    // Link previews, prefetchers and the user's own reloads: nothing happens.
    for _ in 0..3 {
        let page = e.send(get(&link.path())).await?;
        assert_eq!(page.status, StatusCode::OK);
        assert_guarded(&page);
        let form = format!("<form method=\"post\" action=\"{}\">", link.path());
        assert!(page.text().contains(&form), "{}", page.text());
        assert!(!page.text().contains("alice"), "GET looks nothing up");
        assert!(page.set_cookies().is_empty());
    }
    // HEAD, over both protocols: the headers only (over HTTP/2 a HEAD answered with the
    // page's bytes was reset by the client).
    for client in [e.gate.client(), e.gate.client().h2()] {
        let head = client.send(common::head(&link.path())).await?;
        assert_eq!(head.status, StatusCode::OK);
        assert_guarded(&head);
        assert!(head.body.is_empty(), "{:?}", head.body);
    }
    assert!(e.store.pending_sync(&link.record().token_hash)?.is_some());

    let claimed = e.send(post(&link.path(), "")).await?;
    assert_eq!(claimed.status, StatusCode::SEE_OTHER);
    assert_guarded(&claimed);
    let downloads = format!("{}/downloads", link.path());
    assert_eq!(claimed.header("location"), Some(downloads.as_str()));
    let set = claimed.set_cookies().join("\n");
    for attr in [
        &format!("Path={};", link.path()),
        "Max-Age=600;",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
    ] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(set.starts_with("__Secure-portcullis-enroll="), "{set}");
    assert!(e.store.pending_sync(&link.record().token_hash)?.is_none());
    assert!(e.store.claimed_sync(&link.record().token_hash)?.is_some());
    let refusals = e.gate.metrics.enrollment_refusals.clone();
    assert_eq!(
        refusals
            .get_or_create(&portcullis::telemetry::FailureLabels { reason: "invalid" })
            .get(),
        0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_is_claimed_once_and_only_its_browser_downloads() -> R {
    let e = env().await;
    let link = e.enroll("alice");
    let first = e.send(post(&link.path(), "")).await?;
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    let cookie = claim_cookie(&first);

    // Another device with the same link: the generic page, like any unknown link.
    let second = e.send(post(&link.path(), "")).await?;
    let unknown = e
        .send(post(&format!("{PREFIX}{}", "A".repeat(32)), ""))
        .await?;
    assert_eq!(second.status, StatusCode::NOT_FOUND);
    assert_eq!(second.body, unknown.body);
    assert!(second.set_cookies().is_empty());
    assert_guarded(&second);

    // The claiming browser: a second tap on the button leads to its downloads again.
    let again = e
        .send(with_cookie(post(&link.path(), ""), CLAIM_COOKIE, &cookie))
        .await?;
    assert_eq!(again.status, StatusCode::SEE_OTHER);

    let downloads = format!("{}/downloads", link.path());
    let page = e
        .send(with_cookie(get(&downloads), CLAIM_COOKIE, &cookie))
        .await?;
    assert_eq!(page.status, StatusCode::OK);
    assert_guarded(&page);
    assert!(page.text().contains("certificate.p12"));
    assert!(page.text().contains("profile.mobileconfig"));
    // Without the cookie, or with a made-up one: the generic page.
    for req in [
        get(&downloads),
        with_cookie(get(&downloads), CLAIM_COOKIE, "e1.9999999999.AAAA"),
        get(&format!("{}/certificate.p12", link.path())),
    ] {
        let resp = e.send(req).await?;
        assert_eq!(resp.status, StatusCode::NOT_FOUND);
        assert_eq!(resp.body, unknown.body);
    }
    // The cookie belongs to its link only.
    let other = e.enroll("alice");
    let _ = e.send(post(&other.path(), "")).await?;
    let foreign = e
        .send(with_cookie(
            get(&format!("{}/downloads", other.path())),
            CLAIM_COOKIE,
            &cookie,
        ))
        .await?;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    let labels = portcullis::telemetry::EnrollmentLabels {
        identity: "alice".into(),
        platform: "desktop",
    };
    assert_eq!(e.gate.metrics.enrollments.get_or_create(&labels).get(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_links_all_look_the_same() -> R {
    let e = env().await;
    let generic = e
        .send(post(&format!("{PREFIX}{}", "A".repeat(32)), ""))
        .await?;
    assert_eq!(generic.status, StatusCode::NOT_FOUND);
    assert_guarded(&generic);
    assert!(generic.text().contains("not valid any more"));

    let hour = Duration::from_secs(3600);
    let expired = e.enroll_at("dave", SystemTime::now() - hour, Duration::from_secs(60));
    let cancelled = e.enroll("alice");
    let _replacement = e.enroll("alice");
    // carol is not live (revoked or deleted): her link no longer works.
    let not_live = e.enroll("carol");
    let used = e.enroll("erin");
    assert_eq!(
        e.send(post(&used.path(), "")).await?.status,
        StatusCode::SEE_OTHER
    );
    let paths = vec![
        expired.path(),
        cancelled.path(),
        not_live.path(),
        used.path(),
        format!("{PREFIX}not-a-token"),
        format!("{PREFIX}{}/extra", "A".repeat(32)),
    ];
    for path in paths {
        let resp = e.send(post(&path, "")).await?;
        assert_eq!(resp.status, generic.status, "{path}");
        assert_eq!(resp.body, generic.body, "{path}");
        assert!(resp.set_cookies().is_empty());
        assert_guarded(&resp);
    }
    // None of them was used up by being refused.
    assert!(
        e.store
            .pending_sync(&expired.record().token_hash)?
            .is_some()
    );
    assert!(
        e.store
            .pending_sync(&not_live.record().token_hash)?
            .is_some()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_works_only_on_a_route_admitting_its_identity() -> R {
    let e = env().await;
    let link = e.enroll("alice");
    // other.test admits role=admin only: alice's link is "not valid" there.
    let there = e
        .gate
        .client()
        .sni(OTHER_HOST)
        .send(post(&link.path(), ""))
        .await?;
    assert_eq!(there.status, StatusCode::NOT_FOUND);
    assert!(e.store.pending_sync(&link.record().token_hash)?.is_some());
    let here = e.send(post(&link.path(), "")).await?;
    assert_eq!(here.status, StatusCode::SEE_OTHER);
    // Revoked after the claim: the downloads stop.
    let cookie = claim_cookie(&here);
    e.gate.revoke("alice");
    let downloads = format!("{}/downloads", link.path());
    let resp = e
        .send(with_cookie(get(&downloads), CLAIM_COOKIE, &cookie))
        .await?;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_the_wrapped_files() -> R {
    let e = env().await;
    let link = e.enroll("alice");
    // Over HTTP/2, from an iPhone.
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
    let client = e.gate.client().h2();
    let ua = |mut req: Request<ReqBody>| {
        req.headers_mut()
            .insert(http::header::USER_AGENT, iphone.parse().unwrap());
        req
    };
    let claimed = client.send(ua(post(&link.path(), ""))).await?;
    assert_eq!(claimed.status, StatusCode::SEE_OTHER);
    let cookie = claim_cookie(&claimed);
    let page = client
        .send(ua(with_cookie(
            get(&format!("{}/downloads", link.path())),
            CLAIM_COOKIE,
            &cookie,
        )))
        .await?;
    let text = page.text();
    assert!(
        text.find("Download the profile") < text.find("Download alice.p12"),
        "iPhone: the profile first"
    );
    let labels = portcullis::telemetry::EnrollmentLabels {
        identity: "alice".into(),
        platform: "ios",
    };
    assert_eq!(e.gate.metrics.enrollments.get_or_create(&labels).get(), 1);

    let fetch = |file: &str| {
        client.send(with_cookie(
            get(&format!("{}/{file}", link.path())),
            CLAIM_COOKIE,
            &cookie,
        ))
    };
    let p12 = fetch("certificate.p12").await?;
    assert_eq!(p12.status, StatusCode::OK);
    assert_guarded(&p12);
    assert_eq!(p12.header("content-type"), Some("application/x-pkcs12"));
    assert_eq!(
        p12.header("content-disposition"),
        Some("attachment; filename=\"alice.p12\"")
    );
    let profile = fetch("profile.mobileconfig").await?;
    assert_eq!(
        profile.header("content-type"),
        Some("application/x-apple-aspen-config")
    );
    assert_eq!(
        profile.header("content-disposition"),
        Some("attachment; filename=\"alice.mobileconfig\"")
    );

    // The .p12 opens with the one-time password (Legacy algorithms) and nothing else.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("alice.p12");
    std::fs::write(&file, &p12.body)?;
    let password = &link.0.password;
    assert!(openssl_opens(&file, password), "one-time password");
    assert!(!openssl_opens(&file, "not-the-password"));

    // The profile: a plist with the same .p12 and no password in it.
    let plist: plist::Value = plist::from_bytes(&profile.body)?;
    let payload = plist
        .as_dictionary()
        .and_then(|d| d.get("PayloadContent"))
        .and_then(|c| c.as_array())
        .and_then(|a| a.first())
        .and_then(|p| p.as_dictionary())
        .expect("a payload");
    assert_eq!(
        payload.get("PayloadType").and_then(|t| t.as_string()),
        Some("com.apple.security.pkcs12")
    );
    assert!(payload.get("Password").is_none());
    assert_eq!(
        payload.get("PayloadContent").and_then(|c| c.as_data()),
        Some(p12.body.as_ref())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_cookie_is_never_an_admission_cookie() -> R {
    let e = env().await;
    let link = e.enroll("alice");
    let claimed = e.send(post(&link.path(), "")).await?;
    let cookie = claim_cookie(&claimed);
    // Under its own name, or copied into the route's cookie: no way in.
    for name in [CLAIM_COOKIE, COOKIE_NAME] {
        let resp = e.send(with_cookie(get("/"), name, &cookie)).await?;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{name}");
        let ws = e
            .gate
            .client()
            .websocket("/api/websocket", Some(&cookie))
            .await;
        assert!(ws.is_err());
    }
    assert!(
        e.upstream.seen().is_empty(),
        "nothing reached Home Assistant"
    );

    // The reserved path is the gate's even for an admitted device (both HTTP/1 paths).
    let admitted = e.gate.client().cert(&e.alice);
    let resp = admitted.get(&link.path()).await?;
    assert_eq!(resp.status, StatusCode::OK);
    let resp = admitted.get("/.well-known/portcullis/other").await?;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert!(!e.upstream.saw_path_containing("/.well-known/portcullis"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_have_exactly_one_winner() -> R {
    let e = env_with(Limiter::new(1000, Duration::from_secs(60), 100)).await;
    let link = e.enroll("alice");
    let n = 24;
    let claims = (0..n).map(|_| {
        let (client, path) = (e.gate.client(), link.path());
        tokio::spawn(async move { client.send(post(&path, "")).await.map(|r| r.status) })
    });
    let mut statuses = Vec::new();
    for claim in claims.collect::<Vec<_>>() {
        statuses.push(claim.await?.map_err(|e| e.to_string())?);
    }
    let winners = statuses
        .iter()
        .filter(|s| **s == StatusCode::SEE_OTHER)
        .count();
    assert_eq!(winners, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SEE_OTHER || *s == StatusCode::NOT_FOUND)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_claims_are_rate_limited_per_address() -> R {
    let e = env_with(Limiter::new(3, Duration::from_secs(600), 100)).await;
    let link = e.enroll("alice");
    let guess = format!("{PREFIX}{}", "B".repeat(32));
    for _ in 0..3 {
        assert_eq!(
            e.send(post(&guess, "")).await?.status,
            StatusCode::NOT_FOUND
        );
    }
    let limited = e.send(post(&guess, "")).await?;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_guarded(&limited);
    // Even a good link waits: and is not used up meanwhile.
    let good = e.send(post(&link.path(), "")).await?;
    assert_eq!(good.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(e.store.pending_sync(&link.record().token_hash)?.is_some());
    // GET is never limited: it looks nothing up.
    assert_eq!(e.send(get(&link.path())).await?.status, StatusCode::OK);
    Ok(())
}
