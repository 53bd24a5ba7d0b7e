//! The checked-in CRDs must be exactly what `portcullis crd` prints.

use std::process::Command;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/portcullis.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&out.stdout) == checked_in,
        "crds/portcullis.yaml is out of date: run `cargo run -- crd > crds/portcullis.yaml`"
    );
}
