#!/usr/bin/env bash
# Transfer benchmark through a 100 Mbit/s link, side by side in one run: `qstore push` against
# `hf upload` (through Xet, the client as installed, and through LFS), and `qstore pull` against
# `hf download` of the same repo, in BF16 (`main`) and INT8 (`int8`). The server runs in a network
# namespace of its own, joined to this one by a veth pair whose two ends are shaped by `tc` (tbf at
# 100 Mbit/s; BENCH_DELAY=10ms adds netem delay each way where the kernel has netem); nothing
# leaves the machine. Bytes over the wire are
# the veth's own counters (payload plus TCP/IP headers, both directions), time is the client's
# wall clock from start to exit. Fresh server per upload; fresh client caches and output folders
# per run. MiniLM-L6 (folder with tokenizer) and a synthetic LLM-like model of several hundred
# MB. Writes the "Transfers" section of docs/BENCHMARKS.md (between <!-- transfer --> markers).
#
#   sudo scripts/bench-transfer.sh      # BENCH_REPS=3 BENCH_TRANSFER_TENSORS=12 (x 32 MiB BF16)
#
# Needs root (ip netns, tc), scripts/fetch-minilm.sh, and a Python with huggingface_hub and
# hf_xet (target/ci-venv, made if missing). About 15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${BENCH_DIR:-/tmp/qstore-bench-transfer}"
reps="${BENCH_REPS:-3}"
tensors="${BENCH_TRANSFER_TENSORS:-12}"
rate="${BENCH_RATE:-100mbit}"
delay="${BENCH_DELAY:-}"
ns=qstore-bench
host_if=qsb0
ns_if=qsb1
server_ip=10.231.0.2
port=18095
endpoint="http://$server_ip:$port"
log() { echo "bench-transfer: $*" >&2; }
[[ "$(id -u)" == 0 ]] || { log "needs root (network namespace and tc)"; exit 1; }
mkdir -p "$work"

source scripts/bench-common.sh
bench_setup "$work" "$tensors"

pid=""
teardown() {
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    ip link del "$host_if" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
}
trap teardown EXIT
teardown
ip netns add "$ns"
ip link add "$host_if" type veth peer name "$ns_if"
ip link set "$ns_if" netns "$ns"
ip addr add 10.231.0.1/24 dev "$host_if"
ip link set "$host_if" up
ip netns exec "$ns" ip addr add "$server_ip/24" dev "$ns_if"
ip netns exec "$ns" ip link set "$ns_if" up
ip netns exec "$ns" ip link set lo up
shape() { # shape [netns exec prefix...] DEV
    local dev="${*: -1}" pre=("${@:1:$#-1}") parent=(root)
    if [[ -n "$delay" ]]; then
        "${pre[@]}" tc qdisc add dev "$dev" root handle 1: netem delay "$delay"
        parent=(parent 1:)
    fi
    "${pre[@]}" tc qdisc add dev "$dev" "${parent[@]}" handle 2: tbf rate "$rate" burst 256kb latency 100ms
}
shape "$host_if"
shape ip netns exec "$ns" "$ns_if"

# Bytes through the link so far, both directions (the host end's counters).
wire() {
    echo $(($(cat /sys/class/net/$host_if/statistics/rx_bytes) + $(cat /sys/class/net/$host_if/statistics/tx_bytes)))
}

start_server() {
    local data="$work/data"
    rm -rf "$data"
    ip netns exec "$ns" env QSTORE__AUTH__TOKENS='["bench-token"]' \
        "$q" serve --quiet --data-dir "$data" --listen "$server_ip:$port" \
        >/dev/null 2>"$work/server.log" &
    pid=$!
    for _ in $(seq 100); do curl -fs "$endpoint/readyz" >/dev/null && return 0; sleep 0.1; done
    log "the server did not come up"
    exit 1
}

stop_server() {
    kill -TERM "$pid"
    wait "$pid" || true
    pid=""
}

# timed MODEL OP CMD...: runs CMD once, appends "MODEL OP seconds wire-bytes" to the results.
timed() {
    local model="$1" op="$2"
    shift 2
    local before start end after
    before=$(wire)
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    after=$(wire)
    echo "$model $op $(echo "$end - $start" | bc) $((after - before))" >>"$work/results.txt"
    log "$model $op: $(echo "$end - $start" | bc) s, $(((after - before) / 1000)) kB on the wire"
}

hf_env=(HF_ENDPOINT="$endpoint" HF_TOKEN=bench-token HF_HUB_DISABLE_TELEMETRY=1
    HF_HUB_DISABLE_PROGRESS_BARS=1)
q_env=(QSTORE_ENDPOINT="$endpoint" QSTORE_TOKEN=bench-token XDG_CONFIG_HOME="$work/qstore-config")

run_model() {
    local model="$1" dir out="$work/out"
    dir="$(bench_folder "$1")"
    for transport in xet lfs; do
        start_server
        local env=("${hf_env[@]}" HF_HOME="$work/hf-home")
        [[ "$transport" == lfs ]] && env+=(HF_HUB_DISABLE_XET=1)
        rm -rf "$work/hf-home"
        env "${env[@]}" "$venv/bin/hf" repos create me/m >/dev/null
        timed "$model" "hf-upload-$transport" env "${env[@]}" "$venv/bin/hf" upload me/m "$dir" .
        stop_server
    done
    start_server
    timed "$model" qstore-push env "${q_env[@]}" "$q" push -q "$dir" me/m
    for precision in bf16 int8; do
        local rev=main
        [[ "$precision" == int8 ]] && rev=int8
        rm -rf "$out" "$work/hf-home"
        timed "$model" "hf-download-$precision" env "${hf_env[@]}" HF_HOME="$work/hf-home" \
            "$venv/bin/hf" download me/m --revision "$rev" --local-dir "$out"
        rm -rf "$out"
        timed "$model" "qstore-pull-$precision" env "${q_env[@]}" "$q" pull -q me/m -p "$precision" -o "$out"
    done
    rm -rf "$out" "$work/hf-home"
    stop_server
}

: >"$work/results.txt"
for rep in $(seq "$reps"); do
    log "round $rep of $reps"
    for model in minilm synthetic; do
        run_model "$model"
    done
done

machine="$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/ {print $2}') GiB"
sizes="minilm=$(du -sb "$minilm" | cut -f1) synthetic=$(du -sb "$synthetic" | cut -f1)"
weights="minilm=$(stat -c %s "$minilm/model.safetensors") synthetic=$(stat -c %s "$synthetic/model.safetensors")"
python3 - "$work/results.txt" docs/BENCHMARKS.md "$machine" "$reps" "$hub_version" "$rate" "$sizes" "$weights" "${delay:-no}" <<'EOF'
import statistics, sys
from collections import defaultdict

results, out, machine, reps, hub, rate, sizes, weights, delay = sys.argv[1:10]
sizes = {k: int(v) for k, v in (p.split("=") for p in sizes.split())}
weights = {k: int(v) for k, v in (p.split("=") for p in weights.split())}
runs = defaultdict(list)
for line in open(results):
    model, op, secs, wire = line.split()
    runs[(model, op)].append((float(secs), int(wire)))
med = lambda model, op, i: statistics.median(r[i] for r in runs[(model, op)])
names = {"minilm": "MiniLM-L6 folder", "synthetic": "Synthetic LLM-like"}
lines = [
    "<!-- transfer -->",
    f"## Transfers through a {rate[:-4]} Mbit/s link: `qstore push`/`pull` against `hf upload`/`download`",
    "",
    f"`sudo scripts/bench-transfer.sh` on {machine}; huggingface_hub {hub} (`hf`, with hf_xet);",
    f"the server in its own network namespace behind a veth pair shaped to {rate} (tbf),",
    ("no added delay" if delay == "no" else f"{delay} of netem delay each way")
    + "; local store + SQLite, file cache off. Bytes are the link's counters (both",
    "directions, headers included); time is the client's, start to exit (an upload's commit, with",
    "the server's encode and checks, included). Whole repos both ways: weights plus the other",
    f"files. Medians of {reps} runs, interleaved; fresh server per upload, fresh caches per run.",
    "",
    "| model | operation | on the wire | vs its `hf` baseline | time | vs its `hf` baseline |",
    "|---|---|---|---|---|---|",
]
rows = [  # operation, its name, the baseline it is compared with
    ("hf-upload-lfs", "`hf upload` (LFS)", None),
    ("hf-upload-xet", "`hf upload` (Xet)", "hf-upload-lfs"),
    ("qstore-push", "`qstore push`", "hf-upload-lfs"),
    ("hf-download-bf16", "`hf download` (main, BF16)", None),
    ("qstore-pull-bf16", "`qstore pull -p bf16`", "hf-download-bf16"),
    ("hf-download-int8", "`hf download --revision int8`", None),
    ("qstore-pull-int8", "`qstore pull -p int8`", "hf-download-int8"),
]
for model in ("minilm", "synthetic"):
    label = f"{names[model]} ({sizes[model] / 1e6:.1f} MB, weights {weights[model] / 1e6:.1f} MB)"
    for op, name, base in rows:
        t, w = med(model, op, 0), med(model, op, 1)
        vs_w = f"{w / med(model, base, 1):.2f}x" if base else ""
        vs_t = f"{t / med(model, base, 0):.2f}x" if base else ""
        lines.append(f"| {label} | {name} | {w / 1e6:.1f} MB | {vs_w} | {t:.2f} s | {vs_t} |")
lines += [
    "",
    "`qstore push` encodes the weights on the client and sends the blob (both precisions, smaller",
    "than the BF16 file); the server decodes it, checks it whole and encodes its own before the",
    "commit. `qstore pull` fetches only the blob sections the precision needs and rebuilds the",
    "weights locally, checking every chunk and file. Xet sends LZ4-compressed chunks (BF16 weights",
    "compress little).",
    "<!-- /transfer -->",
]
section = "\n".join(lines) + "\n"
text = open(out).read()
if "<!-- transfer -->" in text:
    head, rest = text.split("<!-- transfer -->", 1)
    tail = rest.split("<!-- /transfer -->\n", 1)[1] if "<!-- /transfer -->\n" in rest else ""
    text = head + section + tail
else:
    text = text.rstrip("\n") + "\n\n" + section
open(out, "w").write(text)
print(section)
EOF
log "wrote docs/BENCHMARKS.md (raw numbers: $work/results.txt)"
