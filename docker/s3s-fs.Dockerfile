# The S3-compatible server of docker-compose.yml: s3s-fs, the same version CI runs
# (scripts/services.sh), serving a bucket directory from a volume. For trying qstore out; in
# production point storage.s3 at AWS S3, MinIO, Ceph RGW, R2... instead.

FROM rust:1.95-slim-bookworm AS build
RUN cargo install --locked --features binary --version 0.14.1 --root /opt/s3s s3s-fs

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10002 --user-group --home-dir /data --create-home s3
COPY --from=build /opt/s3s/bin/s3s-fs /usr/local/bin/s3s-fs
USER s3
VOLUME /data
EXPOSE 9000
# Buckets are directories: create the one named by $BUCKET, then serve.
ENTRYPOINT ["sh", "-c", "mkdir -p \"/data/${BUCKET:-qstore}\" && exec s3s-fs --host 0.0.0.0 --port 9000 --access-key \"$AWS_ACCESS_KEY_ID\" --secret-key \"$AWS_SECRET_ACCESS_KEY\" /data"]
HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD curl -s -o /dev/null http://127.0.0.1:9000/ || exit 1
