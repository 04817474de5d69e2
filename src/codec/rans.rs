//! An interleaved rANS coder with `L` lanes of 32-bit states and 16-bit renormalisation.
//!
//! Every symbol carries its own probability resolution (`bits`), so one stream can mix symbols
//! from static tables (14 bits) with exactly-sized uniform symbols (16 bits). Callers put every
//! symbol of element `i` on lane `i % L`; the lanes share one word stream, read in symbol order.
//! Version-1 blobs use 4 lanes (a decoder unrolled by four keeps the states in registers);
//! version 2 uses 32, so eight-wide SIMD decodes four independent vectors of states and a scalar
//! decoder has 32 dependency chains to overlap. The decoder never panics on corrupt input: it
//! reads zeros past the end and reports the damage from [`Decoder::finish`].

use super::CodecError;

mod wide;
#[cfg(target_arch = "x86_64")]
mod wide_avx512;
mod wide_encode;

pub(crate) use wide::packed_lanes;
pub use wide::simd_enabled;
#[cfg(target_arch = "x86_64")]
pub(crate) use wide_avx512::avx512_enabled;

/// Lower bound of the normalised state interval `[RANS_L, 2^32)`.
const RANS_L: u32 = 1 << 16;
/// Lanes of version-1 streams.
pub const NARROW: usize = 4;
/// Lanes of version-2 streams.
pub const WIDE: usize = 32;
/// Pairs per run of a version-3 pair stream ([`Decoder::decode_pairs`]): one SIMD group.
pub const PAIR_RUN: usize = WIDE;
/// Pairs per run of a version-1 or version-2 pair stream.
pub const PAIR_RUN_V2: usize = 8;

/// Slots of a table-coded symbol: tables have 14-bit resolution unless they say otherwise.
pub const TABLE_BITS: u32 = 14;
/// The coarser resolution a table may have instead: its slots' next state and symbol then fit
/// one 32-bit entry each ([`TableView::entries`]), which the AVX-512 loops read with one gather
/// per sixteen symbols instead of two (1.55x the symbols per second on Intel, measured).
pub const COARSE_BITS: u32 = 12;
/// Bytes of a slot → symbol lookup: one per slot plus padding, so a SIMD decoder can gather
/// four bytes at any slot.
pub const LOOKUP_LEN: usize = (1 << TABLE_BITS) + 4;

/// What the table-driven decode loops need of a frequency table.
#[derive(Clone, Copy)]
pub struct TableView<'a> {
    /// The symbol of each slot (then padding).
    pub lookup: &'a [u8; LOOKUP_LEN],
    /// `freq | start << 16` of each symbol: one load gives both.
    pub packed: &'a [u32; 256],
    /// `sym << 32 | freq << 16 | (slot - start)` of each slot: the next state and the symbol
    /// in one load. Only tables built for the AVX2 loops have them (see `freq::Lookups`).
    pub slots: Option<&'a [u64; 1 << TABLE_BITS]>,
    /// `packed` as byte planes, for the AVX-512 VBMI loop (a permute lookup, not a gather).
    pub planes: &'a BytePlanes<4>,
    /// The table's resolution: [`TABLE_BITS`] or [`COARSE_BITS`].
    pub bits: u32,
    /// `sym | (slot - start) << 8 | freq << 20` of each slot, for tables of [`COARSE_BITS`]
    /// built where the AVX-512 loops run.
    pub entries: Option<&'a [u32; 1 << COARSE_BITS]>,
}

impl TableView<'_> {
    #[inline(always)]
    fn symbol(&self, sym: u8) -> Symbol {
        Symbol::of_table_entry(self.packed[sym as usize], self.bits)
    }
}

/// A symbol's slice `[start, start + freq)` of the range `[0, 2^bits)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    pub start: u32,
    pub freq: u32,
    pub bits: u32,
}

impl Symbol {
    /// A table symbol from its packed entry, `freq | start << 16` (as [`TableView::packed`]),
    /// in a table of `bits`.
    #[inline(always)]
    fn of_table_entry(e: u32, bits: u32) -> Symbol {
        Symbol {
            start: e >> 16,
            freq: e & 0xFFFF,
            bits,
        }
    }

    /// A 16-bit position symbol packed as [`code_positions`] takes it,
    /// `start | (freq - 1) << 16`.
    #[inline(always)]
    fn of_position(p: u32) -> Symbol {
        Symbol {
            start: p & 0xFFFF,
            freq: (p >> 16) + 1,
            bits: 16,
        }
    }
}

/// Uniform coding over `n` positions (1 ≤ n ≤ 2^15) at 16-bit resolution: position `r` is the
/// slice `[ceil(r 2^16 / n), ceil((r + 1) 2^16 / n))`, as even as integers allow, so a position
/// costs log2(n) bits to within 2^-16. Both slice ends come from one 64-bit multiply: with
/// `d = ceil(2^48 / n)` and `c = floor((n - 1) d / 2^16)`, `ceil(r 2^16 / n) = (r d + c) >> 32`
/// exactly (r d < 2^62; see the test), and the decoder finds `r` from a slot with one more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uniform {
    n: u32,
    d: u64,
    c: u64,
}

