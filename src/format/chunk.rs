//! Chunk codecs and the encode-then-verify step every chunk goes through before it is written.

use serde::{Deserialize, Serialize};

use crate::codec::{self, Lanes, quantize::HighDtype, residual};
use crate::safetensors::Dtype;

use super::FormatError;

/// How a chunk's stored bytes turn into its decoded bytes. Stored as its number in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum ChunkCodec {
    /// Stored as is.
    Raw = 0,
    /// One zstd frame.
    Zstd = 1,
    /// Rotated byte planes of 2-byte floats, rANS with one table per plane.
    Float16 = 2,
    /// The same for 4-byte floats.
    Float32 = 3,
    /// The same for 8-byte floats.
    Float64 = 4,
    /// Int8 values, rANS with one table.
    Int8 = 5,
    /// High-precision codes given int8 values and scales (codec::residual).
    Residual = 6,
    /// 4-byte floats that are all exactly representable in float16 (bitsandbytes scales are:
    /// they are the absmax of float16-cast weights), stored as float16 with the Float16 codec.
    Float32AsF16 = 7,
    // Version 2: codecs 2-7 with their rANS stream on 32 lanes instead of 4, which SIMD
    // decodes eight at a time. Same layouts otherwise.
    Float16Wide = 8,
    Float32Wide = 9,
    Float64Wide = 10,
    Int8Wide = 11,
    ResidualWide = 12,
    Float32AsF16Wide = 13,
    /// Version 3: the wide residual with its whole values in runs of 32 pairs instead of 8
    /// (`residual::Layout::Wide`), which SIMD decodes a group at a time.
    ResidualRuns32 = 14,
    /// Version 4: int8 values with a table per group of rows (`codec::encode_int8_rows`), on
    /// 32 lanes. Written where the rows' values spread differently enough to pay for the
    /// extra tables; other int8 chunks stay `Int8Wide`.
    Int8Rows = 15,
    /// Version 4: codec 14 with whole values' high bytes coded below their row's top byte
    /// (`residual::Layout::WideBelowTop`). Written for every wide residual chunk since.
    ResidualBelowTop = 16,
    /// Version 5: `Int8Wide` with a coarse table (2^12 slots, `codec::encode_int8_coarse`),
    /// which AVX-512 decodes with one gather per sixteen values. Written where it costs
    /// little size ([`COARSE_ALLOWANCE`]).
    Int8Coarse = 17,
    /// Version 5: `Float16Wide` with coarse tables (`codec::encode_float16_coarse`), on the
    /// same terms.
    Float16Coarse = 18,
    /// Version 6: int8 values with coarse tables, per group of rows where grouping pays, their
    /// rare values escaped (`codec::Int8Coding::Escaped`): the coarse loop's speed without
    /// paying a slot for every value the outliers reach. Written on the terms of codec 17.
    Int8Escaped = 19,
}

/// Bits per value a coarse chunk may cost over the best other one and still be written: its
/// table loop is up to 1.55x faster (AVX-512, measured). At 0.015 every int8 chunk of MiniLM
/// is coarse (31 plain, 6 escaped; 0.005 left 25 on 2^14 tables) and its INT8 decodes 9-14%
/// faster, for 8 KB of its 30 MB: its quantized weights stay under 10.6 bits each.
pub const COARSE_ALLOWANCE: f64 = 0.015;

/// Whether a coarse chunk of about `coarse` bytes is worth writing instead of `best` bytes for
/// `values` values.
fn coarse_pays(coarse: f64, best: f64, values: usize) -> bool {
    coarse <= best + COARSE_ALLOWANCE * values as f64 / 8.0
}

/// Chunks of fewer elements are written on 4 lanes: 32 lanes cost 112 more bytes of stream
/// header, which a small chunk (scales, norms, biases) feels and a fast loop does not repay.
const WIDE_MIN_ELEMENTS: usize = 1 << 14;

