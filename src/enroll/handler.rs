//! The gate's side of a link: the landing page, the claim, the downloads.
//!
//! ```text
//!  GET  <prefix><token>                     landing page (nothing looked up, nothing used)
//!  POST <prefix><token>                     claim ─▶ 303 downloads + claim cookie | generic
//!  GET  <prefix><token>/downloads           the platform's page       (claim cookie)
//!  GET  <prefix><token>/certificate.p12     the .p12                  (claim cookie)
//!  GET  <prefix><token>/profile.mobileconfig the profile              (claim cookie)
//! ```
//! Everything else under the prefix, and every failure, is the one generic page.

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use super::PREFIX;
use super::bundle::{self, Bundle};
use super::claim::{self, CLAIM_COOKIE, CLAIM_TTL};
use super::limiter::Limiter;
use super::page;
use super::platform::{Detected, detect};
use super::record::EnrollmentRecord;
use super::store::SharedStore;
use super::token::{Token, same_hash};
use crate::admission::cookie_values;
use crate::pki::mobileconfig::MOBILECONFIG_CONTENT_TYPE;
use crate::snapshot::{Route, Snapshot};
use crate::telemetry::{EnrollmentLabels, FailureLabels, Metrics};

const DOWNLOADS: &str = "downloads";
const P12_FILE: &str = "certificate.p12";
const PROFILE_FILE: &str = "profile.mobileconfig";
/// The generic page's status, whatever made the link unusable.
const INVALID_STATUS: StatusCode = StatusCode::NOT_FOUND;
/// How often a claim attempt also clears out expired enrollments.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Every response: never cached, never a referrer, no scripts, no framing, no sniffing.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
frame-ancestors 'none'; base-uri 'none'";

/// A request under the reserved prefix, with what the gate knows about it.
pub struct EnrollRequest<'a> {
    pub method: &'a Method,
    /// The URI path (no query).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The real client (after PROXY protocol), for rate limiting and the log.
    pub client: IpAddr,
    /// The route serving the request's host.
    pub route: &'a Route,
    pub snapshot: &'a Snapshot,
    pub now: SystemTime,
    pub metrics: &'a Metrics,
}

impl EnrollRequest<'_> {
    fn detected(&self) -> Detected {
        let ua = self.headers.get(header::USER_AGENT);
        detect(ua.and_then(|v| v.to_str().ok()).unwrap_or(""))
    }

    fn refused(&self, reason: &'static str) {
        self.metrics
            .enrollment_refusals
            .get_or_create(&FailureLabels { reason })
            .inc();
        // The path carries the token: never logged, here or anywhere. A refusal is logged
        // at info only while the address is within its budget: a guesser's flood of 429s
        // must not flood the log too.
        if reason == "rate_limited" {
            tracing::debug!(route = %self.route.name, client = %self.client, reason, "enrollment link claim refused");
        } else {
            tracing::info!(
                audit = "enrollment_refused", route = %self.route.name, client = %self.client,
                reason, "enrollment link claim refused"
            );
        }
    }
}

/// What a path under the prefix names.
enum Target {
    Landing(Token),
    Downloads(Token),
    File(Token, File),
    Unknown,
}

#[derive(Clone, Copy)]
enum File {
    P12,
    Profile,
}

fn target(path: &str) -> Target {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Target::Unknown;
    };
    let (token, tail) = match rest.split_once('/') {
        Some((token, tail)) => (token, Some(tail)),
        None => (rest, None),
    };
    let Some(token) = Token::parse(token) else {
        return Target::Unknown;
    };
    match tail {
        None => Target::Landing(token),
        Some(DOWNLOADS) => Target::Downloads(token),
        Some(P12_FILE) => Target::File(token, File::P12),
        Some(PROFILE_FILE) => Target::File(token, File::Profile),
        Some(_) => Target::Unknown,
    }
}

/// The enrollment service a gate runs (shared by its workers).
#[derive(Debug)]
pub struct Enrollments {
    store: Option<SharedStore>,
    limiter: Limiter,
    last_sweep: Mutex<Option<Instant>>,
}

