//! Decode loops for 32-lane streams (blob version 2): a portable one and an AVX2 one. Both
//! decode whole groups of 32 symbols while the stream has the bytes such a group can read, and
//! leave the rest to the symbol-by-symbol path; they give identical states, positions and
//! output on any input, valid or not (tested below), so which one runs is invisible.

use super::{Decoder, KeyedTable, RANS_L, Split, TABLE_BITS, TableBytes, TableView, WIDE};

/// Whether the SIMD loops may run: the CPU has AVX2 and POPCNT (every AVX2 CPU does; without
/// it, counting a refill's words is a chain of five instructions on the loops' critical path)
/// and `QSTORE_SCALAR` is not set (so the whole test suite can be run on the portable path).
pub fn simd_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let cpu = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("popcnt");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        cpu && std::env::var_os("QSTORE_SCALAR").is_none()
    })
}

/// For each mask of eight lanes, the lanes that are set, in order: at the bottom of the eight
/// (zeros above), or with `top` at the top (zeros below). The permutation with which SIMD loops
/// pack the lanes a mask selects.
pub(crate) const fn packed_lanes(top: bool) -> [[u32; 8]; 256] {
    let mut t = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut at = if top {
            8 - (m as u32).count_ones() as usize
        } else {
            0
        };
        let mut j = 0;
        while j < 8 {
            if m & (1 << j) != 0 {
                t[m][at] = j as u32;
                at += 1;
            }
            j += 1;
        }
        m += 1;
    }
    t
}

/// Bytes a group of 32 table symbols may need: 64 for its words, 16 for the SIMD loop's last
/// window read.
const GROUP_BYTES: usize = 2 * WIDE + 16;

/// Decodes whole groups of `L` table symbols into each run's output, the runs' loops together
/// (see [`super::decode_table_bytes_together`]); returns how many bytes each got.
pub(super) fn decode_table_bytes<const L: usize, const S: usize>(
    runs: &mut [TableBytes<'_, '_, L>; S],
) -> [usize; S] {
    if L != WIDE {
        return [0; S];
    }
    #[cfg(target_arch = "x86_64")]
    if super::wide_avx512::avx512_enabled() {
        // The loops are written for one resolution each (reading it from the table cost 8%).
        if runs.iter().all(|r| r.all_tables(|t| t.bits == TABLE_BITS)) {
            if super::wide_avx512::permutes_win() {
                // SAFETY: the CPU supports AVX-512 (checked above) with VBMI (permutes_win
                // checks).
                return unsafe { super::wide_avx512::decode_table_bytes_vbmi(runs) };
            }
            // SAFETY: the CPU supports AVX-512 (checked at run time above).
            return unsafe { super::wide_avx512::decode_table_bytes(runs) };
        }
        if runs.iter().all(|r| r.all_tables(|t| t.entries.is_some())) {
            // SAFETY: the CPU supports AVX-512 (checked at run time above).
            return unsafe { super::wide_avx512::decode_table_bytes_coarse(runs) };
        }
        if runs
            .iter()
            .all(|r| r.all_tables(|t| t.bits == TABLE_BITS || t.entries.is_some()))
        {
            // SAFETY: the CPU supports AVX-512 (checked at run time above); every table is of
            // TABLE_BITS or has coarse entries (checked just now).
            return unsafe { super::wide_avx512::decode_table_bytes_mixed(runs) };
        }
    }
    #[cfg(target_arch = "x86_64")]
    if simd_enabled() && runs.iter().all(TableBytes::has_slots) {
        // SAFETY: the CPU supports AVX2 (checked at run time above).
        return unsafe { avx2::decode_table_bytes(runs) };
    }
    runs.each_mut().map(decode_table_bytes_portable)
}

/// Whole groups, a table's stretch at a time, while the stream has the bytes for them.
fn decode_table_bytes_portable<const L: usize>(r: &mut TableBytes<'_, '_, L>) -> usize {
    let whole = r.out.len() / L * L;
    let mut done = 0;
    while done < whole {
        r.switch_at(done);
        let end = r.current_until(done, whole);
        let (table, out) = (r.table, &mut r.out[done..end]);
        let mask = (1u32 << table.bits) - 1;
        let got = portable_groups(r.dec, out.len() / L, |i, x| {
            let slot = x & mask;
            let sym = table.lookup[slot as usize];
            out[i] = sym;
            let e = table.packed[sym as usize];
            (e & 0xFFFF)
                .wrapping_mul(x >> table.bits)
                .wrapping_add(slot.wrapping_sub(e >> 16))
        });
        done += got;
        if done < end {
            break;
        }
    }
    done
}

/// The SIMD table loops' frame: each run's 32 states as `VECS` vectors of type `V`, then
/// `group(g, runs, states, positions)` for groups `g = 0..` while every run has a whole group
/// of output left and `need` stream bytes after its position; the states and positions go
/// back to the decoders at the end. Returns how many symbols each run got.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn table_groups<V: Copy, const VECS: usize, const L: usize, const S: usize>(
    runs: &mut [TableBytes<'_, '_, L>; S],
    need: usize,
    mut group: impl FnMut(usize, &mut [TableBytes<'_, '_, L>; S], &mut [[V; VECS]; S], &mut [usize; S]),
) -> [usize; S] {
    assert_eq!(L, WIDE, "the SIMD loops decode 32 lanes");
    assert_eq!(size_of::<[V; VECS]>(), size_of::<[u32; WIDE]>());
    let n = runs.iter().map(|r| r.out.len() / 32).min().unwrap_or(0);
    let mut pos = runs.each_ref().map(|r| r.dec.pos);
    // SAFETY: the 32 u32 states are the bytes of the vectors (asserted above; unaligned).
    let mut x: [[V; VECS]; S] = runs
        .each_ref()
        .map(|r| unsafe { std::ptr::read_unaligned(r.dec.states.as_ptr().cast()) });
    let mut g = 0;
    while g < n
        && runs
            .iter()
            .zip(&pos)
            .all(|(r, &p)| r.dec.words.len() - p >= need)
    {
        for r in runs.iter_mut() {
            r.switch_at(32 * g);
        }
        group(g, runs, &mut x, &mut pos);
        g += 1;
    }
    for ((r, x), pos) in runs.iter_mut().zip(x).zip(pos) {
        // SAFETY: as above.
        unsafe { std::ptr::write_unaligned(r.dec.states.as_mut_ptr().cast(), x) };
        r.dec.pos = pos;
    }
    [32 * g; S]
}

/// The portable loops' frame: up to `groups` whole groups of `L` symbols while the stream has
/// the bytes a group may read, symbol `i` (counted from the first group) on lane `i % L`.
/// `decode(i, x)` decodes symbol `i` from its lane's state `x` and returns the state before
/// renormalisation; refills come from one bounds-checked window per group. Returns how many
/// symbols it decoded.
fn portable_groups<const L: usize>(
    dec: &mut Decoder<L>,
    groups: usize,
    mut decode: impl FnMut(usize, u32) -> u32,
) -> usize {
    let (words, mut pos, mut done) = (dec.words, dec.pos, 0);
    let mut x = dec.states;
    for _ in 0..groups {
        let Some(window) = words.get(pos..pos + GROUP_BYTES) else {
            break;
        };
        let mut at = 0;
        for (lane, x) in x.iter_mut().enumerate() {
            let v = decode(done + lane, *x);
            let need = v < RANS_L;
            let word = u32::from(u16::from_le_bytes([window[at], window[at + 1]]));
            *x = if need { (v << 16) | word } else { v };
            at += 2 * usize::from(need);
        }
        pos += at;
        done += L;
    }
    dec.states = x;
    dec.pos = pos;
    done
}

