//! The `.qstore` container: one blob per model holding both precisions (docs/FORMAT.md).
//!
//! Layout: `preamble | base section | residual section | index | footer`. The base section alone
//! reproduces every INT8 output file; the residual section adds what the high-precision files need.
//! Every chunk decodes to at most about 1 MiB of output and carries a CRC-32 of its decoded bytes, so
//! any byte range of any output can be produced by reading a few chunks and checking them.

mod arrival;
mod budget;
mod chunk;
mod hash;
mod index;
mod input;
mod mapped;
mod ordered;
mod reader;
mod report;
mod stored;
mod writeback;
mod writer;

pub use arrival::{Arrival, ArrivingFile};
pub use budget::{DecodeBudget, Decoded};
pub use chunk::ChunkCodec;
pub use index::{ByteStream, Chunk, Index, OutputFile, QuantTensor, Segment};
pub use input::{EncodeInput, SHARD_INDEX_NAME, Selection};
pub use mapped::MappedFile;
pub use reader::{Blob, BlobSource, OutputSink, Precision, ReadAhead, WINDOW};
pub use report::{Report, TensorReport};
pub use stored::{Region, RegionCheck};
pub use writer::{EncodeOptions, EncodeSummary, encode_to_path, output_tempfile, same_file};

/// First 8 bytes of every blob; also the last 8, closing the footer.
pub const MAGIC: [u8; 8] = *b"\x89QSTORE\n";
/// Format version written in the preamble and the index. Version 2 added the 32-lane codecs
/// (8-13), version 3 the residual whose whole values go in runs of 32 (14), version 4 int8
/// chunks with a table per group of rows (15) and the residual whose whole values' high bytes
/// are coded below their row's top (16), version 5 int8 and 16-bit float chunks with coarse
/// tables (17, 18), version 6 int8 chunks with coarse tables and escapes (19); blobs of
/// versions 1 to 5 stay readable.
pub const VERSION: u32 = 6;
/// The oldest format version readers accept.
pub const OLDEST_VERSION: u32 = 1;
/// Preamble: magic, version (u32 LE), flags (u32 LE, zero).
pub const PREAMBLE_LEN: u64 = 16;
/// Footer: index offset (u64), index length (u64), index CRC-32 (u32), version (u32), magic.
pub const FOOTER_LEN: u64 = 32;
/// Target number of elements per quantized-tensor chunk: 1 MiB of 16-bit output.
pub const CHUNK_ELEMS: u64 = 1 << 19;
/// Bytes per chunk of a plain byte stream.
pub const STREAM_CHUNK_BYTES: u64 = 1 << 20;
/// Largest decoded chunk a reader accepts (128 MiB): bounds what a crafted index can make a
/// reader allocate. Writers stay far below it (about 1 MiB per chunk).
pub const MAX_CHUNK_DECODED: u64 = 1 << 27;
/// Widest row that gets quantized: one row is one chunk at least, so rows must fit a chunk.
pub const MAX_QUANTIZED_COLS: u64 = MAX_CHUNK_DECODED / 2;
/// Largest index we accept when opening a blob (decompressed JSON).
pub const MAX_INDEX_LEN: usize = 1 << 30;

/// Everything that can go wrong reading or writing a blob.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The user's input is unusable; the message says why.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Safetensors(#[from] crate::safetensors::SafetensorsError),
    /// The blob is damaged or not a blob at all.
    #[error("corrupt blob: {0}")]
    Corrupt(String),
    /// What the caller asked for is not in this blob.
    #[error("{0}")]
    NotFound(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<crate::codec::CodecError> for FormatError {
    fn from(e: crate::codec::CodecError) -> Self {
        FormatError::Corrupt(e.to_string())
    }
}
