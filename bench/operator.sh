#!/usr/bin/env bash
# The operator on a real API server (tests/envtest: kube-apiserver v1.34 + etcd + garbage
# collector on 127.0.0.1), measured; prints the Markdown table of BENCHMARKS.md `## Operator`.
#
#   bench/operator.sh
#
# What it does: builds the envtest harness (cached) and the release operator binary, then
# runs the ignored test `operator_benchmark` (tests/operator.rs), which starts its own
# control plane and the operator binary (`portcullis operator`, role all) and measures:
#   - apply a ClientIdentity -> its Secret exists (and -> Ready), one at a time, 10 times;
#   - `revoked: true` -> a new handshake is refused, and an open WebSocket (through the data
#     plane, with the device certificate) is closed, 5 times;
#   - BENCH_IDENTITIES (500) ClientIdentities applied 16 at a time -> all have Secrets / are
#     Ready; the operator's RSS (/proc/PID/status VmRSS, VmHWM);
#   - the operator's CPU (utime+stime from /proc/PID/stat) over BENCH_IDLE_SECS (30) idle
#     seconds after that (no polling loops: should be ~0).
# Clients poll every 5 ms, so latencies are accurate to about that.
#
# Knobs (environment): BENCH_IDENTITIES (500), BENCH_IDLE_SECS (30), BENCH_NO_BUILD=1 uses
# the existing target/release/portcullis, PORTCULLIS_BIN=PATH measures another binary.
# Operator log: target/tmp/operator-bench.log.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

CARGO_TARGET_DIR="$ROOT/target" tests/envtest/build.sh >/dev/null
if [[ -z "${PORTCULLIS_BIN:-}" ]]; then
  if [[ "${BENCH_NO_BUILD:-0}" != "1" ]]; then
    cargo build --release --bin portcullis
  fi
  export PORTCULLIS_BIN="$ROOT/target/release/portcullis"
fi

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "operator: $PORTCULLIS_BIN" >&2
cargo test --test operator -- operator_benchmark --exact --ignored --nocapture --test-threads=1
