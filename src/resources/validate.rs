//! Semantic checks of the two specs, shared by the standalone loader and the operator.
//!
//! The schema (serde, CRD) catches shapes; these functions catch meaning: a host that is
//! not a host, a URL that is not `http://host:port`, a duration that does not parse. Each
//! [`Problem`] names the field and says what to write instead, and every problem is
//! reported, not just the first.

use std::fmt;
use std::time::Duration;

mod syntax;

pub use syntax::{
    DURATION_MAX_LEN, DURATION_PATTERN, is_dns_label, is_valid_host, parse_duration,
    upstream_authority,
};
use syntax::{is_standard_method, is_tchar};

use super::{
    AcmeSpec, BypassRule, ClientIdentitySpec, CookieFallback, LETS_ENCRYPT, ProtectedRouteSpec,
    ServerCertificate, Upstream,
};

/// Shortest and longest accepted cookie lifetimes.
pub const COOKIE_TTL_RANGE: (Duration, Duration) = (MINUTE, Duration::from_secs(7 * DAY_SECS));
/// Device certificate lifetime when `validity` is absent.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * DAY_SECS);
/// Shortest accepted device certificate lifetime.
pub const MIN_VALIDITY: Duration = Duration::from_secs(3600);
/// Upper bound of the default `renewBefore` (a third of the validity).
pub const MAX_DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * DAY_SECS);
/// Longest accepted certificate common name (X.509 `ub-common-name`).
pub const MAX_COMMON_NAME_LEN: usize = 64;

const MINUTE: Duration = Duration::from_secs(60);
const DAY_SECS: u64 = 24 * 3600;

/// One thing wrong with a resource: the field's path and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field, e.g. `spec.upstream.url` or `spec.hosts[1]`.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl Problem {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem of a ProtectedRoute spec.
pub fn route_problems(spec: &ProtectedRouteSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    host_problems(
        &spec.hosts,
        spec.server_certificate.acme.is_some(),
        &mut out,
    );
    upstream_problems(&spec.upstream, &mut out);
    server_certificate_problems(&spec.server_certificate, &mut out);
    if let Some(selector) = &spec.client_auth.identity_selector
        && let Err(e) = kube::core::Selector::try_from(selector.clone())
    {
        out.push(Problem::new(
            "spec.clientAuth.identitySelector",
            format!("{e}; operators are In, NotIn (both with values), Exists, DoesNotExist"),
        ));
    }
    cookie_problems(&spec.client_auth.cookie_fallback, &mut out);
    for (i, rule) in spec.bypass.iter().enumerate() {
        bypass_problems(&format!("spec.bypass[{i}]"), rule, &mut out);
    }
    strip_headers_problems(&spec.strip_headers, &mut out);
    out
}

/// What only the standalone gate can do, refused in Kubernetes: `serverCertificate.files`
/// names files on the gate's own disk, which the cluster's pods do not have; `acme` is
/// cert-manager's job there.
pub fn cluster_route_problems(spec: &ProtectedRouteSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    if spec.server_certificate.files.is_some() {
        out.push(Problem::new(
            "spec.serverCertificate.files",
            "works only in standalone mode (files on the gate's disk); in Kubernetes put the \
             certificate in a kubernetes.io/tls Secret (e.g. from cert-manager) and set \
             `secretName` instead",
        ));
    }
    if spec.server_certificate.acme.is_some() {
        out.push(Problem::new(
            "spec.serverCertificate.acme",
            "works only in standalone mode; in Kubernetes let cert-manager get the certificate \
             (see examples/k8s/cert-manager.yaml) and set `secretName` to its Secret",
        ));
    }
    out
}

/// `stripHeaders`: header names, or prefixes ending in `*`.
fn strip_headers_problems(patterns: &[String], out: &mut Vec<Problem>) {
    use super::schema::{MAX_HEADER_NAME_LEN, MAX_STRIP_HEADERS};
    if patterns.len() > MAX_STRIP_HEADERS {
        out.push(Problem::new(
            "spec.stripHeaders",
            format!("has more than {MAX_STRIP_HEADERS} entries; use prefixes ending in *"),
        ));
    }
    for (i, pattern) in patterns.iter().enumerate() {
        let name = pattern.strip_suffix('*').unwrap_or(pattern);
        if name.is_empty()
            || name.len() > MAX_HEADER_NAME_LEN
            || !name.bytes().all(|b| b != b'*' && is_tchar(b))
        {
            out.push(Problem::new(
                format!("spec.stripHeaders[{i}]"),
                format!(
                    "{pattern:?} is not a header name; write e.g. X-Home-User, or X-Corp-* \
                     for every name starting with X-Corp- (a * only at the end)"
                ),
            ));
        }
    }
}

