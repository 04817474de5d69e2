//! Encoding: reads safetensors inputs front to back, encodes their chunks on the thread pool, and
//! writes one blob.
//!
//! Encoding is pipelined: chunks are sent to the thread pool in small jobs as soon as they are
//! read (see [`super::ordered`]), and written in input order as their jobs end, so reading (and
//! feeding the file hashes) and writing overlap the encoding instead of sitting between parallel
//! steps with the pool idle.
//!
//! Memory: the encoder holds the input of the jobs in flight (at most twice [`BATCH_BYTES`],
//! a chunk counting at least [`BATCH_BYTES`] / [`BATCH_CHUNKS`], plus the job being gathered),
//! with their encoded forms until written; plus the scales of the quantized tensor in progress;
//! per tensor of the model, its header entry and its entries in the blob index (bounded by
//! [`crate::safetensors::MAX_TENSORS`]). The residual section is spooled to a temporary file next
//! to the output, so the base section can be contiguous without holding residuals in memory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::arrival::{Arrival, ArrivingFile};
use super::hash::{BackgroundHash, Block};
use super::ordered::OrderedJobs;
use super::writeback::Writeback;

use super::chunk::{self, Content, EncodedChunk, high_dtype_of};
use super::index::{ByteStream, Chunk, Index, OutputFile, QuantTensor, Segment, segment_len};
use super::input::{
    EncodeInput, InputFile, Role, Selection, check_int8_layout, check_model_size,
    check_unique_names, derived_int8_header, header_of, int8_shard_index, int8_tensor_differs,
    model_dtype, read_shard_index,
};
use super::{
    CHUNK_ELEMS, FOOTER_LEN, FormatError, MAGIC, MAX_QUANTIZED_COLS, PREAMBLE_LEN,
    STREAM_CHUNK_BYTES, VERSION,
};
use crate::codec::quantize::{HighDtype, quantize_row};
use crate::codec::residual::ChunkRows;
use crate::safetensors::{Dtype, Header, TensorInfo};

/// Input an encode keeps in flight is at most twice this: the jobs sent to the pool and not
/// yet written (as much as the two batches of 8 MiB that were in flight before jobs; peak RSS
/// 54 MiB on a 192 MiB model, 67 MiB with batches). An encoder running on a pool thread
/// encodes batches of this size itself.
pub const BATCH_BYTES: u64 = 8 << 20;

/// Chunks in one batch at most, whatever their size: a model of a million tiny tensors must not
/// hold a million encoded chunks (each with its tables) at once.
pub const BATCH_CHUNKS: usize = 4096;

/// Input gathered into one pool job: one chunk of a large tensor, or many small tensors' chunks
/// (a job per one-element tensor would cost more to send than to encode).
const JOB_BYTES: u64 = 1 << 20;

/// Chunks in one job at most; with [`BATCH_BYTES`] this bounds the chunks in flight.
const JOB_CHUNKS: usize = 64;

/// Tunables; the defaults are what the format documents.
pub struct EncodeOptions {
    pub selection: Selection,
    pub chunk_elems: u64,
    pub stream_chunk_bytes: u64,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            selection: Selection::default(),
            chunk_elems: CHUNK_ELEMS,
            stream_chunk_bytes: STREAM_CHUNK_BYTES,
        }
    }
}

/// What an encode produced.
pub struct EncodeSummary {
    pub index: Index,
    pub blob_len: u64,
}

