use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use super::*;
use crate::pki::{Ca, export_pkcs12, generate_password};
use crate::resources::{KeyAlgorithm, Pkcs12Profile};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    names.sort();
    names
}

#[test]
fn atomic_write_sets_mode_and_leaves_no_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a/b/secret");
    write_atomic(&path, b"one", 0o600).unwrap();
    write_atomic(&path, b"two", 0o600).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"two");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&tmp.path().join("a")), 0o700);
    assert_eq!(entries(&tmp.path().join("a/b")), vec!["secret"]);
    write_atomic(&path, b"three", 0o644).unwrap();
    assert_eq!(mode(&path), 0o644);
}

#[test]
fn write_below_a_regular_file_is_a_clear_io_error() {
    // Tests run as root, where permission bits do not stop writes; a file in the way does.
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("state"), b"not a directory").unwrap();
    let err = write_atomic(&tmp.path().join("state/ca/tls.key"), b"k", 0o600).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("state/ca") && msg.contains("where a directory is needed"),
        "{msg}"
    );
}

#[test]
fn ca_is_created_once_then_loaded_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::new(tmp.path().join("state"));
    let (ca, created) = state.load_or_create_ca().unwrap();
    assert!(created);
    assert!(
        ca.info()
            .common_name
            .as_deref()
            .unwrap_or("")
            .starts_with("Portcullis CA ")
    );
    assert_eq!(mode(&state.ca_key_path()), 0o600);
    assert_eq!(mode(&state.ca_cert_path()), 0o644);
    assert_eq!(
        entries(state.root()),
        vec!["ca"],
        "no staging directory left behind"
    );

    let (again, created) = state.load_or_create_ca().unwrap();
    assert!(!created);
    assert_eq!(again.cert_der(), ca.cert_der());
    assert_eq!(again.key_pem(), ca.key_pem());
}

#[test]
fn ca_is_created_in_an_existing_ca_dir_with_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::new(tmp.path());
    write_atomic(&tmp.path().join("ca/README"), b"mine", 0o644).unwrap();
    let (ca, created) = state.load_or_create_ca().unwrap();
    assert!(created);
    assert_eq!(
        state.load_or_create_ca().unwrap().0.cert_der(),
        ca.cert_der()
    );
    assert_eq!(
        entries(&tmp.path().join("ca")),
        vec!["README", "tls.crt", "tls.key"]
    );
}

#[test]
fn one_missing_ca_file_is_corrupt_never_regenerated() {
    for missing in ["tls.crt", "tls.key"] {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        state.load_or_create_ca().unwrap();
        let gone = tmp.path().join("ca").join(missing);
        fs::remove_file(&gone).unwrap();
        let err = state.load_or_create_ca().unwrap_err();
        let Error::Corrupt { path, reason } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(path, &gone);
        assert!(reason.contains("restore it from a backup"), "{reason}");
        assert!(!gone.exists(), "nothing regenerated");
    }
}

#[test]
fn garbage_or_foreign_ca_key_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::new(tmp.path());
    state.load_or_create_ca().unwrap();
    fs::write(state.ca_key_path(), b"garbage").unwrap();
    let err = state.load_or_create_ca().unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, .. } if path == &state.ca_key_path()),
        "{err}"
    );

    let other = Ca::generate("other").unwrap();
    fs::write(state.ca_key_path(), other.key_pem()).unwrap();
    let err = state.load_or_create_ca().unwrap_err().to_string();
    assert!(
        err.contains("tls.key is not usable") && err.contains("does not match"),
        "{err}"
    );

    fs::write(state.ca_cert_path(), b"-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    let err = state.load_or_create_ca().unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, .. } if path == &state.ca_cert_path()),
        "{err}"
    );
}

