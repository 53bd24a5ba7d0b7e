//! The data plane end to end: real TLS connections to the real proxy (`proxy::serve`), a
//! real upstream behind it, and real clients (rustls + hyper, tokio-tungstenite, raw bytes,
//! curl and openssl). Each test runs its own gate and upstream on loopback port 0.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use http::{Method, StatusCode, Version};
use portcullis::admission::{issue_cookie, verify_cookie};
use portcullis::pki::IssuedCert;
use portcullis::proxy::Settings;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

type R = TestResult;

/// A gate on `ha.test` with two live identities, alice and bob.
struct Env {
    pki: TestPki,
    up: Upstream,
    gate: Gate,
    alice: IssuedCert,
    bob: IssuedCert,
}

async fn env() -> Env {
    env_with(|_, _| {}, Settings::default()).await
}

/// Like [`env`], with the spec adjusted (routes get the upstream's address) and settings.
async fn env_with(adjust: impl FnOnce(&mut GateSpec, &Upstream), settings: Settings) -> Env {
    let pki = TestPki::new();
    let up = Upstream::start().await;
    let alice = pki.client("alice-phone");
    let bob = pki.client("bob-laptop");
    let mut spec = spec(
        vec![route("ha", &[HOST], up.addr)],
        vec![live("alice", &alice), live("bob", &bob)],
    );
    adjust(&mut spec, &up);
    let gate = Gate::start(&pki, spec, settings).await;
    Env {
        pki,
        up,
        gate,
        alice,
        bob,
    }
}

fn json_req(path: &str) -> http::Request<ReqBody> {
    with_headers(get(path), &[("accept", "application/json")])
}

fn with_cookie(req: http::Request<ReqBody>, value: &str) -> http::Request<ReqBody> {
    with_headers(req, &[("cookie", &cookie_header(value))])
}

/// The cookie a certificate request earns.
async fn earn_cookie(e: &Env, cert: &IssuedCert) -> String {
    let resp = e
        .gate
        .client()
        .cert(cert)
        .get("/")
        .await
        .expect("certificate request");
    assert_eq!(resp.status, StatusCode::OK);
    resp.gate_cookie()
        .expect("a certificate request earns a cookie")
}

// ───────────────────────── 1. certificate admission ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_certificate_is_admitted_with_identity_headers_and_cookie() -> R {
    let e = env().await;
    let resp = e
        .gate
        .client()
        .cert(&e.alice)
        .get("/api/states?x=1")
        .await?;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        resp.header("x-upstream"),
        Some("echo"),
        "upstream headers pass back"
    );

    let echo = resp.echo();
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.path, "/api/states?x=1");
    assert_eq!(echo.version, "HTTP/1.1");
    assert_eq!(echo.header("x-portcullis-identity"), Some("alice"));
    assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    assert_eq!(echo.header("x-forwarded-host"), Some(HOST));
    assert_eq!(echo.header("host"), Some(HOST));
    assert!(
        !echo.has("cookie"),
        "no cookie was sent, none may be forwarded"
    );

    let cookies = resp.set_cookies();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let (pair, attributes) = cookies[0].split_once(';').expect("attributes");
    assert!(pair.starts_with("__Host-portcullis=v1."), "{pair}");
    assert_eq!(
        attributes,
        " Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax"
    );
    assert!(
        !cookies[0].to_ascii_lowercase().contains("domain"),
        "__Host- cookies have no Domain"
    );

    // The value is bound to alice's serial and this host under the MAC.
    let value = resp.gate_cookie().unwrap();
    let snapshot = e.gate.snapshot();
    let serial = verify_cookie(snapshot.cookie_keys(), &value, HOST, SystemTime::now());
    assert_eq!(serial.as_deref(), Ok(e.alice.info.serial_hex.as_str()));
    assert!(
        verify_cookie(
            snapshot.cookie_keys(),
            &value,
            OTHER_HOST,
            SystemTime::now()
        )
        .is_err()
    );
    assert_eq!(e.gate.requests("ha", "certificate", ""), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_cookie_never_reaches_upstream_and_fresh_cookie_is_not_reissued() -> R {
    let e = env().await;
    let cookie = earn_cookie(&e, &e.alice).await;
    let req = with_headers(
        get("/"),
        &[
            ("cookie", &format!("a=1; {}; b=2", cookie_header(&cookie))),
            ("cookie", "c=3"),
        ],
    );
    let resp = e.gate.client().cert(&e.alice).send(req).await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        resp.set_cookies().is_empty(),
        "a fresh cookie is not replaced: {:?}",
        resp.set_cookies()
    );
    let echo = resp.echo();
    let forwarded = echo.header("cookie").expect("other cookies are kept");
    assert!(
        !forwarded.contains(COOKIE_NAME),
        "gate cookie leaked upstream: {forwarded}"
    );
    assert!(
        !forwarded.contains(&cookie),
        "gate cookie value leaked upstream: {forwarded}"
    );
    for kept in ["a=1", "b=2", "c=3"] {
        assert!(forwarded.contains(kept), "{kept} missing from {forwarded}");
    }

    // Bob's certificate with alice's cookie: bob is admitted and earns his own cookie.
    let resp = e
        .gate
        .client()
        .cert(&e.bob)
        .send(with_cookie(get("/"), &cookie))
        .await?;
    assert_eq!(resp.echo().header("x-portcullis-identity"), Some("bob"));
    let bobs = resp.gate_cookie().expect("bob earns his own cookie");
    let serial = verify_cookie(
        e.gate.snapshot().cookie_keys(),
        &bobs,
        HOST,
        SystemTime::now(),
    );
    assert_eq!(serial.as_deref(), Ok(e.bob.info.serial_hex.as_str()));
    Ok(())
}

// ───────────────────────── 2. no credentials ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_no_cookie_is_a_403_page_not_a_tls_error() -> R {
    let e = env().await;
    // The handshake itself succeeds without a certificate.
    let tls = e
        .gate
        .client()
        .connect()
        .await
        .expect("TLS without a client certificate");
    assert!(tls.get_ref().1.peer_certificates().is_some());
    let mut conn = http_conn_over(tls, HOST).await?;
    let resp = conn.get("/").await?;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert!(
        resp.text().contains("Client certificate required"),
        "{}",
        resp.text()
    );
    assert!(resp.set_cookies().is_empty());

    // Same connection, API client.
    let resp = conn.send(json_req("/api/")).await?;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let json = resp.json();
    assert_eq!(json["error"], "client_certificate_required");
    assert_eq!(json["reason"], "no_credentials");
    assert!(
        e.up.seen().is_empty(),
        "nothing may reach the upstream: {:?}",
        e.up.seen()
    );
    assert_eq!(e.gate.requests("ha", "denied", "no_credentials"), 2);
    Ok(())
}

