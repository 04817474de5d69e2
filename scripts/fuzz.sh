#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECS seconds each (default 60), starting from the checked-in
# seeds (fuzz/seeds/TARGET: small valid inputs, and every input that once crashed a target),
# with libFuzzer's RSS limit at 1024 MB and a 10 s per-input timeout. Fails on the first crash,
# leak of the limit or timeout, leaving the input in fuzz/artifacts/TARGET/. Prints executions
# per target. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
#
#   scripts/fuzz.sh [SECS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O
summary=()
for t in "${targets[@]}"; do
    corpus="$(pwd)/target/corpus/$t"
    rm -rf "$corpus" && mkdir -p "$corpus"
    log="$(mktemp)"
    echo "== fuzz $t for ${secs}s"
    if ! cargo +nightly fuzz run -O "$t" "$corpus" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    execs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')"
    summary+=("$t: $execs executions in ${secs}s, no crash")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
