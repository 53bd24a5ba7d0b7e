//! The ProtectedRoute reconciler: validate, make sure the server certificate exists
//! (minted into `<name>-server-tls`, or brought in `secretName`), check the upstream
//! Service, count the admitted identities, publish the status.
//!
//! ```text
//!  route_problems? ──▶ Ready=False InvalidSpec
//!  upstream.service: GET it ──▶ missing / no such port ──▶ Ready=False (retried)
//!  issue:      GET <name>-server-tls ──someone else's?──▶ Ready=False, SecretConflict
//!                                    ──renewal rules──▶ keep | mint (APPLY) ──▶ Issued/Renewed
//!  secretName: GET it ──▶ missing / unparsable / expired / wrong hosts ──▶ Ready=False
//!  status (only if changed) ──▶ requeue at the renewal time
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::runtime::controller::Action;
use kube::{Api, Resource};

use super::apply::{apply_secret, apply_status, name_ns};
use super::conditions::{READY, reason_of};
use super::context::Context;
use super::identity::{CONFLICT_RETRY, requeue_until};
use super::names::route_secret_name;
use super::ownership::{Ownership, SECRET_CONFLICT, conflict_message, ownership};
use super::route_plan::{
    Blocked, admitted, check_own_secret, check_service, normalized_hosts, read_tls, route_status,
    server_secret,
};
use super::{Error, Result};
use crate::pki::IssuedCert;
use crate::pki::renewal::{SERVER_RENEW_BEFORE, SERVER_VALIDITY, renew_at, server_reissue_reason};
use crate::resources::ProtectedRoute;
use crate::resources::validate::{cluster_route_problems, route_problems};

/// Re-check interval of a brought server certificate Secret (it is not watched).
pub const OWN_SECRET_RECHECK: Duration = Duration::from_secs(3600);
/// Retry interval while something the route names (Secret, Service) is missing.
pub const MISSING_RETRY: Duration = Duration::from_secs(60);
/// How long a reconcile waits for the ClientIdentity cache before counting anyway.
const IDENTITY_CACHE_WAIT: Duration = Duration::from_secs(10);

