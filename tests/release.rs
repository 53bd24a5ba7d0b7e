//! The release pipeline, checked here so that a broken workflow fails in the test suite and
//! not on the first tag: actionlint on `.github/workflows/`, and the names that must agree
//! across the release workflow, the Dockerfile, the Makefile, the chart and the README
//! (targets, image arch, image path, chart path). Nothing is published from here; the
//! workflow runs for real on a tag.
//!
//! actionlint comes from the Go module proxy (`go install
//! github.com/rhysd/actionlint/cmd/actionlint@…`, tests/release/install-actionlint.sh),
//! cached under the cargo target directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_yaml::Value;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(manifest_dir().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn release_workflow() -> Value {
    yaml(".github/workflows/release.yml")
}

/// The release workflow's `version` job script (the one place the pushed paths are made).
fn version_script(workflow: &Value) -> String {
    workflow["jobs"]["version"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_str() == Some("check"))
        .expect("the version job's `check` step")["run"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `name="value"` assigned in a shell script (the first assignment).
fn shell_assignment(script: &str, name: &str) -> String {
    let prefix = format!("{name}=\"");
    let line = script
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {name}=\"…\" in the version script"));
    line[prefix.len()..].trim_end_matches('"').to_owned()
}

/// The chart's default image repository, split into (owner, name) of `ghcr.io/owner/name`.
fn chart_image() -> (String, String) {
    let values = yaml("helm/portcullis/values.yaml");
    let repository = values["image"]["repository"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = repository.split('/').collect();
    assert_eq!(
        parts.len(),
        3,
        "values.yaml image.repository {repository}: want ghcr.io/<owner>/portcullis"
    );
    assert_eq!(parts[0], "ghcr.io", "{repository}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// actionlint accepts every workflow (syntax, expressions, job outputs, action inputs,
/// permissions; and the `run:` scripts through shellcheck when it is installed).
#[test]
fn workflows_pass_actionlint() {
    let started = Instant::now();
    let out = Command::new(manifest_dir().join("tests/release/install-actionlint.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/release/install-actionlint.sh (needs Go and the Go module proxy)");
    assert!(out.status.success(), "install-actionlint.sh failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = PathBuf::from(stdout.lines().last().unwrap().trim());
    eprintln!(
        "actionlint: {} ready after {:.1?}",
        bin.display(),
        started.elapsed()
    );

    let workflows: Vec<PathBuf> = std::fs::read_dir(manifest_dir().join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    let names: BTreeSet<String> = workflows
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains("release.yml") && names.contains("ci.yml"),
        "{names:?}"
    );
    let out = Command::new(&bin)
        .arg("-no-color")
        .args(&workflows)
        .current_dir(manifest_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image the release pushes is the chart's default image (GHCR paths are lowercase), the
/// chart goes where the README installs it from, and the version check covers the tag,
/// Cargo.toml and Chart.yaml (whose agreement tests/helm.rs checks).
#[test]
fn published_paths_match_the_chart_and_the_readme() {
    let (owner, name) = chart_image();
    assert_eq!(owner, owner.to_lowercase(), "GHCR paths are lowercase");
    assert_eq!(name, name.to_lowercase(), "GHCR paths are lowercase");

    let workflow = release_workflow();
    let script = version_script(&workflow);
    // The workflow lowercases the owner it runs under ...
    assert!(
        script.contains(r#"owner="${OWNER,,}""#),
        "the version script lowercases the owner:\n{script}"
    );
    assert_eq!(
        workflow["jobs"]["version"]["steps"][1]["env"]["OWNER"].as_str(),
        Some("${{ github.repository_owner }}")
    );
    // ... and pushes ghcr.io/<owner>/portcullis: for the chart's owner, the chart's image.
    let image = shell_assignment(&script, "image").replace("${owner}", &owner);
    assert_eq!(image, format!("ghcr.io/{owner}/{name}"));
    // The workflow refuses to publish when values.yaml names another image (a fork).
    assert!(
        script.contains(r#"[[ "$repository" == "$image" ]]"#),
        "{script}"
    );
    for check in [
        r#"[[ "$TAG" == "v${crate}" ]]"#,
        r#"[[ "$chart_version" == "$crate" ]]"#,
        r#"[[ "$app_version" == "$crate" ]]"#,
    ] {
        assert!(script.contains(check), "version check {check} missing");
    }

    // The image job pushes exactly that image at the crate version (= the chart's default tag).
    let push = build_push_step(&workflow);
    assert_eq!(
        push["with"]["tags"].as_str(),
        Some("${{ needs.version.outputs.image }}:${{ needs.version.outputs.version }}")
    );
    assert_eq!(push["with"]["push"].as_bool(), Some(true));

    // The chart: oci://ghcr.io/<owner>/charts, installed by the README from there.
    assert!(
        script.contains(r#"echo "charts=oci://ghcr.io/${owner}/charts""#),
        "{script}"
    );
    let readme = read("README.md");
    let install = format!(
        "helm install portcullis oci://ghcr.io/{owner}/charts/portcullis --version {}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(readme.contains(&install), "README lacks `{install}`");
}

/// The release builds real rustc targets, one per image arch in the Dockerfile's table, for
/// exactly the platforms buildx assembles; `make static`'s default target is among them.
#[test]
fn release_targets_match_rustc_and_the_dockerfile() {
    let workflow = release_workflow();
    let matrix: BTreeMap<String, String> =
        workflow["jobs"]["binaries"]["strategy"]["matrix"]["include"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["target"].as_str().unwrap().to_owned(),
                    e["arch"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
    let wanted: BTreeSet<&str> = [
        "x86_64-unknown-linux-musl",
        "aarch64-unknown-linux-musl",
        "armv7-unknown-linux-musleabihf",
    ]
    .into();
    assert_eq!(
        matrix.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        wanted
    );

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "target-list"])
        .output()
        .expect("rustc --print target-list");
    assert!(out.status.success());
    let known: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    for target in matrix.keys() {
        assert!(known.contains(target), "{target} is not a rustc target");
    }

    // The Dockerfile's table: `#   image-arch <arch> = <target>`.
    let dockerfile = read("Dockerfile");
    let table: BTreeMap<String, String> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("#   image-arch "))
        .map(|l| {
            let (arch, target) = l.split_once(" = ").unwrap();
            (target.trim().to_owned(), arch.trim().to_owned())
        })
        .collect();
    assert_eq!(
        table, matrix,
        "Dockerfile image-arch table vs the release matrix"
    );
    assert!(
        dockerfile.contains("COPY dist/${TARGETARCH}${TARGETVARIANT}/portcullis /portcullis"),
        "the Dockerfile copies dist/<arch>/portcullis"
    );
    for forbidden in ["armv7l", "cargo ", "rustup", "\nRUN "] {
        assert!(
            !dockerfile.contains(forbidden),
            "the Dockerfile only packages a prebuilt binary ({forbidden:?})"
        );
    }

    // buildx platforms: linux/<TARGETARCH>[/<TARGETVARIANT>] for each arch.
    let platform_arch = |p: &str| {
        let mut it = p.trim().strip_prefix("linux/").unwrap().split('/');
        let arch = it.next().unwrap().to_owned();
        arch + it.next().unwrap_or("")
    };
    let push = build_push_step(&workflow);
    let platforms: BTreeSet<String> = push["with"]["platforms"]
        .as_str()
        .unwrap()
        .split(',')
        .map(platform_arch)
        .collect();
    assert_eq!(platforms, matrix.values().cloned().collect::<BTreeSet<_>>());

    let makefile = read("Makefile");
    let default = makefile
        .lines()
        .find_map(|l| l.strip_prefix("MUSL_TARGET ?="))
        .expect("Makefile MUSL_TARGET")
        .trim();
    assert!(matrix.contains_key(default), "make static's {default}");
}

/// The release workflow's image job step that builds and pushes the image.
fn build_push_step(workflow: &Value) -> &Value {
    workflow["jobs"]["image"]["steps"]
        .as_sequence()
        .expect("image job steps")
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("docker/build-push-action@"))
        })
        .expect("a docker/build-push-action step")
}

/// The README's Kubernetes quickstart and air-gapped path use exactly what the release
/// publishes: the chart at the workflow's OCI path, the image the workflow pushes (= the
/// chart's default) at the crate version, and the release binaries by the names and
/// SHA256SUMS file the workflow attaches. No other ghcr.io path appears anywhere a user reads.
#[test]
fn readme_quickstart_uses_the_published_artifacts() {
    let (owner, name) = chart_image();
    let version = env!("CARGO_PKG_VERSION");
    let workflow = release_workflow();
    let script = version_script(&workflow);
    let image = shell_assignment(&script, "image").replace("${owner}", &owner);
    let charts = format!("oci://ghcr.io/{owner}/charts");
    assert!(script.contains(r#"echo "charts=oci://ghcr.io/${owner}/charts""#));
    let chart = format!("{charts}/portcullis");

    let readme = read("README.md");
    for command in [
        format!("helm install portcullis {chart} --version {version}"),
        format!("helm pull {chart} --version {version}"),
        format!("podman pull {image}:{version}"),
        format!("podman save {image}:{version} -o portcullis-image.tar"),
        "sudo k3s ctr images import portcullis-image.tar".to_owned(),
        format!("podman save {image}:{version} | sudo k3s ctr images import -"),
        format!("helm install portcullis ./portcullis-{version}.tgz"),
    ] {
        assert!(readme.contains(&command), "README lacks `{command}`");
    }

    // Release binaries: the names the workflow gives them and its SHA256SUMS file.
    let jobs = serde_yaml::to_string(&workflow["jobs"]).unwrap();
    assert!(
        jobs.contains(r#"name="portcullis-${VERSION}-${TARGET}""#),
        "binary name in the workflow"
    );
    assert!(jobs.contains("cat ./*.sha256 > SHA256SUMS"), "SHA256SUMS");
    for line in [
        format!("v={version} t=x86_64-unknown-linux-musl"),
        format!("base=https://github.com/{owner}/{name}/releases/download/v$v"),
        r#"curl -fL -O "$base/portcullis-$v-$t" -O "$base/SHA256SUMS""#.to_owned(),
        "sha256sum --ignore-missing -c SHA256SUMS".to_owned(),
        "portcullis enroll phone --namespace home-assistant".to_owned(),
        "portcullis identity export phone --namespace home-assistant -o phone.p12".to_owned(),
    ] {
        assert!(readme.contains(&line), "README lacks `{line}`");
    }
    for target in workflow["jobs"]["binaries"]["strategy"]["matrix"]["include"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["target"].as_str().unwrap())
    {
        assert!(readme.contains(target), "README names the {target} binary");
    }

    // Every ghcr.io path a user reads is the published image or chart.
    for file in [
        "README.md",
        "helm/portcullis/README.md",
        "helm/portcullis/values.yaml",
    ] {
        let text = read(file);
        for (at, _) in text.match_indices("ghcr.io/") {
            let path: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                .collect();
            let path = path.trim_end_matches('.');
            assert!(
                path == image || path == chart.trim_start_matches("oci://"),
                "{file} names {path}: want {image} or {chart}"
            );
        }
    }
}
