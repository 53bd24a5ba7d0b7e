//! Getting credentials onto devices: `identity export`, and the first-start instructions
//! (where the files are, and a `curl` line that proves the gate works).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use kube::core::SelectorExt;

use super::config::Config;
use super::name_of;
use super::routes::resolve;
use crate::pki;
use crate::resources::ClientIdentity;
use crate::resources::validate::is_dns_label;
use crate::snapshot::Route;
use crate::state::{PUBLIC_MODE, SECRET_MODE, StateDir, StoredCert, write_atomic};
use crate::{Error, Result};

/// What `identity export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// `NAME.p12` (key, certificate, CA), password protected.
    P12,
    /// A directory with `tls.crt`, `tls.key` and `ca.crt`.
    Pem,
    /// `NAME.mobileconfig`: the `.p12` in an Apple configuration profile. With
    /// `embed_password` the password goes into the profile too, so iOS does not ask for it
    /// (and anyone holding the file can install the identity).
    MobileConfig { embed_password: bool },
}

/// Files written by [`export_identity`].
#[derive(Debug)]
pub struct Exported {
    pub paths: Vec<PathBuf>,
    /// The password to type at import: P12, and MobileConfig without an embedded password.
    pub password: Option<String>,
}

/// Copies an identity's device files out of the state directory to `out` (default
/// `NAME.p12`, `NAME/` or `NAME.mobileconfig`). Refuses identities without credentials and
/// revoked ones.
pub fn export_identity(
    state: &StateDir,
    name: &str,
    format: ExportFormat,
    out: Option<&Path>,
) -> Result<Exported> {
    live_credentials(state, name)?;
    let dir = state.identity_dir(name);
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|source| Error::Io {
            action: "read",
            path,
            source,
        })
    };
    write_device_files(name, name, format, out, &read)
}

/// An identity's certificate and key from the state directory, refusing identities without
/// credentials and revoked ones (their serial is on the CRL): what may be handed to a device.
pub fn live_credentials(state: &StateDir, name: &str) -> Result<StoredCert> {
    if !is_dns_label(name) {
        return Err(Error::Config(format!("{name:?} is not an identity name")));
    }
    let Some(cert) = state.load_identity(name)? else {
        return Err(Error::Config(format!(
            "identity {name} has no credentials in {}; define it in the config and start \
             `portcullis standalone` once",
            state.root().display()
        )));
    };
    let serial = &cert.info.serial_hex;
    if state
        .load_revoked()?
        .iter()
        .any(|r| &r.serial_hex == serial)
    {
        return Err(Error::Config(format!(
            "identity {name} is revoked or was removed (serial {serial} is on the CRL); its \
             files are kept for the record only"
        )));
    }
    Ok(cert)
}

/// Writes a device's files for `format` to `out` (default `NAME.p12`, `NAME/` or
/// `NAME.mobileconfig`), reading each by its state-dir / Secret key name (`tls.crt`,
/// `keystore.p12`, ...) with `read`. `identity` is the device's stable key in Apple profiles:
/// `NAME` standalone, `NAMESPACE/NAME` in Kubernetes. Shared by the standalone and the
/// Kubernetes export, whose layouts are the same.
pub fn write_device_files(
    name: &str,
    identity: &str,
    format: ExportFormat,
    out: Option<&Path>,
    read: &dyn Fn(&str) -> Result<Vec<u8>>,
) -> Result<Exported> {
    let out_or = |default: String| out.map_or_else(|| PathBuf::from(default), Path::to_owned);
    match format {
        ExportFormat::P12 => {
            let out = out_or(format!("{name}.p12"));
            write_atomic(&out, &read("keystore.p12")?, SECRET_MODE)?;
            Ok(Exported {
                paths: vec![out],
                password: Some(read_password(name, read)?),
            })
        }
        ExportFormat::Pem => {
            let out = out_or(name.to_owned());
            let mut paths = Vec::new();
            for (file, mode) in [
                ("tls.crt", PUBLIC_MODE),
                ("tls.key", SECRET_MODE),
                ("ca.crt", PUBLIC_MODE),
            ] {
                let path = out.join(file);
                write_atomic(&path, &read(file)?, mode)?;
                paths.push(path);
            }
            Ok(Exported {
                paths,
                password: None,
            })
        }
        ExportFormat::MobileConfig { embed_password } => {
            let out = out_or(format!("{name}.mobileconfig"));
            let password = read_password(name, read)?;
            let cert = String::from_utf8_lossy(&read("tls.crt")?).into_owned();
            let common_name = pki::inspect_pem(&cert)?.common_name;
            let profile = pki::mobileconfig(&pki::MobileConfig {
                identity,
                display_name: common_name.as_deref().unwrap_or(name),
                p12: &read("keystore.p12")?,
                password: embed_password.then_some(password.as_str()),
            })?;
            // Mode 0600 either way: the profile holds the private key (and maybe its password).
            write_atomic(&out, &profile, SECRET_MODE)?;
            Ok(Exported {
                paths: vec![out],
                password: (!embed_password).then_some(password),
            })
        }
    }
}

