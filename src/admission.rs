//! The data plane's one decision, as a pure function of (snapshot, connection, request).
//!
//! ```text
//!  verified live certificate, route admits it ─▶ Certificate (+ Set-Cookie if none valid)
//!  else valid cookie for this host, identity live and admitted ─▶ Cookie
//!  else canonical path under a bypass prefix (and method allowed) ─▶ Bypass
//!  else ─▶ Deny(reason)
//! ```
//! Nothing here does I/O or reads a clock: `now` is an argument, so every branch is a unit
//! test.

mod cookie;

use std::sync::Arc;
use std::time::SystemTime;

use http::Method;

pub use cookie::{CookieError, CookieMint, cookie_values, issue_cookie, verify_cookie};

use crate::snapshot::{Bypass, Fingerprint, LiveCert, Route, Snapshot};

/// What admission needs to know about one request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    /// The raw path, without the query, exactly as it will be forwarded.
    pub path: &'a str,
    /// Lowercase host without port, as routed.
    pub host: &'a str,
    /// Fingerprint of the client certificate verified in the TLS handshake.
    pub client_cert: Option<&'a Fingerprint>,
    /// Values of the route's cookie found in the request.
    pub cookies: &'a [&'a str],
    pub now: SystemTime,
}

/// Why a request was turned away; also the `reason` label of the denied metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No certificate, no cookie, not a bypass path.
    NoCredentials,
    /// A certificate whose identity is no longer live (a resumed TLS session, a revoke
    /// while the connection was open).
    CertificateNotLive,
    /// A live identity's certificate past its notAfter (a connection or cookie that
    /// outlived it).
    CertificateExpired,
    /// A live identity this route's selector does not admit.
    NotAdmitted,
    /// A cookie that failed its MAC, was malformed, or was minted for another host.
    CookieInvalid,
    CookieExpired,
    /// A well-formed cookie of an identity since revoked or deleted.
    CookieIdentityGone,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoCredentials => "no_credentials",
            DenyReason::CertificateNotLive => "certificate_not_live",
            DenyReason::CertificateExpired => "certificate_expired",
            DenyReason::NotAdmitted => "not_admitted",
            DenyReason::CookieInvalid => "cookie_invalid",
            DenyReason::CookieExpired => "cookie_expired",
            DenyReason::CookieIdentityGone => "cookie_identity_gone",
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admitted by its client certificate; `cookie_due` when the route has a cookie
    /// fallback and the request carried no fresh cookie, so an ordinary (non-101) response
    /// should set one.
    Certificate {
        cert: Arc<LiveCert>,
        cookie_due: bool,
    },
    /// Admitted by a cookie earned with a certificate earlier.
    Cookie {
        cert: Arc<LiveCert>,
    },
    /// A bypass path: forwarded anonymously.
    Bypass,
    Deny(DenyReason),
}

impl Decision {
    /// The identity admitted, if any.
    pub fn identity(&self) -> Option<&Arc<LiveCert>> {
        match self {
            Decision::Certificate { cert, .. } | Decision::Cookie { cert } => Some(cert),
            Decision::Bypass | Decision::Deny(_) => None,
        }
    }

    /// The admission path, for metrics and logs.
    pub fn path_label(&self) -> &'static str {
        match self {
            Decision::Certificate { .. } => "certificate",
            Decision::Cookie { .. } => "cookie",
            Decision::Bypass => "bypass",
            Decision::Deny(_) => "denied",
        }
    }
}

/// Decides one request on `route`.
pub fn admit(snapshot: &Snapshot, route: &Route, req: &Request<'_>) -> Decision {
    let mut reason = DenyReason::NoCredentials;

    if let Some(fp) = req.client_cert {
        match snapshot.live_by_fingerprint(fp) {
            Some(cert) if !cert.valid_at(req.now) => reason = DenyReason::CertificateExpired,
            Some(cert) if route.admits(cert) => {
                return Decision::Certificate {
                    cookie_due: cookie_due(snapshot, route, req, cert),
                    cert: cert.clone(),
                };
            }
            Some(_) => reason = DenyReason::NotAdmitted,
            None => reason = DenyReason::CertificateNotLive,
        }
    }

    if route.cookie.is_some() {
        let mut cookie_reason = None;
        for value in req.cookies {
            match verify_cookie(snapshot.cookie_keys(), value, req.host, req.now) {
                Ok(serial) => match snapshot.live_by_serial(&serial) {
                    // A cookie never outlives the certificate that earned it.
                    Some(cert) if !cert.valid_at(req.now) => {
                        cookie_reason = Some(DenyReason::CookieExpired);
                    }
                    Some(cert) if route.admits(cert) => {
                        return Decision::Cookie { cert: cert.clone() };
                    }
                    Some(_) => cookie_reason = Some(DenyReason::NotAdmitted),
                    None => cookie_reason = Some(DenyReason::CookieIdentityGone),
                },
                Err(CookieError::Expired) => {
                    cookie_reason.get_or_insert(DenyReason::CookieExpired);
                }
                Err(CookieError::Invalid) => {
                    cookie_reason.get_or_insert(DenyReason::CookieInvalid);
                }
            }
        }
        // A certificate problem is the more useful thing to report.
        if reason == DenyReason::NoCredentials {
            reason = cookie_reason.unwrap_or(reason);
        }
    }

    if route
        .bypass
        .iter()
        .any(|b| bypass_matches(b, req.method, req.path))
    {
        return Decision::Bypass;
    }
    Decision::Deny(reason)
}

/// Whether the response should set a cookie: the route has the fallback and the request
/// carries no valid cookie for this identity with more than half its lifetime left (or
/// one that already lasts as long as the certificate may).
fn cookie_due(snapshot: &Snapshot, route: &Route, req: &Request<'_>, cert: &LiveCert) -> bool {
    let Some(policy) = route.cookie.as_ref() else {
        return false;
    };
    let refresh_after = req.now + policy.ttl / 2;
    let longest = cookie::capped_expiry(req.now + policy.ttl, cert.not_after);
    !req.cookies.iter().any(|value| {
        cookie::verify_cookie_until(snapshot.cookie_keys(), value, req.host, req.now).is_ok_and(
            |(serial, expires)| {
                serial == cert.serial_hex && (expires > refresh_after || expires >= longest)
            },
        )
    })
}

/// Whether `path` falls under the bypass rule. Only canonical paths qualify: a path with
/// dot segments, empty segments, backslashes or percent-encoded separators could be
/// read differently by the upstream (`/api/webhook/..%2fconfig`), so it gets no bypass —
/// it may still be admitted by certificate or cookie.
pub fn bypass_matches(rule: &Bypass, method: &Method, path: &str) -> bool {
    if !rule.methods.is_empty() && !rule.methods.contains(method) {
        return false;
    }
    path.starts_with(&rule.path_prefix) && is_canonical_path(path)
}

fn is_canonical_path(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') {
        return false;
    }
    // Any escape of '.', '/', '\' or '%' itself is a path trick, never a real webhook id.
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%25", "%00"]
        .iter()
        .any(|esc| lower.contains(esc))
    {
        return false;
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        // Servlet containers read `..;x` (a path parameter) as `..`.
        let name = segment.split(';').next().unwrap_or(segment);
        if name == "." || name == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    path.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
