//! The ClientIdentity reconciler: the `<name>-client` Secret, the status, the CRL.
//!
//! ```text
//!  finalizer(portcullis.dev/crl)
//!   ├─ Apply:   <name>-client someone else's? ──▶ Ready=False, SecretConflict (never written)
//!   │           revoked? ──▶ serial onto the CRL, Ready=False/Revoked=True (Secret kept)
//!   │           invalid / no CA / no password ──▶ Ready=False with what to do
//!   │           else plan: keep | re-export .p12 | issue (old serial onto the CRL)
//!   │           ──▶ status (only if changed) ──▶ requeue at the renewal time
//!   └─ Cleanup: serial onto the CRL; the Secret goes with its owner (GC)
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};

use super::apply::{apply_secret, apply_status, name_ns};
use super::conditions::{READY, reason_of};
use super::context::Context;
use super::identity_plan::{
    IdentityFiles, Plan, Stored, Want, identity_secret, password_for, password_from_secret, plan,
    read_stored,
};
use super::identity_status::{Facts, Outcome, comparable, status};
use super::names::{CRL_FINALIZER, identity_secret_name};
use super::ownership::{Ownership, SECRET_CONFLICT, conflict_message, ownership};
use super::{Error, Result};
use crate::pki::previous::{parse_previous, supersede};
use crate::pki::renewal::{ClientWant, issued_by, renew_at};
use crate::pki::{Ca, IssuedCert, RevokedSerial, export_pkcs12};
use crate::resources::ClientIdentity;
use crate::resources::validate::{
    IdentityTiming, MAX_DEFAULT_RENEW_BEFORE, identity_problems, identity_timing,
};

/// Longest wait before a ready identity is looked at again (the renewal time may be
/// months away; a periodic look also catches missed watch events).
pub const MAX_REQUEUE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Retry interval while a password Secret is missing (it is not watched).
pub const PASSWORD_RETRY: Duration = Duration::from_secs(60);
/// Retry interval while someone else's Secret holds the name (it is not watched: it has
/// no owner reference to us), so deleting it lets the identity be minted soon.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(10);

/// Reconciles one ClientIdentity (wrapped in the CRL finalizer). One of another release
/// is not touched at all: no finalizer, no status, no Secret.
pub async fn reconcile(ci: Arc<ClientIdentity>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.config.instance.claims(&ci.metadata) {
        return Ok(Action::await_change());
    }
    ctx.reconciling("ClientIdentity");
    let (_, ns) = name_ns(&*ci, "ClientIdentity")?;
    let api: Api<ClientIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    let action = finalizer(&api, CRL_FINALIZER, ci.clone(), |event| async {
        match event {
            Finalizer::Apply(ci) => apply(ci, &ctx).await,
            Finalizer::Cleanup(ci) => cleanup(ci, &ctx).await,
        }
    })
    .await?;
    ctx.succeeded(&*ci);
    Ok(action)
}

/// Counts the failure and retries with per-object exponential backoff.
pub fn error_policy(ci: Arc<ClientIdentity>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.failed(&*ci, error)
}

/// What the Secret ended up holding after [`ensure`].
struct Ensured {
    cert: IssuedCert,
    /// `previous.crt` as written.
    previous: String,
    /// `Issued` / `Renewed` and a note, when a new certificate was minted.
    event: Option<(&'static str, String)>,
}

async fn apply(ci: Arc<ClientIdentity>, ctx: &Context) -> Result<Action> {
    let (name, ns) = name_ns(&*ci, "ClientIdentity")?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = identity_secret_name(&name);
    let found = secrets.get_opt(&secret_name).await?;
    // Someone else's Secret is neither read (its serials must not reach our CRL) nor written.
    let conflict = match ownership(
        found.as_ref(),
        ci.meta().uid.as_deref(),
        &ctx.config.instance.name,
    ) {
        Ownership::Foreign(why) => Some(conflict_message(
            &format!("{ns}/{secret_name}"),
            &format!("ClientIdentity {ns}/{name}"),
            &why,
        )),
        Ownership::Missing | Ownership::Owned => None,
    };
    let existing = found.filter(|_| conflict.is_none());
    let stored = existing.as_ref().map(read_stored);
    let timing = identity_timing(&ci.spec).ok();
    let now = SystemTime::now();

    let problems = identity_problems(&ci.spec);
    let (outcome, ensured) = if ci.spec.revoked {
        revoke(&ci, ctx, stored.as_ref().and_then(|s| s.as_ref().ok())).await?;
        (Outcome::Revoked, None)
    } else if let Some(message) = conflict {
        (Outcome::Blocked(SECRET_CONFLICT, message), None)
    } else if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        (Outcome::Blocked("InvalidSpec", list.join("; ")), None)
    } else {
        match ensure(
            &ci,
            ctx,
            &ns,
            &secrets,
            existing.as_ref(),
            stored.as_ref(),
            timing,
            now,
        )
        .await?
        {
            Ok(e) => (Outcome::Ready, Some(e)),
            Err((reason, message)) => (Outcome::Blocked(reason, message), None),
        }
    };

