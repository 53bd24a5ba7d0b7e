//! Standalone mode: the state directory's trust files in, a new state directory out.
//!
//! Backed up: `ca/`, `crl.pem`, `revoked.yaml`, `cookie-keys`, `routes/*/` (ACME
//! certificates and backoff included), `acme/` (ACME accounts) and `identities/*/`
//! (certificates, keys, `.p12` files, `previous.crt`, `seen.json`). Left
//! out: `enrollments/` (one-time links expire within minutes) and temp files.
//! Restored into a staging directory beside the target, then renamed into place: the
//! target appears complete or not at all.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::ByteString;

use super::{Error, Report, Result, SavedConfig, SavedFile, StandaloneContents};
use crate::pki::Ca;
use crate::state::{PUBLIC_MODE, SECRET_MODE, StateDir, write_atomic};

/// Top-level files of the state directory that a backup holds.
const TOP_FILES: [&str; 3] = ["crl.pem", "revoked.yaml", "cookie-keys"];
/// Top-level directories a backup holds, whole.
const TOP_DIRS: [&str; 4] = ["ca", "routes", "identities", "acme"];

/// Reads what the backup holds from `state`, and the config file when given.
pub fn collect_standalone(state: &StateDir, config: Option<&Path>) -> Result<StandaloneContents> {
    state.ensure_initialised()?;
    // Refuse a CA that does not load: a backup of it would restore nothing usable.
    state.load_or_create_ca()?;
    let mut contents = StandaloneContents {
        files: Default::default(),
        config: None,
    };
    let root = state.root();
    for name in TOP_FILES {
        add_file(&mut contents, root, Path::new(name))?;
    }
    for name in TOP_DIRS {
        add_tree(&mut contents, root, Path::new(name))?;
    }
    if let Some(path) = config {
        let text = fs::read_to_string(path).map_err(|e| io_error("read", path, e))?;
        contents.config = Some(SavedConfig {
            path: path.display().to_string(),
            text,
        });
    }
    Ok(contents)
}

fn add_tree(contents: &mut StandaloneContents, root: &Path, rel: &Path) -> Result<()> {
    let dir = root.join(rel);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("read directory", &dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error("read directory", &dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // temp files of an atomic write, staging directories
        }
        let kind = entry
            .file_type()
            .map_err(|e| io_error("read", &entry.path(), e))?;
        let child = rel.join(&name);
        if kind.is_dir() {
            add_tree(contents, root, &child)?;
        } else if kind.is_file() {
            add_file(contents, root, &child)?;
        }
        // Symlinks are not followed: the state directory never makes them.
    }
    Ok(())
}

fn add_file(contents: &mut StandaloneContents, root: &Path, rel: &Path) -> Result<()> {
    let path = root.join(rel);
    let data = match fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("read", &path, e)),
    };
    let mode = fs::metadata(&path)
        .map_err(|e| io_error("read", &path, e))?
        .permissions()
        .mode();
    contents.files.insert(
        rel.to_string_lossy().into_owned(),
        SavedFile {
            secret: mode & 0o077 == 0,
            data: ByteString(data),
        },
    );
    Ok(())
}