impl Uniform {
    /// Over no positions: what a zero-width interval holds. It decodes garbage without
    /// panicking (a valid stream never asks for it; the chunk checksum rejects the result).
    pub const EMPTY: Uniform = Uniform { n: 0, d: 0, c: 0 };

    /// [`Uniform::new`] from a table for the widths bfloat16 intervals have (up to ~200): a
    /// row's 128 intervals would otherwise cost 128 hardware divisions.
    #[inline]
    pub fn of(n: u32) -> Uniform {
        match SMALL_UNIFORMS.get(n as usize) {
            Some(&u) if n > 0 => u,
            _ => Uniform::new(n),
        }
    }

    /// `n` in `1..=2^15`.
    pub const fn new(n: u32) -> Uniform {
        let d = (1u64 << 48).div_ceil(n as u64);
        Uniform {
            n,
            d,
            c: ((n as u64 - 1) * d) >> 16,
        }
    }

    /// Number of positions.
    pub fn len(self) -> u32 {
        self.n
    }

    pub fn is_empty(self) -> bool {
        self.n == 0
    }

    #[inline(always)]
    fn slice(self, r: u32) -> (u32, u32) {
        let at = u64::from(r) * self.d + self.c;
        ((at >> 32) as u32, ((at + self.d) >> 32) as u32)
    }

    /// The symbol of position `r < n`.
    #[inline(always)]
    pub fn symbol(self, r: u32) -> Symbol {
        let (start, end) = self.slice(r);
        Symbol {
            start,
            freq: end.wrapping_sub(start),
            bits: 16,
        }
    }

    /// Decodes a position on `lane`: the slice holding the slot is found by one multiply.
    /// `WITHIN` as in [`Decoder::advance_in`].
    #[inline(always)]
    pub fn decode<const WITHIN: bool, const L: usize>(
        self,
        dec: &mut Decoder<L>,
        lane: usize,
    ) -> u32 {
        let slot = dec.slot(lane, 16);
        let r = (slot * self.n) >> 16;
        dec.advance_in::<WITHIN>(lane, self.symbol(r));
        r
    }
}

static SMALL_UNIFORMS: [Uniform; 257] = {
    let mut t = [Uniform::EMPTY; 257];
    let mut n = 1;
    while n < 257 {
        t[n] = Uniform::new(n as u32);
        n += 1;
    }
    t
};

/// Uniform coding over `n` positions (1 ≤ n ≤ 2^15) at 16-bit resolution, for 32-lane
/// streams: with `f = floor(2^16 / n)` and `e = 2^16 mod n`, positions `r < e` get `f + 1`
/// slots and the others `f`, so `start(r) = r f + min(r, e)`. The same slice widths as
/// [`Uniform`] (so the same cost), in an order whose decoder needs one division of numbers
/// below 2^17, which single-precision SIMD division does exactly (see `position`). `n = 1`
/// spans the whole range and leaves a state unchanged: the no-op that elements coded
/// elsewhere get, keeping every lane in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split(u32);

impl Split {
    /// One position: decoding it changes nothing and reads nothing.
    pub const NOOP: Split = Split::new(1);

    /// `n` in `1..=2^15`; 0 gives [`Split::NOOP`] (an empty interval has no positions to code;
    /// its elements are exceptions).
    pub const fn new(n: u32) -> Split {
        if n == 0 {
            return Split::new(1);
        }
        let (f, e) = (65_536 / n, 65_536 % n);
        Split((f - 1) | e << 16)
    }

    /// [`Split::new`] from a table for the widths bfloat16 and float16 intervals have.
    #[inline]
    pub fn of(n: u32) -> Split {
        match SMALL_SPLITS.get(n as usize) {
            Some(&s) => s,
            None => Split::new(n),
        }
    }

    /// The packed split of a pair's second symbol (see [`Decoder::decode_pairs`]).
    #[inline(always)]
    pub fn second_of_pair(sym: u8, top: u32, under: u32) -> u32 {
        if u32::from(sym) == top {
            under
        } else {
            Split::new(256).0
        }
    }

    /// `(f - 1) | e << 16`: what the decode loops take per element.
    pub fn packed(self) -> u32 {
        self.0
    }

    #[inline(always)]
    fn parts(packed: u32) -> (u32, u32) {
        ((packed & 0xFFFF) + 1, packed >> 16)
    }

    /// The symbol of position `r < n`.
    #[inline(always)]
    pub fn symbol(self, r: u32) -> Symbol {
        let (f, e) = Self::parts(self.0);
        Symbol {
            start: r * f + r.min(e),
            freq: f + u32::from(r < e),
            bits: 16,
        }
    }

    /// The position whose slice holds `slot` (< 2^16).
    #[inline(always)]
    fn position(packed: u32, slot: u32) -> u32 {
        let (f, e) = Self::parts(packed);
        let split = e * (f + 1);
        if slot < split {
            slot / (f + 1)
        } else {
            e + (slot - split) / f
        }
    }
}

