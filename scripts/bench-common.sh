# Shared by the benchmark scripts that drive real Hub clients (source it from the repo's root):
# the Python with huggingface_hub and hf_xet, the release binaries, and the two model folders.
#
#   bench_setup WORK TENSORS   sets venv, hub_version, xet_version, q, minilm, synthetic

bench_setup() {
    local work="$1" tensors="$2"
    venv="$(pwd)/target/ci-venv"
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/python" -c "import huggingface_hub, hf_xet" 2>/dev/null ||
        "$venv/bin/python" -m pip install --quiet --upgrade "huggingface_hub>=1.0"
    hub_version="$("$venv/bin/python" -c "import huggingface_hub; print(huggingface_hub.__version__)")"
    xet_version="$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('hf_xet'))")"
    cargo build --release --quiet --bin qstore --example synth
    q="$(pwd)/target/release/qstore"

    [[ -f testdata/minilm/model-bf16.safetensors ]] || scripts/fetch-minilm.sh
    minilm="$work/minilm"
    if [[ ! -d "$minilm" ]]; then
        mkdir -p "$minilm"
        cp -r testdata/minilm/repo/. "$minilm/"
        cp testdata/minilm/model-bf16.safetensors "$minilm/model.safetensors"
    fi
    # The tensor count is part of the folder's name: a run with another count makes its own.
    synthetic="$work/synthetic-$tensors"
    if [[ ! -f "$synthetic/model.safetensors" ]]; then
        mkdir -p "$synthetic"
        target/release/examples/synth "$synthetic/model.safetensors" "$tensors" 4096 4096
        echo '{"model_type": "llama"}' >"$synthetic/config.json"
    fi
}

# The folder of model `minilm` or `synthetic`.
bench_folder() {
    case "$1" in
    minilm) echo "$minilm" ;;
    synthetic) echo "$synthetic" ;;
    *) echo "unknown model $1" >&2; return 1 ;;
    esac
}