/// Every problem of a ClientIdentity spec.
pub fn identity_problems(spec: &ClientIdentitySpec) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(cn) = &spec.common_name {
        if cn.trim().is_empty() {
            out.push(Problem::new(
                "spec.commonName",
                "is empty; remove it to use the name",
            ));
        } else if cn.chars().count() > MAX_COMMON_NAME_LEN {
            out.push(Problem::new(
                "spec.commonName",
                format!("is longer than {MAX_COMMON_NAME_LEN} characters; shorten it"),
            ));
        }
    }
    if let Err(problems) = identity_timing(spec) {
        out.extend(problems);
    }
    if let Some(r) = &spec.pkcs12.password_secret_ref
        && r.name.trim().is_empty()
    {
        out.push(Problem::new(
            "spec.pkcs12.passwordSecretRef.name",
            "is empty",
        ));
    }
    out
}

/// A ClientIdentity's certificate lifetime and how long before expiry it is renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityTiming {
    pub validity: Duration,
    pub renew_before: Duration,
}

/// Resolves `validity` and `renewBefore` with their defaults.
pub fn identity_timing(spec: &ClientIdentitySpec) -> Result<IdentityTiming, Vec<Problem>> {
    let mut out = Vec::new();
    let validity = match spec.validity.as_deref().map(parse_duration).transpose() {
        Ok(v) => v.unwrap_or(DEFAULT_VALIDITY),
        Err(e) => {
            out.push(Problem::new("spec.validity", e));
            DEFAULT_VALIDITY
        }
    };
    if validity < MIN_VALIDITY {
        out.push(Problem::new(
            "spec.validity",
            "must be at least 1h; write e.g. 365d",
        ));
    }
    let renew_before = match spec.renew_before.as_deref().map(parse_duration).transpose() {
        Ok(Some(r)) => r,
        Ok(None) => (validity / 3).min(MAX_DEFAULT_RENEW_BEFORE),
        Err(e) => {
            out.push(Problem::new("spec.renewBefore", e));
            Duration::ZERO
        }
    };
    if spec.renew_before.is_some() && renew_before >= validity {
        out.push(Problem::new(
            "spec.renewBefore",
            format!(
                "must be shorter than the validity ({}); write e.g. {}",
                humantime::format_duration(validity),
                humantime::format_duration((validity / 3).min(MAX_DEFAULT_RENEW_BEFORE)),
            ),
        ));
    }
    if out.is_empty() {
        Ok(IdentityTiming {
            validity,
            renew_before,
        })
    } else {
        Err(out)
    }
}

/// The cookie lifetime, checked against [`COOKIE_TTL_RANGE`].
pub fn cookie_ttl(cookie: &CookieFallback) -> Result<Duration, String> {
    let ttl = parse_duration(&cookie.ttl)?;
    let (min, max) = COOKIE_TTL_RANGE;
    if ttl < min || ttl > max {
        return Err(format!(
            "{:?} is out of range; write between 1m and 7d, e.g. 1h",
            cookie.ttl
        ));
    }
    Ok(ttl)
}

