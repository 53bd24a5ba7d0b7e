//! The container image, built the way `make image` and the release build it: the Dockerfile
//! packages a prebuilt static binary, so the build needs no registry and no network. Proven
//! by building it with podman from a static musl build of this tree and inspecting the result
//! without running a container (the sandbox may refuse `podman run`): the entrypoint and the
//! unprivileged user, one layer holding only the binary, and that binary, copied out of the
//! saved image, runs `--version` with no dynamic loader.
//!
//! Needs podman, musl-gcc (Debian: podman, musl-tools) and the Rust target
//! x86_64-unknown-linux-musl; `.ci/run` installs them. The static build has its own target
//! directory under the cargo target directory's tmp/, kept between runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
const EXPECTED_USER: &str = "65532:65532";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(what: &str, command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A static musl build of the `portcullis` binary (debug profile without debug info: the
/// image check needs the binary, not its speed).
fn static_binary() -> PathBuf {
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cc_var = format!("CC_{}", MUSL_TARGET.replace('-', "_"));
    run(
        "static musl build (needs musl-tools and `rustup target add x86_64-unknown-linux-musl`)",
        Command::new(cargo)
            .current_dir(manifest_dir())
            .args([
                "build",
                "--locked",
                "--target",
                MUSL_TARGET,
                "--bin",
                "portcullis",
            ])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env(cc_var, "musl-gcc")
            .env("CARGO_PROFILE_DEV_DEBUG", "0")
            .env("CARGO_PROFILE_DEV_STRIP", "symbols"),
    );
    target_dir.join(MUSL_TARGET).join("debug/portcullis")
}

/// The one file a single-layer image holds, extracted from `podman save`'s docker archive.
fn binary_from_saved_image(image: &str, dir: &Path) -> PathBuf {
    let archive = dir.join("image.tar");
    run(
        "podman save",
        Command::new("podman")
            .args(["save", "--format", "docker-archive", "-o"])
            .arg(&archive)
            .arg(image),
    );
    let unpacked = dir.join("archive");
    std::fs::create_dir_all(&unpacked).expect("mkdir");
    run(
        "untar the image",
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&unpacked),
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(unpacked.join("manifest.json")).expect("manifest.json in the archive"),
    )
    .expect("manifest.json parses");
    let layers = manifest[0]["Layers"]
        .as_array()
        .expect("Layers in manifest.json");
    assert_eq!(
        layers.len(),
        1,
        "one layer (the binary) on scratch: {layers:?}"
    );
    let layer = unpacked.join(layers[0].as_str().expect("layer path"));
    let listing = run("list the layer", Command::new("tar").arg("-tf").arg(&layer));
    let files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_owned())
        .filter(|l| !l.is_empty() && !l.ends_with('/'))
        .collect();
    assert_eq!(files, ["portcullis"], "the layer holds only the binary");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("mkdir");
    run(
        "untar the layer",
        Command::new("tar")
            .arg("-xf")
            .arg(&layer)
            .arg("-C")
            .arg(&rootfs),
    );
    rootfs.join("portcullis")
}

#[test]
fn image_packages_the_static_binary_offline() {
    let binary = static_binary();
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("context");
    std::fs::create_dir_all(context.join("dist/amd64")).expect("mkdir");
    std::fs::copy(
        manifest_dir().join("Dockerfile"),
        context.join("Dockerfile"),
    )
    .expect("Dockerfile");
    std::fs::copy(&binary, context.join("dist/amd64/portcullis")).expect("copy the binary");

    let image = format!("localhost/portcullis-image-test:{}", std::process::id());
    // --pull=never: FROM scratch must not need a registry.
    run(
        "podman build",
        Command::new("podman")
            .args([
                "build",
                "--pull=never",
                "--platform",
                "linux/amd64",
                "-t",
                &image,
            ])
            .arg(&context),
    );
    let removed = remove_on_drop(&image);

    let inspect = run(
        "podman image inspect",
        Command::new("podman").args(["image", "inspect", &image]),
    );
    let inspected: Value = serde_json::from_slice(&inspect.stdout).expect("inspect JSON");
    let config = &inspected[0]["Config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/portcullis"]),
        "{config}"
    );
    assert_eq!(config["Cmd"], serde_json::json!(["operator"]), "{config}");
    assert_eq!(
        config["User"], EXPECTED_USER,
        "runs unprivileged, as the chart's runAsUser"
    );
    assert_eq!(inspected[0]["Architecture"], "amd64");
    assert_eq!(inspected[0]["Os"], "linux");

    let extracted = binary_from_saved_image(&image, work.path());
    let headers = run(
        "readelf",
        Command::new("readelf")
            .arg("--program-headers")
            .arg(&extracted),
    );
    let headers = String::from_utf8_lossy(&headers.stdout);
    assert!(
        !headers.contains("INTERP"),
        "the image's binary must be static (no dynamic loader on scratch):\n{headers}"
    );
    let version = run(
        "the image's binary --version",
        Command::new(&extracted).arg("--version"),
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
    drop(removed);
}

/// Removes the test image when the test ends, pass or fail.
fn remove_on_drop(image: &str) -> impl Drop + '_ {
    struct Remove<'a>(&'a str);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = Command::new("podman")
                .args(["rmi", "--force", self.0])
                .output();
        }
    }
    Remove(image)
}
