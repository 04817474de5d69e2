//! The residual: what a high-precision weight adds to its int8 value.
//!
//! Given the row scale and q, the weight's code lies in a known interval (see
//! [`RowIntervals`]); its position inside that interval is the whole residual. Positions are coded
//! uniformly over the exact interval width: measured on real weights, no context model beats that
//! by enough to pay for its tables (docs/FORMAT.md). Elements with q = 0, and every element of a
//! row without a usable scale, are coded whole: the high byte of the magnitude with a static
//! table, then the low 7 bits uniformly over the values still possible, then the sign. Anything else (an int8 value the weight does not quantize to, which a
//! user-supplied int8 file may contain, or NaN/Inf) is an exception stored raw.
//!
//! Chunk layout: `varint n_exceptions`, then per exception `varint gap, u16 code`; one flag byte
//! (1 = the whole-value table follows); the table; then on 4 lanes (version 1) one rANS stream,
//! on 32 lanes (versions 2 and 3, [`wide`]) a stream of whole values and one of positions.

mod rows;
mod wide;

use super::freq::{FreqTable, read_varint, take, write_varint};
use super::quantize::{HighDtype, RowIntervals};
use super::rans::{Decoder, Encoder, NARROW, PAIR_RUN, PAIR_RUN_V2, Uniform};
use super::{CodecError, Finished, Lanes};
use std::cell::RefCell;
// Keys are f32 scales' bits, looked up per row: SipHash took ~2% of a MiniLM decode.
use foldhash::HashMap;
use std::rc::Rc;
use std::thread::LocalKey;

/// How one element is coded.
#[derive(Clone, Copy)]
enum Item {
    Exception,
    /// High byte, sign + low 7 bits, and the coder of the (low 7 bits, sign) pairs possible
    /// under this high byte.
    Whole {
        hi: u8,
        lo: u8,
        /// Width of the uniform symbol it is coded over.
        low: u16,
    },
    Position {
        r: u16,
        /// Width of the interval `r` lies in.
        n: u16,
    },
}

/// Inputs of one residual chunk: whole rows of the tensor.
pub struct ChunkRows<'a> {
    pub dtype: HighDtype,
    /// Int8 values of the chunk (their bytes), row-major.
    pub q: &'a [u8],
    /// SCB of each row in the chunk.
    pub scales: &'a [f32],
    pub cols: usize,
}

impl ChunkRows<'_> {
    fn check(&self, n: usize) -> Result<(), CodecError> {
        if self.q.len() != n || self.scales.len().checked_mul(self.cols) != Some(n) {
            return Err(CodecError::Corrupt(
                "residual chunk shape does not match its rows",
            ));
        }
        Ok(())
    }
}

/// How a residual chunk's streams are laid out: the format versions' residual codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Version 1 (codec 6): every symbol in one 4-lane stream.
    Narrow,
    /// Version 2 (codec 12): positions on 32 lanes, whole values in a stream of their own, in
    /// runs of eight pairs.
    WideRunsOfEight,
    /// Version 3 (codec 14): the same with whole values in runs of 32, one SIMD group, which
    /// decode several times faster.
    Wide,
    /// Version 4 (codec 16): the same with each whole value's high byte coded as its distance
    /// below the row's top byte (the largest q = 0 allows). Rows' scales differ, so their
    /// whole values' high bytes sit at different heights; below the top they line up, and the
    /// chunk's table codes them in 0.27 fewer bits each on the synthetic LLM-like set.
    WideBelowTop,
}

impl Layout {
    /// Pairs per run of the whole-value stream (see `Decoder::decode_pairs`).
    fn pair_run(self) -> usize {
        match self {
            Layout::Wide | Layout::WideBelowTop => PAIR_RUN,
            Layout::Narrow | Layout::WideRunsOfEight => PAIR_RUN_V2,
        }
    }

    /// Whether whole values' high bytes are coded below their row's top byte.
    fn below_top(self) -> bool {
        self == Layout::WideBelowTop
    }

