//! The wide residuals (codec 12 of version 2, codec 14 of version 3, codec 16 of version 4):
//! positions and whole values in separate streams.
//!
//! After the exceptions and the table come `varint 2 * whole_len + wide`, a stream of
//! `whole_len` bytes holding the whole values (on 32 lanes if `wide`, else 4; absent when the
//! chunk has none), and a 32-lane stream holding one [`Split`] position per element, element
//! `i` on lane `i % 32`. Elements that are whole values or exceptions take the one-position
//! no-op there, which reads nothing and leaves the lane's state as it is, so every element has
//! exactly one symbol and 32 consecutive elements decode in step. Whole value `k` (numbered in
//! element order) is pair `k` of its stream ([`Decoder::decode_pairs`]): its high byte, then its
//! low bits and sign over the values possible under that byte, in runs of 8 pairs (codec 12) or
//! 32 (codecs 14 and 16: a run is a SIMD group, whose symbols then decode on all lanes at
//! once). Codec 16 codes the high byte as its distance below the row's top byte.
//!
//! The decoder works in blocks: each element's split and base (table lookups by row and int8
//! byte), the positions eight lanes at a time, codes as `base + position`; a row's whole
//! groups of 32 without exceptions do all three in one loop ([`Decoder::decode_keyed_positions`]),
//! other groups in three passes. Whole values queue up and are decoded in groups of 32, then
//! written over their elements, as are exceptions.

use super::super::freq::{FreqTable, read_varint, take, write_varint};
use super::super::quantize::{HighDtype, RowIntervals};
use super::super::rans::{
    Decoder, KeyedTable, NARROW, NO_SYMBOL, Split, WIDE, code_pair_runs, code_positions,
};
use super::super::{Finished, STEP};
use super::rows::{add_bases, classify_eights, fill_splits, queue_whole};
use super::{ChunkRows, CodecError, Head, Item, ScaleCache, ScaleMemo, ScaleTables, classify_one};
use std::cell::RefCell;
use std::rc::Rc;
use std::thread::LocalKey;

/// Elements per decode block: their splits, positions and queued whole values stay in L1.
const BLOCK: usize = 2048;
/// Whole values are decoded in groups of this many (whole runs, one per SIMD lane group)
/// until the chunk ends.
const GROUP: usize = 32;
/// Room for a block's whole values plus those left from the block before (under a group),
/// plus the eight a SIMD store may write past the end.
const QUEUE: usize = BLOCK + GROUP + 8;
/// The split of a whole value's low bits and sign below its row's top high byte: all 256.
const ALL_LOWS: Split = Split::new(256);
/// Chunks with fewer whole values code them on 4 lanes: 32 cost 112 more bytes of states. From
/// 1,024 on, 32 lanes pay in speed: MiniLM's chunks hold 1,500-10,600 whole values each, and on
/// 4 lanes their symbol-by-symbol decode took 5% of a BF16 decode (one thread 26.3 -> 24.8 ms
/// on 32 lanes) for 3 KB more, 0.002 bits per parameter.
const WIDE_MIN_WHOLE: usize = 1 << 10;

/// A chunk's elements sorted by how they are coded, in one pass over them.
pub(super) struct Sorted {
    /// Whether whole values' high bytes are coded below their row's top byte.
    below_top: bool,
    /// Element numbers of the exceptions, increasing.
    pub exceptions: Vec<usize>,
    /// How often each high byte symbol occurs among the whole values.
    pub hi_counts: [u64; 256],
    /// Whole values in element order: their high byte symbols, and their low bits and signs
    /// as the symbols of their splits, packed as [`code_positions`] takes them.
    whole_highs: Vec<u8>,
    whole_lows: Vec<u32>,
    /// Per element, its position symbol packed as `start | (freq - 1) << 16`, or [`NO_SYMBOL`].
    positions: Vec<u32>,
}

