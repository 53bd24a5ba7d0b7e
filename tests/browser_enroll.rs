//! A one-time enrollment link in a real browser: `portcullis enroll` prints a link, link
//! previews (a bare HTTP client, a browser that only opens it) leave it usable, headless
//! Chromium without a certificate presses the button, downloads the `.p12`, imports it into
//! its NSS database with the one-time password and is then let in by the gate; a second
//! browser pressing the same link's button gets the generic page. The harness is
//! tests/browser/harness.rs (see tests/browser.rs); without Chromium, the NSS tools, Node's
//! playwright-core or the openssl CLI this test fails, saying what to install.

mod common;
#[path = "browser/harness.rs"]
mod harness;

use common::enroll::openssl_opens;
use common::{TlsClient, Upstream, get, head};
use harness::{HOST, StandaloneGate, Step};
use http::StatusCode;
use http::header::USER_AGENT;
use serde::Deserialize;

const CLAIM_COOKIE: &str = "__Secure-portcullis-enroll";
/// What the generic page (unknown, used, expired links) says.
const GENERIC: &str = "This link is not valid any more";
/// A link-preview fetcher's User-Agent (what a messenger sends to draw a preview card).
const PREVIEW_BOT: &str =
    "Mozilla/5.0 (compatible; facebookexternalhit/1.1; +https://example.org/bot)";

/// The page the browser is on, read from the page itself.
const PAGE_STATE: &str = "(() => {
  const nav = performance.getEntriesByType('navigation')[0];
  return {
    path: location.pathname,
    status: nav ? nav.responseStatus : 0,
    heading: document.querySelector('h1')?.textContent ?? '',
    sections: [...document.querySelectorAll('h2')].map((h) => h.textContent),
    links: [...document.querySelectorAll('a.button')].map((a) => a.getAttribute('href')),
    forms: document.querySelectorAll('form').length,
  };
})()";

#[derive(Debug, Deserialize)]
struct PageState {
    path: String,
    status: u16,
    heading: String,
    sections: Vec<String>,
    links: Vec<String>,
    forms: usize,
}

fn page_state(value: &serde_json::Value) -> PageState {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("the page's state ({e}): {value}"))
}