/// The lanes a new chunk of `elements` values is written with.
fn write_lanes(elements: usize) -> Lanes {
    if elements >= WIDE_MIN_ELEMENTS {
        Lanes::Wide
    } else {
        Lanes::Narrow
    }
}

impl ChunkCodec {
    /// The coder behind a codec (its version-1 number) and the lanes its stream uses.
    pub fn coder(self) -> (ChunkCodec, Lanes) {
        use ChunkCodec::*;
        match self {
            Float16Wide => (Float16, Lanes::Wide),
            Float32Wide => (Float32, Lanes::Wide),
            Float64Wide => (Float64, Lanes::Wide),
            Int8Wide => (Int8, Lanes::Wide),
            ResidualWide | ResidualRuns32 | ResidualBelowTop => (Residual, Lanes::Wide),
            Int8Rows => (Int8Rows, Lanes::Wide),
            Int8Coarse => (Int8Coarse, Lanes::Wide),
            Float16Coarse => (Float16Coarse, Lanes::Wide),
            Int8Escaped => (Int8Escaped, Lanes::Wide),
            Float32AsF16Wide => (Float32AsF16, Lanes::Wide),
            narrow => (narrow, Lanes::Narrow),
        }
    }

    /// The codec of `coder` on `lanes`: the inverse of [`ChunkCodec::coder`]. Raw and Zstd
    /// have no lanes and stay as they are.
    fn on(coder: ChunkCodec, lanes: Lanes) -> ChunkCodec {
        use ChunkCodec::*;
        match (coder, lanes) {
            (Float16, Lanes::Wide) => Float16Wide,
            (Float32, Lanes::Wide) => Float32Wide,
            (Float64, Lanes::Wide) => Float64Wide,
            (Int8, Lanes::Wide) => Int8Wide,
            (Residual, Lanes::Wide) => ResidualBelowTop,
            (Float32AsF16, Lanes::Wide) => Float32AsF16Wide,
            (c, _) => c,
        }
    }

    /// Whether a blob of format `version` may hold this codec: version 1 has codecs 0-7 only,
    /// version 2 codecs 0-13, version 3 codecs 0-14, version 4 codecs 0-16, version 5 codecs
    /// 0-18.
    pub fn allowed_in(self, version: u32) -> bool {
        match self {
            ChunkCodec::ResidualRuns32 => version >= 3,
            ChunkCodec::Int8Rows | ChunkCodec::ResidualBelowTop => version >= 4,
            ChunkCodec::Int8Coarse | ChunkCodec::Float16Coarse => version >= 5,
            ChunkCodec::Int8Escaped => version >= 6,
            _ => version >= 2 || self.coder().1 == Lanes::Narrow,
        }
    }

    /// The layout of a residual codec's chunks.
    fn residual_layout(self) -> Option<residual::Layout> {
        match self {
            ChunkCodec::Residual => Some(residual::Layout::Narrow),
            ChunkCodec::ResidualWide => Some(residual::Layout::WideRunsOfEight),
            ChunkCodec::ResidualRuns32 => Some(residual::Layout::Wide),
            ChunkCodec::ResidualBelowTop => Some(residual::Layout::WideBelowTop),
            _ => None,
        }
    }
}

impl From<ChunkCodec> for u8 {
    fn from(c: ChunkCodec) -> u8 {
        c as u8
    }
}

impl TryFrom<u8> for ChunkCodec {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        use ChunkCodec::*;
        [
            Raw,
            Zstd,
            Float16,
            Float32,
            Float64,
            Int8,
            Residual,
            Float32AsF16,
            Float16Wide,
            Float32Wide,
            Float64Wide,
            Int8Wide,
            ResidualWide,
            Float32AsF16Wide,
            ResidualRuns32,
            Int8Rows,
            ResidualBelowTop,
            Int8Coarse,
            Float16Coarse,
            Int8Escaped,
        ]
        .into_iter()
        .find(|c| *c as u8 == v)
        .ok_or_else(|| format!("unknown chunk codec {v}"))
    }
}

