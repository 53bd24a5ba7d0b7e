//! Kubernetes `Time` (whole seconds, what the API server stores) and `SystemTime`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A `Time` for `t`, truncated to whole seconds, so a value read back compares equal to
/// the one computed.
pub fn to_time(t: SystemTime) -> Time {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    // Only years outside -9999..=9999 are out of range, which no certificate holds.
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The `SystemTime` of a `Time` (whole seconds).
pub fn from_time(t: &Time) -> SystemTime {
    let secs = t.0.as_second();
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_whole_seconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_800_000_000_750);
        assert_eq!(
            from_time(&to_time(t)),
            UNIX_EPOCH + Duration::from_secs(1_800_000_000)
        );
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(from_time(&to_time(before)), before);
    }
}
