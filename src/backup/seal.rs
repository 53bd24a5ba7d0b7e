//! The file itself: the [`Archive`] as JSON, encrypted with age to a passphrase (scrypt),
//! written atomically with mode 0600. `age -d FILE` opens it too.

use std::io::{Read, Write};
use std::path::Path;

use age::secrecy::SecretString;
use age::{DecryptError, Decryptor, Encryptor};

use super::{Archive, FORMAT_VERSION, Result, file_error};
use crate::state::{SECRET_MODE, write_atomic};

/// scrypt work factor (N = 2^18, 256 MiB, about a second): age's own default, fixed so a
/// file written on a fast PC still opens on a Raspberry Pi.
const WORK_FACTOR: u8 = 18;
/// The highest work factor a file may ask for: a bigger one would let a crafted file make
/// a restore take minutes and gigabytes.
const MAX_WORK_FACTOR: u8 = 20;
/// Shortest password accepted for a new backup.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The password protecting a backup; never printed.
pub struct Password(SecretString);

impl Password {
    /// Wraps a password read from a prompt, a file or the environment.
    pub fn new(text: String) -> Password {
        Password(SecretString::from(text))
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// Encrypts `archive` and writes it to `path` atomically (mode 0600): a crash leaves the
/// previous file or the new one, never half of one.
pub fn write_archive(path: &Path, archive: &Archive, password: &Password) -> Result<()> {
    let json = serde_json::to_vec(archive)
        .map_err(|e| file_error(path, format!("cannot encode the backup: {e}")))?;
    let sealed = seal(&json, password).map_err(|e| file_error(path, e))?;
    write_atomic(path, &sealed, SECRET_MODE)?;
    Ok(())
}

/// Reads and decrypts the backup at `path`. A wrong password, a damaged file or a file
/// that is not a Portcullis backup is an [`Error::File`] saying which.
pub fn read_archive(path: &Path, password: &Password) -> Result<Archive> {
    let sealed = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let json = open(&sealed, password).map_err(|reason| file_error(path, reason))?;
    let archive: Archive = serde_json::from_slice(&json).map_err(|e| {
        file_error(
            path,
            format!("it decrypts, but is not a Portcullis backup ({e})"),
        )
    })?;
    if archive.portcullis_backup > FORMAT_VERSION {
        return Err(file_error(
            path,
            format!(
                "it was written by a newer Portcullis (backup format {}; this one reads up to \
                 {FORMAT_VERSION}): restore it with that version",
                archive.portcullis_backup
            ),
        ));
    }
    Ok(archive)
}

fn seal(plain: &[u8], password: &Password) -> Result<Vec<u8>, String> {
    let mut recipient = age::scrypt::Recipient::new(password.0.clone());
    recipient.set_work_factor(WORK_FACTOR);
    let encryptor = Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    let mut out = Vec::with_capacity(plain.len() + 256);
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    writer
        .write_all(plain)
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    writer
        .finish()
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    Ok(out)
}

/// Decrypts; the error says what the user can do about it.
pub(super) fn open(sealed: &[u8], password: &Password) -> Result<Vec<u8>, String> {
    let not_backup = "it is not a Portcullis backup (not an age file, or its header is damaged)";
    let decryptor = Decryptor::new_buffered(sealed).map_err(|e| match e {
        DecryptError::UnknownFormat => not_backup.to_owned(),
        DecryptError::Io(_) | DecryptError::InvalidHeader => not_backup.to_owned(),
        other => format!("cannot read its header: {other}"),
    })?;
    if !decryptor.is_scrypt() {
        return Err(
            "it is an age file encrypted to keys, not to a password; a Portcullis backup \
             is always encrypted to a password"
                .into(),
        );
    }
    let mut identity = age::scrypt::Identity::new(password.0.clone());
    identity.set_max_work_factor(MAX_WORK_FACTOR);
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            DecryptError::DecryptionFailed
            | DecryptError::KeyDecryptionFailed
            | DecryptError::NoMatchingKeys => {
                "wrong password (or the file is damaged); nothing was written".to_owned()
            }
            DecryptError::InvalidMac => {
                "its header is damaged (the MAC does not match); nothing was written".to_owned()
            }
            DecryptError::ExcessiveWork { required, .. } => format!(
                "its password is stretched with scrypt work factor {required}, more than the \
                 {MAX_WORK_FACTOR} accepted; re-encrypt it with `age -p`"
            ),
            other => format!("cannot decrypt: {other}"),
        })?;
    let mut plain = Vec::new();
    reader.read_to_end(&mut plain).map_err(|_| {
        "it is damaged (its contents fail the integrity check: truncated or altered); \
         nothing was written"
            .to_owned()
    })?;
    Ok(plain)
}
