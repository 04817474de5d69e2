//! Decoding: any byte range of any output file, from the chunks that cover it.
//!
//! Memory: chunks are decoded in parallel, at most `2 * WINDOW` at a time, and written in order as
//! they complete, so a decode holds at most `2 * WINDOW` decoded chunks of ≤ ~1 MiB of output each,
//! whatever the file size, plus the small pieces that ride along with them (≤ 10 x 16 KiB per
//! chunk); what a chunk's decode needs on the way (stored bytes, a BF16 chunk's INT8 values) is
//! scratch of the thread decoding it, which decodes two chunks at a time. A server running many
//! decodes at once shares one [`DecodeBudget`] between them ([`Blob::write_range_budgeted`]).
//! A sink that keeps the pieces it is handed ([`OutputSink`]) holds their chunks on top.

use std::io::{Read, Write};
use std::ops::Range;
use std::rc::Rc;

use super::budget::{DecodeBudget, Decoded, InFlight, Outputs, scratch, scratch_done};
use super::chunk;
use super::index::{Chunk, Index, OutputFile, QuantTensor, Segment};
use super::{FOOTER_LEN, FormatError, MAGIC, MAX_INDEX_LEN, OLDEST_VERSION, PREAMBLE_LEN, VERSION};
use crate::codec::residual::ChunkRows;

/// Half the chunks a decode keeps in flight (see the module comment).
pub const WINDOW: usize = 16;

/// The budget of decodes not given one ([`Blob::write_range`]): a window each, and the spare
/// buffers one leaves for the next, as a server's downloads share theirs.
static LONE: std::sync::LazyLock<DecodeBudget> =
    std::sync::LazyLock::new(|| DecodeBudget::alone(WINDOW));

/// Most pieces one decode task takes: enough for two large chunks and the small pieces
/// around them (MiniLM's INT8 file has up to five small ones between two quantized weights and
/// three more before the next, which a task that starts after one pair meets first).
const TASK_PIECES: usize = 12;

/// A piece whose decoded chunk is at most this large rides along in a decode task without a
/// slot of its own in the chunks in flight: what it holds is a bias, a norm or the scales of a
/// weight, a few KiB. A task holds at most `TASK_PIECES - 1` of them.
const SMALL_PIECE: usize = 16 << 10;

/// Waits for a decoded chunk. Called from inside a rayon pool (a caller's `install`), this thread
/// is one of the pool's workers: it runs pending decodes itself while it waits, or a pool of one
/// would wait forever for the jobs it alone could run.
fn recv_helping<T>(rx: &std::sync::mpsc::Receiver<T>) -> T {
    loop {
        if let Ok(message) = rx.try_recv() {
            return message;
        }
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            // Nothing left to run here: the remaining decodes are on other threads.
            return rx.recv().expect("every spawned decode sends its result");
        }
    }
}

/// Whether a task should pair chunks, with `large` large pieces left to start. Two chunks
/// decoded together on one thread go faster than one after the other, but slower than one on
/// each of two threads: tasks pair only while more remain than the pool has threads, so a
/// short range (a 1 MiB GET spans two BF16 chunks: 4.9 -> 2.8 ms on 2 cores) and a file's last
/// chunks spread over the threads instead of leaving one idle.
fn pairing_pays(large: usize, threads: usize) -> bool {
    large > threads
}

/// Where a decode's bytes go, in order: pieces of checked chunks, each handed over whole so a
/// sink may keep it. A server's body queue sends them as they are: copying every decoded byte
/// into body buffers took ~5% of a busy server's CPU.
pub trait OutputSink {
    /// Takes the next piece of the output.
    fn put(&mut self, piece: Decoded) -> std::io::Result<()>;
}

/// A `Write` as an [`OutputSink`]: each piece is written, then its buffer goes back to the
/// decode for its next chunk.
struct Writing<'a>(&'a mut (dyn Write + Send));

impl OutputSink for Writing<'_> {
    fn put(&mut self, piece: Decoded) -> std::io::Result<()> {
        self.0.write_all(&piece)
    }
}

/// Where blob bytes come from: a local file, memory, or (in the server) an object store.
pub trait BlobSource: Sync {
    /// Total length of the blob.
    fn len(&self) -> u64;
    /// True for an empty source (never a valid blob).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `len` bytes at `offset`.
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
    /// [`BlobSource::read_at`] into `buf` (resized to `len`), so a decode can reuse one buffer
    /// across chunks instead of faulting in a fresh one each time.
    fn read_at_into(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
        *buf = self.read_at(offset, len)?;
        Ok(())
    }
    /// Starts reading `len` bytes at `offset` now, for a decode that will need them soon. A
    /// remote source (an object store, where each read costs a round trip) starts the request
    /// in the background so a decode keeps many reads in flight; a local one defers the read
    /// to when the bytes are taken, which is the default.
    fn read_ahead(&self, offset: u64, len: usize) -> ReadAhead {
        let _ = (offset, len);
        ReadAhead::deferred()
    }
    /// True when [`BlobSource::read_ahead`] starts reads: a decode then keeps its whole window
    /// in flight to overlap round trips. Without, four pieces per core keep the cores busy,
    /// and more would only hold memory (and fault in fresh buffers).
    fn reads_ahead(&self) -> bool {
        false
    }
    /// The whole blob in memory, when the source has it so (a mapped file, a buffer): chunks
    /// are then decoded where they lie, not copied out first (copying a file's pages took 12%
    /// of a one-thread BF16 decode).
    fn in_memory(&self) -> Option<&[u8]> {
        None
    }
}

/// A read a [`BlobSource`] may have started ahead of need.
pub struct ReadAhead(Pending);

enum Pending {
    /// Read when taken, by the thread that decodes.
    Deferred,
    /// In progress elsewhere; `hold` (e.g. a share of a memory budget) lives until the bytes
    /// are taken.
    Started {
        result: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        hold: Box<dyn Send>,
    },
}

impl ReadAhead {
    /// Nothing started: the bytes are read when taken.
    pub fn deferred() -> ReadAhead {
        ReadAhead(Pending::Deferred)
    }

    /// A read in progress elsewhere that will send its result on `result`; `hold` is dropped
    /// once the bytes are taken.
    pub fn started(
        result: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        hold: Box<dyn Send>,
    ) -> ReadAhead {
        ReadAhead(Pending::Started { result, hold })
    }

    /// The bytes, into `buf`: the started read's result (waiting for it), or read now if
    /// deferred.
    pub(super) fn take(
        self,
        src: &impl BlobSource,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        match self.0 {
            Pending::Started { result, hold } => {
                let bytes = result.recv().unwrap_or_else(|_| {
                    Err(std::io::Error::other("a read ahead ended without a result"))
                });
                drop(hold);
                *buf = bytes?;
                Ok(())
            }
            Pending::Deferred => src.read_at_into(offset, len, buf),
        }
    }
}

/// The stored chunks one piece of decode work needs, read ahead when the piece was scheduled.
#[derive(Default)]
struct Fetched(Vec<(u64, ReadAhead)>);

impl Fetched {
    /// The read started for chunk `id`, if any (taken: each is used once).
    fn take(&mut self, id: u64) -> Option<ReadAhead> {
        let at = self.0.iter().position(|(c, _)| *c == id)?;
        Some(self.0.swap_remove(at).1)
    }
}

impl BlobSource for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_at_into(offset, len, &mut buf)?;
        Ok(buf)
    }
    fn read_at_into(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        buf.resize(len, 0);
        self.read_exact_at(buf, offset)
    }
}

impl BlobSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn in_memory(&self) -> Option<&[u8]> {
        Some(self)
    }
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        in_place(self, offset, len).map(<[u8]>::to_vec)
    }
}

/// Which of the two served precisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Int8,
    /// The uploaded precision (BF16 or FP16).
    High,
}

/// An opened blob: its validated index plus the source to read chunks from.
pub struct Blob<S> {
    src: S,
    index: Index,
    /// Length of the index JSON: what holding this blob open costs in memory, roughly (the
    /// parsed index is about as large), for caches to weigh entries by.
    index_json_len: usize,
    /// The footer as validated, which also locates and checksums the index.
    footer: [u8; FOOTER_LEN as usize],
    /// Names this open blob in the scale memo ([`ScaleChunkMemo`]): unique in the process.
    memo_key: u64,
}

/// A piece of decode work: `take` bytes starting `skip` bytes into one decoded chunk.
#[derive(Debug, Clone, Copy)]
struct Piece {
    seg: Segment,
    chunk: u64,
    skip: usize,
    take: usize,
}

impl Piece {
    /// This piece's bytes of its decoded chunk `bytes`, handed on with the buffer.
    fn of(&self, bytes: Vec<u8>, outputs: &std::sync::Arc<Outputs>) -> Decoded {
        Decoded::new(bytes, self.skip..self.skip + self.take, outputs.clone())
    }
}

impl<S: BlobSource> Blob<S> {
    /// Reads the footer and index and validates them; touches no chunk.
    pub fn open(src: S) -> Result<Self, FormatError> {
        Self::open_limited(src, MAX_INDEX_LEN)
    }