    /// Every layout, oldest first.
    pub const ALL: [Layout; 4] = [
        Layout::Narrow,
        Layout::WideRunsOfEight,
        Layout::Wide,
        Layout::WideBelowTop,
    ];

    /// The layout new chunks of these lanes are written in.
    pub fn written_on(lanes: Lanes) -> Layout {
        match lanes {
            Lanes::Narrow => Layout::Narrow,
            Lanes::Wide => Layout::WideBelowTop,
        }
    }
}

/// Codes the high-precision codes of a chunk given its int8 values and scales.
pub fn encode(rows: &ChunkRows, high: &[u16], layout: Layout) -> Result<Vec<u8>, CodecError> {
    rows.check(high.len())?;
    let mut out = Vec::new();
    match layout {
        Layout::Narrow => {
            let items = classify(rows, high);
            let exceptions = (0..items.len()).filter(|&i| matches!(items[i], Item::Exception));
            write_exceptions(exceptions, high, &mut out);
            let mut hi_counts = [0u64; 256];
            for item in &items {
                if let Item::Whole { hi, .. } = *item {
                    hi_counts[hi as usize] += 1;
                }
            }
            let table = write_table(&hi_counts, &mut out);
            code_interleaved(&items, table.as_ref(), &mut out);
        }
        Layout::WideRunsOfEight | Layout::Wide | Layout::WideBelowTop => {
            let sorted = wide::Sorted::classify(rows, high, layout.below_top());
            write_exceptions(sorted.exceptions.iter().copied(), high, &mut out);
            let table = write_table(&sorted.hi_counts, &mut out);
            sorted.code(table.as_ref(), layout.pair_run(), &mut out);
        }
    }
    Ok(out)
}

/// The whole values' table (after a byte saying whether there is one).
fn write_table(hi_counts: &[u64; 256], out: &mut Vec<u8>) -> Option<FreqTable> {
    let table = FreqTable::from_counts(hi_counts);
    out.push(u8::from(table.is_some()));
    if let Some(t) = &table {
        t.write(out);
    }
    table
}

/// Version 1: every symbol in one 4-lane stream, element `i` on lane `i % 4`.
fn code_interleaved(items: &[Item], table: Option<&FreqTable>, out: &mut Vec<u8>) {
    let mut enc = Encoder::<NARROW>::with_capacity(items.len());
    for (lane, item) in items.iter().enumerate() {
        match *item {
            Item::Whole { hi, lo, low } => push_whole(&mut enc, table, hi, lo, low, lane),
            Item::Position { r, n } => enc.push(Uniform::of(n.into()).symbol(r.into()), lane),
            Item::Exception => {}
        }
    }
    enc.finish_into(out);
}

/// A whole value's two symbols: its high byte with the chunk's table, then low bits and sign.
fn push_whole<const L: usize>(
    enc: &mut Encoder<L>,
    table: Option<&FreqTable>,
    hi: u8,
    lo: u8,
    low: u16,
    lane: usize,
) {
    let table = table.expect("the table exists when whole values do");
    enc.push(table.symbol(hi), lane);
    let low_and_sign = 2 * u32::from(lo & 0x7F) + u32::from(lo >> 7);
    enc.push(Uniform::of(low.into()).symbol(low_and_sign), lane);
}

fn classify(rows: &ChunkRows, high: &[u16]) -> Vec<Item> {
    let mut items = Vec::with_capacity(high.len());
    let mut cache = ScaleCache::<RowIntervals>::new(rows.dtype);
    for (r, &scale) in rows.scales.iter().enumerate() {
        let iv = cache.get(scale);
        let span = r * rows.cols..(r + 1) * rows.cols;
        for (&code, &q) in high[span.clone()].iter().zip(&rows.q[span]) {
            items.push(classify_one(iv, rows.dtype, code, q as i8));
        }
    }
    items
}

