#!/usr/bin/env bash
# Refresh the third-party CRDs under tests/vendor/ from the Go module proxy (the ordinary
# `go mod download` client; nothing else is downloaded). Pinned versions are below; edit
# them, run this script, then run `cargo test --test third_party_crds` and update
# tests/vendor/README.md.
#
# Every file is copied unmodified except for a header comment naming its source, and only
# the CustomResourceDefinitions the tests need are kept from multi-CRD files.
set -euo pipefail

TRAEFIK_V2=v2.11.10          # k3s <= 1.31 ships Traefik 2.11
TRAEFIK_V3=v3.6.12           # k3s >= 1.32 ships Traefik 3.x
ARGO_CD=v3.1.8
FLUX_SOURCE=v1.7.0           # source-controller (GitRepository)
FLUX_KUSTOMIZE=v1.10.1       # kustomize-controller (Kustomization)
FLUX_HELM=v1.4.0             # helm-controller (HelmRelease)
CERT_MANAGER=v1.21.2         # Certificate, ClusterIssuer (examples/k8s/cert-manager.yaml)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The extracted directory of module@version (a module needing a newer Go than this one
# still extracts; its toolchain error is ignored because nothing here builds it).
module_dir() {
  (cd "$work" && GO111MODULE=on GOFLAGS=-mod=mod go mod download -json "$1" >/dev/null 2>&1 || true)
  local dir
  dir="$(go env GOMODCACHE)/$(echo "${1%@*}" | sed 's/[A-Z]/!\L&/g')@${1#*@}"
  [[ -d "$dir" ]] || { echo "refresh: go mod download $1 failed" >&2; exit 1; }
  echo "$dir"
}

# Prints the CRD documents named $2… of the multi-document file $1, each after `---`.
pick_crds() {
  local file="$1"; shift
  awk -v want="$*" '
    BEGIN { n = split(want, names, " "); for (i = 1; i <= n; i++) wanted[names[i]] = 1 }
    function flush() { if (keep) printf "---\n%s", doc; doc = ""; keep = 0 }
    /^---[[:space:]]*$/ { flush(); next }
    { doc = doc $0 "\n"; if ($0 ~ /^  name: /) { name = $2; if (name in wanted) keep = 1 } }
    END { flush() }
  ' "$file"
}

header() {
  printf '# Vendored for tests (tests/vendor/README.md); refresh with tests/vendor/refresh.sh.\n'
  printf '# Source: %s\n# Licence: %s\n' "$1" "$2"
}

traefik() {
  local version="$1" out="$2"; shift 2
  local dir; dir="$(module_dir "github.com/traefik/traefik/${version%%.*}@$version")"
  local file=docs/content/reference/dynamic-configuration/kubernetes-crd-definition-v1.yml
  { header "github.com/traefik/traefik/${version%%.*}@$version $file ($*)" "MIT (LICENSE-traefik.md)"
    pick_crds "$dir/$file" "$@"; } > "$here/$out"
  install -m 0644 "$dir/LICENSE.md" "$here/LICENSE-traefik.md"
}
traefik "$TRAEFIK_V2" traefik-v2-crds.yaml ingressroutetcps.traefik.io
traefik "$TRAEFIK_V3" traefik-v3-crds.yaml ingressroutetcps.traefik.io serverstransporttcps.traefik.io

dir="$(module_dir "github.com/argoproj/argo-cd/v3@$ARGO_CD")"
{ header "github.com/argoproj/argo-cd/v3@$ARGO_CD manifests/crds/application-crd.yaml" "Apache-2.0 (LICENSE-argo-cd.txt)"
  cat "$dir/manifests/crds/application-crd.yaml"; } > "$here/argocd-application-crd.yaml"
install -m 0644 "$dir/LICENSE" "$here/LICENSE-argo-cd.txt"

dir="$(module_dir "github.com/fluxcd/source-controller@$FLUX_SOURCE")"
file=config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml
{ header "github.com/fluxcd/source-controller@$FLUX_SOURCE $file" "Apache-2.0 (LICENSE-fluxcd.txt)"
  cat "$dir/$file"; } > "$here/flux-gitrepository-crd.yaml"
install -m 0644 "$dir/LICENSE" "$here/LICENSE-fluxcd.txt"

dir="$(module_dir "github.com/fluxcd/kustomize-controller@$FLUX_KUSTOMIZE")"
file=config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml
{ header "github.com/fluxcd/kustomize-controller@$FLUX_KUSTOMIZE $file" "Apache-2.0 (LICENSE-fluxcd.txt)"
  cat "$dir/$file"; } > "$here/flux-kustomization-crd.yaml"

dir="$(module_dir "github.com/fluxcd/helm-controller@$FLUX_HELM")"
file=config/crd/bases/helm.toolkit.fluxcd.io_helmreleases.yaml
{ header "github.com/fluxcd/helm-controller@$FLUX_HELM $file" "Apache-2.0 (LICENSE-fluxcd.txt)"
  cat "$dir/$file"; } > "$here/flux-helmrelease-crd.yaml"
# deploy/crds/ holds the CRDs as controller-gen writes them (plain YAML, no Helm template
# lines; the chart adds only labels and a keep policy around the same schemas).
dir="$(module_dir "github.com/cert-manager/cert-manager@$CERT_MANAGER")"
for plural in certificates clusterissuers; do
  file=deploy/crds/cert-manager.io_$plural.yaml
  if grep -q '{{' "$dir/$file"; then
    echo "refresh: $file holds template lines; render them before vendoring" >&2; exit 1
  fi
  { header "github.com/cert-manager/cert-manager@$CERT_MANAGER $file" "Apache-2.0 (LICENSE-cert-manager.txt)"
    cat "$dir/$file"; } > "$here/cert-manager-$plural-crd.yaml"
done
install -m 0644 "$dir/LICENSE" "$here/LICENSE-cert-manager.txt"
echo "refresh: done; now run cargo test --test third_party_crds" >&2