    /// [`Blob::open`] with a tighter cap on the index JSON, for blobs from outside (a pushed
    /// blob is opened before anything about it is trusted: its index is what it costs to look).
    pub fn open_limited(src: S, max_index_len: usize) -> Result<Self, FormatError> {
        let max_index_len = max_index_len.min(MAX_INDEX_LEN);
        let len = src.len();
        if len < PREAMBLE_LEN + FOOTER_LEN {
            return Err(FormatError::Corrupt("too short to be a qstore blob".into()));
        }
        let preamble = src.read_at(0, PREAMBLE_LEN as usize)?;
        if preamble[..8] != MAGIC {
            return Err(FormatError::Corrupt("not a qstore blob (bad magic)".into()));
        }
        let version = u32::from_le_bytes(preamble[8..12].try_into().unwrap());
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(FormatError::Corrupt(format!(
                "unsupported format version {version}"
            )));
        }
        if preamble[12..16] != [0; 4] {
            return Err(FormatError::Corrupt("unknown preamble flags".into()));
        }
        let footer = src.read_at(len - FOOTER_LEN, FOOTER_LEN as usize)?;
        if footer[24..32] != MAGIC {
            return Err(FormatError::Corrupt("footer is damaged (bad magic)".into()));
        }
        let u64_at = |i: usize| u64::from_le_bytes(footer[i..i + 8].try_into().unwrap());
        let (offset, index_len) = (u64_at(0), u64_at(8));
        let crc = u32::from_le_bytes(footer[16..20].try_into().unwrap());
        if u32::from_le_bytes(footer[20..24].try_into().unwrap()) != version {
            return Err(FormatError::Corrupt("footer version does not match".into()));
        }
        if offset.checked_add(index_len) != Some(len - FOOTER_LEN)
            || index_len > max_index_len as u64
        {
            return Err(FormatError::Corrupt(
                "footer points outside the blob".into(),
            ));
        }
        let packed = src.read_at(offset, index_len as usize)?;
        if crc32fast::hash(&packed) != crc {
            return Err(FormatError::Corrupt("index checksum mismatch".into()));
        }
        // Streamed into a growing buffer: a bulk decompress would reserve the whole cap up front.
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(&packed[..])
            .and_then(|d| d.take(max_index_len as u64 + 1).read_to_end(&mut json))
            .map_err(|e| FormatError::Corrupt(format!("index: {e}")))?;
        if json.len() > max_index_len {
            return Err(FormatError::Corrupt(format!(
                "index: larger than {max_index_len} bytes"
            )));
        }
        let index: Index = serde_json::from_slice(&json)
            .map_err(|e| FormatError::Corrupt(format!("index: {e}")))?;
        if index.version != version {
            return Err(FormatError::Corrupt(
                "index version does not match the blob's".into(),
            ));
        }
        index.validate(offset)?;
        Ok(Blob {
            src,
            index,
            index_json_len: json.len(),
            footer: footer[..].try_into().expect("FOOTER_LEN bytes"),
            memo_key: ScaleChunkMemo::new_key(),
        })
    }

    /// See the field: how much memory this open blob holds, within a small factor.
    pub fn index_json_len(&self) -> usize {
        self.index_json_len
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The source chunks are read from.
    pub fn source(&self) -> &S {
        &self.src
    }

    /// Swaps what the blob is read from, as storage rotting under an open blob would.
    #[cfg(test)]
    pub(crate) fn source_mut(&mut self) -> &mut S {
        &mut self.src
    }

    pub(super) fn footer_bytes(&self) -> &[u8] {
        &self.footer
    }

    /// Offset of the index and the CRC-32 of its stored bytes, from the footer.
    pub(super) fn index_location(&self) -> (u64, u32) {
        let offset = u64::from_le_bytes(self.footer[0..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(self.footer[16..20].try_into().expect("4 bytes"));
        (offset, crc)
    }

    /// The output files of one precision.
    pub fn files(&self, p: Precision) -> &[OutputFile] {
        match p {
            Precision::Int8 => &self.index.int8_files,
            Precision::High => &self.index.high_files,
        }
    }

    /// Finds an output file; `None` picks the only safetensors file of a single-file model.
    pub fn file(&self, p: Precision, name: Option<&str>) -> Result<&OutputFile, FormatError> {
        let files = self.files(p);
        match name {
            Some(n) => files
                .iter()
                .find(|f| f.name == n)
                .ok_or_else(|| FormatError::NotFound(format!("no file {n:?} in this model"))),
            None => match files {
                [only] => Ok(only),
                _ => Err(FormatError::NotFound(format!(
                    "this model has several files ({}); name one",
                    files
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            },
        }
    }

    /// Writes bytes `range` of `file` to `out`, decoding only the chunks that cover it. Every
    /// chunk is checked against its CRC before any of its bytes are written.
    pub fn write_range(
        &self,
        file: &OutputFile,
        range: Range<u64>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), FormatError> {
        self.write_range_budgeted(file, range, out, &LONE)
    }

    /// [`Blob::write_range`] with the chunks in flight (the memory it holds) limited by
    /// `budget`, which a server shares between its downloads.
    pub fn write_range_budgeted(
        &self,
        file: &OutputFile,
        range: Range<u64>,
        out: &mut (dyn Write + Send),
        budget: &DecodeBudget,
    ) -> Result<(), FormatError> {
        self.send_range_budgeted(file, range, &mut Writing(out), budget)
    }

    /// [`Blob::write_range_budgeted`] into a sink that takes each decoded piece as it is. Each
    /// piece the sink still holds keeps its buffer (≤ one chunk) until it drops.
    pub fn send_range_budgeted(
        &self,
        file: &OutputFile,
        range: Range<u64>,
        out: &mut dyn OutputSink,
        budget: &DecodeBudget,
    ) -> Result<(), FormatError> {
        if range.start > range.end || range.end > file.size {
            return Err(FormatError::NotFound(format!(
                "range {range:?} is outside the {}-byte file",
                file.size
            )));
        }
        let pieces = self.plan(file, range);
        let outputs = budget.outputs();
        if pieces.len() <= 1 {
            for p in &pieces {
                let bytes = self.decode_piece(p, &mut Fetched::default(), &outputs)?;
                out.put(p.of(bytes, &outputs))?;
            }
            return Ok(());
        }
        let window = budget.window();
        // Without reads ahead, four pieces per core: chunks differ several-fold in cost (a
        // stream chunk of a shared tensor against a quantized one), and with two per core the
        // cores idled behind a slow piece (MiniLM, 2 threads: INT8 21 -> 16 ms, BF16 36 -> 28
        // ms in process with four).
        let cap = match self.src.reads_ahead() {
            true => 2 * window,
            false => (2 * window).min(4 * rayon::current_num_threads() + 4),
        };
        self.write_pipelined(&pieces, out, InFlight::new(budget, cap), &outputs)
    }

    /// Decodes `pieces` on the rayon pool, as many at a time as `in_flight` allows, and writes
    /// each from this thread as soon as it and all before it are ready: the cores stay busy
    /// across uneven chunks (no barrier between groups), and memory holds at most the decoded
    /// chunks in flight. A piece's reads start when it is scheduled (see
    /// [`BlobSource::read_ahead`]), so on a remote source the round trips of all pieces in
    /// flight overlap. Pieces run oldest first (a FIFO scope): when this thread is a pool
    /// worker, newest first had it race ahead on pieces it could not write yet, then wait idle
    /// for the oldest.
    fn write_pipelined(
        &self,
        pieces: &[Piece],
        out: &mut dyn OutputSink,
        mut in_flight: InFlight<'_>,
        outputs: &std::sync::Arc<Outputs>,
    ) -> Result<(), FormatError> {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<Vec<u8>, FormatError>)>();
        rayon::in_place_scope_fifo(|scope| {
            // One task decodes `pieces[task]`: its two pieces that pair (if it has them)
            // together, the others alone.
            let spawn = |task: Range<usize>| {
                let tx = tx.clone();
                let mut fetched: Vec<Fetched> = pieces[task.clone()]
                    .iter()
                    .map(|p| self.read_ahead(p))
                    .collect();
                scope.spawn_fifo(move |_| {
                    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.decode_task(&pieces[task.clone()], &mut fetched, outputs)
                    }))
                    .unwrap_or_else(|_| {
                        task.clone()
                            .map(|_| Err(FormatError::Corrupt("the decoder panicked".into())))
                            .collect()
                    });
                    for (i, d) in task.zip(decoded) {
                        let _ = tx.send((i, d));
                    }
                });
            };
            let (large_from, threads) = (self.large_from(pieces), rayon::current_num_threads());
            // Which pieces hold a slot of `in_flight`, as their tasks start.
            let mut counted = vec![false; pieces.len()];
            let mut spawned = 0;
            let top_up =
                |spawned: &mut usize, in_flight: &mut InFlight<'_>, counted: &mut [bool]| {
                    while *spawned < pieces.len() {
                        // A task starts whole or waits: split, a pair would decode alone.
                        let pair = pairing_pays(large_from[*spawned], threads);
                        let task = self.task(pieces, *spawned, pair);
                        let slots = self.slots(pieces, task.clone());
                        if !in_flight.start(slots.len()) {
                            break;
                        }
                        for &i in &slots {
                            counted[i] = true;
                        }
                        spawn(*spawned..task.end);
                        *spawned = task.end;
                    }
                };
            top_up(&mut spawned, &mut in_flight, &mut counted);
            let mut ready = std::collections::HashMap::new();
            for (i, p) in pieces.iter().enumerate() {
                let bytes = loop {
                    if let Some(bytes) = ready.remove(&i) {
                        break bytes;
                    }
                    let (j, decoded) = recv_helping(&rx);
                    ready.insert(j, decoded?);
                };
                // Counted in flight until the sink has taken it: a sink that blocks (a full
                // body queue) holds the chunk meanwhile, and no other starts in its place.
                outputs.keep(in_flight.buffers_to_keep());
                out.put(p.of(bytes, outputs))?;
                if counted[i] {
                    in_flight.finish_one();
                }
                top_up(&mut spawned, &mut in_flight, &mut counted);
            }
            Ok(())
        })
    }

    /// Writes a whole file.
    pub fn write_file(
        &self,
        file: &OutputFile,
        out: &mut (dyn Write + Send),
    ) -> Result<(), FormatError> {
        self.write_range(file, 0..file.size, out)
    }

    /// Splits a file range into per-chunk pieces, in output order.
    fn plan(&self, file: &OutputFile, range: Range<u64>) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut seg_start = 0u64;
        for &seg in &file.segments {
            let seg_len = self.index.segment_len(seg);
            let (lo, hi) = (
                range.start.max(seg_start),
                range.end.min(seg_start + seg_len),
            );
            if lo < hi {
                self.plan_segment(seg, lo - seg_start..hi - seg_start, &mut pieces);
            }
            seg_start += seg_len;
        }
        pieces
    }

    fn plan_segment(&self, seg: Segment, r: Range<u64>, pieces: &mut Vec<Piece>) {
        let chunk_len = |i: u64| -> (u64, u64) {
            match seg {
                Segment::Stream(s) => {
                    let s = &self.index.streams[s as usize];
                    (i * s.chunk_bytes, s.chunk_bytes)
                }
                Segment::Int8(q) | Segment::High(q) => {
                    let q = &self.index.quantized[q as usize];
                    let width = if matches!(seg, Segment::High(_)) {
                        2
                    } else {
                        1
                    };
                    let per = q.rows_per_chunk * q.cols * width;
                    (i * per, per)
                }
            }
        };
        let per = chunk_len(0).1;
        let mut i = r.start / per;
        loop {
            let (start, len) = chunk_len(i);
            if start >= r.end {
                break;
            }
            let lo = r.start.max(start);
            let hi = r.end.min(start + len);
            pieces.push(Piece {
                seg,
                chunk: i,
                skip: (lo - start) as usize,
                take: (hi - lo) as usize,
            });
            i += 1;
        }
    }

    /// Starts reading every stored chunk `p` decodes from (the same chunks `decode_piece`
    /// takes; one it misses is simply read when needed).
    fn read_ahead(&self, p: &Piece) -> Fetched {
        let mut ids = Vec::with_capacity(3);
        match p.seg {
            Segment::Stream(s) => {
                ids.push(u64::from(self.index.streams[s as usize].first_chunk) + p.chunk)
            }
            Segment::Int8(q) => {
                ids.push(u64::from(self.index.quantized[q as usize].int8_first) + p.chunk)
            }
            Segment::High(q) => {
                let q = &self.index.quantized[q as usize];
                ids.push(u64::from(q.int8_first) + p.chunk);
                ids.extend(self.scale_chunks(q, q.chunk_rows(p.chunk)));
                ids.push(u64::from(q.residual_first) + p.chunk);
            }
        }
        Fetched(
            ids.into_iter()
                .map(|id| {
                    let c = self.chunk(id);
                    (id, self.src.read_ahead(c.offset(), c.stored_len() as usize))
                })
                .collect(),
        )
    }

    /// Decodes one piece's chunk into a buffer from `outputs`; everything else it reads or
    /// decodes on the way lives in this thread's scratch.
    fn decode_piece(
        &self,
        p: &Piece,
        fetched: &mut Fetched,
        outputs: &Outputs,
    ) -> Result<Vec<u8>, FormatError> {
        let first = self.first_chunk(p, outputs);
        let first = self.decode_chunk(first, fetched)?;
        self.finish_piece(p, first, fetched, outputs)
    }

    /// Decodes two pieces, their first chunks together (see [`chunk::decode_two`]): what one
    /// thread gains by having two chunks' streams in flight at once.
    fn decode_two_pieces(
        &self,
        p: [&Piece; 2],
        fetched: [&mut Fetched; 2],
        outputs: &Outputs,
    ) -> [Result<Vec<u8>, FormatError>; 2] {
        let [fa, fb] = fetched;
        let first = [
            self.first_chunk(p[0], outputs),
            self.first_chunk(p[1], outputs),
        ];
        let [a, b] = self.decode_chunks_two(first, [&mut *fa, &mut *fb]);
        [
            a.and_then(|a| self.finish_piece(p[0], a, fa, outputs)),
            b.and_then(|b| self.finish_piece(p[1], b, fb, outputs)),
        ]
    }

    /// The pieces of the decode task that starts at piece `start`: up to the second whose
    /// first chunk can decode with another's (see [`chunk::decode_two`]), past whatever small
    /// pieces (biases, norms, scales) lie between, so that every task has a pair if the pieces
    /// do; never more than two pieces that are not small (one without `pair`), nor more than
    /// [`TASK_PIECES`].
    fn task(&self, pieces: &[Piece], start: usize, pair: bool) -> Range<usize> {
        let most_large = if pair && !self.better_alone(pieces, start) {
            2
        } else {
            1
        };
        let (mut large, mut pairing, mut end) = (0, 0, start);
        while end < pieces.len() && end - start < TASK_PIECES && pairing < 2 {
            let p = &pieces[end];
            if !self.small(p) {
                if large == most_large {
                    break;
                }
                large += 1;
            }
            pairing += usize::from(self.pairs(p));
            end += 1;
        }
        start..end
    }

    /// Whether the first large piece from `start` should decode alone so that the next two pair
    /// instead: two pieces decode together only while both have symbols left, and the longer
    /// one's rest decodes alone at about half the speed. A layer of MiniLM holds four 147,456-
    /// and two 589,824-value matrices; paired in file order from an odd start, each layer left
    /// 884,736 values alone, 17% of the INT8 file's symbols and a quarter of its decode time.
    /// Taking one piece alone costs its symbols; it is taken when that is less than what the
    /// pair would leave alone, with the next two paired.
    fn better_alone(&self, pieces: &[Piece], start: usize) -> bool {
        let mut next = pieces[start..]
            .iter()
            .take(2 * TASK_PIECES)
            .filter(|p| !self.small(p));
        let [Some(a), Some(b), Some(c)] = [next.next(), next.next(), next.next()] else {
            return false;
        };
        if ![a, b, c].iter().all(|p| self.pairs(p)) {
            return false;
        }
        let [a, b, c] = [a, b, c].map(|p| self.table_symbols(p));
        a + b.abs_diff(c) < a.abs_diff(b)
    }

    /// Symbols in the table loop of a piece's first chunk: one per byte of an int8 chunk, one
    /// per value (its exponent) of a 16-bit float chunk.
    fn table_symbols(&self, p: &Piece) -> usize {
        let c = self.chunk(self.first_chunk_id(p));
        let per_symbol = match c.codec() {
            chunk::ChunkCodec::Float16Wide | chunk::ChunkCodec::Float16Coarse => 2,
            _ => 1,
        };
        c.decoded_len() as usize / per_symbol
    }

    /// Per piece, how many of the pieces from it to the end are large (see [`pairing_pays`]).
    fn large_from(&self, pieces: &[Piece]) -> Vec<usize> {
        let mut n = vec![0; pieces.len() + 1];
        for (i, p) in pieces.iter().enumerate().rev() {
            n[i] = n[i + 1] + usize::from(!self.small(p));
        }
        n
    }

    /// The pieces of `task` that take a slot of the chunks in flight: its large ones, or its
    /// first if all are small.
    fn slots(&self, pieces: &[Piece], task: Range<usize>) -> Vec<usize> {
        let large: Vec<usize> = task.clone().filter(|&i| !self.small(&pieces[i])).collect();
        match large.is_empty() {
            true => vec![task.start],
            false => large,
        }
    }

    /// Whether a piece's output is a [`SMALL_PIECE`].
    fn small(&self, p: &Piece) -> bool {
        let id = match p.seg {
            Segment::High(q) => {
                u64::from(self.index.quantized[q as usize].residual_first) + p.chunk
            }
            _ => self.first_chunk_id(p),
        };
        self.chunk(id).decoded_len() as usize <= SMALL_PIECE
    }

    /// Whether a piece's first chunk is one that [`chunk::decode_two`] decodes with another.
    fn pairs(&self, p: &Piece) -> bool {
        chunk::decodes_together(self.chunk(self.first_chunk_id(p)).codec())
    }

    /// The chunk a piece decodes first: its own, or a BF16 piece's INT8 values.
    fn first_chunk_id(&self, p: &Piece) -> u64 {
        let first = match p.seg {
            Segment::Stream(s) => self.index.streams[s as usize].first_chunk,
            Segment::Int8(q) | Segment::High(q) => self.index.quantized[q as usize].int8_first,
        };
        u64::from(first) + p.chunk
    }

    /// Decodes a task's pieces: the first two that pair, together; the others alone.
    fn decode_task(
        &self,
        pieces: &[Piece],
        fetched: &mut [Fetched],
        outputs: &Outputs,
    ) -> Vec<Result<Vec<u8>, FormatError>> {
        let pairing: Vec<usize> = (0..pieces.len())
            .filter(|&i| self.pairs(&pieces[i]))
            .take(2)
            .collect();
        let mut decoded: Vec<Option<Result<Vec<u8>, FormatError>>> =
            (0..pieces.len()).map(|_| None).collect();
        if let [a, b] = pairing[..] {
            let (head, tail) = fetched.split_at_mut(b);
            let pair = [&pieces[a], &pieces[b]];
            let [ra, rb] = self.decode_two_pieces(pair, [&mut head[a], &mut tail[0]], outputs);
            (decoded[a], decoded[b]) = (Some(ra), Some(rb));
        }
        pieces
            .iter()
            .zip(fetched)
            .zip(decoded)
            .map(|((p, f), d)| d.unwrap_or_else(|| self.decode_piece(p, f, outputs)))
            .collect()
    }

    /// The chunk a piece decodes first, and the buffer it goes to: a stream or INT8 piece's
    /// own chunk into an output buffer, a BF16 piece's INT8 values into scratch.
    fn first_chunk(&self, p: &Piece, outputs: &Outputs) -> FirstChunk {
        let id = self.first_chunk_id(p);
        let len = self.chunk(id).decoded_len() as usize;
        let (expect, out) = match p.seg {
            Segment::Stream(_) => (chunk::Expect::Bytes, outputs.take(len)),
            Segment::Int8(_) => (chunk::Expect::Int8, outputs.take(len)),
            Segment::High(_) => (chunk::Expect::Int8, scratch(len)),
        };
        FirstChunk { id, expect, out }
    }

    /// What is left of a piece once its first chunk is decoded: a BF16 piece's residual.
    fn finish_piece(
        &self,
        p: &Piece,
        first: Vec<u8>,
        fetched: &mut Fetched,
        outputs: &Outputs,
    ) -> Result<Vec<u8>, FormatError> {
        match p.seg {
            Segment::Stream(_) | Segment::Int8(_) => Ok(first),
            Segment::High(q) => {
                let q = &self.index.quantized[q as usize];
                let id = u64::from(q.residual_first) + p.chunk;
                let out = outputs.take(self.chunk(id).decoded_len() as usize);
                let high = self.decode_residual(q, p.chunk, &first, fetched, out);
                scratch_done(first);
                high
            }
        }
    }

    fn chunk(&self, id: u64) -> Chunk {
        self.index.chunks[id as usize]
    }

    /// Chunk `id`'s stored bytes: where they lie if the source is in memory, else from its
    /// read ahead if one was started, or read now, into a [`scratch`] buffer; checked as the
    /// chunk decodes ([`Checks`]).
    fn stored(&self, id: u64, fetched: &mut Fetched) -> Result<Stored<'_>, FormatError> {
        let c = self.chunk(id);
        let (offset, len) = (c.offset(), c.stored_len() as usize);
        Ok(match self.src.in_memory() {
            Some(all) => Stored::InPlace(in_place(all, offset, len)?),
            None => {
                let mut bytes = scratch(len);
                match fetched.take(id) {
                    Some(read) => read.take(&self.src, offset, len, &mut bytes)?,
                    None => self.src.read_at_into(offset, len, &mut bytes)?,
                }
                // A source may answer short (a read ahead's result is whatever came back).
                if bytes.len() != len {
                    return Err(FormatError::Corrupt(format!(
                        "chunk at offset {offset} read {} of {len} bytes",
                        bytes.len(),
                    )));
                }
                Stored::Read(bytes)
            }
        })
    }

    /// Decodes a chunk into its buffer (resized to fit; its old bytes are overwritten) and
    /// checks it.
    fn decode_chunk(&self, c: FirstChunk, fetched: &mut Fetched) -> Result<Vec<u8>, FormatError> {
        let FirstChunk {
            id,
            expect,
            mut out,
        } = c;
        let chunk = self.chunk(id);
        out.resize(chunk.decoded_len() as usize, 0);
        let stored = self.stored(id, fetched)?;
        let mut checks = Checks::new(&stored, &out);
        let decoded = chunk::decode(chunk::ChunkJob {
            expect,
            codec: chunk.codec(),
            stored: &stored,
            out: &mut out,
            finished: &mut |bytes| checks.finished(bytes),
        });
        let checked = checks.verify(id, &chunk, decoded, &out);
        stored.done();
        checked.map(|()| out)
    }

    /// [`Blob::decode_chunk`] on two chunks, decoded together.
    fn decode_chunks_two(
        &self,
        c: [FirstChunk; 2],
        fetched: [&mut Fetched; 2],
    ) -> [Result<Vec<u8>, FormatError>; 2] {
        let [fa, fb] = fetched;
        let [a, b] = c;
        let (ca, cb) = (self.chunk(a.id), self.chunk(b.id));
        let (sa, sb) = match (self.stored(a.id, fa), self.stored(b.id, fb)) {
            (Ok(sa), Ok(sb)) => (sa, sb),
            (sa, sb) => {
                // A chunk that cannot be read fails alone; the other decodes by itself.
                let one = |stored: Result<Stored, FormatError>, c: FirstChunk, f: &mut Fetched| {
                    stored.and_then(|s| {
                        s.done();
                        self.decode_chunk(c, f)
                    })
                };
                return [one(sa, a, fa), one(sb, b, fb)];
            }
        };
        let (ida, idb) = (a.id, b.id);
        let (mut oa, mut ob) = (a.out, b.out);
        oa.resize(ca.decoded_len() as usize, 0);
        ob.resize(cb.decoded_len() as usize, 0);
        let (mut checks_a, mut checks_b) = (Checks::new(&sa, &oa), Checks::new(&sb, &ob));
        let [ra, rb] = chunk::decode_two(
            chunk::ChunkJob {
                expect: a.expect,
                codec: ca.codec(),
                stored: &sa,
                out: &mut oa,
                finished: &mut |bytes| checks_a.finished(bytes),
            },
            chunk::ChunkJob {
                expect: b.expect,
                codec: cb.codec(),
                stored: &sb,
                out: &mut ob,
                finished: &mut |bytes| checks_b.finished(bytes),
            },
        );
        let ra = checks_a.verify(ida, &ca, ra, &oa);
        let rb = checks_b.verify(idb, &cb, rb, &ob);
        sa.done();
        sb.done();
        [ra.map(|()| oa), rb.map(|()| ob)]
    }

    /// The chunk ids of the scale stream that hold the scales of `rows`.
    fn scale_chunks(&self, q: &QuantTensor, rows: Range<u64>) -> impl Iterator<Item = u64> {
        let s = &self.index.streams[q.scales as usize];
        let (lo, hi) = (rows.start * 4, rows.end * 4);
        (lo / s.chunk_bytes..hi.div_ceil(s.chunk_bytes)).map(|i| u64::from(s.first_chunk) + i)
    }

    /// The float32 scales of `rows`, from the scale stream's chunks.
    fn scales(
        &self,
        q: &QuantTensor,
        rows: Range<u64>,
        fetched: &mut Fetched,
    ) -> Result<Vec<f32>, FormatError> {
        let s = &self.index.streams[q.scales as usize];
        let (lo, hi) = (rows.start * 4, rows.end * 4);
        let mut bytes = Vec::with_capacity((hi - lo) as usize);
        for i in lo / s.chunk_bytes..hi.div_ceil(s.chunk_bytes) {
            let chunk = self.scale_chunk(u64::from(s.first_chunk) + i, fetched)?;
            let start = i * s.chunk_bytes;
            let (a, b) = (
                lo.max(start) - start,
                hi.min(start + chunk.len() as u64) - start,
            );
            bytes.extend_from_slice(&chunk[a as usize..b as usize]);
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Scale chunk `id`, decoded and verified, from this thread's memo or decoded now.
    fn scale_chunk(&self, id: u64, fetched: &mut Fetched) -> Result<Rc<[u8]>, FormatError> {
        let key = (self.memo_key, id);
        if let Some(kept) = ScaleChunkMemo::get(key) {
            return Ok(kept);
        }
        let c = FirstChunk {
            id,
            expect: chunk::Expect::Bytes,
            out: scratch(self.chunk(id).decoded_len() as usize),
        };
        let decoded = self.decode_chunk(c, fetched)?;
        let kept: Rc<[u8]> = Rc::from(&decoded[..]);
        scratch_done(decoded);
        ScaleChunkMemo::keep(key, &kept);
        Ok(kept)
    }

    /// Decodes high-precision chunk `i` of `q` into `out`, given its INT8 values: its
    /// scales, then the residual on top.
    fn decode_residual(
        &self,
        q: &QuantTensor,
        i: u64,
        values: &[u8],
        fetched: &mut Fetched,
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>, FormatError> {
        let scales = self.scales(q, q.chunk_rows(i), fetched)?;
        let id = u64::from(q.residual_first) + i;
        let c = self.chunk(id);
        let rows = ChunkRows {
            dtype: self.index.high_dtype,
            q: values,
            scales: &scales,
            cols: q.cols as usize,
        };
        out.resize(c.decoded_len() as usize, 0);
        let stored = self.stored(id, fetched)?;
        let mut checks = Checks::new(&stored, &out);
        let decoded =
            chunk::decode_residual_reporting(c.codec(), &rows, &stored, &mut out, &mut |bytes| {
                checks.finished(bytes)
            });
        let checked = checks.verify(id, &c, decoded, &out);
        stored.done();
        checked.map(|()| out)
    }
}

/// Scale chunks decoded on this thread, kept for the residual chunks after them: every
/// residual chunk needs its rows' scales, and one scale chunk holds a whole tensor's (on the
/// synthetic set, each of a tensor's 32 residual chunks decoded the same 4,096 scales again,
/// 3% of a BF16 decode). Entries are decoded and verified chunks, keyed by the open blob
/// (`Blob::memo_key`, never reused) and chunk id. Memory: at most [`SCALE_MEMO_ENTRIES`] of
/// at most [`SCALE_MEMO_BYTES`] per thread that decodes. (Not the residual coder's memo of
/// tables per scale value, `codec::residual::ScaleMemo`: this one keeps the scales themselves.)
struct ScaleChunkMemo;

/// Scale chunks kept per thread: a decode thread works through one tensor at a time, two
/// threads' pieces may straddle two tensors.
const SCALE_MEMO_ENTRIES: usize = 2;
/// Largest decoded scale chunk kept: the scales of 64Ki rows.
const SCALE_MEMO_BYTES: usize = 256 << 10;

/// A kept scale chunk: (open blob, chunk id), and its decoded bytes.
type KeptScales = ((u64, u64), Rc<[u8]>);

thread_local! {
    static SCALES_KEPT: std::cell::RefCell<Vec<KeptScales>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl ScaleChunkMemo {
    fn new_key() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn get(key: (u64, u64)) -> Option<Rc<[u8]>> {
        SCALES_KEPT.with(|m| {
            let m = m.borrow();
            m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        })
    }

    fn keep(key: (u64, u64), chunk: &Rc<[u8]>) {
        if chunk.len() > SCALE_MEMO_BYTES {
            return;
        }
        // During thread teardown the memo may be gone: nothing is kept then.
        let _ = SCALES_KEPT.try_with(|m| {
            let mut m = m.borrow_mut();
            if m.len() == SCALE_MEMO_ENTRIES {
                m.remove(0);
            }
            m.push((key, chunk.clone()));
        });
    }
}

/// A chunk's stored bytes: where they lie in an in-memory source, or read into a scratch
/// buffer ([`Stored::done`] gives it back).
enum Stored<'a> {
    InPlace(&'a [u8]),
    Read(Vec<u8>),
}

impl Stored<'_> {
    fn done(self) {
        if let Stored::Read(buf) = self {
            scratch_done(buf);
        }
    }
}

impl std::ops::Deref for Stored<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Stored::InPlace(bytes) => bytes,
            Stored::Read(buf) => buf,
        }
    }
}

