//! A ClientIdentity's credentials in the state directory: issued when missing, re-issued
//! when the spec asks for a different certificate or expiry nears, and the `.p12` file
//! re-exported (same certificate) when only its profile or password changed.
//!
//! Re-issuing forces the owner to re-import on the device, so it happens only when the
//! certificate itself must change, and never revokes the certificate the device holds: it
//! moves to `previous.crt` and stays admitted until its notAfter.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::certs;
use super::config::Config;
use super::live::{Held, live_certs};
use super::name_of;
use super::reconcile::Ctx;
use crate::pki::previous::{Previous, parse_previous, pem_of, supersede};
use crate::pki::{self, IssuedCert, export_pkcs12, generate_password};
use crate::resources::validate::{IdentityTiming, identity_timing};
use crate::resources::{ClientIdentity, KeyAlgorithm, Pkcs12Profile};
use crate::snapshot::LiveCert;
use crate::state::{PUBLIC_MODE, StoredCert, write_atomic};
use crate::{Error, Result};

/// How far a certificate's lifetime may differ from `validity` before it counts as
/// changed: issuance backdates `notBefore` by a few minutes, and rewording `365d` as `1y`
/// (365.25 days) must not force every device to re-import. The larger of this and 1%.
const VALIDITY_TOLERANCE: Duration = Duration::from_secs(10 * 60);

/// What the spec asks of an identity's credentials.
struct Wanted<'a> {
    name: &'a str,
    common_name: &'a str,
    key_algorithm: KeyAlgorithm,
    timing: IdentityTiming,
    profile: Pkcs12Profile,
    /// From `passwordSecretRef`; `None`: keep the stored one or generate one.
    password: Option<&'a str>,
}

/// `identities/<name>/spec.json`: what the stored `.p12` was written with.
#[derive(Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Written {
    pkcs12_profile: Pkcs12Profile,
}

