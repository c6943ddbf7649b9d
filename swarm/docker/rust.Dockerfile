# syntax=docker/dockerfile:1.7
#
# One Dockerfile for every Rust binary of the workspace: one compile, one small image per
# binary. Build from the repository root, one target per image:
#
#   docker build -f swarm/docker/rust.Dockerfile --target resgate-rs -t booking/resgate-rs:TAG .
#
# Targets: resgate-rs, catalog, seats, pricing, tickets, reports, identity-auth, web.
# BuildKit reuses the shared `builder` stage across targets, so building all seven costs one
# workspace compile (see swarm/README.md, "Images").

# Build and runtime bases must share a Debian release: the binaries link against the build
# image's glibc. Both are bookworm (Debian 12).
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
# distroless/cc: glibc, libgcc, libssl and CA certificates, no shell, runs as uid 65532.
# Pinned by digest; bump it deliberately.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

# --- toolchain + cargo-chef -------------------------------------------------------------------
FROM ${RUST_IMAGE} AS chef
# pkg-config/libssl-dev only matter if a crate links OpenSSL; they are cheap insurance.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo install --locked cargo-chef@0.1.78
# strip=debuginfo keeps symbol names for panic backtraces and drops DWARF: much smaller binaries.
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
WORKDIR /src

# --- dependency recipe: changes only when Cargo.toml/Cargo.lock change ------------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- build ------------------------------------------------------------------------------------
FROM chef AS builder
# The packages to ship; the same list for `cook` and `build` so features unify identically
# and the cached dependency layer is reused.
ARG PACKAGES="resgate-rs catalog seats pricing tickets reports identity-auth web healthcheck"
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer stays cached until the lockfile or a manifest changes.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    set -eu; args=""; for p in $PACKAGES; do args="$args -p $p"; done; \
    cargo chef cook --release --locked $args --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    set -eu; args=""; for p in $PACKAGES; do args="$args -p $p"; done; \
    cargo build --release --locked $args; \
    mkdir -p /out; \
    for bin in resgate-rs catalog seats pricing tickets reports identity-auth web healthcheck; do \
      install -m 0555 "target/release/$bin" "/out/$bin"; \
    done

# --- common runtime ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ARG REVISION=unknown
LABEL org.opencontainers.image.source="resgate-rs booking platform" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=builder /out/healthcheck /usr/local/bin/healthcheck
ENV LOG_FORMAT=json \
    RUST_LOG=info
USER 65532:65532
STOPSIGNAL SIGTERM

# --- one image per binary ---------------------------------------------------------------------
FROM runtime AS resgate-rs
COPY --from=builder /out/resgate-rs /usr/local/bin/resgate-rs
EXPOSE 8080 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/resgate-rs"]

FROM runtime AS catalog
COPY --from=builder /out/catalog /usr/local/bin/catalog
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/catalog"]

FROM runtime AS seats
COPY --from=builder /out/seats /usr/local/bin/seats
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/seats"]

FROM runtime AS pricing
COPY --from=builder /out/pricing /usr/local/bin/pricing
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/pricing"]

FROM runtime AS tickets
COPY --from=builder /out/tickets /usr/local/bin/tickets
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/tickets"]

FROM runtime AS reports
COPY --from=builder /out/reports /usr/local/bin/reports
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/reports"]

FROM runtime AS identity-auth
COPY --from=builder /out/identity-auth /usr/local/bin/identity-auth
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/identity-auth"]

FROM runtime AS web
COPY --from=builder /out/web /usr/local/bin/web
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "http://127.0.0.1:8000/healthz"]
ENTRYPOINT ["/usr/local/bin/web"]