    let stored_cert = stored
        .as_ref()
        .and_then(|s| s.as_ref().ok())
        .map(|s| &s.cert);
    let cert = ensured.as_ref().map(|e| &e.cert).or(stored_cert);
    let renew_before = timing.map_or(MAX_DEFAULT_RENEW_BEFORE, |t| t.renew_before);
    let previous_pem = match &ensured {
        Some(e) => e.previous.as_str(),
        None => stored
            .as_ref()
            .and_then(|s| s.as_ref().ok())
            .map_or("", |s| s.previous.as_str()),
    };
    let previous: Vec<_> = parse_previous(previous_pem)
        .into_iter()
        .map(|p| p.info)
        .filter(|p| now <= p.not_after)
        .collect();
    let facts = Facts {
        cert: cert.map(|c| &c.info),
        secret: (ensured.is_some() || existing.is_some()).then(|| secret_name.clone()),
        namespace: &ns,
        renew_before,
        previous: &previous,
    };
    let new_status = status(&ci, &outcome, &facts, now, &super::conditions::now());
    let api: Api<ClientIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    apply_status(
        &api,
        &*ci,
        &new_status,
        comparable(ci.status.as_ref()).as_ref(),
    )
    .await?;

    let reference = ci.object_ref(&());
    if let Some((reason, note)) = ensured.as_ref().and_then(|e| e.event.clone()) {
        ctx.event(&reference, false, reason, note).await;
    }
    let before = ci
        .status
        .as_ref()
        .and_then(|s| reason_of(&s.conditions, READY));
    if before != Some(outcome.ready_reason()) {
        match &outcome {
            Outcome::Ready => {}
            Outcome::Revoked => {
                let serial = facts
                    .cert
                    .map_or("(none issued)".to_owned(), |c| c.serial_hex.clone());
                ctx.event(
                    &reference,
                    false,
                    "Revoked",
                    format!("revoked; serial {serial} is on the CRL"),
                )
                .await;
            }
            Outcome::Blocked(reason, message) => {
                ctx.event(&reference, true, reason, message.clone()).await
            }
        }
    }
    Ok(match (&outcome, cert) {
        (Outcome::Ready, Some(c)) => {
            // Also when a superseded certificate runs out, so status drops it.
            let next = previous
                .iter()
                .map(|p| p.not_after + Duration::from_secs(1))
                .chain([renew_at(c.info.not_after, renew_before)])
                .min()
                .unwrap_or(now);
            requeue_until(next, now)
        }
        (Outcome::Blocked(r, _), _) if r.starts_with("PasswordSecret") => {
            Action::requeue(PASSWORD_RETRY)
        }
        (Outcome::Blocked(SECRET_CONFLICT, _), _) => Action::requeue(CONFLICT_RETRY),
        _ => Action::await_change(),
    })
}

/// Requeue at `at` (at least a second from now, at most [`MAX_REQUEUE`]).
pub fn requeue_until(at: SystemTime, now: SystemTime) -> Action {
    let wait = at.duration_since(now).unwrap_or_default();
    Action::requeue(wait.clamp(Duration::from_secs(1), MAX_REQUEUE))
}