/// Rows often share a scale (a few rows per distinct value in real weights), so what a row's
/// coding needs (its intervals, and for version 2 its tables) is taken once per distinct scale
/// in a chunk, from this thread's [`ScaleMemo`].
struct ScaleCache<T: ScaleTables> {
    dtype: HighDtype,
    slots: HashMap<u32, usize>,
    /// Shared with the memo: copying a row's tables per chunk cost more than building them.
    intervals: Vec<Rc<T>>,
}

impl<T: ScaleTables> ScaleCache<T> {
    fn new(dtype: HighDtype) -> Self {
        ScaleCache {
            dtype,
            slots: HashMap::default(),
            intervals: Vec::new(),
        }
    }

    /// Position in `intervals` of the row coding for `scale`, taken on first use.
    fn slot(&mut self, scale: f32) -> usize {
        let (dtype, intervals) = (self.dtype, &mut self.intervals);
        *self.slots.entry(scale.to_bits()).or_insert_with(|| {
            intervals.push(T::memo().with_borrow_mut(|m| m.get(dtype, scale)));
            intervals.len() - 1
        })
    }

    fn get(&mut self, scale: f32) -> &T {
        let i = self.slot(scale);
        &self.intervals[i]
    }
}

/// What coding a row needs that follows from its dtype and scale alone.
trait ScaleTables: Sized + 'static {
    /// How many bytes of these a thread's [`ScaleMemo`] may keep.
    const MEMO_BYTES: usize = 3 << 19;

    fn make(dtype: HighDtype, scale: f32) -> Self;

    /// This thread's memo of them.
    fn memo() -> &'static LocalKey<RefCell<ScaleMemo<Self>>>;
}

/// Per thread, the tables of the scales it has met, kept across chunks: a model has few
/// distinct scales (545 on MiniLM-L6's 52,156 rows: the absmax of a BF16 row is a BF16 value),
/// far fewer than chunks times the scales each chunk meets. At most [`ScaleMemo::CAP`] entries
/// ([`ScaleTables::MEMO_BYTES`]: 1.5 MiB, 3.5 MiB of the decoder's tables): when full it starts
/// over. Threads keep it for their lifetime, so it counts in a long-running server's memory.
struct ScaleMemo<T> {
    tables: HashMap<(HighDtype, u32), Rc<T>>,
}

impl<T: ScaleTables> ScaleMemo<T> {
    const CAP: usize = T::MEMO_BYTES / std::mem::size_of::<T>();

    fn new() -> RefCell<Self> {
        RefCell::new(ScaleMemo {
            tables: HashMap::default(),
        })
    }

    fn get(&mut self, dtype: HighDtype, scale: f32) -> Rc<T> {
        let key = (dtype, scale.to_bits());
        if let Some(t) = self.tables.get(&key) {
            return t.clone();
        }
        if self.tables.len() >= Self::CAP {
            self.tables.clear();
        }
        self.tables
            .entry(key)
            .or_insert_with(|| Rc::new(T::make(dtype, scale)))
            .clone()
    }
}

thread_local! {
    static INTERVALS: RefCell<ScaleMemo<RowIntervals>> = ScaleMemo::new();
}

impl ScaleTables for RowIntervals {
    fn make(dtype: HighDtype, scale: f32) -> Self {
        RowIntervals::new(dtype, scale)
    }

    fn memo() -> &'static LocalKey<RefCell<ScaleMemo<Self>>> {
        &INTERVALS
    }
}

fn classify_one(iv: &RowIntervals, dtype: HighDtype, code: u16, q: i8) -> Item {
    let mag = code & 0x7FFF;
    let hi = (mag >> 7) as u8;
    let whole = Item::Whole {
        hi,
        lo: ((code >> 8) & 0x80) as u8 | (code & 0x7F) as u8,
        low: low_and_sign_coder(iv, u16::from(hi)).len() as u16,
    };
    if iv.is_degenerate() {
        return if q == 0 { whole } else { Item::Exception };
    }
    if mag > dtype.max_finite() {
        return Item::Exception;
    }
    if q == 0 {
        return if mag < iv.zero_end() {
            whole
        } else {
            Item::Exception
        };
    }
    if q == i8::MIN || (code >> 15 == 1) != (q < 0) {
        return Item::Exception;
    }
    let (lo, u) = iv.interval(q.unsigned_abs() as usize);
    let r = u32::from(mag).wrapping_sub(u32::from(lo));
    if mag < lo || r >= u.len() {
        Item::Exception
    } else {
        Item::Position {
            r: r as u16,
            n: u.len() as u16,
        }
    }
}

