//! The CA files: created once, then only ever loaded.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

use super::{PUBLIC_MODE, SECRET_MODE, StateDir, corrupt, hint, sync_dir, utf8, write_atomic};
use crate::pki::Ca;
use crate::{Error, Result};

const NEW_CA_HINT: &str = "restore it from a backup or remove both ca/ files to start a new CA \
                           (every device must then be re-enrolled)";

impl StateDir {
    /// Loads the CA, creating it only when both `ca/tls.crt` and `ca/tls.key` are absent.
    /// Returns whether it was created. Anything else odd (one file missing, unreadable,
    /// unparsable, key not matching) is [`Error::Corrupt`]: a CA is never regenerated
    /// behind the user's back, because that would lock out every device.
    pub fn load_or_create_ca(&self) -> Result<(Ca, bool)> {
        let (cert_path, key_path) = (self.ca_cert_path(), self.ca_key_path());
        let cert = read_ca_file(&cert_path)?;
        let key = read_ca_file(&key_path)?;
        match (cert, key) {
            (None, None) => Ok((self.create_ca()?, true)),
            (Some(_), None) => Err(corrupt(&key_path, format!("it is missing; {NEW_CA_HINT}"))),
            (None, Some(_)) => Err(corrupt(&cert_path, format!("it is missing; {NEW_CA_HINT}"))),
            (Some(cert), Some(key)) => match Ca::from_pem(&cert, &key) {
                Ok(ca) => Ok((ca, false)),
                // Blame the file the problem is in.
                Err(Error::Pki { what, reason }) if what.contains("key") => Err(corrupt(
                    &key_path,
                    format!("{what}: {reason}; {NEW_CA_HINT}"),
                )),
                Err(e) => Err(corrupt(&cert_path, format!("{e}; {NEW_CA_HINT}"))),
            },
        }
    }

    /// Writes a new CA into a staging directory and renames it to `ca/`, so a crash never
    /// leaves a key without its certificate (which the next start would refuse).
    fn create_ca(&self) -> Result<Ca> {
        let mut id = [0u8; 4];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| Error::pki("generating the CA", "the system random generator failed"))?;
        // A distinct name per installation tells CAs apart in a device's certificate list.
        let ca = Ca::generate(&format!("Portcullis CA {}", hex::encode(id)))?;
        let staging = self.root.join(".ca.new");
        match fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(Error::Io {
                    action: "remove",
                    path: staging,
                    source: hint(e),
                });
            }
            _ => {}
        }
        write_atomic(
            &staging.join("tls.key"),
            ca.key_pem().as_bytes(),
            SECRET_MODE,
        )?;
        write_atomic(
            &staging.join("tls.crt"),
            ca.cert_pem().as_bytes(),
            PUBLIC_MODE,
        )?;
        let ca_dir = self.root.join("ca");
        match fs::rename(&staging, &ca_dir) {
            Ok(()) => sync_dir(&self.root)?,
            // rename(2) replaces only an empty directory; `ca/` holds other files. Write
            // into it key first, after checking nobody created a CA meanwhile.
            Err(_)
                if ca_dir.is_dir()
                    && !self.ca_cert_path().exists()
                    && !self.ca_key_path().exists() =>
            {
                write_atomic(&self.ca_key_path(), ca.key_pem().as_bytes(), SECRET_MODE)?;
                write_atomic(&self.ca_cert_path(), ca.cert_pem().as_bytes(), PUBLIC_MODE)?;
                let _ = fs::remove_dir_all(&staging);
            }
            Err(e) => {
                return Err(Error::Io {
                    action: "create",
                    path: ca_dir,
                    source: hint(e),
                });
            }
        }
        Ok(ca)
    }
}

/// CA files: every failure to read one is [`Error::Corrupt`] with the recovery hint.
fn read_ca_file(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => utf8(path, bytes).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(corrupt(
            path,
            format!("cannot read it ({e}); {NEW_CA_HINT}"),
        )),
    }
}
