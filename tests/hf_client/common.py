"""Helpers shared by the client checks (each runs as `python tests/hf_client/SCRIPT.py`, so this
module is importable from the script's own directory)."""

import hashlib


def sha256(path):
    """The sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
