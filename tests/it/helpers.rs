//! Building safetensors inputs, encoding them and reading every output back.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use qstore::format::{Blob, EncodeInput, EncodeOptions, Precision, encode_to_path};
use qstore::safetensors::{self, Dtype, TensorSpec};
use sha2::{Digest, Sha256};

/// A tensor to write: its bytes are exactly what the file will hold.
#[derive(Clone, Debug)]
pub struct T {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

impl T {
    pub fn new(name: &str, dtype: Dtype, shape: &[u64], data: Vec<u8>) -> T {
        T {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    /// An LLM-like BF16 weight (see `qstore::synth::llm_like_bf16`).
    pub fn llm(name: &str, rows: u64, cols: u64, seed: u64) -> T {
        let codes = qstore::synth::llm_like_bf16(rows as usize, cols as usize, seed);
        T::codes(name, Dtype::BF16, &[rows, cols], &codes)
    }

    /// A 16-bit float tensor from codes.
    pub fn codes(name: &str, dtype: Dtype, shape: &[u64], codes: &[u16]) -> T {
        T::new(
            name,
            dtype,
            shape,
            codes.iter().flat_map(|c| c.to_le_bytes()).collect(),
        )
    }
}

/// Writes a safetensors file with the given metadata and tensors (in data order).
pub fn write_st(path: &Path, metadata: &[(&str, &str)], tensors: &[T]) {
    let meta: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let mut bytes = safetensors::write_header((!metadata.is_empty()).then_some(&meta), &specs);
    for t in tensors {
        bytes.extend_from_slice(&t.data);
    }
    std::fs::write(path, bytes).unwrap();
}

/// Writes `dir/m.safetensors` holding one LLM-like BF16 weight `a.weight` of `rows × cols`.
pub fn one_weight_model(dir: &Path, rows: u64, cols: u64, seed: u64) -> PathBuf {
    let path = dir.join("m.safetensors");
    let codes = qstore::synth::llm_like_bf16(rows as usize, cols as usize, seed);
    write_st(
        &path,
        &[],
        &[T::codes("a.weight", Dtype::BF16, &[rows, cols], &codes)],
    );
    path
}

pub fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Encodes with default options into `dir/model.qstore`.
pub fn encode(dir: &Path, high: &[PathBuf], index: Option<PathBuf>, int8: &[PathBuf]) -> PathBuf {
    encode_with(dir, high, index, int8, &EncodeOptions::default())
}

pub fn encode_with(
    dir: &Path,
    high: &[PathBuf],
    index: Option<PathBuf>,
    int8: &[PathBuf],
    opts: &EncodeOptions,
) -> PathBuf {
    let out = dir.join("model.qstore");
    let input = EncodeInput {
        high: high.to_vec(),
        shard_index: index,
        int8: int8.to_vec(),
        arriving: None,
    };
    encode_to_path(&input, opts, &out, &|_| {}).unwrap();
    out
}

/// Every output file of one precision: (name, bytes).
pub fn decode_all(blob: &Path, p: Precision) -> Vec<(String, Vec<u8>)> {
    let blob = Blob::open(std::fs::File::open(blob).unwrap()).unwrap();
    blob.files(p)
        .iter()
        .map(|f| {
            let mut out = Vec::new();
            blob.write_file(f, &mut out).unwrap();
            assert_eq!(out.len() as u64, f.size);
            assert_eq!(sha(&out), f.sha256, "index sha256 of {}", f.name);
            (f.name.clone(), out)
        })
        .collect()
}

/// The tensors of a safetensors file held in memory: (name, dtype, shape, bytes), data order.
pub fn tensors_of(file: &[u8]) -> Vec<(String, Dtype, Vec<u64>, Vec<u8>)> {
    let h = safetensors::read_header(&mut &file[..]).unwrap();
    h.check_file_len(file.len() as u64).unwrap();
    let start = h.data_start() as usize;
    h.tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype,
                t.shape.clone(),
                file[start + t.begin as usize..start + t.end as usize].to_vec(),
            )
        })
        .collect()
}

