//! A ProtectedRoute resolved for the snapshot, with the server certificate it presents:
//! minted by the CA (renewed ahead of expiry, re-issued when the hosts change) or brought
//! by the user.

use std::collections::BTreeSet;
use std::time::SystemTime;

use http::Method;
use kube::core::Selector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::certs::{self, normalize_host};
use super::config::Config;
use super::external::{self, OwnCert};
use super::name_of;
use super::reconcile::{Ctx, SERVER_RENEW_BEFORE, SERVER_VALIDITY};
use crate::resources::validate::{cookie_ttl, upstream_authority};
use crate::resources::{ProtectedRoute, ProtectedRouteSpec};
use crate::snapshot::{Bypass, CookiePolicy, HeaderPattern, HeaderPolicy, Route, RouteSource};
use crate::state::StoredCert;
use crate::{Error, Result};

impl Ctx<'_> {
    /// The route with its certificate chain and key; `None` for an ACME route still
    /// waiting for its first certificate (not served; the others are).
    pub(super) fn route_source(
        &mut self,
        config: &Config,
        pr: &ProtectedRoute,
    ) -> Result<Option<RouteSource>> {
        let name = name_of(&pr.metadata);
        let route = resolve(name, &pr.spec)?;
        let own = match &pr.spec.server_certificate.acme {
            Some(acme) => match self.acme_cert(name, &route.hosts) {
                Ok(cert) => Some(cert),
                Err(why) if acme.self_issued_fallback => {
                    tracing::warn!(
                        "route {name}: {why}; serving a certificate of the Portcullis CA \
                         until then (selfIssuedFallback: phones warn about it)"
                    );
                    None
                }
                Err(why) => {
                    tracing::warn!(
                        "route {name} is not served: {why}; it is served as soon as one is \
                         issued (the ACME log lines say why not yet)"
                    );
                    return Ok(None);
                }
            },
            None => config.own_certs.get(name).cloned(),
        };
        let (cert_chain, key_pem, not_after) = match own {
            Some(own) => {
                let chain = own
                    .chain
                    .iter()
                    .map(|d| CertificateDer::from(d.clone()))
                    .collect();
                (chain, own.key_pem, own.info.not_after)
            }
            None => {
                let cert = self.server_cert(name, &route.hosts)?;
                (
                    vec![CertificateDer::from(cert.cert_der)],
                    cert.key_pem,
                    cert.info.not_after,
                )
            }
        };
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Corrupt {
                path: self.state.route_dir(name).join("tls.key"),
                reason: format!("no usable private key: {e}"),
            })?;
        self.expiry("route", name, not_after);
        Ok(Some(RouteSource {
            route,
            cert_chain,
            key,
        }))
    }

    /// The route's ACME certificate, if one is stored, matches its key, covers at least one
    /// of the hosts and is valid now; else why not. One for fewer hosts keeps serving those
    /// while the manager orders one for the route's new hosts.
    fn acme_cert(&self, name: &str, hosts: &[String]) -> std::result::Result<OwnCert, String> {
        let path = self.state.acme_certificate_path(name);
        if !path.exists() {
            return Err("no ACME certificate yet".to_owned());
        }
        let cert = external::cert_files(&path, &path, &[])?;
        let sans = cert
            .chain
            .first()
            .map(|leaf| certs::san_hosts(leaf))
            .unwrap_or_default();
        let missing: Vec<&str> = hosts
            .iter()
            .filter(|h| !certs::covers(&sans, h))
            .map(String::as_str)
            .collect();
        if missing.len() == hosts.len() {
            return Err(format!(
                "the ACME certificate in {} is for other hosts",
                path.display()
            ));
        }
        if !missing.is_empty() {
            tracing::info!(
                "route {name}: the ACME certificate does not cover {} yet; it serves the \
                 other hosts until the new one arrives",
                missing.join(", ")
            );
        }
        let now = SystemTime::now();
        if cert.info.not_after <= now || now < cert.info.not_before {
            return Err(format!(
                "the ACME certificate in {} has expired",
                path.display()
            ));
        }
        Ok(cert)
    }

    /// The stored server certificate, re-issued when missing, unusable, for other hosts,
    /// from another CA, or within [`SERVER_RENEW_BEFORE`] of expiry.
    fn server_cert(&mut self, name: &str, hosts: &[String]) -> Result<StoredCert> {
        let existing = match self.state.load_route_cert(name) {
            Ok(c) => c,
            Err(e @ Error::Corrupt { .. }) => {
                tracing::warn!("route {name}: {e}; issuing a new server certificate");
                None
            }
            Err(e) => return Err(e),
        };
        let reason = match existing {
            None => "new route".to_owned(),
            Some(c) => match self.server_reissue_reason(&c, hosts) {
                None => return Ok(c),
                Some(reason) => reason,
            },
        };
        let cert = self.ca.issue_server(hosts, SERVER_VALIDITY)?;
        self.state.save_route_cert(name, &cert)?;
        self.changed(format!(
            "route {name}: issued server certificate serial {} for {} ({reason})",
            cert.info.serial_hex,
            hosts.join(", ")
        ));
        Ok(StoredCert {
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            cert_der: cert.cert_der,
            info: cert.info,
        })
    }

    fn server_reissue_reason(&self, c: &StoredCert, hosts: &[String]) -> Option<String> {
        let want: BTreeSet<String> = hosts.iter().cloned().collect();
        if certs::san_hosts(&c.cert_der) != want {
            return Some("hosts changed".into());
        }
        if !certs::issued_by(&c.cert_der, self.ca.cert_der()) {
            return Some("it is from another CA".into());
        }
        let renew_at = c.info.not_after.checked_sub(SERVER_RENEW_BEFORE)?;
        (SystemTime::now() >= renew_at).then(|| "renewal".to_owned())
    }
}