/// The exceptions, given their element numbers in increasing order: a count, then per
/// exception the gap from the one before and its code.
fn write_exceptions(positions: impl Iterator<Item = usize>, high: &[u16], out: &mut Vec<u8>) {
    let positions: Vec<usize> = positions.collect();
    write_varint(out, positions.len() as u64);
    let mut next = 0;
    for i in positions {
        write_varint(out, (i - next) as u64);
        out.extend_from_slice(&high[i].to_le_bytes());
        next = i + 1;
    }
}

/// Decodes a chunk written by [`encode`] into `out`: each code as 2 little-endian bytes, the
/// way safetensors stores it, so the output needs no second pass.
pub fn decode(
    rows: &ChunkRows,
    data: &[u8],
    layout: Layout,
    out: &mut [u8],
) -> Result<(), CodecError> {
    decode_reporting(rows, data, layout, out, &mut |_| {})
}

/// [`decode`], telling `finished` of the output as it becomes final (see [`Finished`]): a
/// wide chunk every few blocks, a version-1 chunk at the end.
pub fn decode_reporting(
    rows: &ChunkRows,
    data: &[u8],
    layout: Layout,
    out: &mut [u8],
    finished: Finished,
) -> Result<(), CodecError> {
    if !out.len().is_multiple_of(2) {
        return Err(CodecError::Corrupt("odd output length for 16-bit codes"));
    }
    let n = out.len() / 2;
    rows.check(n)?;
    let mut buf = data;
    let exceptions = read_exceptions(&mut buf, n)?;
    let table = match take(&mut buf, 1)?[0] {
        0 => None,
        1 => Some(FreqTable::read(&mut buf)?),
        _ => return Err(CodecError::Corrupt("bad residual table flag")),
    };
    let head = Head {
        exceptions,
        table,
        rest: buf,
    };
    match layout {
        Layout::Narrow => {
            decode_interleaved(rows, head, out)?;
            finished(out);
            Ok(())
        }
        Layout::WideRunsOfEight | Layout::Wide | Layout::WideBelowTop => {
            let pairs = wide::Pairs {
                run: layout.pair_run(),
                below_top: layout.below_top(),
            };
            wide::decode(rows, head, pairs, out, finished)
        }
    }
}

/// What precedes the streams of a chunk: its exceptions (position, code) and whole-value table.
struct Head<'a> {
    exceptions: Vec<(usize, u16)>,
    table: Option<FreqTable>,
    /// The bytes after them.
    rest: &'a [u8],
}

