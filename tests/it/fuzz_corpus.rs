//! The fuzz targets' seed corpus (fuzz/seeds/TARGET): small valid inputs made by qstore's own
//! writers, so fuzzing starts from inputs that reach deep code, plus every input that once
//! crashed a target (`crash-*`, kept as regressions). Every file is replayed here through the
//! same parser the target drives, on stable Rust, in the default suite; the seeds must equal
//! what the writers make today (`QSTORE_WRITE_FUZZ_SEEDS=1` rewrites them after a format change).

use std::path::{Path, PathBuf};

use qstore::codec::quantize::{HighDtype, quantize_row};
use qstore::codec::residual::{self, ChunkRows, Layout};
use qstore::codec::{
    Int8Coding, Lanes, decode_float, decode_float16_coarse, decode_int8, decode_int8_coarse,
    decode_int8_escaped, decode_int8_rows, encode_float, encode_float16_coarse, encode_int8,
    encode_int8_coarse, encode_int8_picking, encode_int8_rows,
};
use qstore::format::{Blob, EncodeInput, EncodeOptions, Precision, encode_to_path};
use qstore::safetensors::{Dtype, TensorSpec, read_header, write_header};
use qstore::synth::llm_like_bf16;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

fn spec(name: &str, dtype: Dtype, shape: &[u64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

/// `[which, n_hi, n_lo, stream...]`, as fuzz_targets/chunk_decoders.rs reads its input
/// (`which + 5` selects the 32-lane decoder).
fn framed(which: u8, lanes: Lanes, n: usize, stream: &[u8]) -> Vec<u8> {
    let which = which + if lanes == Lanes::Wide { 5 } else { 0 };
    let mut v = vec![which, (n >> 8) as u8, n as u8];
    v.extend_from_slice(stream);
    v
}

/// Every seed: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut put = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_string(), bytes));
    };
    // A tiny model: a quantized weight, a kept bias, an F32 norm, metadata.
    let (rows, cols) = (8usize, 32usize);
    let w = llm_like_bf16(rows, cols, 7);
    let specs = [
        spec("layer.weight", Dtype::BF16, &[rows as u64, cols as u64]),
        spec("layer.bias", Dtype::BF16, &[rows as u64]),
        spec("norm.weight", Dtype::F32, &[4]),
    ];
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    let mut model = write_header(Some(&meta), &specs);
    put("safetensors_header", "header-only", model.clone());
    model.extend(w.iter().flat_map(|c| c.to_le_bytes()));
    model.extend(w[..rows].iter().flat_map(|c| c.to_le_bytes()));
    model.extend(
        [1.0f32, 0.5, -2.0, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes()),
    );
    put("safetensors_header", "tiny-model", model.clone());

    let dir = tempfile::tempdir().unwrap();
    let high = dir.path().join("model.safetensors");
    std::fs::write(&high, &model).unwrap();
    let blob = dir.path().join("model.qstore");
    let input = EncodeInput {
        high: vec![high],
        ..EncodeInput::default()
    };
    encode_to_path(&input, &EncodeOptions::default(), &blob, &|_| {}).unwrap();
    put("blob", "tiny-model", std::fs::read(&blob).unwrap());

    let mut q = vec![0u8; rows * cols];
    let mut scales = Vec::new();
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        scales.push(quantize_row(
            HighDtype::Bf16,
            row,
            &mut q[r * cols..(r + 1) * cols],
        ));
    }
    let n = q.len();
    let bf16: Vec<u8> = w.iter().flat_map(|c| c.to_le_bytes()).collect();
    let f32s: Vec<u8> = w
        .iter()
        .flat_map(|c| (f32::from(*c) * 0.5).to_le_bytes())
        .collect();
    for (lanes, suffix) in [(Lanes::Narrow, ""), (Lanes::Wide, "-wide")] {
        let int8 = framed(0, lanes, n, &encode_int8(&q, lanes));
        put("chunk_decoders", &format!("int8{suffix}"), int8);
        let float16 = framed(1, lanes, n, &encode_float(&bf16, 2, lanes));
        put("chunk_decoders", &format!("float16{suffix}"), float16);
        let float32 = framed(2, lanes, n, &encode_float(&f32s, 4, lanes));
        put("chunk_decoders", &format!("float32{suffix}"), float32);
    }
    // Coarse tables (format version 5), on 32 lanes only.
    let coarse = encode_int8_coarse(&q).expect("many int8 values");
    put(
        "chunk_decoders",
        "int8-coarse",
        framed(0, Lanes::Wide, n, &coarse),
    );
    let coarse = encode_float16_coarse(&bf16).expect("many exponents");
    put(
        "chunk_decoders",
        "float16-coarse",
        framed(1, Lanes::Wide, n, &coarse),
    );
    // Int8 rows of two spreads, alternating: a table per group of rows.
    let spread_rows: Vec<u8> = (0..7 * 1024u32)
        .map(|i| {
            let spread = if (i / 1024) % 2 == 0 { 3 } else { 61 };
            (((i.wrapping_mul(2654435761) >> 16) % spread) as i32 - spread as i32 / 2) as i8 as u8
        })
        .collect();
    let grouped = encode_int8_rows(&spread_rows, 1024).expect("two spreads pay for two tables");
    put(
        "chunk_decoders",
        "int8-rows",
        framed(0, Lanes::Wide, spread_rows.len(), &grouped),
    );
    // Coarse tables with escapes (format version 6): one table, and a table per group of rows.
    for (name, values, row_len) in [
        ("int8-escaped", &q, cols),
        ("int8-escaped-rows", &spread_rows, 1024),
    ] {
        let (escaped, coding) = encode_int8_picking(values, row_len, |_| Int8Coding::Escaped);
        assert_eq!(coding, Int8Coding::Escaped, "{name}");
        put(
            "chunk_decoders",
            name,
            framed(0, Lanes::Wide, values.len(), &escaped),
        );
    }
    // Scales as the target reads them: float16, so the residual is coded against those.
    let halves: Vec<f32> = scales
        .iter()
        .map(|s| half::f16::from_f32(*s).to_f32())
        .collect();
    let chunk = ChunkRows {
        dtype: HighDtype::Bf16,
        q: &q,
        scales: &halves,
        cols,
    };
    for (layout, name) in [
        (Layout::Narrow, "residual"),
        (Layout::WideRunsOfEight, "residual-wide-v2"),
        (Layout::Wide, "residual-wide-v3"),
        (Layout::WideBelowTop, "residual-wide"),
    ] {
        let lanes = match layout {
            Layout::Narrow => Lanes::Narrow,
            Layout::WideRunsOfEight | Layout::Wide | Layout::WideBelowTop => Lanes::Wide,
        };
        let stored = residual::encode(&chunk, &w, layout).unwrap();
        let mut v = framed(4, lanes, 0, &[]);
        v[1..3].copy_from_slice(&[(rows - 1) as u8, (cols - 1) as u8]);
        v.extend_from_slice(&q);
        v.extend(
            halves
                .iter()
                .flat_map(|s| half::f16::from_f32(*s).to_le_bytes()),
        );
        v.extend_from_slice(&stored);
        put("chunk_decoders", name, v);
    }

    for (name, range) in [
        ("first", "bytes=0-99"),
        ("suffix", "bytes=-500"),
        ("open", "bytes=1000-"),
        ("multi", "bytes=0-1,5-9"),
    ] {
        let mut v = 4096u64.to_le_bytes().to_vec();
        v.extend_from_slice(range.as_bytes());
        put("range_header", name, v);
    }

    let oid = "a".repeat(64);
    for (name, line) in [
        (
            "header",
            r#"{"key":"header","value":{"summary":"s","description":"d","parentCommit":"abc"}}"#
                .to_string(),
        ),
        (
            "file",
            r#"{"key":"file","value":{"path":"config.json","content":"e30=","encoding":"base64"}}"#
                .to_string(),
        ),
        (
            "lfs",
            format!(
                r#"{{"key":"lfsFile","value":{{"path":"model.safetensors","algo":"sha256","oid":"{oid}","size":12}}}}"#
            ),
        ),
        (
            "delete",
            r#"{"key":"deletedFile","value":{"path":"a/b.txt"}}"#.to_string(),
        ),
        (
            "folder",
            r#"{"key":"deletedFolder","value":{"path":"a/"}}"#.to_string(),
        ),
    ] {
        put("commit_line", name, line.into_bytes());
    }
    let batch = format!(
        r#"{{"operation":"upload","transfers":["basic","multipart"],"objects":[{{"oid":"{oid}","size":1234}}],"hash_algo":"sha256"}}"#
    );
    put("lfs_batch", "upload", batch.into_bytes());
    out
}

