# qstore server image. Build: `docker build -t qstore .`; run: see docker-compose.yml.
#
# Stage 1 compiles the one binary; stage 2 is a slim Debian of the same release (same glibc)
# with only CA certificates (TLS to S3 and PostgreSQL) and curl (the health check).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so editing the sources does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests/it \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/codec.rs && touch tests/it/main.rs \
    && cargo build --release --locked --bin qstore \
    && rm -rf src benches tests
COPY src src
COPY migrations migrations
COPY benches benches
COPY tests tests
# The stub build left newer timestamps on the stubs' outputs: make cargo see the real sources.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin qstore

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/qstore --create-home qstore
COPY --from=build /src/target/release/qstore /usr/local/bin/qstore
COPY config/default.toml /etc/qstore/qstore.toml
USER qstore
WORKDIR /var/lib/qstore
# Local state: the upload spool (and, with the default local backend, objects + SQLite).
VOLUME /var/lib/qstore
ENV QSTORE__SERVER__LISTEN=0.0.0.0:8080 \
    QSTORE__STORAGE__DATA_DIR=/var/lib/qstore
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["qstore"]
CMD ["serve", "--config", "/etc/qstore/qstore.toml"]
