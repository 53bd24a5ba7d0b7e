//! Which device is asking, from its User-Agent: it decides which download the page puts
//! first. A wrong guess costs nothing: every page also lists every download.

/// The device family a download suits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// iPhone, iPad (iPadOS Safari says "Macintosh", see [`Platform::Mac`]), iPod.
    Ios,
    /// macOS, and iPadOS asking for the desktop site: both install .mobileconfig profiles.
    Mac,
    Android,
    /// Windows, Linux, ChromeOS and anything unknown: a .p12 for the browser or OS store.
    Desktop,
}

impl Platform {
    /// The metric and log label.
    pub fn label(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Mac => "macos",
            Platform::Android => "android",
            Platform::Desktop => "desktop",
        }
    }

    /// Whether a configuration profile is the natural download.
    pub fn takes_profile(self) -> bool {
        matches!(self, Platform::Ios | Platform::Mac)
    }
}

/// What the User-Agent says about the browser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detected {
    pub platform: Platform,
    /// Likely an app's embedded browser (a QR scanner, a messenger): it keeps its own
    /// cookies and often cannot install profiles or save files where the system sees them.
    pub in_app: bool,
    /// On iOS, a browser other than Safari (Chrome, Firefox, Edge): only Safari installs
    /// configuration profiles.
    pub ios_not_safari: bool,
}

/// Reads a User-Agent header (absent: empty).
pub fn detect(user_agent: &str) -> Detected {
    let has = |s: &str| user_agent.contains(s);
    let platform = if has("iPhone") || has("iPad") || has("iPod") {
        Platform::Ios
    } else if has("Android") {
        Platform::Android
    } else if has("Macintosh") || has("Mac OS X") {
        Platform::Mac
    } else {
        Platform::Desktop
    };
    // Apps that embed a web view announce themselves, or (on iOS) leave out "Safari/";
    // an Android WebView says "; wv)".
    let named_app = [
        "FBAN",
        "FBAV",
        "Instagram",
        "Line/",
        "MicroMessenger",
        "GSA/",
        "Snapchat",
    ]
    .iter()
    .any(|s| has(s));
    let in_app = named_app
        || (platform == Platform::Ios && !has("Safari/"))
        || (platform == Platform::Android && has("; wv)"));
    let ios_not_safari = platform == Platform::Ios
        && (has("CriOS") || has("FxiOS") || has("EdgiOS") || has("OPiOS"));
    Detected {
        platform,
        in_app,
        ios_not_safari,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
    const IPHONE_CHROME: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/126.0.6478.54 Mobile/15E148 Safari/604.1";
    const IPHONE_WEBVIEW: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
    const IPAD_DESKTOP: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15";
    const ANDROID_CHROME: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36";
    const ANDROID_WEBVIEW: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/126.0.0.0 Mobile Safari/537.36";
    const WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
    const LINUX_FIREFOX: &str =
        "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0";

    #[test]
    fn platforms() {
        let p = |ua| detect(ua).platform;
        assert_eq!(p(IPHONE_SAFARI), Platform::Ios);
        assert_eq!(p(IPHONE_CHROME), Platform::Ios);
        assert_eq!(p(IPAD_DESKTOP), Platform::Mac);
        assert_eq!(p(ANDROID_CHROME), Platform::Android);
        assert_eq!(p(WINDOWS), Platform::Desktop);
        assert_eq!(p(LINUX_FIREFOX), Platform::Desktop);
        assert_eq!(p(""), Platform::Desktop);
        assert!(Platform::Ios.takes_profile() && Platform::Mac.takes_profile());
        assert!(!Platform::Android.takes_profile());
    }

    #[test]
    fn in_app_browsers_and_other_ios_browsers() {
        assert!(!detect(IPHONE_SAFARI).in_app);
        assert!(!detect(IPHONE_SAFARI).ios_not_safari);
        assert!(detect(IPHONE_WEBVIEW).in_app);
        assert!(detect(IPHONE_CHROME).ios_not_safari);
        assert!(!detect(IPHONE_CHROME).in_app);
        assert!(detect(ANDROID_WEBVIEW).in_app);
        assert!(!detect(ANDROID_CHROME).in_app);
        assert!(detect(&format!("{IPHONE_SAFARI} Instagram 300.0")).in_app);
        assert!(!detect(WINDOWS).in_app);
    }
}
