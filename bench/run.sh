#!/usr/bin/env bash
# Portcullis vs nginx, side by side, on the same machine and the same certificates.
#
#   bench/run.sh            # everything: install nginx if absent, build, run, print a table
#
# Memory: for each repetition, each server in turn (never both at once) is started fresh:
#   idle RSS -> full mTLS handshakes (no resumption) -> RSS -> as many handshakes again
#   (soak) -> RSS -> 1,000 held WebSockets (RSS) -> stopped.
# Speed: then both run at once, idle but for the one measured, for keep-alive requests and
# handshakes in short windows taking turns (pairs), so the machine's drift hits both
# alike; a TLS byte pump (`loadgen pump`) takes its keep-alive turn too, as the floor any
# TLS-terminating proxy costs.
# CPU time is read from /proc/PID/stat (utime+stime of every server process) over each
# measured window and divided by the operations done: on 2 shared cores that is much
# steadier than throughput. Medians are printed as a Markdown table.
#
# Knobs (environment): BENCH_REPEATS (5), BENCH_DURATION (10s), BENCH_HS_CONCURRENCY (8),
# BENCH_PAIRS (10), BENCH_PAIR_DURATION (4s), BENCH_REQ_CONNECTIONS (16),
# BENCH_WS_COUNT (1000), BENCH_WS_HOLD (5s),
# BENCH_MAX_LOAD (1.5: wait, up to BENCH_LOAD_WAIT seconds (300), for the 1-minute load
# average to fall below it before each server's measurements), BENCH_KEEP=1 keeps the temp
# dir, BENCH_NO_BUILD=1 skips cargo build, BENCH_PORT_BASE (18440).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEATS=${BENCH_REPEATS:-5}
DURATION=${BENCH_DURATION:-10s}
HS_CONC=${BENCH_HS_CONCURRENCY:-8}
REQ_CONNS=${BENCH_REQ_CONNECTIONS:-16}
PAIRS=${BENCH_PAIRS:-10}
PAIR_DURATION=${BENCH_PAIR_DURATION:-4s}
WS_COUNT=${BENCH_WS_COUNT:-1000}
WS_HOLD=${BENCH_WS_HOLD:-5s}
MAX_LOAD=${BENCH_MAX_LOAD:-1.5}
LOAD_WAIT=${BENCH_LOAD_WAIT:-300}
BASE=${BENCH_PORT_BASE:-18440}
UP_PORT=$((BASE + 0)) PC_PORT=$((BASE + 1)) NG_PORT=$((BASE + 2)) ADMIN_PORT=$((BASE + 3))
PUMP_PORT=$((BASE + 4))
HOST=bench.test
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# --- prerequisites -------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" # 1,000 WebSockets need ~3,000 descriptors across the processes
command -v python3 >/dev/null || die "python3 is needed to tabulate results"
if ! command -v nginx >/dev/null; then
    log "installing nginx (Debian package)"
    # Keep the package's postinst from starting a system nginx on port 80.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >&2 \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >&2
    [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
NGINX=$(command -v nginx)

cd "$ROOT"
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    log "building (release)"
    nice -n 5 cargo build --release --bin portcullis --example loadgen >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
PORTCULLIS=$TARGET_DIR/release/portcullis
LOADGEN=$TARGET_DIR/release/examples/loadgen
[ -x "$PORTCULLIS" ] || die "$PORTCULLIS missing"
[ -x "$LOADGEN" ] || die "$LOADGEN missing"

port_free $UP_PORT $PC_PORT $NG_PORT $ADMIN_PORT $PUMP_PORT

WORK=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
STATE=$WORK/state
RESULTS=$WORK/results.jsonl
PIDS=()
# Private copies: the shared target dir may be rebuilt by someone else mid-run.
mkdir -p "$WORK/bin"
cp "$PORTCULLIS" "$LOADGEN" "$WORK/bin/"
PORTCULLIS=$WORK/bin/portcullis
LOADGEN=$WORK/bin/loadgen
trap cleanup EXIT

start_upstream
mint_state

# --- nginx with the same certificates ----------------------------------------------------------
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
# nginx as the reference mTLS gate: client certificates required and checked against the
# same CA and CRL; no session cache and no tickets, like the load generator.
daemon off;
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;   # Portcullis logs no line per admitted request either.
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;

    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      '';
    }
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NG_PORT ssl;
        server_name $HOST;
        ssl_certificate $STATE/routes/bench/tls.crt;
        ssl_certificate_key $STATE/routes/bench/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_verify_client on;
        ssl_client_certificate $STATE/ca/tls.crt;
        ssl_crl $STATE/crl.pem;
        ssl_session_cache off;
        ssl_session_tickets off;

        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Host \$host;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_read_timeout 1h;
        }
    }
}
EOF
"$NGINX" -t -q -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>&1 | grep -v 'could not open error log' >&2 || true

