# syntax=docker/dockerfile:1
# Build: everything (SQLite, libpq, OpenSSL, the proto compiler) is bundled, so
# the builder needs only Rust, a C compiler, perl and make (all in rust:bookworm).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin minicrm

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data minicrm \
    && mkdir -p /data && chown minicrm /data
COPY --from=build /src/target/release/minicrm /usr/local/bin/minicrm
USER minicrm
WORKDIR /data
# The SQLite database (and its -wal/-shm files) live here.
VOLUME ["/data"]
# It listens on every interface, so it refuses to start until told who may
# call: a tokens file (mount its directory and set MINICRM_AUTH_TOKENS, e.g.
# -v "$PWD/secrets:/etc/minicrm:ro" -e MINICRM_AUTH_TOKENS=/etc/minicrm/tokens;
# `docker kill -s HUP` reloads it), or explicitly anyone (--allow-unauthenticated
# or MINICRM_ALLOW_UNAUTHENTICATED=true). TLS: MINICRM_TLS_CERT, MINICRM_TLS_KEY
# and MINICRM_TLS_CLIENT_CA name PEM files mounted the same way.
ENV MINICRM_LISTEN=0.0.0.0:50051 \
    MINICRM_METRICS_LISTEN=0.0.0.0:9090 \
    DATABASE_URL=sqlite:///data/minicrm.db \
    RUST_LOG=info
# gRPC, and Prometheus metrics at http://HOST:9090/metrics.
EXPOSE 50051 9090
# `minicrm health` asks the server's own gRPC health service (its address is
# MINICRM_LISTEN, asked on loopback) and exits 0 only when it answers SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/minicrm", "health", "--timeout", "3"]
# minicrm stops gracefully on SIGTERM (docker stop): in-flight calls finish.
ENTRYPOINT ["/usr/local/bin/minicrm"]