/// A chunk ready to be written.
pub struct EncodedChunk {
    pub stored: Vec<u8>,
    pub codec: ChunkCodec,
    pub decoded_len: u32,
    pub crc32: u32,
}

impl EncodedChunk {
    fn new(mut stored: Vec<u8>, codec: ChunkCodec, decoded: &[u8]) -> Self {
        // Coders reserve room for the worst case; a batch of thousands of tiny chunks must not
        // keep that slack alive until it is written.
        stored.shrink_to_fit();
        EncodedChunk {
            stored,
            codec,
            decoded_len: decoded.len() as u32,
            crc32: crc32fast::hash(decoded),
        }
    }
}

/// What the bytes of a stream are, which decides the codec tried first.
#[derive(Debug, Clone, Copy)]
pub enum Content {
    Tensor(Dtype),
    /// Headers, JSON: small and text-like, worth a strong level.
    Text,
}

/// zstd level for [`Content::Text`]: on a 12 KB safetensors header, level 15 writes 6 bytes
/// more than level 19 (1,148 against 1,142) in a quarter of the time (about 3% of a MiniLM
/// encode went to level 19's setup).
const TEXT_LEVEL: i32 = 15;

/// Compresses plain bytes with the codec that suits them, falling back to raw storage when
/// compression does not pay, and proves the result decodes back before returning it.
pub fn encode_bytes(data: &[u8], content: Content) -> Result<EncodedChunk, FormatError> {
    let (codec, stored) = match content {
        Content::Tensor(d) if d.is_float() => {
            let codec = match d.size() {
                2 => ChunkCodec::Float16,
                4 => ChunkCodec::Float32,
                _ => ChunkCodec::Float64,
            };
            let lanes = write_lanes(data.len() / d.size() as usize);
            match (d.size(), lanes) {
                (2, Lanes::Wide) => {
                    let pick = |fine, coarse: Option<f64>| {
                        Some(coarse.is_some_and(|c| coarse_pays(c, fine, data.len() / 2)))
                    };
                    match codec::encode_float16_picking(data, pick) {
                        Some((stored, true)) => (ChunkCodec::Float16Coarse, stored),
                        Some((stored, false)) => (ChunkCodec::Float16Wide, stored),
                        None => unreachable!("the pick always codes one"),
                    }
                }
                _ => (
                    ChunkCodec::on(codec, lanes),
                    codec::encode_float(data, d.size() as usize, lanes),
                ),
            }
        }
        Content::Tensor(_) => (ChunkCodec::Zstd, zstd::bulk::compress(data, 3)?),
        Content::Text => (ChunkCodec::Zstd, zstd::bulk::compress(data, TEXT_LEVEL)?),
    };
    let (codec, stored) = match (content, as_exact_f16(data)) {
        (Content::Tensor(Dtype::F32), Some(halves)) => {
            let lanes = write_lanes(halves.len() / 2);
            let narrow = codec::encode_float(&halves, 2, lanes);
            if narrow.len() < stored.len() {
                (ChunkCodec::on(ChunkCodec::Float32AsF16, lanes), narrow)
            } else {
                (codec, stored)
            }
        }
        _ => (codec, stored),
    };
    let chunk = if stored.len() < data.len() {
        EncodedChunk::new(stored, codec, data)
    } else {
        EncodedChunk::new(data.to_vec(), ChunkCodec::Raw, data)
    };
    let mut check = vec![0u8; data.len()];
    decode_bytes(chunk.codec, &chunk.stored, &mut check)?;
    if check != data {
        return Err(FormatError::Corrupt(format!(
            "{codec:?} chunk failed to round-trip while encoding"
        )));
    }
    Ok(chunk)
}

