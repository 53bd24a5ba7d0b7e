//! `portcullis enroll`: which identity, which address the device opens, and where the
//! link's record goes — a file in the standalone state directory, or an `Enrollment` object
//! in the identity's namespace. The link itself is made the same way in both modes.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ring::rand::SystemRandom;

use super::config::load_config;
use super::devices::{live_credentials, route_for};
use super::name_of;
use crate::enroll::{Created, FileStore, NewEnrollment, prepare};
use crate::pki::{self, IssuedCert};
use crate::resources::ClientIdentity;
use crate::resources::names;
use crate::state::StateDir;
use crate::{Error, Result};

/// What `portcullis enroll NAME --state-dir DIR` was asked.
pub struct EnrollStandalone<'a> {
    pub state: &'a StateDir,
    pub name: &'a str,
    pub ttl: Duration,
    /// `--url`: the gate's public base URL.
    pub url: Option<&'a str>,
    /// `--config`: where a missing `--url` is derived from, and where the identity must be.
    pub config: Option<&'a Path>,
    /// The port the gate listens on (for a derived URL).
    pub port: u16,
}

/// A link stored in the state directory, with what to print.
#[derive(Debug)]
pub struct Enrolled {
    pub created: Created,
    /// The route whose host the URL names, when derived from the config.
    pub route: Option<String>,
    /// Printed when the route's server certificate is not one a phone trusts.
    pub server_trust_note: Option<String>,
}

/// Creates the link, cancelling the identity's previous one.
pub fn enroll_standalone(req: &EnrollStandalone<'_>) -> Result<Enrolled> {
    let name = req.name;
    crate::enroll::check_ttl(req.ttl)?;
    let RouteHost {
        route,
        host,
        server_trust_note,
    } = match req.config {
        Some(config) => route_host(config, name)?,
        None => RouteHost::default(),
    };
    let base = match (req.url, &host) {
        (Some(url), _) => url.to_owned(),
        (None, Some(host)) => url_for(host, req.port),
        (None, None) => {
            return Err(Error::Config(format!(
                "cannot tell where the device reaches the gate: pass --url https://HOST:PORT \
                 (or --config FILE to use the first host of a route admitting {name})"
            )));
        }
    };
    let stored = live_credentials(req.state, name)?;
    let key_path = req.state.identity_dir(name).join("tls.key");
    let key_der = pki::key_der_from_pem(&stored.key_pem).map_err(|e| Error::Corrupt {
        path: key_path,
        reason: e.to_string(),
    })?;
    let ca_path = req.state.ca_cert_path();
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| Error::Io {
        action: "read",
        path: ca_path.clone(),
        source,
    })?;
    let ca_der = pki::first_cert_der(&ca_pem).map_err(|e| Error::Corrupt {
        path: ca_path,
        reason: e.to_string(),
    })?;
    let cert = IssuedCert {
        cert_pem: stored.cert_pem,
        key_pem: stored.key_pem,
        cert_der: stored.cert_der,
        key_der,
        info: stored.info,
    };
    let created = make_link(&Link {
        identity: name,
        name,
        cert: &cert,
        ca_der: &ca_der,
        base_url: &base,
        route: route.as_deref(),
        host: host.as_deref(),
        ttl: req.ttl,
    })?;
    let store = FileStore::new(req.state.enrollments_dir());
    store.create(&created.record)?;
    // Tidy up links nobody can use any more (the gate also does, on claims).
    store.sweep_sync(SystemTime::now(), crate::enroll::CLAIM_TTL)?;
    Ok(Enrolled {
        created,
        route,
        server_trust_note,
    })
}

/// What both modes make a link from.
struct Link<'a> {
    /// The snapshot's key for the identity: `NAME` standalone, `NAMESPACE/NAME` in
    /// Kubernetes (the `.mobileconfig` identifiers derive from it, as in `identity export`).
    identity: &'a str,
    /// The identity's name (the profile's display name when the certificate has no CN).
    name: &'a str,
    cert: &'a IssuedCert,
    ca_der: &'a [u8],
    base_url: &'a str,
    route: Option<&'a str>,
    host: Option<&'a str>,
    ttl: Duration,
}

/// The link's token, password and sealed downloads, the same in both modes.
fn make_link(l: &Link<'_>) -> Result<Created> {
    let display_name = l.cert.info.common_name.as_deref().unwrap_or(l.name);
    prepare(
        &NewEnrollment {
            identity: l.identity,
            display_name,
            cert: l.cert,
            ca_cert_der: l.ca_der,
            base_url: l.base_url,
            route: l.route,
            host: l.host,
            ttl: l.ttl,
            now: SystemTime::now(),
        },
        &SystemRandom::new(),
    )
}

