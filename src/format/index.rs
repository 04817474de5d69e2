//! The blob index: which chunks exist, which streams they form, and how output files are spliced
//! together from streams. Serialised as JSON inside a zstd frame (docs/FORMAT.md).

use serde::{Deserialize, Serialize};

use super::chunk::ChunkCodec;
use super::{FormatError, MAX_CHUNK_DECODED, OLDEST_VERSION, VERSION};
use crate::codec::quantize::HighDtype;

/// `[offset, stored_len, decoded_len, crc32_of_decoded, codec, crc32_of_stored]`: a chunk's place
/// in the blob and the checksums every read and decode is held to (the stored one catches damage
/// anywhere in the blob; the decoded one proves the bytes served are the bytes encoded).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Chunk(pub u64, pub u32, pub u32, pub u32, pub ChunkCodec, pub u32);

impl Chunk {
    pub fn offset(&self) -> u64 {
        self.0
    }
    pub fn stored_len(&self) -> u32 {
        self.1
    }
    pub fn decoded_len(&self) -> u32 {
        self.2
    }
    pub fn crc32(&self) -> u32 {
        self.3
    }
    pub fn codec(&self) -> ChunkCodec {
        self.4
    }
    pub fn stored_crc32(&self) -> u32 {
        self.5
    }
}

/// Bytes stored once and spliced into outputs verbatim once decoded: file headers, tensors that
/// are not quantized (shared by both precisions), scales, small literals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ByteStream {
    /// What the bytes are, for `inspect` (a tensor name, or "header of FILE").
    pub label: String,
    /// Element type when the stream is a tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<crate::safetensors::Dtype>,
    pub len: u64,
    pub chunk_bytes: u64,
    pub first_chunk: u32,
    pub n_chunks: u32,
}

/// A quantized weight: int8 chunks in the base section, residual chunks in the residual section,
/// one pair per `rows_per_chunk` rows, plus the byte stream holding its float32 scales.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuantTensor {
    pub name: String,
    pub rows: u64,
    pub cols: u64,
    pub rows_per_chunk: u64,
    pub scales: u32,
    pub int8_first: u32,
    pub residual_first: u32,
    pub n_chunks: u32,
}

impl QuantTensor {
    /// Rows covered by chunk `i`.
    pub fn chunk_rows(&self, i: u64) -> std::ops::Range<u64> {
        let start = i * self.rows_per_chunk;
        start..(start + self.rows_per_chunk).min(self.rows)
    }
}

/// One piece of an output file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Segment {
    /// A byte stream, whole.
    Stream(u32),
    /// A quantized tensor's int8 values (1 byte each).
    Int8(u32),
    /// A quantized tensor's high-precision values (2 bytes each, little-endian).
    High(u32),
}

/// A file served to users, described as a sequence of segments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputFile {
    pub name: String,
    pub size: u64,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: String,
    pub segments: Vec<Segment>,
}

/// Length in bytes of one segment, given the streams and quantized tensors it refers to (the
/// writer needs this before the index exists).
pub fn segment_len(streams: &[ByteStream], quantized: &[QuantTensor], s: Segment) -> u64 {
    match s {
        Segment::Stream(i) => streams[i as usize].len,
        Segment::Int8(i) => quantized[i as usize].rows * quantized[i as usize].cols,
        Segment::High(i) => 2 * quantized[i as usize].rows * quantized[i as usize].cols,
    }
}

/// The whole index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Index {
    pub version: u32,
    pub high_dtype: HighDtype,
    /// `[start, end)` of the base section.
    pub base: [u64; 2],
    /// `[start, end)` of the residual section.
    pub residual: [u64; 2],
    pub chunks: Vec<Chunk>,
    pub streams: Vec<ByteStream>,
    pub quantized: Vec<QuantTensor>,
    pub high_files: Vec<OutputFile>,
    pub int8_files: Vec<OutputFile>,
}

impl Index {
    /// Length in bytes of one segment.
    pub fn segment_len(&self, s: Segment) -> u64 {
        segment_len(&self.streams, &self.quantized, s)
    }

