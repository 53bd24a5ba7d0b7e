#!/usr/bin/env bash
# Install actionlint from the Go module proxy (never a download from a website):
#   go install github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION
# into a cache directory, skipping the build when the pinned version is already there.
#
# Output: $ACTIONLINT_BIN if set, else $CARGO_TARGET_DIR/actionlint/<version>/actionlint if
# CARGO_TARGET_DIR is set, else <repo>/target/actionlint/<version>/actionlint. Prints the
# binary's absolute path as the last line on stdout (everything else goes to stderr).
#
# Env: ACTIONLINT_VERSION (default below), NICE (default 19), ACTIONLINT_FORCE_BUILD=1 rebuilds.
set -euo pipefail

version="${ACTIONLINT_VERSION:-v1.7.12}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
if [[ -n "${ACTIONLINT_BIN:-}" ]]; then
  out="$ACTIONLINT_BIN"
else
  out="${CARGO_TARGET_DIR:-$repo/target}/actionlint/$version/actionlint"
fi
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"

if [[ -x "$out" && "${ACTIONLINT_FORCE_BUILD:-0}" != "1" ]] \
  && "$out" -version 2>/dev/null | head -n1 | grep -qx "${version#v}"; then
  echo "actionlint: $out ($version) is up to date" >&2
else
  command -v go >/dev/null || { echo "actionlint: 'go' not found in PATH (Go >= 1.24 needed)" >&2; exit 1; }
  echo "actionlint: go install github.com/rhysd/actionlint/cmd/actionlint@$version" >&2
  start=$(date +%s)
  gobin="$(mktemp -d "$(dirname "$out")/gobin.XXXXXX")"
  trap 'rm -rf "$gobin"' EXIT
  # Stamp the version as actionlint's release build does (otherwise `-version` prints the
  # module version only when built from a module, and the check above could miss).
  ldflags="-s -w -X github.com/rhysd/actionlint.version=${version#v}"
  # Run from a neutral directory so no go.mod/go.work around the repo interferes.
  (cd "$gobin" && GOBIN="$gobin" GOFLAGS=-mod=mod GO111MODULE=on CGO_ENABLED=0 \
    nice -n "${NICE:-19}" go install -trimpath -ldflags "$ldflags" \
    "github.com/rhysd/actionlint/cmd/actionlint@$version")
  mv -f "$gobin/actionlint" "$out"
  echo "actionlint: installed in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
