//! The file format and the standalone paths, without a cluster.

use k8s_openapi::ByteString;

use super::seal::open;
use super::*;
use crate::pki::Ca;

fn password(text: &str) -> Password {
    Password::new(text.to_owned())
}

fn archive_with(files: &[(&str, &[u8])]) -> Archive {
    let files = files
        .iter()
        .map(|(rel, data)| {
            let file = SavedFile {
                secret: rel.ends_with(".key"),
                data: ByteString(data.to_vec()),
            };
            (rel.to_string(), file)
        })
        .collect();
    Archive::new(Contents::Standalone(StandaloneContents {
        files,
        config: None,
    }))
}

fn with_ca(extra: &[(&str, &[u8])]) -> Archive {
    let ca = Ca::generate("Backup Test CA").expect("CA");
    let mut files: Vec<(&str, &[u8])> = vec![
        ("ca/tls.crt", ca.cert_pem().as_bytes()),
        ("ca/tls.key", ca.key_pem().as_bytes()),
    ];
    files.extend_from_slice(extra);
    // The borrow of `ca` ends here: the archive owns copies.
    archive_with(&files)
}

fn standalone(archive: &Archive) -> &StandaloneContents {
    match &archive.contents {
        Contents::Standalone(c) => c,
        Contents::Kubernetes(_) => unreachable!("a standalone archive"),
    }
}

#[test]
fn a_file_roundtrips_with_the_right_password_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.age");
    write_archive(&path, &with_ca(&[]), &password("correct horse battery")).expect("write");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let back = read_archive(&path, &password("correct horse battery")).expect("read");
    assert!(standalone(&back).files.contains_key("ca/tls.key"));

    let wrong = read_archive(&path, &password("incorrect horse"))
        .unwrap_err()
        .to_string();
    assert!(
        wrong.contains("wrong password") && wrong.contains("b.age"),
        "{wrong}"
    );
}

#[test]
fn damaged_and_foreign_files_are_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.age");
    write_archive(&path, &with_ca(&[]), &password("correct horse battery")).expect("write");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x01;
    let damaged = open(&bytes, &password("correct horse battery")).unwrap_err();
    assert!(damaged.contains("damaged"), "{damaged}");
    bytes.truncate(bytes.len() / 2);
    let truncated = open(&bytes, &password("correct horse battery")).unwrap_err();
    assert!(truncated.contains("damaged"), "{truncated}");
    let foreign = open(b"just some text\n", &password("correct horse battery")).unwrap_err();
    assert!(foreign.contains("not a Portcullis backup"), "{foreign}");
}

#[test]
fn restore_writes_the_layout_with_modes_and_refuses_a_ca_or_escaping_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("state");
    let archive = with_ca(&[
        ("identities/phone/tls.key", b"k"),
        ("crl.pem", b"c"),
        ("acme/accounts/0123456789abcdef.json", b"{}"),
        ("routes/ha/acme/certificate.pem", b"p"),
    ]);
    restore_standalone(standalone(&archive), &target, None).expect("restore");
    // ACME accounts and certificates are part of the layout.
    assert!(target.join("acme/accounts/0123456789abcdef.json").exists());
    assert!(target.join("routes/ha/acme/certificate.pem").exists());
    let mode = |rel: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(target.join(rel)).unwrap().permissions(),
        ) & 0o777
    };
    assert_eq!(mode("ca/tls.key"), 0o600);
    assert_eq!(mode("ca/tls.crt"), 0o644);
    assert_eq!(mode("identities/phone/tls.key"), 0o600);
    // No staging directory is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["state"]);

    let again = restore_standalone(standalone(&archive), &target, None)
        .unwrap_err()
        .to_string();
    assert!(
        again.contains("already holds a CA") && again.contains("ca/tls.crt"),
        "{again}"
    );

    for bad in [
        "../outside",
        "identities/../../x",
        "/etc/passwd",
        "enrollments/x",
        "ca/.hidden",
    ] {
        let archive = with_ca(&[(bad, b"x")]);
        let fresh = dir.path().join("fresh");
        let e = restore_standalone(standalone(&archive), &fresh, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the state directory"), "{bad}: {e}");
        assert!(!fresh.exists(), "{bad}: nothing is written");
    }
}

#[test]
fn a_non_empty_target_or_a_missing_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("state");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("notes.txt"), "x").unwrap();
    let e = restore_standalone(standalone(&with_ca(&[])), &target, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty") && e.contains("notes.txt"), "{e}");

    let no_ca = archive_with(&[("crl.pem", b"c")]);
    let e = restore_standalone(standalone(&no_ca), &dir.path().join("other"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no CA"), "{e}");
}