/// Version 1: one 4-lane stream.
fn decode_interleaved(rows: &ChunkRows, head: Head, out: &mut [u8]) -> Result<(), CodecError> {
    const L: usize = NARROW;
    let n = out.len() / 2;
    let Head {
        exceptions,
        table,
        rest,
    } = head;
    let mut dec = Decoder::<L>::new(rest)?;
    let (cols, q) = (rows.cols, rows.q);
    let mut put = |i: usize, code: u16| out[2 * i..2 * i + 2].copy_from_slice(&code.to_le_bytes());
    let mut cache = ScaleCache::<RowIntervals>::new(rows.dtype);
    let mut iv = rows.scales.first().map_or(0, |&s| cache.slot(s));
    let (mut row, mut row_end) = (0, cols);
    let mut exc = 0;
    let mut next_exc = exceptions.first().map_or(usize::MAX, |e| e.0);
    // The next element that starts a row or is an exception: one compare per element.
    let mut boundary = row_end.min(next_exc);
    let mut i = 0;
    // Element i is always on lane i % 4; the unrolled loop makes the lane a constant so the
    // four rANS states stay in registers. `$within`: the group of four has the 16 bytes its
    // at most eight symbols can read, so no symbol checks for the stream's end.
    macro_rules! step {
        ($lane:expr, $within:expr) => {{
            let mut exception = false;
            if i == boundary {
                if i == row_end {
                    row += 1;
                    row_end += cols;
                    iv = cache.slot(rows.scales[row]);
                }
                if i == next_exc {
                    put(i, exceptions[exc].1);
                    exc += 1;
                    next_exc = exceptions.get(exc).map_or(usize::MAX, |e| e.0);
                    exception = true;
                }
                boundary = row_end.min(next_exc);
            }
            if !exception {
                let code = decode_one::<$within, L>(
                    &cache.intervals[iv],
                    q[i] as i8,
                    table.as_ref(),
                    &mut dec,
                    $lane,
                )?;
                put(i, code);
            }
            i += 1;
        }};
    }
    while i + 4 <= n {
        if dec.bytes_left() >= 16 {
            step!(0, true);
            step!(1, true);
            step!(2, true);
            step!(3, true);
        } else {
            step!(0, false);
            step!(1, false);
            step!(2, false);
            step!(3, false);
        }
    }
    while i < n {
        step!(i % L, false);
    }
    dec.finish()
}

#[inline(always)]
fn decode_one<const WITHIN: bool, const L: usize>(
    iv: &RowIntervals,
    q: i8,
    table: Option<&FreqTable>,
    dec: &mut Decoder<L>,
    lane: usize,
) -> Result<u16, CodecError> {
    if q == 0 || iv.is_degenerate() {
        return decode_whole::<WITHIN, L>(iv, table, dec, lane);
    }
    // Width 0 cannot occur in a valid chunk; there it decodes garbage that the CRC rejects.
    let (lo, u) = iv.interval(q.unsigned_abs().min(127) as usize);
    let r = u.decode::<WITHIN, L>(dec, lane);
    let sign = if q < 0 { 0x8000 } else { 0 };
    Ok(sign | lo.wrapping_add(r as u16))
}

/// A whole value: high byte, then low bits and sign.
#[inline(always)]
fn decode_whole<const WITHIN: bool, const L: usize>(
    iv: &RowIntervals,
    table: Option<&FreqTable>,
    dec: &mut Decoder<L>,
    lane: usize,
) -> Result<u16, CodecError> {
    let hi_t = table.ok_or(CodecError::Corrupt("whole-value element without a table"))?;
    let hi = u16::from(hi_t.decode_in::<WITHIN, L>(dec, lane));
    if hi > iv.whole_top().0 {
        return Err(CodecError::Corrupt("whole value above its interval"));
    }
    let v = low_and_sign_coder(iv, hi).decode::<WITHIN, L>(dec, lane) as u16;
    Ok(whole_code(hi, v))
}

/// A whole value's code from its high byte and its low-bits-and-sign symbol (the sign in the
/// symbol's lowest bit).
#[inline(always)]
fn whole_code(hi: u16, v: u16) -> u16 {
    ((v & 1) << 15) | (hi << 7) | (v >> 1)
}

fn read_exceptions(buf: &mut &[u8], n: usize) -> Result<Vec<(usize, u16)>, CodecError> {
    let count = read_varint(buf)?;
    if count > n as u64 {
        return Err(CodecError::Corrupt("more exceptions than elements"));
    }
    let mut list = Vec::with_capacity(count as usize);
    let mut next = 0u64;
    for _ in 0..count {
        let pos = next
            .checked_add(read_varint(buf)?)
            .filter(|&p| p < n as u64);
        let pos = pos.ok_or(CodecError::Corrupt("exception position out of range"))?;
        let code = take(buf, 2)?;
        list.push((pos as usize, u16::from_le_bytes([code[0], code[1]])));
        next = pos + 1;
    }
    Ok(list)
}

