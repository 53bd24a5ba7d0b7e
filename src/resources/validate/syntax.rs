//! Syntax of the small strings a spec holds: names, hosts, URLs, durations, tokens.

use std::net::IpAddr;
use std::time::Duration;

use http::uri::{Authority, Uri};

/// The duration grammar, as the CRDs' CEL rule checks it: one or more whole numbers of
/// 1-9 digits, each followed by a unit `d`, `h`, `m` or `s`, summed (`1h30m`, `365d`). No
/// spaces, signs, fractions or other units. Go's `time.ParseDuration` (CEL's `duration()`)
/// has no `d`, humantime has no limits: this is the part both a person and the API server
/// read the same way, and [`parse_duration`] accepts exactly it.
pub const DURATION_PATTERN: &str = "^([0-9]{1,9}[dhms])+$";
/// Longest duration string (the CRDs' `maxLength`).
pub const DURATION_MAX_LEN: usize = 32;

/// Parses a duration in the grammar of [`DURATION_PATTERN`], e.g. `1h`, `30m`, `365d`,
/// `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let not_a_duration = || {
        format!(
            "{text:?} is not a duration; write whole numbers with a unit d, h, m or s, \
             e.g. 30m, 1h, 365d or 1h30m"
        )
    };
    if text.len() > DURATION_MAX_LEN {
        return Err(format!(
            "{text:?} is longer than {DURATION_MAX_LEN} characters; write e.g. 365d"
        ));
    }
    let mut rest = text.as_bytes();
    let mut secs: u64 = 0;
    if rest.is_empty() {
        return Err(not_a_duration());
    }
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&digits) {
            return Err(not_a_duration());
        }
        // At most 9 digits, at most 16 parts: no overflow.
        let n: u64 = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(not_a_duration)?;
        let unit = match rest.get(digits) {
            Some(b'd') => 86_400,
            Some(b'h') => 3_600,
            Some(b'm') => 60,
            Some(b's') => 1,
            _ => return Err(not_a_duration()),
        };
        secs += n * unit;
        rest = &rest[digits + 1..];
    }
    Ok(Duration::from_secs(secs))
}

/// The `host:port` of an upstream URL, which must be `http://host:port` (path `/` at most).
pub fn upstream_authority(url: &str) -> Result<Authority, String> {
    let example = "write http://HOST:PORT, e.g. http://127.0.0.1:8123";
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|_| format!("{url:?} is not a URL; {example}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "https upstreams are not supported: the gate terminates TLS and speaks plain \
                 HTTP to the upstream on a trusted network; {example}"
            ));
        }
        _ => return Err(format!("{url:?} must start with http://; {example}")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{url:?} has no host; {example}"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{url:?} carries credentials; remove them, {example}"
        ));
    }
    if authority.port_u16().is_none_or(|p| p == 0) {
        return Err(format!("{url:?} has no port; add it, {example}"));
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if path != "/" {
        return Err(format!(
            "{url:?} has a path or query; requests keep their own path, {example}"
        ));
    }
    Ok(authority.clone())
}

/// Whether `name` is a DNS-1123 label (`a-z`, `0-9`, `-`, at most 63): a safe directory
/// name and a valid Kubernetes name.
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `host` is an IP address or a DNS name (any case; no port, no wildcard).
pub fn is_valid_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= 253
        && labels.iter().all(|l| is_host_label(l))
        && labels
            .last()
            .is_some_and(|tld| !tld.bytes().all(|c| c.is_ascii_digit()))
}

fn is_host_label(label: &str) -> bool {
    let b = label.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub(super) fn is_standard_method(m: &str) -> bool {
    [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ]
    .contains(&m)
}

/// RFC 9110 `tchar`: the characters of a token (method names, cookie names).
pub(super) fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}