/// `len` bytes at `offset` of an in-memory blob; past its end fails as a file read would.
pub(super) fn in_place(all: &[u8], offset: u64, len: usize) -> std::io::Result<&[u8]> {
    usize::try_from(offset)
        .ok()
        .and_then(|start| all.get(start..start.checked_add(len)?))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the blob",
            )
        })
}

/// The first chunk of a piece to decode: its id, what it decodes to, the buffer it goes to.
struct FirstChunk {
    id: u64,
    expect: chunk::Expect,
    out: Vec<u8>,
}

/// A chunk's two checksums, computed as it decodes: each stretch of output as the decoder
/// reports it final (so while it is still in cache; see [`crate::codec::Finished`]), and the
/// stored bytes alongside, in step with the output (the decode has just read them). Damage
/// anywhere in the stored bytes is caught, even where the decode would not notice; the
/// decoded checksum proves the bytes served are the bytes encoded. The stored bytes are not
/// checked before decoding: the decoders take any input without harm (fuzzed).
struct Checks<'s> {
    stored: &'s [u8],
    stored_crc: crc32fast::Hasher,
    stored_done: usize,
    /// Where the output starts (an address only, to see that reports are its own bytes), and
    /// its length.
    out_at: usize,
    out_len: usize,
    out_crc: crc32fast::Hasher,
    out_done: usize,
    /// A report that was not the output's next bytes.
    out_of_order: bool,
}