/// Low 7 bits and sign of a whole value, as one uniform symbol over `2 * low + sign` (a table
/// would cost more than it saves): over all 256 pairs, or fewer under the top high byte. One
/// symbol instead of two keeps the q = 0 path short; the cost is the same.
#[inline(always)]
fn low_and_sign_coder(iv: &RowIntervals, hi: u16) -> Uniform {
    const ALL: Uniform = Uniform::new(256);
    let (top, under_top) = iv.whole_top();
    if hi == top { under_top } else { ALL }
}

#[cfg(test)]
mod tests {
    use super::super::STEP;
    use super::super::quantize::quantize_row;
    use super::*;

    fn round_trip(dtype: HighDtype, high: &[u16], q: &[u8], scales: &[f32], cols: usize) -> usize {
        let rows = ChunkRows {
            dtype,
            q,
            scales,
            cols,
        };
        let sizes = Layout::ALL.map(|layout| {
            let data = encode(&rows, high, layout).unwrap();
            let (mut out, mut reports) = (vec![0u8; 2 * high.len()], Vec::new());
            let finished: Finished = &mut |b| reports.extend_from_slice(b);
            decode_reporting(&rows, &data, layout, &mut out, finished).unwrap();
            assert_eq!(out, le_bytes(high), "{layout:?}");
            assert!(reports == out, "{layout:?}: reports are not the output");
            data.len()
        });
        sizes.into_iter().max().unwrap()
    }

    /// Rows scaled by outliers of different sizes put their whole values' high bytes at
    /// different heights; coded below each row's top byte, they line up and take fewer bytes.
    #[test]
    fn whole_values_below_their_rows_top_code_smaller() {
        let (n_rows, cols) = (96, 2048);
        let high = crate::synth::llm_like_bf16(n_rows, cols, 5);
        let mut q = vec![0u8; high.len()];
        let scales: Vec<f32> = (0..n_rows)
            .map(|r| {
                let span = r * cols..(r + 1) * cols;
                quantize_row(HighDtype::Bf16, &high[span.clone()], &mut q[span])
            })
            .collect();
        let rows = ChunkRows {
            dtype: HighDtype::Bf16,
            q: &q,
            scales: &scales,
            cols,
        };
        let whole = q.iter().filter(|&&b| b == 0).count();
        assert!(whole > high.len() / 10, "{whole} whole values");
        let [at_height, below_top] =
            [Layout::Wide, Layout::WideBelowTop].map(|l| encode(&rows, &high, l).unwrap().len());
        assert!(
            (below_top as f64) < 0.997 * at_height as f64,
            "{below_top} vs {at_height}"
        );
        round_trip(HighDtype::Bf16, &high, &q, &scales, cols);
    }

    /// The memo gives what computing afresh gives, for either dtype at the same scale bits,
    /// also after it filled and started over; it never holds more than its cap.
    #[test]
    fn scale_memo_matches_fresh_tables_and_stays_capped() {
        let mut memo = ScaleMemo::<RowIntervals>::new().into_inner();
        let cap = ScaleMemo::<RowIntervals>::CAP;
        for round in 0..2 {
            for k in 0..cap + 7 {
                for dtype in [HighDtype::Bf16, HighDtype::F16] {
                    let scale = 0.01 + (k * 7 % (cap + 7)) as f32 * 1e-3;
                    let (got, want) = (memo.get(dtype, scale), RowIntervals::new(dtype, scale));
                    assert_eq!(got.zero_end(), want.zero_end(), "{round} {k} {dtype:?}");
                    assert_eq!(got.whole_top(), want.whole_top());
                    for q in 1..128 {
                        assert_eq!(got.interval(q), want.interval(q), "{k} {dtype:?} {q}");
                    }
                    assert!(memo.tables.len() <= cap);
                }
            }
        }
    }

    fn le_bytes(codes: &[u16]) -> Vec<u8> {
        codes.iter().flat_map(|c| c.to_le_bytes()).collect()
    }