static SMALL_SPLITS: [Split; 2049] = {
    let mut t = [Split::NOOP; 2049];
    let mut n = 1;
    while n < 2049 {
        t[n] = Split::new(n as u32);
        n += 1;
    }
    t
};

/// Collects symbols in decoding order and codes them in reverse on [`Encoder::finish`], as rANS
/// requires.
pub struct Encoder<const L: usize> {
    /// Each symbol packed in 8 bytes: `start | freq << 16 | bits << 33 | lane << 38` (a
    /// million-symbol chunk queues 8 MB, not 16).
    symbols: Vec<u64>,
}

impl<const L: usize> Encoder<L> {
    pub fn with_capacity(n: usize) -> Self {
        Encoder {
            symbols: Vec::with_capacity(n),
        }
    }

    /// Queues a symbol on `lane % L`.
    #[inline]
    pub fn push(&mut self, s: Symbol, lane: usize) {
        debug_assert!(s.freq >= 1 && s.bits <= 16 && s.start + s.freq <= 1 << s.bits);
        let lane = (lane % L) as u64;
        let packed =
            u64::from(s.start) | u64::from(s.freq) << 16 | u64::from(s.bits) << 33 | lane << 38;
        self.symbols.push(packed);
    }

    /// Number of symbols pushed so far.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Codes all symbols and appends the stream to `out`.
    pub fn finish_into(self, out: &mut Vec<u8>) {
        let last_first = self.symbols.iter().rev().map(|&packed| {
            let s = Symbol {
                start: packed as u32 & 0xFFFF,
                freq: (packed >> 16) as u32 & 0x1_FFFF,
                bits: (packed >> 33) as u32 & 0x1F,
            };
            (s, (packed >> 38) as usize)
        });
        code_last_first::<L>(self.symbols.len(), last_first, out);
    }
}

/// Codes `n` symbols given last first, each with its lane (taken modulo `L`), and appends the
/// stream: the core of [`Encoder::finish_into`], also fed straight from what the symbols code
/// (a plane's bytes, a residual's elements), which then queues nothing.
#[inline(always)]
pub fn code_last_first<const L: usize>(
    n: usize,
    last_first: impl Iterator<Item = (Symbol, usize)>,
    out: &mut Vec<u8>,
) {
    let inv = reciprocals();
    let mut states = [RANS_L; L];
    let mut words = BackWords::with_room(n);
    for (s, lane) in last_first {
        words.code(&mut states[lane % L], s, inv[s.freq as usize]);
    }
    words.finish(&states, out);
}

/// Codes one symbol of `table` per byte, byte `i` on lane `i % L`, and appends the stream: the
/// same bytes as [`code_last_first`] over those symbols. On 32 lanes with AVX2, whole groups of
/// 32 are coded eight lanes at a time.
pub fn code_table_bytes<const L: usize>(table: &TableView, bytes: &[u8], out: &mut Vec<u8>) {
    code_table_runs::<L>(&[*table], &[(0, 0..bytes.len())], bytes, out);
}

/// [`code_table_bytes`] with a table per run of bytes: `runs` are `(table, range)` in order,
/// covering `bytes`, each range starting on lane 0 (a multiple of `L`), coded with
/// `tables[table]`.
pub fn code_table_runs<const L: usize>(
    tables: &[TableView],
    runs: &[(usize, std::ops::Range<usize>)],
    bytes: &[u8],
    out: &mut Vec<u8>,
) {
    let inv = reciprocals();
    let mut states = [RANS_L; L];
    let mut words = BackWords::with_room(bytes.len());
    let grouped = wide_encode::grouped::<L>(bytes.len());
    let inv_of: Vec<[f64; 256]> = tables
        .iter()
        .map(|t| std::array::from_fn(|b| inv[(t.packed[b] & 0xFFFF) as usize]))
        .collect();
    for (t, run) in runs.iter().rev() {
        let (p, bits) = (tables[*t].packed, tables[*t].bits);
        for i in (run.start.max(grouped)..run.end).rev() {
            let s = Symbol::of_table_entry(p[bytes[i] as usize], bits);
            words.code(&mut states[i % L], s, inv[s.freq as usize]);
        }
        if run.start < grouped {
            let groups = &bytes[run.start..run.end.min(grouped)];
            wide_encode::code_groups(&mut states, p, bits, &inv_of[*t], groups, &mut words);
        }
    }
    words.finish(&states, out);
}

