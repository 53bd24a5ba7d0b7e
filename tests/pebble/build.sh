#!/usr/bin/env bash
# Build Let's Encrypt's Pebble (a small ACME server for tests) and pebble-challtestsrv
# (its DNS / challenge test server) at the version pinned in go.mod, skipping the build
# when both binaries are newer than go.mod, go.sum and this script.
#
# Output: $PEBBLE_DIR if set, else $CARGO_TARGET_DIR/pebble/ if CARGO_TARGET_DIR is set,
# else tests/pebble/bin/. Prints the directory's absolute path as the last line on stdout.
#
# Env: PEBBLE_FORCE_BUILD=1 rebuilds unconditionally; NICE (default 19) is the niceness
# for the Go compiler, which competes with cargo on small machines.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${PEBBLE_DIR:-}" ]]; then
  out="$PEBBLE_DIR"
elif [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
  out="$CARGO_TARGET_DIR/pebble"
else
  out="$here/bin"
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
tools=(pebble pebble-challtestsrv)

up_to_date() {
  [[ "${PEBBLE_FORCE_BUILD:-0}" == "1" ]] && return 1
  local tool newer
  for tool in "${tools[@]}"; do
    [[ -x "$out/$tool" ]] || return 1
    newer="$(find "$here" -maxdepth 1 \( -name go.mod -o -name go.sum -o -name build.sh \) -newer "$out/$tool" -print -quit)"
    [[ -z "$newer" ]] || return 1
  done
}

if up_to_date; then
  echo "pebble: $out is up to date" >&2
else
  command -v go >/dev/null || { echo "pebble: 'go' not found in PATH (Go >= 1.25 needed)" >&2; exit 1; }
  cd "$here"
  version="$(go list -m -f '{{.Version}}' github.com/letsencrypt/pebble/v2)"
  echo "pebble: building pebble $version into $out (a cold build takes a few minutes)" >&2
  start=$(date +%s)
  tmp="$(mktemp -d "$out/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # -trimpath keeps the binaries identical wherever the repo is checked out; the tool
  # directives in go.mod name both commands.
  CGO_ENABLED=0 GOBIN="$tmp" nice -n "${NICE:-19}" go install -mod=readonly -trimpath -ldflags "-s -w" tool
  for tool in "${tools[@]}"; do
    mv -f "$tmp/$tool" "$out/$tool"
  done
  echo "pebble: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