/// Makes the Secret hold a current certificate and `.p12`. `Err` inside: why it cannot
/// (condition reason and message).
#[allow(clippy::too_many_arguments)]
async fn ensure(
    ci: &ClientIdentity,
    ctx: &Context,
    ns: &str,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    stored: Option<&Result<Stored, String>>,
    timing: Option<IdentityTiming>,
    now: SystemTime,
) -> Result<Result<Ensured, (&'static str, String)>> {
    let ca = match ctx.ca_state().ca() {
        Ok(ca) => ca.clone(),
        Err(blocked) => return Ok(Err(blocked)),
    };
    let password = match &ci.spec.pkcs12.password_secret_ref {
        Some(r) => {
            let secret = secrets.get_opt(&r.name).await?;
            match password_from_secret(ns, r, secret.as_ref()) {
                Ok(p) => Some(p),
                Err(blocked) => return Ok(Err(blocked)),
            }
        }
        None => None,
    };
    let name = ci.name_any();
    let Some(timing) = timing else {
        return Ok(Err((
            "InvalidSpec",
            "spec.validity or spec.renewBefore is invalid".into(),
        )));
    };
    let want = Want {
        client: ClientWant {
            common_name: ci.spec.common_name.as_deref().unwrap_or(&name),
            key_algorithm: ci.spec.key_algorithm,
            timing,
        },
        profile: ci.spec.pkcs12.profile,
        password: password.as_deref(),
    };
    let stored_ok = stored.and_then(|s| s.as_ref().ok());
    let revoked = match stored_ok {
        Some(s) => ctx.crl.is_revoked(&s.cert.info.serial_hex).await?,
        None => false,
    };
    let decision = plan(stored, &want, &ca, revoked, now);
    let password = password_for(&want, stored_ok);
    // A revoked current certificate was revoked with every superseded one: none carries over.
    let mut previous = match stored_ok {
        Some(s) if !revoked => s.previous.clone(),
        _ => String::new(),
    };
    let (cert, p12, event) = match (decision, stored_ok) {
        (Plan::Keep, Some(s)) => {
            let p12 = s.p12.clone().unwrap_or_default();
            (s.cert.clone(), p12, None)
        }
        (Plan::Reexport(reason), Some(s)) => {
            tracing::info!(identity = %format!("{ns}/{name}"), "re-exporting keystore.p12: {reason}");
            let p12 = export(
                ca.clone(),
                s.cert.clone(),
                want.client.common_name,
                &password,
                want.profile,
            )
            .await?;
            (s.cert.clone(), p12, None)
        }
        (plan, _) => {
            // Keep and Re-export always come with a readable Secret; anything else issues.
            let (reason, first) = match plan {
                Plan::Issue { reason, first } => (reason, first),
                _ => ("its Secret could not be read".to_owned(), false),
            };
            let cert = issue(ca.clone(), &want).await?;
            let p12 = export(
                ca.clone(),
                cert.clone(),
                want.client.common_name,
                &password,
                want.profile,
            )
            .await?;
            let kind = if first { "Issued" } else { "Renewed" };
            let mut note = format!(
                "certificate serial {} issued ({reason})",
                cert.info.serial_hex
            );
            // The device still holds the certificate this one replaces: it stays admitted
            // (previous.crt) until its notAfter, never revoked by a renewal.
            if let Some(old) =
                stored_ok.filter(|s| !revoked && issued_by(&s.cert.cert_der, ca.cert_der()))
            {
                previous = supersede(Some(&old.previous), &old.cert.cert_pem, now);
                note.push_str(&format!(
                    "; serial {} stays admitted until {} or until revoked",
                    old.cert.info.serial_hex,
                    humantime::format_rfc3339_seconds(old.cert.info.not_after)
                ));
            }
            (cert, p12, Some((kind, note)))
        }
    };
    let files = IdentityFiles {
        cert: &cert,
        ca_pem: ca.cert_pem(),
        p12: &p12,
        password: &password,
        issued_for: &want.issued_for(),
        previous: &previous,
    };
    let desired = identity_secret(ci, ns, &ctx.config.instance.name, &files)?;
    apply_secret(secrets, &desired, existing).await?;
    Ok(Ok(Ensured {
        cert,
        previous,
        event,
    }))
}

/// Mints a certificate off the async threads (RSA key generation takes seconds).
async fn issue(ca: Arc<Ca>, want: &Want<'_>) -> Result<IssuedCert> {
    let (cn, alg, validity) = (
        want.client.common_name.to_owned(),
        want.client.key_algorithm,
        want.client.timing.validity,
    );
    blocking(move || ca.issue_client(&cn, alg, validity)).await
}

async fn export(
    ca: Arc<Ca>,
    cert: IssuedCert,
    name: &str,
    password: &str,
    profile: crate::resources::Pkcs12Profile,
) -> Result<Vec<u8>> {
    let (name, password) = (name.to_owned(), password.to_owned());
    blocking(move || export_pkcs12(&cert, ca.cert_der(), &name, &password, profile)).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Error::Pki),
        Err(e) => Err(Error::Pki(crate::Error::pki("certificate worker", e))),
    }
}

/// Puts every serial of the identity (its Secret's current and superseded certificates,
/// its status's) on the CRL, once.
async fn revoke(ci: &ClientIdentity, ctx: &Context, stored: Option<&Stored>) -> Result<()> {
    let mut serials: Vec<String> = stored
        .map(|s| s.cert.info.serial_hex.clone())
        .into_iter()
        .collect();
    let previous = stored
        .map(|s| parse_previous(&s.previous))
        .unwrap_or_default();
    serials.extend(previous.into_iter().map(|p| p.info.serial_hex));
    serials.extend(ci.status.as_ref().and_then(|s| s.serial_number.clone()));
    let mut add = Vec::new();
    for serial in serials {
        if !ctx.crl.is_revoked(&serial).await? {
            add.push(RevokedSerial {
                serial_hex: serial,
                revoked_at: SystemTime::now(),
            });
        }
    }
    if !add.is_empty() {
        let ca = ctx.ca_state().ca().ok().cloned();
        ctx.crl.publish(ca.as_deref(), &add).await?;
    }
    Ok(())
}

async fn cleanup(ci: Arc<ClientIdentity>, ctx: &Context) -> Result<Action> {
    let (name, ns) = name_ns(&*ci, "ClientIdentity")?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets.get_opt(&identity_secret_name(&name)).await?;
    let owned = ownership(
        existing.as_ref(),
        ci.meta().uid.as_deref(),
        &ctx.config.instance.name,
    ) == Ownership::Owned;
    let stored = existing
        .as_ref()
        .filter(|_| owned)
        .and_then(|s| read_stored(s).ok());
    revoke(&ci, ctx, stored.as_ref()).await?;
    tracing::info!(identity = %format!("{ns}/{name}"), "deleted: its serials are on the CRL");
    Ok(Action::await_change())
}