/// The `.p12` password, as stored beside it.
fn read_password(name: &str, read: &dyn Fn(&str) -> Result<Vec<u8>>) -> Result<String> {
    String::from_utf8(read("keystore.p12.password")?).map_err(|_| {
        Error::Config(format!(
            "identity {name}: keystore.p12.password is not UTF-8 text"
        ))
    })
}

/// The first-start message: where the CA and each device's files are, and one `curl` line
/// per identity that reaches the gate listening on `listen`.
pub fn instructions(config: &Config, state: &StateDir, listen: SocketAddr) -> String {
    let root = std::path::absolute(state.root()).unwrap_or_else(|_| state.root().to_owned());
    let state = StateDir::new(root);
    let ca = state.ca_cert_path();
    let mut out = String::new();
    let _ = writeln!(out, "Portcullis is ready. CA certificate: {}", ca.display());
    let _ = writeln!(
        out,
        "Device files (import keystore.p12; its password is in keystore.p12.password, or run \
         `portcullis identity export NAME --format p12 --state-dir {}`):",
        state.root().display()
    );
    let live = config.identities.iter().filter(|c| !c.spec.revoked);
    for ci in live.clone() {
        let name = name_of(&ci.metadata);
        let _ = writeln!(out, "  {name}: {}", state.identity_dir(name).display());
    }
    let _ = writeln!(out, "Try it:");
    for ci in live {
        let name = name_of(&ci.metadata);
        let route = route_for(config, ci);
        match route.as_ref().and_then(|r| r.hosts.first()) {
            Some(host) => {
                // A publicly trusted server certificate needs no --cacert.
                let own_ca = route.as_ref().is_some_and(|r| {
                    config.routes.iter().any(|pr| {
                        name_of(&pr.metadata) == r.name && pr.spec.server_certificate.is_minted()
                    })
                });
                let _ = writeln!(out, "  {}", curl_line(&state, name, host, listen, own_ca));
            }
            None => {
                let _ = writeln!(out, "  ({name}: no route admits this identity)");
            }
        }
    }
    out
}

/// The first route of `config` that admits `identity` (by its labels).
pub(super) fn route_for(config: &Config, identity: &ClientIdentity) -> Option<Route> {
    let labels = identity.metadata.labels.clone().unwrap_or_default();
    config
        .routes
        .iter()
        .filter_map(|r| resolve(name_of(&r.metadata), &r.spec).ok())
        .find(|r| r.selector.as_ref().is_none_or(|s| s.matches(&labels)))
}

/// A curl line for device `name` on `host`, trusting the Portcullis CA when `own_ca` (the
/// route's certificate is minted by it).
fn curl_line(state: &StateDir, name: &str, host: &str, listen: SocketAddr, own_ca: bool) -> String {
    let port = listen.port();
    let target = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let dir = state.identity_dir(name);
    let mut line = "curl".to_owned();
    if own_ca {
        let _ = write!(line, " --cacert {}", quote(&state.ca_cert_path()));
    }
    let _ = write!(
        line,
        " --cert {} --key {}",
        quote(&dir.join("tls.crt")),
        quote(&dir.join("tls.key")),
    );
    let url_host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]"),
        Ok(_) => host.to_owned(),
        Err(_) => {
            // Pin the name to the listener instead of asking DNS: the line then works on
            // this machine whether the name is unknown, `.localhost`, or public DNS that
            // points at the router.
            let ip = match target {
                IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            };
            let _ = write!(line, " --resolve {host}:{port}:{ip}");
            host.to_owned()
        }
    };
    let _ = write!(line, " https://{url_host}:{port}/");
    line
}

/// Quotes a path for a POSIX shell when it needs it.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-:@+,".contains(c);
    if text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_pins_unknown_names_and_brackets_ipv6() {
        let state = StateDir::new("/s");
        let listen: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let line = curl_line(&state, "a", "ha.invalid", listen, true);
        assert_eq!(
            line,
            "curl --cacert /s/ca/tls.crt --cert /s/identities/a/tls.crt --key \
             /s/identities/a/tls.key --resolve ha.invalid:8443:127.0.0.1 https://ha.invalid:8443/"
        );
        let line = curl_line(&state, "a", "::1", "[::]:9443".parse().unwrap(), true);
        assert!(line.ends_with(" https://[::1]:9443/"), "{line}");
        // A publicly trusted certificate (ACME, files): the system's roots, no --cacert.
        let line = curl_line(&state, "a", "ha.example.com", listen, false);
        assert!(
            line.starts_with("curl --cert /s/identities/a/tls.crt"),
            "{line}"
        );
        assert_eq!(quote(Path::new("/a b/c'd")), r"'/a b/c'\''d'");
    }
}