/// Restores `contents` into `target`, which must not exist or be empty, and writes the
/// config file to `config_out` when asked (it must not exist).
pub fn restore_standalone(
    contents: &StandaloneContents,
    target: &Path,
    config_out: Option<&Path>,
) -> Result<Report> {
    refuse_occupied(target)?;
    let config = match (config_out, &contents.config) {
        (None, _) => None,
        (Some(out), Some(saved)) if !out.exists() => Some((out, saved)),
        (Some(out), Some(_)) => {
            return Err(Error::Refused(format!(
                "{} already exists: restore writes the config file only where there is none; \
                 pass another --config path",
                out.display()
            )));
        }
        (Some(_), None) => {
            return Err(Error::Refused(
                "this backup holds no config file (it was taken without --config): restore \
                 without --config and use your own copy"
                    .into(),
            ));
        }
    };
    let files = checked_files(contents)?;

    let staging = staging_dir(target)?;
    let written = (|| {
        for (rel, file) in &files {
            let mode = if file.secret {
                SECRET_MODE
            } else {
                PUBLIC_MODE
            };
            write_atomic(&staging.join(rel), &file.data.0, mode)?;
        }
        // rename(2) replaces a missing or empty directory, never one with files in it.
        fs::rename(&staging, target).map_err(|e| io_error("rename into", target, e))?;
        sync_parent(target)
    })();
    if let Err(e) = written {
        // Best effort: the staging directory is hidden and holds no partial target.
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }

    let mut report = Report::default();
    let identities = files
        .iter()
        .filter(|(rel, _)| rel.starts_with("identities") && rel.ends_with("tls.crt"))
        .count();
    report.lines.push(format!(
        "state directory {}: the CA, CRL, cookie keys, {identities} device(s), {} file(s)",
        target.display(),
        files.len()
    ));
    if let Some((out, saved)) = config {
        write_atomic(out, saved.text.as_bytes(), SECRET_MODE)?;
        report.lines.push(format!(
            "config file {} (from {})",
            out.display(),
            saved.path
        ));
    } else if contents.config.is_some() {
        report
            .notes
            .push("the backup also holds the config file; pass --config PATH to write it".into());
    }
    Ok(report)
}

/// Refuses a target holding a CA (the gate has already started there) or any other file.
fn refuse_occupied(target: &Path) -> Result<()> {
    let state = StateDir::new(target);
    if state.ca_cert_path().exists() || state.ca_key_path().exists() {
        return Err(Error::Refused(format!(
            "{} already holds a CA ({}): a restore never replaces a CA. Restore into a new \
             or empty directory and point --state-dir at it, or move this one aside first \
             (every device enrolled under its CA would be locked out)",
            target.display(),
            state.ca_cert_path().display()
        )));
    }
    match fs::read_dir(target) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(entry) => Err(Error::Refused(format!(
                "{} is not empty (it holds {}): restore into a new or empty directory",
                target.display(),
                entry
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "files".into())
            ))),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("read directory", target, e)),
    }
}

/// The archive's files with paths checked: only the state directory's own layout, nothing
/// that climbs out of it. The CA must be there and load.
fn checked_files(contents: &StandaloneContents) -> Result<Vec<(PathBuf, &SavedFile)>> {
    let mut files = Vec::new();
    for (rel, file) in &contents.files {
        let path = Path::new(rel);
        let plain = path.components().all(|c| match c {
            Component::Normal(part) => !part.to_string_lossy().starts_with('.'),
            _ => false,
        });
        let top = path
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let known = TOP_FILES.contains(&rel.as_str()) || TOP_DIRS.contains(&top.as_str());
        if !plain || !known {
            return Err(Error::Refused(format!(
                "the backup names a file {rel:?} outside the state directory's layout; it was \
                 not written by Portcullis (nothing was restored)"
            )));
        }
        files.push((path.to_owned(), file));
    }
    let text = |name: &str| {
        contents
            .files
            .get(name)
            .and_then(|f| std::str::from_utf8(&f.data.0).ok())
    };
    match (text("ca/tls.crt"), text("ca/tls.key")) {
        (Some(cert), Some(key)) => {
            Ca::from_pem(cert, key).map_err(|e| {
                Error::Refused(format!(
                    "the backup's CA does not load ({e}); nothing was restored"
                ))
            })?;
        }
        _ => {
            return Err(Error::Refused(
                "the backup holds no CA (ca/tls.crt and ca/tls.key); nothing was restored".into(),
            ));
        }
    }
    Ok(files)
}

/// A new hidden directory beside `target` (same file system, so the rename is atomic).
fn staging_dir(target: &Path) -> Result<PathBuf> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| Error::Refused(format!("{} names no directory", target.display())))?;
    fs::create_dir_all(&parent).map_err(|e| io_error("create directory", &parent, e))?;
    let staging = parent.join(format!(
        ".{}.restore-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover from a crashed restore of the same process id holds nothing we need.
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging).map_err(|e| io_error("create directory", &staging, e))?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_error("set permissions of", &staging, e))?;
    Ok(staging)
}

fn sync_parent(target: &Path) -> Result<()> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory", parent, e))
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::State(crate::Error::Io {
        action,
        path: path.to_owned(),
        source,
    })
}