/// A client with no certificate and no cookies that trusts the gate's CA: a link preview.
fn previewer(gate: &StandaloneGate) -> TlsClient {
    TlsClient::standalone(gate.port, &gate.state, None).alpn(&[b"h2", b"http/1.1"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_enrolls_with_a_one_time_link_and_a_second_browser_cannot() {
    harness::require_tools();
    let upstream = Upstream::start().await;
    let gate = StandaloneGate::start(upstream.addr, &["alice"]);
    let link = gate.enroll("alice", &[]);
    assert!(
        link.url
            .starts_with(&gate.url("/.well-known/portcullis/enroll/")),
        "{}",
        link.printed
    );
    let a = gate.browser();
    let b = gate.browser();

    // 1. Link previews do not use the link up: a fetcher without cookies (GET and HEAD,
    // and the download URLs it may find), then browser B opening it without pressing.
    let bot = previewer(&gate);
    for (method, alpn) in [("GET", "h2"), ("HEAD", "h2"), ("HEAD", "http/1.1")] {
        let mut req = if method == "GET" {
            get(link.path())
        } else {
            head(link.path())
        };
        req.headers_mut()
            .insert(USER_AGENT, PREVIEW_BOT.parse().expect("UA"));
        let client = TlsClient {
            alpn: vec![alpn.as_bytes().to_vec()],
            ..bot.clone()
        };
        let resp = client
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("a preview's {method} over {alpn}: {e}"));
        assert_eq!(resp.status, StatusCode::OK, "{method}: {}", resp.text());
        assert!(
            resp.set_cookies().is_empty(),
            "{method}: {:?}",
            resp.headers
        );
        assert_eq!(
            resp.body.is_empty(),
            method == "HEAD",
            "{method} over {alpn}"
        );
    }
    for file in ["downloads", "certificate.p12", "profile.mobileconfig"] {
        let resp = bot
            .get(&format!("{}/{file}", link.path()))
            .await
            .expect("the preview's request");
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{file} without a claim");
        assert!(resp.text().contains(GENERIC), "{file}: {}", resp.text());
    }
    let run = b.run(&[Step::goto(&link.url), Step::eval(PAGE_STATE), Step::Cookies]);
    let landing = run.page(0);
    assert_eq!(landing.status, 200, "{}", landing.body);
    assert_eq!(
        landing.headers.get("cache-control").map(String::as_str),
        Some("no-store")
    );
    assert!(!landing.headers.contains_key("set-cookie"), "{landing:?}");
    let state = page_state(run.value(1));
    assert_eq!((state.forms, state.links.len()), (1, 0), "{state:?}");
    assert!(run.cookies(2).is_empty(), "{:?}", run.cookies(2));

    // 2. Browser A, holding no certificate (the gate refuses it), presses the button, lands
    // on the downloads page (a desktop browser: the .p12 first), downloads the .p12.
    let saved = a.home().join("downloaded.p12");
    let run = a.run(&[
        Step::goto(gate.url("/")),
        Step::goto(&link.url),
        Step::click("button[type=submit]"),
        Step::wait_for("a.button >> nth=0"),
        Step::eval(PAGE_STATE),
        Step::Cookies,
        Step::download("a.button >> nth=0", &saved),
    ]);
    assert_eq!(run.page(0).status, 403, "A holds no certificate yet");
    assert_eq!(run.page(1).status, 200, "{}", run.page(1).body);
    let downloads = page_state(run.value(4));
    assert_eq!(
        downloads.path,
        format!("{}/downloads", link.path()),
        "{downloads:?}"
    );
    assert_eq!(downloads.status, 200, "{downloads:?}");
    assert!(downloads.heading.contains("alice"), "{downloads:?}");
    assert_eq!(
        downloads.sections.first().map(String::as_str),
        Some("Computers"),
        "a desktop Chromium gets the computers' section first: {downloads:?}"
    );
    assert_eq!(
        downloads.links.first(),
        Some(&format!("{}/certificate.p12", link.path())),
        "{downloads:?}"
    );
    assert!(
        downloads
            .links
            .contains(&format!("{}/profile.mobileconfig", link.path())),
        "the other devices' profile is listed too: {downloads:?}"
    );
    let cookies = run.cookies(5);
    let claim = cookies
        .iter()
        .find(|c| c.name == CLAIM_COOKIE)
        .unwrap_or_else(|| panic!("no {CLAIM_COOKIE} in browser A: {cookies:?}"));
    assert_eq!(
        (claim.domain.as_str(), claim.path.as_str()),
        (HOST, link.path()),
        "{claim:?}"
    );
    assert!(
        claim.secure && claim.http_only && claim.same_site == "Strict",
        "{claim:?}"
    );
    let download = run.download(6);
    assert_eq!(download.suggested_filename, "alice.p12");

    // The file opens with the one-time password in NSS (what Chromium uses) ...
    a.import_p12(&download.path, &link.password);
    assert!(
        a.certificates().contains("u,u,u"),
        "the downloaded .p12's certificate and key are in A's NSS database: {}",
        a.certificates()
    );
    // ... and in OpenSSL, and never with the long-lived keystore password.
    assert!(openssl_opens(&download.path, &link.password));
    let (_, long_lived) = gate.p12("alice");
    assert!(!openssl_opens(&download.path, &long_lived));

    // With it, A gets through the gate to Home Assistant as alice.
    let run = a.run(&[Step::goto(gate.url("/lovelace/0"))]);
    let page = run.page(0);
    page.assert_upstream_saw("/lovelace/0", "alice");

    // 3. Browser B presses the same link's button: the generic page, no claim, no files.
    let run = b.run(&[
        Step::goto(&link.url),
        Step::click("button[type=submit]"),
        Step::wait_for(&format!("h1:has-text(\"{GENERIC}\")")),
        Step::eval(PAGE_STATE),
        Step::Cookies,
        Step::goto(format!("{}/downloads", link.url)),
        Step::goto(format!("{}/certificate.p12", link.url)),
    ]);
    assert_eq!(run.page(0).status, 200, "{}", run.page(0).body);
    let refused = page_state(run.value(3));
    assert_eq!(
        (refused.path.as_str(), refused.status),
        (link.path(), 404),
        "the claim's answer: {refused:?}"
    );
    assert!(
        refused.links.is_empty() && refused.forms == 0,
        "{refused:?}"
    );
    assert!(
        run.cookies(4).iter().all(|c| c.name != CLAIM_COOKIE),
        "{:?}",
        run.cookies(4)
    );
    for step in [5, 6] {
        let page = run.page(step);
        assert_eq!(page.status, 404, "{}", page.url);
        assert!(page.body.contains(GENERIC), "{}: {}", page.url, page.body);
    }

    // Nothing under the enrollment path reached Home Assistant; the token is in no log.
    assert!(
        !upstream.saw_path_containing("/.well-known/portcullis"),
        "{:?}",
        upstream.seen()
    );
    let log = gate.log();
    assert!(log.contains("enrollment link claimed"), "{log}");
    assert!(!log.contains(link.token()), "the token in the gate's log");
}
