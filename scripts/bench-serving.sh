#!/usr/bin/env bash
# Serving benchmark, side by side in one run on this machine: GET of the INT8 and BF16 files
# from qstore (local store, and S3 store = s3s-fs) against nginx serving the same raw files from
# disk; 1 and 16 concurrent clients (wrk); time to first byte of a 1 MiB range in the middle of
# the BF16 file; qstore's peak RSS during an upload and during 16 concurrent BF16 downloads of a
# model several times larger than its memory bound. Writes the "Serving" section of
# docs/BENCHMARKS.md (between <!-- serving --> markers, kept by `cargo bench`).
#
#   scripts/bench-serving.sh            # BENCH_SECONDS=5 BENCH_REPS=3 BENCH_BIG_TENSORS=64
#   BENCH_PHASES=memory scripts/bench-serving.sh   # redo one phase (serving, memory), keep the other
#
# Needs nginx and wrk (Debian: nginx-light, wrk; installed if missing), PostgreSQL and s3s-fs
# (scripts/services.sh installs them). About 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
work="${BENCH_DIR:-/tmp/qstore-bench}"
secs="${BENCH_SECONDS:-5}"
reps="${BENCH_REPS:-3}"
big_tensors="${BENCH_BIG_TENSORS:-64}" # x 32 MiB of BF16 weights: 2 GiB by default
phases=" ${BENCH_PHASES:-serving memory} "
port_nginx=18080 port_local=18081 port_s3=18082 port_mem=18083 port_cache=18084
mkdir -p "$work"
# A phase left out keeps its results from an earlier run: there must be one, or the table
# could not be written at the end (found out only after minutes of measuring).
for phase in serving memory; do
    if [[ "$phases" != *" $phase "* && ! -s "$work/$phase.txt" ]]; then
        echo "bench: no $phase results in $work from an earlier run; run that phase too" >&2
        exit 1
    fi
done
q="$root/target/release/qstore"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -f "$work/nginx.pid" ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    scripts/services.sh stop "$work/services" 2>/dev/null || true
}
trap cleanup EXIT
log() { echo "bench: $*" >&2; }

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    log "installing nginx-light and wrk (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk
fi
cargo build --release --quiet --bin qstore --example synth
synth="$root/target/release/examples/synth"
[[ -f "$work/model.safetensors" ]] || "$synth" "$work/model.safetensors" 6 4096 4096
[[ -f "$work/big.safetensors" ]] || "$synth" "$work/big.safetensors" "$big_tensors" 4096 4096
big_mib=$(($(stat -c %s "$work/big.safetensors") >> 20))
eval "$(scripts/services.sh start "$work/services")"
s3_config="$QSTORE_TEST_CONFIG"
unset QSTORE_TEST_CONFIG

wait_ready() {
    for _ in $(seq 100); do curl -fs "$1/readyz" >/dev/null && return 0; sleep 0.1; done
    log "$1 did not come up"
    return 1
}

# serve PORT DATA_DIR [extra args...]: starts qstore in the background; its pid is $!.
serve() {
    local port="$1" data="$2"
    shift 2
    if curl -fs -o /dev/null "http://127.0.0.1:$port/healthz"; then
        log "port $port is taken by another server"
        exit 1
    fi
    QSTORE__LOG__LEVEL=warn "$q" serve --listen "127.0.0.1:$port" --data-dir "$data" "$@" \
        >"$data.log" 2>&1 &
}

upload() { # URL FILE (streamed: --data-binary would read the file into memory)
    curl -fsS -o /dev/null -X POST -T "$2" "$1"
}

if [[ "$phases" == *" serving "* ]]; then
rm -rf "$work/local" "$work/s3data" "$work/cached" "$work/www" && mkdir -p "$work/www"
serve $port_local "$work/local"
pids+=($!)
serve $port_s3 "$work/s3data" --config "$s3_config"
pids+=($!)
QSTORE__CACHE__MAX_BYTES=$((8 << 30)) serve $port_cache "$work/cached"
pids+=($!)
local_url="http://127.0.0.1:$port_local" s3_url="http://127.0.0.1:$port_s3"
cache_url="http://127.0.0.1:$port_cache"
wait_ready "$local_url" && wait_ready "$s3_url" && wait_ready "$cache_url"
name="bench-$(date +%s)"
upload "$local_url/models/$name" "$work/model.safetensors"
upload "$s3_url/models/$name" "$work/model.safetensors"
upload "$cache_url/models/$name" "$work/model.safetensors"
curl -fsS -o "$work/www/int8.safetensors" "$local_url/models/$name/int8"
curl -fsS -o "$work/www/bf16.safetensors" "$local_url/models/$name/bf16"
cmp "$work/www/bf16.safetensors" "$work/model.safetensors"
cmp "$work/www/int8.safetensors" <(curl -fsS "$s3_url/models/$name/int8")
cmp "$work/www/bf16.safetensors" <(curl -fsS "$s3_url/models/$name/bf16")
# The first whole download fills the file cache; the check reads it back from the cache.
for precision in int8 bf16; do
    curl -fsS -o /dev/null "$cache_url/models/$name/$precision"
    cmp "$work/www/$precision.safetensors" <(curl -fsS "$cache_url/models/$name/$precision")
done
curl -fsS "$cache_url/metrics" | grep -q '^qstore_cache_hits_total 2$' || {
    log "the file cache did not serve"
    exit 1
}