/// What [`serve`] found: the certificate served, an event to publish, when to look again.
struct Served {
    cert: IssuedCert,
    event: Option<(&'static str, String)>,
    requeue: Action,
}

/// Reconciles one ProtectedRoute; one of another release is not touched.
pub async fn reconcile(pr: Arc<ProtectedRoute>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.config.instance.claims(&pr.metadata) {
        return Ok(Action::await_change());
    }
    ctx.reconciling("ProtectedRoute");
    let (name, ns) = name_ns(&*pr, "ProtectedRoute")?;
    let hosts = normalized_hosts(&pr.spec.hosts);
    let mut problems = route_problems(&pr.spec);
    problems.extend(cluster_route_problems(&pr.spec));
    let (outcome, served) = if problems.is_empty() {
        match serve(&pr, &ctx, &ns, &name, &hosts).await? {
            Ok(served) => (
                Ok(ready_message(&pr, &ns, &hosts, &served.cert)),
                Some(served),
            ),
            Err(blocked) => (Err(blocked), None),
        }
    } else {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        (Err(("InvalidSpec", list.join("; "))), None)
    };

    // Counting before the cache has listed would publish a wrong number; wait a little.
    let _ = tokio::time::timeout(IDENTITY_CACHE_WAIT, ctx.identities.wait_until_ready()).await;
    let mine: Vec<_> = ctx
        .identities
        .state()
        .into_iter()
        .filter(|ci| ctx.config.instance.claims(&ci.metadata))
        .collect();
    let count = admitted(&mine, pr.spec.client_auth.identity_selector.as_ref());
    let status = route_status(&pr, &outcome, &hosts, count, &super::conditions::now());
    let api: Api<ProtectedRoute> = Api::namespaced(ctx.client.clone(), &ns);
    apply_status(&api, &*pr, &status, pr.status.as_ref()).await?;

    let reference = pr.object_ref(&());
    if let Some((reason, note)) = served.as_ref().and_then(|s| s.event.clone()) {
        ctx.event(&reference, false, reason, note).await;
    }
    let before = pr
        .status
        .as_ref()
        .and_then(|s| reason_of(&s.conditions, READY));
    if let Err((reason, message)) = &outcome
        && before != Some(*reason)
    {
        ctx.event(&reference, true, reason, message.clone()).await;
    }
    ctx.succeeded(&*pr);
    Ok(match (served, &outcome) {
        (Some(s), _) => s.requeue,
        (None, Err((reason, _))) if reason.ends_with("Missing") && !reason.starts_with("CA") => {
            Action::requeue(MISSING_RETRY)
        }
        (None, Err((SECRET_CONFLICT, _))) => Action::requeue(CONFLICT_RETRY),
        _ => Action::await_change(),
    })
}

/// Counts the failure and retries with per-object exponential backoff.
pub fn error_policy(pr: Arc<ProtectedRoute>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.failed(&*pr, error)
}

async fn serve(
    pr: &ProtectedRoute,
    ctx: &Context,
    ns: &str,
    name: &str,
    hosts: &[String],
) -> Result<Result<Served, Blocked>> {
    if let Some(svc) = &pr.spec.upstream.service {
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
        let service = services.get_opt(&svc.name).await?;
        if let Err(blocked) = check_service(ns, svc, service.as_ref()) {
            return Ok(Err(blocked));
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let now = SystemTime::now();
    let served = match &pr.spec.server_certificate.secret_name {
        Some(own) => {
            let secret = secrets.get_opt(own).await?;
            match check_own_secret(ns, own, secret.as_ref(), hosts, now) {
                Ok(cert) => Served {
                    cert,
                    event: None,
                    requeue: Action::requeue(OWN_SECRET_RECHECK),
                },
                Err(blocked) => return Ok(Err(blocked)),
            }
        }
        None => match issue(pr, ctx, ns, name, hosts, &secrets, now).await? {
            Ok(served) => served,
            Err(blocked) => return Ok(Err(blocked)),
        },
    };
    Ok(Ok(served))
}

/// Keeps or mints the route's `<name>-server-tls` certificate.
async fn issue(
    pr: &ProtectedRoute,
    ctx: &Context,
    ns: &str,
    name: &str,
    hosts: &[String],
    secrets: &Api<Secret>,
    now: SystemTime,
) -> Result<Result<Served, Blocked>> {
    let ca = match ctx.ca_state().ca() {
        Ok(ca) => ca.clone(),
        Err(blocked) => return Ok(Err(blocked)),
    };
    let secret_name = route_secret_name(name);
    let existing = secrets.get_opt(&secret_name).await?;
    if let Ownership::Foreign(why) = ownership(
        existing.as_ref(),
        pr.meta().uid.as_deref(),
        &ctx.config.instance.name,
    ) {
        let message = conflict_message(
            &format!("{ns}/{secret_name}"),
            &format!("ProtectedRoute {ns}/{name}"),
            &why,
        );
        return Ok(Err((SECRET_CONFLICT, message)));
    }
    let stored = existing.as_ref().map(read_tls);
    let reason = match &stored {
        None => Some("new route".to_owned()),
        Some(Err(why)) => Some(format!("its Secret is unusable ({why})")),
        Some(Ok(c)) => server_reissue_reason(&c.cert_der, &c.info, ca.cert_der(), hosts, now),
    };
    let (cert, event) = match (reason, stored) {
        (None, Some(Ok(cert))) => (cert, None),
        (reason, stored) => {
            let reason = reason.unwrap_or_default();
            let (ca, owned_hosts) = (ca.clone(), hosts.to_vec());
            let cert =
                tokio::task::spawn_blocking(move || ca.issue_server(&owned_hosts, SERVER_VALIDITY))
                    .await
                    .map_err(|e| Error::Pki(crate::Error::pki("certificate worker", e)))??;
            let kind = if stored.is_none() {
                "Issued"
            } else {
                "Renewed"
            };
            let note = format!(
                "server certificate serial {} for {} issued ({reason})",
                cert.info.serial_hex,
                hosts.join(", ")
            );
            (cert, Some((kind, note)))
        }
    };
    let desired = server_secret(pr, ns, &ctx.config.instance.name, &cert)?;
    apply_secret(secrets, &desired, existing.as_ref()).await?;
    let requeue = requeue_until(renew_at(cert.info.not_after, SERVER_RENEW_BEFORE), now);
    Ok(Ok(Served {
        cert,
        event,
        requeue,
    }))
}

fn ready_message(pr: &ProtectedRoute, ns: &str, hosts: &[String], cert: &IssuedCert) -> String {
    let upstream = match (&pr.spec.upstream.service, &pr.spec.upstream.url) {
        (Some(svc), _) => format!("Service {ns}/{}:{}", svc.name, svc.port),
        (None, Some(url)) => url.clone(),
        (None, None) => String::new(),
    };
    format!(
        "serving {} with certificate serial {} (valid until {}); upstream {upstream}",
        hosts.join(", "),
        cert.info.serial_hex,
        humantime::format_rfc3339_seconds(cert.info.not_after)
    )
}
