# syntax=docker/dockerfile:1
# Portcullis container image: one static (musl) binary on an empty base, run as an
# unprivileged user. Build:  docker build -t ghcr.io/portcullis/portcullis:0.1.0 .
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ... (the build stage
# runs on the target platform, so arm64 builds natively or under QEMU).

# ---- build: a static binary for this platform's musl target ----
FROM docker.io/library/rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
# Only what `cargo build --locked` needs (see .dockerignore).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
# ring compiles C and assembly with musl-gcc; symbols are stripped (21 MB -> 17 MB).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    arch="$(uname -m)" \
 && export "CC_${arch}_unknown_linux_musl=musl-gcc" CARGO_PROFILE_RELEASE_STRIP=symbols \
 && cargo build --release --locked --target "${arch}-unknown-linux-musl" --bin portcullis \
 && cp "target/${arch}-unknown-linux-musl/release/portcullis" /portcullis \
 && /portcullis --version

# ---- runtime: nothing but the binary ----
# No shell, no libc, no CA bundle: in a cluster the operator trusts the API server through
# the ServiceAccount's ca.crt; it writes nothing to disk (read-only root filesystem).
FROM scratch
COPY --from=build /portcullis /portcullis
# 65532 = "nonroot" in distroless images; the chart also sets runAsUser 65532.
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/portcullis"]
CMD ["operator"]
