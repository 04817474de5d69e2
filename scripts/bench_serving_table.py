"""Turns scripts/bench-serving.sh's raw numbers into the "Serving" section of docs/BENCHMARKS.md.

The section sits between <!-- serving --> and <!-- /serving --> after the codec benchmark's
<!-- notes --> marker, so `cargo bench --bench codec` keeps it; it is replaced on every run.
"""

import argparse
import datetime
import statistics
from collections import defaultdict

BEGIN, END, NOTES = "<!-- serving -->", "<!-- /serving -->", "<!-- notes -->"
GOALS = {"int8": 0.8, "bf16": 0.5}


def read(path):
    """Lines `KIND KEY... VALUE`; `ttfb TARGET FIRST TOTAL` becomes ttfb and ttfb_total rows."""
    rows = defaultdict(list)
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts[0] == "ttfb":
                rows[("ttfb", parts[1])].append(float(parts[2]))
                rows[("ttfb_total", parts[1])].append(float(parts[3]))
            else:
                rows[tuple(parts[:-1])].append(float(parts[-1]))
    return rows


def med(rows, *key):
    return statistics.median(rows[key])


def section(rows, a):
    today = datetime.date.today().isoformat()
    out = [
        BEGIN,
        "## Serving: qstore against nginx on loopback",
        "",
        f"`scripts/bench-serving.sh` on {today}, {a.machine}. One run, side by side: nginx 1.22",
        "(Debian, `sendfile on`) serving the raw INT8 and BF16 files from disk (page cache), qstore",
        "decoding them from its blob in the local store and in an S3-compatible store (s3s-fs 0.14 +",
        "PostgreSQL, on the same machine). Model: synthetic LLM-like, six 4096x4096 BF16 matrices",
        f"({a.model_mib} MiB BF16, {a.int8_mib} MiB INT8). `wrk` for {a.secs} s per cell (1 client:",
        f"1 thread; 16 clients: 2 threads, sharing the 2 cores with the server); median of {a.reps}",
        "runs, interleaved; MB/s = 10^6 bytes/s. \"decode\": every request decodes from the blob",
        "(`cache.max_bytes = 0`, the default); \"file cache\": `cache.max_bytes = 8 GiB`, both files",
        "downloaded once before, then read from local disk, CRC-32-checked as they stream.",
        "The S3 column is bound by s3s-fs answering each ranged GET in about 50 ms (curl shows the",
        "same), so it measures read-ahead depth more than qstore; real S3 latencies differ.",
        "",
        "| GET | clients | nginx | qstore, local: decode | ratio | qstore, local: file cache | ratio"
        " | goal | qstore, S3: decode | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for precision in ("int8", "bf16"):
        for conns in ("1", "16"):
            n = med(rows, "tput", "nginx", precision, conns)
            l = med(rows, "tput", "local", precision, conns)
            c = med(rows, "tput", "cache", precision, conns)
            s = med(rows, "tput", "s3", precision, conns)
            out.append(
                f"| {precision} | {conns} | {n:,.0f} MB/s | {l:,.0f} MB/s | {l / n:.2f}x "
                f"| {c:,.0f} MB/s | {c / n:.2f}x | {GOALS[precision]}x "
                f"| {s:,.0f} MB/s | {s / n:.3f}x |"
            )
    out += [
        "",
        "Time to first byte of a 1 MiB range in the middle of the BF16 file (median of 21, ms):",
        "",
        "| server | first byte | whole MiB |",
        "|---|---:|---:|",
    ]
    for target, label in (("nginx", "nginx"), ("local", "qstore, local"), ("s3", "qstore, S3")):
        first = med(rows, "ttfb", target) * 1000
        total = med(rows, "ttfb_total", target) * 1000
        out.append(f"| {label} | {first:.1f} | {total:.1f} |")
    out += [
        "",
        f"Peak RSS of the server (VmHWM) on a {a.big_mib} MiB model, several times the memory bound"
        " (docs/SERVER.md: about 370 MiB with the defaults, without LFS uploads), a fresh process for each line:",
        "",
        "| store | upload (time) | 16 concurrent BF16 downloads, each sha256-checked (time) |",
        "|---|---:|---:|",
    ]
    for store, label in (("local", "local"), ("s3", "S3 (s3s-fs)")):
        out.append(
            f"| {label} | {med(rows, 'rss_upload', store):.0f} MiB "
            f"({med(rows, 'upload_secs', store):.1f} s) "
            f"| {med(rows, 'rss_download', store):.0f} MiB "
            f"({med(rows, 'download16_secs', store):.1f} s) |"
        )
    out.append(END)
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("doc")
    for flag in ("--machine", "--secs", "--reps", "--model-mib", "--int8-mib", "--big-mib"):
        p.add_argument(flag, required=True)
    a = p.parse_args()
    rows = read(a.results)
    text = open(a.doc).read()
    new = section(rows, a)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + new + rest.split(END, 1)[1].lstrip("\n")
    elif NOTES in text:
        text = text.rstrip("\n") + "\n\n" + new
    else:
        text = text.rstrip("\n") + "\n\n" + NOTES + "\n" + new
    open(a.doc, "w").write(text)


if __name__ == "__main__":
    main()
