//! What the enrollment tests share: reading what `portcullis enroll` printed, and opening a
//! downloaded `.p12` with `openssl`.

use std::path::Path;
use std::process::{Command, Output};

/// The link `portcullis enroll` printed, with its one-time password.
#[derive(Debug, Clone)]
pub struct PrintedLink {
    /// `https://HOST[:PORT]/.well-known/portcullis/enroll/<token>`
    pub url: String,
    pub password: String,
    /// Everything printed on stdout (the QR code included).
    pub printed: String,
}

impl PrintedLink {
    /// Reads a successful `portcullis enroll` run; panics with its output otherwise.
    pub fn from_output(out: &Output) -> PrintedLink {
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "portcullis enroll failed: {printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = printed
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no link in what enroll printed: {printed}"))
            .to_owned();
        let password = printed
            .lines()
            .find_map(|l| l.strip_prefix("One-time password: "))
            .unwrap_or_else(|| panic!("no one-time password in what enroll printed: {printed}"))
            .trim()
            .to_owned();
        PrintedLink {
            url,
            password,
            printed,
        }
    }

    /// The URL's path: `/.well-known/portcullis/enroll/<token>`.
    pub fn path(&self) -> &str {
        let rest = self.url.strip_prefix("https://").expect("an https link");
        &rest[rest.find('/').expect("a path")..]
    }

    /// The token (the path's last segment).
    pub fn token(&self) -> &str {
        self.path().rsplit('/').next().expect("a token")
    }

    /// What the stored record keys the link by: SHA-256 of the token, lowercase hex.
    pub fn token_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.token().as_bytes()))
    }
}

/// Whether `openssl pkcs12` opens the file `p12` with `password`.
pub fn openssl_opens(p12: &Path, password: &str) -> bool {
    Command::new("openssl")
        .args(["pkcs12", "-legacy", "-noout", "-in"])
        .arg(p12)
        .args(["-passin", &format!("pass:{password}")])
        .output()
        .expect("the openssl CLI (Debian package openssl) must be installed to run these tests")
        .status
        .success()
}

/// Like [`openssl_opens`], for `.p12` bytes.
pub fn openssl_opens_bytes(p12: &[u8], password: &str) -> bool {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("device.p12");
    std::fs::write(&file, p12).expect("write the .p12");
    openssl_opens(&file, password)
}
