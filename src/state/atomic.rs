//! Atomic writes and reads with actionable errors.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

use crate::{Error, Result};

const DIR_MODE: u32 = 0o700;

/// Writes `bytes` to `path` atomically with permission `mode` (0600 for secrets, 0644
/// otherwise); missing parent directories are created with mode 0700.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let io_err = |action, path: &Path, e| Error::Io {
        action,
        path: path.to_owned(),
        source: hint(e),
    };
    let Some(name) = path.file_name() else {
        return Err(io_err("write", path, ErrorKind::InvalidInput.into()));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(parent)
        .map_err(|e| io_err("create directory", parent, e))?;

    // A random name: a fixed one (pid + counter) would collide with a temp file left by a
    // crash in a container, where the process is PID 1 on every start. O_EXCL below also
    // refuses to follow a symlink planted under that name.
    let mut nonce = [0u8; 8];
    SystemRandom::new().fill(&mut nonce).map_err(|_| {
        io_err(
            "write",
            path,
            io::Error::other("the system random generator failed"),
        )
    })?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        hex::encode(nonce)
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`; set it exactly, before any byte is written
        // and long before the file appears under its real name.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Best effort: the write already failed, and a stray temp file is harmless.
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", path, e));
    }
    sync_dir(parent)
}

/// Makes a rename in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Io {
            action: "sync directory",
            path: dir.to_owned(),
            source: hint(e),
        })
}

/// Adds the likely fix to the errors a user can do something about.
pub(super) fn hint(e: io::Error) -> io::Error {
    let fix = match e.kind() {
        ErrorKind::PermissionDenied => "is the state directory writable by this user?",
        ErrorKind::ReadOnlyFilesystem => {
            "the file system is read-only; point --state-dir at a writable directory"
        }
        ErrorKind::NotADirectory | ErrorKind::AlreadyExists => {
            "a file is in the way where a directory is needed"
        }
        ErrorKind::StorageFull => "the disk is full",
        _ => return e,
    };
    io::Error::new(e.kind(), format!("{e} ({fix})"))
}

/// Reads a file; `None` when it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            action: "read",
            path: path.to_owned(),
            source: hint(e),
        }),
    }
}