impl Ctx<'_> {
    /// Ensures an identity's credentials; its live certificates (the current one and the
    /// superseded ones a device may still hold) unless it is revoked.
    pub(super) fn identity(
        &mut self,
        config: &Config,
        ci: &ClientIdentity,
    ) -> Result<Vec<LiveCert>> {
        let name = name_of(&ci.metadata);
        let existing = self.stored_identity(name)?;
        let previous = parse_previous(&self.state.load_previous(name)?);
        if ci.spec.revoked {
            let held = existing
                .iter()
                .map(|c| &c.info)
                .chain(previous.iter().map(|p| &p.info));
            for info in held {
                let serial = &info.serial_hex;
                self.revoke(serial, format!("identity {name} revoked: serial {serial}"));
            }
            return Ok(Vec::new());
        }
        let timing = identity_timing(&ci.spec).map_err(|p| {
            Error::Config(format!(
                "identity {name}: {}",
                p.first().map_or(String::new(), |p| p.to_string())
            ))
        })?;
        let want = Wanted {
            name,
            common_name: ci.spec.common_name.as_deref().unwrap_or(name),
            key_algorithm: ci.spec.key_algorithm,
            timing,
            profile: ci.spec.pkcs12.profile,
            password: config.passwords.get(name).map(String::as_str),
        };
        let (cert, previous) = match existing {
            None => (self.issue_identity(&want, "new identity")?, previous),
            Some(c) => match self.reissue_reason(&c, &want) {
                None => {
                    self.refresh_p12(&c, &want)?;
                    (c, previous)
                }
                Some(reason) => {
                    let previous = self.supersede(name, &c, &previous)?;
                    (self.issue_identity(&want, &reason)?, previous)
                }
            },
        };
        self.expiry("identity", name, cert.info.not_after);
        let labels = ci.metadata.labels.clone().unwrap_or_default();
        let held = Held {
            identity: name.to_owned(),
            labels: &labels,
            certs: std::iter::once(&cert.info)
                .chain(previous.iter().map(|p| &p.info))
                .collect(),
        };
        Ok(live_certs(&held, |s| self.is_revoked(s), SystemTime::now()))
    }

    /// Keeps a certificate a re-issue replaces in `previous.crt`, so the device holding it
    /// stays admitted until its notAfter (written before the new certificate: a crash in
    /// between leaves it in both places, which is harmless). Not one that is revoked or
    /// from another CA: those could not be admitted anyway, nor could the earlier ones.
    fn supersede(
        &mut self,
        name: &str,
        old: &StoredCert,
        previous: &[Previous],
    ) -> Result<Vec<Previous>> {
        let keep = !self.is_revoked(&old.info.serial_hex)
            && certs::issued_by(&old.cert_der, self.ca.cert_der());
        if !keep {
            // Revoked with the identity (or from a replaced CA) like every earlier one.
            if !previous.is_empty() {
                self.state.save_previous(name, "")?;
            }
            return Ok(Vec::new());
        }
        let earlier: String = previous.iter().map(|p| pem_of(&p.der)).collect();
        let bundle = supersede(Some(&earlier), &old.cert_pem, SystemTime::now());
        self.state.save_previous(name, &bundle)?;
        let serial = &old.info.serial_hex;
        self.changed(format!(
            "identity {name}: serial {serial} superseded; still admitted until {} (previous.crt)",
            humantime::format_rfc3339_seconds(old.info.not_after)
        ));
        Ok(parse_previous(&bundle))
    }

    /// The stored credentials; unusable ones are logged and replaced (unlike the CA, a
    /// device's credentials can be re-issued).
    fn stored_identity(&self, name: &str) -> Result<Option<StoredCert>> {
        match self.state.load_identity(name) {
            Ok(c) => Ok(c),
            Err(e @ Error::Corrupt { .. }) => {
                tracing::warn!("identity {name}: {e}; issuing new credentials");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn reissue_reason(&self, c: &StoredCert, want: &Wanted<'_>) -> Option<String> {
        if !certs::issued_by(&c.cert_der, self.ca.cert_der()) {
            return Some("its certificate is from another CA".into());
        }
        if c.info.common_name.as_deref() != Some(want.common_name) {
            return Some(format!("commonName changed to {}", want.common_name));
        }
        if certs::key_algorithm(&c.cert_der) != Some(want.key_algorithm) {
            return Some("keyAlgorithm changed".into());
        }
        if self.is_revoked(&c.info.serial_hex) {
            return Some("its previous certificate is on the revocation list".into());
        }
        let lifetime = c
            .info
            .not_after
            .duration_since(c.info.not_before)
            .unwrap_or_default();
        let tolerance = VALIDITY_TOLERANCE.max(want.timing.validity / 100);
        if lifetime.abs_diff(want.timing.validity) > tolerance {
            return Some("validity changed".into());
        }
        let renew_at = c.info.not_after.checked_sub(want.timing.renew_before)?;
        (SystemTime::now() >= renew_at).then(|| {
            format!(
                "renewal: expires {}",
                humantime::format_rfc3339_seconds(c.info.not_after)
            )
        })
    }

    fn issue_identity(&mut self, want: &Wanted<'_>, reason: &str) -> Result<StoredCert> {
        let cert =
            self.ca
                .issue_client(want.common_name, want.key_algorithm, want.timing.validity)?;
        let password = self.password_for(want)?;
        self.save_p12(want, &cert, &password)?;
        self.changed(format!(
            "identity {}: issued certificate serial {} ({reason})",
            want.name, cert.info.serial_hex
        ));
        Ok(StoredCert {
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            cert_der: cert.cert_der,
            info: cert.info,
        })
    }

    /// Re-writes the `.p12` (same certificate and key) when it is missing or its profile or
    /// configured password changed.
    fn refresh_p12(&mut self, c: &StoredCert, want: &Wanted<'_>) -> Result<()> {
        let dir = self.state.identity_dir(want.name);
        let stored = self.stored_password(want.name)?;
        let written: Option<Written> = std::fs::read(dir.join("spec.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let fresh = dir.join("keystore.p12").is_file()
            && stored.is_some()
            && want.password.is_none_or(|p| stored.as_deref() == Some(p))
            && written
                == Some(Written {
                    pkcs12_profile: want.profile,
                });
        if fresh {
            return Ok(());
        }
        let key_der = pki::key_der_from_pem(&c.key_pem).map_err(|e| Error::Corrupt {
            path: dir.join("tls.key"),
            reason: e.to_string(),
        })?;
        let cert = IssuedCert {
            cert_pem: c.cert_pem.clone(),
            key_pem: c.key_pem.clone(),
            cert_der: c.cert_der.clone(),
            key_der,
            info: c.info.clone(),
        };
        let password = self.password_for(want)?;
        self.save_p12(want, &cert, &password)?;
        self.changed(format!(
            "identity {}: re-wrote keystore.p12 (same certificate)",
            want.name
        ));
        Ok(())
    }

    /// The configured password, else the one already handed out, else a new one.
    fn password_for(&self, want: &Wanted<'_>) -> Result<String> {
        if let Some(p) = want.password {
            return Ok(p.to_owned());
        }
        Ok(self
            .stored_password(want.name)?
            .filter(|p| p.chars().count() >= pki::MIN_PASSWORD_LEN)
            .unwrap_or_else(generate_password))
    }

    fn stored_password(&self, name: &str) -> Result<Option<String>> {
        let path = self.state.identity_dir(name).join("keystore.p12.password");
        match std::fs::read_to_string(&path) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                action: "read",
                path,
                source: e,
            }),
        }
    }

    fn save_p12(&self, want: &Wanted<'_>, cert: &IssuedCert, password: &str) -> Result<()> {
        let p12 = export_pkcs12(
            cert,
            self.ca.cert_der(),
            want.common_name,
            password,
            want.profile,
        )?;
        self.state
            .save_identity(want.name, cert, self.ca.cert_pem(), &p12, password)?;
        let written = serde_json::to_vec_pretty(&Written {
            pkcs12_profile: want.profile,
        })
        .map_err(|e| Error::pki("spec.json", e))?;
        let path = self.state.identity_dir(want.name).join("spec.json");
        write_atomic(&path, &written, PUBLIC_MODE)
    }
}
