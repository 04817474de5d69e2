"""Helpers shared by the client checks (each runs as `python tests/hf_client/SCRIPT.py`, so this
module is importable from the script's own directory)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def sha256(path):
    """The sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(cond, message):
    """Stops the check with a message on the first failure."""
    if not cond:
        print(f"FAILED: {message}", flush=True)
        sys.exit(1)


def tree_hashes(root):
    """sha256 of every file under `root` by relative path (the client's .cache skipped)."""
    root = Path(root)
    return {
        str(p.relative_to(root)): sha256(p)
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.parts
    }


def hf_cli(*args):
    """Runs the `hf` CLI next to this Python with the current environment; its output."""
    hf = str(Path(sys.executable).parent / "hf")
    out = subprocess.run([hf, *args], capture_output=True, text=True, env=os.environ)
    check(out.returncode == 0, f"hf {' '.join(args)}: {out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr
