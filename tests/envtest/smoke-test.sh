#!/usr/bin/env bash
# Smoke test of the envtest control plane with nothing but curl (and python3
# to read JSON): builds (if needed), starts it, checks authn/RBAC, CRDs,
# TokenRequest, garbage collection and namespace deletion, then closes its
# stdin and checks that it shut down and removed its data.
#
# Usage: tests/envtest/smoke-test.sh   (exit 0 iff every check passed)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$("$here/build.sh" | tail -n1)" || { echo "smoke: build failed"; exit 1; }

work="$(mktemp -d)"
kc="$work/kubeconfig"
log="$work/envtest.log"
pass=0
fail=0
ok()  { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
check() { # name expected actual
  if [[ "$2" == "$3" ]]; then ok "$1"; else bad "$1 (expected '$2', got '$3')"; fi
}

# Start envtest with its stdin on a FIFO we hold open on fd 3: closing fd 3
# (or this script dying) is what tells envtest to shut down.
fifo="$work/stdin"
mkfifo "$fifo"
start_ns=$(date +%s%N)
"$bin" --kubeconfig-out "$kc" --data-dir "$work/data" --log-file "$log" <"$fifo" >"$work/stdout" &
pid=$!
exec 3>"$fifo"

ready=""
for _ in $(seq 1 1200); do # up to 180 s
  if grep -q '^READY ' "$work/stdout" 2>/dev/null; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.15
done
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
if [[ -z "$ready" ]]; then
  echo "smoke: envtest did not become ready; last log lines:"
  tail -n 40 "$log"
  exec 3>&-
  wait "$pid"
  rm -rf "$work"
  echo "smoke: 0 passed, 1 failed"
  exit 1
fi
check "READY line names the kubeconfig" "READY $kc" "$(head -n1 "$work/stdout")"
echo "     (READY after ${ready_ms} ms)"

# --- credentials from the kubeconfig ---------------------------------------
kcfield() { # kcfield USERNAME FIELD -> value of FIELD inside users[name=USERNAME]
  awk -v u="$1" -v f="$2:" '
    $1 == "-" && $2 == "name:" { cur = $3; next }
    cur == u && $1 == f { print $2; exit }' "$kc"
}
server="$(awk '$1 == "server:" { print $2; exit }' "$kc")"
awk '$1 == "certificate-authority-data:" { print $2; exit }' "$kc" | base64 -d >"$work/ca.crt"
admin_token="$(kcfield admin token)"
unpriv_token="$(kcfield unprivileged token)"
kcfield admin-cert client-certificate-data | base64 -d >"$work/admin.crt"
kcfield admin-cert client-key-data | base64 -d >"$work/admin.key"

# req METHOD PATH TOKEN [JSON] -> prints HTTP status, body in $work/body
req() {
  local args=(-sS -o "$work/body" -w '%{http_code}' --cacert "$work/ca.crt" -X "$1")
  [[ -n "$3" ]] && args+=(-H "Authorization: Bearer $3")
  [[ $# -ge 4 ]] && args+=(-H 'Content-Type: application/json' --data "$4")
  curl "${args[@]}" "$server$2"
}
jget() { # jget EXPR -> evaluates a Python expression on the body `j`
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($1)" "$work/body" 2>/dev/null
}
poll() { # poll SECONDS EXPECTED CMD... -> last output, returns 0 once CMD prints EXPECTED
  local deadline=$(( $(date +%s) + $1 )) want="$2" got
  shift 2
  while :; do
    got="$("$@")"
    [[ "$got" == "$want" ]] && { echo "$got"; return 0; }
    (( $(date +%s) >= deadline )) && { echo "$got"; return 1; }
    sleep 0.5
  done
}

# --- server answers ---------------------------------------------------------
check "GET /readyz as admin" 200 "$(req GET /readyz "$admin_token")"
check "GET /api as admin" 200 "$(req GET /api "$admin_token")"
check "GET /apis as admin" 200 "$(req GET /apis "$admin_token")"
req GET /version "" >/dev/null
echo "     (/version gitVersion: $(jget "j['gitVersion']"))"

# --- authentication and RBAC ---------------------------------------------------
check "anonymous may read /readyz (system:public-info-viewer)" 200 "$(req GET /readyz "")"
check "anonymous list namespaces is forbidden" 403 "$(req GET /api/v1/namespaces "")"
check "bad token is unauthorized" 401 "$(req GET /api/v1/namespaces not-a-token)"
check "unprivileged user list namespaces is forbidden" 403 "$(req GET /api/v1/namespaces "$unpriv_token")"
check "admin (token) lists namespaces" 200 "$(req GET /api/v1/namespaces "$admin_token")"
code="$(curl -sS -o "$work/body" -w '%{http_code}' --cacert "$work/ca.crt" --cert "$work/admin.crt" --key "$work/admin.key" "$server/api/v1/namespaces")"
check "admin (client certificate) lists namespaces" 200 "$code"

# --- CustomResourceDefinition ---------------------------------------------------
crd='{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
 "metadata":{"name":"widgets.smoke.portcullis.dev"},
 "spec":{"group":"smoke.portcullis.dev","scope":"Namespaced",
  "names":{"plural":"widgets","singular":"widget","kind":"Widget","listKind":"WidgetList"},
  "versions":[{"name":"v1","served":true,"storage":true,
   "schema":{"openAPIV3Schema":{"type":"object","properties":{"spec":{"type":"object",
    "properties":{"size":{"type":"integer"}}}}}}}]}}'
check "create CRD" 201 "$(req POST /apis/apiextensions.k8s.io/v1/customresourcedefinitions "$admin_token" "$crd")"
established() {
  req GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.smoke.portcullis.dev "$admin_token" >/dev/null
  jget "[c['status'] for c in j.get('status',{}).get('conditions',[]) if c['type']=='Established']"
}
check "CRD becomes Established" "['True']" "$(poll 30 "['True']" established)"
widget='{"apiVersion":"smoke.portcullis.dev/v1","kind":"Widget","metadata":{"name":"w1"},"spec":{"size":3}}'
create_widget() { req POST /apis/smoke.portcullis.dev/v1/namespaces/default/widgets "$admin_token" "$widget"; }
check "create a Widget custom resource" 201 "$(poll 30 201 create_widget)"
bad_widget='{"apiVersion":"smoke.portcullis.dev/v1","kind":"Widget","metadata":{"name":"w2"},"spec":{"size":"big"}}'
check "schema validation rejects a bad Widget" 422 "$(req POST /apis/smoke.portcullis.dev/v1/namespaces/default/widgets "$admin_token" "$bad_widget")"

# --- ServiceAccount + TokenRequest -------------------------------------------------
check "create namespace" 201 "$(req POST /api/v1/namespaces "$admin_token" '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"smoke"}}')"
check "create serviceaccount" 201 "$(req POST /api/v1/namespaces/smoke/serviceaccounts "$admin_token" '{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"operator"}}')"
check "TokenRequest" 201 "$(req POST /api/v1/namespaces/smoke/serviceaccounts/operator/token "$admin_token" '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}')"
sa_token="$(jget "j['status']['token']")"
req POST /apis/authentication.k8s.io/v1/selfsubjectreviews "$sa_token" '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' >/dev/null
check "SA token authenticates as the ServiceAccount" "system:serviceaccount:smoke:operator" "$(jget "j['status']['userInfo']['username']")"
check "SA without bindings cannot list configmaps" 403 "$(req GET /api/v1/namespaces/smoke/configmaps "$sa_token")"
rb='{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"operator-view"},
 "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"},
 "subjects":[{"kind":"ServiceAccount","name":"operator","namespace":"smoke"}]}'
check "create RoleBinding" 201 "$(req POST /apis/rbac.authorization.k8s.io/v1/namespaces/smoke/rolebindings "$admin_token" "$rb")"
list_cms() { req GET /api/v1/namespaces/smoke/configmaps "$sa_token"; }
check "SA with view binding lists configmaps" 200 "$(poll 15 200 list_cms)"
check "SA still cannot create configmaps" 403 "$(req POST /api/v1/namespaces/smoke/configmaps "$sa_token" '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}')"

# --- garbage collection (kube-controller-manager) ---------------------------------
check "create owner ConfigMap" 201 "$(req POST /api/v1/namespaces/smoke/configmaps "$admin_token" '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"owner"}}')"
owner_uid="$(jget "j['metadata']['uid']")"
child="{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"child\",\"ownerReferences\":[{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"name\":\"owner\",\"uid\":\"$owner_uid\"}]}}"
check "create dependent ConfigMap" 201 "$(req POST /api/v1/namespaces/smoke/configmaps "$admin_token" "$child")"
check "delete owner (background propagation)" 200 "$(req DELETE /api/v1/namespaces/smoke/configmaps/owner "$admin_token" '{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}')"
get_child() { req GET /api/v1/namespaces/smoke/configmaps/child "$admin_token"; }
check "garbage collector deletes the dependent" 404 "$(poll 60 404 get_child)"

# --- namespace deletion (namespace controller) -----------------------------------
check "delete namespace" 200 "$(req DELETE /api/v1/namespaces/smoke "$admin_token")"
get_ns() { req GET /api/v1/namespaces/smoke "$admin_token"; }
check "namespace is finalized and removed" 404 "$(poll 60 404 get_ns)"

# --- shutdown on stdin EOF ------------------------------------------------------------
stop_ns=$(date +%s%N)
exec 3>&-
for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
  bad "envtest exits after stdin EOF (still running after 60s)"
  kill -TERM "$pid"
fi
wait "$pid"
rc=$?
check "envtest exit status after stdin EOF" 0 "$rc"
echo "     (shutdown took $(( ($(date +%s%N) - stop_ns) / 1000000 )) ms)"
check "data directory removed" "" "$(ls -A "$work/data" 2>/dev/null)"

if (( fail > 0 )); then
  echo "--- envtest log (last 60 lines) ---"
  tail -n 60 "$log"
fi
rm -rf "$work"
echo "smoke: $pass passed, $fail failed"
(( fail == 0 ))