impl Enrollments {
    /// Serves links from `store`.
    pub fn new(store: SharedStore) -> Self {
        Self::with_limiter(Some(store), Limiter::default())
    }

    /// No store (a mode without enrollment links yet): every link gets the generic page.
    pub fn disabled() -> Self {
        Self::with_limiter(None, Limiter::default())
    }

    /// With a chosen rate limiter (tests).
    pub fn with_limiter(store: Option<SharedStore>, limiter: Limiter) -> Self {
        Enrollments {
            store,
            limiter,
            last_sweep: Mutex::new(None),
        }
    }

    /// Answers a request whose path is under [`PREFIX`] (or anywhere under the reserved
    /// `/.well-known/portcullis/`: what is not a link gets the generic page).
    pub async fn handle(&self, req: EnrollRequest<'_>) -> Response<Bytes> {
        let read = *req.method == Method::GET || *req.method == Method::HEAD;
        match (target(req.path), read, *req.method == Method::POST) {
            (Target::Landing(token), true, _) => {
                let action = format!("{PREFIX}{}", token.as_str());
                html(StatusCode::OK, page::landing(&action, req.detected()))
            }
            (Target::Landing(token), _, true) => self.claim(&req, &token).await,
            (Target::Downloads(token), true, _) => match self.claimed(&req, &token).await {
                Some((record, _)) => {
                    let base = format!("{PREFIX}{}/", token.as_str());
                    let (profile, p12) = (base.clone() + PROFILE_FILE, base + P12_FILE);
                    html(
                        StatusCode::OK,
                        page::downloads(&page::Downloads {
                            identity: &record.identity,
                            detected: req.detected(),
                            profile: &profile,
                            p12: &p12,
                        }),
                    )
                }
                None => invalid(),
            },
            (Target::File(token, file), true, _) => match self.claimed(&req, &token).await {
                Some((record, bundle)) => {
                    tracing::debug!(identity = %record.identity, client = %req.client, "enrollment download");
                    download(&record.identity, file, bundle)
                }
                None => invalid(),
            },
            _ => invalid(),
        }
    }

    /// POST: claims the link for this browser, exactly once.
    async fn claim(&self, req: &EnrollRequest<'_>, token: &Token) -> Response<Bytes> {
        let hash = token.hash_hex();
        let keys = req.snapshot.cookie_keys();
        let downloads = format!("{PREFIX}{}/{DOWNLOADS}", token.as_str());
        // The claiming browser posting again (a double tap, a reload) goes to its downloads.
        if has_claim(req.headers, keys, &hash, req.now) {
            return see_other(&downloads, None);
        }
        let now = Instant::now();
        if !self.limiter.allowed(req.client, now) {
            req.refused("rate_limited");
            return respond(
                StatusCode::TOO_MANY_REQUESTS,
                "text/html; charset=utf-8",
                page::too_many(),
            );
        }
        self.sweep_now_and_then(req.now, now);
        let won = match self.try_claim(req, token, &hash).await {
            Ok(won) => won,
            Err(e) => {
                tracing::warn!(error = %e, "enrollment store failed; the link was not used up");
                None
            }
        };
        let (Some(record), Some(key)) = (won, keys.first()) else {
            self.limiter.failed(req.client, now);
            req.refused("invalid");
            return invalid();
        };
        let platform = req.detected().platform;
        tracing::info!(
            audit = "enrolled", identity = %record.identity, route = %req.route.name,
            client = %req.client, platform = platform.label(), "enrollment link claimed"
        );
        req.metrics
            .enrollments
            .get_or_create(&EnrollmentLabels {
                identity: record.identity.clone(),
                platform: platform.label(),
            })
            .inc();
        let path = format!("{PREFIX}{}", token.as_str());
        let cookie = claim::issue(key, &hash, req.now + CLAIM_TTL)
            .map(|value| claim::set_cookie_header(&value, &path));
        see_other(&downloads, cookie)
    }

