# syntax=docker/dockerfile:1.7
#
# msstore-facade container image.
#
#   docker build -t msstore-facade:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Final stage: gcr.io/distroless/cc-debian12:nonroot. It holds glibc, libgcc, CA certificates
# (/etc/ssl/certs/ca-certificates.crt, read by rustls' platform verifier), /etc/passwd with the
# `nonroot` user (65532) and nothing else: no shell, no package manager. Only the binary is
# added. Why not scratch + a static musl binary: TLS is aws-lc-rs, whose musl build needs an
# extra C toolchain, and musl's allocator is slow under tokio's many threads; distroless/cc
# gives the same attack surface (no shell, non-root) with the glibc the builder links against.
#
# The binary is PID 1 (exec-form ENTRYPOINT, no init needed: it starts no child processes). It
# handles SIGTERM itself: health turns NOT_SERVING, new connections are refused, calls in
# flight get --shutdown-grace (25 s) to finish, then it exits 0. Keep the orchestrator's stop
# timeout above that (the Helm chart derives terminationGracePeriodSeconds from it;
# `docker stop --time 30`).
#
# Pin the base images by digest in your registry mirror (`FROM ...@sha256:...`) for
# reproducible builds; the tags below are the ones this file was reviewed against.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# aws-lc-sys (rustls' crypto) needs a C compiler, cmake is not needed on x86_64/aarch64;
# protos are compiled by the pure-Rust protox, so there is no protoc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# The registry and target caches survive between builds; the binary is copied out of the
# cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin msstore-facade \
 && install -D -m 0755 target/release/msstore-facade /out/msstore-facade \
 && /out/msstore-facade --version

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="msstore-facade" \
      org.opencontainers.image.description="Typed gRPC facade in front of the Microsoft Store for Business and Store B2B key REST APIs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/msstore-facade /msstore-facade
# 65532 = distroless `nonroot`; numeric so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# gRPC (MSSTORE_GRPC_ADDR) and the admin HTTP port (MSSTORE_ADMIN_ADDR: /metrics, /healthz, /readyz).
EXPOSE 50051 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/msstore-facade"]