thread_local! {
    /// The positions of the last chunk this thread coded, if at most [`KEPT_POSITIONS`].
    static SPARE_POSITIONS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Positions of the largest buffer a thread keeps (4 MiB): more than a chunk (at most 655,360
/// elements) has.
const KEPT_POSITIONS: usize = 1 << 20;

impl Sorted {
    pub fn classify(rows: &ChunkRows, high: &[u16], below_top: bool) -> Sorted {
        let mut s = Sorted {
            below_top,
            exceptions: Vec::new(),
            hi_counts: [0; 256],
            whole_highs: Vec::new(),
            whole_lows: Vec::new(),
            positions: Vec::new(),
        };
        // Built apart from `s` so that the hot loop keeps no count in memory. Every row's
        // positions are written below, and the rows are the chunk, so the buffer the last chunk
        // left is taken as it is: filled afresh for each chunk, it took 1.5% of a MiniLM encode.
        assert_eq!(
            rows.scales.len() * rows.cols,
            high.len(),
            "rows make the chunk"
        );
        let mut positions = SPARE_POSITIONS.take();
        positions.resize(high.len(), NO_SYMBOL);
        let mut slow = vec![0u32; rows.cols];
        let mut cache = ScaleCache::<RowClasses>::new(rows.dtype);
        for (r, &scale) in rows.scales.iter().enumerate() {
            let c = cache.get(scale);
            let span = r * rows.cols..(r + 1) * rows.cols;
            let first = span.start;
            let n_slow = classify_row(
                c,
                &high[span.clone()],
                &rows.q[span.clone()],
                &mut positions[span],
                &mut slow,
            );
            for &j in &slow[..n_slow] {
                let i = first + j as usize;
                let (code, q) = (high[i], rows.q[i]);
                if q == 0 && code & 0x7FFF < c.whole_end {
                    s.push_whole(c, code);
                    continue;
                }
                positions[i] = s.classify_slow(&c.iv, rows.dtype, code, q, i);
            }
        }
        s.positions = positions;
        s
    }

    /// Notes a whole value (q = 0) of a row that is not degenerate: what
    /// [`Sorted::classify_slow`] does with one, from what its row keeps for them.
    #[inline(always)]
    fn push_whole(&mut self, c: &RowClasses, code: u16) {
        let hi = (code & 0x7FFF) >> 7;
        let sym = if self.below_top { c.whole_top - hi } else { hi } as u8;
        let split = if hi == c.whole_top {
            c.under_top
        } else {
            ALL_LOWS
        };
        self.note_whole(
            sym,
            split,
            2 * u32::from(code & 0x7F) + u32::from(code >> 15),
        );
    }

    /// Counts a whole value's high byte symbol and keeps it, with its low bits and sign `v`
    /// as the symbol of `split`, for [`Sorted::code`].
    #[inline(always)]
    fn note_whole(&mut self, sym: u8, split: Split, v: u32) {
        self.hi_counts[usize::from(sym)] += 1;
        let low = split.symbol(v);
        self.whole_highs.push(sym);
        self.whole_lows.push(low.start | (low.freq - 1) << 16);
    }

    /// What [`Sorted::classify`] does with element `i` when it lies outside its byte's
    /// interval: a whole value or an exception (noted; [`NO_SYMBOL`] returned for both).
    fn classify_slow(
        &mut self,
        iv: &RowIntervals,
        dtype: HighDtype,
        code: u16,
        q: u8,
        i: usize,
    ) -> u32 {
        match classify_one(iv, dtype, code, q as i8) {
            Item::Position { r, n } => {
                // Unreachable (RowClasses takes every position), and right anyway.
                let sym = Split::of(n.into()).symbol(r.into());
                sym.start | (sym.freq - 1) << 16
            }
            Item::Whole { hi, lo, low } => {
                // A whole value's high byte is at most its row's top (classify_one).
                let sym = if self.below_top {
                    (iv.whole_top().0 - u16::from(hi)) as u8
                } else {
                    hi
                };
                let v = 2 * u32::from(lo & 0x7F) + u32::from(lo >> 7);
                self.note_whole(sym, Split::of(low.into()), v);
                NO_SYMBOL
            }
            Item::Exception => {
                self.exceptions.push(i);
                NO_SYMBOL
            }
        }
    }

    /// Appends the streams to `out`, which holds the exceptions and the table already; whole
    /// values in runs of `run` pairs.
    pub fn code(self, table: Option<&FreqTable>, run: usize, out: &mut Vec<u8>) {
        let (highs, lows) = (&self.whole_highs, &self.whole_lows);
        let wide = highs.len() >= WIDE_MIN_WHOLE;
        let mut whole_stream = Vec::new();
        if let Some(table) = table.filter(|_| !highs.is_empty()) {
            let packed = table.view().packed;
            if wide {
                code_pair_runs::<WIDE>(packed, run, highs, lows, &mut whole_stream);
            } else {
                code_pair_runs::<NARROW>(packed, run, highs, lows, &mut whole_stream);
            }
        }
        write_varint(out, 2 * whole_stream.len() as u64 + u64::from(wide));
        out.extend_from_slice(&whole_stream);
        code_positions(&self.positions, out);
        if self.positions.capacity() <= KEPT_POSITIONS {
            SPARE_POSITIONS.set(self.positions);
        }
    }
}

/// A row's positions, without a branch per element: each element's packed position symbol,
/// or [`NO_SYMBOL`] when it lies outside its byte's interval; those (whole values, a fifth of
/// the elements on heavy-tailed weights, and exceptions) are listed in `slow`, in order, for
/// [`Sorted::classify_slow`]. Returns how many.
fn classify_row(
    c: &RowClasses,
    high: &[u16],
    q: &[u8],
    positions: &mut [u32],
    slow: &mut [u32],
) -> usize {
    let (done, mut n_slow) = classify_eights(&c.bw, &c.split, high, q, positions, slow);
    let rest = high.iter().zip(q).zip(positions).enumerate().skip(done);
    for (j, ((&code, &q), p)) in rest {
        let b = usize::from(q);
        let r = code.wrapping_sub(c.base(b));
        let inside = r < c.width(b);
        // Computed for every element (r < 2^16 cannot overflow it), kept for those inside.
        let sym = c.split[b].symbol(u32::from(r));
        let keep = u32::from(inside).wrapping_neg();
        *p = (sym.start | (sym.freq - 1) << 16) & keep | NO_SYMBOL & !keep;
        slow[n_slow] = j as u32;
        n_slow += usize::from(!inside);
    }
    n_slow
}

/// What classifying a row's elements needs, per distinct scale: its intervals, and per int8
/// byte the code that position 0 stands for (sign included), how many codes from there are
/// positions, and their split. So an element is found to be a position with one subtraction
/// and one comparison; whole values and exceptions (an eighth or less of the elements) take
/// the general [`classify_one`].
#[derive(Clone)]
struct RowClasses {
    iv: RowIntervals,
    /// Magnitudes under this with q = 0 are whole values (0 for a degenerate row, where
    /// `classify_one` decides): [`Sorted::push_whole`] takes them without it.
    whole_end: u16,
    /// The largest high byte of a whole value, and the split of the lows under it.
    whole_top: u16,
    under_top: Split,
    /// Per byte `base | width << 16`: both in one load (the SIMD loop's eight at a time).
    bw: [u32; 256],
    split: [Split; 256],
}

impl RowClasses {
    /// A code `base + r` with `r < width` (wrapping) is exactly what `classify_one` calls
    /// position `r` of the byte's interval: the width stops at the largest finite code, above
    /// which it sees exceptions; and a code of the other sign is `r >= 2^15 - lo >= width`
    /// away, since the interval lies below 2^15.
    fn new(dtype: HighDtype, scale: f32) -> RowClasses {
        let iv = RowIntervals::new(dtype, scale);
        let (whole_top, under_top) = iv.whole_top();
        let mut c = RowClasses {
            iv,
            whole_end: 0,
            whole_top,
            under_top: Split::of(under_top.len()),
            bw: [0; 256],
            split: [Split::NOOP; 256],
        };
        if c.iv.is_degenerate() {
            return c;
        }
        c.whole_end = c.iv.zero_end().min(dtype.max_finite() + 1);
        let finite_end = u32::from(dtype.max_finite()) + 1;
        for b in 1..256 {
            let q = b as u8 as i8;
            if q == i8::MIN {
                continue;
            }
            let (lo, u) = c.iv.interval(q.unsigned_abs() as usize);
            let base = lo | if q < 0 { 0x8000 } else { 0 };
            let width = u.len().min(finite_end.saturating_sub(lo.into()));
            c.bw[b] = u32::from(base) | width << 16;
            c.split[b] = Split::of(u.len());
        }
        c
    }
}

impl RowClasses {
    /// The code that position 0 of byte `b`'s interval stands for (sign included).
    #[inline(always)]
    fn base(&self, b: usize) -> u16 {
        self.bw[b] as u16
    }

    /// How many codes from [`RowClasses::base`] are positions of byte `b`.
    #[inline(always)]
    fn width(&self, b: usize) -> u16 {
        (self.bw[b] >> 16) as u16
    }
}

/// What decoding a row needs, per distinct scale: per int8 byte the packed split of the
/// position and the code position 0 stands for (sign included); for whole values, the top
/// high byte and the split of the values under it.
#[derive(Clone)]
struct RowCoding {
    keyed: KeyedTable,
    degenerate: bool,
    top: u32,
    under_top: u32,
}

impl RowCoding {
    fn new(dtype: HighDtype, scale: f32) -> RowCoding {
        let c = RowClasses::new(dtype, scale);
        let (top, under_top) = c.iv.whole_top();
        RowCoding {
            keyed: KeyedTable::new(
                c.split.map(Split::packed),
                std::array::from_fn(|b| c.base(b)),
            ),
            degenerate: c.iv.is_degenerate(),
            top: u32::from(top),
            under_top: Split::of(under_top.len()).packed(),
        }
    }
}

thread_local! {
    static CLASSES: RefCell<ScaleMemo<RowClasses>> = ScaleMemo::new();
    static CODINGS: RefCell<ScaleMemo<RowCoding>> = ScaleMemo::new();
}

impl ScaleTables for RowClasses {
    fn make(dtype: HighDtype, scale: f32) -> Self {
        RowClasses::new(dtype, scale)
    }

    fn memo() -> &'static LocalKey<RefCell<ScaleMemo<Self>>> {
        &CLASSES
    }
}

// A thread keeps more decoder tables than real models have scales. The tables grew with the
// byte planes and the memo's byte budget quietly halved its entries: checked at build time.
const _: () = assert!(ScaleMemo::<RowCoding>::CAP >= 1024);

impl ScaleTables for RowCoding {
    /// 1,170 of these 3 KiB tables. At 1.5 MiB (501), MiniLM-L6's 545 scales emptied the memo
    /// in every decode: 5% of a one-thread decode went to rebuilding tables.
    const MEMO_BYTES: usize = 7 << 19;

    fn make(dtype: HighDtype, scale: f32) -> Self {
        RowCoding::new(dtype, scale)
    }

    fn memo() -> &'static LocalKey<RefCell<ScaleMemo<Self>>> {
        &CODINGS
    }
}

/// The whole-value stream, on the lanes its header names.
enum WholeStream<'a> {
    None,
    Narrow(Decoder<'a, NARROW>),
    Wide(Decoder<'a, WIDE>),
}

/// How a chunk's whole values are coded: in runs of `run` pairs, their high bytes as they are
/// or below their row's top byte.
#[derive(Clone, Copy)]
pub(super) struct Pairs {
    pub run: usize,
    pub below_top: bool,
}

/// What [`Decoder::decode_pairs`] is given as tops when high bytes are coded below the top:
/// symbol 0 is the top byte, under which fewer low values are possible.
static ZERO_TOPS: [u32; QUEUE] = [0; QUEUE];

/// Whole values waiting to be decoded: their elements, their rows' top bytes and splits under
/// them (set as they are queued, a row at a time), then the decoded high bytes and positions.
struct WholeQueue {
    len: usize,
    element: [u32; QUEUE],
    top: [u32; QUEUE],
    under: [u32; QUEUE],
    hi: [u8; QUEUE],
    v: [u16; QUEUE],
}

impl WholeQueue {
    /// Takes element `i` off the queue if it is there (an exception whose int8 byte made it
    /// look like a whole value).
    fn remove(&mut self, i: u32) {
        if let Ok(j) = self.element[..self.len].binary_search(&i) {
            for a in [&mut self.element, &mut self.top, &mut self.under] {
                a.copy_within(j + 1..self.len, j);
            }
            self.len -= 1;
        }
    }

    /// Decodes the first `n` queued values (whole groups, unless the chunk ends), writes them
    /// over their elements and keeps the rest. `first` counts the values decoded before.
    fn drain(
        &mut self,
        n: usize,
        first: &mut usize,
        pairs: Pairs,
        stream: &mut WholeStream,
        table: Option<&FreqTable>,
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        if n == 0 {
            return Ok(());
        }
        let missing = CodecError::Corrupt("whole values without their stream or table");
        let view = table.ok_or(missing.clone())?.view();
        let tops = if pairs.below_top {
            &ZERO_TOPS[..n]
        } else {
            &self.top[..n]
        };
        let (run, unders) = (pairs.run, &self.under[..n]);
        let (his, vs) = (&mut self.hi[..n], &mut self.v[..n]);
        match stream {
            WholeStream::None => return Err(missing),
            WholeStream::Narrow(d) => d.decode_pairs(&view, *first, run, tops, unders, his, vs),
            WholeStream::Wide(d) => d.decode_pairs(&view, *first, run, tops, unders, his, vs),
        }
        // Checked all at once (a loop that vectorises), then written. Below the top, a
        // symbol larger than the top would put the high byte under 0.
        let above = (self.hi[..n].iter().zip(&self.top[..n]))
            .fold(false, |above, (&hi, &top)| above | (u32::from(hi) > top));
        if above {
            return Err(CodecError::Corrupt("whole value outside its interval"));
        }
        if pairs.below_top {
            for (hi, &top) in self.hi[..n].iter_mut().zip(&self.top[..n]) {
                *hi = (top - u32::from(*hi)) as u8;
            }
        }
        // The codes first, over the positions (a loop that vectorises), then each to its element.
        for (v, &hi) in self.v[..n].iter_mut().zip(&self.hi[..n]) {
            *v = super::whole_code(u16::from(hi), *v);
        }
        write_codes(out, &self.element[..n], &self.v[..n]);
        *first += n;
        for a in [&mut self.element, &mut self.top, &mut self.under] {
            a.copy_within(n..self.len, 0);
        }
        self.len -= n;
        Ok(())
    }
}

/// Writes `codes[k]` (little-endian) over element `elements[k]` of `out`. Apart from the decode
/// loop around it, whose registers are taken: there it reloaded the output's address and length
/// from the stack for every value.
#[inline(never)]
fn write_codes(out: &mut [u8], elements: &[u32], codes: &[u16]) {
    let (out, _) = out.as_chunks_mut::<2>();
    for (&i, &code) in elements.iter().zip(codes) {
        out[i as usize] = code.to_le_bytes();
    }
}

/// Decodes the streams after `head` into `out` (little-endian codes), whole values coded as
/// `pairs` says, reporting to `finished` every [`STEP`] elements or so the codes that are
/// final: those before the first whole value still queued.
pub(super) fn decode(
    rows: &ChunkRows,
    head: Head,
    pairs: Pairs,
    out: &mut [u8],
    finished: Finished,
) -> Result<(), CodecError> {
    let n = out.len() / 2;
    let Head {
        exceptions,
        table,
        rest: mut buf,
    } = head;
    let whole_head = read_varint(&mut buf)?;
    let whole_len = usize::try_from(whole_head / 2)
        .map_err(|_| CodecError::Corrupt("whole-value stream longer than memory"))?;
    let whole_bytes = take(&mut buf, whole_len)?;
    let mut whole = match (whole_len, whole_head % 2) {
        (0, _) => WholeStream::None,
        (_, 0) => WholeStream::Narrow(Decoder::new(whole_bytes)?),
        _ => WholeStream::Wide(Decoder::new(whole_bytes)?),
    };
    let mut positions = Decoder::<WIDE>::new(buf)?;
    let mut cache = ScaleCache::<RowCoding>::new(rows.dtype);
    let (mut splits, mut r) = ([0u32; BLOCK], [0u16; BLOCK]);
    let mut queue = Box::new(WholeQueue {
        len: 0,
        element: [0; QUEUE],
        top: [0; QUEUE],
        under: [0; QUEUE],
        hi: [0; QUEUE],
        v: [0; QUEUE],
    });
    // Each row's tables, looked up once: the loops below meet a row up to three times.
    let row_slots: Vec<usize> = rows.scales.iter().map(|&s| cache.slot(s)).collect();
    let (mut exc, mut decoded_whole, mut reported) = (0, 0, 0);
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let block_exceptions =
            &exceptions[exc..exc + exceptions[exc..].iter().take_while(|e| e.0 < end).count()];
        for (row, span) in row_spans(start..end, rows.cols) {
            let c = &cache.intervals[row_slots[row]];
            let from = queue.len;
            queue_whole(
                &rows.q[span.clone()],
                span.start as u32,
                c.degenerate,
                &mut queue.element,
                &mut queue.len,
            );
            queue.top[from..queue.len].fill(c.top);
            queue.under[from..queue.len].fill(c.under_top);
        }
        for &(i, _) in block_exceptions {
            queue.remove(i as u32);
        }
        let mut at = start;
        while at < end {
            // The longest run of whole groups from `at` within one row and free of exceptions
            // goes through the keyed loop; a group that is not (a row or the chunk ends in it,
            // or it holds an exception) and what the keyed loop leaves, the general way.
            let row = at / rows.cols;
            let row_end = ((row + 1) * rows.cols).min(end);
            let next = block_exceptions.partition_point(|e| e.0 < at);
            let stop = block_exceptions
                .get(next)
                .map_or(row_end, |e| e.0.min(row_end));
            let run_end = at + (stop - at) / WIDE * WIDE;
            let mut done = at;
            if run_end > at {
                let c = &cache.intervals[row_slots[row]];
                done += positions.decode_keyed_positions(
                    &rows.q[at..run_end],
                    &c.keyed,
                    &mut out[2 * at..2 * run_end],
                );
            }
            let slow_end = if run_end > at {
                run_end
            } else {
                (at + WIDE).min(end)
            };
            if done < slow_end {
                let span = done..slow_end;
                let (splits, r) = (&mut splits[..span.len()], &mut r[..span.len()]);
                decode_span(
                    rows,
                    span,
                    block_exceptions,
                    (&cache.intervals, &row_slots),
                    &mut positions,
                    splits,
                    r,
                    out,
                );
            }
            at = slow_end;
        }
        for &(i, code) in block_exceptions {
            out[2 * i..2 * i + 2].copy_from_slice(&code.to_le_bytes());
        }
        exc += block_exceptions.len();
        let ready = if end == n {
            queue.len
        } else {
            queue.len - queue.len % GROUP
        };
        let table = table.as_ref();
        queue.drain(ready, &mut decoded_whole, pairs, &mut whole, table, out)?;
        let last = match queue.len {
            0 => end,
            _ => queue.element[0] as usize,
        };
        if last - reported >= STEP || last == n {
            finished(&out[2 * reported..2 * last]);
            reported = last;
        }
    }
    positions.finish()?;
    match whole {
        WholeStream::None => Ok(()),
        WholeStream::Narrow(d) => d.finish(),
        WholeStream::Wide(d) => d.finish(),
    }
}

