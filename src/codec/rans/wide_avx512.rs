//! AVX-512 decode loops for 32-lane streams: the 32 states in two vectors of sixteen. Each
//! loop gives the same states, positions and output as the portable and AVX2 loops of
//! `wide.rs` on any input, valid or not (tested below). What AVX-512 saves over AVX2: a
//! refill is one expand (`vpexpandd` puts the next words into the lanes a mask selects, in
//! lane order) instead of a movemask, a table lookup and a permute, and a lane mask is a
//! register, not a vector to blend with.
//!
//! Where the CPU also has VBMI, tables of 256 entries can be looked up with byte permutes from
//! their byte planes ([`super::BytePlanes`]) instead of gathered: on AMD Zen 4 a sixteen-lane
//! gather costs ~21 cycles, and the keyed and table loops spent most of their time in them.
//! The keyed loop always permutes; the table loop permutes only where that is faster
//! ([`permutes_win`]): on Intel the gathers are cheap and the permutes are what binds.
//!
//! The loops' helpers are `#[inline(always)]` unsafe functions without target features of their
//! own, and no closure sits between a loop and its helpers: inlined, they compile with the
//! loop's features. Left to the inliner (`#[inline]` on a `#[target_feature]` function), builds
//! that differed only elsewhere in the crate called a step or a refill out of line, and one
//! decode ran 25% slower; a closure called out of line has none of the features, and its
//! intrinsics become calls (3.7x slower).

use std::arch::x86_64::*;

use super::{TABLE_BITS, TableBytes, TableView, WIDE};

/// Whether the AVX-512 loops may run: the CPU has AVX-512 F and BW (and POPCNT), SIMD is not
/// turned off (`QSTORE_SCALAR`), and `QSTORE_NO_AVX512` is not set (so the AVX2 loops can be
/// tested and measured on a CPU that has both).
pub fn avx512_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        super::simd_enabled() && cpu_has_avx512() && std::env::var_os("QSTORE_NO_AVX512").is_none()
    })
}

/// What the loops here need of the CPU, whatever the environment says.
pub(super) fn cpu_has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("popcnt")
}

/// A decoder's 32 states as two vectors, its words and its position: what a loop here runs on.
#[inline(always)]
fn lanes<'a, const L: usize>(dec: &super::Decoder<'a, L>) -> ([__m512i; 2], &'a [u8], usize) {
    assert_eq!(L, WIDE, "the AVX-512 loops decode 32 lanes");
    // SAFETY: the 32 u32 states are the bytes of two vectors (unaligned access).
    let x = unsafe { std::ptr::read_unaligned(dec.states.as_ptr().cast()) };
    (x, dec.words, dec.pos)
}

/// Gives a loop's states and position back to its decoder ([`lanes`]).
#[inline(always)]
fn put_back<const L: usize>(dec: &mut super::Decoder<'_, L>, x: [__m512i; 2], pos: usize) {
    // SAFETY: as in `lanes`.
    unsafe { std::ptr::write_unaligned(dec.states.as_mut_ptr().cast(), x) };
    dec.pos = pos;
}

/// Bytes a group of 32 symbols may read: each half's 32-byte window starts after the words
/// the halves before it took, at most 32 bytes in.
const GROUP_BYTES: usize = 2 * WIDE;

/// The lanes of `v` below 2^16 become `v << 16 | next word`, the words taken in lane order
/// from the stream at `*pos`, which advances past them. The caller guarantees 32 readable
/// bytes at `*pos`.
#[inline(always)]
unsafe fn renormalise(v: __m512i, words: &[u8], pos: &mut usize) -> __m512i {
    // SAFETY: the caller checked the CPU and guarantees what the notes below say.
    unsafe {
        let need = _mm512_cmplt_epu32_mask(v, _mm512_set1_epi32(1 << 16));
        // The caller leaves 32 bytes after *pos.
        let raw = _mm256_loadu_si256(words.as_ptr().add(*pos).cast());
        let w = _mm512_maskz_expand_epi32(need, _mm512_cvtepu16_epi32(raw));
        *pos += 2 * need.count_ones() as usize;
        _mm512_mask_or_epi32(v, need, _mm512_slli_epi32::<16>(v), w)
    }
}