/// What `portcullis enroll NAME --namespace NS` was asked.
pub struct EnrollCluster<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub ttl: Duration,
    /// `--url`: the gate's public base URL. Required: only the admin knows the port the
    /// router or load balancer forwards.
    pub url: &'a str,
}

/// Creates the link as an `Enrollment` in the identity's namespace, cancelling the
/// identity's previous ones. Reads the identity's `<name>-client` Secret (certificate, key,
/// CA) with the caller's credentials; the data plane never reads it.
pub async fn enroll_cluster(client: &kube::Client, req: &EnrollCluster<'_>) -> Result<Enrolled> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    let (ns, name) = (req.namespace, req.name);
    crate::enroll::check_ttl(req.ttl)?;
    let base = crate::enroll::base_url(req.url)?;
    let failed = |what: String| move |e: kube::Error| Error::Config(format!("{what}: {e}"));
    let identity = Api::<ClientIdentity>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(failed(format!("reading ClientIdentity {ns}/{name}")))?
        .ok_or_else(|| {
            Error::Config(format!(
                "no ClientIdentity {name} in namespace {ns} (try --namespace)"
            ))
        })?;
    if identity.spec.revoked {
        return Err(Error::Config(format!(
            "ClientIdentity {ns}/{name} is revoked (spec.revoked: true); a revoked identity \
             cannot be enrolled"
        )));
    }
    if identity.metadata.deletion_timestamp.is_some() {
        return Err(Error::Config(format!(
            "ClientIdentity {ns}/{name} is being deleted"
        )));
    }
    let secret_name = names::identity_secret_name(name);
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&secret_name)
        .await
        .map_err(failed(format!("reading Secret {ns}/{secret_name}")))?
        .ok_or_else(|| {
            Error::Config(format!(
                "Secret {ns}/{secret_name} does not exist yet: is the operator running? See \
                 `kubectl describe clientidentity {name} -n {ns}`"
            ))
        })?;
    let data = secret.data.unwrap_or_default();
    let read = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| {
                Error::Config(format!(
                    "Secret {ns}/{secret_name} has no usable {key}; the operator rewrites it \
                     (see `kubectl describe clientidentity {name} -n {ns}`)"
                ))
            })
    };
    let bad = |key: &str, e: Error| Error::Config(format!("Secret {ns}/{secret_name}: {key}: {e}"));
    let (cert_pem, key_pem, ca_pem) = (
        read(names::TLS_CRT)?,
        read(names::TLS_KEY)?,
        read(names::CA_CRT)?,
    );
    let cert_der = pki::first_cert_der(&cert_pem).map_err(|e| bad(names::TLS_CRT, e))?;
    let cert = IssuedCert {
        info: pki::inspect(&cert_der).map_err(|e| bad(names::TLS_CRT, e))?,
        key_der: pki::key_der_from_pem(&key_pem).map_err(|e| bad(names::TLS_KEY, e))?,
        cert_der,
        cert_pem,
        key_pem,
    };
    let ca_der = pki::first_cert_der(&ca_pem).map_err(|e| bad(names::CA_CRT, e))?;
    let host = base
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned));
    let key = format!("{ns}/{name}");
    let created = make_link(&Link {
        identity: &key,
        name,
        cert: &cert,
        ca_der: &ca_der,
        base_url: &base,
        route: None,
        host: host.as_deref(),
        ttl: req.ttl,
    })?;
    // The object names the identity as Kubernetes does: by name, in its own namespace.
    let mut record = created.record.clone();
    record.identity = name.to_owned();
    super::cluster_enroll::create_enrollment(client, &identity, &record).await?;
    let server_trust_note = served_by_own_ca(client, &base).await.then(|| {
        let host = host_of(&base).unwrap_or_default();
        server_trust_note(&host)
    });
    Ok(Enrolled {
        created,
        route: None,
        server_trust_note,
    })
}

/// Whether the ProtectedRoute serving `url`'s host presents a certificate minted by the
/// installation's CA (`serverCertificate.issue`). `false` when it cannot tell (no such
/// route, or no right to list routes).
async fn served_by_own_ca(client: &kube::Client, url: &str) -> bool {
    use crate::resources::ProtectedRoute;
    let Some(host) = host_of(url) else {
        return false;
    };
    let Ok(routes) = kube::Api::<ProtectedRoute>::all(client.clone())
        .list(&Default::default())
        .await
    else {
        return false;
    };
    routes
        .items
        .iter()
        .find(|r| r.spec.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)))
        .is_some_and(|r| r.spec.server_certificate.is_minted())
}