impl<'s> Checks<'s> {
    fn new(stored: &'s [u8], out: &[u8]) -> Self {
        Checks {
            stored,
            stored_crc: crc32fast::Hasher::new(),
            stored_done: 0,
            out_at: out.as_ptr() as usize,
            out_len: out.len(),
            out_crc: crc32fast::Hasher::new(),
            out_done: 0,
            out_of_order: false,
        }
    }

    /// The decoder's next final stretch of output.
    fn finished(&mut self, bytes: &[u8]) {
        if bytes.as_ptr() as usize != self.out_at + self.out_done
            || bytes.len() > self.out_len - self.out_done
        {
            self.out_of_order = true;
            return;
        }
        self.out_crc.update(bytes);
        self.out_done += bytes.len();
        let upto = match self.out_len {
            0 => 0,
            len => (self.stored.len() as u128 * self.out_done as u128 / len as u128) as usize,
        };
        self.stored_crc.update(&self.stored[self.stored_done..upto]);
        self.stored_done = upto;
    }

    /// Chunk `id`'s decode held to both checksums, once it ended (`out` is its output): what
    /// the decoder did not report is hashed now.
    fn verify(
        mut self,
        id: u64,
        c: &Chunk,
        decoded: Result<(), FormatError>,
        out: &[u8],
    ) -> Result<(), FormatError> {
        self.stored_crc.update(&self.stored[self.stored_done..]);
        if self.stored_crc.finalize() != c.stored_crc32() {
            return Err(FormatError::Corrupt(format!(
                "chunk at offset {} fails its stored checksum",
                c.offset()
            )));
        }
        decoded?;
        if self.out_of_order || out.as_ptr() as usize != self.out_at || out.len() != self.out_len {
            return Err(FormatError::Corrupt(format!(
                "chunk {id}: the decoder reported its output out of order"
            )));
        }
        self.out_crc.update(&out[self.out_done..]);
        if out.len() != c.decoded_len() as usize || self.out_crc.finalize() != c.crc32() {
            return Err(FormatError::Corrupt(format!(
                "chunk {id} fails its checksum"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chunk::ChunkCodec;

    /// A chunk entry for `stored` decoding to `out`.
    fn chunk_of(stored: &[u8], out: &[u8]) -> Chunk {
        Chunk(
            64,
            stored.len() as u32,
            out.len() as u32,
            crc32fast::hash(out),
            ChunkCodec::Raw,
            crc32fast::hash(stored),
        )
    }

    /// What the checks make of a decode that reported `reports` (ranges of `out`) and ended
    /// with `decoded`.
    fn verdict(
        stored: &[u8],
        c: &Chunk,
        out: &[u8],
        reports: &[std::ops::Range<usize>],
        decoded: Result<(), FormatError>,
    ) -> Result<(), FormatError> {
        let mut checks = Checks::new(stored, out);
        for r in reports {
            checks.finished(&out[r.clone()]);
        }
        checks.verify(7, c, decoded, out)
    }

    /// A whole file of four chunks pairs its first two on two threads, not its last two; a
    /// range of two chunks does not pair, and then no task holds more than one chunk.
    #[test]
    fn chunks_pair_only_while_more_remain_than_threads() {
        let blob = Blob::open(crate::synth::encoded_llm_like(1, 1024, 2048, 3)).unwrap();
        let file = blob.file(Precision::High, None).unwrap().clone();
        let most_in_a_task = |pieces: &[Piece], pair: bool| {
            let (mut start, mut most) = (0, 0);
            while start < pieces.len() {
                let task = blob.task(pieces, start, pair);
                let large = task.clone().filter(|&i| !blob.small(&pieces[i])).count();
                (most, start) = (most.max(large), task.end);
            }
            most
        };
        let whole = blob.plan(&file, 0..file.size);
        let large = blob.large_from(&whole);
        assert_eq!(large[0], 4);
        assert!(pairing_pays(large[0], 2));
        assert_eq!(most_in_a_task(&whole, true), 2);
        // The last two chunks: one per thread.
        let third = (0..whole.len()).find(|&i| large[i] == 2).unwrap();
        assert!(!pairing_pays(large[third], 2));
        // 1 MiB in the middle of the 4 MiB file: the end of chunk 1 and the start of chunk 2.
        let middle = file.size / 2 - (512 << 10);
        let range = blob.plan(&file, middle..middle + (1 << 20));
        assert_eq!(blob.large_from(&range)[0], 2);
        assert!(pairing_pays(2, 1), "one thread: pairing is faster");
        assert_eq!(most_in_a_task(&range, false), 1);
    }

    /// A small weight before two larger ones of equal size decodes alone, so that the two pair
    /// (they then decode together to the end), rather than pairing with the first and leaving
    /// most of it to decode alone; weights of one size pair in file order.
    #[test]
    fn a_piece_decodes_alone_when_that_lets_the_next_two_pair_evenly() {
        let tasks = |shapes: &[(usize, usize)]| {
            let blob = Blob::open(crate::synth::encoded_llm_like_shapes(shapes, 5)).unwrap();
            let file = blob.file(Precision::Int8, None).unwrap().clone();
            let pieces = blob.plan(&file, 0..file.size);
            let (mut start, mut larges) = (0, Vec::new());
            while start < pieces.len() {
                let task = blob.task(&pieces, start, true);
                let large = task.clone().filter(|&i| !blob.small(&pieces[i])).count();
                if large > 0 {
                    larges.push(large);
                }
                start = task.end;
            }
            larges
        };
        // 64 x 512 values, then two of 128 x 1024: one chunk each.
        let uneven = [(64, 512), (128, 1024), (128, 1024)];
        assert_eq!(tasks(&uneven), [1, 2]);
        assert_eq!(tasks(&[(128, 1024); 3]), [2, 1]);
        // With the larger first, pairing it with the next leaves less alone than decoding it
        // alone would.
        assert_eq!(tasks(&[(128, 1024), (64, 512), (64, 512)]), [2, 1]);
    }

    /// A sink may keep every piece past the decode that made it (a server's body queue does):
    /// the pieces still hold the file's bytes afterwards, whole files and ranges, one thread or
    /// two, and the chunks of a quantized weight arrive whole, one piece each.
    #[test]
    fn a_sink_keeps_pieces_past_the_decode() {
        struct Keep(Vec<Decoded>);
        impl OutputSink for Keep {
            fn put(&mut self, piece: Decoded) -> std::io::Result<()> {
                self.0.push(piece);
                Ok(())
            }
        }
        let blob = Blob::open(crate::synth::encoded_llm_like(1, 1024, 2048, 5)).unwrap();
        for precision in [Precision::High, Precision::Int8] {
            let file = blob.file(precision, None).unwrap().clone();
            let mut whole = Vec::new();
            blob.write_file(&file, &mut whole).unwrap();
            let chunks = blob.plan(&file, 0..file.size).len();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for range in [0..file.size, 1000..file.size / 2 + 77, 5..6] {
                    let mut kept = Keep(Vec::new());
                    let budget = DecodeBudget::shared(2, 0);
                    pool.install(|| {
                        blob.send_range_budgeted(&file, range.clone(), &mut kept, &budget)
                    })
                    .unwrap();
                    if range == (0..file.size) {
                        assert_eq!(kept.0.len(), chunks, "one piece per chunk");
                    }
                    let got: Vec<u8> = kept.0.iter().flat_map(|p| p.iter().copied()).collect();
                    let want = &whole[range.start as usize..range.end as usize];
                    assert!(got == want, "{precision:?} {range:?} on {threads} threads");
                }
            }
        }
    }

    /// Scale chunks kept on a thread belong to the blob that decoded them: two blobs of the
    /// same layout (the same chunk ids, other scales), decoded in turn on one thread, each
    /// give the bytes a fresh thread gives (a memo keyed by chunk id alone would hand one
    /// blob's scales to the other, and its residual chunks would fail their checksums).
    #[test]
    fn kept_scales_belong_to_their_blob() {
        let blobs: Vec<Blob<Vec<u8>>> = [7, 8]
            .map(|seed| Blob::open(crate::synth::encoded_llm_like(1, 1024, 2048, seed)).unwrap())
            .into();
        let decode = |blob: &Blob<Vec<u8>>, pool: &rayon::ThreadPool| {
            let file = blob.file(Precision::High, None).unwrap().clone();
            let mut out = Vec::new();
            pool.install(|| blob.write_file(&file, &mut out)).unwrap();
            out
        };
        let fresh = || {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
        };
        let want: Vec<Vec<u8>> = blobs.iter().map(|b| decode(b, &fresh())).collect();
        assert_ne!(want[0], want[1]);
        let shared = fresh();
        for b in [0, 1, 0, 1] {
            assert!(decode(&blobs[b], &shared) == want[b], "blob {b}");
        }
    }

    #[test]
    fn the_scale_memo_keeps_the_last_small_chunks() {
        let chunk = |n: usize| -> Rc<[u8]> { vec![n as u8; n].into() };
        let key = ScaleChunkMemo::new_key();
        for id in 0..3 {
            ScaleChunkMemo::keep((key, id), &chunk(100 + id as usize));
        }
        assert!(ScaleChunkMemo::get((key, 0)).is_none(), "the oldest went");
        assert_eq!(ScaleChunkMemo::get((key, 2)).unwrap().len(), 102);
        assert!(
            ScaleChunkMemo::get((key + 1, 2)).is_none(),
            "another blob's"
        );
        ScaleChunkMemo::keep((key, 9), &chunk(SCALE_MEMO_BYTES + 1));
        assert!(ScaleChunkMemo::get((key, 9)).is_none(), "too large to keep");
        assert_eq!(ScaleChunkMemo::get((key, 1)).unwrap().len(), 101);
    }

    /// Decodes that share a budget pass their output buffers on, old bytes and all: every
    /// decode still gives exactly its own file's bytes, whichever came before it.
    #[test]
    fn decodes_that_reuse_buffers_give_their_own_bytes() {
        let blobs: Vec<Blob<Vec<u8>>> = [5, 6]
            .map(|seed| Blob::open(crate::synth::encoded_llm_like(1, 1024, 2048, seed)).unwrap())
            .into();
        let budget = DecodeBudget::alone(4);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        for (blob, precision) in [
            (0, Precision::High),
            (1, Precision::High),
            (0, Precision::Int8),
        ]
        .into_iter()
        .cycle()
        .take(6)
        .map(|(b, p)| (&blobs[b], p))
        {
            let file = blob.file(precision, None).unwrap().clone();
            let mut want = Vec::new();
            blob.write_range_budgeted(&file, 0..file.size, &mut want, &DecodeBudget::alone(4))
                .unwrap();
            let mut got = Vec::new();
            pool.install(|| blob.write_range_budgeted(&file, 0..file.size, &mut got, &budget))
                .unwrap();
            assert!(got == want, "{precision:?}");
            seen.insert(crate::format::writer::sha256_hex(&got));
        }
        assert_eq!(seen.len(), 3, "three different files");
        assert!(budget.spare_bytes() > 0, "{budget:?}");
    }

    /// Reports in order, in part or not at all, pass on intact bytes; damage to either side
    /// fails, stored bytes first; a report that is not the output's next bytes fails.
    #[test]
    // The lists of one range are lists of reports, as the others.
    #[allow(clippy::single_range_in_vec_init)]
    fn checks_hold_a_decode_to_both_checksums() {
        let stored: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let out: Vec<u8> = (0..9000u32).map(|i| (i * 13 % 253) as u8).collect();
        let c = chunk_of(&stored, &out);
        for reports in [
            vec![],
            vec![0..9000],
            vec![0..4096, 4096..8192],
            vec![0..10, 10..11],
        ] {
            assert!(
                verdict(&stored, &c, &out, &reports, Ok(())).is_ok(),
                "{reports:?}"
            );
        }
        let mut bad_out = out.clone();
        bad_out[8500] ^= 1;
        let e = verdict(&stored, &c, &bad_out, &[0..4096], Ok(())).unwrap_err();
        assert!(e.to_string().contains("chunk 7 fails its checksum"), "{e}");
        let mut bad_stored = stored.clone();
        bad_stored[4999] ^= 1;
        let failed = || Err(FormatError::Corrupt("the decoder says no".into()));
        for decoded in [Ok(()), failed()] {
            let e = verdict(&bad_stored, &c, &out, &[0..9000], decoded).unwrap_err();
            assert!(e.to_string().contains("fails its stored checksum"), "{e}");
        }
        let e = verdict(&stored, &c, &out, &[0..9000], failed()).unwrap_err();
        assert!(e.to_string().contains("the decoder says no"), "{e}");
        for skipped in [vec![10..20], vec![0..10, 11..20], vec![0..10, 0..10]] {
            let e = verdict(&stored, &c, &out, &skipped, Ok(())).unwrap_err();
            assert!(e.to_string().contains("out of order"), "{skipped:?}: {e}");
        }
    }
}