/// The positions of elements `span` (its first on lane 0) the general way: each element's
/// split from its own row's table (exceptions take the no-op), then codes as base + position.
/// `splits` and `r` are scratch of the span's length.
#[allow(clippy::too_many_arguments)]
fn decode_span(
    rows: &ChunkRows,
    span: std::ops::Range<usize>,
    exceptions: &[(usize, u16)],
    (tables, row_slots): (&[Rc<RowCoding>], &[usize]),
    positions: &mut Decoder<WIDE>,
    splits: &mut [u32],
    r: &mut [u16],
    out: &mut [u8],
) {
    let first = span.start;
    for (row, part) in row_spans(span.clone(), rows.cols) {
        let c = &tables[row_slots[row]];
        let at = part.start - first..part.end - first;
        fill_splits(&c.keyed.splits, &rows.q[part], &mut splits[at]);
    }
    let from = exceptions.partition_point(|e| e.0 < span.start);
    for &(i, _) in exceptions[from..].iter().take_while(|e| e.0 < span.end) {
        splits[i - first] = Split::NOOP.packed();
    }
    positions.decode_positions(splits, r);
    for (row, part) in row_spans(span, rows.cols) {
        let c = &tables[row_slots[row]];
        let at = part.start - first..part.end - first;
        add_bases(
            &c.keyed.offsets,
            &rows.q[part.clone()],
            &r[at],
            &mut out[2 * part.start..2 * part.end],
        );
    }
}

