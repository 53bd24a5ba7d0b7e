//! A real browser against the real gate: headless Chromium (NSS, its own TLS stack and
//! certificate selection) talks to `portcullis standalone` over real TLS, with the device
//! `.p12` a user would import. The harness is in tests/browser/harness.rs, the Node driver
//! in tests/browser/drive.mjs; `.ci/run` installs what they need (Chromium, NSS tools,
//! playwright-core), and without it these tests fail, saying what to run.
//!
//! To write another: start a [`StandaloneGate`], take `gate.browser()` (trusts the gate's
//! CA, maps `ha.test` to 127.0.0.1, selects client certificates without the picker),
//! give it a device certificate with `import_p12` if it should have one, and `run` the
//! [`Step`]s; each returns a result, read with `Results::page`, `websocket`, `cookies`...
//! A `run` blocks while Chromium runs; call it from the test's own task.

mod common;
#[path = "browser/harness.rs"]
mod harness;

use common::Upstream;
use harness::{COOKIE_NAME, HOST, StandaloneGate, Step};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_with_a_device_p12_gets_in_and_chromium_without_one_is_refused() {
    harness::require_tools();
    let upstream = Upstream::start().await;
    let gate = StandaloneGate::start(upstream.addr, &["alice"]);

    // a. A browser holding alice's .p12 (Legacy profile, as the state dir hands it out)
    // loads the protected page and is given the fallback cookie.
    let alice = gate.browser();
    let (p12, password) = gate.p12("alice");
    alice.import_p12(&p12, &password);
    assert!(
        alice.certificates().contains("u,u,u"),
        "the .p12's certificate and key are in the NSS database: {}",
        alice.certificates()
    );
    let run = alice.run(&[
        Step::goto(gate.url("/lovelace/0?kiosk")),
        Step::Cookies,
        Step::websocket(gate.ws_url("/api/websocket"), "hello from chromium"),
    ]);

    let page = run.page(0);
    page.assert_upstream_saw("/lovelace/0?kiosk", "alice");
    assert!(
        page.headers
            .get("set-cookie")
            .is_some_and(|c| c.starts_with(&format!("{COOKIE_NAME}="))),
        "the gate sets its cookie: {:?}",
        page.headers
    );
    // The browser accepted it (a __Host- cookie it found malformed would be dropped).
    let cookies = run.cookies(1);
    let cookie = cookies
        .iter()
        .find(|c| c.name == COOKIE_NAME)
        .unwrap_or_else(|| panic!("no {COOKIE_NAME} in the browser: {cookies:?}"));
    assert_eq!((cookie.domain.as_str(), cookie.path.as_str()), (HOST, "/"));
    assert!(cookie.secure && cookie.http_only, "{cookie:?}");
    assert_eq!(cookie.same_site, "Lax");

    // b. The same browser opens Home Assistant's WebSocket from the page.
    let ws = run.websocket(2);
    assert!(ws.opened, "the WebSocket did not open: {ws:?}");
    assert_eq!(ws.echo.as_deref(), Some("hello from chromium"), "{ws:?}");
    let upgrade = upstream
        .seen()
        .into_iter()
        .find(|e| e.path == "/api/websocket")
        .expect("the upgrade reached the upstream");
    assert_eq!(upgrade.header("x-portcullis-identity"), Some("alice"));

    // c. A browser that trusts the CA but holds no certificate gets the 403 page, and its
    // WebSocket is refused; nothing of it reaches the upstream.
    let stranger = gate.browser();
    let seen_before = upstream.seen().len();
    let run = stranger.run(&[
        Step::goto(gate.url("/")),
        Step::websocket(gate.ws_url("/api/websocket"), "let me in"),
        Step::Cookies,
    ]);
    let page = run.page(0);
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(
        page.body.contains("Client certificate required"),
        "the 403 page: {}",
        page.body
    );
    assert!(
        !page.headers.contains_key("set-cookie"),
        "{:?}",
        page.headers
    );
    let ws = run.websocket(1);
    assert!(!ws.opened && ws.echo.is_none(), "{ws:?}");
    assert!(run.cookies(2).is_empty(), "{:?}", run.cookies(2));
    assert_eq!(upstream.seen().len(), seen_before, "{:?}", upstream.seen());

    // d. The same certificate-less browser holding the cookie alice's certificate earned
    // (what Safari does on WebSocket handshakes) gets its WebSocket through.
    let run = stranger.run(&[
        Step::AddCookies {
            cookies: vec![serde_json::json!({
                "name": COOKIE_NAME,
                "value": cookie.value,
                "url": gate.origin(),
                "secure": true,
                "httpOnly": true,
                "sameSite": "Lax",
            })],
        },
        Step::goto(gate.url("/")),
        Step::websocket(gate.ws_url("/api/websocket"), "cookie only"),
    ]);
    assert_eq!(run.page(1).status, 200, "{}", run.page(1).body);
    let ws = run.websocket(2);
    assert_eq!(ws.echo.as_deref(), Some("cookie only"), "{ws:?}");
}
