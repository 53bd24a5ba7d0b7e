//! The data plane's observations, reported back to the cluster: once a minute, each
//! identity seen gets one status patch (`lastSeen`, and `seen`: when each of its serials was
//! last admitted), from every proxy replica, off the request path.
//!
//! ```text
//!  requests ─▶ Sightings ──drain, every 60 s──▶ GET status ─▶ merge ─▶ PATCH status (merge)
//! ```
//! A JSON merge patch of just these two fields, so the controller's server-side apply of
//! the rest of the status (it never sends them) and this writer never fight. The status
//! write does not rebuild any replica's snapshot (sources::cluster ignores status changes).
//! Rights: `get` on `clientidentities`, `patch` on `clientidentities/status`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::proxy::seen::{Sighting, Sightings, flush_every};
use crate::resources::{ClientIdentity, ClientIdentityStatus, SeenCertificate, from_time, to_time};
use crate::state::merge_sightings;

/// Reports what `sightings` collects every `every` (`proxy::seen::FLUSH_EVERY` in production) until
/// `shutdown`, and once more then.
pub async fn report(
    client: Client,
    sightings: Arc<Sightings>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let requeue = sightings.clone();
    flush_every(sightings, every, shutdown, move |batch| {
        let (client, requeue) = (client.clone(), requeue.clone());
        async move {
            for (identity, group) in by_identity(batch) {
                let Some((namespace, name)) = identity.split_once('/') else {
                    continue;
                };
                let api: Api<ClientIdentity> = Api::namespaced(client.clone(), namespace);
                match patch(&api, name, &group).await {
                    Ok(()) => {}
                    // Deleted meanwhile: nothing left to report on.
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(%identity, error = %e, "could not record lastSeen; retrying in a minute");
                        requeue.requeue(group);
                    }
                }
            }
        }
    })
    .await;
}

fn by_identity(batch: Vec<Sighting>) -> BTreeMap<String, Vec<Sighting>> {
    let mut groups: BTreeMap<String, Vec<Sighting>> = BTreeMap::new();
    for s in batch {
        groups.entry(s.identity.clone()).or_default().push(s);
    }
    groups
}

async fn patch(api: &Api<ClientIdentity>, name: &str, group: &[Sighting]) -> kube::Result<()> {
    let current = api.get(name).await?;
    let body = status_patch(current.status.as_ref(), group);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// The merge patch for `sightings` of one identity, given its current status.
pub fn status_patch(
    current: Option<&ClientIdentityStatus>,
    sightings: &[Sighting],
) -> serde_json::Value {
    let before: BTreeMap<String, SystemTime> = current
        .map(|s| &s.seen[..])
        .unwrap_or_default()
        .iter()
        .map(|s| (s.serial_number.clone(), from_time(&s.last_seen)))
        .collect();
    let new: Vec<(String, SystemTime)> = sightings
        .iter()
        .map(|s| (s.serial_hex.clone(), s.at))
        .collect();
    let after = merge_sightings(&before, &new);
    let last_seen = after.values().max().copied();
    let mut seen: Vec<SeenCertificate> = after
        .into_iter()
        .map(|(serial_number, at)| SeenCertificate {
            serial_number,
            last_seen: to_time(at),
        })
        .collect();
    seen.sort_by_key(|s| std::cmp::Reverse(s.last_seen.0));
    serde_json::json!({"status": {
        "lastSeen": last_seen.map(to_time),
        "seen": seen,
    }})
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn the_patch_keeps_the_newest_time_per_serial_and_sets_last_seen() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s);
        let current = ClientIdentityStatus {
            seen: vec![
                SeenCertificate {
                    serial_number: "0a".into(),
                    last_seen: to_time(at(100)),
                },
                SeenCertificate {
                    serial_number: "0b".into(),
                    last_seen: to_time(at(50)),
                },
            ],
            ..Default::default()
        };
        let sighting = |serial: &str, secs| Sighting {
            identity: "home/phone".into(),
            serial_hex: serial.into(),
            at: at(secs),
        };
        // An older sighting of 0a (another replica was later) and a newer one of 0b.
        let patch = status_patch(Some(&current), &[sighting("0a", 10), sighting("0b", 200)]);
        let expected = serde_json::json!({"status": {
            "lastSeen": to_time(at(200)),
            "seen": [
                {"serialNumber": "0b", "lastSeen": to_time(at(200))},
                {"serialNumber": "0a", "lastSeen": to_time(at(100))},
            ],
        }});
        assert_eq!(patch, expected);
        // Nothing known yet.
        let patch = status_patch(None, &[sighting("0c", 5)]);
        assert_eq!(patch["status"]["seen"][0]["serialNumber"], "0c");
    }
}
