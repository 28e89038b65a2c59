# CES's container image: ces-edge, ces-ingest and cesctl in one image, built in release mode by
# scripts/build-release.sh (the build `make bench` measures) and run on a distroless base with no shell.
#
#   docker build -t ces:0.1.0 .
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" -t ces:0.1.0 .
#
# Needs BuildKit (Docker's default builder since 23.0) for the cache mounts. scripts/check-deploy.sh (`make test`)
# lints this file with hadolint.
#
# The image starts ces-edge; run the others by naming them: `command: ["/usr/local/bin/ces-ingest"]` in Compose
# or Kubernetes, `docker run --rm ces:0.1.0 /usr/local/bin/cesctl topics create ...`. There is no ENTRYPOINT, so
# Kubernetes' `command` and `args` both replace the default. Every setting is a CES_* variable
# (docs/configuration.md); the Redis function library (runtime/src/ces.lua) is compiled into the binaries, the JSON
# Schemas are in /etc/ces/schemas (CES_SCHEMA_DIR; mount another directory there to change them).
#
# Ports: the binaries listen on 127.0.0.1 unless told otherwise, so a container sets its addresses. The ports this
# image documents, and docker-compose.yml uses inside its network:
#   8080  ces-edge public listener      CES_EDGE_LISTEN=0.0.0.0:8080
#   9090  ces-edge internal listener    CES_EDGE_INTERNAL_LISTEN=0.0.0.0:9090  (/healthz, /readyz, /metrics)
#   9091  ces-ingest health and metrics CES_INGEST_HTTP_ADDR=0.0.0.0:9091      (/healthz, /readyz, /metrics)

# The toolchain CI and the benchmarks use (Cargo.toml's rust-version is the oldest that builds CES).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# librdkafka is built from source (rdkafka-sys runs its ./configure and make) with the system's OpenSSL and zlib,
# found through pkg-config (scripts/deps.sh installs the same on a developer's machine). The rust image brings the
# C compiler, make and perl; cmake is not needed, as the workspace leaves rdkafka's cmake-build feature off.
# Debian's security updates replace package versions, so pinning them would break the build, not secure it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads: a change to docs, deploy files or tests elsewhere does not invalidate this layer.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY protocol protocol
COPY runtime runtime
COPY services services
COPY systest systest
COPY loadtest loadtest
COPY scripts/build-release.sh scripts/build-release.sh
# The registry and the target directory live in cache mounts, so a rebuild after a source change compiles CES's
# crates only. They are not part of any layer: build-release.sh copies the binaries out to /out.
RUN --mount=type=cache,id=ces-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=ces-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=ces-target,target=/src/target,sharing=locked \
    scripts/build-release.sh --out /out/usr/local/bin
# The runtime image has glibc, libgcc_s and OpenSSL 3 (Debian 12's, as here) but not zlib, which librdkafka links:
# copy it to the multiarch directory the runtime's loader searches. Then refuse to build an image whose binaries
# need any other shared library, since nothing runs them here to find out.
RUN triple=$(gcc -dumpmachine) \
    && mkdir -p "/out/usr/lib/$triple" \
    && cp -L "/usr/lib/$triple/libz.so.1" "/out/usr/lib/$triple/" \
    && for bin in /out/usr/local/bin/*; do readelf -d "$bin"; done \
      | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | sort -u >/tmp/needed \
    && if grep -vxE 'ld-linux-(x86-64|aarch64)\.so\.[12]|lib(c|m|dl|rt|pthread)\.so\.[0-9]+|libgcc_s\.so\.1|lib(ssl|crypto)\.so\.3|libz\.so\.1' \
      /tmp/needed; then echo "the binaries need the libraries above, which the runtime image lacks" >&2; exit 1; fi

# distroless/cc: glibc, libgcc_s (Rust's unwinder needs it), OpenSSL 3, CA certificates and tzdata, no shell and no
# package manager; `base` lacks libgcc_s, `static` lacks glibc and OpenSSL. The :nonroot tag runs as 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ces" \
      org.opencontainers.image.description="Customer Event Stream: Kafka to Redis (ces-ingest), Redis to WebSockets (ces-edge), and the operator CLI (cesctl)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /out/ /
COPY schemas/ /etc/ces/schemas/
ENV CES_SCHEMA_DIR=/etc/ces/schemas
USER 65532:65532
EXPOSE 8080 9090 9091
CMD ["/usr/local/bin/ces-edge"]