/// One table symbol on sixteen lanes: the symbols (in u32 lanes) and the states before
/// renormalisation. One gather takes each slot's symbol from the 16 KiB lookup, a second its
/// `freq | start << 16` from 1 KiB: both stay in L1. Gathering the 64-bit slot entries the
/// AVX2 loops read (one gather instead of two, from 128 KiB built per table) was slower; a
/// coarse table's 32-bit entries (16 KiB) take one gather ([`coarse_step`]). For tables of
/// [`TABLE_BITS`] only: reading the resolution from the table instead, and testing for
/// coarse entries, made the synthetic set's INT8 decode 8% slower.
#[inline(always)]
unsafe fn table_step(x: __m512i, table: &TableView) -> (__m512i, __m512i) {
    // SAFETY: the caller checked the CPU and guarantees what the notes below say.
    unsafe {
        const MASK: i32 = (1 << TABLE_BITS) - 1;
        let slot = _mm512_and_si512(x, _mm512_set1_epi32(MASK));
        // Every slot is below 2^TABLE_BITS; the lookup has 4 bytes of padding.
        let sym = _mm512_and_si512(
            _mm512_i32gather_epi32::<1>(slot, table.lookup.as_ptr().cast()),
            _mm512_set1_epi32(0xFF),
        );
        // Every symbol is below 256.
        let e = _mm512_i32gather_epi32::<4>(sym, table.packed.as_ptr().cast());
        let v = _mm512_add_epi32(
            _mm512_mullo_epi32(
                _mm512_and_si512(e, _mm512_set1_epi32(0xFFFF)),
                _mm512_srli_epi32::<{ TABLE_BITS }>(x),
            ),
            _mm512_sub_epi32(slot, _mm512_srli_epi32::<16>(e)),
        );
        (sym, v)
    }
}

/// [`table_step`] for a coarse table: each slot's symbol, frequency and offset in its symbol
/// from one 32-bit entry (see [`TableView::entries`]), one gather per sixteen lanes. Fewer
/// operations than two gathers as well: on Intel the table loop is bound by its 512-bit ALU
/// work (ports 0 and 5), and a gather costs micro-ops there too.
#[inline(always)]
unsafe fn coarse_step(x: __m512i, table: &TableView) -> (__m512i, __m512i) {
    let entries = table
        .entries
        .expect("the coarse loop runs only on tables with coarse entries");
    // SAFETY: the caller checked the CPU and guarantees what the notes below say.
    unsafe {
        const MASK: i32 = (1 << super::COARSE_BITS) - 1;
        let slot = _mm512_and_si512(x, _mm512_set1_epi32(MASK));
        // Every slot is below 2^COARSE_BITS, the entries' count.
        let e = _mm512_i32gather_epi32::<4>(slot, entries.as_ptr().cast());
        let v = _mm512_add_epi32(
            _mm512_mullo_epi32(
                _mm512_srli_epi32::<20>(e),
                _mm512_srli_epi32::<{ super::COARSE_BITS }>(x),
            ),
            _mm512_and_si512(_mm512_srli_epi32::<8>(e), _mm512_set1_epi32(MASK)),
        );
        (_mm512_and_si512(e, _mm512_set1_epi32(0xFF)), v)
    }
}

/// [`coarse_step`] on both vectors.
///
/// # Safety
/// The CPU must support AVX-512 F and BW. Always inlined, like [`table_steps`].
#[inline(always)]
unsafe fn coarse_steps(x: [__m512i; 2], table: &TableView) -> Steps {
    // SAFETY: the caller checked the CPU.
    let (a, b) = unsafe { (coarse_step(x[0], table), coarse_step(x[1], table)) };
    ([a.0, b.0], [a.1, b.1])
}

/// [`coarse_steps`] or [`table_steps`], whichever `table` takes: for two runs of different
/// resolutions decoded together (each run's tables share one).
///
/// # Safety
/// The CPU must support AVX-512 F and BW. Always inlined, like [`table_steps`].
#[inline(always)]
unsafe fn either_steps(x: [__m512i; 2], table: &TableView) -> Steps {
    // SAFETY: the caller checked the CPU.
    unsafe {
        match table.entries {
            Some(_) => coarse_steps(x, table),
            None => table_steps(x, table),
        }
    }
}

/// [`table_step`] on both vectors of a group's states: each vector's symbols (u32 lanes) and
/// states before renormalisation.
type Steps = ([__m512i; 2], [__m512i; 2]);

/// [`table_step`] on both vectors.
///
/// # Safety
/// The CPU must support AVX-512 F and BW. Always inlined, like [`table_steps_vbmi`].
#[inline(always)]
unsafe fn table_steps(x: [__m512i; 2], table: &TableView) -> Steps {
    // SAFETY: the caller checked the CPU.
    let (a, b) = unsafe { (table_step(x[0], table), table_step(x[1], table)) };
    ([a.0, b.0], [a.1, b.1])
}

