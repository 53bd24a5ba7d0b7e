#!/usr/bin/env bash
# Install the Helm CLI from the Go module proxy (never a download from a website):
#   go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION
# into a cache directory, skipping the build when the pinned version is already there.
#
# Output: $HELM_BIN if set, else $CARGO_TARGET_DIR/helm/<version>/helm if CARGO_TARGET_DIR
# is set, else <repo>/target/helm/<version>/helm. Prints the binary's absolute path as the
# last line on stdout (everything else goes to stderr).
#
# Env: HELM_VERSION (default below), NICE (default 19: the Go compiler competes with cargo
# on small machines), HELM_FORCE_BUILD=1 rebuilds.
set -euo pipefail

version="${HELM_VERSION:-v3.22.0}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
if [[ -n "${HELM_BIN:-}" ]]; then
  out="$HELM_BIN"
else
  out="${CARGO_TARGET_DIR:-$repo/target}/helm/$version/helm"
fi
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"

if [[ -x "$out" && "${HELM_FORCE_BUILD:-0}" != "1" ]] \
  && "$out" version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
  echo "helm: $out ($version) is up to date" >&2
else
  command -v go >/dev/null || { echo "helm: 'go' not found in PATH (Go >= 1.24 needed)" >&2; exit 1; }
  echo "helm: go install helm.sh/helm/v3/cmd/helm@$version (a cold build takes minutes)" >&2
  start=$(date +%s)
  gobin="$(mktemp -d "$(dirname "$out")/gobin.XXXXXX")"
  trap 'rm -rf "$gobin"' EXIT
  # Stamp what Helm's release build (its Makefile) stamps: the version (otherwise
  # `helm version` says v3.x-dev and the up-to-date check above never matches) and the
  # default Kubernetes version of `helm template`/`lint`, taken from the client-go Helm
  # builds against (otherwise v1.20, which fails a chart's kubeVersion constraint).
  gomod="$(cd "$gobin" && GO111MODULE=on go mod download -json "helm.sh/helm/v3@$version" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
  clientgo="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")"
  kminor="${clientgo#v0.}"; kminor="${kminor%%.*}"
  [[ "$kminor" =~ ^[0-9]+$ ]] || { echo "helm: cannot read k8s.io/client-go's version from ${gomod:-the go.mod of helm $version}" >&2; exit 1; }
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kminor"
  done
  # Run from a neutral directory so no go.mod/go.work around the repo interferes.
  (cd "$gobin" && GOBIN="$gobin" GOFLAGS=-mod=mod GO111MODULE=on CGO_ENABLED=0 \
    nice -n "${NICE:-19}" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$version")
  mv -f "$gobin/helm" "$out"
  echo "helm: installed in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