/// Decodes whole groups of `L` [`Split`] positions (one packed split per element in
/// `entries`) into `out`; returns how many it decoded.
pub(super) fn decode_positions<const L: usize>(
    dec: &mut Decoder<L>,
    entries: &[u32],
    out: &mut [u16],
) -> usize {
    if L != WIDE {
        return 0;
    }
    #[cfg(target_arch = "x86_64")]
    if simd_enabled() {
        // SAFETY: the CPU supports AVX2 (checked at run time above).
        return unsafe { avx2::decode_positions(dec, entries, out) };
    }
    decode_positions_portable(dec, entries, out)
}

fn decode_positions_portable<const L: usize>(
    dec: &mut Decoder<L>,
    entries: &[u32],
    out: &mut [u16],
) -> usize {
    let groups = out.len().min(entries.len()) / L;
    portable_groups(dec, groups, |i, x| {
        let slot = x & 0xFFFF;
        let r = Split::position(entries[i], slot);
        out[i] = r as u16;
        let s = Split(entries[i]).symbol(r);
        s.freq
            .wrapping_mul(x >> 16)
            .wrapping_add(slot.wrapping_sub(s.start))
    })
}

/// Decodes whole groups of `L` positions over the splits their keys select, writing
/// `offsets[key] + position` as little-endian u16s (see [`Decoder::decode_keyed_positions`]);
/// returns how many it decoded.
pub(super) fn decode_keyed_positions<const L: usize>(
    dec: &mut Decoder<L>,
    keys: &[u8],
    table: &KeyedTable,
    out: &mut [u8],
) -> usize {
    if L != WIDE {
        return 0;
    }
    let (splits, offsets) = (&table.splits, &table.offsets);
    #[cfg(target_arch = "x86_64")]
    if super::wide_avx512::avx512_enabled() {
        if super::wide_avx512::cpu_has_vbmi() {
            // SAFETY: the CPU supports AVX-512 with VBMI (checked at run time above).
            return unsafe {
                super::wide_avx512::decode_keyed_positions_vbmi(dec, keys, &table.planes, out)
            };
        }
        // SAFETY: the CPU supports AVX-512 (checked at run time above).
        return unsafe {
            super::wide_avx512::decode_keyed_positions(dec, keys, splits, offsets, out)
        };
    }
    #[cfg(target_arch = "x86_64")]
    if simd_enabled() {
        // SAFETY: the CPU supports AVX2 (checked at run time above).
        return unsafe { avx2::decode_keyed_positions(dec, keys, splits, offsets, out) };
    }
    decode_keyed_positions_portable(dec, keys, splits, offsets, out)
}

fn decode_keyed_positions_portable<const L: usize>(
    dec: &mut Decoder<L>,
    keys: &[u8],
    splits: &[u32; 256],
    offsets: &[u16; 256],
    out: &mut [u8],
) -> usize {
    let groups = keys.len().min(out.len() / 2) / L;
    portable_groups(dec, groups, |i, x| {
        let key = usize::from(keys[i]);
        let slot = x & 0xFFFF;
        let r = Split::position(splits[key], slot);
        let code = offsets[key].wrapping_add(r as u16);
        out[2 * i..2 * i + 2].copy_from_slice(&code.to_le_bytes());
        let s = Split(splits[key]).symbol(r);
        s.freq
            .wrapping_mul(x >> 16)
            .wrapping_add(slot.wrapping_sub(s.start))
    })
}

/// Decodes whole groups of 32 pairs in runs of `run` (see [`Decoder::decode_pairs`]), the
/// first on lane 0; returns how many it decoded. Only SIMD has loops of its own (for runs of
/// 8 and of 32): without it, the run-by-run path of `decode_pairs` does all.
pub(super) fn decode_pairs<const L: usize>(
    dec: &mut Decoder<L>,
    table: &TableView,
    run: usize,
    tops: &[u32],
    unders: &[u32],
    syms: &mut [u8],
    positions: &mut [u16],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if L == WIDE && simd_enabled() {
        use super::wide_avx512::{self, avx512_enabled};
        // SAFETY (all three): the CPU supports what each loop needs (checked at run time).
        match run {
            super::PAIR_RUN if avx512_enabled() => {
                return unsafe {
                    wide_avx512::decode_pairs(dec, table, tops, unders, syms, positions)
                };
            }
            super::PAIR_RUN if table.slots.is_some() => {
                return unsafe {
                    avx2::decode_pairs_grouped(dec, table, tops, unders, syms, positions)
                };
            }
            super::PAIR_RUN_V2 if table.slots.is_some() => {
                return unsafe { avx2::decode_pairs(dec, table, tops, unders, syms, positions) };
            }
            _ => {}
        }
    }
    let _ = (dec, table, run, tops, unders, syms, positions);
    0
}