/// The table loop around `$steps` ([`table_steps`] or [`table_steps_vbmi`]), written out in
/// each entry point: its closures are then defined there and have the entry point's target
/// features. A closure defined in a helper function has none, and when the optimiser called one
/// out of line its intrinsics became calls (3.7x slower; tests/it/codegen.rs now fails on that).
/// The caller must have checked the CPU for `$steps`.
macro_rules! table_loop {
    ($runs:expr, $s:ident, $steps:ident) => {
        super::wide::table_groups(
            $runs,
            GROUP_BYTES,
            |g, runs, x: &mut [[__m512i; 2]; $s], pos| {
                // SAFETY (the block): the caller checked the CPU. The steps are written out
                // (no `array::from_fn`, whose closure one build called out of line, 50 -> 75
                // ms for the synthetic INT8) for the two runs there are, `1 % S` standing in
                // for run 1 where there is one.
                let steps = unsafe {
                    let mut steps = [$steps(x[0], &runs[0].table); $s];
                    if $s > 1 {
                        steps[1 % $s] = $steps(x[1 % $s], &runs[1 % $s].table);
                    }
                    for s in 2..$s {
                        steps[s] = $steps(x[s], &runs[s].table);
                    }
                    steps
                };
                for k in 0..2 {
                    for s in 0..$s {
                        // SAFETY (the block): the caller checked the CPU; GROUP_BYTES remain
                        // for the refills; out has 16 bytes.
                        unsafe {
                            x[s][k] = renormalise(steps[s].1[k], runs[s].dec.words, &mut pos[s]);
                            let out = &mut runs[s].out[32 * g + 16 * k..32 * g + 16 * k + 16];
                            _mm_storeu_si128(
                                out.as_mut_ptr().cast(),
                                _mm512_cvtepi32_epi8(steps[s].0[k]),
                            );
                        }
                    }
                }
            },
        )
    };
}

/// Sixteen table symbols at a time, two vectors per group of 32, each vector's symbols
/// narrowed to bytes and stored. With several runs, each group takes every run's steps first,
/// then the refills and stores of each vector in turn, and groups go on while every run has
/// one.
///
/// # Safety
/// The CPU must support AVX-512 F and BW ([`cpu_has_avx512`]).
#[target_feature(enable = "avx512f,avx512bw,popcnt")]
pub(super) unsafe fn decode_table_bytes<const L: usize, const S: usize>(
    runs: &mut [TableBytes<'_, '_, L>; S],
) -> [usize; S] {
    table_loop!(runs, S, table_steps)
}

/// [`decode_table_bytes`] for runs whose tables are all coarse, with [`coarse_steps`].
///
/// # Safety
/// The CPU must support AVX-512 F and BW ([`cpu_has_avx512`]).
#[target_feature(enable = "avx512f,avx512bw,popcnt")]
pub(super) unsafe fn decode_table_bytes_coarse<const L: usize, const S: usize>(
    runs: &mut [TableBytes<'_, '_, L>; S],
) -> [usize; S] {
    table_loop!(runs, S, coarse_steps)
}

/// [`decode_table_bytes`] for runs of both resolutions, with [`either_steps`].
///
/// # Safety
/// The CPU must support AVX-512 F and BW ([`cpu_has_avx512`]); every table of [`TABLE_BITS`]
/// or with coarse entries.
#[target_feature(enable = "avx512f,avx512bw,popcnt")]
pub(super) unsafe fn decode_table_bytes_mixed<const L: usize, const S: usize>(
    runs: &mut [TableBytes<'_, '_, L>; S],
) -> [usize; S] {
    table_loop!(runs, S, either_steps)
}

