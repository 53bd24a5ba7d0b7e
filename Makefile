# Developer shortcuts. The real test command is `cargo test --all-targets` (see README).
#   make static      static musl release binary: target/x86_64-unknown-linux-musl/release/portcullis
#   make image       container image of that binary (podman or docker; builds offline, see Dockerfile)
#   make image-save  the image as a tarball for an air-gapped k3s (sudo k3s ctr images import ...)
#   make crds        regenerate crds/portcullis.yaml and the chart's copy from the Rust types
#   make helm-lint   helm lint + template with every documented option
#   make test-helm   the chart's tests against a real API server (tests/helm.rs)

MUSL_TARGET ?= x86_64-unknown-linux-musl
IMAGE       ?= ghcr.io/portcullis/portcullis
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
CONTAINER   ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null)
CHART       := helm/portcullis
TARGET_DIR  := $(or $(CARGO_TARGET_DIR),target)
# The image arch the Dockerfile's table maps MUSL_TARGET to (amd64, arm64, armv7).
IMAGE_ARCH   = $(shell sed -n 's/^\#   image-arch \([a-z0-9]*\) = $(MUSL_TARGET)$$/\1/p' Dockerfile)

.PHONY: static image image-save crds helm helm-lint test-helm

# ring compiles C and assembly: the musl target needs musl-gcc (Debian: musl-tools).
static:
	@rustup target list --installed | grep -qx '$(MUSL_TARGET)' || rustup target add $(MUSL_TARGET)
	@command -v musl-gcc >/dev/null || { echo "musl-gcc not found: apt-get install musl-tools" >&2; exit 1; }
	CC_$(subst -,_,$(MUSL_TARGET))=musl-gcc CARGO_PROFILE_RELEASE_STRIP=symbols \
	  cargo build --release --locked --target $(MUSL_TARGET) --bin portcullis
	@file $(TARGET_DIR)/$(MUSL_TARGET)/release/portcullis 2>/dev/null || true
	@ls -l $(TARGET_DIR)/$(MUSL_TARGET)/release/portcullis

# Packages the binary `make static` built (nothing is compiled or pulled in the image).
image: static
	@test -n "$(CONTAINER)" || { echo "no podman or docker on this machine" >&2; exit 1; }
	@test -n "$(IMAGE_ARCH)" || { echo "$(MUSL_TARGET) is not in the Dockerfile's image-arch table" >&2; exit 1; }
	mkdir -p dist/$(IMAGE_ARCH)
	cp $(TARGET_DIR)/$(MUSL_TARGET)/release/portcullis dist/$(IMAGE_ARCH)/portcullis
	$(CONTAINER) build --platform linux/$(subst armv7,arm/v7,$(IMAGE_ARCH)) -t $(IMAGE):$(VERSION) .

image-save: image
	$(CONTAINER) save -o portcullis-image-$(VERSION).tar $(IMAGE):$(VERSION)
	@echo "on the k3s node: sudo k3s ctr images import portcullis-image-$(VERSION).tar"

crds:
	cargo run --quiet --bin portcullis -- crd > crds/portcullis.yaml
	cp crds/portcullis.yaml $(CHART)/crds/portcullis.yaml

# Helm from the Go module proxy, cached under target/helm (tests/helm/install-helm.sh).
helm:
	@tests/helm/install-helm.sh >/dev/null

helm-lint: helm
	@set -e; h=$$(tests/helm/install-helm.sh 2>/dev/null); \
	for opts in "" \
	  "--set traefik.ingressRouteTCP.enabled=true --set traefik.ingressRouteTCP.hosts={ha.example.org} --set service.type=ClusterIP" \
	  "--set traefik.ingressRouteTCP.enabled=true --set traefik.ingressRouteTCP.hosts={ha.example.org} --set traefik.ingressRouteTCP.proxyProtocolVia=serversTransport --set service.type=ClusterIP" \
	  "--set service.type=NodePort" "--set service.type=ClusterIP" \
	  "--set metrics.serviceMonitor.enabled=true" "--set replicas=2"; do \
	  echo "== $${opts:-defaults}"; \
	  $$h lint --strict $(CHART) $$opts; \
	  $$h template portcullis $(CHART) -n portcullis $$opts >/dev/null; \
	done

test-helm:
	cargo test --test helm -- --nocapture