/// Whole groups of 32 pairs that every slice of a pair loop holds.
#[cfg(target_arch = "x86_64")]
pub(super) fn pair_groups(tops: &[u32], unders: &[u32], syms: &[u8], positions: &[u16]) -> usize {
    let pairs = tops
        .len()
        .min(unders.len())
        .min(syms.len())
        .min(positions.len());
    pairs / 32
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Decoder, GROUP_BYTES, TableBytes, TableView};

    /// The AVX2 loops' frame: the 32 states in four vectors (lanes `8k..8k + 8` in vector
    /// `k`), then `group(g, states, words, pos)` for groups `g = 0..groups` while `need`
    /// stream bytes remain after `pos`. Returns how many groups ran.
    #[inline(always)]
    fn groups<const L: usize>(
        dec: &mut Decoder<L>,
        groups: usize,
        need: usize,
        mut group: impl FnMut(usize, &mut [__m256i; 4], &[u8], &mut usize),
    ) -> usize {
        assert_eq!(L, 32, "the AVX2 loops decode 32 lanes");
        let (words, mut pos) = (dec.words, dec.pos);
        // SAFETY: the 32 u32 states are the bytes of four vectors (unaligned access).
        let mut x: [__m256i; 4] = unsafe { std::ptr::read_unaligned(dec.states.as_ptr().cast()) };
        let mut g = 0;
        while g < groups && words.len() - pos >= need {
            group(g, &mut x, words, &mut pos);
            g += 1;
        }
        unsafe { std::ptr::write_unaligned(dec.states.as_mut_ptr().cast(), x) };
        dec.pos = pos;
        g
    }

    /// The lanes of `v` below 2^16 become `v << 16 | next word`, taken in lane order from the
    /// stream at `*pos`, which advances past them. The caller guarantees 16 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn renormalise(v: __m256i, words: &[u8], pos: &mut usize) -> __m256i {
        let need = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(v), _mm256_setzero_si256());
        let m = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as usize;
        // SAFETY: the caller leaves 16 bytes after *pos; REFILL has 256 rows of 8.
        let raw = unsafe { _mm_loadu_si128(words.as_ptr().add(*pos).cast()) };
        let order = unsafe { _mm256_loadu_si256(REFILL[m].as_ptr().cast()) };
        let w = _mm256_permutevar8x32_epi32(_mm256_cvtepu16_epi32(raw), order);
        *pos += 2 * m.count_ones() as usize;
        _mm256_blendv_epi8(v, _mm256_or_si256(_mm256_slli_epi32::<16>(v), w), need)
    }

    /// One table symbol on eight lanes: the symbols (in u32 lanes) and the states before
    /// renormalisation. Each slot's `(sym, freq, slot - start)` entry comes from one scalar
    /// 64-bit load rather than a gather: on Zen 3 a gather costs more than the loads and
    /// inserts (int8 decode 1.35x faster without), and Intel cores with the Downfall microcode
    /// fix gather slower still. Loading lanes 0, 1, 4, 5 into one vector and 2, 3, 6, 7 into
    /// the other lets one shuffle each put the entries' halves back in lane order.
    #[inline]
    #[target_feature(enable = "avx2,popcnt")]
    fn table_step(x: __m256i, table: &TableView) -> (__m256i, __m256i) {
        let mask = (1usize << table.bits) - 1;
        let slot = _mm256_and_si256(x, _mm256_set1_epi32(mask as i32));
        let mut lanes = [0u32; 8];
        // SAFETY: lanes has room for eight u32s.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), slot) };
        let slots = table
            .slots
            .expect("the AVX2 loops are chosen only for tables with slot entries");
        let e = |j: usize| slots[lanes[j] as usize & mask] as i64;
        let a = _mm256_castsi256_ps(_mm256_setr_epi64x(e(0), e(1), e(4), e(5)));
        let b = _mm256_castsi256_ps(_mm256_setr_epi64x(e(2), e(3), e(6), e(7)));
        let e = _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
        let sym = _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(a, b));
        let v = _mm256_add_epi32(
            _mm256_mullo_epi32(
                _mm256_srli_epi32::<16>(e),
                _mm256_srlv_epi32(x, _mm256_set1_epi32(table.bits as i32)),
            ),
            _mm256_and_si256(e, _mm256_set1_epi32(0xFFFF)),
        );
        (sym, v)
    }

    /// 32 symbols in the u32 lanes of four vectors to 32 bytes in lane order.
    #[inline]
    #[target_feature(enable = "avx2,popcnt")]
    fn store_u8x32(v: [__m256i; 4], out: &mut [u8]) {
        assert!(out.len() >= 32);
        let ab = _mm256_packus_epi32(v[0], v[1]);
        let cd = _mm256_packus_epi32(v[2], v[3]);
        let interleave = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), interleave);
        // SAFETY: out has at least 32 bytes.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), bytes) };
    }

    /// One [`super::Split`] position on eight lanes, each with its packed split: the
    /// position and the state before renormalisation. See `decode_positions` for why the
    /// division is exact.
    #[inline]
    #[target_feature(enable = "avx2,popcnt")]
    fn split_step(x: __m256i, split: __m256i) -> (__m256i, __m256i) {
        let low = _mm256_set1_epi32(0xFFFF);
        let one = _mm256_set1_epi32(1);
        let f = _mm256_add_epi32(_mm256_and_si256(split, low), one);
        let e = _mm256_srli_epi32::<16>(split);
        let f1 = _mm256_add_epi32(f, one);
        let slot = _mm256_and_si256(x, low);
        let b = _mm256_mullo_epi32(e, f1);
        let below = _mm256_cmpgt_epi32(b, slot);
        let div = _mm256_blendv_epi8(f, f1, below);
        let num = _mm256_blendv_epi8(_mm256_sub_epi32(slot, b), slot, below);
        let q = _mm256_cvttps_epi32(_mm256_div_ps(
            _mm256_cvtepi32_ps(num),
            _mm256_cvtepi32_ps(div),
        ));
        let r = _mm256_add_epi32(q, _mm256_andnot_si256(below, e));
        let start = _mm256_add_epi32(_mm256_mullo_epi32(r, f), _mm256_min_epu32(r, e));
        let freq = _mm256_sub_epi32(f, _mm256_cmpgt_epi32(e, r));
        let v = _mm256_add_epi32(
            _mm256_mullo_epi32(freq, _mm256_srli_epi32::<16>(x)),
            _mm256_sub_epi32(slot, start),
        );
        (r, v)
    }

    /// 32 values below 2^16 in u32 lanes to 32 u16s in lane order: the packs work within
    /// 128-bit halves, the 64-bit permute restores the order.
    #[inline]
    #[target_feature(enable = "avx2,popcnt")]
    fn store_u16x32(v: [__m256i; 4], out: &mut [u16]) {
        assert!(out.len() >= 32);
        for (k, pair) in v.chunks_exact(2).enumerate() {
            let packed =
                _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(pair[0], pair[1]));
            // SAFETY: out has at least 32 u16s.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(16 * k).cast(), packed) };
        }
    }

    /// Eight positions at a time as in `decode_positions`, each element's split loaded by its
    /// key (eight scalar loads: cheaper than a gather on Zen 3), then its offset added to the
    /// position packed to u16.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn decode_keyed_positions<const L: usize>(
        dec: &mut Decoder<L>,
        keys: &[u8],
        splits: &[u32; 256],
        offsets: &[u16; 256],
        out: &mut [u8],
    ) -> usize {
        let n = keys.len().min(out.len() / 2) / 32;
        let groups = groups(dec, n, GROUP_BYTES, |g, x, words, pos| {
            let ks: &[u8; 32] = keys[32 * g..32 * g + 32].try_into().unwrap();
            let codes: &mut [u8; 64] = (&mut out[64 * g..64 * g + 64]).try_into().unwrap();
            // Each step uses its eight keys at once (splits, then offsets), so they need not
            // stay in registers across the group.
            let mut step = |k: usize| {
                let key = |j: usize| usize::from(ks[8 * k + j]);
                let e = |j: usize| splits[key(j)] as i32;
                let split = _mm256_setr_epi32(e(0), e(1), e(2), e(3), e(4), e(5), e(6), e(7));
                let (r, v) = split_step(x[k], split);
                // SAFETY: GROUP_BYTES remain for the refills.
                x[k] = unsafe { renormalise(v, words, pos) };
                let o = |j: usize| offsets[key(j)] as i16;
                let base = _mm_setr_epi16(o(0), o(1), o(2), o(3), o(4), o(5), o(6), o(7));
                let r =
                    _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
                let code = _mm_add_epi16(r, base);
                // SAFETY: 16 bytes at 16 k within the group's 64.
                unsafe { _mm_storeu_si128(codes.as_mut_ptr().add(16 * k).cast(), code) };
            };
            // Written out so that the four state vectors stay in registers.
            step(0);
            step(1);
            step(2);
            step(3);
        });
        32 * groups
    }

    /// Groups of 32 pairs in runs of eight (version 2): per vector of eight lanes, the table
    /// symbols, then the positions over the split each symbol selects.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn decode_pairs<const L: usize>(
        dec: &mut Decoder<L>,
        table: &TableView,
        tops: &[u32],
        unders: &[u32],
        syms: &mut [u8],
        positions: &mut [u16],
    ) -> usize {
        let all = _mm256_set1_epi32(super::Split::new(256).packed() as i32);
        let n = super::pair_groups(tops, unders, syms, positions);
        let groups = groups(dec, n, 2 * GROUP_BYTES, |g, x, words, pos| {
            let (top, under) = (&tops[32 * g..32 * g + 32], &unders[32 * g..32 * g + 32]);
            let mut step = |k: usize| {
                let (sym, v) = table_step(x[k], table);
                // SAFETY (all blocks here): a group reads two words per lane at most, 128
                // bytes, within the 2 GROUP_BYTES that remain; top and under have 32 u32s.
                let v = unsafe { renormalise(v, words, pos) };
                let t = unsafe { _mm256_loadu_si256(top.as_ptr().add(8 * k).cast()) };
                let u = unsafe { _mm256_loadu_si256(under.as_ptr().add(8 * k).cast()) };
                let split = _mm256_blendv_epi8(all, u, _mm256_cmpeq_epi32(sym, t));
                let (r, v) = split_step(v, split);
                x[k] = unsafe { renormalise(v, words, pos) };
                (sym, r)
            };
            // Written out so that the four state vectors stay in registers.
            let steps = [step(0), step(1), step(2), step(3)];
            let (ss, rs) = (steps.map(|s| s.0), steps.map(|s| s.1));
            store_u8x32(ss, &mut syms[32 * g..32 * g + 32]);
            store_u16x32(rs, &mut positions[32 * g..32 * g + 32]);
        });
        32 * groups
    }

    /// Groups of 32 pairs in runs of 32: the four vectors' table symbols, their refills in
    /// lane order, then their positions over the split each symbol selects, and those refills.
    /// Unlike runs of eight, no vector's symbols wait on another's positions: the four chains
    /// overlap.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn decode_pairs_grouped<const L: usize>(
        dec: &mut Decoder<L>,
        table: &TableView,
        tops: &[u32],
        unders: &[u32],
        syms: &mut [u8],
        positions: &mut [u16],
    ) -> usize {
        let all = _mm256_set1_epi32(super::Split::new(256).packed() as i32);
        let n = super::pair_groups(tops, unders, syms, positions);
        let groups = groups(dec, n, 2 * GROUP_BYTES, |g, x, words, pos| {
            let (top, under) = (&tops[32 * g..32 * g + 32], &unders[32 * g..32 * g + 32]);
            // Written out: a closure (`map`) was called out of line.
            let [s0, s1, s2, s3] = [
                table_step(x[0], table),
                table_step(x[1], table),
                table_step(x[2], table),
                table_step(x[3], table),
            ];
            let sym = [s0.0, s1.0, s2.0, s3.0];
            // SAFETY (all blocks here): a group reads two words per lane at most, 128 bytes,
            // within the 2 GROUP_BYTES that remain; top and under have 32 u32s.
            for (k, v) in [s0.1, s1.1, s2.1, s3.1].into_iter().enumerate() {
                x[k] = unsafe { renormalise(v, words, pos) };
            }
            let mut rs = [_mm256_setzero_si256(); 4];
            for k in 0..4 {
                let t = unsafe { _mm256_loadu_si256(top.as_ptr().add(8 * k).cast()) };
                let u = unsafe { _mm256_loadu_si256(under.as_ptr().add(8 * k).cast()) };
                let split = _mm256_blendv_epi8(all, u, _mm256_cmpeq_epi32(sym[k], t));
                let (r, v) = split_step(x[k], split);
                x[k] = unsafe { renormalise(v, words, pos) };
                rs[k] = r;
            }
            store_u8x32(sym, &mut syms[32 * g..32 * g + 32]);
            store_u16x32(rs, &mut positions[32 * g..32 * g + 32]);
        });
        32 * groups
    }

    /// Eight positions at a time. With `f`, `e` from the packed split and `b = e (f + 1)`:
    /// a slot below `b` is position `slot / (f + 1)`, else `e + (slot - b) / f`. The division
    /// is done in single precision: numerator and divisor are integers below 2^17, so both
    /// convert exactly, and when the true quotient `k + d` is not an integer, `d` and `1 - d`
    /// are at least `1 / divisor`, more than the rounding error (below `2^17 / divisor *
    /// 2^-24`): truncating the rounded quotient gives `k` exactly. Same result as integer
    /// division, which the portable loop uses (and a test compares).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn decode_positions<const L: usize>(
        dec: &mut Decoder<L>,
        entries: &[u32],
        out: &mut [u16],
    ) -> usize {
        let n = out.len().min(entries.len()) / 32;
        let groups = groups(dec, n, GROUP_BYTES, |g, x, words, pos| {
            let es = &entries[32 * g..32 * g + 32];
            let mut step = |k: usize| {
                // SAFETY: es has 32 u32s; GROUP_BYTES remain for the refills.
                let split = unsafe { _mm256_loadu_si256(es.as_ptr().add(8 * k).cast()) };
                let (r, v) = split_step(x[k], split);
                x[k] = unsafe { renormalise(v, words, pos) };
                r
            };
            // Written out so that the four state vectors stay in registers.
            let rs = [step(0), step(1), step(2), step(3)];
            store_u16x32(rs, &mut out[32 * g..32 * g + 32]);
        });
        32 * groups
    }

    /// For each mask of the eight lanes that take a word, the word each lane takes: lanes
    /// read consecutive words in lane order, so lane `j` takes the word numbered by how many
    /// lanes before it take one.
    static REFILL: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let mut j = 0;
            let mut k = 0;
            while j < 8 {
                t[m][j] = k;
                if m & (1 << j) != 0 {
                    k += 1;
                }
                j += 1;
            }
            m += 1;
        }
        t
    };

    /// Eight lanes at a time, four vectors per group of 32: slots, their `(sym, freq, slot -
    /// start)` entries, the new states, then the refill: the lanes below 2^16 take the next
    /// words in lane order (one 16-byte load, one permute). The group's 32 symbols are packed
    /// to bytes and stored at once. With several runs, each step does each run's vector in
    /// turn, and groups go on while every run has one.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    // `k` numbers each run's state vectors, `s` the runs: both index arrays of arrays.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn decode_table_bytes<const L: usize, const S: usize>(
        runs: &mut [TableBytes<'_, '_, L>; S],
    ) -> [usize; S] {
        super::table_groups(
            runs,
            GROUP_BYTES,
            |g, runs, x: &mut [[__m256i; 4]; S], pos| {
                let mut syms = [[_mm256_setzero_si256(); 4]; S];
                // Written out so that the state vectors stay in registers.
                for k in 0..4 {
                    // Written out, not `array::from_fn`, whose closure was called out of
                    // line: for the two runs there are, `1 % S` standing in for run 1 where
                    // there is one.
                    let mut steps = [table_step(x[0][k], &runs[0].table); S];
                    if S > 1 {
                        steps[1 % S] = table_step(x[1 % S][k], &runs[1 % S].table);
                    }
                    for s in 2..S {
                        steps[s] = table_step(x[s][k], &runs[s].table);
                    }
                    for s in 0..S {
                        syms[s][k] = steps[s].0;
                        // SAFETY: GROUP_BYTES remain for the refills.
                        x[s][k] =
                            unsafe { renormalise(steps[s].1, runs[s].dec.words, &mut pos[s]) };
                    }
                }
                for s in 0..S {
                    store_u8x32(syms[s], &mut runs[s].out[32 * g..32 * g + 32]);
                }
            },
        )
    }
}