/// Codes whole values as the pairs of one stream (see [`Decoder::decode_pairs`]): pair `i` is
/// high byte `highs[i]`, with `packed` as [`code_table_bytes`] takes it, then the 16-bit symbol
/// `lows[i]`, packed as [`code_positions`] takes it; in runs of `run` pairs, a run's high bytes
/// before its lows, pair `i` on lane `i % L`. The same bytes as [`code_last_first`] over those
/// symbols; on 32 lanes with AVX2 or AVX-512, runs of 32 are coded eight or sixteen lanes at a
/// time (pairs were a tenth of an encode of heavy-tailed weights, through a symbol iterator).
pub fn code_pair_runs<const L: usize>(
    packed: &[u32; 256],
    run: usize,
    highs: &[u8],
    lows: &[u32],
    out: &mut Vec<u8>,
) {
    assert_eq!(highs.len(), lows.len(), "a pair is a high byte and a low");
    let inv = reciprocals();
    let mut states = [RANS_L; L];
    let mut words = BackWords::with_room(2 * highs.len());
    let grouped = match run == L {
        true => wide_encode::grouped::<L>(highs.len()),
        false => 0,
    };
    let tail = highs[grouped..]
        .chunks(run)
        .zip(lows[grouped..].chunks(run));
    for (r, (hs, ls)) in tail.enumerate().rev() {
        let first = grouped + run * r;
        for (j, &p) in ls.iter().enumerate().rev() {
            let s = Symbol::of_position(p);
            words.code(&mut states[(first + j) % L], s, inv[s.freq as usize]);
        }
        for (j, &h) in hs.iter().enumerate().rev() {
            let s = Symbol::of_table_entry(packed[usize::from(h)], TABLE_BITS);
            words.code(&mut states[(first + j) % L], s, inv[s.freq as usize]);
        }
    }
    if grouped > 0 {
        let inv_of: [f64; 256] = std::array::from_fn(|b| inv[(packed[b] & 0xFFFF) as usize]);
        let (highs, lows) = (&highs[..grouped], &lows[..grouped]);
        wide_encode::code_pair_groups(&mut states, packed, &inv_of, highs, lows, &mut words);
    }
    words.finish(&states, out);
}

/// What [`code_positions`] takes for an element without a symbol: no symbol's slice ends past
/// 2^16, which this would.
pub const NO_SYMBOL: u32 = u32::MAX;

/// Codes one 16-bit symbol per element, given packed as `start | (freq - 1) << 16`, or
/// [`NO_SYMBOL`] for none (which codes nothing: the decoder gives such an element the no-op
/// [`Split::NOOP`]), element `i` on lane `i % 32`, and appends the stream: the same bytes as
/// [`code_last_first`] over those symbols. With AVX2, whole groups of 32 go eight at a time.
pub fn code_positions(positions: &[u32], out: &mut Vec<u8>) {
    let inv = reciprocals();
    let mut states = [RANS_L; WIDE];
    let mut words = BackWords::with_room(positions.len());
    let grouped = wide_encode::grouped::<WIDE>(positions.len());
    for (i, &p) in positions.iter().enumerate().skip(grouped).rev() {
        if p != NO_SYMBOL {
            let s = Symbol::of_position(p);
            words.code(&mut states[i % WIDE], s, inv[s.freq as usize]);
        }
    }
    if grouped > 0 {
        wide_encode::code_position_groups(&mut states, &positions[..grouped], &mut words);
    }
    words.finish(&states, out);
}

/// The words an encoder emits, coding last first, kept back to front from the end of a
/// buffer: the stream reads them in decoding order without a reversal. The front has room for
/// a SIMD store of eight words below the last one written.
///
/// The buffer is this thread's from one stream to the next: zeroing a fresh one for every
/// stream of a chunk (and faulting its pages in) took 3% of an encode. Its old words are never
/// read: every word at or above `at` was written by this stream.
struct BackWords {
    words: Vec<u16>,
    at: usize,
    end: usize,
}

thread_local! {
    /// The last [`BackWords`] buffer this thread finished with, if at most [`BackWords::KEPT`].
    static SPARE_WORDS: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

impl BackWords {
    const SLACK: usize = 8;
    /// Words of the largest buffer a thread keeps (4 MiB): more than the streams of a chunk
    /// (at most 655,360 elements) need, whatever they code.
    const KEPT: usize = 1 << 21;

    /// Room for `n` symbols' words (a symbol emits at most one).
    fn with_room(n: usize) -> Self {
        let end = n + Self::SLACK + 1;
        let mut words = SPARE_WORDS.take();
        if words.len() < end {
            words = vec![0; end];
        }
        BackWords {
            words,
            at: end,
            end,
        }
    }

    /// Codes `s` into the state `x`, emitting its low word first if `x` is too large; `inv` is
    /// `1 / s.freq`. Whether a lane emits is a coin flip: the word is written for every
    /// symbol and kept when it is emitted, so no branch is mispredicted.
    #[inline(always)]
    fn code(&mut self, x: &mut u32, s: Symbol, inv: f64) {
        let x_max = ((u64::from(RANS_L) >> s.bits) << 16) * u64::from(s.freq);
        let emit = u64::from(*x) >= x_max;
        self.words[self.at - 1] = *x as u16;
        self.at -= usize::from(emit);
        let y = if emit { *x >> 16 } else { *x };
        let q = quotient(y, inv);
        *x = (q << s.bits) + (y - q * s.freq) + s.start;
    }

    /// Appends the stream: the final states, then the words.
    fn finish(self, states: &[u32], out: &mut Vec<u8>) {
        let words = &self.words[self.at..self.end];
        out.reserve(4 * states.len() + 2 * words.len());
        for x in states {
            out.extend_from_slice(&x.to_le_bytes());
        }
        if cfg!(target_endian = "little") {
            out.extend_from_slice(bytemuck::cast_slice(words));
        } else {
            words
                .iter()
                .for_each(|w| out.extend_from_slice(&w.to_le_bytes()));
        }
        if self.words.len() <= Self::KEPT {
            SPARE_WORDS.set(self.words);
        }
    }
}

/// `1 / d` for [`quotient`], for every frequency a symbol can have (`1..=2^16`; index 0
/// holds 1): a lookup where the encoder would divide. 512 KiB, built on first use; a chunk
/// touches the few entries of its own frequencies.
fn reciprocals() -> &'static [f64] {
    static TABLE: std::sync::OnceLock<Box<[f64]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=1u32 << 16)
            .map(|d| 1.0 / f64::from(d.max(1)))
            .collect()
    })
}