/// bitsandbytes' CPU LLM.int8 formula, written out independently of the crate (see
/// shared/docs/hub-protocol.md): x = f32(f16(w)); a = max|x|; s = f32(f32(1/a) * 127);
/// q = i8(round_half_even(x * s)); all-zero, NaN and beyond-f16 rows give q = 0.
pub fn reference_int8(dtype: Dtype, codes: &[u16], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let to_x = |c: u16| -> f32 {
        match dtype {
            Dtype::BF16 => f16::from_f32(bf16::from_bits(c).to_f32()).to_f32(),
            Dtype::F16 => f16::from_bits(c).to_f32(),
            _ => unreachable!(),
        }
    };
    let mut q = Vec::with_capacity(codes.len());
    let mut scb = Vec::new();
    for row in codes.chunks(cols) {
        let xs: Vec<f32> = row.iter().map(|&c| to_x(c)).collect();
        let a = if xs.iter().any(|x| x.is_nan()) {
            f32::NAN
        } else {
            xs.iter().fold(0.0f32, |m, x| m.max(x.abs()))
        };
        scb.push(a);
        if !(a.is_finite() && a > 0.0) {
            q.extend(std::iter::repeat_n(0i8, row.len()));
            continue;
        }
        let inv = 1.0f32 / a;
        let s = inv * 127.0f32;
        q.extend(xs.iter().map(|&x| (x * s).round_ties_even() as i8));
    }
    (q, scb)
}

/// 16-bit codes of a float16-family tensor's bytes.
pub fn codes_of(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Checks a derived INT8 file against the reference formula and the high-precision input:
/// quantized weights are I8 + SCB + weight_format, everything else is byte-identical.
pub fn check_derived_int8(high: &[u8], int8: &[u8], quantized: &dyn Fn(&str) -> bool) {
    let h = tensors_of(high);
    let i = tensors_of(int8);
    let meta = safetensors::read_header(&mut &int8[..])
        .unwrap()
        .metadata
        .unwrap();
    assert_eq!(meta.get("format").and_then(|v| v.as_str()), Some("pt"));
    let find = |n: &str| {
        i.iter()
            .find(|t| t.0 == n)
            .unwrap_or_else(|| panic!("int8 file lacks {n}"))
    };
    let mut expected_count = 0;
    for (name, dtype, shape, data) in &h {
        if quantized(name) {
            let prefix = name.strip_suffix(".weight").unwrap();
            let (q, scb) = reference_int8(*dtype, &codes_of(data), shape[1] as usize);
            let w = find(name);
            assert_eq!((w.1, &w.2), (Dtype::I8, shape));
            assert!(
                w.3.iter().zip(&q).all(|(&b, &v)| b as i8 == v),
                "int8 values of {name}"
            );
            let s = find(&format!("{prefix}.SCB"));
            let got: Vec<u32> =
                s.3.chunks_exact(4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
            let want: Vec<u32> = scb.iter().map(|a| a.to_bits()).collect();
            assert_eq!((s.1, &s.2), (Dtype::F32, &vec![shape[0]]));
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(g, w)| g == w
                        || (f32::from_bits(*g).is_nan() && f32::from_bits(*w).is_nan())),
                "SCB of {name}"
            );
            let wf = find(&format!("{prefix}.weight_format"));
            assert_eq!((wf.1, wf.2.len(), &wf.3[..]), (Dtype::U8, 0, &[0u8][..]));
            expected_count += 3;
        } else {
            let t = find(name);
            assert_eq!(
                (&t.1, &t.2, &t.3),
                (dtype, shape, data),
                "shared tensor {name}"
            );
            expected_count += 1;
        }
    }
    assert_eq!(i.len(), expected_count, "no extra tensors in the int8 file");
}

/// The INT8 file a local encode derives from the same weights.
pub fn derived_int8(weights: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, weights).unwrap();
    let blob = encode(dir.path(), &[path], None, &[]);
    decode_all(&blob, qstore::format::Precision::Int8)
        .remove(0)
        .1
}

/// `blob` with its index JSON replaced by `edit(index)` (recompressed, footer rewritten).
pub fn with_index(blob: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let footer = &blob[blob.len() - 32..];
    let offset = u64::from_le_bytes(footer[0..8].try_into().unwrap()) as usize;
    let mut index: serde_json::Value =
        serde_json::from_slice(&zstd::decode_all(&blob[offset..blob.len() - 32]).unwrap()).unwrap();
    edit(&mut index);
    let packed = zstd::encode_all(index.to_string().as_bytes(), 3).unwrap();
    let mut out = blob[..offset].to_vec();
    out.extend_from_slice(&packed);
    out.extend_from_slice(&(offset as u64).to_le_bytes());
    out.extend_from_slice(&(packed.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&packed).to_le_bytes());
    out.extend_from_slice(&footer[20..32]);
    out
}
