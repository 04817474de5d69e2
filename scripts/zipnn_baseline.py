#!/usr/bin/env python3
"""ZipNN baseline for docs/BENCHMARKS.md: compress each file separately, time decompression.

Usage: zipnn_baseline.py [--reps N] FILE:DTYPE [FILE:DTYPE ...]   (DTYPE: bfloat16, float16, int8)
N timed compressions and decompressions per file (3); the bench calls it once per round with
2, between its own measurements, so that the machine's drift hits both alike.
Prints one JSON object:
  {"FILE": {"size": compressed_bytes, "encode_s": [seconds, ...], "decode_s": [seconds, ...]}, ...}
"""
import json
import sys
import time

from zipnn import ZipNN


def main() -> None:
    args = sys.argv[1:]
    reps = 3
    if args[:1] == ["--reps"]:
        reps, args = int(args[1]), args[2:]
    result = {}
    for arg in args:
        path, dtype = arg.rsplit(":", 1)
        data = open(path, "rb").read()
        # ZipNN has no int8 mode, so int8 files go through its bfloat16 byte mode like any
        # byte array. It also rewrites its input buffer in place: hand it a copy.
        z = ZipNN(bytearray_dtype="float16" if dtype == "float16" else "bfloat16", threads=2)
        encode_times = []
        for _ in range(reps):
            copy = bytes(bytearray(data))
            t = time.perf_counter()
            packed = z.compress(copy)
            encode_times.append(time.perf_counter() - t)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            out = z.decompress(packed)
            times.append(time.perf_counter() - t)
        if bytes(out) != data:
            raise SystemExit(f"zipnn round trip failed for {path}")
        result[path] = {"size": len(packed), "encode_s": encode_times, "decode_s": times}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
