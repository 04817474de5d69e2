#!/usr/bin/env bash
# Upload benchmark, side by side in one run on this machine: `hf upload` of the same model folder
# to a fresh qstore server through Xet (the client as installed, with hf_xet) and through Git LFS
# (HF_HUB_DISABLE_XET=1); wall time from the client's start to its exit (the commit included: the
# weights are encoded into a blob before it answers) and the server's peak RSS (a fresh process
# and data directory per upload, a fresh client cache too, so Xet deduplicates nothing). MiniLM
# BF16 and a synthetic LLM-like model several times the server's memory bound. Writes the
# "Uploads" section of docs/BENCHMARKS.md (between <!-- upload --> markers, kept by `cargo bench`).
#
#   scripts/bench-upload.sh        # BENCH_REPS=3 BENCH_UPLOAD_TENSORS=18 (x 32 MiB of BF16)
#
# Needs scripts/fetch-minilm.sh and a Python with huggingface_hub and hf_xet (target/ci-venv, made
# if missing). About 6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${BENCH_DIR:-/tmp/qstore-bench-upload}"
reps="${BENCH_REPS:-3}"
tensors="${BENCH_UPLOAD_TENSORS:-18}"
port=18090
log() { echo "bench-upload: $*" >&2; }
mkdir -p "$work"

source scripts/bench-common.sh
bench_setup "$work" "$tensors"

pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

# upload MODEL TRANSPORT: one timed `hf upload` to a fresh server; appends a result line.
upload() {
    local model="$1" transport="$2" data="$work/data" hf_home="$work/hf"
    rm -rf "$data" "$hf_home"
    QSTORE_REPORT_PEAK_RSS=1 "$q" serve --quiet --data-dir "$data" --listen "127.0.0.1:$port" \
        >/dev/null 2>"$work/server.log" &
    pid=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
    local env=(HF_ENDPOINT="http://127.0.0.1:$port" HF_HOME="$hf_home" HF_TOKEN=local
        HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1)
    [[ "$transport" == lfs ]] && env+=(HF_HUB_DISABLE_XET=1)
    env "${env[@]}" "$venv/bin/hf" repos create me/bench >/dev/null
    local start end
    start=$(date +%s.%N)
    env "${env[@]}" "$venv/bin/hf" upload me/bench "$(bench_folder "$model")" . >/dev/null
    end=$(date +%s.%N)
    local through_xet
    through_xet=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^qstore_xet_files_total/ {print $2}')
    if [[ ("$transport" == xet && "$through_xet" == 0) || ("$transport" == lfs && "$through_xet" != 0) ]]; then
        log "$model/$transport: the upload did not take the $transport path"
        exit 1
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    pid=""
    local rss
    rss=$(awk '/peak RSS/ {print int($(NF-1) / 1024)}' "$work/server.log" | tail -1)
    local bytes
    bytes=$(du -sb "$(bench_folder "$model")" | cut -f1)
    echo "$model $transport $(echo "$end - $start" | bc) $rss $bytes" >>"$work/results.txt"
    log "$model/$transport: $(echo "$end - $start" | bc) s, server peak $rss MiB"
}

: >"$work/results.txt"
for rep in $(seq "$reps"); do
    for model in minilm synthetic; do
        for transport in xet lfs; do
            upload "$model" "$transport"
        done
    done
done

machine="$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/ {print $2}') GiB"
python3 - "$work/results.txt" docs/BENCHMARKS.md "$machine" "$reps" "$hub_version" "$xet_version" <<'EOF'
import statistics, sys
from collections import defaultdict

results, out, machine, reps, hub, xet = sys.argv[1:7]
runs = defaultdict(list)
size = {}
for line in open(results):
    model, transport, secs, rss, nbytes = line.split()
    runs[(model, transport)].append((float(secs), int(rss)))
    size[model] = int(nbytes)
names = {"minilm": "MiniLM-L6 folder (BF16 weights 45.4 MB + tokenizer, config)",
         "synthetic": "Synthetic LLM-like (BF16, 4096x4096 matrices)"}
lines = [
    "<!-- upload -->",
    "## Uploads: `hf upload` through Xet and through LFS",
    "",
    f"`scripts/bench-upload.sh` on {machine}; huggingface_hub {hub}, hf_xet {xet}; loopback, local",
    "store + SQLite; a fresh server, data directory and client cache per upload (so Xet",
    "deduplicates nothing); time is the client's, the commit's encode included; medians of",
    f"{reps} runs, interleaved.",
    "",
    "| model | size | Xet: time | LFS: time | Xet / LFS time | Xet: server peak RSS | LFS: server peak RSS |",
    "|---|---|---|---|---|---|---|",
]
for model in ("minilm", "synthetic"):
    xs, ls = runs[(model, "xet")], runs[(model, "lfs")]
    xt, lt = statistics.median(s for s, _ in xs), statistics.median(s for s, _ in ls)
    xr, lr = statistics.median(r for _, r in xs), statistics.median(r for _, r in ls)
    mb = size[model] / 1e6
    lines.append(
        f"| {names[model]} | {mb:.0f} MB | {xt:.2f} s ({mb / xt:.0f} MB/s) | {lt:.2f} s ({mb / lt:.0f} MB/s) "
        f"| {xt / lt:.2f} | {xr:.0f} MiB | {lr:.0f} MiB |"
    )
lines += [
    "",
    "Xet costs the server a decompress-and-hash pass per xorb and a rebuild of each file from its",
    "xorbs (LZ4, checked chunk by chunk) before the commit; LFS receives the file's bytes directly.",
    "Both then encode the same blob. The client chunks and compresses for Xet, and hashes for LFS.",
    "<!-- /upload -->",
]
section = "\n".join(lines) + "\n"
text = open(out).read()
if "<!-- upload -->" in text:
    head, rest = text.split("<!-- upload -->", 1)
    tail = rest.split("<!-- /upload -->\n", 1)[1] if "<!-- /upload -->\n" in rest else ""
    text = head + section + tail
else:
    text = text.rstrip("\n") + "\n\n" + section
open(out, "w").write(text)
print(section)
EOF
log "wrote docs/BENCHMARKS.md (raw numbers: $work/results.txt)"