/// The host of an `https://HOST[:PORT]` URL.
fn host_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    uri.host()
        .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
}

/// The identity must be in the config and not revoked there; the first route admitting it
/// gives the host.
fn route_host(config: &Path, name: &str) -> Result<RouteHost> {
    let config = load_config(config).map_err(|errors| {
        Error::Config(format!(
            "{} has problems (run `portcullis check --config {}`):\n{errors}",
            config.display(),
            config.display()
        ))
    })?;
    let Some(identity) = config
        .identities
        .iter()
        .find(|ci| name_of(&ci.metadata) == name)
    else {
        return Err(Error::Config(format!(
            "{} defines no ClientIdentity named {name}; add one and let the gate issue its \
             certificate first",
            config.path.display()
        )));
    };
    if identity.spec.revoked {
        return Err(Error::Config(format!(
            "identity {name} is revoked in {} (revoked: true); a revoked identity cannot be \
             enrolled",
            config.path.display()
        )));
    }
    let Some(route) = route_for(&config, identity) else {
        return Err(Error::Config(format!(
            "no route in {} admits identity {name}: the link is served only on a route that \
             admits the device; check the routes' identitySelector",
            config.path.display()
        )));
    };
    let host = route.hosts.first().cloned();
    let own_ca = config
        .routes
        .iter()
        .find(|r| name_of(&r.metadata) == route.name)
        .is_some_and(|r| r.spec.server_certificate.is_minted());
    let note = own_ca.then(|| server_trust_note(host.as_deref().unwrap_or(&route.name)));
    Ok(RouteHost {
        route: Some(route.name),
        host,
        server_trust_note: note,
    })
}

/// Where the link is served, as far as the config tells.
#[derive(Default)]
struct RouteHost {
    route: Option<String>,
    host: Option<String>,
    server_trust_note: Option<String>,
}

/// What to tell the admin when the route's server certificate comes from the
/// installation's own CA: the phone will not trust the page, and the fix is never to make
/// it trust that CA (it also signs device certificates, and a trusted root could
/// intercept all of the phone's TLS).
fn server_trust_note(host: &str) -> String {
    format!(
        "{host} serves a certificate from this installation's own CA, which the phone does \
         not trust: it will warn before showing the page. Do not install the Portcullis CA \
         as a trusted root on the phone (it also signs device certificates). Give the route a \
         publicly trusted certificate instead (Let's Encrypt: standalone, \
         serverCertificate.acme with your email; in Kubernetes, serverCertificate.secretName \
         from cert-manager; or serverCertificate.files with your Let's Encrypt / DuckDNS \
         add-on's fullchain.pem and privkey.pem; see the README)."
    )
}

/// `https://host[:port]`, the port left out when it is 443.
fn url_for(host: &str, port: u16) -> String {
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_owned(),
    };
    match port {
        443 => format!("https://{host}"),
        port => format!("https://{host}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_urls() {
        assert_eq!(url_for("ha.example.com", 443), "https://ha.example.com");
        assert_eq!(
            url_for("ha.example.com", 8443),
            "https://ha.example.com:8443"
        );
        assert_eq!(url_for("::1", 8443), "https://[::1]:8443");
    }

    #[test]
    fn a_route_minted_by_the_installation_ca_gets_the_server_trust_note() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("c.yaml");
        std::fs::write(
            &config,
            "apiVersion: portcullis.dev/v1alpha1\nkind: ProtectedRoute\nmetadata: {name: ha}\n\
             spec: {hosts: [ha.example.com], upstream: {url: 'http://127.0.0.1:8123'}}\n---\n\
             apiVersion: portcullis.dev/v1alpha1\nkind: ClientIdentity\nmetadata: {name: phone}\n\
             spec: {}\n",
        )
        .unwrap();
        let found = route_host(&config, "phone").unwrap();
        assert_eq!(found.route.as_deref(), Some("ha"));
        assert_eq!(found.host.as_deref(), Some("ha.example.com"));
        let note = found
            .server_trust_note
            .expect("a note for serverCertificate.issue");
        assert!(
            note.starts_with("ha.example.com serves a certificate from this installation's own CA")
                && note.contains("Do not install the Portcullis CA"),
            "{note}"
        );
        assert_eq!(
            host_of("https://HA.example.com:8443").as_deref(),
            Some("ha.example.com")
        );
        assert_eq!(host_of("https://[::1]:8443").as_deref(), Some("::1"));
    }
}