fn host_problems(hosts: &[String], acme: bool, out: &mut Vec<Problem>) {
    if hosts.is_empty() {
        out.push(Problem::new(
            "spec.hosts",
            "is empty; list at least one name, e.g. [ha.example.org]",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, host) in hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if !seen.insert(host.to_ascii_lowercase()) {
            out.push(Problem::new(
                field,
                format!("{host:?} is listed twice; remove one"),
            ));
        } else if is_valid_host(host) {
            continue;
        } else if host.starts_with("*.") && acme {
            // tls-alpn-01 and http-01 validate one name at a time.
            out.push(Problem::new(
                field,
                "an ACME CA issues a wildcard only by DNS-01, which the gate does not do; list \
                 each name, or get the certificate with a DNS-01 tool (e.g. the DuckDNS or \
                 Let's Encrypt add-on) and use `serverCertificate.files`",
            ));
        } else if host.starts_with("*.") {
            out.push(Problem::new(
                field,
                "wildcards are not supported; list each name",
            ));
        } else if host.contains("://") || host.contains('/') {
            out.push(Problem::new(
                field,
                format!("{host:?} is a URL; write only the name"),
            ));
        } else if let Some((name, _)) = host.rsplit_once(':').filter(|(n, _)| is_valid_host(n)) {
            out.push(Problem::new(
                field,
                format!("write the name without a port: {name}"),
            ));
        } else {
            out.push(Problem::new(
                field,
                format!("{host:?} is not a DNS name or IP address; write e.g. ha.example.org"),
            ));
        }
    }
}

fn server_certificate_problems(sc: &ServerCertificate, out: &mut Vec<Problem>) {
    let sources = [
        sc.issue.is_some(),
        sc.secret_name.is_some(),
        sc.files.is_some(),
        sc.acme.is_some(),
    ];
    if sources.into_iter().filter(|set| *set).count() > 1 {
        out.push(Problem::new(
            "spec.serverCertificate",
            "set only one of `issue: {}`, `secretName`, `files: {certificate, key}` or \
             `acme: {email}`",
        ));
    }
    if let Some(acme) = &sc.acme {
        acme_problems(acme, out);
    }
    let blank = |s: &str| s.trim().is_empty();
    if sc.secret_name.as_deref().is_some_and(blank) {
        out.push(Problem::new(
            "spec.serverCertificate.secretName",
            "is empty",
        ));
    }
    if let Some(files) = &sc.files {
        for (field, path) in [("certificate", &files.certificate), ("key", &files.key)] {
            if blank(path) {
                out.push(Problem::new(
                    format!("spec.serverCertificate.files.{field}"),
                    "is empty; write the path of a PEM file, e.g. /ssl/fullchain.pem",
                ));
            }
        }
    }
}

fn acme_problems(acme: &AcmeSpec, out: &mut Vec<Problem>) {
    let email = acme.email.trim();
    let valid_email = email.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && domain.contains('.') && !email.contains(char::is_whitespace)
    });
    if !valid_email {
        out.push(Problem::new(
            "spec.serverCertificate.acme.email",
            format!("{email:?} is not an email address; write e.g. you@example.com"),
        ));
    }
    if let Some(url) = &acme.directory
        && !url.trim().starts_with("https://")
    {
        out.push(Problem::new(
            "spec.serverCertificate.acme.directory",
            format!(
                "{url:?} is not an https:// URL; write the ACME directory URL, e.g. {LETS_ENCRYPT}"
            ),
        ));
    }
    if acme.ca_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
        out.push(Problem::new(
            "spec.serverCertificate.acme.caFile",
            "is empty; write the path of a PEM file, or remove it to trust the public web's roots",
        ));
    }
}

fn upstream_problems(upstream: &Upstream, out: &mut Vec<Problem>) {
    match (&upstream.service, &upstream.url) {
        (Some(_), Some(_)) => out.push(Problem::new(
            "spec.upstream",
            "set either `service` or `url`, not both",
        )),
        (None, None) => out.push(Problem::new(
            "spec.upstream",
            "is empty; set `url: http://HOST:PORT` or `service: {name, port}`",
        )),
        (Some(service), None) => {
            if !is_dns_label(&service.name) {
                out.push(Problem::new(
                    "spec.upstream.service.name",
                    format!(
                        "{:?} is not a Service name (lowercase a-z, 0-9, -)",
                        service.name
                    ),
                ));
            }
            if service.port == 0 {
                out.push(Problem::new(
                    "spec.upstream.service.port",
                    "must be 1-65535",
                ));
            }
        }
        (None, Some(url)) => {
            if let Err(e) = upstream_authority(url) {
                out.push(Problem::new("spec.upstream.url", e));
            }
        }
    }
}

fn cookie_problems(cookie: &CookieFallback, out: &mut Vec<Problem>) {
    if let Err(e) = cookie_ttl(cookie) {
        out.push(Problem::new("spec.clientAuth.cookieFallback.ttl", e));
    }
    let field = "spec.clientAuth.cookieFallback.name";
    match cookie.name.strip_prefix("__Host-") {
        None => out.push(Problem::new(
            field,
            format!(
                "{:?} must start with __Host- (browsers then pin it to this host over HTTPS); \
                 write e.g. __Host-portcullis",
                cookie.name
            ),
        )),
        Some(rest) if rest.is_empty() || !rest.bytes().all(is_tchar) => out.push(Problem::new(
            field,
            format!(
                "{:?} is not a cookie name; use letters, digits and - _ .",
                cookie.name
            ),
        )),
        Some(_) => {}
    }
}

fn bypass_problems(prefix: &str, rule: &BypassRule, out: &mut Vec<Problem>) {
    if !rule.path_prefix.starts_with('/') {
        out.push(Problem::new(
            format!("{prefix}.pathPrefix"),
            format!(
                "{:?} must start with /, e.g. /api/webhook/",
                rule.path_prefix
            ),
        ));
    } else if !rule.path_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        out.push(Problem::new(
            format!("{prefix}.pathPrefix"),
            "contains spaces or non-ASCII characters; write the path as sent on the wire",
        ));
    }
    for (i, method) in rule.methods.iter().flatten().enumerate() {
        let field = format!("{prefix}.methods[{i}]");
        let upper = method.to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(is_tchar) {
            out.push(Problem::new(
                field,
                format!("{method:?} is not an HTTP method; write e.g. POST"),
            ));
        } else if upper != *method && is_standard_method(&upper) {
            out.push(Problem::new(
                field,
                format!("methods are case-sensitive; write {upper}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests;