/// [`decode_table_bytes`] with [`table_steps_vbmi`].
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VBMI ([`cpu_has_avx512`], [`cpu_has_vbmi`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,popcnt")]
pub(super) unsafe fn decode_table_bytes_vbmi<const L: usize, const S: usize>(
    runs: &mut [TableBytes<'_, '_, L>; S],
) -> [usize; S] {
    table_loop!(runs, S, table_steps_vbmi)
}

/// One [`super::Split`] position on sixteen lanes, each with its packed split: the position
/// and the state before renormalisation. The AVX2 `split_step` of `wide.rs` on sixteen lanes,
/// with two changes that shorten the chain from one state to the next (BF16 decode 2% faster,
/// one thread, synthetic set):
/// - The quotient is `(num + 1/2) * (1/div)`, truncated, with both reciprocals computed from
///   the split alone, before the state is known: `rcp14` and one Newton step leave a relative
///   error below 2^-21, and `(num + 1/2) / div` lies at least `1 / (2 div)` from an integer,
///   more than the error (`num < 2^16`, so below `2^16 / div * 2^-21`).
/// - The next state is `div * (x >> 16 - q) + num`: the slot's offset in its symbol is
///   `num - q div` and its frequency `div`, on either side of `b`, so one multiply remains.
#[inline(always)]
pub(super) unsafe fn split_step(x: __m512i, split: __m512i) -> (__m512i, __m512i) {
    // SAFETY: the caller checked the CPU and guarantees what the notes below say.
    unsafe {
        let low = _mm512_set1_epi32(0xFFFF);
        let one = _mm512_set1_epi32(1);
        let f = _mm512_add_epi32(_mm512_and_si512(split, low), one);
        let e = _mm512_srli_epi32::<16>(split);
        let f1 = _mm512_add_epi32(f, one);
        let b = _mm512_mullo_epi32(e, f1);
        let (rf, rf1) = (reciprocal(f), reciprocal(f1));
        let slot = _mm512_and_si512(x, low);
        let below = _mm512_cmpgt_epi32_mask(b, slot);
        let div = _mm512_mask_blend_epi32(below, f, f1);
        let rd = _mm512_mask_blend_ps(below, rf, rf1);
        let num = _mm512_mask_blend_epi32(below, _mm512_sub_epi32(slot, b), slot);
        let q = _mm512_cvttps_epi32(_mm512_fmadd_ps(
            _mm512_cvtepi32_ps(num),
            rd,
            _mm512_mul_ps(rd, _mm512_set1_ps(0.5)),
        ));
        let r = _mm512_mask_add_epi32(q, !below, q, e);
        let v = _mm512_add_epi32(
            _mm512_mullo_epi32(div, _mm512_sub_epi32(_mm512_srli_epi32::<16>(x), q)),
            num,
        );
        (r, v)
    }
}

/// `1 / d` within a relative 2^-21 (see `split_step`).
#[inline(always)]
unsafe fn reciprocal(d: __m512i) -> __m512 {
    // SAFETY: the caller checked the CPU and guarantees what the notes below say.
    unsafe {
        let d = _mm512_cvtepi32_ps(d);
        let r = _mm512_rcp14_ps(d);
        _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)))
    }
}

/// Sixteen keyed positions at a time (see `Decoder::decode_keyed_positions`): each element's
/// split and offset gathered by its key, the position found, the offset added and the codes
/// narrowed to u16. The offsets are u16s, so their gather reads four bytes from each key's
/// entry; key 255 (whose read would pass the table's end) takes its offset by a mask instead.
///
/// # Safety
/// The CPU must support AVX-512 F and BW ([`cpu_has_avx512`]).
#[target_feature(enable = "avx512f,avx512bw,popcnt")]
pub(super) unsafe fn decode_keyed_positions<const L: usize>(
    dec: &mut super::Decoder<L>,
    keys: &[u8],
    splits: &[u32; 256],
    offsets: &[u16; 256],
    out: &mut [u8],
) -> usize {
    let n = keys.len().min(out.len() / 2) / 32;
    let (mut x, words, mut pos) = lanes(dec);
    let last = _mm512_set1_epi32(255);
    let last_offset = _mm512_set1_epi32(i32::from(offsets[255]));
    let mut g = 0;
    while g < n && words.len() - pos >= GROUP_BYTES {
        for (k, x) in x.iter_mut().enumerate() {
            let at = 32 * g + 16 * k;
            let ks: &[u8; 16] = keys[at..at + 16].try_into().unwrap();
            // SAFETY (the block): ks has 16 bytes; every key indexes `splits` (256 u32s);
            // keys below 255 read bytes 2 key..2 key + 4 of `offsets` (512 bytes); GROUP_BYTES
            // remain for the refill; `out` has 32 bytes at 2 at.
            unsafe {
                let key = _mm512_cvtepu8_epi32(_mm_loadu_si128(ks.as_ptr().cast()));
                let split = _mm512_i32gather_epi32::<4>(key, splits.as_ptr().cast());
                let inside = _mm512_cmpneq_epi32_mask(key, last);
                let base = _mm512_mask_i32gather_epi32::<2>(
                    last_offset,
                    inside,
                    key,
                    offsets.as_ptr().cast(),
                );
                let (r, v) = split_step(*x, split);
                *x = renormalise(v, words, &mut pos);
                let codes = _mm512_cvtepi32_epi16(_mm512_add_epi32(r, base));
                let dst = &mut out[2 * at..2 * at + 32];
                _mm256_storeu_si256(dst.as_mut_ptr().cast(), codes);
            }
        }
        g += 1;
    }
    put_back(dec, x, pos);
    32 * g
}

/// Whether the CPU has AVX-512 VBMI's byte permutes, which [`decode_keyed_positions_vbmi`]
/// needs on top of [`cpu_has_avx512`].
pub(super) fn cpu_has_vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512vbmi")
}

/// Whether the table loops look each symbol's `freq | start` up with VBMI's byte permutes
/// ([`decode_table_bytes_vbmi`]) rather than gather it ([`decode_table_bytes`]): whichever
/// decodes a sample faster on this CPU, timed once per process (about 0.1 ms), unless
/// `QSTORE_TABLE_LOOKUP` is `gather` or `permute`. CPUs disagree. On AMD Zen 4 a gather costs
/// ~21 cycles and the permutes win; on an Intel Xeon with VBMI the gathers are cheap, the
/// permutes' nine byte shuffles per 32 symbols bind, and gathering decoded INT8 15-19% faster.
/// Both loops give the same bytes, so the choice shows only in speed. False on a CPU without
/// AVX-512 VBMI, whatever the variable says.
pub(super) fn permutes_win() -> bool {
    static WIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIN.get_or_init(|| {
        cpu_has_avx512()
            && cpu_has_vbmi()
            && match std::env::var("QSTORE_TABLE_LOOKUP").as_deref() {
                Ok("gather") => false,
                Ok("permute") => true,
                _ => LookupSample::new().permutes_faster(),
            }
    })
}

/// A table shaped like an int8 plane's (values within ±63, likelier near 0) and a stream for
/// it, on which [`permutes_win`] times both table loops.
struct LookupSample {
    lookup: Box<[u8; super::LOOKUP_LEN]>,
    packed: [u32; 256],
    planes: super::BytePlanes<4>,
    stream: Vec<u8>,
}

impl LookupSample {
    /// Symbols per run: 128 groups, about 3 µs per loop.
    const SYMBOLS: usize = 128 * WIDE;

    fn new() -> Self {
        // 256 - 4|v| for |v| < 64: the frequencies sum to 2^14.
        let freq: [u32; 256] = std::array::from_fn(|s| {
            256u32.saturating_sub(4 * u32::from((s as u8 as i8).unsigned_abs()))
        });
        let mut lookup = Box::new([0u8; super::LOOKUP_LEN]);
        let mut packed = [0u32; 256];
        let mut start = 0;
        for (s, &f) in freq.iter().enumerate() {
            packed[s] = f | start << 16;
            lookup[start as usize..(start + f) as usize].fill(s as u8);
            start += f;
        }
        // Any bytes are a stream to these loops: 32 states, then at most one word a symbol.
        let mut stream = Vec::with_capacity(4 * WIDE + 2 * Self::SYMBOLS + GROUP_BYTES);
        let mut r = 1u32;
        for i in 0..WIDE + Self::SYMBOLS + GROUP_BYTES / 2 {
            r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            if i < WIDE {
                stream.extend_from_slice(&(r | 1 << 31).to_le_bytes());
            } else {
                stream.extend_from_slice(&(r >> 16).to_le_bytes()[..2]);
            }
        }
        LookupSample {
            planes: super::BytePlanes::of_u32(&packed),
            lookup,
            packed,
            stream,
        }
    }

    /// Best of five for each loop, alternating, on two runs decoded together as paired chunks
    /// are.
    fn permutes_faster(&self) -> bool {
        let mut best = [std::time::Duration::MAX; 2];
        for _ in 0..5 {
            for (vbmi, best) in [false, true].into_iter().zip(&mut best) {
                *best = (*best).min(self.time(vbmi));
            }
        }
        best[1] < best[0]
    }

    fn time(&self, vbmi: bool) -> std::time::Duration {
        self.decode(vbmi)
            .map_or(std::time::Duration::MAX, |(took, _, _)| took)
    }

    /// Both runs through one loop: how long it took, the outputs and how many symbols each
    /// run's groups decoded (None only if the sample were not a stream).
    fn decode(&self, vbmi: bool) -> Option<(std::time::Duration, [Vec<u8>; 2], [usize; 2])> {
        let mut a = super::Decoder::<WIDE>::new(&self.stream).ok()?;
        let mut b = super::Decoder::<WIDE>::new(&self.stream).ok()?;
        let mut outs = [vec![0u8; Self::SYMBOLS], vec![0u8; Self::SYMBOLS]];
        let [out_a, out_b] = &mut outs;
        let mut runs = [
            TableBytes::one(&mut a, self.view(), out_a),
            TableBytes::one(&mut b, self.view(), out_b),
        ];
        let start = std::time::Instant::now();
        // SAFETY: permutes_win checked the CPU for AVX-512 and VBMI before timing.
        let done = unsafe {
            if vbmi {
                decode_table_bytes_vbmi(&mut runs)
            } else {
                decode_table_bytes(&mut runs)
            }
        };
        Some((start.elapsed(), outs, done))
    }

    fn view(&self) -> TableView<'_> {
        TableView {
            lookup: &self.lookup,
            packed: &self.packed,
            slots: None,
            planes: &self.planes,
            bits: TABLE_BITS,
            entries: None,
        }
    }
}

/// Where key `j` of 64 goes before the lookup, so that the unpacks that interleave the byte
/// planes (which work within 128-bit lanes) leave vector `v` holding keys `16 v..16 v + 16`
/// in order: the unpacks put position `16 L + 4 v + i` of the permuted keys at lane
/// `4 L + i` of vector `v`, so that position takes key `16 v + 4 L + i`.
const KEY_ORDER: [u8; 64] = {
    let mut order = [0u8; 64];
    let mut j = 0;
    while j < 64 {
        let (lane, v, i) = (j / 16, (j % 16) / 4, j % 4);
        order[j] = (16 * v + 4 * lane + i) as u8;
        j += 1;
    }
    order
};

/// The entries of 64 keys from 256-byte planes: byte `p` of each key's entry from plane `p`,
/// by two 128-byte permutes (`vpermi2b`) whose results the key's top bit chooses between.
/// `keys` must be in [`KEY_ORDER`] and `top` their top bits.
#[inline(always)]
unsafe fn plane_bytes(keys: __m512i, top: __mmask64, plane: &[__m512i; 4]) -> __m512i {
    // SAFETY: the caller checked the CPU and guarantees what the notes below say.
    unsafe {
        let low = _mm512_permutex2var_epi8(plane[0], keys, plane[1]);
        let high = _mm512_permutex2var_epi8(plane[2], keys, plane[3]);
        _mm512_mask_blend_epi8(top, low, high)
    }
}

/// Interleaves four planes' bytes (in [`KEY_ORDER`]) into 64 u32s, keys in order.
#[inline(always)]
unsafe fn interleave(b: [__m512i; 4]) -> [__m512i; 4] {
    // SAFETY: the caller checked the CPU and guarantees what the notes below say.
    unsafe {
        let (lo01, hi01) = (
            _mm512_unpacklo_epi8(b[0], b[1]),
            _mm512_unpackhi_epi8(b[0], b[1]),
        );
        let (lo23, hi23) = (
            _mm512_unpacklo_epi8(b[2], b[3]),
            _mm512_unpackhi_epi8(b[2], b[3]),
        );
        [
            _mm512_unpacklo_epi16(lo01, lo23),
            _mm512_unpackhi_epi16(lo01, lo23),
            _mm512_unpacklo_epi16(hi01, hi23),
            _mm512_unpackhi_epi16(hi01, hi23),
        ]
    }
}

/// Where [`table_steps_vbmi`] puts the low byte of each u32 lane of two symbol vectors:
/// symbol `k < 32` (vector `k / 16`, lane `k % 16`) at the place [`KEY_ORDER`] gives key `k`
/// (indices into the 128 bytes of both vectors; places for keys 32-63 take byte 0).
const SYMBOL_BYTES: [u8; 64] = {
    let mut idx = [0u8; 64];
    let mut j = 0;
    while j < 64 {
        let key = KEY_ORDER[j] as usize;
        if key < 32 {
            idx[j] = (64 * (key / 16) + 4 * (key % 16)) as u8;
        }
        j += 1;
    }
    idx
};

/// [`table_step`] on both vectors of 32 lanes, each symbol's `freq | start << 16` looked up
/// in the table's byte planes by permutes instead of gathered: one gather per sixteen lanes
/// instead of two.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VBMI. Always inlined, so that it compiles with its
/// caller's target features: left to the inliner, one build called it out of line and the INT8
/// decode of the synthetic set took 46.7 ms instead of 37.5. No closures inside: they would
/// not inherit those features, and the intrinsics in them would be calls.
#[inline(always)]
unsafe fn table_steps_vbmi(x: [__m512i; 2], table: &TableView) -> Steps {
    // SAFETY (the block): the caller checked the CPU. Every slot is below 2^TABLE_BITS and the
    // lookup has 4 bytes of padding; SYMBOL_BYTES is 64 bytes.
    unsafe {
        let mask = _mm512_set1_epi32((1 << TABLE_BITS) - 1);
        let slot = [_mm512_and_si512(x[0], mask), _mm512_and_si512(x[1], mask)];
        let (lookup, byte) = (table.lookup.as_ptr().cast(), _mm512_set1_epi32(0xFF));
        let sym = [
            _mm512_and_si512(_mm512_i32gather_epi32::<1>(slot[0], lookup), byte),
            _mm512_and_si512(_mm512_i32gather_epi32::<1>(slot[1], lookup), byte),
        ];
        let order = _mm512_loadu_si512(SYMBOL_BYTES.as_ptr().cast());
        let keys = _mm512_permutex2var_epi8(sym[0], order, sym[1]);
        let top = _mm512_movepi8_mask(keys);
        let p = &table.planes.0;
        // Keys 32-63 are not symbols: their entries are left unused (and so not computed).
        let [e0, e1, _, _] = interleave([
            plane_entries(keys, top, &p[0]),
            plane_entries(keys, top, &p[1]),
            plane_entries(keys, top, &p[2]),
            plane_entries(keys, top, &p[3]),
        ]);
        (
            sym,
            [next_state(x[0], slot[0], e0), next_state(x[1], slot[1], e1)],
        )
    }
}

/// [`plane_bytes`] from a plane in memory (256 bytes, aligned: four vector loads).
#[inline(always)]
unsafe fn plane_entries(keys: __m512i, top: __mmask64, plane: &[u8; 256]) -> __m512i {
    // SAFETY: the caller checked the CPU and guarantees what the notes below say.
    unsafe {
        // The plane is 256 bytes, 64-aligned (`BytePlanes`).
        let v = {
            [
                _mm512_load_si512(plane.as_ptr().cast()),
                _mm512_load_si512(plane[64..].as_ptr().cast()),
                _mm512_load_si512(plane[128..].as_ptr().cast()),
                _mm512_load_si512(plane[192..].as_ptr().cast()),
            ]
        };
        plane_bytes(keys, top, &v)
    }
}

/// A table step's next state (before renormalisation) from the state, its slot and the
/// symbol's `freq | start << 16`.
#[inline(always)]
unsafe fn next_state(x: __m512i, slot: __m512i, e: __m512i) -> __m512i {
    // SAFETY: the caller checked the CPU and guarantees what the notes below say.
    unsafe {
        _mm512_add_epi32(
            _mm512_mullo_epi32(
                _mm512_and_si512(e, _mm512_set1_epi32(0xFFFF)),
                _mm512_srli_epi32::<{ TABLE_BITS }>(x),
            ),
            _mm512_sub_epi32(slot, _mm512_srli_epi32::<16>(e)),
        )
    }
}

/// [`decode_keyed_positions`] with each key's split and offset looked up by byte permutes
/// from the table's planes, 64 keys at once, instead of gathered: on Zen 4 a sixteen-lane
/// gather costs ~21 cycles, the whole lookup of 64 keys ~33 one-cycle instructions.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VBMI ([`cpu_has_avx512`], [`cpu_has_vbmi`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,popcnt")]
pub(super) unsafe fn decode_keyed_positions_vbmi<const L: usize>(
    dec: &mut super::Decoder<L>,
    keys: &[u8],
    planes: &super::BytePlanes<6>,
    out: &mut [u8],
) -> usize {
    let n = keys.len().min(out.len() / 2) / 32;
    let (mut x, words, mut pos) = lanes(dec);
    // SAFETY: each plane is 256 aligned bytes, four vectors.
    let t: [[__m512i; 4]; 6] = std::array::from_fn(|p| {
        std::array::from_fn(|q| unsafe { _mm512_load_si512(planes.0[p][64 * q..].as_ptr().cast()) })
    });
    // SAFETY: KEY_ORDER is 64 bytes.
    let order = unsafe { _mm512_loadu_si512(KEY_ORDER.as_ptr().cast()) };
    let zero = _mm512_setzero_si512();
    let mut g = 0;
    'groups: while g < n {
        let (first, take) = (g, (n - g).min(2));
        // SAFETY: keys has 32 take bytes at 32 g; the masked load reads no others.
        let raw = unsafe {
            _mm512_maskz_loadu_epi8(
                u64::MAX >> (64 - 32 * take),
                keys.as_ptr().add(32 * g).cast(),
            )
        };
        let k = _mm512_permutexvar_epi8(order, raw);
        let top = _mm512_movepi8_mask(k);
        // SAFETY: the caller checked the CPU.
        let (splits, bases) = unsafe {
            (
                interleave([
                    plane_bytes(k, top, &t[0]),
                    plane_bytes(k, top, &t[1]),
                    plane_bytes(k, top, &t[2]),
                    plane_bytes(k, top, &t[3]),
                ]),
                interleave([
                    plane_bytes(k, top, &t[4]),
                    plane_bytes(k, top, &t[5]),
                    zero,
                    zero,
                ]),
            )
        };
        for h in 0..take {
            if words.len() - pos < GROUP_BYTES {
                break 'groups;
            }
            for (k, x) in x.iter_mut().enumerate() {
                let v = 2 * h + k;
                // SAFETY (the block): the caller checked the CPU; GROUP_BYTES remain for the
                // refill; `out` has 32 bytes at 2 at.
                unsafe {
                    let (r, next) = split_step(*x, splits[v]);
                    *x = renormalise(next, words, &mut pos);
                    let at = 32 * (first + h) + 16 * k;
                    let codes = _mm512_cvtepi32_epi16(_mm512_add_epi32(r, bases[v]));
                    _mm256_storeu_si256(out[2 * at..2 * at + 32].as_mut_ptr().cast(), codes);
                }
            }
            g += 1;
        }
    }
    put_back(dec, x, pos);
    32 * g
}