/// Offset that makes [`quotient`] exact: larger than its rounding errors, smaller than the gap
/// between a non-integer quotient and the next integer.
const QUOTIENT_BIAS: f64 = 1.0 / (1 << 18) as f64;

/// `x / d` for `d <= 2^16` given `inv = 1 / d` ([`reciprocals`]): a multiplication,
/// pipelined where a divider is not. Exact: `x * inv`, rounded twice, lies within
/// `2^32 * 2^-52 = 2^-20` of `x / d`, and adding the bias rounds within `2^-21` (the spacing
/// of doubles below 2^32 is `2^-20`). So the sum lies above the true quotient by between
/// `2^-19` and `3 * 2^-19`: above an exact integer quotient, and below the next integer for a
/// non-integer one, which lies at least `1 / d >= 2^-16` under it. Truncation gives what
/// integer division does.
#[inline(always)]
fn quotient(x: u32, inv: f64) -> u32 {
    (f64::from(x) * inv + QUOTIENT_BIAS) as u32
}

/// One stream's share of a table loop: decode `out.len()` table bytes from `dec`, with
/// `table`, then each of `switches` from its element on.
pub struct TableBytes<'r, 'a, const L: usize> {
    pub dec: &'r mut Decoder<'a, L>,
    pub table: TableView<'r>,
    pub out: &'r mut [u8],
    /// Where the table changes (int8 rows with tables of their own): `(element, table)` in
    /// increasing order, each element a multiple of `L`, counted as `at` is. The loops switch
    /// between groups, so two streams whose tables change at different elements still run
    /// one loop over a whole step instead of stopping at every change of either.
    pub switches: &'r [(usize, TableView<'r>)],
    /// The element `out[0]` is.
    pub at: usize,
}

impl<'r, 'a, const L: usize> TableBytes<'r, 'a, L> {
    /// One table for the whole output.
    pub fn one(dec: &'r mut Decoder<'a, L>, table: TableView<'r>, out: &'r mut [u8]) -> Self {
        TableBytes {
            dec,
            table,
            out,
            switches: &[],
            at: 0,
        }
    }

    /// Takes up the switches due by output element `i`.
    #[inline(always)]
    pub(crate) fn switch_at(&mut self, i: usize) {
        while let Some(&(from, table)) = self.switches.first()
            && from <= self.at + i
        {
            self.table = table;
            self.switches = &self.switches[1..];
        }
    }

    /// Whether every table this share uses has slot entries (what the AVX2 loops read).
    pub(crate) fn has_slots(&self) -> bool {
        self.all_tables(|t| t.slots.is_some())
    }

    /// Whether `test` holds for every table this share uses.
    pub(crate) fn all_tables(&self, test: impl Fn(&TableView) -> bool) -> bool {
        test(&self.table) && self.switches.iter().all(|(_, t)| test(t))
    }

    /// Elements from `i` that the current table decodes, up to `end`.
    fn current_until(&self, i: usize, end: usize) -> usize {
        self.switches
            .first()
            .map_or(end, |&(from, _)| (from - self.at).min(end))
            .max(i)
    }
}

/// Decodes the table bytes of `S` independent streams, their fast loops run together: one
/// 32-lane stream is a chain of dependent lookups, and its next group waits on the latency of
/// the last; two streams in one loop keep twice the work in flight (int8 planes: 1.8x the
/// symbols per second with AVX-512, measured). Same results as decoding each alone.
pub fn decode_table_bytes_together<const L: usize, const S: usize>(
    mut runs: [TableBytes<'_, '_, L>; S],
) {
    let done = match L {
        NARROW => runs.each_mut().map(|r| {
            debug_assert!(r.switches.is_empty(), "row tables are on 32 lanes only");
            r.dec.decode_quads(&r.table, r.out)
        }),
        _ => wide::decode_table_bytes(&mut runs),
    };
    for (r, mut done) in runs.iter_mut().zip(done) {
        if S > 1 {
            // What one stream has left when the other ran out: its own fast loop first.
            r.switch_at(done);
            done += wide::decode_table_bytes(&mut [TableBytes {
                dec: &mut *r.dec,
                table: r.table,
                out: &mut r.out[done..],
                switches: r.switches,
                at: r.at + done,
            }])[0];
        }
        decode_table_bytes_tail(r, done);
    }
}

