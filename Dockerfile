# Portcullis container image: one prebuilt static (musl) binary on an empty base, run as
# an unprivileged user. Nothing is compiled and nothing is pulled here, so it builds offline
# (`FROM scratch` needs no registry).
#
# The binary comes from the build context at dist/<arch>/portcullis, where <arch> is
# buildx/podman's TARGETARCH followed by TARGETVARIANT. Which Rust target feeds which arch
# (the release workflow and tests/release.rs check this table):
#
#   image-arch amd64 = x86_64-unknown-linux-musl
#   image-arch arm64 = aarch64-unknown-linux-musl
#   image-arch armv7 = armv7-unknown-linux-musleabihf
#
# Locally (x86_64):  make image       (make static, copy to dist/amd64/, podman/docker build)
# Release:           .github/workflows/release.yml builds all three binaries by
#                    cross-compiling and runs `docker buildx build --platform
#                    linux/amd64,linux/arm64,linux/arm/v7` on them.
FROM scratch
ARG TARGETARCH
ARG TARGETVARIANT
# No shell, no libc, no CA bundle: in a cluster the operator trusts the API server through
# the ServiceAccount's ca.crt; it writes nothing to disk (read-only root filesystem).
COPY dist/${TARGETARCH}${TARGETVARIANT}/portcullis /portcullis
# 65532 = "nonroot" in distroless images; the chart also sets runAsUser 65532.
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/portcullis"]
CMD ["operator"]