#[test]
fn identity_roundtrip_with_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::new(tmp.path());
    assert!(state.load_identity("alice").unwrap().is_none());
    let (ca, _) = state.load_or_create_ca().unwrap();
    let cert = ca
        .issue_client("alice", KeyAlgorithm::EcdsaP256, Duration::from_secs(60))
        .unwrap();
    let pw = generate_password();
    let p12 = export_pkcs12(&cert, ca.cert_der(), "alice", &pw, Pkcs12Profile::Legacy).unwrap();
    state
        .save_identity("alice", &cert, ca.cert_pem(), &p12, &pw)
        .unwrap();

    let dir = state.identity_dir("alice");
    for (file, want) in [
        ("tls.key", 0o600),
        ("tls.crt", 0o644),
        ("ca.crt", 0o644),
        ("keystore.p12", 0o600),
        ("keystore.p12.password", 0o600),
    ] {
        assert_eq!(mode(&dir.join(file)), want, "{file}");
    }
    assert_eq!(
        fs::read_to_string(dir.join("keystore.p12.password")).unwrap(),
        pw
    );
    let loaded = state.load_identity("alice").unwrap().unwrap();
    assert_eq!(loaded.info, cert.info);
    assert_eq!(loaded.key_pem, cert.key_pem);

    let other = ca
        .issue_client("alice", KeyAlgorithm::EcdsaP256, Duration::from_secs(60))
        .unwrap();
    fs::write(dir.join("tls.key"), &other.key_pem).unwrap();
    let err = state.load_identity("alice").unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, .. } if path == &dir.join("tls.key")),
        "{err}"
    );
    fs::remove_file(dir.join("tls.key")).unwrap();
    assert!(matches!(
        state.load_identity("alice"),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn route_cert_roundtrip_and_names_cannot_escape() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::new(tmp.path());
    let (ca, _) = state.load_or_create_ca().unwrap();
    let cert = ca
        .issue_server(&["ha.example.test".into()], Duration::from_secs(60))
        .unwrap();
    state.save_route_cert("ha", &cert).unwrap();
    assert_eq!(
        state.load_route_cert("ha").unwrap().unwrap().info,
        cert.info
    );
    assert!(state.load_route_cert("other").unwrap().is_none());
    for bad in ["", ".", "..", "../x", "a/b", ".hidden"] {
        assert!(
            matches!(state.save_route_cert(bad, &cert), Err(Error::Config(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn cookie_keys_create_rotate_and_refuse_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::new(tmp.path());
    let first = state.load_or_create_cookie_keys().unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(mode(&state.cookie_keys_path()), 0o600);
    assert_eq!(state.load_or_create_cookie_keys().unwrap(), first);

    let second = state.rotate_cookie_keys().unwrap();
    assert_eq!((second.len(), second[1]), (2, first[0]));
    let third = state.rotate_cookie_keys().unwrap();
    assert_eq!((third.len(), third[1]), (2, second[0]));
    assert_eq!(state.load_or_create_cookie_keys().unwrap(), third);

    fs::write(state.cookie_keys_path(), b"bm90IDMyIGJ5dGVz\n").unwrap();
    let err = state.load_or_create_cookie_keys().unwrap_err().to_string();
    assert!(err.contains("line 1 is not base64 of 32 bytes"), "{err}");
    assert_eq!(
        fs::read(state.cookie_keys_path()).unwrap(),
        b"bm90IDMyIGJ5dGVz\n",
        "kept as is"
    );
}

#[test]
fn revocation_ledger_roundtrip() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::new(tmp.path());
    assert!(state.load_revoked().unwrap().is_empty());
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let list = vec![RevokedSerial {
        serial_hex: "0abc".into(),
        revoked_at: at,
    }];
    state.save_revoked(&list).unwrap();
    assert_eq!(state.load_revoked().unwrap(), list);
    fs::write(
        state.revoked_path(),
        b"revoked: [{serial: 1, revokedAt: yesterday}]",
    )
    .unwrap();
    assert!(matches!(state.load_revoked(), Err(Error::Corrupt { .. })));

    let (ca, _) = state.load_or_create_ca().unwrap();
    state
        .write_crl(&ca.crl(&list, 1, Duration::from_secs(60)).unwrap())
        .unwrap();
    assert!(
        fs::read_to_string(state.crl_path())
            .unwrap()
            .starts_with("-----BEGIN X509 CRL")
    );
}