/// The snapshot's view of a (valid) route: lowercase hosts, parsed upstream, selector,
/// cookie and bypass rules.
pub(crate) fn resolve(name: &str, spec: &ProtectedRouteSpec) -> Result<Route> {
    let invalid = |what: String| Error::Config(format!("route {name}: {what}"));
    let url = spec
        .upstream
        .url
        .as_deref()
        .ok_or_else(|| invalid("spec.upstream.url is required in standalone mode".into()))?;
    let upstream = upstream_authority(url).map_err(invalid)?;
    let selector = match &spec.client_auth.identity_selector {
        Some(s) => Some(Selector::try_from(s.clone()).map_err(|e| invalid(e.to_string()))?),
        None => None,
    }
    .filter(|s| !s.selects_all());
    let cookie = &spec.client_auth.cookie_fallback;
    let cookie = match cookie.enabled {
        true => Some(CookiePolicy {
            name: cookie.name.clone(),
            ttl: cookie_ttl(cookie).map_err(invalid)?,
        }),
        false => None,
    };
    let mut bypass = Vec::with_capacity(spec.bypass.len());
    for rule in &spec.bypass {
        let methods = rule.methods.iter().flatten();
        let methods = methods
            .map(|m| {
                Method::from_bytes(m.as_bytes()).map_err(|e| invalid(format!("method {m:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        bypass.push(Bypass {
            path_prefix: rule.path_prefix.clone(),
            methods,
        });
    }
    let mut hosts: Vec<String> = Vec::with_capacity(spec.hosts.len());
    for host in spec.hosts.iter().map(|h| normalize_host(h)) {
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(Route {
        name: name.to_owned(),
        hosts,
        upstream,
        selector,
        cookie,
        bypass,
        headers: HeaderPolicy {
            strip: spec
                .strip_headers
                .iter()
                .map(|p| HeaderPattern::parse(p))
                .collect(),
            allow_underscores: spec.allow_underscore_headers,
        },
        hsts: spec
            .hsts
            .unwrap_or(spec.server_certificate.hsts_by_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{CertificateFiles, ServerCertificate};

    fn spec(yaml: &str) -> ProtectedRouteSpec {
        let base = "hosts: [ha.example.org]\nupstream:\n  url: http://127.0.0.1:8123\n";
        serde_yaml::from_str(&format!("{base}{yaml}")).expect("spec")
    }

    fn hsts(spec: &ProtectedRouteSpec) -> bool {
        resolve("ha", spec).expect("valid route").hsts
    }

    #[test]
    fn hsts_is_what_the_route_says_else_its_certificate_default() {
        // Minted by the Portcullis CA (no phone trusts it) or brought: off unless asked.
        assert!(!hsts(&spec("")));
        let files = "serverCertificate:\n  files:\n    certificate: a.pem\n    key: b.pem\n";
        assert!(!hsts(&spec(files)));
        assert!(!hsts(&spec("serverCertificate:\n  secretName: ha-tls\n")));
        assert!(hsts(&spec("hsts: true\n")));
        assert!(hsts(&spec(&format!("{files}hsts: true\n"))));
        assert!(!hsts(&spec("hsts: false\n")));
        // A publicly trusted certificate from ACME: on unless turned off.
        let acme = "serverCertificate:\n  acme:\n    email: me@example.com\n";
        assert!(hsts(&spec(acme)));
        assert!(!hsts(&spec(&format!("{acme}hsts: false\n"))));

        // An explicit value wins over the certificate's default, both ways.
        let brought = ServerCertificate {
            files: Some(CertificateFiles {
                certificate: "a.pem".into(),
                key: "b.pem".into(),
            }),
            ..Default::default()
        };
        for sc in [ServerCertificate::default(), brought] {
            let mut s = spec("");
            s.server_certificate = sc.clone();
            assert_eq!(hsts(&s), sc.hsts_by_default(), "{sc:?}");
            s.hsts = Some(!sc.hsts_by_default());
            assert_eq!(hsts(&s), !sc.hsts_by_default(), "{sc:?}");
        }
    }
}