    /// Checks every cross-reference and size, so that reading can index without panicking.
    pub fn validate(&self, blob_len: u64) -> Result<(), FormatError> {
        let bad = |m: String| Err(FormatError::Corrupt(m));
        if !(OLDEST_VERSION..=VERSION).contains(&self.version) {
            return bad(format!("unsupported index version {}", self.version));
        }
        let [b0, b1] = self.base;
        let [r0, r1] = self.residual;
        if !(b0 <= b1 && b1 <= r0 && r0 <= r1 && r1 <= blob_len) {
            return bad("section bounds out of order".into());
        }
        for s in &self.streams {
            let expect = s.len.div_ceil(s.chunk_bytes.max(1));
            if s.chunk_bytes == 0 || u64::from(s.n_chunks) != expect {
                return bad(format!("stream {:?} has a wrong chunk count", s.label));
            }
            for i in 0..s.n_chunks {
                let want = (s.len - u64::from(i) * s.chunk_bytes).min(s.chunk_bytes);
                self.check_chunk(s.first_chunk, i, want, self.base)?;
            }
        }
        for q in &self.quantized {
            self.validate_quantized(q)?;
        }
        for f in self.high_files.iter().chain(&self.int8_files) {
            let mut total = 0u64;
            for seg in &f.segments {
                let ok = match *seg {
                    Segment::Stream(i) => (i as usize) < self.streams.len(),
                    Segment::Int8(i) | Segment::High(i) => (i as usize) < self.quantized.len(),
                };
                if !ok {
                    return bad(format!("file {:?} references a missing stream", f.name));
                }
                total = total
                    .checked_add(self.segment_len(*seg))
                    .ok_or_else(|| FormatError::Corrupt("size overflow".into()))?;
            }
            if total != f.size {
                return bad(format!(
                    "file {:?}: segments add up to {total} bytes, not {}",
                    f.name, f.size
                ));
            }
        }
        Ok(())
    }

    fn validate_quantized(&self, q: &QuantTensor) -> Result<(), FormatError> {
        let bad = || FormatError::Corrupt(format!("quantized tensor {:?} is inconsistent", q.name));
        let elems = q.rows.checked_mul(q.cols).ok_or_else(bad)?;
        let chunk_elems = q.rows_per_chunk.checked_mul(q.cols).ok_or_else(bad)?;
        if q.rows_per_chunk == 0
            || elems == 0
            || elems > 1 << 60
            || chunk_elems > u64::from(u32::MAX) / 2
        {
            return Err(bad());
        }
        if u64::from(q.n_chunks) != q.rows.div_ceil(q.rows_per_chunk) {
            return Err(bad());
        }
        let scales = self.streams.get(q.scales as usize).ok_or_else(bad)?;
        if scales.len != q.rows * 4 {
            return Err(bad());
        }
        for i in 0..q.n_chunks {
            let rows = q.chunk_rows(u64::from(i));
            let n = (rows.end - rows.start) * q.cols;
            self.check_chunk(q.int8_first, i, n, self.base)?;
            self.check_chunk(q.residual_first, i, 2 * n, self.residual)?;
        }
        Ok(())
    }

    fn check_chunk(
        &self,
        first: u32,
        i: u32,
        decoded: u64,
        section: [u64; 2],
    ) -> Result<(), FormatError> {
        let id = first
            .checked_add(i)
            .ok_or_else(|| FormatError::Corrupt("chunk id overflow".into()))?;
        let c = self
            .chunks
            .get(id as usize)
            .ok_or_else(|| FormatError::Corrupt(format!("missing chunk {id}")))?;
        let end = c.offset().checked_add(u64::from(c.stored_len()));
        // Stored bytes never exceed twice the decoded size plus tables (exceptions cost 3 bytes
        // per 2-byte value at worst); anything larger is a crafted index.
        let stored_cap = 2 * decoded + 65_536;
        if decoded > MAX_CHUNK_DECODED
            || u64::from(c.stored_len()) > stored_cap
            || u64::from(c.decoded_len()) != decoded
            || !c.codec().allowed_in(self.version)
            || c.offset() < section[0]
            || end.is_none_or(|e| e > section[1])
        {
            return Err(FormatError::Corrupt(format!(
                "chunk {id} lies outside its section or has the wrong size"
            )));
        }
        Ok(())
    }
}
