//! Size accounting for `qstore inspect`: where the bytes of a blob go.

use serde::Serialize;

use super::index::{Index, Segment};

/// Stored bytes of one tensor (or other stream) and what they buy.
#[derive(Debug, Serialize)]
pub struct TensorReport {
    pub name: String,
    /// "quantized" (int8 + residual + scales), "shared" (stored once) or "other".
    pub kind: &'static str,
    pub params: u64,
    pub stored_bytes: u64,
    pub bits_per_param: f64,
}

/// Whole-blob accounting.
#[derive(Debug, Serialize)]
pub struct Report {
    pub high_dtype: String,
    pub blob_bytes: u64,
    pub base_bytes: u64,
    pub residual_bytes: u64,
    pub index_bytes: u64,
    pub high_files_bytes: u64,
    pub int8_files_bytes: u64,
    /// (high files + int8 files) / blob.
    pub ratio_vs_separate_files: f64,
    pub quantized_params: u64,
    /// Every byte quantized tensors cost (int8, residual, scales, their share of the index) per param.
    pub quantized_bits_per_param: f64,
    pub int8_bits_per_param: f64,
    pub residual_bits_per_param: f64,
    pub scales_bits_per_param: f64,
    pub shared_params: u64,
    pub shared_bits_per_param: f64,
    pub tensors: Vec<TensorReport>,
}

impl Report {
    pub fn new(index: &Index, blob_bytes: u64) -> Report {
        let chunk_bytes = |first: u32, n: u32| -> u64 {
            (first..first + n)
                .map(|i| u64::from(index.chunks[i as usize].stored_len()))
                .sum()
        };
        let index_bytes = blob_bytes - index.residual[1];
        let index_share =
            |n_chunks: u64| index_bytes as f64 * n_chunks as f64 / index.chunks.len().max(1) as f64;
        let bits = |bytes: f64, params: u64| {
            if params == 0 {
                0.0
            } else {
                bytes * 8.0 / params as f64
            }
        };
        let mut tensors = Vec::new();
        let (mut qp, mut q_int8, mut q_res, mut q_scales, mut q_index) =
            (0u64, 0u64, 0u64, 0u64, 0.0f64);
        let mut scale_streams = Vec::new();
        for q in &index.quantized {
            let params = q.rows * q.cols;
            let s = &index.streams[q.scales as usize];
            scale_streams.push(q.scales);
            let (a, b, c) = (
                chunk_bytes(q.int8_first, q.n_chunks),
                chunk_bytes(q.residual_first, q.n_chunks),
                chunk_bytes(s.first_chunk, s.n_chunks),
            );
            let share = index_share(2 * u64::from(q.n_chunks) + u64::from(s.n_chunks));
            qp += params;
            q_int8 += a;
            q_res += b;
            q_scales += c;
            q_index += share;
            let stored = a + b + c;
            tensors.push(TensorReport {
                name: q.name.clone(),
                kind: "quantized",
                params,
                stored_bytes: stored,
                bits_per_param: bits(stored as f64 + share, params),
            });
        }
        let tensor_streams: Vec<u32> = index
            .high_files
            .iter()
            .flat_map(|f| f.segments.iter().skip(1))
            .filter_map(|s| {
                if let Segment::Stream(i) = s {
                    Some(*i)
                } else {
                    None
                }
            })
            .collect();
        let (mut sp, mut s_bytes) = (0u64, 0.0f64);
        for (i, s) in index.streams.iter().enumerate() {
            if scale_streams.contains(&(i as u32)) {
                continue;
            }
            let stored = chunk_bytes(s.first_chunk, s.n_chunks);
            let shared = tensor_streams.contains(&(i as u32));
            let params = match (shared, s.dtype) {
                (true, Some(d)) => s.len / d.size(),
                _ => 0,
            };
            if shared {
                sp += params;
                s_bytes += stored as f64 + index_share(u64::from(s.n_chunks));
            }
            tensors.push(TensorReport {
                name: s.label.clone(),
                kind: if shared { "shared" } else { "other" },
                params,
                stored_bytes: stored,
                bits_per_param: bits(stored as f64, params),
            });
        }
        let high: u64 = index.high_files.iter().map(|f| f.size).sum();
        let int8: u64 = index.int8_files.iter().map(|f| f.size).sum();
        Report {
            high_dtype: format!("{:?}", index.high_dtype),
            blob_bytes,
            base_bytes: index.base[1] - index.base[0],
            residual_bytes: index.residual[1] - index.residual[0],
            index_bytes,
            high_files_bytes: high,
            int8_files_bytes: int8,
            ratio_vs_separate_files: (high + int8) as f64 / blob_bytes as f64,
            quantized_params: qp,
            quantized_bits_per_param: bits(
                q_int8 as f64 + q_res as f64 + q_scales as f64 + q_index,
                qp,
            ),
            int8_bits_per_param: bits(q_int8 as f64, qp),
            residual_bits_per_param: bits(q_res as f64, qp),
            scales_bits_per_param: bits(q_scales as f64, qp),
            shared_params: sp,
            shared_bits_per_param: bits(s_bytes, sp),
            tensors,
        }
    }
}