/// Groups of 32 pairs in runs of 32 (see `Decoder::decode_pairs`): both halves' table
/// symbols, their refills in lane order, then their positions over the split each symbol
/// selects (`unders` where the symbol is the row's top byte, else all 256), and those refills.
///
/// # Safety
/// The CPU must support AVX-512 F and BW ([`cpu_has_avx512`]).
#[target_feature(enable = "avx512f,avx512bw,popcnt")]
pub(super) unsafe fn decode_pairs<const L: usize>(
    dec: &mut super::Decoder<L>,
    table: &TableView,
    tops: &[u32],
    unders: &[u32],
    syms: &mut [u8],
    positions: &mut [u16],
) -> usize {
    let n = super::wide::pair_groups(tops, unders, syms, positions);
    let all = _mm512_set1_epi32(super::Split::new(256).packed() as i32);
    let (mut x, words, mut pos) = lanes(dec);
    let mut g = 0;
    // A group reads two words per lane at most: 128 bytes, the last window 32 bytes in.
    while g < n && words.len() - pos >= 2 * GROUP_BYTES {
        // SAFETY: the caller checked the CPU.
        let (sym, next) = unsafe { table_steps(x, table) };
        for k in 0..2 {
            // SAFETY: 2 GROUP_BYTES remain for the group's refills.
            x[k] = unsafe { renormalise(next[k], words, &mut pos) };
        }
        for k in 0..2 {
            let at = 32 * g + 16 * k;
            // SAFETY (the block): tops and unders have 16 u32s at `at`, syms 16 bytes and
            // positions 16 u16s; 2 GROUP_BYTES remain for the refills.
            unsafe {
                let t = _mm512_loadu_si512(tops.as_ptr().add(at).cast());
                let u = _mm512_loadu_si512(unders.as_ptr().add(at).cast());
                let split = _mm512_mask_blend_epi32(_mm512_cmpeq_epi32_mask(sym[k], t), all, u);
                let (r, v) = split_step(x[k], split);
                x[k] = renormalise(v, words, &mut pos);
                _mm_storeu_si128(
                    syms.as_mut_ptr().add(at).cast(),
                    _mm512_cvtepi32_epi8(sym[k]),
                );
                _mm256_storeu_si256(
                    positions.as_mut_ptr().add(at).cast(),
                    _mm512_cvtepi32_epi16(r),
                );
            }
        }
        g += 1;
    }
    put_back(dec, x, pos);
    32 * g
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both loops decode the sample that picks between them alike, to its end, and as the
    /// symbol-by-symbol decoder does: otherwise the timing would compare loops that stopped
    /// early.
    #[test]
    #[ignore = "needs an AVX-512 CPU with VBMI (avx512vbmi); CI skips it, saying so, on others"]
    fn avx512_vbmi_lookup_sample_decodes_alike_with_both_loops() {
        assert!(
            cpu_has_avx512() && cpu_has_vbmi(),
            "this test needs an AVX-512 VBMI CPU"
        );
        let sample = LookupSample::new();
        let mut expected = vec![0u8; LookupSample::SYMBOLS];
        let mut dec = super::super::Decoder::<WIDE>::new(&sample.stream).unwrap();
        dec.decode_table_bytes(&sample.view(), &mut expected);
        let (_, gathered, done_g) = sample.decode(false).unwrap();
        let (_, permuted, done_p) = sample.decode(true).unwrap();
        assert_eq!(done_g, done_p);
        for (run, done) in done_g.into_iter().enumerate() {
            assert_eq!(done, LookupSample::SYMBOLS, "run {run}");
            assert_eq!(gathered[run][..done], expected[..done]);
            assert_eq!(permuted[run][..done], expected[..done]);
        }
        assert!(
            expected
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 100
        );
    }
}
