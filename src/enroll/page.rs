//! The enrollment pages: plain HTML, one inline style sheet, no scripts, no external
//! assets. Buttons are forms and links, so the pages work with JavaScript off.

use std::fmt::Write as _;

use super::platform::{Detected, Platform};

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:2em auto;\
padding:0 1em;color:#1c1c1c}h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}\
.button{display:inline-block;padding:.7em 1.2em;border:0;border-radius:.4em;\
background:#03a9f4;color:#fff;font-size:1.05em;text-decoration:none;cursor:pointer}\
.note{background:#fff4e5;border-left:4px solid #ff9800;padding:.6em .9em}\
.small{color:#555;font-size:.9em}code{font-size:.95em}";

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\">\
<meta name=\"robots\" content=\"noindex, nofollow\">\
<title>{}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n",
        esc(title)
    )
}

const IN_APP_NOTE: &str = "<p class=\"note\">Opened from a QR-code scanner or another app? \
Its built-in browser keeps its own cookies and often cannot install certificates. Open this \
link in <b>Safari</b> (iPhone, iPad) or <b>Chrome</b> (Android) instead: copy it, or use the \
app's \u{201c}Open in browser\u{201d}.</p>";

const IOS_SAFARI_NOTE: &str = "<p class=\"note\">On iPhone and iPad only <b>Safari</b> \
installs certificate profiles. Open this link in Safari.</p>";

/// The page a link shows before anything happens: it looks nothing up and uses nothing
/// up, so link previews and prefetching cannot spend the link.
pub fn landing(action: &str, detected: Detected) -> String {
    let mut body = String::from("<h1>Get your device certificate</h1>\n");
    if detected.in_app {
        body.push_str(IN_APP_NOTE);
    } else if detected.ios_not_safari {
        body.push_str(IOS_SAFARI_NOTE);
    }
    let _ = write!(
        body,
        "<p>This one-time link gives <b>this browser</b> the certificate that lets your device \
into this site. Have the <b>one-time password</b> ready: it is shown where the link was \
created.</p>\n<form method=\"post\" action=\"{}\"><button class=\"button\" \
type=\"submit\">Get my certificate</button></form>\n<p class=\"small\">The link works once, \
for a short time. Only the browser that presses the button can download the \
certificate.</p>",
        esc(action)
    );
    layout("Get your device certificate", &body)
}

/// What unknown, expired, cancelled and used links all get: one page, one status.
pub fn invalid() -> String {
    layout(
        "Link not valid",
        "<h1>This link is not valid any more</h1>\n<p>Enrollment links work once and only for \
a short time. Ask the person who runs this site for a new one.</p>\n<p class=\"small\">(They \
create it with <code>portcullis enroll DEVICE</code>.)</p>",
    )
}

/// Too many failed claims from one network.
pub fn too_many() -> String {
    layout(
        "Too many attempts",
        "<h1>Too many attempts</h1>\n<p>This network tried too many links that were not valid. \
Wait ten minutes and try again, or ask for a new link.</p>",
    )
}

/// Where the downloads are, for the claiming browser.
pub struct Downloads<'a> {
    pub identity: &'a str,
    pub detected: Detected,
    /// URL path of the `.mobileconfig`.
    pub profile: &'a str,
    /// URL path of the `.p12`.
    pub p12: &'a str,
}

/// The downloads page: the platform's own way first, then the Home Assistant app, then
/// every other device's.
pub fn downloads(d: &Downloads<'_>) -> String {
    let mut body = format!(
        "<h1>Install the certificate for {}</h1>\n<p>When your device asks for a password, \
type the <b>one-time password</b> shown where this link was created (words joined by \
hyphens). This page works for ten minutes.</p>\n",
        esc(d.identity)
    );
    if d.detected.in_app {
        body.push_str(IN_APP_NOTE);
    } else if d.detected.ios_not_safari {
        body.push_str(IOS_SAFARI_NOTE);
    }
    let primary = match d.detected.platform {
        Platform::Ios => ios(d),
        Platform::Mac => mac(d),
        Platform::Android => android(d),
        Platform::Desktop => desktop(d),
    };
    body.push_str(&primary);
    body.push_str(&app(d));
    let mut others = String::new();
    for p in [
        Platform::Ios,
        Platform::Mac,
        Platform::Android,
        Platform::Desktop,
    ] {
        if p != d.detected.platform {
            others.push_str(&match p {
                Platform::Ios => ios(d),
                Platform::Mac => mac(d),
                Platform::Android => android(d),
                Platform::Desktop => desktop(d),
            });
        }
    }
    let _ = write!(
        body,
        "<details><summary>Other devices</summary>{others}</details>\n{IN_APP_FOOTNOTE}"
    );
    layout("Install your certificate", &body)
}

const IN_APP_FOOTNOTE: &str = "<p class=\"small\">Links opened inside another app (a QR \
scanner, a messenger) run in that app's own browser: open them in Safari or Chrome. The \
downloads go only to the browser that pressed the button; if that was the wrong one, ask for \
a new link.</p>";

fn link(href: &str, text: &str) -> String {
    format!(
        "<p><a class=\"button\" href=\"{}\">{}</a></p>",
        esc(href),
        esc(text)
    )
}

