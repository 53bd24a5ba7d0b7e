//! One pending enrollment, as stored: a file in the standalone state directory, the spec of
//! an `Enrollment` custom resource in Kubernetes (camelCase, every field documented, no
//! secrets in clear).

use std::time::SystemTime;

use super::bundle::Binding;

/// An enrollment link's server side: who it enrolls, until when, and the sealed downloads.
/// The same struct is the spec of the `Enrollment` custom resource (defined with the other
/// kinds, in `resources`), so the standalone file and the Kubernetes object agree field
/// for field. In memory `identity` is the snapshot's key: `NAME` standalone,
/// `NAMESPACE/NAME` in Kubernetes (the object itself names the identity in its namespace).
pub use crate::resources::EnrollmentSpec as EnrollmentRecord;

impl EnrollmentRecord {
    /// `expires_at` as a time; `None` when it does not parse (treated as expired).
    pub fn expiry(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.expires_at).ok()
    }

    /// Whether the link may still be claimed at `now`.
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.expiry().is_some_and(|at| now < at)
    }

    /// What the bundle's ciphertext is bound to.
    pub fn binding(&self) -> Option<Binding<'_>> {
        Some(Binding {
            identity: &self.identity,
            expires_at: self.expiry()?,
        })
    }
}

/// `at` as the RFC 3339 text records carry (whole seconds, UTC).
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn camel_case_fields_and_expiry() {
        let at = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let record = EnrollmentRecord {
            identity: "alice".into(),
            route: Some("ha".into()),
            host: None,
            token_hash: "ab".repeat(32),
            expires_at: rfc3339(at),
            bundle: "AQ==".into(),
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["tokenHash"], "ab".repeat(32));
        assert_eq!(json["expiresAt"], "2030-03-17T17:46:40Z");
        assert!(json.get("host").is_none());
        assert_eq!(record.expiry(), Some(at));
        assert!(record.is_live(at - Duration::from_secs(1)));
        assert!(!record.is_live(at));
        let broken = EnrollmentRecord {
            expires_at: "soon".into(),
            ..record
        };
        assert!(!broken.is_live(UNIX_EPOCH));
        assert!(broken.binding().is_none());
    }
}
