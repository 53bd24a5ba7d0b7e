//! One-time enrollment links: how a device without a certificate gets one, by scanning a
//! QR code and typing a one-time password.
//!
//! ```text
//!  portcullis enroll NAME ─▶ token (CSPRNG) ──────────────▶ URL + QR code (printed once)
//!      │  .p12 + .mobileconfig wrapped with a one-time password (printed once)
//!      └─▶ sealed under HKDF(token) ─▶ store: {identity, tokenHash, expiresAt, bundle}
//!
//!  device ─GET─▶  /.well-known/portcullis/enroll/<token>   a button; nothing looked up
//!         ─POST─▶ claim exactly once ─▶ claim cookie (this browser, ≤ 10 min) ─▶ downloads
//! ```
//! The gate answers everything under [`RESERVED`] itself, before admission: a device
//! without a certificate must reach it, and nothing under it is ever forwarded upstream or
//! logged with its path (the path holds the token).

mod bundle;
mod claim;
mod create;
mod handler;
mod limiter;
mod page;
mod password;
mod platform;
pub mod qr;
mod record;
mod store;
mod token;

pub use bundle::{Binding, Bundle, open as open_bundle};
pub use claim::{CLAIM_COOKIE, CLAIM_TTL};
pub use create::{Created, MAX_TTL, NewEnrollment, base_url, check_ttl, prepare};
pub use handler::{EnrollRequest, Enrollments, invalid, respond};
pub use limiter::Limiter;
pub use password::{PASSWORD_WORDS, one_time_password};
pub use platform::{Detected, Platform, detect};
pub use record::EnrollmentRecord;
pub use store::{EnrollmentStore, FileStore, SharedStore};
pub use token::{Token, same_hash};

/// Paths the gate keeps for itself on every route.
pub const RESERVED: &str = "/.well-known/portcullis/";
/// Where enrollment links live: `PREFIX` + token.
pub const PREFIX: &str = "/.well-known/portcullis/enroll/";

/// Whether the gate answers `path` itself instead of admitting and forwarding it.
pub fn is_reserved(path: &str) -> bool {
    path.starts_with(RESERVED)
}