// ───────────────────────── 3. refused certificates ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_fails_the_handshake() -> R {
    let e = env().await;
    let evil = TestPki::named("Evil CA");
    let mallory = evil.client("mallory");
    // Even on the allowlist (same fingerprint), a foreign chain is refused.
    e.gate.publish(|s| s.live.push(live("mallory", &mallory)));
    let outcome = e.gate.client().cert(&mallory).probe().await;
    assert!(outcome.refusal().contains("UnknownCA"), "{outcome:?}");
    // TLS 1.2: the client learns it in the handshake itself.
    let outcome = e.gate.client().cert(&mallory).tls12().probe().await;
    assert!(outcome.refusal().starts_with("handshake"), "{outcome:?}");
    e.gate
        .eventually("unknown_ca counted twice", |g| {
            g.handshake_failures("unknown_ca") == 2
        })
        .await;
    assert!(e.up.seen().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_fails_the_handshake() -> R {
    let e = env().await;
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let old = e
        .pki
        .client_with_validity("old-phone", now - 2 * day, now - day);
    // On the allowlist: only the expiry can refuse it.
    e.gate.publish(|s| s.live.push(live("old", &old)));
    let outcome = e.gate.client().cert(&old).probe().await;
    assert!(
        outcome.refusal().contains("CertificateExpired"),
        "{outcome:?}"
    );
    e.gate
        .eventually("expiry counted", |g| {
            g.handshake_failures("certificate_expired") == 1
        })
        .await;

    // Not yet valid is refused as well.
    let early = e
        .pki
        .client_with_validity("early", now + day, now + 2 * day);
    e.gate.publish(|s| s.live.push(live("early", &early)));
    assert!(e.gate.client().cert(&early).probe().await.is_refused());
    assert!(e.up.seen().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_signed_certificate_not_on_the_allowlist_is_refused() -> R {
    let e = env().await;
    let stranger = e.pki.client("stranger");
    let outcome = e.gate.client().cert(&stranger).probe().await;
    assert!(
        outcome.refusal().contains("CertificateRevoked"),
        "{outcome:?}"
    );
    e.gate
        .eventually("counted", |g| {
            g.handshake_failures("certificate_not_live") == 1
        })
        .await;
    assert!(matches!(
        e.gate.client().cert(&e.alice).probe().await,
        Outcome::Answered(200)
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificate_is_refused_at_new_handshakes() -> R {
    let e = env().await;
    assert!(matches!(
        e.gate.client().cert(&e.alice).probe().await,
        Outcome::Answered(200)
    ));
    e.gate.revoke("alice");
    let outcome = e.gate.client().cert(&e.alice).probe().await;
    assert!(
        outcome.refusal().contains("CertificateRevoked"),
        "{outcome:?}"
    );
    let outcome = e.gate.client().cert(&e.alice).tls12().probe().await;
    assert!(outcome.refusal().starts_with("handshake"), "{outcome:?}");
    // Bob is untouched; a certificate-less client still reaches the 403 page.
    assert!(matches!(
        e.gate.client().cert(&e.bob).probe().await,
        Outcome::Answered(200)
    ));
    assert!(matches!(
        e.gate.client().probe().await,
        Outcome::Answered(403)
    ));
    // Restoring the identity lets the same certificate back in.
    let alice = live("alice", &e.alice);
    e.gate.publish(|s| s.live.push(alice));
    assert!(matches!(
        e.gate.client().cert(&e.alice).probe().await,
        Outcome::Answered(200)
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_selector_decides_which_identities_it_admits() -> R {
    let e = env_with(
        |spec, _| {
            spec.routes[0].selector = Some(kube::core::Selector::from_iter([("role", "family")]));
            for c in &mut spec.live {
                if c.identity == "alice" {
                    c.labels.insert("role".into(), "family".into());
                }
            }
        },
        Settings::default(),
    )
    .await;
    assert_eq!(
        e.gate.client().cert(&e.alice).get("/").await?.status,
        StatusCode::OK
    );
    // Bob is live (the handshake succeeds) but this route does not admit him.
    let resp = e.gate.client().cert(&e.bob).send(json_req("/")).await?;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.json()["reason"], "not_admitted");
    assert!(resp.set_cookies().is_empty());
    Ok(())
}

// ───────────────────────── 4. cookie fallback ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_admits_certificateless_websocket_and_requests() -> R {
    let e = env().await;
    let cookie = earn_cookie(&e, &e.alice).await;

    // Safari: the WebSocket handshake carries the cookie but no certificate.
    let (mut ws, resp) = e
        .gate
        .client()
        .websocket("/api/websocket", Some(&cookie))
        .await
        .expect("cookie-authenticated upgrade");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers().get("set-cookie").is_none());
    ws_roundtrip(&mut ws, "{\"type\":\"auth\"}").await;
    ws_roundtrip(&mut ws, "second message").await;
    let upgrade =
        e.up.seen()
            .into_iter()
            .find(|s| s.path == "/api/websocket")
            .expect("upgrade seen");
    assert_eq!(upgrade.header("x-portcullis-identity"), Some("alice"));
    assert_eq!(upgrade.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(upgrade.header("upgrade"), Some("websocket"));
    assert!(
        !upgrade.has("cookie"),
        "the gate cookie must not reach the upstream"
    );

    // A plain request with the cookie and no certificate.
    let resp = e
        .gate
        .client()
        .send(with_cookie(get("/lovelace"), &cookie))
        .await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        resp.set_cookies().is_empty(),
        "cookie admission sets no cookie"
    );
    assert_eq!(resp.echo().header("x-portcullis-identity"), Some("alice"));
    assert_eq!(e.gate.requests("ha", "cookie", ""), 2);

    // No cookie, no certificate: the upgrade is refused.
    match e.gate.client().websocket("/api/websocket", None).await {
        Err(WsFailure::Status(status)) => assert_eq!(status, StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    ws.close(None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_websocket_gets_no_set_cookie_on_the_101() -> R {
    let e = env().await;
    // A certificate request without a cookie would earn one, but not on a 101.
    let (mut ws, resp) = e
        .gate
        .client()
        .cert(&e.alice)
        .websocket("/api/websocket", None)
        .await
        .expect("certificate upgrade");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(
        resp.headers().get("set-cookie").is_none(),
        "{:?}",
        resp.headers()
    );
    ws_roundtrip(&mut ws, "hello").await;
    let upgrade =
        e.up.seen()
            .into_iter()
            .find(|s| s.path == "/api/websocket")
            .unwrap();
    assert_eq!(upgrade.header("x-portcullis-identity"), Some("alice"));

    // Firefox sends `Connection: keep-alive, Upgrade`.
    let raw = e
        .gate
        .client()
        .cert(&e.alice)
        .raw(
            b"GET /api/websocket HTTP/1.1\r\nHost: ha.test\r\nConnection: keep-alive, Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            Duration::from_millis(500),
        )
        .await?;
    assert_eq!(raw.status(), Some(101), "{}", raw.text());
    assert!(
        raw.text().contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{}",
        raw.text()
    );
    assert!(!raw.text().to_ascii_lowercase().contains("set-cookie"));
    Ok(())
}

// ───────────────────────── 5. bad cookies ─────────────────────────

async fn cookie_reason(e: &Env, value: &str) -> String {
    let resp = e
        .gate
        .client()
        .send(with_cookie(json_req("/"), value))
        .await
        .expect("request");
    assert_eq!(
        resp.status,
        StatusCode::FORBIDDEN,
        "cookie {value:?}: {}",
        resp.text()
    );
    resp.json()["reason"].as_str().unwrap().to_owned()
}

fn flip(c: u8) -> u8 {
    match c {
        b'A' => b'B',
        b'0' => b'1',
        _ => b'A',
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_expired_foreign_and_orphaned_cookies_are_refused() -> R {
    let e = env().await;
    let cookie = earn_cookie(&e, &e.alice).await;
    let parts: Vec<&str> = cookie.split('.').collect();
    assert_eq!(parts.len(), 4, "v1.serial.expiry.mac: {cookie}");

    // One character of the MAC flipped.
    let mut mac = parts[3].as_bytes().to_vec();
    mac[10] = flip(mac[10]);
    let tampered = format!(
        "{}.{}.{}.{}",
        parts[0],
        parts[1],
        parts[2],
        String::from_utf8(mac)?
    );
    assert_eq!(cookie_reason(&e, &tampered).await, "cookie_invalid");
    // Expiry pushed out, MAC unchanged.
    let later = parts[2].parse::<u64>()? + 86_400;
    let extended = format!("{}.{}.{later}.{}", parts[0], parts[1], parts[3]);
    assert_eq!(cookie_reason(&e, &extended).await, "cookie_invalid");
    // Serial swapped for bob's.
    let swapped = format!(
        "{}.{}.{}.{}",
        parts[0], e.bob.info.serial_hex, parts[2], parts[3]
    );
    assert_eq!(cookie_reason(&e, &swapped).await, "cookie_invalid");
    // Garbage.
    assert_eq!(cookie_reason(&e, "v1.zz.1.x").await, "cookie_invalid");

    let snapshot = e.gate.snapshot();
    let key = snapshot.cookie_keys()[0];
    let serial = &e.alice.info.serial_hex;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    // Genuine but expired.
    let expired = issue_cookie(&key, serial, HOST, now - Duration::from_secs(60));
    assert_eq!(cookie_reason(&e, &expired).await, "cookie_expired");
    // Genuine, minted for another host.
    let foreign = issue_cookie(&key, serial, OTHER_HOST, now + hour);
    assert_eq!(cookie_reason(&e, &foreign).await, "cookie_invalid");
    // Signed with a key the gate never had.
    let forged = issue_cookie(&[7u8; 32], serial, HOST, now + hour);
    assert_eq!(cookie_reason(&e, &forged).await, "cookie_invalid");

    // The genuine cookie works until its identity is revoked.
    let resp = e.gate.client().send(with_cookie(get("/"), &cookie)).await?;
    assert_eq!(resp.status, StatusCode::OK);
    e.gate.revoke("alice");
    assert_eq!(cookie_reason(&e, &cookie).await, "cookie_identity_gone");
    assert!(
        !e.up
            .seen()
            .iter()
            .any(|s| s.header("x-portcullis-identity").is_none())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_key_rotation_logs_nobody_out() -> R {
    let e = env().await;
    let cookie = earn_cookie(&e, &e.alice).await;
    // Rotate: a new signing key in front, the old one kept for verification.
    e.gate.publish(|s| s.cookie_keys.insert(0, [42u8; 32]));
    let resp = e.gate.client().send(with_cookie(get("/"), &cookie)).await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.echo().header("x-portcullis-identity"), Some("alice"));
    // New cookies are signed with the new key.
    let fresh = earn_cookie(&e, &e.alice).await;
    let serial = verify_cookie(&[[42u8; 32]], &fresh, HOST, SystemTime::now());
    assert_eq!(serial.as_deref(), Ok(e.alice.info.serial_hex.as_str()));
    // Once the old key leaves the ring, its cookies stop working.
    e.gate.publish(|s| s.cookie_keys.truncate(1));
    assert_eq!(cookie_reason(&e, &cookie).await, "cookie_invalid");
    Ok(())
}

// ───────────────────────── 6. bypass and routing ─────────────────────────

async fn bypass_env() -> Env {
    env_with(
        |spec, up| {
            spec.routes[0].bypass = vec![bypass("/api/webhook/", &[Method::POST])];
            // A second route that would let the same path through, so only host/SNI
            // binding can stop a request steered at it.
            let mut other = route("other", &[OTHER_HOST], up.addr);
            other.bypass = vec![bypass("/", &[])];
            spec.routes.push(other);
        },
        Settings::default(),
    )
    .await
}

fn raw_post(path: &str, host: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_admits_only_canonical_paths_and_methods() -> R {
    let e = bypass_env().await;
    let client = e.gate.client();
    let resp = client.send(post("/api/webhook/abc", "{}")).await?;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let echo = resp.echo();
    assert_eq!(echo.body_len, 2);
    assert!(
        echo.header("x-portcullis-identity").is_none(),
        "bypass is anonymous"
    );
    assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(resp.set_cookies().is_empty());
    assert_eq!(e.gate.requests("ha", "bypass", ""), 1);

    // Wrong method.
    assert_eq!(
        client.get("/api/webhook/abc").await?.status,
        StatusCode::FORBIDDEN
    );
    // Not under the prefix.
    assert_eq!(
        client.send(post("/api/webhookX", "{}")).await?.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        client.send(post("/api/webhook", "{}")).await?.status,
        StatusCode::FORBIDDEN
    );

    // Paths a client library would normalise: sent as raw bytes.
    for path in [
        "/api/webhook/../config",
        "/api/webhook/%2e%2e/config",
        "/api/webhook/%2E%2E/config",
        "/api/webhook/..%2fconfig",
        "/api/webhook/..%2Fconfig",
        "/api/webhook//x",
        "/api/webhook/./config",
        "/api/webhook/%252e%252e/config",
        "/api/webhook/x/..",
        "/api/webhook/..%5cconfig",
        "/api/webhook/%00",
    ] {
        let raw = client
            .raw(&raw_post(path, HOST), Duration::from_secs(5))
            .await?;
        let status = raw.status();
        assert!(
            status == Some(403) || status == Some(400),
            "{path}: expected 403 (or 400), got {status:?}: {}",
            raw.text()
        );
    }
    // Backslashes: refused by the parser or by admission, never forwarded.
    let raw = client
        .raw(
            &raw_post("/api/webhook/..\\config", HOST),
            Duration::from_secs(5),
        )
        .await?;
    assert!(
        matches!(raw.status(), Some(400 | 403)) || raw.closed,
        "{raw:?}"
    );

    let forwarded: Vec<String> = e.up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        forwarded,
        vec!["/api/webhook/abc".to_owned()],
        "only the canonical webhook passes"
    );

    // A certificate still works on the same path (and is not anonymous).
    let resp = e
        .gate
        .client()
        .cert(&e.alice)
        .send(post("/api/webhook/..%2fconfig", "{}"))
        .await?;
    assert_eq!(resp.echo().header("x-portcullis-identity"), Some("alice"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_must_match_a_route_and_the_sni() -> R {
    let e = bypass_env().await;
    let client = e.gate.client();
    // Host of the other route on a connection opened (SNI) for ha.test: 421, not 200.
    let req = with_headers(post("/api/webhook/abc", "{}"), &[("host", OTHER_HOST)]);
    let resp = client.send(req).await?;
    assert_eq!(
        resp.status,
        StatusCode::MISDIRECTED_REQUEST,
        "{}",
        resp.text()
    );
    // Even with a certificate.
    let req = with_headers(get("/"), &[("host", OTHER_HOST)]);
    let resp = client.clone().cert(&e.alice).send(req).await?;
    assert_eq!(resp.status, StatusCode::MISDIRECTED_REQUEST);
    // A host no route serves.
    let req = with_headers(post("/api/webhook/abc", "{}"), &[("host", UNROUTED_HOST)]);
    assert_eq!(
        client.send(req).await?.status,
        StatusCode::MISDIRECTED_REQUEST
    );
    // SNI of the other route, Host of this one.
    let req = with_headers(post("/api/webhook/abc", "{}"), &[("host", HOST)]);
    let resp = client.clone().sni(OTHER_HOST).send(req).await?;
    assert_eq!(resp.status, StatusCode::MISDIRECTED_REQUEST);
    // Absolute-form request-target naming another host.
    let raw = client
        .raw(
            b"POST http://other.test/x HTTP/1.1\r\nHost: ha.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await?;
    assert_eq!(raw.status(), Some(421), "{}", raw.text());
    // Case and trailing dot and port do not matter for the right host.
    let req = with_headers(post("/api/webhook/abc", "{}"), &[("host", "HA.Test.:8443")]);
    assert_eq!(client.send(req).await?.status, StatusCode::OK);
    // The other route's own SNI and host: its bypass applies.
    let req = with_headers(get("/"), &[("host", OTHER_HOST)]);
    let resp = client.clone().sni(OTHER_HOST).send(req).await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.echo().header("host"), Some(OTHER_HOST));
    // No SNI at all (a client given the IP address): the first route's certificate, and
    // the Host header picks the route.
    let no_sni = e.gate.client().cert(&e.alice).sni("127.0.0.1");
    let resp = no_sni
        .send(with_headers(get("/"), &[("host", HOST)]))
        .await?;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.echo().header("x-portcullis-identity"), Some("alice"));
    assert_eq!(e.up.seen().len(), 3, "{:?}", e.up.seen());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_is_400_not_5xx() -> R {
    let e = env().await;
    let raw = e
        .gate
        .client()
        .cert(&e.alice)
        .raw(
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await?;
    assert_eq!(raw.status(), Some(400), "{}", raw.text());
    let raw = e
        .gate
        .client()
        .cert(&e.alice)
        .raw(b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(5))
        .await?;
    assert_eq!(raw.status(), Some(400), "{}", raw.text());
    assert!(e.up.seen().is_empty());
    Ok(())
}

#[tokio::test]
async fn connect_is_refused_even_for_a_device() -> R {
    let e = env().await;
    let raw = e
        .gate
        .client()
        .cert(&e.alice)
        .raw(
            b"CONNECT ha.test:443 HTTP/1.1\r\nHost: ha.test:443\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await?;
    assert_eq!(raw.status(), Some(405), "{}", raw.text());
    assert!(
        e.up.seen().is_empty(),
        "CONNECT must not reach the upstream"
    );
    Ok(())
}

// ───────────────────────── 7. spoofing ─────────────────────────

const SPOOFS: &[(&str, &str)] = &[
    ("x-portcullis-identity", "admin"),
    ("x-forwarded-for", "1.2.3.4"),
    ("x-forwarded-proto", "http"),
    ("x-forwarded-host", "evil.test"),
    ("x-real-ip", "1.2.3.4"),
    ("forwarded", "for=1.2.3.4;proto=http"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_supplied_identity_and_forwarding_headers_are_replaced() -> R {
    let e = bypass_env().await;
    let resp = e
        .gate
        .client()
        .cert(&e.alice)
        .send(with_headers(get("/"), SPOOFS))
        .await?;
    let echo = resp.echo();
    assert_eq!(echo.header("x-portcullis-identity"), Some("alice"));
    assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    assert_eq!(echo.header("x-forwarded-host"), Some(HOST));
    assert!(
        !echo.has("x-real-ip") && !echo.has("forwarded"),
        "{:?}",
        echo.headers
    );

    // Anonymous (bypass) requests must not carry a client-chosen identity either.
    let req = with_headers(post("/api/webhook/abc", "{}"), SPOOFS);
    let echo = e.gate.client().send(req).await?.echo();
    assert!(!echo.has("x-portcullis-identity"), "{:?}", echo.headers);
    assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));

    // Header-name case and `Connection` tricks change nothing.
    let req = with_headers(
        post("/api/webhook/abc", "{}"),
        &[
            ("connection", "x-forwarded-for, x-portcullis-identity"),
            ("x-portcullis-identity", "admin"),
        ],
    );
    let echo = e.gate.client().send(req).await?.echo();
    assert!(!echo.has("x-portcullis-identity"));
    assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));
    let raw = e
        .gate
        .client()
        .raw(
            b"POST /api/webhook/abc HTTP/1.1\r\nHost: ha.test\r\nX-PORTCULLIS-IDENTITY: admin\r\nX-Forwarded-For: 9.9.9.9\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await?;
    assert_eq!(raw.status(), Some(200), "{}", raw.text());
    assert!(
        !raw.text().contains("admin") && !raw.text().contains("9.9.9.9"),
        "{}",
        raw.text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_chain_is_appended() -> R {
    let settings = Settings {
        trusted_proxies: vec!["127.0.0.1/32".parse()?],
        ..Settings::default()
    };
    let e = env_with(|_, _| {}, settings).await;
    let req = with_headers(get("/"), SPOOFS);
    let echo = e.gate.client().cert(&e.alice).send(req).await?.echo();
    assert_eq!(echo.header("x-forwarded-for"), Some("1.2.3.4, 127.0.0.1"));
    // Trusting the proxy's addresses never means trusting its identity claims.
    assert_eq!(echo.header("x-portcullis-identity"), Some("alice"));
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    // Without a client-sent chain, just the peer.
    let echo = e.gate.client().cert(&e.alice).get("/").await?.echo();
    assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));
    Ok(())
}

// ───────────────────────── 8. revocation of open connections ─────────────────────────

const TEARDOWN: Duration = Duration::from_secs(1);

/// A WebSocket on `/api/websocket` opened with `cert`.
async fn cert_websocket(e: &Env, cert: &IssuedCert) -> Ws {
    let (ws, _) = e
        .gate
        .client()
        .cert(cert)
        .websocket("/api/websocket", None)
        .await
        .expect("certificate websocket");
    ws
}

/// WebSockets opened by alice's certificate, alice's cookie and bob's certificate.
async fn three_websockets(e: &Env) -> [Ws; 3] {
    let cookie = earn_cookie(e, &e.alice).await;
    let (by_cookie, _) = e
        .gate
        .client()
        .websocket("/api/websocket", Some(&cookie))
        .await
        .expect("cookie websocket");
    [
        cert_websocket(e, &e.alice).await,
        by_cookie,
        cert_websocket(e, &e.bob).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_identity_closes_its_open_connections_only() -> R {
    let e = env().await;
    let [mut alice_ws, mut alice_cookie_ws, mut bob_ws] = three_websockets(&e).await;
    let mut alice_http = e.gate.client().cert(&e.alice).open().await?;
    let mut alice_h2 = e.gate.client().cert(&e.alice).h2().open().await?;
    let mut bob_http = e.gate.client().cert(&e.bob).open().await?;
    assert_eq!(alice_http.get("/").await?.status, StatusCode::OK);
    assert_eq!(alice_h2.get("/").await?.status, StatusCode::OK);
    assert_eq!(bob_http.get("/").await?.status, StatusCode::OK);
    ws_roundtrip(&mut alice_ws, "a").await;
    ws_roundtrip(&mut alice_cookie_ws, "c").await;
    ws_roundtrip(&mut bob_ws, "b").await;
    assert_eq!(e.up.open_websockets(), 3);

    e.gate.revoke("alice");
    let revoked_at = Instant::now();
    assert_eq!(
        ws_next(&mut alice_ws, TEARDOWN).await,
        Ok(None),
        "alice's WebSocket stays open"
    );
    assert_eq!(
        ws_next(
            &mut alice_cookie_ws,
            TEARDOWN.saturating_sub(revoked_at.elapsed())
        )
        .await,
        Ok(None),
        "alice's cookie WebSocket stays open"
    );
    assert!(
        alice_http
            .closed_within(TEARDOWN.saturating_sub(revoked_at.elapsed()))
            .await,
        "alice's keep-alive connection stays open"
    );
    assert!(
        alice_h2
            .closed_within(TEARDOWN.saturating_sub(revoked_at.elapsed()))
            .await,
        "alice's HTTP/2 connection stays open"
    );

    // Bob is not disturbed.
    ws_roundtrip(&mut bob_ws, "still here").await;
    assert_eq!(bob_http.get("/").await?.status, StatusCode::OK);
    e.gate
        .eventually("upstream sockets of alice closed", |_| {
            e.up.open_websockets() == 1
        })
        .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_stops_admitting_an_identity_closes_its_connections() -> R {
    // The route admits role=family; alice and bob both are, until alice's label changes.
    let family = |spec: &mut GateSpec| {
        spec.routes[0].selector = Some(kube::core::Selector::from_iter([("role", "family")]));
        for c in &mut spec.live {
            c.labels.insert("role".into(), "family".into());
        }
    };
    let e = env_with(|spec, _| family(spec), Settings::default()).await;
    let [mut alice_ws, mut alice_cookie_ws, mut bob_ws] = three_websockets(&e).await;
    let mut alice_events = e
        .gate
        .client()
        .cert(&e.alice)
        .open()
        .await?
        .send_streaming(get("/events"))
        .await?
        .into_body();

    e.gate.publish(|spec| {
        for c in &mut spec.live {
            if c.identity == "alice" {
                c.labels.insert("role".into(), "guest".into());
            }
        }
    });
    assert_eq!(
        ws_next(&mut alice_ws, TEARDOWN).await,
        Ok(None),
        "certificate WebSocket stays"
    );
    assert_eq!(
        ws_next(&mut alice_cookie_ws, TEARDOWN).await,
        Ok(None),
        "cookie WebSocket stays"
    );
    assert!(
        body_ends_within(&mut alice_events, TEARDOWN).await,
        "alice's event stream stays"
    );
    ws_roundtrip(&mut bob_ws, "bob is still admitted").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_reloads_keep_websockets_open() -> R {
    let e = env().await;
    let mut ws = cert_websocket(&e, &e.alice).await;
    let mut http = e.gate.client().cert(&e.alice).open().await?;
    assert_eq!(http.get("/").await?.status, StatusCode::OK);
    // Several reloads that keep alice: a new identity, a key rotation, a route change.
    let carol = e.pki.client("carol");
    e.gate.publish(|s| s.live.push(live("carol", &carol)));
    e.gate.publish(|s| s.cookie_keys.insert(0, [1u8; 32]));
    e.gate
        .publish(|s| s.routes[0].bypass.push(bypass("/api/webhook/", &[])));
    e.gate.revoke("bob");
    ws_roundtrip(&mut ws, "after reloads").await;
    assert!(!http.closed_within(Duration::from_millis(200)).await);
    assert_eq!(http.get("/").await?.status, StatusCode::OK);
    Ok(())
}

// ───────────────────────── 9. HTTP/2 ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_via_alpn_reaches_an_http1_upstream() -> R {
    let e = bypass_env().await;
    let mut conn = e.gate.client().cert(&e.alice).h2().open().await?;
    let resp = conn.get("/h2?x=1").await?;
    assert_eq!(resp.version, Version::HTTP_2);
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        resp.gate_cookie().is_some(),
        "h2 responses earn the cookie too"
    );
    let echo = resp.echo();
    assert_eq!(echo.version, "HTTP/1.1");
    assert_eq!(echo.path, "/h2?x=1");
    assert_eq!(echo.header("host"), Some(HOST));
    assert_eq!(echo.header("x-portcullis-identity"), Some("alice"));
    // Several streams on one connection.
    let (a, b) = tokio::join!(
        async { e.gate.client().cert(&e.alice).h2().get("/one").await },
        async { e.gate.client().cert(&e.alice).h2().get("/two").await },
    );
    assert_eq!(a?.status, StatusCode::OK);
    assert_eq!(b?.status, StatusCode::OK);
    for path in ["/three", "/four"] {
        assert_eq!(conn.get(path).await?.echo().path, path);
    }
    // :authority of the other route on a connection for ha.test.
    let req = with_headers(get("/"), &[("host", OTHER_HOST)]);
    assert_eq!(
        conn.send(req).await?.status,
        StatusCode::MISDIRECTED_REQUEST
    );
    // Cookies split across h2 header fields are found and stripped.
    let cookie = resp.gate_cookie().unwrap();
    let mut anon = e.gate.client().h2().open().await?;
    let req = with_headers(
        get("/"),
        &[("cookie", "a=1"), ("cookie", &cookie_header(&cookie))],
    );
    let resp = anon.send(req).await?;
    assert_eq!(resp.status, StatusCode::OK);
    let echo = resp.echo();
    assert_eq!(echo.header("x-portcullis-identity"), Some("alice"));
    assert_eq!(echo.header("cookie"), Some("a=1"));
    Ok(())
}

// ───────────────────────── 10. streaming ─────────────────────────

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() -> R {
    let e = env().await;
    let body = payload(5 * 1024 * 1024);
    let digest = sha256_hex(&body);
    for h2 in [false, true] {
        let mut client = e.gate.client().cert(&e.alice);
        if h2 {
            client = client.h2();
        }
        // Upload with a Content-Length.
        let echo = client.send(post("/upload", body.clone())).await?.echo();
        assert_eq!(
            (echo.body_len, echo.body_sha256.as_str()),
            (body.len() as u64, digest.as_str())
        );
        // Upload of unknown length (chunked on HTTP/1.1).
        let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = body
            .chunks(100_000)
            .map(|c| Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(c))))
            .collect();
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        let req = http::Request::post("/upload")
            .body(http_body_util::BodyExt::boxed(stream))
            .unwrap();
        let echo = client.send(req).await?.echo();
        assert_eq!(echo.body_len, body.len() as u64, "h2={h2}");
        assert_eq!(echo.body_sha256, digest);

        // Download.
        let resp = client.get("/stream").await?;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.body.len(), STREAM_LEN, "h2={h2}");
        assert!(
            resp.body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == stream_byte(i)),
            "corrupt stream"
        );
    }
    Ok(())
}

/// One proxy worker, so every client connection shares one upstream pool.
fn one_worker() -> Settings {
    Settings {
        workers: 1,
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_open_and_shared_between_clients() -> R {
    let settings = one_worker();
    let e = env_with(|_, _| {}, settings).await;
    let mut conn = e.gate.client().cert(&e.alice).open().await?;
    for _ in 0..20 {
        assert_eq!(conn.send(get("/")).await?.status, StatusCode::OK);
    }
    for _ in 0..5 {
        assert_eq!(
            e.gate.client().cert(&e.bob).get("/").await?.status,
            StatusCode::OK
        );
    }
    // Bodiless and streamed responses hand the connection back too.
    assert_eq!(conn.send(head("/")).await?.status, StatusCode::OK);
    assert_eq!(conn.send(get("/stream")).await?.body.len(), STREAM_LEN);
    assert_eq!(conn.send(get("/")).await?.status, StatusCode::OK);
    assert_eq!(
        e.up.connections(),
        1,
        "sequential requests need one upstream connection"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_short_does_not_spoil_the_next_request() -> R {
    let settings = one_worker();
    let e = env_with(|_, _| {}, settings).await;
    // Ask for the 8 MiB stream, read only the head, and hang up.
    let tls = e.gate.client().cert(&e.alice).connect().await?;
    let (mut read, mut write) = tokio::io::split(tls);
    write
        .write_all(format!("GET /stream HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await?;
    let mut head = [0u8; 1024];
    let n = tokio::io::AsyncReadExt::read(&mut read, &mut head).await?;
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    drop((read, write));
    // The half-read upstream connection is not handed to the next request.
    for _ in 0..3 {
        let resp = e.gate.client().cert(&e.alice).get("/after").await?;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.echo().path, "/after");
    }
    Ok(())
}

/// An upstream that answers one request per connection and then closes it without saying
/// so (`Connection: close` absent), like a server whose keep-alive timer just fired.
async fn upstream_closing_after_each_response() -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_idle_connections_costs_no_request() -> R {
    let pki = TestPki::new();
    let upstream = upstream_closing_after_each_response().await?;
    let alice = pki.client("alice");
    let settings = one_worker();
    let gate = Gate::start(
        &pki,
        spec(
            vec![route("ha", &[HOST], upstream)],
            vec![live("alice", &alice)],
        ),
        settings,
    )
    .await;
    let mut conn = gate.client().cert(&alice).open().await?;
    for i in 0..30 {
        let resp = conn.send(get("/")).await?;
        assert_eq!(resp.status, StatusCode::OK, "request {i}: {}", resp.text());
        assert_eq!(resp.text(), "ok");
        if i % 3 == 0 {
            // Give the close time to arrive, too, so both orders are exercised.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

// ───────────────────────── 11. limits and bad input ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_client_hello_is_dropped_and_the_gate_keeps_serving() -> R {
    let e = env().await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: ha.test\r\n\r\n"[..],
        &b"\x16\x03\x01\x00\x05hello"[..],
        &[0u8; 4096][..],
    ] {
        let tcp = TcpStream::connect(e.gate.addr).await?;
        let raw = raw_exchange(tcp, garbage, Duration::from_secs(5)).await?;
        assert!(
            raw.closed,
            "the gate must close a non-TLS connection: {raw:?}"
        );
        assert!(!raw.text().contains("HTTP/1.1"), "{raw:?}");
    }
    assert_eq!(
        e.gate.client().cert(&e.alice).get("/").await?.status,
        StatusCode::OK
    );
    Ok(())
}

fn timeouts() -> Settings {
    settings_with(|l| {
        l.handshake_timeout = Duration::from_secs(1);
        l.header_read_timeout = Duration::from_secs(1);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_is_cut_after_the_header_read_timeout() -> R {
    let e = env_with(|_, _| {}, timeouts()).await;
    let started = Instant::now();
    let raw = e
        .gate
        .client()
        .cert(&e.alice)
        .raw(b"GET / HTTP/1.1\r\nHost: ha", Duration::from_secs(4))
        .await?;
    let took = started.elapsed();
    assert!(raw.closed, "a stalled request head must be cut: {raw:?}");
    assert!(
        took >= Duration::from_millis(900),
        "cut too early: {took:?}"
    );
    assert!(matches!(raw.status(), None | Some(408)), "{}", raw.text());
    assert!(e.up.seen().is_empty());
    // An idle keep-alive connection is bounded too.
    let mut conn = e.gate.client().cert(&e.alice).open().await?;
    assert_eq!(conn.get("/").await?.status, StatusCode::OK);
    assert!(
        conn.closed_within(Duration::from_secs(4)).await,
        "idle keep-alive never cut"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshake_is_cut_after_the_handshake_timeout() -> R {
    let e = env_with(|_, _| {}, timeouts()).await;
    let tcp = TcpStream::connect(e.gate.addr).await?;
    let raw = raw_exchange(tcp, b"", Duration::from_secs(4)).await?;
    assert!(raw.closed, "a silent TCP connection must be cut");
    e.gate
        .eventually("timeout counted", |g| g.handshake_failures("timeout") == 1)
        .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_after_the_handshake_is_cut() -> R {
    // TLS completes, then the client sends nothing at all (not even a partial head).
    let e = env_with(|_, _| {}, timeouts()).await;
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let tls = e
            .gate
            .client()
            .cert(&e.alice)
            .alpn(&[alpn])
            .connect()
            .await?;
        let raw = raw_exchange(tls, b"", Duration::from_secs(4)).await?;
        assert!(
            raw.closed,
            "a client silent after the TLS handshake (ALPN {}) holds its connection forever",
            String::from_utf8_lossy(alpn)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connection_is_cut_after_its_last_request() -> R {
    let e = env_with(|_, _| {}, timeouts()).await;
    let mut conn = e.gate.client().cert(&e.alice).h2().open().await?;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(conn.send(get("/")).await?.status, StatusCode::OK);
    }
    // Requests kept it open past the one-second timeout; now it idles.
    let quiet = Instant::now();
    assert!(
        conn.closed_within(Duration::from_secs(4)).await,
        "an idle HTTP/2 connection holds its slot forever"
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "cut too early"
    );
    e.gate
        .eventually("the slot is free again", |g| g.open_connections() == 0)
        .await;
    Ok(())
}

fn body_timeouts() -> Settings {
    settings_with(|l| l.body_idle_timeout = Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_is_cut_with_a_408() -> R {
    let e = env_with(|_, _| {}, body_timeouts()).await;
    let head = format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n");
    let started = Instant::now();
    let raw = e
        .gate
        .client()
        .cert(&e.alice)
        .raw(
            format!("{head}only ten b").as_bytes(),
            Duration::from_secs(4),
        )
        .await?;
    assert_eq!(raw.status(), Some(408), "{}", raw.text());
    assert!(raw.closed, "the connection of a stalled body must close");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "cut too early"
    );

    // A slow body that keeps coming is not stalled: 10 bytes every 200 ms for 2 s.
    let tls = e.gate.client().cert(&e.alice).connect().await?;
    let (mut read, mut write) = tokio::io::split(tls);
    write.write_all(head.as_bytes()).await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        write.write_all(b"0123456789").await?;
    }
    let raw = raw_exchange(
        tokio::io::join(&mut read, &mut write),
        b"",
        Duration::from_secs(2),
    )
    .await?;
    assert_eq!(raw.status(), Some(200), "{}", raw.text());
    assert!(raw.text().contains("\"body_len\":100"), "{}", raw.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_without_a_5xx() -> R {
    let e = env().await;
    let big = "a".repeat(100 * 1024);
    let request =
        format!("GET / HTTP/1.1\r\nHost: ha.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let raw = e
        .gate
        .client()
        .cert(&e.alice)
        .raw(request.as_bytes(), Duration::from_secs(5))
        .await?;
    // hyper answers 431 and closes: the limit (64 KiB by default) is exact, whether the
    // head arrives in one read or many.
    assert_eq!(raw.status(), Some(431), "{}", raw.text());
    assert!(raw.closed);
    // Just under the limit is fine.
    let fits = format!(
        "GET /fits HTTP/1.1\r\nHost: ha.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    let raw = e
        .gate
        .client()
        .cert(&e.alice)
        .raw(fits.as_bytes(), Duration::from_secs(5))
        .await?;
    assert_eq!(raw.status(), Some(200), "a 60 KiB head is within the limit");
    // Many small headers adding up past the limit.
    let many: String = (0..2000)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(40)))
        .collect();
    let request = format!("GET / HTTP/1.1\r\nHost: ha.test\r\n{many}Connection: close\r\n\r\n");
    let raw = e
        .gate
        .client()
        .cert(&e.alice)
        .raw(request.as_bytes(), Duration::from_secs(5))
        .await?;
    assert!(
        matches!(raw.status(), None | Some(431) | Some(400)),
        "{:?}",
        raw.status()
    );
    // HTTP/2: an oversized header list is refused too, never a 5xx.
    let mut conn = e.gate.client().cert(&e.alice).h2().open().await?;
    match conn.send(with_headers(get("/"), &[("x-big", &big)])).await {
        Ok(resp) => assert_eq!(resp.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        // A stream reset (REFUSED_STREAM / PROTOCOL_ERROR) is an acceptable refusal too.
        Err(err) => assert!(!err.to_string().is_empty()),
    }
    let seen: Vec<String> = e.up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, vec!["/fits".to_owned()]);
    assert_eq!(
        e.gate.client().cert(&e.alice).get("/").await?.status,
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_attempts_never_reach_the_upstream() -> R {
    let e = env().await;
    let client = e.gate.client().cert(&e.alice);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: ha.test\r\n\r\n";
    for head in [
        "POST /first HTTP/1.1\r\nHost: ha.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /first HTTP/1.1\r\nHost: ha.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    ] {
        // Chunked says the body is empty; Content-Length says "0\r\n\r" and then junk.
        let request = format!("{head}0\r\n\r\n{smuggled}");
        let raw = client
            .raw(request.as_bytes(), Duration::from_secs(5))
            .await?;
        assert!(
            raw.closed,
            "CL+TE must close the connection after one response: {}",
            raw.text()
        );
        let statuses = raw.statuses();
        assert!(
            statuses.len() <= 1,
            "a second response means a smuggled request: {statuses:?}"
        );
        assert!(
            matches!(statuses.first(), None | Some(400) | Some(200)),
            "{statuses:?}"
        );
        for echo in e.up.seen().iter().filter(|s| s.path == "/first") {
            assert!(
                !(echo.has("content-length") && echo.has("transfer-encoding")),
                "the upstream got an ambiguous message: {:?}",
                echo.headers
            );
        }
    }
    // Two different Content-Lengths.
    let request = "POST /conflict HTTP/1.1\r\nHost: ha.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: ha.test\r\n\r\n";
    let raw = client
        .raw(request.as_bytes(), Duration::from_secs(5))
        .await?;
    assert_eq!(raw.statuses(), vec![400], "{}", raw.text());
    // A Transfer-Encoding that is not chunked.
    let request = "POST /gzip HTTP/1.1\r\nHost: ha.test\r\nTransfer-Encoding: gzip\r\n\r\nxxxxGET /smuggled HTTP/1.1\r\nHost: ha.test\r\n\r\n";
    let raw = client
        .raw(request.as_bytes(), Duration::from_secs(5))
        .await?;
    assert_eq!(raw.statuses(), vec![400], "{}", raw.text());

    assert!(!e.up.saw_path("/smuggled"), "smuggled: {:?}", e.up.seen());
    assert!(!e.up.saw_path("/conflict") && !e.up.saw_path("/gzip"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_a_trusted_source_sets_the_client_address() -> R {
    let settings = Settings {
        proxy_protocol_from: vec!["127.0.0.1/32".parse()?],
        ..Settings::default()
    };
    let e = env_with(|_, _| {}, settings).await;
    let client = e.gate.client().cert(&e.alice);

    let mut tcp = TcpStream::connect(e.gate.addr).await?;
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 443\r\n")
        .await?;
    let tls = client.connect_over(tcp).await?;
    let mut conn = http_conn_over(tls, HOST).await?;
    let echo = conn
        .send(with_headers(get("/"), &[("x-forwarded-for", "6.6.6.6")]))
        .await?
        .echo();
    assert_eq!(echo.header("x-forwarded-for"), Some("203.0.113.7"));

    // PROXY v2, IPv6 source.
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2001:db8::5]:40000".parse::<std::net::SocketAddr>()?,
            "[::1]:443".parse::<std::net::SocketAddr>()?,
        ),
    )
    .build()?;
    let mut tcp = TcpStream::connect(e.gate.addr).await?;
    tcp.write_all(&header).await?;
    let tls = client.connect_over(tcp).await?;
    let echo = http_conn_over(tls, HOST).await?.get("/").await?.echo();
    assert_eq!(echo.header("x-forwarded-for"), Some("2001:db8::5"));

    // A configured source that omits the header is refused.
    assert!(client.probe().await.is_refused());
    e.gate
        .eventually("counted", |g| g.handshake_failures("proxy_protocol") >= 1)
        .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_an_untrusted_source_is_a_failed_handshake() -> R {
    let e = env().await;
    let mut tcp = TcpStream::connect(e.gate.addr).await?;
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 443\r\n")
        .await?;
    match e.gate.client().cert(&e.alice).connect_over(tcp).await {
        Err(_) => {}
        Ok(tls) => {
            let raw = raw_exchange(
                tls,
                b"GET / HTTP/1.1\r\nHost: ha.test\r\n\r\n",
                Duration::from_secs(5),
            )
            .await?;
            assert!(
                raw.status().is_none(),
                "PROXY header accepted from an untrusted peer: {}",
                raw.text()
            );
        }
    }
    assert!(e.up.seen().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_counts_open_websockets() -> R {
    let e = env_with(|_, _| {}, settings_with(|l| l.max_connections = 1)).await;
    // Baseline: one keep-alive connection holds the only slot.
    let mut conn = e.gate.client().cert(&e.alice).open().await?;
    assert_eq!(conn.get("/").await?.status, StatusCode::OK);
    assert!(
        e.gate.client().cert(&e.alice).probe().await.is_refused(),
        "limit not enforced"
    );
    drop(conn);
    // Wait for the slot to come back.
    let deadline = Instant::now() + Duration::from_secs(3);
    while e.gate.metrics.open_connections.get() != 0 {
        assert!(Instant::now() < deadline, "slot never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An upgraded connection is still an open connection.
    let mut ws = cert_websocket(&e, &e.alice).await;
    ws_roundtrip(&mut ws, "x").await;
    assert_eq!(e.gate.metrics.open_websockets.get(), 1);
    assert_eq!(
        e.gate.metrics.open_connections.get(),
        1,
        "an open WebSocket is no longer counted as an open connection"
    );
    assert!(
        e.gate.client().cert(&e.alice).probe().await.is_refused(),
        "WebSockets escape max_connections"
    );
    Ok(())
}

// ───────────────────────── 12. curl and openssl ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_interoperate() -> R {
    let e = env().await;
    let dir = tempfile::tempdir()?;
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::write(path("ca.pem"), e.pki.ca.cert_pem())?;
    std::fs::write(path("c.pem"), &e.alice.cert_pem)?;
    std::fs::write(path("k.pem"), &e.alice.key_pem)?;
    let port = e.gate.addr.port();
    let url = format!("https://{HOST}:{port}/from-curl");
    let curl = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            path("ca.pem"),
            "--resolve".into(),
            format!("{HOST}:{port}:127.0.0.1"),
            "-w".into(),
            "\n%{http_code} %{http_version}".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(url.clone());
        args
    };

    let (ok, out, err) = run(
        "curl",
        curl(&["--cert", &path("c.pem"), "--key", &path("k.pem")]),
        None,
    )
    .await;
    assert!(ok, "curl failed: {err}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "200 2", "curl negotiates h2 by default: {out}");
    let echo: Echo = serde_json::from_str(body)?;
    assert_eq!(echo.header("x-portcullis-identity"), Some("alice"));
    assert_eq!(echo.path, "/from-curl");

    let (ok, out, err) = run(
        "curl",
        curl(&[
            "--http1.1",
            "--cert",
            &path("c.pem"),
            "--key",
            &path("k.pem"),
        ]),
        None,
    )
    .await;
    assert!(ok, "curl failed: {err}");
    assert!(out.ends_with("\n200 1.1"), "{out}");

    let (ok, out, err) = run("curl", curl(&[]), None).await;
    assert!(
        ok,
        "curl without a certificate must still complete TLS: {err}"
    );
    assert!(out.ends_with("\n403 2"), "{out}");
    assert!(out.contains("Client certificate required"), "{out}");

    for version in ["-tls1_3", "-tls1_2"] {
        let args: Vec<String> = [
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            HOST,
            "-CAfile",
            &path("ca.pem"),
            version,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (_, out, err) = run("openssl", args, Some(Vec::new())).await;
        let all = format!("{out}{err}");
        let (_, after) = all
            .split_once("Acceptable client certificate CA names")
            .unwrap_or_else(|| panic!("{version}: no client CA names: {all}"));
        let names = after.lines().nth(1).unwrap_or_default();
        assert!(
            names.contains("Portcullis Test CA"),
            "{version}: {names:?}\n{all}"
        );
        assert!(
            all.contains("Verify return code: 0 (ok)"),
            "{version}: {all}"
        );
    }
    // TLS 1.1 is never spoken.
    let args: Vec<String> = [
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        HOST,
        "-tls1_1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (ok, _, _) = run("openssl", args, Some(Vec::new())).await;
    assert!(!ok, "TLS 1.1 handshake succeeded");
    Ok(())
}

// ───────────────────────── revocation of long responses, resumption, shutdown ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_identity_ends_its_open_event_streams() -> R {
    // Long-lived responses (Home Assistant's /api/stream, camera streams) are "already-open
    // connections" as much as WebSockets are: a revoked device must stop receiving them.
    let e = env().await;
    let cookie = earn_cookie(&e, &e.alice).await;
    let mut streams = Vec::new();
    for (label, client, cookie) in [
        ("certificate h1", e.gate.client().cert(&e.alice), None),
        ("certificate h2", e.gate.client().cert(&e.alice).h2(), None),
        ("cookie h1", e.gate.client(), Some(&cookie)),
        ("cookie h2", e.gate.client().h2(), Some(&cookie)),
        ("bob", e.gate.client().cert(&e.bob), None),
    ] {
        let mut conn = client.open().await?;
        let mut req = get("/events");
        if let Some(value) = cookie {
            req = with_cookie(req, value);
        }
        let resp = conn.send_streaming(req).await?;
        assert_eq!(resp.status(), StatusCode::OK, "{label}");
        let mut body = resp.into_body();
        assert!(
            next_data(&mut body).await.is_some(),
            "{label}: no first event"
        );
        streams.push((label, conn, body));
    }

    e.gate.revoke("alice");
    let revoked_at = Instant::now();
    let mut still_open = Vec::new();
    for (label, _conn, body) in &mut streams {
        if *label == "bob" {
            continue;
        }
        let left = TEARDOWN.saturating_sub(revoked_at.elapsed());
        if !body_ends_within(body, left).await {
            still_open.push(*label);
        }
    }
    let (_, _, bob) = streams.iter_mut().find(|(l, _, _)| *l == "bob").unwrap();
    assert!(
        next_data(bob).await.is_some(),
        "bob's stream must keep flowing"
    );
    assert!(
        still_open.is_empty(),
        "revoked alice still receives events on: {still_open:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_sessions_do_not_outlive_a_revocation() -> R {
    // A resumed session skips certificate verification, so the allowlist must not be
    // skipped with it.
    let e = env().await;
    let tls13 = e.gate.client().cert(&e.alice).resuming();
    let tls12 = e.gate.client().cert(&e.alice).tls12().resuming();
    for client in [&tls13, &tls12] {
        assert!(matches!(client.probe().await, Outcome::Answered(200)));
        let tls = client.connect().await?;
        let kind = tls.get_ref().1.handshake_kind();
        assert_eq!(
            kind,
            Some(rustls::HandshakeKind::Resumed),
            "the gate resumes sessions"
        );
        let echo = http_conn_over(tls, HOST).await?.get("/").await?.echo();
        assert_eq!(echo.header("x-portcullis-identity"), Some("alice"));
    }
    // A reload that keeps alice: sessions may not resume, but alice is still admitted.
    let carol = e.pki.client("carol");
    e.gate.publish(|s| s.live.push(live("carol", &carol)));
    for client in [&tls13, &tls12] {
        assert!(matches!(client.probe().await, Outcome::Answered(200)));
    }
    e.gate.revoke("alice");
    for (client, version) in [(&tls13, "TLS 1.3"), (&tls12, "TLS 1.2")] {
        let outcome = client.probe().await;
        assert!(
            outcome.is_refused(),
            "{version}: revoked alice resumed: {outcome:?}"
        );
    }
    assert_eq!(e.up.seen().len(), 6, "{:?}", e.up.seen());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_closes_open_connections() -> R {
    let e = env().await;
    let mut ws = cert_websocket(&e, &e.alice).await;
    let mut conn = e.gate.client().cert(&e.bob).open().await?;
    assert_eq!(conn.get("/").await?.status, StatusCode::OK);
    ws_roundtrip(&mut ws, "before").await;
    tokio::time::timeout(Duration::from_secs(5), e.gate.stop()).await?;
    assert_eq!(ws_next(&mut ws, Duration::from_secs(2)).await, Ok(None));
    assert!(conn.closed_within(Duration::from_secs(2)).await);
    assert!(
        TcpStream::connect(e.gate.addr).await.is_err(),
        "listener still open"
    );
    Ok(())
}

// ───────────────────────── more edges ─────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_and_event_streams_outlive_the_header_timeout() -> R {
    // "Long-lived, no idle cut while traffic flows": the header-read timeout bounds request
    // heads, never an upgraded connection or a response still streaming.
    let e = env_with(|_, _| {}, timeouts()).await;
    let cookie = earn_cookie(&e, &e.alice).await;
    let mut ws = cert_websocket(&e, &e.alice).await;
    let (mut cookie_ws, _) = e
        .gate
        .client()
        .websocket("/api/websocket", Some(&cookie))
        .await
        .expect("cookie ws");
    let mut conn = e.gate.client().cert(&e.alice).open().await?;
    let mut events = conn.send_streaming(get("/events")).await?.into_body();
    let mut h2 = e.gate.client().cert(&e.alice).h2().open().await?;
    let mut h2_events = h2.send_streaming(get("/events")).await?.into_body();
    // Idle for longer than the header timeout, while the event streams flow.
    assert!(
        !body_ends_within(&mut events, Duration::from_millis(1600)).await,
        "an event stream was cut while data flowed"
    );
    assert!(
        !body_ends_within(&mut h2_events, Duration::from_millis(100)).await,
        "an HTTP/2 event stream was cut while data flowed"
    );
    ws_roundtrip(&mut ws, "after an idle second and a half").await;
    ws_roundtrip(&mut cookie_ws, "cookie socket too").await;
    let big = "x".repeat(1024 * 1024);
    ws_roundtrip(&mut ws, &big).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_a_502_page() -> R {
    let pki = TestPki::new();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let alice = pki.client("alice");
    let gate = Gate::start(
        &pki,
        spec(
            vec![route("ha", &[HOST], dead)],
            vec![live("alice", &alice)],
        ),
        Settings::default(),
    )
    .await;
    let resp = gate.client().cert(&alice).get("/").await?;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{}", resp.text());
    assert!(resp.text().contains("not reachable"));
    // Denied requests never depend on the upstream.
    assert_eq!(gate.client().get("/").await?.status, StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_are_not_device_certificates_are_refused() -> R {
    let e = env().await;
    // The route's server certificate (EKU serverAuth only), allowlisted by fingerprint.
    let server = e.pki.server.clone();
    e.gate
        .publish(|s| s.live.push(live("server-as-client", &server)));
    let outcome = e.gate.client().cert(&server).probe().await;
    assert!(
        outcome.is_refused(),
        "serverAuth certificate admitted: {outcome:?}"
    );
    // The CA certificate itself, with its key, allowlisted by fingerprint.
    let ca_key = portcullis::pki::inspect(e.pki.ca.cert_der())?;
    e.gate.publish(|s| {
        s.live.push(portcullis::snapshot::LiveCert {
            identity: "ca".into(),
            serial_hex: ca_key.serial_hex.clone(),
            fingerprint: ca_key.fingerprint,
            labels: Default::default(),
            not_after: ca_key.not_after,
        })
    });
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(e.pki.ca.key_pem().as_bytes())?
    };
    let mut client = e.gate.client();
    client.cert = Some((
        e.pki.ca.cert_der().to_vec(),
        key.secret_pkcs8_der().to_vec(),
    ));
    let outcome = client.probe().await;
    assert!(
        outcome.is_refused(),
        "the CA certificate admitted as a device: {outcome:?}"
    );
    assert!(e.up.seen().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_device_certificates_are_admitted() -> R {
    let e = env().await;
    let tablet = e.pki.ca.issue_client(
        "old-tablet",
        portcullis::resources::KeyAlgorithm::Rsa2048,
        Duration::from_secs(3600),
    )?;
    e.gate.publish(|s| s.live.push(live("tablet", &tablet)));
    for tls12 in [false, true] {
        let mut client = e.gate.client().cert(&tablet);
        if tls12 {
            client = client.tls12();
        }
        let resp = client.get("/").await?;
        assert_eq!(
            resp.echo().header("x-portcullis-identity"),
            Some("tablet"),
            "tls12={tls12}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_fallback_off_means_no_cookie_either_way() -> R {
    let e = env_with(|s, _| s.routes[0].cookie = None, Settings::default()).await;
    let resp = e.gate.client().cert(&e.alice).get("/").await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.set_cookies().is_empty(), "{:?}", resp.set_cookies());
    // A genuine cookie (right key, host, serial) is not a credential on this route.
    let snapshot = e.gate.snapshot();
    let minted = issue_cookie(
        &snapshot.cookie_keys()[0],
        &e.alice.info.serial_hex,
        HOST,
        SystemTime::now() + COOKIE_TTL,
    );
    let resp = e
        .gate
        .client()
        .send(with_cookie(json_req("/"), &minted))
        .await?;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.json()["reason"], "no_credentials");
    // With fallback off the gate does not own the cookie name: it is passed through.
    let resp = e
        .gate
        .client()
        .cert(&e.alice)
        .send(with_cookie(get("/"), "x"))
        .await?;
    assert_eq!(resp.echo().header("cookie"), Some("__Host-portcullis=x"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cookie_next_to_a_good_one_does_not_lock_out() -> R {
    let e = env().await;
    let cookie = earn_cookie(&e, &e.alice).await;
    let header = format!("{COOKIE_NAME}=v1.00.1.AAAA; {COOKIE_NAME}={cookie}");
    let resp = e
        .gate
        .client()
        .send(with_headers(get("/"), &[("cookie", &header)]))
        .await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.echo().header("x-portcullis-identity"), Some("alice"));
    Ok(())
}

/// hyper's HTTP/2 server sends the body it is given even to a HEAD, and clients reset such
/// a stream (curl: PROTOCOL_ERROR): the gate's own answers go out as headers only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_over_http2_gets_the_gates_own_answers_as_headers_only() -> R {
    let e = env().await;
    for client in [e.gate.client(), e.gate.client().h2()] {
        let denied = client.send(common::head("/")).await?;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert!(denied.body.is_empty(), "{:?}", denied.body);
        assert!(
            denied.header("content-length").is_some_and(|l| l != "0"),
            "the length the page would have: {:?}",
            denied.header("content-length")
        );
        let admitted = client.cert(&e.alice).send(common::head("/")).await?;
        assert_eq!(admitted.status, StatusCode::OK);
        assert!(admitted.body.is_empty(), "{:?}", admitted.body);
    }
    Ok(())
}
