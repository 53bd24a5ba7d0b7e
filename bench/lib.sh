# Shared by bench/run.sh (Portcullis vs nginx) and bench/ab.sh (two Portcullis builds):
# the state both measure on, starting and stopping servers, reading their RSS and the
# load generator. Sourced; expects WORK, STATE, RESULTS, HOST, UP_PORT, LOADGEN, CLK_TCK,
# MAX_LOAD, LOAD_WAIT and a PIDS array from the caller.

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}

wait_port() { # port seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

port_free() { # port...
    local port
    for port in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port is busy; set BENCH_PORT_BASE"
        fi
    done
}

# Sum of VmRSS (KiB) over the given PIDs.
rss_kib() {
    local pid sum=0 v
    for pid in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

load1() { cut -d' ' -f1 /proc/loadavg; }

wait_for_quiet() {
    local waited=0
    until awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }'; do
        if ((waited >= LOAD_WAIT)); then
            log "load $(load1) still >= $MAX_LOAD after ${LOAD_WAIT}s; measuring anyway (noted)"
            return
        fi
        ((waited == 0)) && log "load $(load1) >= $MAX_LOAD: waiting for other work to calm down"
        sleep 10
        waited=$((waited + 10))
    done
}

record() { # json-object-fields...
    echo "{$*}" >>"$RESULTS"
}

# The upstream every server proxies to.
start_upstream() {
    "$LOADGEN" upstream --listen "127.0.0.1:$UP_PORT" 2>"$WORK/upstream.log" &
    PIDS+=($!)
    wait_port "$UP_PORT" 10 || die "upstream did not start"
}

write_config() { # old-phone revoked: true|false
    cat >"$WORK/portcullis.yaml.new" <<CONFIG
# Benchmark installation: one route, two devices. The second is revoked after its first
# certificate was issued, so the CRL that nginx checks lists a serial, as in a real
# installation that has retired a device.
apiVersion: portcullis.dev/v1alpha1
kind: ProtectedRoute
metadata:
  name: bench
spec:
  hosts: [$HOST]
  upstream:
    url: http://127.0.0.1:$UP_PORT
---
apiVersion: portcullis.dev/v1alpha1
kind: ClientIdentity
metadata:
  name: laptop
spec:
  keyAlgorithm: ECDSA-P256
---
apiVersion: portcullis.dev/v1alpha1
kind: ClientIdentity
metadata:
  name: old-phone
spec:
  keyAlgorithm: ECDSA-P256
  revoked: $1
CONFIG
    mv "$WORK/portcullis.yaml.new" "$WORK/portcullis.yaml"
}

start_portcullis() { # [binary port admin-port]: sets SERVER_PID and SERVER_PIDS
    local bin=${1:-$PORTCULLIS} port=${2:-$PC_PORT} admin=${3:-$ADMIN_PORT}
    "$bin" standalone --config "$WORK/portcullis.yaml" --state-dir "$STATE" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        >>"$WORK/portcullis-$port.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=($SERVER_PID)
    if ! wait_port "$port" 60; then
        tail -20 "$WORK/portcullis-$port.log" >&2
        die "portcullis ($bin) did not start"
    fi
    SERVER_PIDS=("$SERVER_PID")
}

stop_server() { # port: stops SERVER_PID and waits for the port to close
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
        sleep 0.1
    done
}

# The CA, server and device certificates and a CRL listing one revoked serial, minted by
# the gate itself (standalone mode) into $STATE.
mint_state() { # [binary]
    log "minting state with portcullis standalone"
    write_config false
    start_portcullis "${1:-$PORTCULLIS}"
    local f i
    for f in ca/tls.crt crl.pem routes/bench/tls.crt routes/bench/tls.key \
        identities/laptop/tls.crt identities/laptop/tls.key identities/laptop/ca.crt \
        identities/old-phone/tls.crt; do
        for ((i = 0; i < 100; i++)); do [ -s "$STATE/$f" ] && break; sleep 0.1; done
        [ -s "$STATE/$f" ] || die "portcullis did not write $STATE/$f"
    done
    local crl_before
    crl_before=$(cksum <"$STATE/crl.pem")
    write_config true # the file watcher revokes old-phone and republishes the CRL
    for ((i = 0; i < 150; i++)); do
        [ "$(cksum <"$STATE/crl.pem")" != "$crl_before" ] && break
        sleep 0.1
    done
    [ "$(cksum <"$STATE/crl.pem")" != "$crl_before" ] || die "the CRL did not change after revoking old-phone"
    if command -v openssl >/dev/null; then
        log "CRL: $(openssl crl -in "$STATE/crl.pem" -noout -text | grep -c 'Serial Number') revoked serial(s)"
    fi
    stop_server "$PC_PORT"
}

# The load generator against one server, as the enrolled laptop; prints one JSON object.
lg() { # label port mode args...
    local label=$1 port=$2 mode=$3
    shift 3
    "$LOADGEN" "$mode" --addr "127.0.0.1:$port" --sni "$HOST" \
        --ca "$STATE/ca/tls.crt" --cert "$STATE/identities/laptop/tls.crt" \
        --key "$STATE/identities/laptop/tls.key" --label "$label" \
        --server-pids "$(IFS=,; echo "${SERVER_PIDS[*]}")" --clk-tck "$CLK_TCK" "$@"
}

# Records one load generator result, with the load average, under a server and repetition.
record_lg() { # server rep json
    local out=$3
    record "\"server\":\"$1\",\"rep\":$2,\"load1\":$(load1),${out:1:${#out}-2}"
}