/// Encodes `input` into a blob at `out`. The blob appears only when complete: it is written to a
/// temporary file in the same directory and renamed into place.
pub fn encode_to_path(
    input: &EncodeInput,
    opts: &EncodeOptions,
    out: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<EncodeSummary, FormatError> {
    if std::fs::metadata(out).is_ok_and(|m| !m.is_file()) {
        return Err(FormatError::Input(format!(
            "refusing to replace {}: not a regular file",
            out.display()
        )));
    }
    let inputs = input
        .high
        .iter()
        .chain(&input.int8)
        .chain(&input.shard_index);
    if let Some(same) = inputs.into_iter().find(|i| same_file(out, i)) {
        return Err(FormatError::Input(format!(
            "refusing to write {} over the input {}",
            out.display(),
            same.display()
        )));
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = output_tempfile(dir)?;
    let residual = tempfile::tempfile_in(dir)?;
    let mut encoder = Encoder::new(
        input,
        opts,
        BufWriter::new(tmp.as_file().try_clone()?),
        Writeback::new(tmp.as_file().try_clone()?),
        residual,
        progress,
    )?;
    encoder.run()?;
    let (index, blob_len) = encoder.finish()?;
    tmp.as_file().sync_all()?;
    tmp.persist(out).map_err(|e| FormatError::Io(e.error))?;
    Ok(EncodeSummary { index, blob_len })
}

/// True when `a` and `b` name the same existing file (hard links and other spellings included).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// A temporary file in `dir` that becomes an output: created with the mode an ordinary file gets
/// (0666 less the umask), not the 0600 of private temporary files.
pub fn output_tempfile(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// A tensor (or int8-only tensor) being encoded, piece by piece.
struct Task {
    label: String,
    content: Content,
    role: Role,
    chunk_bytes: u64,
    len: u64,
    base: Vec<Chunk>,
    residual: Vec<Chunk>,
    scales: Vec<u32>,
    /// Which derived int8 file's hash the tensor's int8 form feeds, if any.
    int8_hash: Option<usize>,
    /// Stream or quantized-tensor id once finished.
    id: Option<u32>,
}

/// One unit of parallel work: a chunk's input.
enum Work {
    Bytes {
        task: usize,
        content: Content,
        data: Arc<Vec<u8>>,
    },
    Quant {
        task: usize,
        high: Arc<Vec<u16>>,
        supplied: Option<(Vec<u8>, Vec<u32>)>,
        cols: usize,
    },
}

/// A unit of work done: chunks ready to write.
enum Done {
    Bytes {
        task: usize,
        chunk: EncodedChunk,
        data: Arc<Vec<u8>>,
    },
    Quant {
        task: usize,
        int8: EncodedChunk,
        residual: EncodedChunk,
        q: Vec<u8>,
        scales: Vec<u32>,
    },
}

struct Encoder<'a, W: Write> {
    opts: &'a EncodeOptions,
    high: Vec<InputFile>,
    int8: Vec<InputFile>,
    int8_handles: Vec<File>,
    shard_index: Option<(String, Vec<u8>)>,
    dtype: HighDtype,
    out: W,
    pos: u64,
    /// Sends `out`'s bytes to disk as they are written, for the final fsync.
    writeback: Writeback,
    residual: BufWriter<File>,
    residual_pos: u64,
    progress: &'a (dyn Fn(u64) + Sync),
    chunks: Vec<Chunk>,
    residual_chunks: Vec<usize>,
    streams: Vec<ByteStream>,
    quantized: Vec<QuantTensor>,
    tasks: Vec<Task>,
    pending: Vec<Work>,
    pending_bytes: u64,
    /// Jobs sent before `pending`, encoding on the pool; written in order before `pending` is.
    encoding: OrderedJobs<Result<Vec<Done>, FormatError>>,
    int8_hashers: Vec<BackgroundHash>,
    /// Per high file, when the int8 checkpoint is derived: how its int8 file is laid out.
    derived_layouts: Vec<DerivedLayout>,
    high_files: Vec<OutputFile>,
    int8_files: Vec<OutputFile>,
    /// (int8 file, tensor name) → shared task whose bytes are identical.
    int8_shared: Vec<(usize, String, usize)>,
    weight_format: Option<u32>,
    /// The high-precision file is still arriving (see [`EncodeInput::arriving`]).
    arriving: Option<Arc<Arrival>>,
}

/// A derived int8 file, computed once from its high file and used for hashing, the file layout
/// and the sharding index.
struct DerivedLayout {
    /// The int8 file's safetensors header.
    header: Vec<u8>,
    /// Each tensor's role, in file order.
    roles: Vec<Role>,
    /// The task of each tensor (the high file's, which both files share) and of the int8
    /// header's text, once submitted.
    tasks: Vec<usize>,
    header_task: Option<usize>,
}

/// What the high-precision reader needs: a plain file, or one still arriving.
trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

impl<'a, W: Write> Encoder<'a, W> {
    fn new(
        input: &EncodeInput,
        opts: &'a EncodeOptions,
        mut out: W,
        writeback: Writeback,
        residual: File,
        progress: &'a (dyn Fn(u64) + Sync),
    ) -> Result<Self, FormatError> {
        if input.high.is_empty() {
            return Err(FormatError::Input(
                "no high-precision safetensors file given".into(),
            ));
        }
        let high = match &input.arriving {
            None => input
                .high
                .iter()
                .map(|p| InputFile::open(p))
                .collect::<Result<Vec<_>, _>>()?,
            Some(arrival) => {
                if input.high.len() != 1 || !input.int8.is_empty() || input.shard_index.is_some() {
                    return Err(FormatError::Input(
                        "only a single high-precision file can be encoded while it arrives".into(),
                    ));
                }
                vec![InputFile::open_arriving(&input.high[0], arrival)?]
            }
        };
        let int8 = input
            .int8
            .iter()
            .map(|p| InputFile::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        check_unique_names(&high)?;
        check_unique_names(&int8)?;
        check_model_size(high.iter().chain(&int8))?;
        let int8_handles = int8
            .iter()
            .map(|f| File::open(&f.path))
            .collect::<Result<Vec<_>, _>>()?;
        let shard_index = input
            .shard_index
            .as_deref()
            .map(|p| read_shard_index(p, &high))
            .transpose()?;
        let dtype = model_dtype(&high)?;
        if !int8.is_empty() {
            check_int8_layout(&high, &int8, dtype)?;
        }
        out.write_all(&MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        Ok(Encoder {
            opts,
            high,
            int8,
            int8_handles,
            shard_index,
            dtype,
            out,
            pos: PREAMBLE_LEN,
            writeback,
            residual: BufWriter::new(residual),
            residual_pos: 0,
            progress,
            chunks: Vec::new(),
            residual_chunks: Vec::new(),
            streams: Vec::new(),
            quantized: Vec::new(),
            tasks: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            encoding: OrderedJobs::new(),
            int8_hashers: Vec::new(),
            derived_layouts: Vec::new(),
            high_files: Vec::new(),
            int8_files: Vec::new(),
            int8_shared: Vec::new(),
            weight_format: None,
            arriving: input.arriving.clone(),
        })
    }

    fn derived(&self) -> bool {
        self.int8.is_empty()
    }

    fn run(&mut self) -> Result<(), FormatError> {
        if self.derived() {
            self.weight_format =
                Some(self.small_stream("weight_format", Content::Tensor(Dtype::U8), &[0])?);
        }
        for f in 0..self.high.len() {
            self.encode_high_file(f)?;
        }
        if self.derived() {
            self.int8_files = self.derived_int8_files()?;
        } else {
            for f in 0..self.int8.len() {
                let file = self.encode_supplied_int8_file(f)?;
                self.int8_files.push(file);
            }
        }
        if let Some((name, json)) = self.shard_index.take() {
            let high = self.text_file(&name, &json)?;
            self.high_files.push(high);
            let int8_json = int8_shard_index(&json, &self.int8_files, &self.int8_headers())?;
            let int8 = self.text_file(&name, &int8_json)?;
            self.int8_files.push(int8);
        }
        Ok(())
    }

    /// A whole output file that is a single text stream (a sharding index).
    fn text_file(&mut self, name: &str, bytes: &[u8]) -> Result<OutputFile, FormatError> {
        let segment = Segment::Stream(self.small_stream(name, Content::Text, bytes)?);
        Ok(output_file(
            name.to_string(),
            bytes.len() as u64,
            sha256_hex(bytes),
            vec![segment],
        ))
    }

    /// Int8 headers of the derived files, computed by the same function that wrote them.
    fn int8_headers(&self) -> Vec<Header> {
        if self.derived() {
            self.derived_layouts
                .iter()
                .map(|l| header_of(&l.header))
                .collect()
        } else {
            self.int8.iter().map(|f| f.header.clone()).collect()
        }
    }

    /// Decides how each tensor of a high-precision file is stored.
    fn roles(&self, file: &InputFile) -> Vec<Role> {
        file.header
            .tensors
            .iter()
            .map(|t| self.role(file, t))
            .collect()
    }

    fn role(&self, file: &InputFile, t: &TensorInfo) -> Role {
        let quantizable = high_dtype_of(t.dtype) == Some(self.dtype)
            && t.shape.len() == 2
            && t.elements() > 0
            && t.shape[1] <= MAX_QUANTIZED_COLS;
        let Some(prefix) = t.name.strip_suffix(".weight").filter(|_| quantizable) else {
            return Role::Shared;
        };
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let scb = format!("{prefix}.SCB");
        if self.derived() {
            let clash = [scb.as_str(), &format!("{prefix}.weight_format")]
                .iter()
                .any(|n| file.header.tensor(n).is_some());
            if self.opts.selection.wants(&t.name) && !clash {
                return Role::Quantized {
                    rows,
                    cols,
                    supplied: None,
                };
            }
            return Role::Shared;
        }
        let pair = self.int8.iter().position(|f| {
            let w = f.header.tensor(&t.name);
            let s = f.header.tensor(&scb);
            w.is_some_and(|w| w.dtype == Dtype::I8 && w.shape == t.shape)
                && s.is_some_and(|s| s.dtype == Dtype::F32 && s.shape == [rows])
        });
        match pair {
            Some(i) => Role::Quantized {
                rows,
                cols,
                supplied: Some(i),
            },
            None => Role::Shared,
        }
    }

    fn encode_high_file(&mut self, f: usize) -> Result<(), FormatError> {
        let roles = self.roles(&self.high[f]);
        let header_raw = self.high[f].header.raw.clone();
        let name = self.high[f].name.clone();
        let header_task = self.submit_text(format!("header of {name}"), &header_raw)?;
        let mut hasher = BackgroundHash::new();
        hasher.update(&header_raw);
        if self.derived() {
            let int8_header = derived_int8_header(&self.high[f], &roles);
            let mut h = BackgroundHash::new();
            h.update(&int8_header);
            self.int8_hashers.push(h);
            self.derived_layouts.push(DerivedLayout {
                header: int8_header,
                roles: roles.clone(),
                tasks: Vec::new(),
                header_task: None,
            });
        }
        let file = File::open(&self.high[f].path)?;
        let source: Box<dyn ReadSeek> = match &self.arriving {
            Some(arrival) => Box::new(ArrivingFile::new(file, arrival.clone())),
            None => Box::new(file),
        };
        let mut reader = BufReader::with_capacity(1 << 20, source);
        reader.seek(SeekFrom::Start(header_raw.len() as u64))?;
        let tensors = self.high[f].header.tensors.clone();
        let task_ids = self
            .read_high_tensors(f, &mut reader, &mut hasher, &tensors, roles)
            .map_err(|e| self.explain_short_arrival(f, e))?;
        if self.derived() {
            let header = self.derived_layouts[f].header.clone();
            let header_task = self.submit_text(format!("int8 header of {name}"), &header)?;
            let layout = &mut self.derived_layouts[f];
            (layout.header_task, layout.tasks) = (Some(header_task), task_ids.clone());
        }
        self.flush()?;
        let mut segments = vec![Segment::Stream(self.finished(header_task))];
        for (&task, t) in task_ids.iter().zip(&tensors) {
            let id = self.finished(task);
            segments.push(match self.tasks[task].role {
                Role::Shared => Segment::Stream(id),
                Role::Quantized { .. } => Segment::High(id),
            });
            debug_assert_eq!(self.tasks[task].len, t.len());
        }
        let size = self.high[f].header.file_len();
        self.check_arrived_len(f)?;
        self.high_files
            .push(output_file(name, size, hasher.finish(), segments));
        Ok(())
    }

    /// An arriving file must end exactly where its header says (a plain file was checked when
    /// opened). Waits for the upload to end.
    fn check_arrived_len(&self, f: usize) -> Result<(), FormatError> {
        let Some(arrival) = &self.arriving else {
            return Ok(());
        };
        let file = &self.high[f];
        file.header
            .check_file_len(arrival.wait_complete()?)
            .map_err(|e| FormatError::Input(format!("{}: {e}", file.name)))
    }

    /// A file that arrived shorter than its header says fails as a read past its end; say so.
    fn explain_short_arrival(&self, f: usize, e: FormatError) -> FormatError {
        match &e {
            FormatError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                match self.check_arrived_len(f) {
                    Err(input @ FormatError::Input(_)) => input,
                    _ => e,
                }
            }
            _ => e,
        }
    }

    /// Reads every tensor of high-precision file `f` into encode tasks, in file order.
    fn read_high_tensors(
        &mut self,
        f: usize,
        reader: &mut impl Read,
        hasher: &mut BackgroundHash,
        tensors: &[TensorInfo],
        roles: Vec<Role>,
    ) -> Result<Vec<usize>, FormatError> {
        let mut task_ids = Vec::with_capacity(tensors.len());
        for (t, role) in tensors.iter().zip(roles) {
            let task = self.start_task(t, role.clone(), self.derived().then_some(f));
            task_ids.push(task);
            match role {
                Role::Shared => self.read_shared(reader, hasher, t, task)?,
                Role::Quantized {
                    rows,
                    cols,
                    supplied,
                } => self.read_quantized(reader, hasher, t, task, rows, cols, supplied)?,
            }
            if let (Role::Shared, false) = (&self.tasks[task].role, self.derived()) {
                self.note_int8_twin(f, t, task)?;
            }
        }
        Ok(task_ids)
    }

    /// Submits `text` (a header) as a stream, compressed on the pool like a tensor's chunks and
    /// written in turn. Compressed on this thread at zstd's text level, MiniLM's header left
    /// both cores idle for ~1.7 ms at the start of an encode, and its int8 header as long at
    /// the end.
    fn submit_text(&mut self, label: String, text: &[u8]) -> Result<usize, FormatError> {
        let chunk_bytes = self.opts.stream_chunk_bytes.max(1);
        self.tasks.push(Task {
            label,
            content: Content::Text,
            role: Role::Shared,
            chunk_bytes,
            len: text.len() as u64,
            base: Vec::new(),
            residual: Vec::new(),
            scales: Vec::new(),
            int8_hash: None,
            id: None,
        });
        let task = self.tasks.len() - 1;
        if text.is_empty() {
            self.finish_task(task)?;
        }
        for piece in text.chunks(chunk_bytes as usize) {
            let data = Arc::new(piece.to_vec());
            let work = Work::Bytes {
                task,
                content: Content::Text,
                data,
            };
            self.submit(work, piece.len() as u64)?;
        }
        Ok(task)
    }

    /// The stream or quantized tensor of a task whose chunks have all been written.
    fn finished(&self, task: usize) -> u32 {
        self.tasks[task].id.expect("flushed tasks are finished")
    }

    fn start_task(&mut self, t: &TensorInfo, role: Role, int8_hash: Option<usize>) -> usize {
        let chunk_bytes = match role {
            Role::Quantized { .. } => 0,
            Role::Shared => (self.opts.stream_chunk_bytes / t.dtype.size()).max(1) * t.dtype.size(),
        };
        self.tasks.push(Task {
            label: t.name.clone(),
            content: Content::Tensor(t.dtype),
            role,
            chunk_bytes,
            len: t.len(),
            base: Vec::new(),
            residual: Vec::new(),
            scales: Vec::new(),
            int8_hash,
            id: None,
        });
        self.tasks.len() - 1
    }

    fn read_shared(
        &mut self,
        reader: &mut impl Read,
        hasher: &mut BackgroundHash,
        t: &TensorInfo,
        task: usize,
    ) -> Result<(), FormatError> {
        let chunk_bytes = self.tasks[task].chunk_bytes;
        let mut left = t.len();
        if left == 0 {
            return self.finish_task(task);
        }
        while left > 0 {
            let n = left.min(chunk_bytes);
            let mut data = vec![0u8; n as usize];
            reader.read_exact(&mut data)?;
            let data = Arc::new(data);
            hasher.update_block(Block::Shared(data.clone()));
            (self.progress)(n);
            left -= n;
            let content = self.tasks[task].content;
            self.submit(
                Work::Bytes {
                    task,
                    content,
                    data,
                },
                n,
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn read_quantized(
        &mut self,
        reader: &mut impl Read,
        hasher: &mut BackgroundHash,
        t: &TensorInfo,
        task: usize,
        rows: u64,
        cols: u64,
        supplied: Option<usize>,
    ) -> Result<(), FormatError> {
        let rows_per_chunk = rows_per_chunk(rows, cols, self.opts.chunk_elems);
        // The paired int8 file, where its weight starts, and its scales, looked up once.
        let paired = match supplied {
            Some(i) => {
                let begin = self.int8[i]
                    .header
                    .tensor(&t.name)
                    .expect("paired tensor exists")
                    .begin;
                Some((i, begin, self.read_supplied_scales(i, t, rows)?))
            }
            None => None,
        };
        let mut row = 0;
        while row < rows {
            let n_rows = rows_per_chunk.min(rows - row);
            let n = n_rows * cols;
            let high = read_codes(reader, hasher, n as usize)?;
            (self.progress)(2 * n);
            let supplied_rows = match &paired {
                Some((i, begin, scales)) => {
                    let q = self.int8[*i].read_data(
                        &mut self.int8_handles[*i],
                        begin + row * cols,
                        n,
                    )?;
                    Some((q, scales[row as usize..(row + n_rows) as usize].to_vec()))
                }
                None => None,
            };
            self.submit(
                Work::Quant {
                    task,
                    high,
                    supplied: supplied_rows,
                    cols: cols as usize,
                },
                2 * n,
            )?;
            row += n_rows;
        }
        Ok(())
    }

    fn read_supplied_scales(
        &mut self,
        i: usize,
        t: &TensorInfo,
        rows: u64,
    ) -> Result<Vec<u32>, FormatError> {
        let prefix = t
            .name
            .strip_suffix(".weight")
            .expect("quantized names end in .weight");
        let s = self.int8[i]
            .header
            .tensor(&format!("{prefix}.SCB"))
            .expect("paired scales exist")
            .clone();
        let bytes = self.int8[i].read_data(&mut self.int8_handles[i], s.begin, rows * 4)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Remembers a shared tensor whose supplied-int8 counterpart has identical bytes, so the int8
    /// file can point at the same stream instead of storing it twice.
    fn note_int8_twin(&mut self, f: usize, t: &TensorInfo, task: usize) -> Result<(), FormatError> {
        let high_at = (
            self.high[f].path.clone(),
            self.high[f].header.data_start() + t.begin,
        );
        for i in 0..self.int8.len() {
            let Some(other) = self.int8[i].header.tensor(&t.name).cloned() else {
                continue;
            };
            if other.dtype != t.dtype || other.shape != t.shape {
                continue;
            }
            if !self.same_bytes(i, &other, &high_at)? {
                return Err(int8_tensor_differs(&t.name));
            }
            self.int8_shared.push((i, t.name.clone(), task));
        }
        Ok(())
    }

    fn same_bytes(
        &mut self,
        i: usize,
        other: &TensorInfo,
        (path, offset): &(PathBuf, u64),
    ) -> Result<bool, FormatError> {
        let mut a = BufReader::new(File::open(path)?);
        a.seek(SeekFrom::Start(*offset))?;
        let b = &mut self.int8_handles[i];
        b.seek(SeekFrom::Start(
            self.int8[i].header.data_start() + other.begin,
        ))?;
        let mut b = BufReader::new(b);
        let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        let mut left = other.len();
        while left > 0 {
            let n = left.min(1 << 16) as usize;
            a.read_exact(&mut x[..n])?;
            b.read_exact(&mut y[..n])?;
            if x[..n] != y[..n] {
                return Ok(false);
            }
            left -= n as u64;
        }
        Ok(true)
    }

    fn submit(&mut self, work: Work, bytes: u64) -> Result<(), FormatError> {
        self.pending.push(work);
        self.pending_bytes += bytes;
        // A pool thread encodes its batches itself (see `dispatch`): they stay large enough
        // to keep every core busy.
        let (job_bytes, job_chunks) = match rayon::current_thread_index() {
            Some(_) => (BATCH_BYTES, BATCH_CHUNKS),
            None => (JOB_BYTES, JOB_CHUNKS),
        };
        if self.pending_bytes >= job_bytes || self.pending.len() >= job_chunks {
            self.dispatch()?;
        }
        Ok(())
    }

    /// Sends the pending chunks to the pool as one job and writes every job that is done, in
    /// order, so that reading and writing overlap the encoding. Waits while the jobs in flight
    /// hold more than two batches of input.
    fn dispatch(&mut self) -> Result<(), FormatError> {
        let work = std::mem::take(&mut self.pending);
        let bytes = std::mem::take(&mut self.pending_bytes);
        if rayon::current_thread_index().is_some() {
            // A pool thread waiting for its own pool could wait forever (a pool of one):
            // encode here, one batch at a time, so no job is ever in flight.
            return self.commit_all(encode_batch(work, self.dtype)?);
        }
        if !work.is_empty() {
            // A chunk's fixed costs (tables, stream states) count as a share of a batch, so
            // that tiny chunks are bounded by number as well as bytes.
            let weight = bytes + work.len() as u64 * (BATCH_BYTES / BATCH_CHUNKS as u64);
            let dtype = self.dtype;
            self.encoding.send(weight, move || {
                work.into_iter().map(|w| encode_work(w, dtype)).collect()
            });
        }
        while let Some(done) = self.encoding.try_next() {
            self.commit_all(done?)?;
        }
        while self.encoding.in_flight() > 2 * BATCH_BYTES {
            let done = self.encoding.next().expect("bytes in flight");
            self.commit_all(done?)?;
        }
        Ok(())
    }

    /// Encodes and writes everything submitted so far.
    fn flush(&mut self) -> Result<(), FormatError> {
        self.dispatch()?;
        while let Some(done) = self.encoding.next() {
            self.commit_all(done?)?;
        }
        Ok(())
    }

    /// Writes a batch's results in input order.
    fn commit_all(&mut self, done: Vec<Done>) -> Result<(), FormatError> {
        for d in done {
            self.commit(d)?;
        }
        Ok(())
    }

    fn commit(&mut self, done: Done) -> Result<(), FormatError> {
        match done {
            Done::Bytes { task, chunk, data } => {
                let entry = self.write_base(chunk)?;
                if let Some(h) = self.tasks[task].int8_hash {
                    self.int8_hashers[h].update_block(Block::Shared(data));
                }
                let t = &mut self.tasks[task];
                t.base.push(entry);
                if t.base.len() as u64 == t.len.div_ceil(t.chunk_bytes) {
                    self.finish_task(task)?;
                }
            }
            Done::Quant {
                task,
                int8,
                residual,
                q,
                scales,
            } => {
                let base = self.write_base(int8)?;
                let res = self.write_residual(residual)?;
                if let Some(h) = self.tasks[task].int8_hash {
                    self.int8_hashers[h].update_owned(q);
                }
                let t = &mut self.tasks[task];
                t.base.push(base);
                t.residual.push(res);
                t.scales.extend(scales);
                let Role::Quantized { rows, .. } = t.role else {
                    unreachable!("quant work belongs to a quantized task")
                };
                if t.scales.len() as u64 == rows {
                    self.finish_task(task)?;
                }
            }
        }
        Ok(())
    }

    /// Registers a task's chunks as a stream (or quantized tensor) once all of them are written.
    fn finish_task(&mut self, task: usize) -> Result<(), FormatError> {
        let t = &mut self.tasks[task];
        let base = std::mem::take(&mut t.base);
        let id = match t.role {
            Role::Shared => {
                let (label, content, len, chunk_bytes) =
                    (t.label.clone(), t.content, t.len, t.chunk_bytes);
                self.push_stream(label, content, len, chunk_bytes, base)
            }
            Role::Quantized { rows, cols, .. } => {
                let residual = std::mem::take(&mut t.residual);
                let scale_bytes: Vec<u8> = std::mem::take(&mut t.scales)
                    .iter()
                    .flat_map(|s| s.to_le_bytes())
                    .collect();
                let name = t.label.clone();
                let int8_hash = t.int8_hash;
                let scales = self.small_stream(
                    &format!("{name} scales"),
                    Content::Tensor(Dtype::F32),
                    &scale_bytes,
                )?;
                if let Some(h) = int8_hash {
                    self.int8_hashers[h].update_owned(scale_bytes);
                    self.int8_hashers[h].update(&[0u8]);
                }
                let int8_first = self.chunks.len() as u32;
                let n_chunks = base.len() as u32;
                self.chunks.extend(base);
                let residual_first = self.chunks.len() as u32;
                for c in residual {
                    self.residual_chunks.push(self.chunks.len());
                    self.chunks.push(c);
                }
                let rows_per_chunk = rows_per_chunk(rows, cols, self.opts.chunk_elems);
                self.quantized.push(QuantTensor {
                    name,
                    rows,
                    cols,
                    rows_per_chunk,
                    scales,
                    int8_first,
                    residual_first,
                    n_chunks,
                });
                self.quantized.len() as u32 - 1
            }
        };
        self.tasks[task].id = Some(id);
        Ok(())
    }

    fn push_stream(
        &mut self,
        label: String,
        content: Content,
        len: u64,
        chunk_bytes: u64,
        chunks: Vec<Chunk>,
    ) -> u32 {
        let first_chunk = self.chunks.len() as u32;
        let n_chunks = chunks.len() as u32;
        self.chunks.extend(chunks);
        let dtype = match content {
            Content::Tensor(d) => Some(d),
            Content::Text => None,
        };
        self.streams.push(ByteStream {
            label,
            dtype,
            len,
            chunk_bytes,
            first_chunk,
            n_chunks,
        });
        self.streams.len() as u32 - 1
    }

    /// Encodes bytes already in memory (headers, scales, JSON) as a stream, in parallel.
    fn small_stream(
        &mut self,
        label: &str,
        content: Content,
        data: &[u8],
    ) -> Result<u32, FormatError> {
        let cb = match content {
            Content::Tensor(d) => (self.opts.stream_chunk_bytes / d.size()).max(1) * d.size(),
            Content::Text => self.opts.stream_chunk_bytes,
        };
        // One chunk (scales, most headers) is encoded here: while a batch keeps the pool busy,
        // a job sent to it would wait for the batch. Empty data has no chunks either way.
        let encode = |c: &[u8]| chunk::encode_bytes(c, content);
        let encoded: Vec<EncodedChunk> = if data.len() as u64 <= cb {
            data.chunks(cb as usize)
                .map(encode)
                .collect::<Result<_, _>>()?
        } else {
            data.par_chunks(cb as usize)
                .map(encode)
                .collect::<Result<_, _>>()?
        };
        let entries = encoded
            .into_iter()
            .map(|c| self.write_base(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.push_stream(label.to_string(), content, data.len() as u64, cb, entries))
    }

    fn write_base(&mut self, c: EncodedChunk) -> Result<Chunk, FormatError> {
        let entry = append_chunk(&mut self.out, &mut self.pos, c)?;
        self.writeback.advance(self.pos);
        Ok(entry)
    }

    /// Residual chunks go to the spool file; their offsets are made absolute in `finish`.
    fn write_residual(&mut self, c: EncodedChunk) -> Result<Chunk, FormatError> {
        append_chunk(&mut self.residual, &mut self.residual_pos, c)
    }

    fn derived_int8_files(&mut self) -> Result<Vec<OutputFile>, FormatError> {
        let mut files = Vec::new();
        let hashers = std::mem::take(&mut self.int8_hashers);
        for (f, hasher) in (0..self.high.len()).zip(hashers) {
            let layout = &self.derived_layouts[f];
            let header_task = layout.header_task.expect("submitted with the high file");
            let mut segments = vec![Segment::Stream(self.finished(header_task))];
            let mut size = layout.header.len() as u64;
            for (role, &task) in layout.roles.iter().zip(&layout.tasks) {
                let id = self.finished(task);
                match role {
                    Role::Shared => segments.push(Segment::Stream(id)),
                    Role::Quantized { .. } => {
                        let q = &self.quantized[id as usize];
                        let wf = self.weight_format.expect("derived blobs have the literal");
                        segments.extend([
                            Segment::Int8(id),
                            Segment::Stream(q.scales),
                            Segment::Stream(wf),
                        ]);
                    }
                }
            }
            for s in &segments[1..] {
                size += segment_len(&self.streams, &self.quantized, *s);
            }
            let name = self.high[f].name.clone();
            files.push(output_file(name, size, hasher.finish(), segments));
        }
        Ok(files)
    }

    /// Lays out a supplied int8 file: quantized weights and scales point at what the high files
    /// already stored, identical tensors are shared, anything else gets its own stream.
    fn encode_supplied_int8_file(&mut self, f: usize) -> Result<OutputFile, FormatError> {
        let file = &self.int8[f];
        let (name, raw, tensors, path) = (
            file.name.clone(),
            file.header.raw.clone(),
            file.header.tensors.clone(),
            file.path.clone(),
        );
        let mut hasher = BackgroundHash::new();
        hasher.update(&raw);
        let header_task = self.submit_text(format!("int8 header of {name}"), &raw)?;
        let mut reader = BufReader::with_capacity(1 << 20, File::open(&path)?);
        reader.seek(SeekFrom::Start(raw.len() as u64))?;
        // Streams of this file's own, filled in once flushed: its header's first.
        let mut segments = vec![Segment::Stream(u32::MAX)];
        let mut own_tasks = vec![(0, header_task)];
        for t in &tensors {
            let seg = self.supplied_segment(f, t);
            if let Some(seg) = seg {
                copy_into_hash(&mut reader, &mut hasher, t.len())?;
                segments.push(seg);
                continue;
            }
            let task = self.start_task(t, Role::Shared, None);
            self.read_shared(&mut reader, &mut hasher, t, task)?;
            own_tasks.push((segments.len(), task));
            segments.push(Segment::Stream(u32::MAX));
        }
        self.flush()?;
        for (at, task) in own_tasks {
            segments[at] = Segment::Stream(self.finished(task));
        }
        Ok(output_file(
            name,
            self.int8[f].header.file_len(),
            hasher.finish(),
            segments,
        ))
    }

    fn supplied_segment(&self, f: usize, t: &TensorInfo) -> Option<Segment> {
        for task in &self.tasks {
            if let (
                Role::Quantized {
                    supplied: Some(i), ..
                },
                Some(id),
            ) = (&task.role, task.id)
                && *i == f
            {
                let prefix = task.label.strip_suffix(".weight").unwrap_or(&task.label);
                if t.name == task.label {
                    return Some(Segment::Int8(id));
                }
                if t.name == format!("{prefix}.SCB") {
                    return Some(Segment::Stream(self.quantized[id as usize].scales));
                }
            }
        }
        self.int8_shared
            .iter()
            .find(|(i, n, _)| *i == f && *n == t.name)
            .and_then(|(_, _, task)| self.tasks[*task].id.map(Segment::Stream))
    }

    /// Appends the residual section, the index and the footer.
    fn finish(mut self) -> Result<(Index, u64), FormatError> {
        self.flush()?;
        let base = [PREAMBLE_LEN, self.pos];
        let mut residual = self.residual.into_inner().map_err(|e| e.into_error())?;
        residual.seek(SeekFrom::Start(0))?;
        let residual_start = self.pos;
        // In steps, each sent to disk once copied: the fsync then waits for the last step
        // only, not for the whole section (synthetic set: 60 MB, 25 ms).
        loop {
            let step = std::io::copy(&mut (&mut residual).take(4 << 20), &mut self.out)?;
            if step == 0 {
                break;
            }
            self.pos += step;
            self.writeback.advance(self.pos);
        }
        debug_assert_eq!(self.pos - residual_start, self.residual_pos);
        let residual_range = [residual_start, self.pos];
        for &i in &self.residual_chunks {
            self.chunks[i].0 += residual_start;
        }
        let index = Index {
            version: VERSION,
            high_dtype: self.dtype,
            base,
            residual: residual_range,
            chunks: self.chunks,
            streams: self.streams,
            quantized: self.quantized,
            high_files: self.high_files,
            int8_files: self.int8_files,
        };
        let json = serde_json::to_vec(&index).map_err(|e| FormatError::Corrupt(e.to_string()))?;
        let packed = zstd::bulk::compress(&json, 9)?;
        self.out.write_all(&packed)?;
        let index_offset = self.pos;
        self.pos += packed.len() as u64;
        self.out.write_all(&index_offset.to_le_bytes())?;
        self.out.write_all(&(packed.len() as u64).to_le_bytes())?;
        self.out
            .write_all(&crc32fast::hash(&packed).to_le_bytes())?;
        self.out.write_all(&VERSION.to_le_bytes())?;
        self.out.write_all(&MAGIC)?;
        self.out.flush()?;
        let blob_len = self.pos + FOOTER_LEN;
        index.validate(blob_len)?;
        Ok((index, blob_len))
    }
}

/// Writes a chunk's stored bytes at `*pos` and returns its index entry.
fn append_chunk(
    out: &mut impl Write,
    pos: &mut u64,
    c: EncodedChunk,
) -> Result<Chunk, FormatError> {
    out.write_all(&c.stored)?;
    let entry = Chunk(
        *pos,
        c.stored.len() as u32,
        c.decoded_len,
        c.crc32,
        c.codec,
        crc32fast::hash(&c.stored),
    );
    *pos += c.stored.len() as u64;
    Ok(entry)
}

/// Encodes a batch on all cores; results in input order.
fn encode_batch(work: Vec<Work>, dtype: HighDtype) -> Result<Vec<Done>, FormatError> {
    work.into_par_iter()
        .map(|w| encode_work(w, dtype))
        .collect()
}

/// Runs one unit of work: derive or take int8 values, then code int8 and residual, verified.
fn encode_work(w: Work, dtype: HighDtype) -> Result<Done, FormatError> {
    match w {
        Work::Bytes {
            task,
            content,
            data,
        } => Ok(Done::Bytes {
            task,
            chunk: chunk::encode_bytes(&data, content)?,
            data,
        }),
        Work::Quant {
            task,
            high,
            supplied,
            cols,
        } => {
            let (q, scales) = match supplied {
                Some(s) => s,
                None => {
                    let mut q = vec![0u8; high.len()];
                    let scales = high
                        .chunks(cols)
                        .zip(q.chunks_mut(cols))
                        .map(|(r, qr)| quantize_row(dtype, r, qr).to_bits())
                        .collect();
                    (q, scales)
                }
            };
            let floats: Vec<f32> = scales.iter().map(|&b| f32::from_bits(b)).collect();
            let rows = ChunkRows {
                dtype,
                q: &q,
                scales: &floats,
                cols,
            };
            let residual = chunk::encode_residual(&rows, &high)?;
            let int8 = chunk::encode_int8(&q, cols)?;
            Ok(Done::Quant {
                task,
                int8,
                residual,
                q,
                scales,
            })
        }
    }
}

/// `n` little-endian 16-bit codes from `reader`, hashed as read, without a copy where the
/// codes' memory is the file's bytes.
fn read_codes(
    reader: &mut impl Read,
    hasher: &mut BackgroundHash,
    n: usize,
) -> Result<Arc<Vec<u16>>, FormatError> {
    let mut codes = vec![0u16; n];
    reader.read_exact(bytemuck::cast_slice_mut(&mut codes))?;
    #[cfg(target_endian = "little")]
    {
        let codes = Arc::new(codes);
        hasher.update_block(Block::Codes(codes.clone()));
        Ok(codes)
    }
    #[cfg(not(target_endian = "little"))]
    {
        hasher.update(bytemuck::cast_slice(&codes));
        codes.iter_mut().for_each(|c| *c = u16::from_le(*c));
        Ok(Arc::new(codes))
    }
}

fn copy_into_hash(
    reader: &mut impl Read,
    hasher: &mut BackgroundHash,
    mut len: u64,
) -> Result<(), FormatError> {
    let mut buf = vec![0u8; 1 << 16];
    while len > 0 {
        let n = len.min(buf.len() as u64) as usize;
        reader.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        len -= n as u64;
    }
    Ok(())
}

fn output_file(name: String, size: u64, sha256: String, segments: Vec<Segment>) -> OutputFile {
    OutputFile {
        name,
        size,
        sha256,
        segments,
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Rows per chunk of a quantized tensor: as few chunks as hold at most 5/4 of `target`
/// elements each, the rows shared evenly. A tensor a little over the target (MiniLM's 384 x
/// 1536) stays one chunk instead of a full chunk and a small tail, each paying for its tables,
/// stream states and index entry.
fn rows_per_chunk(rows: u64, cols: u64, target: u64) -> u64 {
    let max_rows = ((target + target / 4) / cols.max(1)).max(1);
    rows.div_ceil(rows.div_ceil(max_rows).max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Blob, Precision};

    fn encode(input: &EncodeInput, out: &Path) -> Vec<u8> {
        encode_to_path(input, &EncodeOptions::default(), out, &|_| {}).unwrap();
        std::fs::read(out).unwrap()
    }

    /// Three 4 MiB tensors make a dozen jobs, several encoding while earlier ones are written.
    /// The blob is the one a pool thread writes one batch at a time, and decodes to the input.
    #[test]
    fn pipelined_batches_write_the_same_blob_as_serial_ones() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.safetensors");
        crate::synth::write_llm_like(&model, 3, 1024, 2048, 11).unwrap();
        let input = EncodeInput {
            high: vec![model.clone()],
            ..EncodeInput::default()
        };
        let pipelined = encode(&input, &dir.path().join("a.qstore"));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let serial = pool.install(|| encode(&input, &dir.path().join("b.qstore")));
        assert!(pipelined == serial, "the two blobs differ");

        let blob = Blob::open(pipelined).unwrap();
        let file = blob.file(Precision::High, None).unwrap().clone();
        let mut decoded = Vec::new();
        blob.write_file(&file, &mut decoded).unwrap();
        assert!(decoded == std::fs::read(&model).unwrap(), "decode differs");
        assert_eq!(file.sha256, sha256_hex(&decoded));
    }
}