    fn derived(dtype: HighDtype, high: &[u16], cols: usize) -> (Vec<u8>, Vec<f32>) {
        let mut q = vec![0u8; high.len()];
        let scales = high
            .chunks(cols)
            .zip(q.chunks_mut(cols))
            .map(|(r, qr)| quantize_row(dtype, r, qr))
            .collect();
        (q, scales)
    }

    #[test]
    fn derived_int8_costs_few_bits_and_round_trips() {
        let cols = 256;
        let mut seed = 12345u64;
        let high: Vec<u16> = (0..cols * 64)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (seed >> 11) as f64 / (1u64 << 53) as f64;
                let v = ((u - 0.5) * 0.2).powi(3) * 50.0;
                half::bf16::from_f64(v).to_bits()
            })
            .collect();
        let (q, scales) = derived(HighDtype::Bf16, &high, cols);
        let bytes = round_trip(HighDtype::Bf16, &high, &q, &scales, cols);
        assert!(
            bytes * 8 < high.len() * 6,
            "{} bits/param",
            bytes as f64 * 8.0 / high.len() as f64
        );
    }

    /// Rows that end inside a group of 32 elements, exceptions anywhere, chunks over several
    /// decode blocks: every way the decoder shares a block between its keyed position loop and
    /// the general one. The longest chunk reports its output in several steps.
    #[test]
    fn rows_and_exceptions_anywhere_round_trip() {
        let mut seed = 99u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 11
        };
        for (cols, min) in [
            (1, 5000),
            (31, 5000),
            (32, 5000),
            (37, 5000),
            (384, 5000),
            (4100, 3 * STEP),
        ] {
            let n = cols * (min / cols + 1);
            let high: Vec<u16> = (0..n)
                .map(|_| {
                    let u = next() as f64 / (1u64 << 53) as f64;
                    half::bf16::from_f64(((u - 0.5) * 0.2).powi(3) * 50.0).to_bits()
                })
                .collect();
            let (mut q, scales) = derived(HighDtype::Bf16, &high, cols);
            let mut foreign: Vec<usize> = (0..n).filter(|_| next() % 97 == 0).collect();
            foreign.extend(
                [0, 31, 32, 33, 2047, 2048, n - 1]
                    .into_iter()
                    .filter(|&i| i < n),
            );
            for i in foreign {
                q[i] = q[i].wrapping_add(50);
            }
            round_trip(HighDtype::Bf16, &high, &q, &scales, cols);
        }
    }

    #[test]
    fn foreign_int8_values_become_exceptions() {
        let high: Vec<u16> = vec![0x3F80, 0xBF80, 0x7FC1, 0xFF80, 0x0001, 0x8000];
        let q = [1i8, 127, -128, 0, 0, 3].map(|v| v as u8);
        round_trip(HighDtype::Bf16, &high, &q, &[1.0, 0.5], 3);
        round_trip(HighDtype::F16, &high, &q, &[f32::NAN, 0.0], 3);
    }

    #[test]
    fn corrupt_residuals_error_without_panicking() {
        let high: Vec<u16> = (0..512u16).map(|i| i.wrapping_mul(97)).collect();
        let (q, scales) = derived(HighDtype::Bf16, &high, 64);
        let rows = ChunkRows {
            dtype: HighDtype::Bf16,
            q: &q,
            scales: &scales,
            cols: 64,
        };
        for layout in Layout::ALL {
            let data = encode(&rows, &high, layout).unwrap();
            let mut out = vec![0u8; 2 * high.len()];
            let expected = le_bytes(&high);
            for i in 0..data.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = data.clone();
                    bad[i] ^= bit;
                    if decode(&rows, &bad, layout, &mut out).is_ok() {
                        assert_ne!(
                            out, expected,
                            "a flipped byte cannot decode to the original"
                        );
                    }
                }
            }
            assert!(decode(&rows, &data[..data.len() - 1], layout, &mut out).is_err());
        }
    }
}