/// The rows that elements `span` cover, each with the part of `span` inside it.
fn row_spans(
    span: std::ops::Range<usize>,
    cols: usize,
) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
    let first_row = span.start / cols.max(1);
    (first_row..)
        .map(move |row| {
            let a = (row * cols).max(span.start);
            (row, a..((row + 1) * cols).min(span.end))
        })
        .take_while(|(_, s)| s.start < s.end)
}

#[cfg(test)]
mod tests {
    use super::super::super::quantize::quantize_row;
    use super::*;

    /// A whole row's classification (eight at a time with AVX2, then the rest) gives each
    /// element the symbol `classify_one` implies, and lists exactly the others, in order.
    #[test]
    fn rows_classify_as_classify_one_does() {
        let mut seed = 5u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed >> 8
        };
        for dtype in [HighDtype::Bf16, HighDtype::F16] {
            for scale in [1.0f32, 0.037, 3.1e-5, 60000.0, 0.0, f32::NAN] {
                let c = RowClasses::new(dtype, scale);
                for cols in [1, 7, 8, 9, 100, 1027] {
                    let q: Vec<u8> = (0..cols).map(|_| next() as u8).collect();
                    let high: Vec<u16> = q
                        .iter()
                        .map(|&b| match next() % 4 {
                            // Near the byte's interval, or anywhere.
                            0 => next() as u16,
                            _ => c
                                .base(usize::from(b))
                                .wrapping_add((next() % 300) as u16)
                                .wrapping_sub(20),
                        })
                        .collect();
                    let (mut positions, mut slow) = (vec![0u32; cols], vec![0u32; cols]);
                    let n_slow = classify_row(&c, &high, &q, &mut positions, &mut slow);
                    let mut want_slow = Vec::new();
                    for j in 0..cols {
                        match classify_one(&c.iv, dtype, high[j], q[j] as i8) {
                            Item::Position { r, n } => {
                                let s = Split::of(n.into()).symbol(r.into());
                                assert_eq!(
                                    positions[j],
                                    s.start | (s.freq - 1) << 16,
                                    "{scale} {j}"
                                );
                            }
                            _ => {
                                assert_eq!(positions[j], NO_SYMBOL, "{scale} {j}");
                                want_slow.push(j as u32);
                            }
                        }
                    }
                    assert_eq!(&slow[..n_slow], &want_slow[..], "{dtype:?} {scale} {cols}");
                }
            }
        }
    }

    /// BF16 rows of `cols` quantized as bitsandbytes does: their int8 values and scales.
    fn quantized_rows(high: &[u16], cols: usize) -> (Vec<u8>, Vec<f32>) {
        let mut q = vec![0u8; high.len()];
        let scales = high
            .chunks(cols)
            .zip(q.chunks_mut(cols))
            .map(|(r, qr)| quantize_row(HighDtype::Bf16, r, qr))
            .collect();
        (q, scales)
    }

    /// Whole values go on 32 lanes from `WIDE_MIN_WHOLE` of them on, on 4 below, and either
    /// way the chunk decodes to its codes exactly.
    #[test]
    fn whole_values_take_32_lanes_from_the_threshold_on() {
        for whole in [WIDE_MIN_WHOLE - 1, WIDE_MIN_WHOLE] {
            // Rows of 256: a 1.0 that sets the scale, `whole` tiny values (int8 0) spread
            // over them, and 0.5s (positions) in the rest.
            let cols = 256;
            let rows_n = whole.div_ceil(cols - 1) + 1;
            let mut high = vec![0u16; rows_n * cols];
            let mut left = whole;
            for (r, row) in high.chunks_mut(cols).enumerate() {
                row[0] = (1.0f32.to_bits() >> 16) as u16;
                for (j, h) in row.iter_mut().enumerate().skip(1) {
                    *h = if left > 0 {
                        left -= 1;
                        ((1e-4 * (1 + (r + j) % 7) as f32).to_bits() >> 16) as u16
                    } else {
                        (0.5f32.to_bits() >> 16) as u16
                    };
                }
            }
            let (q, scales) = quantized_rows(&high, cols);
            assert_eq!(q.iter().filter(|&&b| b == 0).count(), whole);
            let rows = ChunkRows {
                dtype: HighDtype::Bf16,
                q: &q,
                scales: &scales,
                cols,
            };
            let data =
                super::super::encode(&rows, &high, super::super::Layout::WideBelowTop).unwrap();
            let mut buf = &data[..];
            assert!(
                super::super::read_exceptions(&mut buf, high.len())
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(take(&mut buf, 1).unwrap()[0], 1, "a whole-value table");
            FreqTable::read(&mut buf).unwrap();
            let wide = read_varint(&mut buf).unwrap() & 1 == 1;
            assert_eq!(wide, whole >= WIDE_MIN_WHOLE, "{whole} whole values");
            let mut out = vec![0u8; 2 * high.len()];
            super::super::decode(&rows, &data, super::super::Layout::WideBelowTop, &mut out)
                .unwrap();
            let want: Vec<u8> = high.iter().flat_map(|h| h.to_le_bytes()).collect();
            assert_eq!(out, want);
        }
    }

    /// A chunk classified after another on the same thread (whose positions buffer it takes
    /// over, values and all) codes as it does on a thread that classified nothing before.
    #[test]
    fn a_reused_positions_buffer_codes_what_a_fresh_one_does() {
        let chunk = |seed: u32, rows: usize, cols: usize| {
            let mut x = seed;
            let mut next = move || {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                x >> 8
            };
            // Uniform in (-1, 1): most elements are positions, some whole values.
            let high: Vec<u16> = (0..rows * cols)
                .map(|_| ((next() as f32 / (1 << 23) as f32 - 1.0).to_bits() >> 16) as u16)
                .collect();
            let (q, scales) = quantized_rows(&high, cols);
            (high, q, scales, cols)
        };
        let code = |(high, q, scales, cols): &(Vec<u16>, Vec<u8>, Vec<f32>, usize)| {
            let rows = ChunkRows {
                dtype: HighDtype::Bf16,
                q,
                scales,
                cols: *cols,
            };
            let mut out = Vec::new();
            Sorted::classify(&rows, high, true).code(None, GROUP, &mut out);
            out
        };
        // Larger first, so the second takes a buffer holding the first's positions past its end.
        let (first, second) = (chunk(3, 40, 300), chunk(9, 17, 250));
        let fresh = std::thread::spawn(move || code(&chunk(9, 17, 250)))
            .join()
            .unwrap();
        code(&first);
        assert_eq!(code(&second), fresh);
    }

    /// The fast path of `Sorted::classify` takes exactly the elements that `classify_one`
    /// calls positions, at the same position and width: every byte, every code of its
    /// interval and a few past each end, of either sign.
    #[test]
    fn row_classes_take_exactly_the_positions() {
        for dtype in [HighDtype::Bf16, HighDtype::F16] {
            for scale in [
                1.0f32,
                0.037,
                3.1e-5,
                250.0,
                60000.0,
                65504.0,
                3.389_531_4e38,
                1e-30,
                0.0,
                f32::NAN,
            ] {
                let c = RowClasses::new(dtype, scale);
                for b in 0..256usize {
                    let (lo, n) = if c.iv.is_degenerate() || b == 0 || b == 128 {
                        (0, 0)
                    } else {
                        let (lo, u) = c.iv.interval((b as u8 as i8).unsigned_abs() as usize);
                        (u32::from(lo), u.len())
                    };
                    for m in lo.saturating_sub(3)..(lo + n + 3).min(0x8000) {
                        for sign in [0, 0x8000] {
                            let code = m as u16 | sign;
                            let fast = code.wrapping_sub(c.base(b)) < c.width(b);
                            match classify_one(&c.iv, dtype, code, b as u8 as i8) {
                                Item::Position { r, n } => {
                                    assert!(fast, "{dtype:?} {scale} b={b} code={code:#x}");
                                    assert_eq!(r, code.wrapping_sub(c.base(b)));
                                    assert_eq!(c.split[b], Split::of(n.into()));
                                }
                                _ => assert!(!fast, "{dtype:?} {scale} b={b} code={code:#x}"),
                            }
                        }
                    }
                }
            }
        }
    }
}