/// The float16 little-endian bytes of float32 data, if every value converts both ways bit-exactly.
fn as_exact_f16(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 2);
    for v in data.chunks_exact(4) {
        let bits = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        let h = half::f16::from_f32(f32::from_bits(bits));
        if h.to_f32().to_bits() != bits {
            return None;
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    Some(out)
}

/// Decodes a plain-bytes chunk into `out`, which has exactly the decoded length.
pub fn decode_bytes(codec: ChunkCodec, stored: &[u8], out: &mut [u8]) -> Result<(), FormatError> {
    let (coder, lanes) = codec.coder();
    match coder {
        ChunkCodec::Raw if stored.len() == out.len() => out.copy_from_slice(stored),
        ChunkCodec::Zstd => {
            let n = zstd::bulk::decompress_to_buffer(stored, out)
                .map_err(|e| FormatError::Corrupt(format!("zstd chunk: {e}")))?;
            if n != out.len() {
                return Err(FormatError::Corrupt(
                    "zstd chunk has the wrong length".into(),
                ));
            }
        }
        ChunkCodec::Float16 => codec::decode_float(stored, 2, lanes, out)?,
        ChunkCodec::Float16Coarse => codec::decode_float16_coarse(stored, out)?,
        ChunkCodec::Float32 => codec::decode_float(stored, 4, lanes, out)?,
        ChunkCodec::Float64 => codec::decode_float(stored, 8, lanes, out)?,
        ChunkCodec::Float32AsF16 if out.len().is_multiple_of(4) => {
            let mut halves = vec![0u8; out.len() / 2];
            codec::decode_float(stored, 2, lanes, &mut halves)?;
            for (o, h) in out.chunks_exact_mut(4).zip(halves.chunks_exact(2)) {
                o.copy_from_slice(
                    &half::f16::from_le_bytes([h[0], h[1]])
                        .to_f32()
                        .to_le_bytes(),
                );
            }
        }
        _ => {
            return Err(FormatError::Corrupt(format!(
                "{codec:?} chunk where plain bytes were expected"
            )));
        }
    }
    Ok(())
}

/// What a chunk must decode to: plain bytes (a stream's chunk, scales) or int8 values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Bytes,
    Int8,
}

/// A chunk to decode into `out`, which has exactly the decoded length.
pub struct ChunkJob<'a> {
    pub expect: Expect,
    pub codec: ChunkCodec,
    pub stored: &'a [u8],
    pub out: &'a mut [u8],
    /// Told of the output as it becomes final ([`codec::Finished`]).
    pub finished: codec::Finished<'a>,
}

/// Decodes one chunk as [`decode_bytes`] or [`decode_int8`] does.
pub fn decode(job: ChunkJob) -> Result<(), FormatError> {
    if let Some(planes) = planes_of(&job) {
        return Ok(codec::decode(plane_chunk(job, planes))?);
    }
    match job.expect {
        Expect::Bytes => decode_bytes(job.codec, job.stored, job.out)?,
        Expect::Int8 => decode_int8(job.codec, job.stored, job.out)?,
    }
    (job.finished)(job.out);
    Ok(())
}

/// Decodes two chunks, the same as one after the other, but plane-coded ones (int8 values,
/// floats) decode together, which is up to twice as fast (see [`codec::decode_two`]).
pub fn decode_two(a: ChunkJob, b: ChunkJob) -> [Result<(), FormatError>; 2] {
    let (Some(pa), Some(pb)) = (planes_of(&a), planes_of(&b)) else {
        return [decode(a), decode(b)];
    };
    codec::decode_two(plane_chunk(a, pa), plane_chunk(b, pb)).map(|r| r.map_err(FormatError::from))
}