/// Fails a test of the AVX-512 loops, saying why, on a CPU without them (CI skips these tests
/// there and says so: they are named `*avx512*`).
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) fn needs_avx512(what: &str) {
    assert!(
        super::wide_avx512::cpu_has_avx512(),
        "this test {what}: it needs an AVX-512 CPU"
    );
}

/// Fails the test, naming it, where the CPU lacks AVX-512 VBMI.
#[cfg(all(test, target_arch = "x86_64"))]
fn needs_vbmi(what: &str) {
    needs_avx512(what);
    assert!(
        super::wide_avx512::cpu_has_vbmi(),
        "this test {what}: it needs an AVX-512 VBMI CPU"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::freq::FreqTable;
    use crate::codec::rans::Encoder;

    /// A stream of table symbols from a peaked distribution, as int8 weights give.
    fn stream(n: usize, seed: u32) -> (FreqTable, Vec<u8>, Vec<u8>) {
        stream_at(n, seed, TABLE_BITS)
    }

    /// [`stream`] coded with a table of `bits`.
    fn stream_at(n: usize, seed: u32, bits: u32) -> (FreqTable, Vec<u8>, Vec<u8>) {
        let mut r = seed;
        let data: Vec<u8> = (0..n)
            .map(|_| {
                r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((r >> 16) as i16 as i32 / 700) as i8 as u8
            })
            .collect();
        let mut counts = [0u64; 256];
        data.iter().for_each(|&b| counts[b as usize] += 1);
        // A coarse table needs two symbols at least (one would take every slot).
        counts[usize::from(data[0] ^ 1)] += u64::from(bits != TABLE_BITS);
        // With slot entries: the AVX2 loops run here even where AVX-512 ones are chosen.
        let table = FreqTable::best_for_at(&counts, bits).unwrap().with_slots();
        assert_eq!(table.bits(), bits);
        let mut enc = Encoder::<WIDE>::with_capacity(n);
        for (i, &b) in data.iter().enumerate() {
            enc.push(table.symbol(b), i);
        }
        let mut out = Vec::new();
        enc.finish_into(&mut out);
        (table, data, out)
    }

    /// The table loops there are: each decodes whole groups of several runs together.
    #[derive(Debug, Clone, Copy)]
    enum Path {
        Portable,
        Avx2,
        Avx512,
        Avx512Vbmi,
        Avx512Coarse,
    }

    fn fast_loop<const S: usize>(
        path: Path,
        runs: &mut [TableBytes<'_, '_, WIDE>; S],
    ) -> [usize; S] {
        match path {
            Path::Portable => runs.each_mut().map(decode_table_bytes_portable),
            // SAFETY (both): the tests check the CPU before they take these paths.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { avx2::decode_table_bytes(runs) },
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => unsafe { super::super::wide_avx512::decode_table_bytes(runs) },
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Vbmi => unsafe { super::super::wide_avx512::decode_table_bytes_vbmi(runs) },
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Coarse => unsafe {
                super::super::wide_avx512::decode_table_bytes_coarse(runs)
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("x86 paths off x86"),
        }
    }

    type Decoded = (Vec<u8>, [u32; WIDE], usize, bool);

    /// Decodes `S` streams of table symbols, the fast loop of `path` on all of them together,
    /// then each one's rest symbol by symbol: each stream's output, states, position and
    /// whether it finished cleanly.
    fn run<const S: usize>(path: Path, streams: [(&FreqTable, &[u8], usize); S]) -> [Decoded; S] {
        let mut decs = streams.map(|(_, bytes, _)| Decoder::<WIDE>::new(bytes).unwrap());
        let mut outs = streams.map(|(_, _, n)| vec![0u8; n]);
        let mut runs = {
            let mut d = decs.iter_mut();
            let mut o = outs.iter_mut();
            streams.map(|(table, _, _)| {
                TableBytes::one(d.next().unwrap(), table.view(), o.next().unwrap())
            })
        };
        let done = fast_loop(path, &mut runs);
        for (r, done) in runs.iter_mut().zip(done) {
            super::super::decode_table_bytes_tail(r, done);
        }
        let mut outs = outs.into_iter();
        decs.map(|d| {
            let state = (d.states, d.pos);
            (outs.next().unwrap(), state.0, state.1, d.finish().is_ok())
        })
    }

    /// Every path in `paths`, alone and with a second stream decoded together, gives what the
    /// portable loop gives alone, on valid streams and on damaged ones.
    fn loops_agree(paths: &[Path]) {
        loops_agree_at(paths, TABLE_BITS);
    }

    /// [`loops_agree`] with tables of `bits`.
    fn loops_agree_at(paths: &[Path], bits: u32) {
        let (other_table, _, other) = stream_at(40_000, 99, bits);
        for (n, seed) in [(1, 1), (31, 2), (32, 3), (1000, 4), (100_003, 5)] {
            let (table, data, mut bytes) = stream_at(n, seed, bits);
            let [portable] = run(Path::Portable, [(&table, &bytes, n)]);
            assert_eq!(portable.0, data);
            assert!(portable.3);
            let [other_alone] = run(Path::Portable, [(&other_table, &other, 40_000)]);
            for flip in [
                None,
                Some(0),
                Some(7),
                Some(130),
                Some(bytes.len() / 2),
                Some(bytes.len() - 1),
            ] {
                if let Some(f) = flip.filter(|&f| f < bytes.len()) {
                    bytes[f] ^= 0x5A;
                }
                if Decoder::<WIDE>::new(&bytes).is_ok() {
                    let [want] = run(Path::Portable, [(&table, &bytes, n)]);
                    for &path in paths {
                        let what = format!("{path:?} n={n} flip={flip:?}");
                        assert_eq!(
                            run(path, [(&table, &bytes, n)]),
                            std::slice::from_ref(&want),
                            "{what}"
                        );
                        let pair = [(&table, &bytes[..], n), (&other_table, &other[..], 40_000)];
                        let together = [want.clone(), other_alone.clone()];
                        assert_eq!(run(path, pair), together, "{what}, together");
                        let swapped = [pair[1], pair[0]];
                        let together = [other_alone.clone(), want.clone()];
                        assert_eq!(run(path, swapped), together, "{what}, together");
                    }
                }
                if let Some(f) = flip.filter(|&f| f < bytes.len()) {
                    bytes[f] ^= 0x5A;
                }
            }
        }
    }

    /// Values coded with two tables taking turns every `every` elements, and the stream.
    fn two_table_stream(n: usize, every: usize) -> ([FreqTable; 2], Vec<u8>, Vec<u8>) {
        let (narrow, data_a, _) = stream(n, 11);
        let wide_data: Vec<u8> = (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut counts = [0u64; 256];
        wide_data.iter().for_each(|&b| counts[b as usize] += 1);
        let wide = FreqTable::from_counts(&counts).unwrap().with_slots();
        let data: Vec<u8> = (0..n)
            .map(|i| {
                if (i / every).is_multiple_of(2) {
                    data_a[i]
                } else {
                    wide_data[i]
                }
            })
            .collect();
        let mut enc = Encoder::<WIDE>::with_capacity(n);
        for (i, &b) in data.iter().enumerate() {
            let t = if (i / every).is_multiple_of(2) {
                &narrow
            } else {
                &wide
            };
            enc.push(t.symbol(b), i);
        }
        let mut out = Vec::new();
        enc.finish_into(&mut out);
        ([narrow, wide], data, out)
    }

    /// Every loop takes a stream whose table changes where `switches` say, alone and with a
    /// partner, from the start or from a later element, and decodes what was coded.
    #[test]
    fn loops_switch_tables_where_told() {
        let mut paths = vec![Path::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                paths.push(Path::Avx2);
            }
            if super::super::wide_avx512::cpu_has_avx512() {
                paths.push(Path::Avx512);
                if super::super::wide_avx512::cpu_has_vbmi() {
                    paths.push(Path::Avx512Vbmi);
                }
            }
        }
        let (n, every) = (10_000 + 17, 96);
        let (tables, data, bytes) = two_table_stream(n, every);
        let (partner_table, partner_data, partner) = stream(3_000, 7);
        let switches: Vec<(usize, TableView)> = (every..n)
            .step_by(every)
            .map(|at| (at, tables[at / every % 2].view()))
            .collect();
        for &path in &paths {
            for together in [false, true] {
                let mut dec = Decoder::<WIDE>::new(&bytes).unwrap();
                let mut pdec = Decoder::<WIDE>::new(&partner).unwrap();
                let (mut out, mut pout) = (vec![0u8; n], vec![0u8; 3_000]);
                // The first 960 elements by themselves, the rest from element 960 on.
                let (head, tail) = out.split_at_mut(960);
                let mut head_run = [TableBytes {
                    dec: &mut dec,
                    table: tables[0].view(),
                    out: head,
                    switches: &switches,
                    at: 0,
                }];
                let done = fast_loop(path, &mut head_run);
                super::super::decode_table_bytes_tail(&mut head_run[0], done[0]);
                let rest = TableBytes {
                    dec: &mut dec,
                    table: tables[960 / every % 2].view(),
                    out: tail,
                    switches: &switches[960 / every..],
                    at: 960,
                };
                if together {
                    let mut runs = [
                        rest,
                        TableBytes::one(&mut pdec, partner_table.view(), &mut pout),
                    ];
                    let done = fast_loop(path, &mut runs);
                    for (r, done) in runs.iter_mut().zip(done) {
                        super::super::decode_table_bytes_tail(r, done);
                    }
                    assert_eq!(pout, partner_data, "{path:?}: the partner");
                } else {
                    let mut runs = [rest];
                    let done = fast_loop(path, &mut runs);
                    super::super::decode_table_bytes_tail(&mut runs[0], done[0]);
                }
                assert_eq!(out, data, "{path:?} together={together}");
                assert!(dec.finish().is_ok());
            }
        }
    }

    #[test]
    fn portable_loop_decodes_streams_together_as_alone() {
        loops_agree(&[Path::Portable]);
        loops_agree_at(&[Path::Portable], crate::codec::rans::COARSE_BITS);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn portable_and_avx2_loops_agree_on_valid_and_damaged_streams() {
        assert!(
            std::arch::is_x86_feature_detected!("avx2"),
            "this test compares the AVX2 loop with the portable one: it needs an AVX2 CPU"
        );
        loops_agree(&[Path::Avx2]);
        loops_agree_at(&[Path::Avx2], crate::codec::rans::COARSE_BITS);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 CPU (avx512f, avx512bw); CI skips it, saying so, on others"]
    fn portable_and_avx512_table_loops_agree_on_valid_and_damaged_streams() {
        needs_avx512("compares the AVX-512 loop with the portable one");
        loops_agree(&[Path::Avx512]);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 CPU with VBMI (avx512vbmi); CI skips it, saying so, on others"]
    fn portable_and_avx512_vbmi_table_loops_agree_on_valid_and_damaged_streams() {
        needs_vbmi("compares the AVX-512 VBMI table loop with the portable one");
        loops_agree(&[Path::Avx512Vbmi]);
    }

    /// The coarse loop (one gather per sixteen symbols) decodes coarse tables' streams as the
    /// portable loop does, alone and paired, valid or damaged; and the dispatch takes it, or
    /// decodes each run alone when one is coarse and the other is not.
    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 CPU (avx512f, avx512bw); CI skips it, saying so, on others"]
    fn portable_and_avx512_coarse_loops_agree_on_valid_and_damaged_streams() {
        needs_avx512("compares the AVX-512 coarse table loop with the portable one");
        let coarse = crate::codec::rans::COARSE_BITS;
        loops_agree_at(&[Path::Avx512Coarse], coarse);
        let (fine_table, fine_data, fine) = stream(50_000, 7);
        let (coarse_table, coarse_data, coarse_bytes) = stream_at(60_000, 8, coarse);
        assert!(coarse_table.view().entries.is_some());
        let mut decs = [
            Decoder::<WIDE>::new(&fine).unwrap(),
            Decoder::<WIDE>::new(&coarse_bytes).unwrap(),
        ];
        let mut outs = [vec![0u8; 50_000], vec![0u8; 60_000]];
        let [d0, d1] = &mut decs;
        let [o0, o1] = &mut outs;
        super::super::decode_table_bytes_together([
            TableBytes::one(d0, fine_table.view(), o0),
            TableBytes::one(d1, coarse_table.view(), o1),
        ]);
        assert_eq!(outs, [fine_data, coarse_data]);
        for d in decs {
            d.finish().unwrap();
        }
    }
}

#[cfg(test)]
mod position_tests {
    use super::*;
    use crate::codec::rans::Encoder;

    /// Positions over widths from 1 (the no-op) to 2^15, as residual chunks have them.
    fn stream(n: usize, seed: u32) -> (Vec<u32>, Vec<u16>, Vec<u8>) {
        let mut r = seed;
        let mut next = || {
            r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            r >> 8
        };
        let mut entries = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        let mut enc = Encoder::<WIDE>::with_capacity(n);
        for i in 0..n {
            let width = match next() % 8 {
                0 => 1,
                1 => 1 + next() % 32_768,
                _ => 1 + next() % 300,
            };
            let split = Split::of(width);
            let pos = next() % width;
            enc.push(split.symbol(pos), i);
            entries.push(split.packed());
            positions.push(pos as u16);
        }
        let mut out = Vec::new();
        enc.finish_into(&mut out);
        (entries, positions, out)
    }

    fn run(
        f: fn(&mut Decoder<WIDE>, &[u32], &mut [u16]) -> usize,
        entries: &[u32],
        stream: &[u8],
    ) -> (Vec<u16>, [u32; WIDE], usize, bool) {
        let mut dec = Decoder::<WIDE>::new(stream).unwrap();
        let mut out = vec![0u16; entries.len()];
        let done = f(&mut dec, entries, &mut out);
        let mut tail = vec![0u16; entries.len() - done];
        dec.decode_positions(&entries[done..], &mut tail);
        out[done..].copy_from_slice(&tail);
        let state = (dec.states, dec.pos);
        (out, state.0, state.1, dec.finish().is_ok())
    }

    #[test]
    fn split_positions_are_found_exactly_for_every_slot() {
        for n in (1..=600).chain([4097, 20_000, 32_767, 32_768]) {
            let split = Split::of(n);
            assert_eq!(split, Split::new(n));
            let mut next_start = 0;
            for r in 0..n {
                let s = split.symbol(r);
                assert_eq!(s.start, next_start);
                next_start = s.start + s.freq;
                for slot in s.start..next_start {
                    assert_eq!(Split::position(split.packed(), slot), r);
                }
            }
            assert_eq!(next_start, 1 << 16, "n = {n}");
        }
    }

    /// The AVX-512 position step divides by a reciprocal (see `wide_avx512::split_step`):
    /// every slot of every tested width gives the position and next state that integer
    /// division gives, quotient boundaries included, with high state bits of all sizes.
    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 CPU (avx512f, avx512bw); CI skips it, saying so, on others"]
    fn avx512_split_step_finds_every_slot_exactly() {
        use std::arch::x86_64::*;
        needs_avx512("runs the AVX-512 position step");
        let widths = (1..=600)
            .chain((601..=32_768).step_by(97))
            .chain([4097, 20_000, 32_767, 32_768]);
        for n in widths {
            let split = Split::of(n);
            for first in (0..1u32 << 16).step_by(16) {
                let x: [u32; 16] = std::array::from_fn(|j| {
                    let slot = first + j as u32;
                    let high = 1 + slot.wrapping_mul(2_654_435_761) % 0xFFFF;
                    high << 16 | slot
                });
                let (mut r, mut v) = ([0u32; 16], [0u32; 16]);
                // SAFETY: the CPU was checked above; the arrays are 64 bytes each.
                unsafe {
                    let (rv, vv) = super::super::wide_avx512::split_step(
                        _mm512_loadu_si512(x.as_ptr().cast()),
                        _mm512_set1_epi32(split.packed() as i32),
                    );
                    _mm512_storeu_si512(r.as_mut_ptr().cast(), rv);
                    _mm512_storeu_si512(v.as_mut_ptr().cast(), vv);
                }
                for j in 0..16 {
                    let slot = x[j] & 0xFFFF;
                    let want = Split::position(split.packed(), slot);
                    let s = split.symbol(want);
                    assert_eq!(r[j], want, "n = {n}, slot {slot}");
                    assert_eq!(
                        v[j],
                        s.freq * (x[j] >> 16) + slot - s.start,
                        "n = {n}, slot {slot}"
                    );
                }
            }
        }
    }

    /// The keyed loop against the general one plus offsets: the same codes, states and stream
    /// position, portable and AVX2 alike, also on damaged streams.
    #[test]
    fn keyed_positions_are_positions_plus_offsets() {
        let mut keyed: Vec<KeyedLoop> =
            vec![|d, k, t, out| decode_keyed_positions_portable(d, k, &t.splits, &t.offsets, out)];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU was checked above.
            keyed.push(|d, k, t, out| unsafe {
                avx2::decode_keyed_positions(d, k, &t.splits, &t.offsets, out)
            });
        }
        keyed_loops_agree(&keyed);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 CPU (avx512f, avx512bw); CI skips it, saying so, on others"]
    fn portable_and_avx512_keyed_loops_agree() {
        needs_avx512("compares the AVX-512 keyed loop with the portable one");
        // SAFETY: the CPU was checked above.
        keyed_loops_agree(&[|d, k, t, out| unsafe {
            super::super::wide_avx512::decode_keyed_positions(d, k, &t.splits, &t.offsets, out)
        }]);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 CPU with VBMI (avx512vbmi); CI skips it, saying so, on others"]
    fn portable_and_avx512_vbmi_keyed_loops_agree() {
        needs_vbmi("compares the AVX-512 VBMI keyed loop with the portable one");
        // SAFETY: the CPU was checked above.
        keyed_loops_agree(&[|d, k, t, out| unsafe {
            super::super::wide_avx512::decode_keyed_positions_vbmi(d, k, &t.planes, out)
        }]);
    }

    /// Each of `keyed` gives what the general loop plus offsets gives: codes, states, position.
    fn keyed_loops_agree(keyed: &[KeyedLoop]) {
        let mut r = 7u32;
        let mut next = || {
            r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            r >> 8
        };
        let widths: [u32; 256] =
            std::array::from_fn(|k| [1, 2, 3, 200, 32_760][k % 5] + k as u32 % 7);
        let splits = widths.map(|w| Split::of(w).packed());
        let offsets: [u16; 256] = std::array::from_fn(|_| next() as u16);
        let table = KeyedTable::new(splits, offsets);
        for n in [1, 32, 64, 96, 1000, 100_003] {
            let keys: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let mut enc = Encoder::<WIDE>::with_capacity(n);
            let mut want = Vec::with_capacity(2 * n);
            for (i, &k) in keys.iter().enumerate() {
                let split = Split(splits[usize::from(k)]);
                let pos = next() % widths[usize::from(k)];
                enc.push(split.symbol(pos), i);
                want.extend_from_slice(
                    &offsets[usize::from(k)]
                        .wrapping_add(pos as u16)
                        .to_le_bytes(),
                );
            }
            let mut bytes = Vec::new();
            enc.finish_into(&mut bytes);
            for &f in keyed {
                let general = run_general(&keys, &table, &bytes);
                assert_eq!(general.0, want);
                assert_eq!(run_keyed(f, &keys, &table, &bytes), general);
                let mut bad = bytes.clone();
                for flip in [0, 9, 200, bad.len() / 2, bad.len() - 1] {
                    if flip >= bad.len() {
                        continue;
                    }
                    bad[flip] ^= 0xA5;
                    if Decoder::<WIDE>::new(&bad).is_ok() {
                        let general = run_general(&keys, &table, &bad);
                        assert_eq!(
                            run_keyed(f, &keys, &table, &bad),
                            general,
                            "n={n} flip={flip}"
                        );
                    }
                    bad[flip] ^= 0xA5;
                }
            }
        }
    }

    type KeyedLoop = fn(&mut Decoder<WIDE>, &[u8], &KeyedTable, &mut [u8]) -> usize;
    type Decoded = (Vec<u8>, [u32; WIDE], usize, bool);

    fn run_keyed(f: KeyedLoop, keys: &[u8], table: &KeyedTable, stream: &[u8]) -> Decoded {
        let (splits, offsets) = (&table.splits, &table.offsets);
        let mut dec = Decoder::<WIDE>::new(stream).unwrap();
        let mut out = vec![0u8; 2 * keys.len()];
        let done = f(&mut dec, keys, table, &mut out);
        assert_eq!(done % WIDE, 0);
        let entries: Vec<u32> = keys[done..]
            .iter()
            .map(|&k| splits[usize::from(k)])
            .collect();
        let mut tail = vec![0u16; entries.len()];
        dec.decode_positions(&entries, &mut tail);
        for (j, r) in tail.into_iter().enumerate() {
            let code = offsets[usize::from(keys[done + j])].wrapping_add(r);
            out[2 * (done + j)..2 * (done + j) + 2].copy_from_slice(&code.to_le_bytes());
        }
        let state = (dec.states, dec.pos);
        (out, state.0, state.1, dec.finish().is_ok())
    }

    fn run_general(keys: &[u8], table: &KeyedTable, stream: &[u8]) -> Decoded {
        run_keyed(|_, _, _, _| 0, keys, table, stream)
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn portable_and_simd_position_loops_agree() {
        assert!(
            std::arch::is_x86_feature_detected!("avx2"),
            "this test compares the AVX2 loop with the portable one: it needs an AVX2 CPU"
        );
        fn simd(dec: &mut Decoder<WIDE>, e: &[u32], out: &mut [u16]) -> usize {
            // SAFETY: the test checked the CPU.
            unsafe { avx2::decode_positions(dec, e, out) }
        }
        for (n, seed) in [(1, 1), (32, 2), (1000, 3), (100_003, 4)] {
            let (entries, positions, mut bytes) = stream(n, seed);
            let portable = run(decode_positions_portable, &entries, &bytes);
            assert_eq!(portable.0, positions);
            assert!(portable.3);
            assert_eq!(run(simd, &entries, &bytes), portable);
            for flip in [0, 9, 200, bytes.len() / 2, bytes.len() - 1] {
                if flip >= bytes.len() {
                    continue;
                }
                bytes[flip] ^= 0xA5;
                if Decoder::<WIDE>::new(&bytes).is_ok() {
                    let p = run(decode_positions_portable, &entries, &bytes);
                    assert_eq!(run(simd, &entries, &bytes), p, "n={n} flip={flip}");
                }
                bytes[flip] ^= 0xA5;
            }
        }
    }
}

#[cfg(test)]
mod pair_tests {
    use super::*;
    use crate::codec::freq::FreqTable;
    use crate::codec::rans::{PAIR_RUN, PAIR_RUN_V2, code_last_first};

    /// A pair stream as the residual writes its whole values, in runs of `run`: high bytes
    /// from a peaked table, then positions over 256 or, under the row's top byte, fewer.
    /// Returns the table, the pairs' tops and unders, the symbols and positions, the stream.
    #[allow(clippy::type_complexity)]
    fn stream(
        n: usize,
        run: usize,
        seed: u32,
    ) -> (FreqTable, Vec<u32>, Vec<u32>, Vec<u8>, Vec<u16>, Vec<u8>) {
        let mut r = seed;
        let mut next = move || {
            r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            r >> 8
        };
        let (mut tops, mut unders, mut syms, mut positions) = (vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let top = 100 + next() % 20;
            let sym = (top - next() % 4) as u8;
            let under = 1 + next() % 256;
            let split = Split::second_of_pair(sym, top, Split::of(under).packed());
            let width = if u32::from(sym) == top { under } else { 256 };
            tops.push(top);
            unders.push(Split::of(under).packed());
            syms.push(sym);
            positions.push((next() % width) as u16);
            debug_assert_eq!(Split(split), Split::of(width));
        }
        let mut counts = [0u64; 256];
        syms.iter().for_each(|&b| counts[b as usize] += 1);
        let table = FreqTable::from_counts(&counts).unwrap().with_slots();
        let symbols: Vec<_> = (0..n)
            .map(|j| {
                let width = if u32::from(syms[j]) == tops[j] {
                    Split(unders[j])
                } else {
                    Split::of(256)
                };
                (table.symbol(syms[j]), width.symbol(positions[j].into()))
            })
            .collect();
        let last_first = symbols
            .chunks(run)
            .enumerate()
            .rev()
            .flat_map(|(k, pairs)| {
                let lane = move |j: usize| run * k + j;
                let seconds = pairs
                    .iter()
                    .enumerate()
                    .rev()
                    .map(move |(j, p)| (p.1, lane(j)));
                let firsts = pairs
                    .iter()
                    .enumerate()
                    .rev()
                    .map(move |(j, p)| (p.0, lane(j)));
                seconds.chain(firsts)
            });
        let mut out = Vec::new();
        code_last_first::<WIDE>(2 * n, last_first, &mut out);
        (table, tops, unders, syms, positions, out)
    }

    type PairLoop =
        fn(&mut Decoder<WIDE>, &TableView, &[u32], &[u32], &mut [u8], &mut [u16]) -> usize;

    /// The SIMD pair loop for runs of `run` on this CPU, by name, where it can run.
    fn simd_loops(run: usize) -> Vec<(&'static str, PairLoop)> {
        let mut loops: Vec<(&'static str, PairLoop)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY (all): each is listed only when the CPU has what it needs.
            if std::arch::is_x86_feature_detected!("avx2") {
                match run {
                    PAIR_RUN_V2 => loops.push(("avx2 runs of 8", |d, t, a, b, s, p| unsafe {
                        avx2::decode_pairs(d, t, a, b, s, p)
                    })),
                    _ => loops.push(("avx2 runs of 32", |d, t, a, b, s, p| unsafe {
                        avx2::decode_pairs_grouped(d, t, a, b, s, p)
                    })),
                }
            }
            if run == PAIR_RUN && super::super::wide_avx512::cpu_has_avx512() {
                loops.push(("avx512 runs of 32", |d, t, a, b, s, p| unsafe {
                    super::super::wide_avx512::decode_pairs(d, t, a, b, s, p)
                }));
            }
        }
        loops
    }

    type Decoded = (Vec<u8>, Vec<u16>, [u32; WIDE], usize, bool);

    /// `fast` (if any) on whole groups, then the rest symbol by symbol.
    fn decode(
        fast: Option<PairLoop>,
        run: usize,
        table: &FreqTable,
        tops: &[u32],
        unders: &[u32],
        bytes: &[u8],
    ) -> Decoded {
        let mut dec = Decoder::<WIDE>::new(bytes).unwrap();
        let n = tops.len();
        let (mut syms, mut positions) = (vec![0u8; n], vec![0u16; n]);
        let view = table.view();
        let done = fast.map_or(0, |f| {
            f(&mut dec, &view, tops, unders, &mut syms, &mut positions)
        });
        assert_eq!(done % 32, 0);
        dec.decode_pairs_from(done, &view, 0, run, tops, unders, &mut syms, &mut positions);
        let (states, pos) = (dec.states, dec.pos);
        (syms, positions, states, pos, dec.finish().is_ok())
    }

    /// Every SIMD pair loop gives what the portable loop gives (symbols, positions, states,
    /// stream position), for runs of 8 and of 32, on valid streams (which decode to what was
    /// coded) and on damaged ones; and a long stream decoded in the other run length does not
    /// come out right.
    #[test]
    fn simd_pair_loops_agree_with_the_portable_one() {
        let mut checked = 0;
        for run in [PAIR_RUN_V2, PAIR_RUN] {
            for (n, seed) in [(5, 1), (32, 2), (100, 3), (1000, 4), (4103, 5)] {
                let (table, tops, unders, syms, positions, bytes) = stream(n, run, seed);
                let portable = decode(None, run, &table, &tops, &unders, &bytes);
                assert_eq!(
                    (&portable.0, &portable.1, portable.4),
                    (&syms, &positions, true)
                );
                let other = if run == PAIR_RUN {
                    PAIR_RUN_V2
                } else {
                    PAIR_RUN
                };
                // (Fewer pairs code under 16 bits per lane: no words, so no order to get wrong.)
                if n >= 1000 {
                    let wrong = decode(None, other, &table, &tops, &unders, &bytes);
                    assert!((wrong.0, wrong.1) != (syms.clone(), positions.clone()));
                }
                let mut damaged = bytes.clone();
                damaged[bytes.len() * 2 / 3] ^= 0x5A;
                for input in [&bytes, &damaged] {
                    let want = decode(None, run, &table, &tops, &unders, input);
                    for (name, f) in simd_loops(run) {
                        let got = decode(Some(f), run, &table, &tops, &unders, input);
                        assert_eq!(got, want, "{name}, {n} pairs");
                        checked += 1;
                    }
                }
            }
        }
        if checked == 0 {
            eprintln!("SKIPPED: no SIMD pair loop runs on this CPU");
        }
    }
}
