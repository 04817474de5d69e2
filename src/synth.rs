//! Deterministic synthetic checkpoints for tests and benchmarks: LLM-shaped weights (heavy tails,
//! outlier columns) that exercise the codec the way real large models do, without a download.

use std::io::Write;
use std::path::Path;

use crate::safetensors::{Dtype, TensorSpec, write_header};

/// splitmix64: tiny, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

/// A `rows × cols` BF16 matrix like an LLM linear layer: Student-t(4)-tailed values with a per-row
/// spread, and a few outlier columns (LLM.int8's "emergent features") twenty times larger.
pub fn llm_like_bf16(rows: usize, cols: usize, seed: u64) -> Vec<u16> {
    let mut rng = Rng::new(seed);
    let outliers: Vec<bool> = (0..cols).map(|_| rng.uniform() < 0.004).collect();
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let sigma = 0.02 * (0.75 + 0.5 * rng.uniform());
        for &outlier in &outliers {
            let chi2: f64 = (0..4).map(|_| rng.normal().powi(2)).sum::<f64>() / 4.0;
            let mut v = sigma * rng.normal() / chi2.sqrt();
            if outlier {
                v *= 20.0;
            }
            out.push(half::bf16::from_f64(v).to_bits());
        }
    }
    out
}

/// Writes a safetensors file of `count` LLM-like `rows × cols` BF16 weights named
/// `model.layers.{i}.mlp.proj.weight`, generating one tensor at a time.
pub fn write_llm_like(
    path: &Path,
    count: usize,
    rows: usize,
    cols: usize,
    seed: u64,
) -> std::io::Result<()> {
    write_llm_like_shapes(path, &vec![(rows, cols); count], seed)
}

/// [`write_llm_like`] with a `rows × cols` shape per weight.
pub fn write_llm_like_shapes(
    path: &Path,
    shapes: &[(usize, usize)],
    seed: u64,
) -> std::io::Result<()> {
    let specs: Vec<TensorSpec> = (shapes.iter().enumerate())
        .map(|(i, &(rows, cols))| TensorSpec {
            name: format!("model.layers.{i}.mlp.proj.weight"),
            dtype: Dtype::BF16,
            shape: vec![rows as u64, cols as u64],
        })
        .collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&write_header(None, &specs))?;
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        let codes = llm_like_bf16(rows, cols, seed.wrapping_add(i as u64));
        let bytes: Vec<u8> = codes.iter().flat_map(|c| c.to_le_bytes()).collect();
        out.write_all(&bytes)?;
    }
    out.flush()
}

/// The blob (its bytes) of [`write_llm_like`]'s model with its derived INT8 file, encoded with
/// the default options: what tests of decoding need.
#[cfg(test)]
pub(crate) fn encoded_llm_like(count: usize, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    encoded_llm_like_shapes(&vec![(rows, cols); count], seed)
}

/// [`encoded_llm_like`] with a shape per weight.
#[cfg(test)]
pub(crate) fn encoded_llm_like_shapes(shapes: &[(usize, usize)], seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    write_llm_like_shapes(&model, shapes, seed).unwrap();
    let input = crate::format::EncodeInput {
        high: vec![model],
        ..Default::default()
    };
    let out = dir.path().join("m.qstore");
    let opts = crate::format::EncodeOptions::default();
    crate::format::encode_to_path(&input, &opts, &out, &|_| {}).unwrap();
    std::fs::read(&out).unwrap()
}
