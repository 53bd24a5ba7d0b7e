#!/usr/bin/env bash
# Two builds of Portcullis side by side, on the same machine, state and certificates.
#
#   bench/ab.sh A_BINARY B_BINARY
#   e.g. the glibc release build against the static musl one:
#   bench/ab.sh target/release/portcullis target/x86_64-unknown-linux-musl/release/portcullis
#
# Memory: each binary alone, fresh, REPEATS times taking turns: idle RSS, RSS after full
# mTLS handshakes, RSS with WS_COUNT open WebSockets.
# Speed: both up, PAIRS pairs of PAIR_DURATION windows taking turns (keep-alive requests,
# then handshakes), CPU per operation from /proc as in bench/run.sh; the ratio within each
# pair cancels the machine's drift. Medians are printed as a Markdown table.
#
# Knobs (environment): BENCH_A_LABEL (a), BENCH_B_LABEL (b), BENCH_LOADGEN (default: the
# release build of bench/loadgen.rs in the cargo target dir), and as for bench/run.sh:
# BENCH_REPEATS (3), BENCH_PAIRS (12), BENCH_PAIR_DURATION (4s), BENCH_DURATION (5s),
# BENCH_HS_CONCURRENCY (8), BENCH_REQ_CONNECTIONS (16), BENCH_WS_COUNT (1000),
# BENCH_WS_HOLD (3s), BENCH_MAX_LOAD (1.5), BENCH_LOAD_WAIT (300), BENCH_PORT_BASE (18450),
# BENCH_KEEP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 2 ] || { echo "usage: bench/ab.sh A_BINARY B_BINARY" >&2; exit 2; }
A_LABEL=${BENCH_A_LABEL:-a} B_LABEL=${BENCH_B_LABEL:-b}
REPEATS=${BENCH_REPEATS:-3}
DURATION=${BENCH_DURATION:-5s}
HS_CONC=${BENCH_HS_CONCURRENCY:-8}
REQ_CONNS=${BENCH_REQ_CONNECTIONS:-16}
PAIRS=${BENCH_PAIRS:-12}
PAIR_DURATION=${BENCH_PAIR_DURATION:-4s}
WS_COUNT=${BENCH_WS_COUNT:-1000}
WS_HOLD=${BENCH_WS_HOLD:-3s}
MAX_LOAD=${BENCH_MAX_LOAD:-1.5}
LOAD_WAIT=${BENCH_LOAD_WAIT:-300}
BASE=${BENCH_PORT_BASE:-18450}
UP_PORT=$((BASE + 0)) PC_PORT=$((BASE + 1)) ADMIN_PORT=$((BASE + 2))
B_PORT=$((BASE + 3)) B_ADMIN_PORT=$((BASE + 4))
HOST=bench.test
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

ulimit -n "$(ulimit -Hn)"
command -v python3 >/dev/null || die "python3 is needed to tabulate results"
cd "$ROOT"
if [ -z "${BENCH_LOADGEN:-}" ]; then
    nice -n 5 cargo build --release --example loadgen >&2
    TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    BENCH_LOADGEN=$TARGET_DIR/release/examples/loadgen
fi
for f in "$1" "$2" "$BENCH_LOADGEN"; do [ -x "$f" ] || die "$f is not an executable"; done
port_free $UP_PORT $PC_PORT $ADMIN_PORT $B_PORT $B_ADMIN_PORT

WORK=$(mktemp -d /tmp/portcullis-ab.XXXXXX)
STATE=$WORK/state
RESULTS=$WORK/results.jsonl
PIDS=()
trap cleanup EXIT
# Private copies: a build elsewhere must not swap a binary mid-run.
mkdir -p "$WORK/a" "$WORK/b"
cp "$1" "$WORK/a/portcullis"
cp "$2" "$WORK/b/portcullis"
cp "$BENCH_LOADGEN" "$WORK/loadgen"
A_BIN=$WORK/a/portcullis B_BIN=$WORK/b/portcullis LOADGEN=$WORK/loadgen

start_upstream
mint_state "$A_BIN"