start_nginx() {
    "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>>"$WORK/nginx/stderr.log" &
    SERVER_PID=$!
    PIDS+=($SERVER_PID)
    if ! wait_port "$NG_PORT" 20; then
        cat "$WORK/nginx/error.log" "$WORK/nginx/stderr.log" >&2 || true
        die "nginx did not start"
    fi
    local i workers
    for ((i = 0; i < 50; i++)); do
        workers=$(pgrep -P "$SERVER_PID" | tr '\n' ' ')
        [ "$(wc -w <<<"$workers")" -ge 2 ] && break
        sleep 0.1
    done
    # shellcheck disable=SC2206
    SERVER_PIDS=("$SERVER_PID" $workers)
}

# --- measurements --------------------------------------------------------------------------------

measure() { # server rep
    local server=$1 rep=$2 port out
    wait_for_quiet
    local load_before
    load_before=$(load1)
    if [ "$server" = nginx ]; then port=$NG_PORT; start_nginx; else port=$PC_PORT; start_portcullis; fi
    sleep 2
    record "\"server\":\"$server\",\"rep\":$rep,\"mode\":\"idle\",\"server_rss_kib\":$(rss_kib "${SERVER_PIDS[@]}"),\"processes\":${#SERVER_PIDS[@]},\"load1\":$load_before"

    log "$server #$rep: handshakes ($DURATION, concurrency $HS_CONC)"
    out=$(lg "$server" "$port" handshakes --duration "$DURATION" --concurrency "$HS_CONC")
    # The load before the memory reading; the handshake figures are taken in pairs below.
    out=${out/\"mode\":\"handshakes\"/\"mode\":\"handshakes_alone\"}
    record_lg "$server" "$rep" "$out"
    sleep 2 # let closed connections drain before reading memory
    record "\"server\":\"$server\",\"rep\":$rep,\"mode\":\"after_handshakes\",\"server_rss_kib\":$(rss_kib "${SERVER_PIDS[@]}")"

    # Sustained: as much load again. A leak keeps growing here; a warm-up does not.
    log "$server #$rep: handshake soak ($DURATION more)"
    out=$(lg "$server" "$port" handshakes --duration "$DURATION" --concurrency "$HS_CONC")
    out=${out/\"mode\":\"handshakes\"/\"mode\":\"handshakes_soak\"}
    record_lg "$server" "$rep" "$out"
    sleep 2
    record "\"server\":\"$server\",\"rep\":$rep,\"mode\":\"after_soak\",\"server_rss_kib\":$(rss_kib "${SERVER_PIDS[@]}")"

    log "$server #$rep: $WS_COUNT WebSockets held $WS_HOLD"
    out=$(lg "$server" "$port" websockets --count "$WS_COUNT" --hold "$WS_HOLD")
    record_lg "$server" "$rep" "$out"

    stop_server "$port"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for ((rep = 1; rep <= REPEATS; rep++)); do
    # Alternate who goes first, so slow drifts in background load hit both alike.
    if ((rep % 2)); then order="nginx portcullis"; else order="portcullis nginx"; fi
    for server in $order; do
        measure "$server" "$rep"
    done
done

# Keep-alive requests and handshakes, paired: both servers up, short windows taking
# turns. The machine's speed drifts by ±25 % over tens of seconds (for both servers and
# the load generator alike); a ratio taken within a few seconds cancels most of it.
wait_for_quiet
start_nginx
NGINX_PID=$SERVER_PID NGINX_PIDS=("${SERVER_PIDS[@]}")
start_portcullis
PC_PID=$SERVER_PID PC_PIDS=("${SERVER_PIDS[@]}")
# The yardstick: TLS in, bytes copied to the upstream, no HTTP at all — what any
# TLS-terminating proxy costs at least on this machine.
"$LOADGEN" pump --listen "127.0.0.1:$PUMP_PORT" --upstream "127.0.0.1:$UP_PORT" \
    --cert "$STATE/routes/bench/tls.crt" --key "$STATE/routes/bench/tls.key" \
    2>"$WORK/pump.log" &
PUMP_PID=$!
PIDS+=($PUMP_PID)
wait_port "$PUMP_PORT" 10 || die "the TLS pump did not start"
sleep 2
log "$PAIRS pairs of $PAIR_DURATION windows: keep-alive requests ($REQ_CONNS connections;" \
    "the pump too), handshakes (concurrency $HS_CONC)"
turn_of() { # server: point `port` and SERVER_PIDS (read by lg) at it
    case $1 in
    nginx) port=$NG_PORT SERVER_PIDS=("${NGINX_PIDS[@]}") ;;
    portcullis) port=$PC_PORT SERVER_PIDS=("${PC_PIDS[@]}") ;;
    pump) port=$PUMP_PORT SERVER_PIDS=("$PUMP_PID") ;;
    esac
}
for ((pair = 1; pair <= PAIRS; pair++)); do
    if ((pair % 2)); then order="nginx portcullis pump"; else order="pump portcullis nginx"; fi
    for server in $order; do
        turn_of "$server"
        out=$(lg "$server" "$port" requests --duration "$PAIR_DURATION" --connections "$REQ_CONNS")
        record_lg "$server" "$pair" "$out"
    done
    for server in $order; do
        [ "$server" = pump ] && continue # no client certificates: no floor for a handshake
        turn_of "$server"
        out=$(lg "$server" "$port" handshakes --duration "$PAIR_DURATION" --concurrency "$HS_CONC")
        record_lg "$server" "$pair" "$out"
    done
