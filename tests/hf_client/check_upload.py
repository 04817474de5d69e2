"""The real huggingface_hub client (and its `hf` CLI) writing to a running qstore server.

Usage: python check_upload.py EXPECTED.json

EXPECTED.json (written by tests/it/hf_client.rs) names the server, a write token, a namespace,
the local MiniLM repo folder (weights as model.safetensors, config, tokenizer, README with YAML
metadata) and the sha256 of the INT8 file the server must derive from those weights. Checks, in
order, with HF_HUB_DISABLE_XET=1 (the LFS path):
  - `hf auth login --token`, `hf auth whoami` and whoami();
  - create_repo (and 409 on a second create), upload_folder of the MiniLM folder, upload_file of
    a file big enough for a multipart LFS upload, a commit that only edits README.md (the repo's
    stored bytes grow by the README only), delete_file;
  - create_branch / create_tag, list_repo_refs, list_repo_commits, list_models(search=...),
    get_paths_info, model_info(files_metadata=True);
  - snapshot_download at main, int8, a pinned commit and its INT8 twin: every file byte-exact;
  - the CLI: hf repos create, hf upload, hf download, hf models ls (0.x: hf repo create, and no
    hf models).
Runs unchanged with huggingface_hub 2.x and 0.36.
Exits non-zero with a message on the first failure.
"""

import hashlib
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from common import check, hf_cli, sha256, tree_hashes


def main():
    expected = json.loads(Path(sys.argv[1]).read_text())
    work = Path(tempfile.mkdtemp())
    os.environ["HF_ENDPOINT"] = expected["server"]
    os.environ["HF_HOME"] = str(work / "hf-home")
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.pop("HF_TOKEN", None)
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError
    import huggingface_hub

    print("huggingface_hub", huggingface_hub.__version__)
    server, token, ns = expected["server"], expected["token"], expected["namespace"]
    folder = Path(expected["folder"])

    # Login as a user would; the token is then stored and used by every call below.
    hf_cli("auth", "login", "--token", token)
    who = hf_cli("auth", "whoami")
    check(expected["token_name"] in who, f"hf auth whoami: {who}")
    api = HfApi(endpoint=server)
    check(api.whoami()["name"] == expected["token_name"], "whoami() name")

    repo = f"{ns}/minilm"
    url = api.create_repo(repo)
    check(str(url).rstrip("/").endswith(repo), f"create_repo url {url}")
    try:
        api.create_repo(repo)
        check(False, "a second create_repo must fail")
    except HfHubHTTPError as e:
        check(e.response.status_code == 409, f"second create: {e.response.status_code}")
    api.create_repo(repo, exist_ok=True)

    first = api.upload_folder(folder_path=folder, repo_id=repo, commit_message="Add MiniLM")
    big = work / "big.bin"
    big.write_bytes(os.urandom(40 << 20))
    api.upload_file(path_or_fileobj=big, path_in_repo="extra/big.bin", repo_id=repo,
                    commit_message="A big file")

    def stored():
        with urllib.request.urlopen(f"{server}/models/{repo}") as r:
            return json.load(r)["stored_bytes"]

    before = stored()
    readme = (folder / "README.md").read_bytes() + b"\nEdited once.\n"
    api.upload_file(path_or_fileobj=readme, path_in_repo="README.md", repo_id=repo,
                    commit_message="Edit the card")
    grew = stored() - before
    check(grew == len(readme), f"a README-only commit stored {grew} bytes, not {len(readme)}")
    api.delete_file("extra/big.bin", repo_id=repo, commit_message="Drop the big file")
    check("extra/big.bin" not in api.list_repo_files(repo), "deleted file still listed")

    api.create_branch(repo, branch="dev")
    api.create_tag(repo, tag="v1", revision=first.oid)
    refs = api.list_repo_refs(repo)
    check(sorted(b.name for b in refs.branches) == ["dev", "main"], f"branches {refs}")
    check([(t.name, t.target_commit) for t in refs.tags] == [("v1", first.oid)], f"tags {refs}")
    commits = api.list_repo_commits(repo)
    titles = [c.title for c in commits]
    check(titles == ["Drop the big file", "Edit the card", "A big file", "Add MiniLM",
                     "initial commit"], f"history {titles}")
    check(commits[3].commit_id == first.oid, "history ids")
    found = [m.id for m in api.list_models(search=ns)]
    check(repo in found, f"list_models(search) -> {found}")

    infos = api.get_paths_info(repo, ["config.json", "1_Pooling", "missing.txt"])
    kinds = {i.path: type(i).__name__ for i in infos}
    check(kinds == {"config.json": "RepoFile", "1_Pooling": "RepoFolder"}, f"paths info {kinds}")
    info = api.model_info(repo, files_metadata=True)
    sibs = {s.rfilename: s for s in info.siblings}
    weights = sibs["model.safetensors"]
    check(weights.size == (folder / "model.safetensors").stat().st_size, "sibling size")
    check(weights.lfs is not None and weights.lfs.sha256 == sha256(folder / "model.safetensors"),
          "sibling lfs")
    check(all(s.size is not None for s in info.siblings), "every sibling has a size")

    # Downloads: every file byte-exact, at branches, views and pinned commits.
    local = tree_hashes(folder)
    with urllib.request.urlopen(f"{server}/models/{repo}") as r:
        details = json.load(r)
    first_twin = next(c["commits"]["int8"] for c in details["revisions"]
                      if c["revision"] == first.oid)
    main_files = dict(local, **{"README.md": hashlib.sha256(readme).hexdigest()})
    int8_sha = expected["int8_sha256"]
    for rev, want, is_int8 in [
        ("main", main_files, False),
        (first.oid, local, False),
        ("int8", main_files, True),
        (first_twin, local, True),
        ("v1", local, False),
        ("int8-v1", local, True),
    ]:
        path = snapshot_download(repo, revision=rev, cache_dir=str(work / "cache"))
        got = tree_hashes(path)
        got.pop(".gitattributes", None)
        if is_int8:
            config = json.loads(Path(path, "config.json").read_text())
            check(config["quantization_config"]["load_in_8bit"] is True, f"{rev}: INT8 config")
            check(got.pop("model.safetensors") == int8_sha, f"{rev}: INT8 weights")
            got.pop("config.json")
            want = {k: v for k, v in want.items() if k not in ("model.safetensors", "config.json")}
        check(got == want, f"{rev}: files differ: {sorted(set(got.items()) ^ set(want.items()))}")

    # The CLI (0.x names `hf repos` `hf repo` and has no `hf models`).
    modern = int(huggingface_hub.__version__.split(".")[0]) >= 1
    cli_repo = f"{ns}/cli-minilm"
    hf_cli("repos" if modern else "repo", "create", cli_repo)
    hf_cli("upload", cli_repo, str(folder), ".", "--commit-message", "CLI upload")
    out_dir = work / "cli-download"
    hf_cli("download", cli_repo, "--local-dir", str(out_dir))
    got = tree_hashes(out_dir)
    got.pop(".gitattributes", None)
    check(got == local, "hf download differs from what hf upload sent")
    if modern:
        listed = hf_cli("models", "ls", "--search", "cli-minilm", "--format", "json")
        check(cli_repo in listed, f"hf models ls: {listed}")
    else:
        print("skipped: `hf models ls` (not in huggingface_hub 0.x)")
    print("check_upload: OK")


if __name__ == "__main__":
    main()