start_build() { # label: sets port, SERVER_PID, SERVER_PIDS
    case $1 in
    "$A_LABEL") port=$PC_PORT; start_portcullis "$A_BIN" "$PC_PORT" "$ADMIN_PORT" ;;
    *) port=$B_PORT; start_portcullis "$B_BIN" "$B_PORT" "$B_ADMIN_PORT" ;;
    esac
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for ((rep = 1; rep <= REPEATS; rep++)); do
    if ((rep % 2)); then order="$A_LABEL $B_LABEL"; else order="$B_LABEL $A_LABEL"; fi
    for build in $order; do
        wait_for_quiet
        start_build "$build"
        sleep 2
        record "\"server\":\"$build\",\"rep\":$rep,\"mode\":\"idle\",\"server_rss_kib\":$(rss_kib "${SERVER_PIDS[@]}")"
        log "$build #$rep: handshakes ($DURATION), then $WS_COUNT WebSockets"
        out=$(lg "$build" "$port" handshakes --duration "$DURATION" --concurrency "$HS_CONC")
        out=${out/\"mode\":\"handshakes\"/\"mode\":\"handshakes_alone\"}
        record_lg "$build" "$rep" "$out"
        sleep 2
        record "\"server\":\"$build\",\"rep\":$rep,\"mode\":\"after_handshakes\",\"server_rss_kib\":$(rss_kib "${SERVER_PIDS[@]}")"
        record_lg "$build" "$rep" "$(lg "$build" "$port" websockets --count "$WS_COUNT" --hold "$WS_HOLD")"
        stop_server "$port"
    done
done

wait_for_quiet
start_build "$A_LABEL"
A_PIDS=("${SERVER_PIDS[@]}") A_PID=$SERVER_PID
start_build "$B_LABEL"
B_PIDS=("${SERVER_PIDS[@]}") B_PID=$SERVER_PID
sleep 2
log "$PAIRS pairs of $PAIR_DURATION windows: keep-alive requests ($REQ_CONNS connections)," \
    "handshakes (concurrency $HS_CONC)"
turn_of() {
    if [ "$1" = "$A_LABEL" ]; then port=$PC_PORT SERVER_PIDS=("${A_PIDS[@]}")
    else port=$B_PORT SERVER_PIDS=("${B_PIDS[@]}"); fi
}
for ((pair = 1; pair <= PAIRS; pair++)); do
    if ((pair % 2)); then order="$A_LABEL $B_LABEL"; else order="$B_LABEL $A_LABEL"; fi
    for mode in requests handshakes; do
        for build in $order; do
            turn_of "$build"
            if [ "$mode" = requests ]; then
                out=$(lg "$build" "$port" requests --duration "$PAIR_DURATION" --connections "$REQ_CONNS")
            else
                out=$(lg "$build" "$port" handshakes --duration "$PAIR_DURATION" --concurrency "$HS_CONC")
            fi
            record_lg "$build" "$pair" "$out"
        done
    done
done
SERVER_PID=$A_PID stop_server "$PC_PORT"
SERVER_PID=$B_PID stop_server "$B_PORT"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

{
    echo
    echo "## Portcullis $B_LABEL against $A_LABEL, side by side"
    echo
    echo "- $A_LABEL: $1 ($(stat -c %s "$A_BIN") bytes)"
    echo "- $B_LABEL: $2 ($(stat -c %s "$B_BIN") bytes)"
    echo "- machine: $(nproc) cores, $(uname -r); load average $LOAD_START at start, $LOAD_END at end"
    echo "- runs: $REPEATS × each alone for memory; $PAIRS pairs of $PAIR_DURATION windows with both up"
    echo
    python3 - "$RESULTS" "$A_LABEL" "$B_LABEL" "$WS_COUNT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
a, b, ws = sys.argv[2], sys.argv[3], int(sys.argv[4])

def values(build, mode, field):
    return [r[field] for r in rows if r["server"] == build and r["mode"] == mode
            and r.get(field) is not None]

def pair_ratios(mode, field):
    by_pair = {}
    for r in rows:
        if r["mode"] == mode and r.get(field) is not None:
            by_pair.setdefault(r["rep"], {})[r["server"]] = r[field]
    return sorted(d[b] / d[a] for d in by_pair.values() if d.get(a) and b in d)

MIB = 1 / 1024
print(f"| metric | {a} | {b} | ratio ({b}/{a}) | pairs (min … max) |")
print("|---|---:|---:|---:|---|")
for label, mode, field, scale, digits, paired in [
    ("CPU per keep-alive request (µs)", "requests", "server_cpu_ms_per_op", 1000, 1, True),
    ("Keep-alive requests/s", "requests", "rate_per_s", 1, 0, True),
    ("Request latency p99 (ms)", "requests", "p99_ms", 1, 3, True),
    ("CPU per full mTLS handshake (ms)", "handshakes", "server_cpu_ms_per_op", 1, 3, True),
    ("Handshakes/s", "handshakes", "rate_per_s", 1, 0, True),
    ("RSS idle (MiB)", "idle", "server_rss_kib", MIB, 1, False),
    ("RSS after handshakes (MiB)", "after_handshakes", "server_rss_kib", MIB, 1, False),
    (f"RSS with {ws:,} open WebSockets (MiB)", "websockets", "server_rss_kib_held", MIB, 1, False),
]:
    va, vb = values(a, mode, field), values(b, mode, field)
    if not va or not vb:
        continue
    ma, mb = statistics.median(va) * scale, statistics.median(vb) * scale
    ratios = pair_ratios(mode, field) if paired else []
    ratio = statistics.median(ratios) if ratios else mb / ma
    spread = f"{ratios[0]:.2f} … {ratios[-1]:.2f}" if ratios else ""
    print(f"| {label} | {ma:,.{digits}f} | {mb:,.{digits}f} | {ratio:.2f} | {spread} |")
errors = sum(sum((r.get("error_kinds") or {}).values()) for r in rows)
print(f"\nRatios of timed figures are medians of the per-pair ratios; errors: {errors}.")
PY
    echo
    echo "Per-run JSON lines: $RESULTS$([ "${BENCH_KEEP:-0}" = 1 ] || echo ' (set BENCH_KEEP=1 to keep)')"
}
