#!/usr/bin/env bash
# Starts (or stops) the shared backends a multi-replica deployment uses, as real local processes:
# PostgreSQL (Debian's package) and an S3-compatible server (s3s-fs from crates.io). Used by
# .ci/run and the serving benchmark; handy by hand too:
#
#   eval "$(scripts/services.sh start /tmp/qstore-services)"   # installs what is missing
#   QSTORE_TEST_CONFIG=... cargo test --release -- --include-ignored   # the suite against S3 + PostgreSQL
#   qstore serve --config /tmp/qstore-services/s3-pg.toml
#   scripts/services.sh stop /tmp/qstore-services
#
# `start` prints shell exports (AWS credentials, QSTORE_TEST_CONFIG) on stdout; progress goes to
# stderr. Ports: QSTORE_PG_PORT (55432), QSTORE_S3_PORT (59000).
set -euo pipefail

cmd="${1:?usage: services.sh start|stop DIR}"
dir="${2:?usage: services.sh start|stop DIR}"
pg_port="${QSTORE_PG_PORT:-55432}"
s3_port="${QSTORE_S3_PORT:-59000}"
root="$(cd "$(dirname "$0")/.." && pwd)"
s3s_version=0.14.1 # newer releases need a newer rustc than the toolchain here
s3s_bin="$root/target/tools/bin/s3s-fs"
access_key=qstore-access
secret_key=qstore-secret-key
bucket=qstore

log() { echo "services: $*" >&2; }

# PostgreSQL refuses to run as root; run its tools as the postgres user then.
as_pg() {
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
    local bin
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    echo "$bin"
}

install_missing() {
    if [[ -z "$(pg_bin)" ]]; then
        log "installing postgresql (apt-get)"
        local sudo=""
        [[ "$(id -u)" == 0 ]] || sudo=sudo
        $sudo apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
    fi
    if [[ ! -x "$s3s_bin" ]]; then
        log "installing s3s-fs $s3s_version (cargo install)"
        cargo install --quiet --locked --features binary --version "$s3s_version" \
            --root "$root/target/tools" s3s-fs >&2
    fi
}

wait_for() {
    local what="$1"
    shift
    for _ in $(seq 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    log "$what did not come up"
    return 1
}

# The PostgreSQL cluster's folder: inside DIR, unless (running as root) the postgres user cannot
# reach DIR, as under a private home; then beside it in /tmp, named by port.
pg_dir() {
    if [[ "$(id -u)" == 0 ]] && ! runuser -u postgres -- test -x "$dir"; then
        echo "/tmp/qstore-pg-$pg_port"
    else
        echo "$dir/pg"
    fi
}

start() {
    install_missing
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local bin pg
    bin="$(pg_bin)"
    pg="$(pg_dir)"

    if [[ ! -d "$pg/data" ]]; then
        mkdir -p "$pg"
        [[ "$(id -u)" == 0 ]] && chown postgres "$pg"
        as_pg "$bin/initdb" -D "$pg/data" -U postgres --auth=trust >/dev/null
    fi
    if ! as_pg "$bin/pg_ctl" -D "$pg/data" status >/dev/null 2>&1; then
        log "starting PostgreSQL on 127.0.0.1:$pg_port"
        as_pg "$bin/pg_ctl" -D "$pg/data" -l "$pg/log" -w \
            -o "-p $pg_port -k $pg -h 127.0.0.1 -c max_connections=300" start >&2
    fi
    as_pg "$bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'qstore'" | grep -q 1 ||
        as_pg "$bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE DATABASE qstore" >&2

    mkdir -p "$dir/s3/$bucket"
    if ! [[ -f "$dir/s3.pid" ]] || ! kill -0 "$(cat "$dir/s3.pid")" 2>/dev/null; then
        log "starting s3s-fs on 127.0.0.1:$s3_port"
        nohup "$s3s_bin" --host 127.0.0.1 --port "$s3_port" \
            --access-key "$access_key" --secret-key "$secret_key" "$dir/s3" \
            >"$dir/s3.log" 2>&1 &
        echo $! >"$dir/s3.pid"
    fi
    wait_for "s3s-fs" curl -s -o /dev/null "http://127.0.0.1:$s3_port/"

    cat >"$dir/s3-pg.toml" <<EOF
# qstore against the services started by scripts/services.sh (credentials: environment).
[storage]
backend = "s3"

[storage.s3]
bucket = "$bucket"
endpoint = "http://127.0.0.1:$s3_port"
region = "us-east-1"
path_style = true

[catalog]
database_url = "postgres://postgres@127.0.0.1:$pg_port/qstore"
max_connections = 8
EOF
    cat <<EOF
export AWS_ACCESS_KEY_ID=$access_key
export AWS_SECRET_ACCESS_KEY=$secret_key
export QSTORE_TEST_CONFIG=$dir/s3-pg.toml
EOF
}

stop() {
    [[ -d "$dir" ]] || return 0
    if [[ -f "$dir/s3.pid" ]]; then
        kill "$(cat "$dir/s3.pid")" 2>/dev/null || true
        rm -f "$dir/s3.pid"
    fi
    local pg
    pg="$(pg_dir)"
    if [[ -d "$pg/data" ]]; then
        as_pg "$(pg_bin)/pg_ctl" -D "$pg/data" -m fast stop >&2 || true
    fi
}

case "$cmd" in
start) start ;;
stop) stop ;;
*)
    echo "usage: services.sh start|stop DIR" >&2
    exit 2
    ;;
esac