user_line=""
[[ "$(id -u)" == 0 ]] && user_line="user root;"
cat >"$work/nginx.conf" <<EOF
$user_line
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$port_nginx; root $work/www; }
}
EOF
nginx -c "$work/nginx.conf" -p "$work"
nginx_url="http://127.0.0.1:$port_nginx"
for _ in $(seq 50); do curl -fs -o /dev/null -r 0-0 "$nginx_url/int8.safetensors" && break; sleep 0.1; done

# MB/s (10^6 bytes) that wrk reports for URL with CONNS clients over $secs seconds.
wrk_mbps() {
    local threads=1
    [[ "$2" -gt 1 ]] && threads=2
    wrk -t"$threads" -c"$2" -d"${secs}s" --timeout 60s "$1" |
        awk '/Transfer\/sec/ {
            v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z]+/, "", v)
            f = (u == "GB") ? 1073741824 : (u == "MB") ? 1048576 : (u == "KB") ? 1024 : 1
            printf "%.1f\n", v * f / 1e6 }'
}

results="$work/serving.txt"
: >"$results"
for precision in int8 bf16; do
    for conns in 1 16; do
        for rep in $(seq "$reps"); do
            log "$precision, $conns clients, rep $rep"
            echo "tput nginx $precision $conns $(wrk_mbps "$nginx_url/$precision.safetensors" "$conns")" >>"$results"
            echo "tput local $precision $conns $(wrk_mbps "$local_url/models/$name/$precision" "$conns")" >>"$results"
            echo "tput cache $precision $conns $(wrk_mbps "$cache_url/models/$name/$precision" "$conns")" >>"$results"
            echo "tput s3 $precision $conns $(wrk_mbps "$s3_url/models/$name/$precision" "$conns")" >>"$results"
        done
    done
done

size=$(stat -c %s "$work/www/bf16.safetensors")
mid=$((size / 2))
range="$mid-$((mid + 1048575))"
for rep in $(seq 21); do
    for target in "nginx $nginx_url/bf16.safetensors" "local $local_url/models/$name/bf16" \
        "s3 $s3_url/models/$name/bf16"; do
        set -- $target
        t=$(curl -fsS -o /dev/null -r "$range" -w '%{time_starttransfer} %{time_total}' "$2")
        echo "ttfb $1 $t" >>"$results"
    done
done
fi

# Peak RSS (VmHWM, printed at exit) of a fresh server: one upload of the big model, then (new
# process) 16 concurrent BF16 downloads of it, each checked against the upload's sha256.
if [[ "$phases" == *" memory "* ]]; then
results="$work/memory.txt"
: >"$results"
big_sha=$(sha256sum "$work/big.safetensors" | cut -d' ' -f1)
peak_of() { # DATA_DIR -> MiB
    awk '/peak RSS/ {print int($(NF-1) / 1024)}' "$1.log" | tail -1
}
since() { # seconds since START (date +%s.%N)
    awk -v s="$1" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", n - s }'
}
start_measured() { # DATA_DIR [ARGS...]: a server reporting its peak RSS at exit; sets $pid
    QSTORE_REPORT_PEAK_RSS=1 serve $port_mem "$@"
    pid=$!
    pids+=("$pid")
    wait_ready "http://127.0.0.1:$port_mem"
}
stop_server() {
    kill -TERM "$1" && wait "$1" || true
}
for store in local s3; do
    extra=()
    [[ "$store" == s3 ]] && extra=(--config "$s3_config")
    data="$work/mem-$store"
    rm -rf "$data"
    mem_url="http://127.0.0.1:$port_mem"
    start_measured "$data" "${extra[@]}"
    log "$store: upload of $big_mib MiB"
    start=$(date +%s.%N)
    upload "$mem_url/models/big" "$work/big.safetensors"
    echo "upload_secs $store $(since "$start")" >>"$results"
    stop_server "$pid"
    echo "rss_upload $store $(peak_of "$data")" >>"$results"
    start_measured "$data" "${extra[@]}"
    log "$store: 16 concurrent BF16 downloads of $big_mib MiB"
    start=$(date +%s.%N)
    downloads=()
    for i in $(seq 16); do
        curl -fsS "$mem_url/models/big/bf16" | sha256sum | cut -d' ' -f1 >"$work/sha.$i" &
        downloads+=($!)
    done
    wait "${downloads[@]}"
    echo "download16_secs $store $(since "$start")" >>"$results"
    for i in $(seq 16); do
        [[ "$(cat "$work/sha.$i")" == "$big_sha" ]] || { log "download $i: wrong sha256"; exit 1; }
    done
    stop_server "$pid"
    echo "rss_download $store $(peak_of "$data")" >>"$results"
done
fi

machine="$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/ {print $2}') GiB"
cat "$work/serving.txt" "$work/memory.txt" >"$work/results.txt"
python3 scripts/bench_serving_table.py "$work/results.txt" docs/BENCHMARKS.md \
    --machine "$machine" --secs "$secs" --reps "$reps" \
    --model-mib "$(($(stat -c %s "$work/model.safetensors") >> 20))" \
    --int8-mib "$(($(stat -c %s "$work/www/int8.safetensors") >> 20))" --big-mib "$big_mib"
log "wrote docs/BENCHMARKS.md (raw numbers: $work/results.txt)"