fn plane_chunk(job: ChunkJob<'_>, planes: codec::Planes) -> codec::PlaneChunk<'_> {
    codec::PlaneChunk {
        planes,
        lanes: job.codec.coder().1,
        data: job.stored,
        out: job.out,
        finished: job.finished,
    }
}

/// Whether chunks of this codec decode faster two at a time ([`decode_two`]): int8 and
/// 16-bit float chunks on 32 lanes, whose decode is one table loop (wider floats decode
/// element by element, which gains nothing from a partner).
pub fn decodes_together(codec: ChunkCodec) -> bool {
    matches!(
        codec,
        ChunkCodec::Int8Wide
            | ChunkCodec::Int8Rows
            | ChunkCodec::Float16Wide
            | ChunkCodec::Int8Coarse
            | ChunkCodec::Float16Coarse
            | ChunkCodec::Int8Escaped
    )
}

/// The plane layout of a chunk's codec, when it is plane-coded and what the job expects.
fn planes_of(job: &ChunkJob) -> Option<codec::Planes> {
    use codec::Planes;
    match (job.expect, job.codec.coder().0) {
        (Expect::Int8, ChunkCodec::Int8) => Some(Planes::Int8),
        (Expect::Int8, ChunkCodec::Int8Rows) => Some(Planes::Int8Rows),
        (Expect::Int8, ChunkCodec::Int8Coarse) => Some(Planes::Int8Coarse),
        (Expect::Int8, ChunkCodec::Int8Escaped) => Some(Planes::Int8Escaped),
        (Expect::Bytes, ChunkCodec::Float16Coarse) => Some(Planes::Float16Coarse),
        (Expect::Bytes, ChunkCodec::Float16) => Some(Planes::Float(2)),
        (Expect::Bytes, ChunkCodec::Float32) => Some(Planes::Float(4)),
        (Expect::Bytes, ChunkCodec::Float64) => Some(Planes::Float(8)),
        _ => None,
    }
}

/// Compresses int8 values (as their bytes, whole rows of `cols`), verified like
/// [`encode_bytes`]: with a table per group of rows where that pays, else one table; with
/// coarse tables where they cost little ([`coarse_pays`]).
pub fn encode_int8(q: &[u8], cols: usize) -> Result<EncodedChunk, FormatError> {
    let (codec, stored) = match write_lanes(q.len()) {
        Lanes::Wide => {
            use codec::Int8Coding::*;
            let (stored, coding) =
                codec::encode_int8_picking(q, cols, |est| pick_int8(est, q.len()));
            let codec = match coding {
                Fine => ChunkCodec::Int8Wide,
                Rows => ChunkCodec::Int8Rows,
                Coarse => ChunkCodec::Int8Coarse,
                Escaped => ChunkCodec::Int8Escaped,
            };
            (codec, stored)
        }
        Lanes::Narrow => (ChunkCodec::Int8, codec::encode_int8(q, Lanes::Narrow)),
    };
    let chunk = if stored.len() < q.len() {
        EncodedChunk::new(stored, codec, q)
    } else {
        EncodedChunk::new(q.to_vec(), ChunkCodec::Raw, q)
    };
    let mut check = vec![0u8; q.len()];
    decode_int8(chunk.codec, &chunk.stored, &mut check)?;
    if check != q {
        return Err(FormatError::Corrupt(
            "int8 chunk failed to round-trip while encoding".into(),
        ));
    }
    Ok(chunk)
}

/// The coding of `n` int8 values on 32 lanes: the smaller coarse one where it pays against the
/// smallest other, else the smallest other.
fn pick_int8(est: &codec::Int8Estimates, n: usize) -> codec::Int8Coding {
    use codec::Int8Coding::*;
    let (best, best_size) = match est.rows {
        Some(rows) if rows < est.fine => (Rows, rows),
        _ => (Fine, est.fine),
    };
    let coarse = match (est.coarse, est.escaped) {
        (Some(c), Some(e)) if e < c => Some((Escaped, e)),
        (Some(c), _) => Some((Coarse, c)),
        (None, e) => e.map(|e| (Escaped, e)),
    };
    match coarse {
        Some((coding, size)) if coarse_pays(size, best_size, n) => coding,
        _ => best,
    }
}

/// Decodes an int8 chunk.
pub fn decode_int8(codec: ChunkCodec, stored: &[u8], out: &mut [u8]) -> Result<(), FormatError> {
    match codec.coder() {
        (ChunkCodec::Raw, _) if stored.len() == out.len() => {
            out.copy_from_slice(stored);
            Ok(())
        }
        (ChunkCodec::Int8, lanes) => Ok(codec::decode_int8(stored, lanes, out)?),
        (ChunkCodec::Int8Rows, _) => Ok(codec::decode_int8_rows(stored, out)?),
        (ChunkCodec::Int8Coarse, _) => Ok(codec::decode_int8_coarse(stored, out)?),
        (ChunkCodec::Int8Escaped, _) => Ok(codec::decode_int8_escaped(stored, out)?),
        _ => Err(FormatError::Corrupt(format!(
            "{codec:?} chunk where int8 values were expected"
        ))),
    }
}

/// Codes high-precision codes against their int8 values and scales, verified like the others.
pub fn encode_residual(
    rows: &residual::ChunkRows,
    high: &[u16],
) -> Result<EncodedChunk, FormatError> {
    let lanes = write_lanes(high.len());
    let stored = residual::encode(rows, high, residual::Layout::written_on(lanes))?;
    // The codes' memory is their file bytes on little-endian targets: no copy needed there.
    let decoded: std::borrow::Cow<[u8]> = if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(high))
    } else {
        std::borrow::Cow::Owned(codes_to_le_bytes(high))
    };
    let codec = ChunkCodec::on(ChunkCodec::Residual, lanes);
    let chunk = EncodedChunk::new(stored, codec, &decoded);
    let mut check = vec![0u8; decoded.len()];
    decode_residual(codec, rows, &chunk.stored, &mut check)?;
    if check != *decoded {
        return Err(FormatError::Corrupt(
            "residual chunk failed to round-trip while encoding".into(),
        ));
    }
    Ok(chunk)
}

