//! Size and speed of qstore next to zstd and ZipNN, measured in one run; writes docs/BENCHMARKS.md.
//!
//! `cargo bench --bench codec` (needs `scripts/fetch-minilm.sh` first for the real model;
//! ZipNN is measured when `python3 -c "import zipnn"` works). Medians of several runs, qstore's
//! and ZipNN's interleaved (see [`ROUNDS`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use qstore::format::{
    Blob, EncodeInput, EncodeOptions, MappedFile, Precision, Report, encode_to_path,
};

/// Timed repetitions per measurement (the median is reported).
const REPS: usize = 5;

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::hint::black_box(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

struct ModelResult {
    name: String,
    report: Report,
    high_bytes: u64,
    int8_bytes: u64,
    encode_s: [f64; 2],
    decode_high_s: [f64; 2],
    decode_int8_s: [f64; 2],
    zstd: Vec<(String, u64, u64, f64)>,
    zipnn: Option<Zipnn>,
    rss: Option<(u64, u64, u64)>,
    /// Whole-process `qstore decode` seconds, as a user runs it: [bf16, int8] x [2, 1 threads].
    cli_s: Option<[[f64; 2]; 2]>,
}

/// ZipNN on the same files: compressed sizes and median seconds (2 threads).
struct Zipnn {
    high_size: u64,
    int8_size: u64,
    encode_s: f64,
    decode_s: f64,
}

/// Rounds the timed measurements are split into, qstore's and ZipNN's taking turns within
/// each: this machine's speed drifts by up to a third within minutes, and two runs of the
/// bench ten minutes apart put ZipNN's encode at 231 and 460 MB/s. Measured one after the other,
/// qstore and ZipNN would each see a different machine; interleaved, drift hits both alike.
const ROUNDS: usize = 3;

/// Timed samples of one model, gathered over the rounds; medians are reported.
#[derive(Default)]
struct Samples {
    /// [2 threads, 1 thread] each.
    encode: [Vec<f64>; 2],
    decode_high: [Vec<f64>; 2],
    decode_int8: [Vec<f64>; 2],
    /// `qstore decode` whole process: [bf16, int8] x [2, 1 threads].
    cli: [[Vec<f64>; 2]; 2],
    zipnn_encode: Vec<f64>,
    zipnn_decode: Vec<f64>,
}

fn once<T>(samples: &mut Vec<f64>, f: impl FnOnce() -> T) {
    let t = Instant::now();
    std::hint::black_box(f());
    samples.push(t.elapsed().as_secs_f64());
}

fn medians(v: &[Vec<f64>; 2]) -> [f64; 2] {
    [median(v[0].clone()), median(v[1].clone())]
}

fn bench_model(name: &str, high: &Path, work: &Path, measure_rss: bool) -> Option<ModelResult> {
    let blob_path = work.join(format!("{name}.qstore"));
    let input = EncodeInput {
        high: vec![high.to_owned()],
        shard_index: None,
        int8: vec![],
        arriving: None,
    };
    let opts = EncodeOptions::default();
    encode_to_path(&input, &opts, &blob_path, &|_| {}).unwrap();
    // Timed encodes write a new file each time, as a user's does: replacing the previous
    // run's blob would time the freeing of its pages too (about 20 ms for 90 MB).
    let encoded_path = work.join(format!("{name}.again.qstore"));
    let encode = || {
        let _ = std::fs::remove_file(&encoded_path);
        let t = Instant::now();
        encode_to_path(&input, &opts, &encoded_path, &|_| {}).unwrap();
        t.elapsed().as_secs_f64()
    };
    // Mapped, as `qstore decode` reads a blob: the bytes are in memory, as ZipNN's input is.
    let blob = Blob::open(MappedFile::new(std::fs::File::open(&blob_path).unwrap())).unwrap();
    let report = Report::new(blob.index(), std::fs::metadata(&blob_path).unwrap().len());
    let high_file = blob.file(Precision::High, None).unwrap().clone();
    let int8_file = blob.file(Precision::Int8, None).unwrap().clone();
    let int8_path = work.join(format!("{name}.int8.safetensors"));
    blob.write_file(&int8_file, &mut std::fs::File::create(&int8_path).unwrap())
        .unwrap();
    let fast = std::env::var_os("QSTORE_BENCH_FAST").is_some();
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/qstore");
    let (mut cli_ok, mut zipnn_ok) = (!fast && exe.exists(), !fast);
    if !fast && !cli_ok {
        eprintln!("CLI timing skipped: build target/release/qstore first");
    }
    let mut s = Samples::default();
    let mut zipnn_sizes = None;
    for round in 0..if fast { 1 } else { ROUNDS } {
        for (slot, threads) in [(0, 2), (1, 1)] {
            pool(threads).install(|| {
                s.encode[slot].push(encode());
                for _ in 0..2 {
                    once(&mut s.decode_high[slot], || {
                        blob.write_file(&high_file, &mut Sink).unwrap()
                    });
                    once(&mut s.decode_int8[slot], || {
                        blob.write_file(&int8_file, &mut Sink).unwrap()
                    });
                }
            });
        }
        cli_ok = cli_ok && cli_decode_round(&exe, &blob_path, &mut s.cli);
        if zipnn_ok {
            // The INT8 file only for its size, in the first round.
            let int8 = (round == 0).then_some(int8_path.as_path());
            match run_zipnn(high, int8, &mut s) {
                Some(sizes) => zipnn_sizes = zipnn_sizes.or(sizes),
                None => zipnn_ok = false,
            }
        }
    }
    let (encode_s, decode_high_s, decode_int8_s) = (
        medians(&s.encode),
        medians(&s.decode_high),
        medians(&s.decode_int8),
    );
    if fast {
        let r = |b: u64, t: [f64; 2]| format!("{} / {}", mbps(b, t[0]), mbps(b, t[1]));
        eprintln!(
            "{name}: {} bytes, {:.3} bits/param; encode {}; decode bf16 {}; int8 {} MB/s (2 threads / 1)",
            report.blob_bytes,
            report.quantized_bits_per_param,
            r(high_file.size, encode_s),
            r(high_file.size, decode_high_s),
            r(int8_file.size, decode_int8_s)
        );
        return None;
    }
    let high_data = std::fs::read(high).unwrap();
    let int8_data = std::fs::read(&int8_path).unwrap();
    let mut zstd_rows = Vec::new();
    for level in [3, 19] {
        let a = zstd::bulk::compress(&high_data, level).unwrap();
        let b = zstd::bulk::compress(&int8_data, level).unwrap();
        let t = time(REPS, || {
            zstd::bulk::decompress(&a, high_data.len()).unwrap()
        });
        zstd_rows.push((
            format!("zstd -{level}, each file"),
            a.len() as u64,
            b.len() as u64,
            t,
        ));
    }
    let zipnn = zipnn_sizes
        .filter(|_| zipnn_ok)
        .map(|(high_size, int8_size)| Zipnn {
            high_size,
            int8_size,
            encode_s: median(s.zipnn_encode.clone()),
            decode_s: median(s.zipnn_decode.clone()),
        });
    let rss = measure_rss.then(|| peak_rss(high, work)).flatten();
    let cli_s = cli_ok.then(|| [medians(&s.cli[0]), medians(&s.cli[1])]);
    Some(ModelResult {
        name: name.to_string(),
        report,
        high_bytes: high_data.len() as u64,
        int8_bytes: int8_data.len() as u64,
        encode_s,
        decode_high_s,
        decode_int8_s,
        zstd: zstd_rows,
        zipnn,
        rss,
        cli_s,
    })
}

/// One round of `qstore decode -q BLOB --precision P -o /dev/null` wall times (process start
/// to exit), two of each precision with 2 and 1 rayon threads; false if a decode failed.
fn cli_decode_round(exe: &Path, blob: &Path, out: &mut [[Vec<f64>; 2]; 2]) -> bool {
    for (p, precision) in ["bf16", "int8"].iter().enumerate() {
        for (slot, threads) in [(0, "2"), (1, "1")] {
            for _ in 0..2 {
                let t = Instant::now();
                let status = Command::new(exe)
                    .args(["decode", "-q", "--precision", precision, "-o", "/dev/null"])
                    .arg(blob)
                    .env("RAYON_NUM_THREADS", threads)
                    .status();
                out[p][slot].push(t.elapsed().as_secs_f64());
                if !status.is_ok_and(|s| s.success()) {
                    eprintln!("CLI timing skipped: qstore decode failed");
                    return false;
                }
            }
        }
    }
    true
}

/// One round of ZipNN on the BF16 file (two compressions, two decompressions, timed into
/// `s`), and on `int8` for its size. None without ZipNN; Some(None) when `int8` was not given.
fn run_zipnn(high: &Path, int8: Option<&Path>, s: &mut Samples) -> Option<Option<(u64, u64)>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/zipnn_baseline.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--reps", "2"])
        .arg(format!("{}:bfloat16", high.display()));
    if let Some(int8) = int8 {
        cmd.arg(format!("{}:int8", int8.display()));
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!(
            "zipnn baseline skipped: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let h = v.get(high.to_str()?)?;
    let times = |key: &str| -> Option<Vec<f64>> {
        Some(
            h[key]
                .as_array()?
                .iter()
                .filter_map(|t| t.as_f64())
                .collect(),
        )
    };
    s.zipnn_encode.extend(times("encode_s")?);
    s.zipnn_decode.extend(times("decode_s")?);
    // ZipNN's times vary more between runs than qstore's (session 23: its two decodes per
    // round 47-54 and 73-88 ms on the synthetic set): shown so a run's spread can be read.
    eprintln!("ZipNN decode seconds this round: {:?}", times("decode_s")?);
    match int8 {
        Some(int8) => {
            let i = v.get(int8.to_str()?)?;
            Some(Some((h["size"].as_u64()?, i["size"].as_u64()?)))
        }
        None => Some(None),
    }
}

/// Peak RSS (bytes) of `qstore encode`, `qstore decode --precision bf16` and `... int8` on
/// `high`, each in its own process, as the process reports it (VmHWM, QSTORE_REPORT_PEAK_RSS).
fn peak_rss(high: &Path, work: &Path) -> Option<(u64, u64, u64)> {
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/qstore");
    if !exe.exists() {
        eprintln!("peak RSS skipped: build target/release/qstore first");
        return None;
    }
    let run = |args: &[&str]| -> Option<u64> {
        let out = Command::new(&exe)
            .args(args)
            .env("QSTORE_REPORT_PEAK_RSS", "1")
            .output()
            .ok()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let kib: u64 = stderr
            .lines()
            .find_map(|l| l.strip_prefix("qstore: peak RSS "))?
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        out.status.success().then_some(kib * 1024)
    };
    let blob = work.join("rss.qstore");
    let out = work.join("rss.out");
    let (b, o, h) = (blob.to_str()?, out.to_str()?, high.to_str()?);
    let encode = run(&["encode", "-q", h, "-o", b])?;
    let decode_high = run(&["decode", "-q", b, "--precision", "bf16", "-o", o])?;
    let decode_int8 = run(&["decode", "-q", b, "--precision", "int8", "-o", o])?;
    Some((encode, decode_high, decode_int8))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{} cores, {cpu}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )
}

fn mbps(bytes: u64, s: f64) -> String {
    format!("{:.0}", bytes as f64 / s / 1e6)
}

/// The speed goals of issue #11, side by side with ZipNN (2 threads each): qstore's MB/s of
/// output (input for encode), ZipNN's of the BF16 file, and their ratio against the goal.
fn speed_against_zipnn(r: &ModelResult) -> String {
    let Some(z) = &r.zipnn else {
        return String::new();
    };
    let zipnn_decode = r.high_bytes as f64 / z.decode_s;
    let zipnn_encode = r.high_bytes as f64 / z.encode_s;
    let mut md = String::from(
        "\nSpeed against ZipNN (MB/s, 2 threads each; ZipNN on the BF16 file):\n\n| measure | qstore | ZipNN | ratio | goal |\n|---|---:|---:|---:|---:|\n",
    );
    let mut row = |what: &str, bytes: u64, s: f64, base: f64, goal: &str| {
        let speed = bytes as f64 / s;
        md += &format!(
            "| {what} | {:.0} | {:.0} | {:.2}x | {goal} |\n",
            speed / 1e6,
            base / 1e6,
            speed / base
        );
    };
    row(
        "decode BF16, in process",
        r.high_bytes,
        r.decode_high_s[0],
        zipnn_decode,
        ">= 1.0x",
    );
    if let Some(cli) = r.cli_s {
        row(
            "decode BF16, `qstore decode` whole process",
            r.high_bytes,
            cli[0][0],
            zipnn_decode,
            ">= 1.0x",
        );
    }
    row(
        "decode INT8, in process",
        r.int8_bytes,
        r.decode_int8_s[0],
        zipnn_decode,
        ">= 2.0x",
    );
    if let Some(cli) = r.cli_s {
        row(
            "decode INT8, `qstore decode` whole process",
            r.int8_bytes,
            cli[1][0],
            zipnn_decode,
            ">= 2.0x",
        );
    }
    row(
        "encode (ZipNN: compress)",
        r.high_bytes,
        r.encode_s[0],
        zipnn_encode,
        ">= 0.5x",
    );
    md
}

fn write_markdown(results: &[ModelResult]) -> String {
    let mut md = String::new();
    md += "# Benchmarks\n\n";
    md += "Generated by `cargo bench --bench codec` (after `cargo build --release` and `scripts/fetch-minilm.sh`).\n";
    md += &format!(
        "Machine: {}. Medians of {REPS} runs (encode: 3), warm page cache; decodes read the blob file mapped (as `qstore decode` does) and write to a null sink, encodes write a new blob file under target/ (fsync included).\n\n",
        machine()
    );
    for r in results {
        let params = r.report.quantized_params;
        let pair = r.high_bytes + r.int8_bytes;
        md += &format!("## {}\n\n", r.name);
        md += &format!(
            "Two separate files: BF16 {} bytes + INT8 {} bytes = {} bytes.\n\n",
            r.high_bytes, r.int8_bytes, pair
        );
        md += "| method | stored bytes | vs the two raw files | BF16 decode MB/s |\n|---|---:|---:|---:|\n";
        md += &format!(
            "| **qstore blob (both precisions)** | {} | {:.3}x | {} (1 thread: {}) |\n",
            r.report.blob_bytes,
            pair as f64 / r.report.blob_bytes as f64,
            mbps(r.high_bytes, r.decode_high_s[0]),
            mbps(r.high_bytes, r.decode_high_s[1])
        );
        for (label, a, b, t) in &r.zstd {
            md += &format!(
                "| {label} | {} | {:.3}x | {} (1 thread) |\n",
                a + b,
                pair as f64 / (a + b) as f64,
                mbps(r.high_bytes, *t)
            );
        }
        if let Some(z) = &r.zipnn {
            let (a, b) = (z.high_size, z.int8_size);
            md += &format!(
                "| ZipNN 0.5.4, each file (2 threads) | {} | {:.3}x | {} |\n",
                a + b,
                pair as f64 / (a + b) as f64,
                mbps(r.high_bytes, z.decode_s)
            );
            md += &format!("| ZipNN 0.5.4, BF16 file alone | {a} | | |\n");
        } else {
            md += "| ZipNN | not measured (python3 -c 'import zipnn' failed) | | |\n";
        }
        md += &speed_against_zipnn(r);
        md += "\nqstore detail:\n\n| quantity | value |\n|---|---:|\n";
        md += &format!(
            "| quantized weights, all costs, bits/param | **{:.3}** ({} params) |\n",
            r.report.quantized_bits_per_param, params
        );
        md += &format!(
            "| of which int8 / residual / scales | {:.3} / {:.3} / {:.3} |\n",
            r.report.int8_bits_per_param,
            r.report.residual_bits_per_param,
            r.report.scales_bits_per_param
        );
        md += &format!(
            "| shared (not quantized) tensors, bits/param | {:.3} ({} params) |\n",
            r.report.shared_bits_per_param, r.report.shared_params
        );
        md += &format!(
            "| encode, MB/s of BF16 input, 2 threads / 1 thread | {} / {} |\n",
            mbps(r.high_bytes, r.encode_s[0]),
            mbps(r.high_bytes, r.encode_s[1])
        );
        md += &format!(
            "| decode BF16, MB/s of output, 2 threads / 1 thread | {} / {} |\n",
            mbps(r.high_bytes, r.decode_high_s[0]),
            mbps(r.high_bytes, r.decode_high_s[1])
        );
        md += &format!(
            "| decode INT8, MB/s of output, 2 threads / 1 thread | {} / {} |\n",
            mbps(r.int8_bytes, r.decode_int8_s[0]),
            mbps(r.int8_bytes, r.decode_int8_s[1])
        );
        if let Some(cli) = r.cli_s {
            md += &format!(
                "| `qstore decode` whole process, BF16 / INT8, MB/s, 2 threads / 1 thread | {} / {}, {} / {} |\n",
                mbps(r.high_bytes, cli[0][0]),
                mbps(r.high_bytes, cli[0][1]),
                mbps(r.int8_bytes, cli[1][0]),
                mbps(r.int8_bytes, cli[1][1])
            );
        }
        if let Some((e, h, i)) = r.rss {
            md += &format!(
                "| peak RSS: encode / decode BF16 / decode INT8 (CLI, MiB) | {:.0} / {:.0} / {:.0} |\n",
                e as f64 / 1048576.0,
                h as f64 / 1048576.0,
                i as f64 / 1048576.0
            );
        }
        md += "\n";
    }
    md
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir_in(root.join("target")).unwrap();
    let mut results: Vec<ModelResult> = Vec::new();
    let minilm = std::env::var_os("QSTORE_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("testdata/minilm/model-bf16.safetensors"));
    if minilm.exists() {
        eprintln!("benchmarking MiniLM-L6 ({})", minilm.display());
        results.extend(bench_model(
            "MiniLM-L6-v2 (BF16, 22.7M params)",
            &minilm,
            work.path(),
            true,
        ));
    } else {
        eprintln!("{} missing: run scripts/fetch-minilm.sh", minilm.display());
    }
    let synth = work.path().join("llm-like.safetensors");
    qstore::synth::write_llm_like(&synth, 4, 4096, 4096, 7).unwrap();
    eprintln!("benchmarking the synthetic LLM-like set");
    results.extend(bench_model("Synthetic LLM-like: four 4096x4096 BF16 matrices, heavy tails, outlier columns (67.1M params)", &synth, work.path(), true));
    if results.is_empty() {
        return;
    }
    let big = work.path().join("llm-like-192mib.safetensors");
    qstore::synth::write_llm_like(&big, 6, 4096, 4096, 11).unwrap();
    let big_rss = peak_rss(&big, work.path());
    let mut md = write_markdown(&results);
    if let Some((e, h, i)) = big_rss {
        let mib = |b: u64| b as f64 / 1048576.0;
        md += &format!(
            "## Memory on a model larger than the bounds\n\nSix 4096x4096 BF16 matrices (192 MiB, above the 160 MiB encode and 48 MiB decode bounds of docs/FORMAT.md): peak RSS encode {:.0} MiB, decode BF16 {:.0} MiB, decode INT8 {:.0} MiB (each CLI process's own VmHWM).\n",
            mib(e),
            mib(h),
            mib(i)
        );
    }
    print!("{md}");
    let out = root.join("docs/BENCHMARKS.md");
    let keep = std::fs::read_to_string(&out).ok().and_then(|s| {
        s.split_once("\n<!-- notes -->\n")
            .map(|(_, n)| n.to_string())
    });
    let mut text = md;
    if let Some(notes) = keep {
        text += "\n<!-- notes -->\n";
        text += &notes;
    }
    std::fs::write(&out, text).unwrap();
    eprintln!("wrote {}", out.display());
}
