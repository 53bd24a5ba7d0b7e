#!/usr/bin/env bash
# Build the envtest control-plane binary, skipping the build when it is
# already newer than every source file (go.mod, go.sum, *.go).
#
# Output: $ENVTEST_BIN if set, else $CARGO_TARGET_DIR/envtest/envtest if
# CARGO_TARGET_DIR is set, else tests/envtest/bin/envtest.
# Prints the binary's absolute path as the last line on stdout.
#
# Env: ENVTEST_FORCE_BUILD=1 rebuilds unconditionally; NICE (default 19) is the
# niceness for the Go compiler, which competes with cargo on small machines.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${ENVTEST_BIN:-}" ]]; then
  out="$ENVTEST_BIN"
elif [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
  out="$CARGO_TARGET_DIR/envtest/envtest"
else
  out="$here/bin/envtest"
fi
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"

up_to_date() {
  [[ -x "$out" ]] || return 1
  [[ "${ENVTEST_FORCE_BUILD:-0}" == "1" ]] && return 1
  local newer
  newer="$(find "$here" -maxdepth 1 \( -name '*.go' -o -name go.mod -o -name go.sum -o -name build.sh \) -newer "$out" -print -quit)"
  [[ -z "$newer" ]]
}

if up_to_date; then
  echo "envtest: $out is up to date" >&2
else
  command -v go >/dev/null || { echo "envtest: 'go' not found in PATH (Go >= 1.24 needed)" >&2; exit 1; }
  cd "$here"
  # Stamp the Kubernetes version the way the real release build does, so
  # /version reports e.g. v1.34.4 instead of v0.0.0-master.
  kver="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
  kmajor="${kver#v}"; kmajor="${kmajor%%.*}"
  kminor="${kver#v*.}"; kminor="${kminor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kver -X $pkg.gitMajor=$kmajor -X $pkg.gitMinor=$kminor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "envtest: building $out (kube-apiserver $kver; a cold build takes several minutes)" >&2
  start=$(date +%s)
  tmp="$out.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  # -trimpath keeps the binary identical wherever the repo is checked out.
  CGO_ENABLED=0 nice -n "${NICE:-19}" go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$tmp" .
  mv -f "$tmp" "$out"
  echo "envtest: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