/// The symbol-by-symbol path of [`decode_table_bytes_together`], from element `done`.
fn decode_table_bytes_tail<const L: usize>(r: &mut TableBytes<'_, '_, L>, done: usize) {
    for i in done..r.out.len() {
        r.switch_at(i);
        let lane = i % L;
        let slot = r.dec.slot(lane, r.table.bits);
        let sym = r.table.lookup[slot as usize];
        r.out[i] = sym;
        r.dec.advance(lane, r.table.symbol(sym));
    }
}

/// A row's position splits and code offsets by int8 byte, for
/// [`Decoder::decode_keyed_positions`].
#[derive(Clone)]
pub struct KeyedTable {
    /// Each byte's packed [`Split`].
    pub splits: [u32; 256],
    /// Each byte's first code.
    pub offsets: [u16; 256],
    /// The same entries as byte planes (the split's four bytes, then the offset's two), for
    /// the AVX-512 VBMI loop: it looks up 64 keys with byte permutes instead of gathers, which
    /// cost ~21 cycles per sixteen lanes on AMD Zen 4.
    planes: BytePlanes<6>,
}

impl KeyedTable {
    /// Builds the planes with the row's tables (once per row scale), not in the decode loop.
    pub fn new(splits: [u32; 256], offsets: [u16; 256]) -> KeyedTable {
        let planes = BytePlanes::of(|k| {
            let (s, o) = (splits[k].to_le_bytes(), offsets[k].to_le_bytes());
            [s[0], s[1], s[2], s[3], o[0], o[1]]
        });
        KeyedTable {
            splits,
            offsets,
            planes,
        }
    }
}

/// A table of 256 entries of `P` bytes split into planes: plane `p` holds byte `p` (little
/// endian) of every entry, so that byte permutes look up 64 keys at once. Aligned so that each
/// quarter of a plane is one vector load.
#[derive(Clone)]
#[repr(C, align(64))]
pub struct BytePlanes<const P: usize>(pub [[u8; 256]; P]);

impl<const P: usize> BytePlanes<P> {
    /// The planes of the 256 entries `entry(k)` gives, as little-endian bytes.
    fn of(entry: impl Fn(usize) -> [u8; P]) -> Self {
        let entries: [[u8; P]; 256] = std::array::from_fn(entry);
        BytePlanes(std::array::from_fn(|p| {
            std::array::from_fn(|k| entries[k][p])
        }))
    }
}

impl BytePlanes<4> {
    /// The planes of 256 u32 entries.
    pub fn of_u32(entries: &[u32; 256]) -> Self {
        Self::of(|k| entries[k].to_le_bytes())
    }
}

/// Reads a stream produced by [`Encoder::finish_into`], symbol by symbol, in the same order.
pub struct Decoder<'a, const L: usize> {
    states: [u32; L],
    words: &'a [u8],
    pos: usize,
    overrun: bool,
}

impl<'a, const L: usize> Decoder<'a, L> {
    pub fn new(stream: &'a [u8]) -> Result<Self, CodecError> {
        if stream.len() < 4 * L || !(stream.len() - 4 * L).is_multiple_of(2) {
            return Err(CodecError::Corrupt("rANS stream has an invalid length"));
        }
        let mut states = [0u32; L];
        for (i, x) in states.iter_mut().enumerate() {
            *x = u32::from_le_bytes(stream[4 * i..4 * i + 4].try_into().unwrap());
            if *x < RANS_L {
                return Err(CodecError::Corrupt("rANS state out of range"));
            }
        }
        Ok(Decoder {
            states,
            words: &stream[4 * L..],
            pos: 0,
            overrun: false,
        })
    }

    /// The position of `lane`'s state inside `[0, 2^bits)`: identifies its next symbol.
    #[inline(always)]
    pub fn slot(&self, lane: usize, bits: u32) -> u32 {
        self.states[lane % L] & ((1u32 << bits) - 1)
    }

    /// Bytes of the word stream not read yet. A symbol reads at most one 16-bit word, so a
    /// caller about to decode `k` symbols with at least `2k` bytes left can use
    /// [`Decoder::advance_in::<true>`], which skips the end-of-stream bookkeeping.
    #[inline(always)]
    pub fn bytes_left(&self) -> usize {
        self.words.len() - self.pos
    }

    /// Consumes, on `lane`, the symbol whose slice contains the lane's slot. The refill is
    /// branchless: whether a lane needs a word is a coin flip the branch predictor cannot learn.
    #[inline(always)]
    pub fn advance(&mut self, lane: usize, s: Symbol) {
        self.advance_in::<false>(lane, s)
    }

    /// [`Decoder::advance`]; `WITHIN` promises a word is left to read (see
    /// [`Decoder::bytes_left`]). A broken promise panics on the slice index, never reads
    /// out of bounds.
    #[inline(always)]
    pub fn advance_in<const WITHIN: bool>(&mut self, lane: usize, s: Symbol) {
        let lane = lane % L;
        let x = self.states[lane];
        let slot = x & ((1u32 << s.bits) - 1);
        let x = s
            .freq
            .wrapping_mul(x >> s.bits)
            .wrapping_add(slot.wrapping_sub(s.start));
        if WITHIN {
            let w = &self.words[self.pos..self.pos + 2];
            let need = x < RANS_L;
            let word = u32::from(u16::from_le_bytes([w[0], w[1]]));
            self.states[lane] = if need { (x << 16) | word } else { x };
            self.pos += usize::from(need) * 2;
            return;
        }
        let (word, available) = match self.words.get(self.pos..self.pos + 2) {
            Some(w) => (u32::from(u16::from_le_bytes([w[0], w[1]])), true),
            None => (0, false),
        };
        let need = x < RANS_L;
        self.overrun |= need & !available;
        self.states[lane] = if need { (x << 16) | word } else { x };
        self.pos += usize::from(need & available) * 2;
    }

