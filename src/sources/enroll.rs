//! `portcullis enroll` for a standalone installation: which identity, which address the
//! device opens, and the link's record in the state directory.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ring::rand::SystemRandom;

use super::config::load_config;
use super::devices::{live_credentials, route_for};
use super::name_of;
use crate::enroll::{Created, FileStore, NewEnrollment, prepare};
use crate::pki::{self, IssuedCert};
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
}

/// Creates the link, cancelling the identity's previous one.
pub fn enroll_standalone(req: &EnrollStandalone<'_>) -> Result<Enrolled> {
    let name = req.name;
    crate::enroll::check_ttl(req.ttl)?;
    let (route, host) = match req.config {
        Some(config) => route_host(config, name)?,
        None => (None, None),
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
    let display_name = stored
        .info
        .common_name
        .clone()
        .unwrap_or_else(|| name.to_owned());
    let cert = IssuedCert {
        cert_pem: stored.cert_pem,
        key_pem: stored.key_pem,
        cert_der: stored.cert_der,
        key_der,
        info: stored.info,
    };
    let created = prepare(
        &NewEnrollment {
            identity: name,
            display_name: &display_name,
            cert: &cert,
            ca_cert_der: &ca_der,
            base_url: &base,
            route: route.as_deref(),
            host: host.as_deref(),
            ttl: req.ttl,
            now: SystemTime::now(),
        },
        &SystemRandom::new(),
    )?;
    let store = FileStore::new(req.state.enrollments_dir());
    store.create(&created.record)?;
    // Tidy up links nobody can use any more (the gate also does, on claims).
    store.sweep_sync(SystemTime::now(), crate::enroll::CLAIM_TTL)?;
    Ok(Enrolled { created, route })
}

/// The identity must be in the config and not revoked there; the first route admitting it
/// gives the host.
fn route_host(config: &Path, name: &str) -> Result<(Option<String>, Option<String>)> {
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
    Ok((Some(route.name), host))
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
}