/// Decodes a residual chunk to little-endian bytes.
pub fn decode_residual(
    codec: ChunkCodec,
    rows: &residual::ChunkRows,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), FormatError> {
    decode_residual_reporting(codec, rows, stored, out, &mut |_| {})
}

/// [`decode_residual`], telling `finished` of the output as it becomes final.
pub fn decode_residual_reporting(
    codec: ChunkCodec,
    rows: &residual::ChunkRows,
    stored: &[u8],
    out: &mut [u8],
    finished: codec::Finished,
) -> Result<(), FormatError> {
    let layout = codec.residual_layout();
    let Some(layout) = layout.filter(|_| out.len() == rows.q.len() * 2) else {
        return Err(FormatError::Corrupt(format!(
            "{codec:?} chunk where a residual was expected"
        )));
    };
    Ok(residual::decode_reporting(
        rows, stored, layout, out, finished,
    )?)
}

/// Little-endian bytes of 16-bit codes, as safetensors stores them.
pub fn codes_to_le_bytes(codes: &[u16]) -> Vec<u8> {
    codes.iter().flat_map(|c| c.to_le_bytes()).collect()
}

/// Which 16-bit float type a safetensors dtype is, if any.
pub fn high_dtype_of(d: Dtype) -> Option<HighDtype> {
    match d {
        Dtype::BF16 => Some(HighDtype::Bf16),
        Dtype::F16 => Some(HighDtype::F16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each codec is allowed from the version that added it on, every number maps back to its
    /// codec, and new wide residual chunks are written in the newest layout.
    #[test]
    fn codecs_belong_to_the_versions_that_added_them() {
        for v in 0..=255u8 {
            let Ok(c) = ChunkCodec::try_from(v) else {
                assert!(v > 19, "codec {v} is missing");
                continue;
            };
            assert_eq!(u8::from(c), v);
            let since = match v {
                0..=7 => 1,
                8..=13 => 2,
                14 => 3,
                15..=16 => 4,
                17..=18 => 5,
                _ => 6,
            };
            for version in 1..=6 {
                assert_eq!(
                    c.allowed_in(version),
                    version >= since,
                    "codec {v} in {version}"
                );
            }
        }
        assert_eq!(
            ChunkCodec::on(ChunkCodec::Residual, Lanes::Wide),
            ChunkCodec::ResidualBelowTop
        );
        assert_eq!(
            ChunkCodec::ResidualBelowTop.residual_layout(),
            Some(residual::Layout::WideBelowTop)
        );
        assert_eq!(
            ChunkCodec::ResidualRuns32.residual_layout(),
            Some(residual::Layout::Wide)
        );
        assert_eq!(
            ChunkCodec::ResidualWide.residual_layout(),
            Some(residual::Layout::WideRunsOfEight)
        );
    }

    /// Int8 values spread smoothly over ±40, as a weight matrix's are.
    fn smooth_int8(n: usize) -> Vec<u8> {
        let mut r = 7u32;
        (0..n)
            .map(|_| {
                r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let a = (r >> 8) % 41;
                r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (a as i32 - ((r >> 8) % 41) as i32) as i8 as u8
            })
            .collect()
    }

    fn int8_round_trip(q: &[u8], cols: usize) -> ChunkCodec {
        let chunk = encode_int8(q, cols).unwrap();
        let mut out = vec![0u8; q.len()];
        decode_int8(chunk.codec, &chunk.stored, &mut out).unwrap();
        assert_eq!(out, q);
        chunk.codec
    }

    /// Coarse tables are written where they cost at most COARSE_ALLOWANCE bits a value more
    /// than the best other coding (values spread smoothly, floats' exponents), with escapes
    /// where rare values would make them dear, not on narrow chunks nor where one byte takes
    /// every slot; every chunk decodes back byte-exact.
    #[test]
    fn coarse_tables_are_written_where_they_cost_little() {
        assert_eq!(
            int8_round_trip(&smooth_int8(1 << 16), 4096),
            ChunkCodec::Int8Coarse
        );
        // Values within ±2 but one in a hundred, spread over every byte (a few times each): a
        // coarse table gives each of those rare ones a 4096th of its slots at least, unless
        // it escapes them.
        let mut tails = smooth_int8(1 << 16);
        for (i, q) in tails.iter_mut().enumerate() {
            *q = match i % 100 {
                99 => (i / 100 % 256) as u8,
                _ => (*q as i8 / 16) as u8,
            };
        }
        assert_eq!(int8_round_trip(&tails, 4096), ChunkCodec::Int8Escaped);
        assert_eq!(int8_round_trip(&smooth_int8(1000), 100), ChunkCodec::Int8);

        let floats: Vec<u8> = smooth_int8(1 << 16)
            .chunks_exact(2)
            .flat_map(|p| {
                let v = f32::from(p[0] as i8) * 0.01 + f32::from(p[1] as i8) * 0.0003;
                half::bf16::from_f32(v).to_le_bytes()
            })
            .collect();
        let chunk = encode_bytes(&floats, Content::Tensor(Dtype::BF16)).unwrap();
        assert_eq!(chunk.codec, ChunkCodec::Float16Coarse);
        let mut out = vec![0u8; floats.len()];
        decode_bytes(chunk.codec, &chunk.stored, &mut out).unwrap();
        assert_eq!(out, floats);
        // Decoded two at a time, a coarse chunk with a 2^14 one (each loop its own table kind).
        let zeros = vec![0u8; 1 << 16];
        let fine = encode_int8(&zeros, 4096).unwrap();
        assert_eq!(fine.codec, ChunkCodec::Int8Wide);
        let coarse = encode_int8(&smooth_int8(1 << 16), 4096).unwrap();
        assert_eq!(
            decode_int8_pair(&fine, &coarse),
            (zeros, smooth_int8(1 << 16))
        );
    }

    /// Two int8 chunks decoded together ([`decode_two`]).
    fn decode_int8_pair(a: &EncodedChunk, b: &EncodedChunk) -> (Vec<u8>, Vec<u8>) {
        fn job<'a>(c: &'a EncodedChunk, out: &'a mut [u8]) -> ChunkJob<'a> {
            ChunkJob {
                expect: Expect::Int8,
                codec: c.codec,
                stored: &c.stored,
                out,
                finished: Box::leak(Box::new(|_: &[u8]| {})),
            }
        }
        let mut out = [a, b].map(|c| vec![1u8; c.decoded_len as usize]);
        let [oa, ob] = &mut out;
        let [ra, rb] = decode_two(job(a, oa), job(b, ob));
        ra.unwrap();
        rb.unwrap();
        let [a, b] = out;
        (a, b)
    }

    /// Flipping bits at a few places of `chunk` never decodes to `q`: an error or other bytes.
    fn assert_damage_never_decodes_to(chunk: &EncodedChunk, q: &[u8]) {
        for at in [0, 1, 40, chunk.stored.len() / 2, chunk.stored.len() - 1] {
            let mut stored = chunk.stored.clone();
            stored[at] ^= 0x24;
            let mut out = vec![0u8; q.len()];
            let decoded = decode_int8(chunk.codec, &stored, &mut out);
            assert!(decoded.is_err() || out != q, "flip at {at}");
        }
    }

    /// A coarse chunk is refused where its codec is not allowed, and a damaged one does not
    /// decode to what was stored.
    #[test]
    fn damaged_coarse_chunks_do_not_decode_to_their_values() {
        let q = smooth_int8(1 << 16);
        let chunk = encode_int8(&q, 4096).unwrap();
        assert_eq!(chunk.codec, ChunkCodec::Int8Coarse);
        assert!(!chunk.codec.allowed_in(4));
        assert_damage_never_decodes_to(&chunk, &q);
    }

    /// Int8 values of LLM-like rows (heavy tails, outlier columns), 16 rows of 4096.
    fn llm_like_int8(seed: u64) -> Vec<u8> {
        use crate::codec::quantize::{HighDtype, quantize_row};
        let (rows, cols) = (16, 4096);
        let w = crate::synth::llm_like_bf16(rows, cols, seed);
        let mut q = vec![0u8; rows * cols];
        for (row, q) in w.chunks_exact(cols).zip(q.chunks_exact_mut(cols)) {
            quantize_row(HighDtype::Bf16, row, q);
        }
        q
    }

    /// Rows whose outliers reach rare values take coarse tables with escapes, decode back
    /// byte-exact alone and two at a time with any other table kind, and are refused by
    /// version 5; damage never decodes to the stored values.
    #[test]
    fn rare_values_are_escaped_where_coarse_tables_would_cost_too_much() {
        let q = llm_like_int8(3);
        let plain = codec::encode_int8_coarse(&q).unwrap();
        let chunk = encode_int8(&q, 4096).unwrap();
        assert_eq!(chunk.codec, ChunkCodec::Int8Escaped);
        assert!(
            chunk.stored.len() < plain.len(),
            "{} vs {}",
            chunk.stored.len(),
            plain.len()
        );
        assert!(!chunk.codec.allowed_in(5) && chunk.codec.allowed_in(6));
        assert_eq!(int8_round_trip(&q, 4096), ChunkCodec::Int8Escaped);

        let others = [
            (vec![0u8; 1 << 16], ChunkCodec::Int8Wide),
            (smooth_int8(1 << 16), ChunkCodec::Int8Coarse),
            (llm_like_int8(4), ChunkCodec::Int8Escaped),
        ];
        for (values, codec) in &others {
            let other = encode_int8(values, 4096).unwrap();
            assert_eq!(other.codec, *codec);
            let (a, b) = decode_int8_pair(&chunk, &other);
            assert!(a == q && b == *values, "{codec:?}");
        }
        assert_damage_never_decodes_to(&chunk, &q);
    }
}