done
SERVER_PID=$PC_PID stop_server "$PC_PORT"
SERVER_PID=$NGINX_PID stop_server "$NG_PORT"
SERVER_PID=$PUMP_PID stop_server "$PUMP_PORT"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------------------------------
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then COMMIT="$COMMIT (+ uncommitted changes)"; fi
{
    echo
    echo "## Portcullis vs nginx — mutual TLS, side by side"
    echo
    echo "- commit: $COMMIT"
    echo "- nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(openssl version 2>/dev/null || echo 'OpenSSL ?')"
    echo "- rustc: $(rustc --version 2>/dev/null || echo '?')"
    echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
    echo "- load average (1/5/15 min): $LOAD_START at start, $LOAD_END at end"
    echo "- runs: $REPEATS × each server alone for memory (handshakes $DURATION twice at concurrency $HS_CONC; $WS_COUNT WebSockets held $WS_HOLD); then $PAIRS pairs of $PAIR_DURATION windows with both servers up: keep-alive requests over $REQ_CONNS connections, handshakes at concurrency $HS_CONC"
    echo
    python3 - "$RESULTS" "$WS_COUNT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ws_count = int(sys.argv[2])

def med(server, mode, field, scale=1.0):
    if mode == "soak_growth":  # per repetition: after the soak minus after the first run
        by_rep = {}
        for r in rows:
            if r["server"] == server and r["mode"] in ("after_handshakes", "after_soak"):
                by_rep.setdefault(r["rep"], {})[r["mode"]] = r["server_rss_kib"]
        vals = [d["after_soak"] - d["after_handshakes"] for d in by_rep.values() if len(d) == 2]
        return statistics.median(vals) * scale if vals else None
    vals = [r[field] for r in rows
            if r["server"] == server and r["mode"] == mode and r.get(field) is not None]
    return statistics.median(vals) * scale if vals else None

def fmt(v, digits):
    return "—" if v is None else f"{v:,.{digits}f}"

MIB = 1 / 1024
metrics = [
    # label, mode, field, scale, digits, target kind, target value, higher is better
    ("CPU per full mTLS handshake (ms)", "handshakes", "server_cpu_ms_per_op", 1, 3, "ratio<=", 1 / 3),
    ("Handshakes/s", "handshakes", "rate_per_s", 1, 0, "ratio>=", 2.0),
    ("Handshake+GET latency p50 (ms)", "handshakes", "p50_ms", 1, 2, None, None),
    ("Handshake+GET latency p99 (ms)", "handshakes", "p99_ms", 1, 2, "ratio<=", 1.0),
    ("Keep-alive requests/s", "requests", "rate_per_s", 1, 0, "ratio>=", 1.2),
    ("CPU per keep-alive request (µs)", "requests", "server_cpu_ms_per_op", 1000, 1, None, None),
    ("Request latency p50 (ms)", "requests", "p50_ms", 1, 3, None, None),
    ("Request latency p99 (ms)", "requests", "p99_ms", 1, 3, "ratio<=", 1.0),
    ("Request latency p99.9 (ms)", "requests", "p999_ms", 1, 3, None, None),
    ("RSS idle (MiB)", "idle", "server_rss_kib", MIB, 1, "abs<", 20.0),
    ("RSS after sustained handshake load (MiB)", "after_soak", "server_rss_kib", MIB, 1, "growth<=", 1.0),
    ("RSS growth during the second handshake run (MiB)", "soak_growth", None, MIB, 2, "abs<=", 0.5),
    (f"RSS with {ws_count:,} open WebSockets (MiB)", "websockets", "server_rss_kib_held", MIB, 1, "abs<", 64.0),
]
print("| metric | nginx | portcullis | ratio (p/n) | target | result |")
print("|---|---:|---:|---:|---|---|")
verdicts = []
for label, mode, field, scale, digits, kind, target in metrics:
    n, p = med("nginx", mode, field, scale), med("portcullis", mode, field, scale)
    ratio = p / n if (n and p is not None) else None
    goal, ok = "", None
    if kind == "ratio<=" and ratio is not None:
        goal = "≤ nginx" if target == 1.0 else f"≤ {target:.2f}× nginx"
        ok = ratio <= target
    elif kind == "ratio>=" and ratio is not None:
        goal, ok = f"≥ {target:g}× nginx", ratio >= target
    elif kind == "abs<" and p is not None:
        goal, ok = f"< {target:g} MiB", p < target
    elif kind == "abs<=" and p is not None:
        goal, ok = f"≤ {target:g} MiB (no leak)", p <= target
    elif kind == "growth<=" and p is not None:
        idle = med("portcullis", "idle", "server_rss_kib", MIB)
        growth = p - idle
        goal = f"no growth over idle (≤ {target:g} MiB tolerance); measured {growth:+.1f}"
        ok = growth <= target
    result = "" if ok is None else ("PASS" if ok else "FAIL")
    if ok is not None:
        verdicts.append((label, ok))
    shown_ratio = "—" if ratio is None or mode == "soak_growth" else f"{ratio:.2f}"
    print(f"| {label} | {fmt(n, digits)} | {fmt(p, digits)} | {shown_ratio} | {goal} | {result} |")

floor_cpu = med("pump", "requests", "server_cpu_ms_per_op", 1000)
floor_rate = med("pump", "requests", "rate_per_s")
nginx_cpu = med("nginx", "requests", "server_cpu_ms_per_op", 1000)
nginx_rate = med("nginx", "requests", "rate_per_s")
if floor_cpu and nginx_cpu and floor_rate and nginx_rate:
    print(f"\nFloor for keep-alive requests (`loadgen pump`: TLS in, bytes copied to the upstream,"
          f" no HTTP): {floor_cpu:.1f} µs of CPU per request ({floor_cpu / nginx_cpu:.2f}× nginx),"
          f" {floor_rate:,.0f} requests/s ({floor_rate / nginx_rate:.2f}× nginx).")

print()
for server in ("nginx", "portcullis"):
    errs = {}
    for r in rows:
        if r["server"] == server:
            for k, v in (r.get("error_kinds") or {}).items():
                errs[f'{r["mode"]}: {k}'] = errs.get(f'{r["mode"]}: {k}', 0) + v
    ws = [r for r in rows if r["server"] == server and r["mode"] == "websockets"]
    opened = statistics.median([r["opened"] for r in ws]) if ws else None
    loads = [r["load1"] for r in rows if r["server"] == server and "load1" in r]
    print(f"- {server}: errors {sum(errs.values())}"
          + (f" ({'; '.join(f'{k} ×{v}' for k, v in sorted(errs.items()))})" if errs else "")
          + (f"; WebSockets opened (median) {opened:g}" if opened is not None else "")
          + (f"; load average during runs {min(loads):.2f}–{max(loads):.2f}" if loads else ""))

# The ratio within each pair shows how far the machine drifted, and so how far the
# medians can be trusted.
def per_pair_ratios(mode, field):
    by_pair = {}
    for r in rows:
        if r["mode"] == mode and r.get(field) is not None:
            by_pair.setdefault(r["rep"], {})[r["server"]] = r[field]
    return sorted(d["portcullis"] / d["nginx"] for d in by_pair.values()
                  if d.get("nginx") and "portcullis" in d)

for label, mode, field in [
    ("CPU per handshake", "handshakes", "server_cpu_ms_per_op"),
    ("handshakes/s", "handshakes", "rate_per_s"),
    ("keep-alive requests/s", "requests", "rate_per_s"),
    ("CPU per keep-alive request", "requests", "server_cpu_ms_per_op"),
]:
    ratios = per_pair_ratios(mode, field)
    if ratios:
        print(f"- per pair, {label} (p/n, sorted): " + ", ".join(f"{x:.2f}" for x in ratios)
              + f"; median {statistics.median(ratios):.2f}")
failed = [l for l, ok in verdicts if not ok]
print(f"\n{len(verdicts) - len(failed)} of {len(verdicts)} targets met"
      + (f"; missed: {', '.join(failed)}" if failed else ""))
PY
    echo
    echo "Per-run JSON lines: $RESULTS$([ "${BENCH_KEEP:-0}" = 1 ] || echo ' (set BENCH_KEEP=1 to keep)')"
}