    /// The checks, then the store's one-winner claim. `Some` for the winner.
    async fn try_claim(
        &self,
        req: &EnrollRequest<'_>,
        token: &Token,
        hash: &str,
    ) -> crate::Result<Option<EnrollmentRecord>> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let Some(record) = store.pending(hash.to_owned()).await? else {
            return Ok(None);
        };
        let usable = same_hash(&record.token_hash, hash)
            && record.is_live(req.now)
            && admits(req.snapshot, req.route, &record.identity)
            // A record whose bundle does not open must not use the link up for nothing.
            && opens(&record, token).is_some();
        if !usable || !store.claim(record.clone()).await? {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// The claimed enrollment and its files, for a browser holding the claim cookie.
    async fn claimed(
        &self,
        req: &EnrollRequest<'_>,
        token: &Token,
    ) -> Option<(EnrollmentRecord, Bundle)> {
        let hash = token.hash_hex();
        if !has_claim(req.headers, req.snapshot.cookie_keys(), &hash, req.now) {
            return None;
        }
        let record = match self.store.as_ref()?.claimed(hash.clone()).await {
            Ok(record) => record?,
            Err(e) => {
                tracing::warn!(error = %e, "enrollment store failed");
                return None;
            }
        };
        // Revoked or moved out of the route since the claim: no more downloads.
        if !same_hash(&record.token_hash, &hash)
            || !admits(req.snapshot, req.route, &record.identity)
        {
            return None;
        }
        let bundle = opens(&record, token)?;
        Some((record, bundle))
    }

    /// Clears out expired enrollments at most once a minute, off the request.
    fn sweep_now_and_then(&self, now: SystemTime, instant: Instant) {
        let Some(store) = self.store.clone() else {
            return;
        };
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| instant.saturating_duration_since(at) < SWEEP_EVERY) {
                return;
            }
            *last = Some(instant);
        }
        tokio::spawn(async move {
            if let Err(e) = store.sweep(now, CLAIM_TTL).await {
                tracing::warn!(error = %e, "cannot clear out expired enrollments");
            }
        });
    }
}

fn opens(record: &EnrollmentRecord, token: &Token) -> Option<Bundle> {
    bundle::open(&record.bundle, token, &record.binding()?)
}

/// Whether `route` admits any live certificate of `identity`: a link works only on a host
/// the enrolled device may then use, and not at all once the identity is revoked.
fn admits(snapshot: &Snapshot, route: &Route, identity: &str) -> bool {
    snapshot.live_of(identity).any(|cert| route.admits(cert))
}

fn has_claim(headers: &HeaderMap, keys: &[[u8; 32]], hash: &str, now: SystemTime) -> bool {
    cookie_values(headers, CLAIM_COOKIE)
        .iter()
        .any(|v| claim::verify(keys, v, hash, now))
}

/// The generic page for every unusable link.
pub fn invalid() -> Response<Bytes> {
    html(INVALID_STATUS, page::invalid())
}

fn html(status: StatusCode, body: String) -> Response<Bytes> {
    respond(status, "text/html; charset=utf-8", body)
}

fn see_other(location: &str, cookie: Option<String>) -> Response<Bytes> {
    let mut resp = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    let h = resp.headers_mut();
    if let Ok(location) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, location);
    }
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, cookie);
    }
    resp
}

fn download(identity: &str, file: File, bundle: Bundle) -> Response<Bytes> {
    let (content_type, ext, bytes) = match file {
        File::P12 => ("application/x-pkcs12", "p12", bundle.p12),
        File::Profile => (
            MOBILECONFIG_CONTENT_TYPE,
            "mobileconfig",
            bundle.mobileconfig,
        ),
    };
    let mut resp = respond(StatusCode::OK, content_type, bytes);
    // Identity names are DNS labels (or namespace/name): safe in a quoted file name once
    // the slash is gone.
    let name: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.{ext}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// A response with the headers every enrollment response carries.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Bytes> {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}