fn ios(d: &Downloads<'_>) -> String {
    format!(
        "<h2>iPhone or iPad (Safari)</h2>{}<ol><li>Tap the button, then <b>Allow</b>.</li>\
<li>Open <b>Settings</b> and tap <b>Profile Downloaded</b> near the top (or General \u{2192} \
VPN &amp; Device Management).</li><li>Tap <b>Install</b>, enter your passcode, and when asked \
for the certificate's password type the one-time password.</li><li>Open your Home Assistant \
address in Safari: it presents the certificate when the site asks.</li></ol>",
        link(d.profile, "Download the profile")
    )
}

fn mac(d: &Downloads<'_>) -> String {
    format!(
        "<h2>Mac (Safari, Chrome)</h2>{}<ol><li>Download the profile and open it.</li>\
<li>Open <b>System Settings \u{2192} General \u{2192} Device Management</b> (<b>Profiles</b> on \
older macOS), double-click the profile and choose <b>Install</b>.</li><li>Type the one-time \
password when asked.</li></ol><p class=\"small\">Firefox keeps its own certificate store: \
import the .p12 there instead (see Computers).</p>",
        link(d.profile, "Download the profile")
    )
}

fn app(d: &Downloads<'_>) -> String {
    format!(
        "<h2>Home Assistant app (iPhone, iPad, Android)</h2><p>The app uses its own copy of the \
certificate: on iOS, apps cannot see certificates installed by a profile.</p>{}<ol>\
<li>Download the .p12 file (on iPhone it goes to Files \u{2192} Downloads).</li><li>In the \
app open <b>Settings \u{2192} Companion app</b>, choose your server and its client \
certificate setting (the wording differs between app versions), pick the file and type the \
one-time password.</li><li>On Android the app can also use the certificate installed as \
\u{201c}VPN &amp; app user certificate\u{201d} (below): choose it when the app asks.</li></ol>",
        link(d.p12, &format!("Download {}.p12", d.identity))
    )
}

fn android(d: &Downloads<'_>) -> String {
    format!(
        "<h2>Android</h2>{}<ol><li>Download the .p12 file.</li><li>Open <b>Settings \
\u{2192} Security &amp; privacy \u{2192} More security settings \u{2192} Encryption &amp; \
credentials \u{2192} Install a certificate \u{2192} VPN &amp; app user certificate</b> (names \
differ a little between makers: search Settings for \u{201c}certificate\u{201d}).</li><li>Pick \
the file, type the one-time password and give it a name.</li><li>Open your Home Assistant \
address in Chrome and choose the certificate when asked.</li></ol>",
        link(d.p12, &format!("Download {}.p12", d.identity))
    )
}

fn desktop(d: &Downloads<'_>) -> String {
    format!(
        "<h2>Computers</h2>{}<ul><li><b>Windows</b>: open the file and follow the Certificate \
Import Wizard (store: Personal).</li><li><b>macOS</b>: open the file in Keychain Access.</li>\
<li><b>Chrome on Linux</b>: Settings \u{2192} Privacy and security \u{2192} Security \u{2192} \
Manage certificates \u{2192} Import.</li><li><b>Firefox</b>: Settings \u{2192} Privacy &amp; \
Security \u{2192} Certificates \u{2192} View Certificates \u{2192} Your Certificates \u{2192} \
Import.</li></ul><p>Type the one-time password when asked, then restart the browser.</p>",
        link(d.p12, &format!("Download {}.p12", d.identity))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enroll::platform::detect;

    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

    fn page(ua: &str) -> String {
        downloads(&Downloads {
            identity: "alice<phone>",
            detected: detect(ua),
            profile: "/p/profile.mobileconfig",
            p12: "/p/certificate.p12",
        })
    }

    #[test]
    fn the_platform_s_own_download_comes_first() {
        let ios = page(IPHONE);
        let profile = ios.find("Download the profile").unwrap();
        assert!(profile < ios.find(".p12\"").unwrap_or(usize::MAX));
        assert!(profile < ios.find("Download alice").unwrap());
        let android = page("Mozilla/5.0 (Linux; Android 14) Chrome/126 Mobile Safari/537.36");
        assert!(android.find("<h2>Android").unwrap() < android.find("<h2>iPhone").unwrap());
        // Every page offers everything, and escapes what it prints.
        for p in [&ios, &android] {
            assert!(p.contains("/p/profile.mobileconfig") && p.contains("/p/certificate.p12"));
            assert!(p.contains("alice&lt;phone&gt;") && !p.contains("alice<phone>"));
            assert!(!p.contains("<script") && !p.contains("http://") && !p.contains("https://"));
        }
    }

    #[test]
    fn landing_is_a_form_and_warns_in_app_browsers() {
        let plain = landing("/x/T", detect(IPHONE));
        assert!(plain.contains("<form method=\"post\" action=\"/x/T\">"));
        assert!(!plain.contains("QR-code scanner"));
        let webview = landing(
            "/x/T",
            detect("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5) Mobile/15E148"),
        );
        assert!(webview.contains("QR-code scanner"));
        assert!(!invalid().contains("<form"));
    }
}
