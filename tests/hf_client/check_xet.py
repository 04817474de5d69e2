"""The newest huggingface_hub with hf_xet, as installed, uploading to qstore through Xet.

Usage: python check_xet.py EXPECTED.json

No environment tweaks: HF_HUB_DISABLE_XET must be unset and hf_xet importable, so every large file
goes through the Xet CAS (the client never calls the LFS batch endpoint). EXPECTED.json (written
by tests/it/hf_client.rs) names the server, a write token, a namespace, the MiniLM repo folder
and the sha256 of its derived INT8 weights, and a sharded model: its folder, a changed second
shard, and the sha256 of each INT8 shard the server must derive after the change. Checks:
  - `hf auth login --token`, `hf repos create`, `hf upload` of the MiniLM folder;
  - `upload_folder` of the sharded model, then a commit that replaces only one shard;
  - `snapshot_download` of both repos at `main` and at `int8`: every file byte-exact (INT8
    weights equal the derivation, config.json carries the quantization_config).
Exits non-zero with a message on the first failure.
"""

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from common import check, hf_cli, sha256, tree_hashes


def main():
    expected = json.loads(Path(sys.argv[1]).read_text())
    work = Path(tempfile.mkdtemp())
    check("HF_HUB_DISABLE_XET" not in os.environ, "HF_HUB_DISABLE_XET is set")
    check(importlib.util.find_spec("hf_xet") is not None, "hf_xet is not installed")
    os.environ["HF_ENDPOINT"] = expected["server"]
    os.environ["HF_HOME"] = str(work / "hf-home")
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.pop("HF_TOKEN", None)
    import huggingface_hub
    from huggingface_hub import HfApi, snapshot_download

    print("huggingface_hub", huggingface_hub.__version__)
    token, ns = expected["token"], expected["namespace"]

    hf_cli("auth", "login", "--token", token)
    api = HfApi()

    # MiniLM with the CLI.
    minilm = Path(expected["minilm"]["folder"])
    repo = f"{ns}/minilm"
    hf_cli("repos", "create", repo)
    hf_cli("upload", repo, str(minilm), ".", "--commit-message", "hf upload through Xet")

    # A sharded model with the API, then a commit that replaces one shard.
    sharded = expected["sharded"]
    folder = Path(sharded["folder"])
    repo2 = f"{ns}/sharded"
    api.create_repo(repo2)
    api.upload_folder(folder_path=folder, repo_id=repo2, commit_message="Add the model")
    changed = Path(sharded["changed"])
    api.upload_file(path_or_fileobj=str(changed), path_in_repo=sharded["changed_name"],
                    repo_id=repo2, commit_message="Retrain one shard")
    commits = [c.title for c in api.list_repo_commits(repo2)]
    check(commits[:2] == ["Retrain one shard", "Add the model"], f"history {commits}")

    def snapshot(repo_id, rev):
        path = snapshot_download(repo_id, revision=rev, cache_dir=str(work / "cache"))
        got = tree_hashes(path)
        got.pop(".gitattributes", None)
        return path, got

    def check_int8(repo_id, want, weights):
        path, got = snapshot(repo_id, "int8")
        config = json.loads(Path(path, "config.json").read_text())
        check(config["quantization_config"]["load_in_8bit"] is True, f"{repo_id}: INT8 config")
        got.pop("config.json")
        index = "model.safetensors.index.json"
        if got.pop(index, None):
            check_index(Path(path), weights)
        for name, sha in weights.items():
            check(got.pop(name, None) == sha, f"{repo_id}@int8: {name} is not the derived INT8")
        rest = {k: v for k, v in want.items() if k not in weights and k not in ("config.json", index)}
        check(got == rest, f"{repo_id}@int8: files differ: {sorted(set(got.items()) ^ set(rest.items()))}")

    def check_index(path, shards):
        """The INT8 index maps every tensor of the INT8 shards to its file, with their total size."""
        index = json.loads((path / "model.safetensors.index.json").read_text())
        mapped, total = {}, 0
        for shard in shards:
            raw = (path / shard).read_bytes()
            n = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8:8 + n])
            header.pop("__metadata__", None)
            for name, t in header.items():
                mapped[name] = shard
                total += t["data_offsets"][1] - t["data_offsets"][0]
        check(index["weight_map"] == mapped, f"INT8 index weight_map {index['weight_map']}")
        check(index["metadata"]["total_size"] == total, f"INT8 index total_size {index['metadata']}")

    local = tree_hashes(minilm)
    _, got = snapshot(repo, "main")
    check(got == local, f"{repo}@main: files differ: {sorted(set(got.items()) ^ set(local.items()))}")
    check_int8(repo, local, {"model.safetensors": expected["minilm"]["int8_sha256"]})

    want = tree_hashes(folder)
    want[sharded["changed_name"]] = sha256(changed)
    _, got = snapshot(repo2, "main")
    check(got == want, f"{repo2}@main: files differ: {sorted(set(got.items()) ^ set(want.items()))}")
    check_int8(repo2, want, sharded["int8_sha256"])
    print("check_xet: OK")


if __name__ == "__main__":
    main()