    /// Decodes one table-coded byte per output element (element `i` on lane `i % L`): the int8
    /// hot loop. Whole groups of `L` symbols go through the lane-count's fast path, the tail
    /// symbol by symbol.
    pub fn decode_table_bytes(&mut self, table: &TableView, out: &mut [u8]) {
        decode_table_bytes_together([TableBytes::one(self, *table, out)]);
    }

    /// Decodes one [`Split`] position per element (`entries` holds each one's packed split),
    /// element `i` on lane `i % L`, into `out`: the residual's hot loop.
    pub fn decode_positions(&mut self, entries: &[u32], out: &mut [u16]) {
        let done = wide::decode_positions(self, entries, out);
        for (i, (&e, o)) in entries.iter().zip(out.iter_mut()).enumerate().skip(done) {
            let lane = i % L;
            let r = Split::position(e, self.slot(lane, 16));
            *o = r as u16;
            self.advance(lane, Split(e).symbol(r));
        }
    }

    /// Decodes whole groups of `L` positions from lane 0, element `i` over the split
    /// `table.splits[keys[i]]`, and writes `table.offsets[keys[i]] + position` (wrapping) to
    /// `out` as little-endian u16s. The residual's positions with their splits and bases looked
    /// up by int8 byte inside the decode loop, so neither goes through memory. Returns how many
    /// elements it decoded (whole groups, while the stream has the bytes a group may read);
    /// the caller decodes the rest with [`Decoder::decode_positions`].
    pub fn decode_keyed_positions(
        &mut self,
        keys: &[u8],
        table: &KeyedTable,
        out: &mut [u8],
    ) -> usize {
        wide::decode_keyed_positions(self, keys, table, out)
    }