#[test]
fn seeds_are_what_the_writers_make() {
    let write = std::env::var_os("QSTORE_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = seeds_dir().join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is stale: rerun with QSTORE_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
    }
}

/// Every file of `fuzz/seeds/TARGET`.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(seeds_dir().join(target))
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds for {target}");
    files
}

struct Sink;

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn every_seed_and_regression_replays_without_a_panic() {
    for (_, data) in corpus("safetensors_header") {
        let _ = read_header(&mut &data[..]);
    }
    for (name, data) in corpus("blob") {
        let Ok(blob) = Blob::open(data) else {
            assert!(name.starts_with("crash-"), "seed {name} must open");
            continue;
        };
        for p in [Precision::Int8, Precision::High] {
            for f in blob.files(p) {
                if f.size <= 4 << 20 {
                    let _ = blob.write_range(f, 0..f.size, &mut Sink);
                }
            }
        }
    }
    for (_, data) in corpus("chunk_decoders") {
        if let [which, a, b, rest @ ..] = &data[..] {
            let n = (usize::from(*a) << 8 | usize::from(*b)) % 8192;
            let lanes = if which / 5 % 2 == 1 {
                Lanes::Wide
            } else {
                Lanes::Narrow
            };
            match which % 5 {
                0 => {
                    drop(decode_int8(rest, lanes, &mut vec![0u8; n]));
                    if lanes == Lanes::Wide {
                        drop(decode_int8_rows(rest, &mut vec![0u8; n]));
                        drop(decode_int8_coarse(rest, &mut vec![0u8; n]));
                        drop(decode_int8_escaped(rest, &mut vec![0u8; n]));
                    }
                }
                1..=3 => {
                    let size = [2, 4, 8][usize::from(which % 5) - 1];
                    drop(decode_float(rest, size, lanes, &mut vec![0u8; n * size]));
                    if size == 2 && lanes == Lanes::Wide {
                        drop(decode_float16_coarse(rest, &mut vec![0u8; n * 2]));
                    }
                }
                _ => {}
            }
        }
    }
    for (_, data) in corpus("range_header") {
        if data.len() >= 8 {
            let size = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
            if let Ok(spec) = std::str::from_utf8(&data[8..]) {
                let _ = qstore::api::parse_range(spec, size);
            }
        }
    }
    for (_, data) in corpus("commit_line") {
        let _ = qstore::api::parse_commit_line(&data, 1);
    }
    for (_, data) in corpus("lfs_batch") {
        let _ = qstore::api::parse_batch_request(&data);
    }
}