    /// Decodes pairs of symbols (the residual's whole values): pair `j` is pair number
    /// `first + j` of the stream, on lane `(first + j) % L`. Its first symbol `s` is
    /// table-coded; its second is a [`Split`] position over `unders[j]` if `s == tops[j]`, else
    /// over 256. Pairs go in runs of `run` (numbered from 0): the run's table symbols in order,
    /// then its positions in order. Runs of [`PAIR_RUN`] (32, version 3) let SIMD decode a
    /// group's 32 table symbols at once, then its 32 positions; runs of [`PAIR_RUN_V2`] (8)
    /// chain each eight's positions to the next eight's symbols, a dependency SIMD waits on. A
    /// caller decoding in parts must split at run boundaries.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_pairs(
        &mut self,
        table: &TableView,
        first: usize,
        run: usize,
        tops: &[u32],
        unders: &[u32],
        syms: &mut [u8],
        positions: &mut [u16],
    ) {
        let done = if first.is_multiple_of(L) {
            wide::decode_pairs(self, table, run, tops, unders, syms, positions)
        } else {
            0
        };
        self.decode_pairs_from(done, table, first, run, tops, unders, syms, positions);
    }

    /// [`Decoder::decode_pairs`] symbol by symbol, from pair `done` (a run boundary) on.
    #[allow(clippy::too_many_arguments)]
    fn decode_pairs_from(
        &mut self,
        done: usize,
        table: &TableView,
        first: usize,
        run: usize,
        tops: &[u32],
        unders: &[u32],
        syms: &mut [u8],
        positions: &mut [u16],
    ) {
        let mut j = done;
        while j < tops.len() {
            let run = j..(j + run.max(1)).min(tops.len());
            for j in run.clone() {
                let lane = (first + j) % L;
                let sym = table.lookup[self.slot(lane, table.bits) as usize];
                syms[j] = sym;
                self.advance(lane, table.symbol(sym));
            }
            for j in run.clone() {
                let lane = (first + j) % L;
                let split = Split::second_of_pair(syms[j], tops[j], unders[j]);
                let r = Split::position(split, self.slot(lane, 16));
                positions[j] = r as u16;
                self.advance(lane, Split(split).symbol(r));
            }
            j = run.end;
        }
    }

    /// The four-lane loop: states in locals, one bounds check per four symbols. Returns how
    /// many bytes of `out` it decoded.
    fn decode_quads(&mut self, table: &TableView, out: &mut [u8]) -> usize {
        let TableView {
            lookup,
            packed,
            bits,
            ..
        } = *table;
        let mask = (1u32 << bits) - 1;
        let mut s = [0u32; 4];
        s.copy_from_slice(&self.states[..4]);
        let [mut x0, mut x1, mut x2, mut x3] = s;
        let mut pos = self.pos;
        let mut quads = out.chunks_exact_mut(4);
        let mut done = 0;
        for quad in &mut quads {
            let Some(window) = self.words.get(pos..pos + 8) else {
                break;
            };
            let window = u64::from_le_bytes(window.try_into().expect("8 bytes"));
            let mut used = 0u32;
            for (x, o) in [&mut x0, &mut x1, &mut x2, &mut x3]
                .into_iter()
                .zip(quad.iter_mut())
            {
                let slot = *x & mask;
                let sym = lookup[slot as usize];
                *o = sym;
                let e = packed[sym as usize];
                let v = (e & 0xFFFF)
                    .wrapping_mul(*x >> bits)
                    .wrapping_add(slot.wrapping_sub(e >> 16));
                let word = (window >> (16 * used)) as u32 & 0xFFFF;
                let need = v < RANS_L;
                *x = if need { (v << 16) | word } else { v };
                used += u32::from(need);
            }
            pos += 2 * used as usize;
            done += 4;
        }
        self.states[..4].copy_from_slice(&[x0, x1, x2, x3]);
        self.pos = pos;
        done
    }

    /// Checks that the stream was consumed exactly: every state back at its start value and no
    /// byte missing or left over. Catches most corruption before the checksum does.
    pub fn finish(self) -> Result<(), CodecError> {
        if self.overrun || self.pos != self.words.len() || self.states != [RANS_L; L] {
            return Err(CodecError::Corrupt(
                "rANS stream did not end where it should",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(start: u32, freq: u32, bits: u32) -> Symbol {
        Symbol { start, freq, bits }
    }

    #[test]
    fn mixed_resolution_symbols_round_trip() {
        let symbols: Vec<Symbol> = (0..10_000u32)
            .map(|i| match i % 3 {
                0 => sym(i % 16, 1, 4),
                1 => sym(0, 1 << 14, 14),
                _ => sym((i * 7) % 65_000, 17, 16),
            })
            .collect();
        let mut enc = Encoder::<NARROW>::with_capacity(0);
        let lane = |i: usize| (i * 7 / 3) % 4;
        symbols
            .iter()
            .enumerate()
            .for_each(|(i, &s)| enc.push(s, lane(i)));
        let mut out = Vec::new();
        enc.finish_into(&mut out);
        let mut dec = Decoder::<NARROW>::new(&out).unwrap();
        for (i, s) in symbols.iter().enumerate() {
            let slot = dec.slot(lane(i), s.bits);
            assert!(slot >= s.start && slot < s.start + s.freq);
            dec.advance(lane(i), *s);
        }
        dec.finish().unwrap();
    }

    #[test]
    fn uniform_slices_tile_the_range_exactly() {
        let widths = (1u32..=300).chain([1000, 4097, 20_000, 32_767, 32_768]);
        for n in widths {
            let u = Uniform::of(n);
            assert_eq!(u, Uniform::new(n));
            let mut prev_end = 0;
            for r in 0..n {
                let s = u.symbol(r);
                assert_eq!(s.start, prev_end);
                assert_eq!(s.start, (r << 16).div_ceil(n), "exact ceil division");
                assert!(s.freq >= 1);
                prev_end = s.start + s.freq;
                for slot in [s.start, s.start + s.freq - 1] {
                    assert_eq!((slot * n) >> 16, r, "the slot maps back to its position");
                }
            }
            assert_eq!(prev_end, 1 << 16);
        }
    }

    #[test]
    fn float_quotients_equal_integer_division() {
        // Every divisor a symbol can have; the dividends where truncation is closest to wrong.
        for d in 1u32..=65_536 {
            let top = u32::MAX / d;
            for k in [0, 1, 2, top / 2, top - 1, top] {
                for x in [k * d, (k * d).saturating_sub(1), (k * d).saturating_add(1)] {
                    assert_eq!(quotient(x, reciprocals()[d as usize]), x / d, "{x} / {d}");
                }
            }
            assert_eq!(quotient(u32::MAX, reciprocals()[d as usize]), u32::MAX / d);
        }
    }

    #[test]
    fn empty_stream_is_just_states() {
        let mut out = Vec::new();
        Encoder::<WIDE>::with_capacity(0).finish_into(&mut out);
        assert_eq!(out.len(), 4 * WIDE);
        Decoder::<WIDE>::new(&out).unwrap().finish().unwrap();
    }

    #[test]
    fn truncated_or_garbage_streams_never_panic() {
        let mut enc = Encoder::<NARROW>::with_capacity(0);
        for i in 0..1000 {
            enc.push(sym(i % 200, 3, 10), i as usize);
        }
        let mut out = Vec::new();
        enc.finish_into(&mut out);
        for cut in [4 * NARROW, out.len() - 2] {
            let mut dec = Decoder::<NARROW>::new(&out[..cut]).unwrap();
            for i in 0..1000 {
                let slot = dec.slot(i, 10);
                dec.advance(i, sym(slot / 3 * 3, 3, 10));
            }
            assert!(dec.finish().is_err());
        }
        assert!(Decoder::<NARROW>::new(&out[..3]).is_err());
    }
}
