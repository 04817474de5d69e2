//! The 32-lane encoder of table symbols, positions and whole values' pairs, eight lanes a step
//! with AVX2 or sixteen with AVX-512: the int8 plane and the float exponent planes, where the
//! scalar coder spent a sixth of an encode, and the residual's streams. It writes the
//! same states and words as the scalar coder (tested below): it codes the groups of 32 last
//! first, each group's vectors last first, and keeps a vector's emitted words in lane order,
//! which is where the scalar coder, going lane by lane backwards, puts them in [`BackWords`].

use super::{BackWords, QUOTIENT_BIAS, TABLE_BITS, WIDE, simd_enabled};

/// How many of `n` symbols (a prefix) [`code_groups`] takes: whole groups of 32 on 32-lane
/// streams when AVX2 runs, else none.
pub(super) fn grouped<const L: usize>(n: usize) -> usize {
    if L == WIDE && simd_enabled() {
        n / WIDE * WIDE
    } else {
        0
    }
}

/// Codes `bytes` (whole groups of 32, byte `i` on lane `i`) into `states` and `words`, after
/// the symbols that follow them were coded, with a table of `bits` (see
/// [`super::TableView::packed`]). `inv_of[b]` is `1 / freq` of byte `b`. Call only with what
/// [`grouped`] allows.
pub(super) fn code_groups(
    states: &mut [u32],
    packed: &[u32; 256],
    bits: u32,
    inv_of: &[f64; 256],
    bytes: &[u8],
    words: &mut BackWords,
) {
    assert!(
        simd_enabled(),
        "code_groups runs only where grouped allows it"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU supports AVX-512 F and BW (avx512_enabled checked it), else AVX2
    // (simd_enabled did).
    unsafe {
        match super::avx512_enabled() {
            true => avx512::code_groups(states, packed, bits, inv_of, bytes, words),
            false => avx2::code_groups(states, packed, bits, inv_of, bytes, words),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (states, packed, bits, inv_of, bytes, words);
}

/// Codes `positions` (whole groups of 32; see [`super::code_positions`]) into `states` and
/// `words`, after the elements that follow them. Call only with what [`grouped`] allows.
pub(super) fn code_position_groups(states: &mut [u32], positions: &[u32], words: &mut BackWords) {
    assert!(
        simd_enabled(),
        "code_position_groups runs only where grouped allows it"
    );
    // AVX2 only: sixteen lanes a step with AVX-512 ran no faster (synthetic encode, 50 vs
    // 52-55 ms of samples), bound by reading the positions (4 bytes an element).
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU supports AVX2 (simd_enabled checked it).
    unsafe {
        avx2::code_position_groups(states, positions, words)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (states, positions, words);
}

/// Codes whole runs of 32 pairs (see [`super::code_pair_runs`]) into `states` and `words`,
/// after the pairs that follow them: per run, its lows then its high bytes, last first. Call
/// only with what [`grouped`] allows.
pub(super) fn code_pair_groups(
    states: &mut [u32],
    packed: &[u32; 256],
    inv_of: &[f64; 256],
    highs: &[u8],
    lows: &[u32],
    words: &mut BackWords,
) {
    assert!(
        simd_enabled(),
        "code_pair_groups runs only where grouped allows it"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU supports AVX-512 F and BW (avx512_enabled checked it), else AVX2
    // (simd_enabled did).
    unsafe {
        match super::avx512_enabled() {
            true => avx512::code_pair_groups(states, packed, inv_of, highs, lows, words),
            false => avx2::code_pair_groups(states, packed, inv_of, highs, lows, words),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (states, packed, inv_of, highs, lows, words);
}

/// Where the SIMD coders put words: below `at` in `buf`, back to front. Each instruction set
/// has its own `words` step, which keeps a vector's emitted words in lane order.
#[cfg(target_arch = "x86_64")]
struct Emit {
    buf: *mut u16,
    at: usize,
}

/// The SIMD coders' frame: the 32 states in `N` vectors `V` (lanes `32 k / N..` in vector `k`),
/// then for each of `groups` groups of `32 S / N` symbols, last first, and each of its `S`
/// vectors of symbols, last first, `step(g, s, states, emit)` gives the states of vector
/// `s % N` after its symbols.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn last_first<V: Copy, const N: usize, const S: usize>(
    states: &mut [u32],
    groups: usize,
    words: &mut BackWords,
    mut step: impl FnMut(usize, usize, V, &mut Emit) -> V,
) {
    assert_eq!(states.len(), WIDE, "the SIMD coders code 32 lanes");
    assert_eq!(
        std::mem::size_of::<[V; N]>(),
        4 * WIDE,
        "N vectors hold the 32 states"
    );
    // Each symbol emits at most one word, and BackWords leaves SLACK below the last one:
    // every store of a vector's words below `at` stays in the buffer.
    assert!(words.at >= WIDE / N * S * groups + BackWords::SLACK);
    let mut emit = Emit {
        buf: words.words.as_mut_ptr(),
        at: words.at,
    };
    // SAFETY: the 32 u32 states are the bytes of N vectors (asserted; unaligned access).
    let mut x: [V; N] = unsafe { std::ptr::read_unaligned(states.as_ptr().cast()) };
    for g in (0..groups).rev() {
        for s in (0..S).rev() {
            x[s % N] = step(g, s, x[s % N], &mut emit);
        }
    }
    // SAFETY: as the read above.
    unsafe { std::ptr::write_unaligned(states.as_mut_ptr().cast(), x) };
    words.at = emit.at;
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BackWords, Emit, QUOTIENT_BIAS, TABLE_BITS, WIDE, last_first};

    /// For each mask of the eight lanes that emit a word, the emitting lanes in order, at the
    /// top of the eight: where `emit` moves each lane's word.
    static RIGHT_PACK: [[u32; 8]; 256] = super::super::wide::packed_lanes(true);

    impl Emit {
        /// Keeps the low words of the lanes of `v` not in `keep` (the lanes that emit), in
        /// lane order, below `at`, which moves down past them.
        ///
        /// # Safety
        /// `buf` is valid for eight u16s below `at`.
        #[inline]
        #[target_feature(enable = "avx2,popcnt")]
        unsafe fn words_avx2(&mut self, v: __m256i, keep: __m256i) {
            let low_words = _mm256_setr_epi8(
                0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, //
                0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
            );
            let m = !_mm256_movemask_ps(_mm256_castsi256_ps(keep)) as usize & 0xFF;
            // SAFETY: RIGHT_PACK has 256 rows of eight; the caller vouches for the store.
            unsafe {
                let order = _mm256_loadu_si256(RIGHT_PACK[m].as_ptr().cast());
                let w = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(v, order), low_words);
                let w = _mm256_permute4x64_epi64::<0b00_00_10_00>(w);
                _mm_storeu_si128(self.buf.add(self.at - 8).cast(), _mm256_castsi256_si128(w));
            }
            self.at -= m.count_ones() as usize;
        }
    }

    /// Eight u32s as two vectors of four doubles (exact): flipped to signed, converted,
    /// shifted back.
    #[inline]
    #[target_feature(enable = "avx2,popcnt")]
    fn as_f64(v: __m256i) -> [__m256d; 2] {
        let s = _mm256_xor_si256(v, _mm256_set1_epi32(i32::MIN));
        let two31 = _mm256_set1_pd(2_147_483_648.0);
        [
            _mm256_add_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(s)), two31),
            _mm256_add_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256::<1>(s)), two31),
        ]
    }

    /// Codes eight table bytes `b` (on the lanes of `v`) with `packed` and `inv_of` as
    /// [`code_groups`] takes them: the states after them.
    ///
    /// # Safety
    /// The frame keeps SLACK words below `emit.at`.
    #[inline]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn table_step(
        v: __m256i,
        b: [u8; 8],
        packed: &[u32; 256],
        bits: __m256i,
        inv_of: &[f64; 256],
        emit: &mut Emit,
    ) -> __m256i {
        let [b0, b1, b2, b3, b4, b5, b6, b7] = b.map(usize::from);
        let e = _mm256_setr_epi32(
            packed[b0] as i32,
            packed[b1] as i32,
            packed[b2] as i32,
            packed[b3] as i32,
            packed[b4] as i32,
            packed[b5] as i32,
            packed[b6] as i32,
            packed[b7] as i32,
        );
        let inv_lo = _mm256_setr_pd(inv_of[b0], inv_of[b1], inv_of[b2], inv_of[b3]);
        let inv_hi = _mm256_setr_pd(inv_of[b4], inv_of[b5], inv_of[b6], inv_of[b7]);
        let low = _mm256_set1_epi32(0xFFFF);
        let (freq, start) = (_mm256_and_si256(e, low), _mm256_srli_epi32::<16>(e));
        // A lane emits when x >= freq << (32 - bits); both sides of the comparison below are
        // under 2^15, so a signed one does.
        let top = _mm256_srlv_epi32(v, _mm256_sub_epi32(_mm256_set1_epi32(32), bits));
        let keep = _mm256_cmpgt_epi32(freq, top);
        // SAFETY: the caller vouches for the room below `at`.
        unsafe { emit.words_avx2(v, keep) };
        let y = _mm256_blendv_epi8(_mm256_srli_epi32::<16>(v), v, keep);
        let [y_lo, y_hi] = as_f64(y);
        // The quotient exactly as the scalar coder takes it: multiply, add the bias.
        let bias = _mm256_set1_pd(QUOTIENT_BIAS);
        let q_lo = _mm256_cvttpd_epi32(_mm256_add_pd(_mm256_mul_pd(y_lo, inv_lo), bias));
        let q_hi = _mm256_cvttpd_epi32(_mm256_add_pd(_mm256_mul_pd(y_hi, inv_hi), bias));
        let q = _mm256_set_m128i(q_hi, q_lo);
        let rem = _mm256_sub_epi32(y, _mm256_mullo_epi32(q, freq));
        _mm256_add_epi32(_mm256_add_epi32(_mm256_sllv_epi32(q, bits), rem), start)
    }

    /// Codes eight positions `eight` (packed as [`super::super::code_positions`] takes them;
    /// a lane without a symbol keeps its state): per lane, as table symbols code, but at 16
    /// bits and with a quotient by division (exact: the double nearest `y / freq` lies within
    /// `2^-21` of it, while a non-integer quotient is `1 / freq >= 2^-16` from the next
    /// integer), which here costs less than looking up each element's reciprocal.
    ///
    /// # Safety
    /// The frame keeps SLACK words below `emit.at`.
    #[inline]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn position_step(v: __m256i, eight: &[u32], emit: &mut Emit) -> __m256i {
        let (low, one) = (_mm256_set1_epi32(0xFFFF), _mm256_set1_epi32(1));
        assert_eq!(eight.len(), 8);
        // SAFETY: eight u32s.
        let p = unsafe { _mm256_loadu_si256(eight.as_ptr().cast()) };
        let none = _mm256_cmpeq_epi32(p, _mm256_set1_epi32(-1));
        let start = _mm256_and_si256(p, low);
        let freq = _mm256_add_epi32(_mm256_srli_epi32::<16>(p), one);
        // Emits when x >= freq << 16; both sides below are at most 2^16.
        let keep = _mm256_cmpgt_epi32(freq, _mm256_srli_epi32::<16>(v));
        let keep = _mm256_or_si256(keep, none);
        // SAFETY: the caller vouches for the room below `at`.
        unsafe { emit.words_avx2(v, keep) };
        let y = _mm256_blendv_epi8(_mm256_srli_epi32::<16>(v), v, keep);
        let [y_lo, y_hi] = as_f64(y);
        let f_lo = _mm256_cvtepi32_pd(_mm256_castsi256_si128(freq));
        let f_hi = _mm256_cvtepi32_pd(_mm256_extracti128_si256::<1>(freq));
        let q_lo = _mm256_cvttpd_epi32(_mm256_div_pd(y_lo, f_lo));
        let q_hi = _mm256_cvttpd_epi32(_mm256_div_pd(y_hi, f_hi));
        let q = _mm256_set_m128i(q_hi, q_lo);
        let rem = _mm256_sub_epi32(y, _mm256_mullo_epi32(q, freq));
        let coded = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32::<16>(q), rem), start);
        _mm256_blendv_epi8(coded, v, none)
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn code_groups(
        states: &mut [u32],
        packed: &[u32; 256],
        bits: u32,
        inv_of: &[f64; 256],
        bytes: &[u8],
        words: &mut BackWords,
    ) {
        assert!(bytes.len().is_multiple_of(WIDE));
        let bits = _mm256_set1_epi32(bits as i32);
        last_first::<__m256i, 4, 4>(states, bytes.len() / WIDE, words, |g, k, v, emit| {
            let at = WIDE * g + 8 * k;
            let b: [u8; 8] = bytes[at..at + 8].try_into().expect("eight bytes");
            // SAFETY: the frame keeps SLACK words below `at`.
            unsafe { table_step(v, b, packed, bits, inv_of, emit) }
        });
    }

    /// Groups of 32 positions (see `code_position_groups`).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn code_position_groups(
        states: &mut [u32],
        positions: &[u32],
        words: &mut BackWords,
    ) {
        assert!(positions.len().is_multiple_of(WIDE));
        last_first::<__m256i, 4, 4>(states, positions.len() / WIDE, words, |g, k, v, emit| {
            let at = WIDE * g + 8 * k;
            // SAFETY: the frame keeps SLACK words below `at`.
            unsafe { position_step(v, &positions[at..at + 8], emit) }
        });
    }

    /// Runs of 32 pairs (see `code_pair_groups`): a group of 64 symbols per run, its high
    /// bytes in the first four vectors and its lows in the last four.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn code_pair_groups(
        states: &mut [u32],
        packed: &[u32; 256],
        inv_of: &[f64; 256],
        highs: &[u8],
        lows: &[u32],
        words: &mut BackWords,
    ) {
        assert!(highs.len().is_multiple_of(WIDE) && highs.len() == lows.len());
        let bits = _mm256_set1_epi32(TABLE_BITS as i32);
        last_first::<__m256i, 4, 8>(states, highs.len() / WIDE, words, |g, s, v, emit| {
            let at = WIDE * g + 8 * (s % 4);
            // SAFETY: the frame keeps SLACK words below `at`.
            unsafe {
                match s < 4 {
                    true => {
                        let b: [u8; 8] = highs[at..at + 8].try_into().expect("eight bytes");
                        table_step(v, b, packed, bits, inv_of, emit)
                    }
                    false => position_step(v, &lows[at..at + 8], emit),
                }
            }
        });
    }
}

/// The table and pair coders sixteen lanes a step with AVX-512 F and BW: the 32 states in two
/// vectors, each step's emitted words compressed into lane order and stored under a mask.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BackWords, Emit, QUOTIENT_BIAS, TABLE_BITS, WIDE, last_first};

    impl Emit {
        /// Keeps the low words of the lanes of `v` in `emits`, in lane order, below `at`,
        /// which moves down past them.
        ///
        /// # Safety
        /// `buf` is valid for sixteen u16s below `at`.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,popcnt")]
        unsafe fn words_avx512(&mut self, v: __m512i, emits: __mmask16) {
            let n = emits.count_ones() as usize;
            let w = _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(emits, v));
            let w = _mm512_castsi256_si512(w);
            // SAFETY: the caller vouches for the n <= 16 words below `at`.
            unsafe {
                _mm512_mask_storeu_epi16(self.buf.add(self.at - n).cast(), (1u32 << n) - 1, w)
            };
            self.at -= n;
        }
    }

    /// `y - q freq` and `q` for the quotients `q` of the doubles `y_lo`, `y_hi` (lanes 0-7,
    /// 8-15) by `freq`, given `1 / freq` as `inv` halves (`None`: divide).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,popcnt")]
    pub(super) fn quotients(
        y: __m512i,
        freq: __m512i,
        inv: Option<[__m512d; 2]>,
    ) -> (__m512i, __m512i) {
        let (y_lo, y_hi) = (
            _mm512_cvtepu32_pd(_mm512_castsi512_si256(y)),
            _mm512_cvtepu32_pd(_mm512_extracti64x4_epi64::<1>(y)),
        );
        let (q_lo, q_hi) = match inv {
            // The quotient exactly as the scalar coder takes it: multiply, add the bias.
            Some([inv_lo, inv_hi]) => {
                let bias = _mm512_set1_pd(QUOTIENT_BIAS);
                (
                    _mm512_cvttpd_epu32(_mm512_fmadd_pd(y_lo, inv_lo, bias)),
                    _mm512_cvttpd_epu32(_mm512_fmadd_pd(y_hi, inv_hi, bias)),
                )
            }
            // Divided, as the AVX2 position coder does (exact: see `position_step` there).
            None => {
                let f_lo = _mm512_cvtepu32_pd(_mm512_castsi512_si256(freq));
                let f_hi = _mm512_cvtepu32_pd(_mm512_extracti64x4_epi64::<1>(freq));
                (
                    _mm512_cvttpd_epu32(_mm512_div_pd(y_lo, f_lo)),
                    _mm512_cvttpd_epu32(_mm512_div_pd(y_hi, f_hi)),
                )
            }
        };
        let q = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q_lo), q_hi);
        (_mm512_sub_epi32(y, _mm512_mullo_epi32(q, freq)), q)
    }

    /// Sixteen table bytes `b` on the lanes of `v` (see the AVX2 `table_step`).
    ///
    /// # Safety
    /// The frame keeps SLACK words below `emit.at`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,popcnt")]
    unsafe fn table_step(
        v: __m512i,
        b: &[u8],
        packed: &[u32; 256],
        bits: __m512i,
        inv_of: &[f64; 256],
        emit: &mut Emit,
    ) -> __m512i {
        assert_eq!(b.len(), 16);
        // SAFETY: sixteen bytes; every byte indexes the 256 entries of `packed` and `inv_of`.
        let (e, inv) = unsafe {
            let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.as_ptr().cast()));
            let e = _mm512_i32gather_epi32::<4>(b, packed.as_ptr().cast());
            let inv_lo = _mm512_i32gather_pd::<8>(_mm512_castsi512_si256(b), inv_of.as_ptr());
            let b_hi = _mm512_extracti64x4_epi64::<1>(b);
            let inv_hi = _mm512_i32gather_pd::<8>(b_hi, inv_of.as_ptr());
            (e, [inv_lo, inv_hi])
        };
        let freq = _mm512_and_si512(e, _mm512_set1_epi32(0xFFFF));
        let start = _mm512_srli_epi32::<16>(e);
        // Emits when x >= freq << (32 - bits).
        let top = _mm512_srlv_epi32(v, _mm512_sub_epi32(_mm512_set1_epi32(32), bits));
        let emits = _mm512_cmpge_epu32_mask(top, freq);
        // SAFETY: the caller vouches for the room below `at`.
        unsafe { emit.words_avx512(v, emits) };
        let y = _mm512_mask_srli_epi32::<16>(v, emits, v);
        let (rem, q) = quotients(y, freq, Some(inv));
        _mm512_add_epi32(_mm512_add_epi32(_mm512_sllv_epi32(q, bits), rem), start)
    }

    /// Sixteen positions (see the AVX2 `position_step`), the lows of pairs; a lane without a
    /// symbol keeps its state.
    ///
    /// # Safety
    /// The frame keeps SLACK words below `emit.at`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,popcnt")]
    unsafe fn position_step(v: __m512i, sixteen: &[u32], emit: &mut Emit) -> __m512i {
        assert_eq!(sixteen.len(), 16);
        // SAFETY: sixteen u32s.
        let p = unsafe { _mm512_loadu_si512(sixteen.as_ptr().cast()) };
        let some = _mm512_cmpneq_epi32_mask(p, _mm512_set1_epi32(-1));
        let start = _mm512_and_si512(p, _mm512_set1_epi32(0xFFFF));
        let freq = _mm512_add_epi32(_mm512_srli_epi32::<16>(p), _mm512_set1_epi32(1));
        // Emits when x >= freq << 16.
        let emits = some & _mm512_cmpge_epu32_mask(_mm512_srli_epi32::<16>(v), freq);
        // SAFETY: the caller vouches for the room below `at`.
        unsafe { emit.words_avx512(v, emits) };
        let y = _mm512_mask_srli_epi32::<16>(v, emits, v);
        let (rem, q) = quotients(y, freq, None);
        let coded = _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32::<16>(q), rem), start);
        _mm512_mask_blend_epi32(some, v, coded)
    }

    /// # Safety
    /// The CPU must support AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw,popcnt")]
    pub(super) unsafe fn code_groups(
        states: &mut [u32],
        packed: &[u32; 256],
        bits: u32,
        inv_of: &[f64; 256],
        bytes: &[u8],
        words: &mut BackWords,
    ) {
        assert!(bytes.len().is_multiple_of(WIDE));
        let bits = _mm512_set1_epi32(bits as i32);
        last_first::<__m512i, 2, 2>(states, bytes.len() / WIDE, words, |g, s, v, emit| {
            let at = WIDE * g + 16 * s;
            // SAFETY: the frame keeps SLACK words below `at`.
            unsafe { table_step(v, &bytes[at..at + 16], packed, bits, inv_of, emit) }
        });
    }

    /// # Safety
    /// The CPU must support AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw,popcnt")]
    pub(super) unsafe fn code_pair_groups(
        states: &mut [u32],
        packed: &[u32; 256],
        inv_of: &[f64; 256],
        highs: &[u8],
        lows: &[u32],
        words: &mut BackWords,
    ) {
        assert!(highs.len().is_multiple_of(WIDE) && highs.len() == lows.len());
        let bits = _mm512_set1_epi32(TABLE_BITS as i32);
        last_first::<__m512i, 2, 4>(states, highs.len() / WIDE, words, |g, s, v, emit| {
            let at = WIDE * g + 16 * (s % 2);
            // SAFETY: the frame keeps SLACK words below `at`.
            unsafe {
                match s < 2 {
                    true => table_step(v, &highs[at..at + 16], packed, bits, inv_of, emit),
                    false => position_step(v, &lows[at..at + 16], emit),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::codec::freq::FreqTable;
    use crate::codec::rans::{
        Encoder, NARROW, NO_SYMBOL, Split, Symbol, TableView, WIDE, code_pair_runs, code_positions,
        code_table_bytes,
    };

    /// Bytes from a peaked distribution (as int8 weights), or a single repeated byte.
    fn bytes(n: usize, seed: u32, single: bool) -> Vec<u8> {
        let mut r = seed;
        (0..n)
            .map(|_| {
                r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if single {
                    7
                } else {
                    ((r >> 16) as i16 as i32 / 300) as i8 as u8
                }
            })
            .collect()
    }

    fn queued<const L: usize>(table: &TableView, data: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::<L>::with_capacity(data.len());
        for (i, &b) in data.iter().enumerate() {
            enc.push(table.symbol(b), i);
        }
        let mut out = Vec::new();
        enc.finish_into(&mut out);
        out
    }

    /// Whatever path runs here (AVX2 groups, or with `QSTORE_SCALAR` the scalar coder),
    /// coding bytes directly gives the stream that queuing the symbols one by one gives.
    #[test]
    fn table_bytes_code_as_queued_symbols() {
        for (n, seed) in [
            (0, 1),
            (1, 2),
            (31, 3),
            (32, 4),
            (33, 5),
            (1000, 6),
            (100_003, 7),
        ] {
            for single in [false, true] {
                let data = bytes(n, seed, single);
                let mut counts = [0u64; 256];
                data.iter().for_each(|&b| counts[b as usize] += 1);
                let Some(table) = FreqTable::from_counts(&counts) else {
                    continue;
                };
                let view = table.view();
                let mut direct = Vec::new();
                code_table_bytes::<WIDE>(&view, &data, &mut direct);
                assert_eq!(
                    direct,
                    queued::<WIDE>(&view, &data),
                    "n={n} single={single}"
                );
                let mut narrow = Vec::new();
                code_table_bytes::<NARROW>(&view, &data, &mut narrow);
                assert_eq!(
                    narrow,
                    queued::<NARROW>(&view, &data),
                    "n={n} single={single}"
                );
            }
        }
    }

    /// The AVX-512 coders' quotients, by division (lows) and by the scalar coder's table of
    /// reciprocals (table symbols), against integer division: states below `freq << 21` (and
    /// 2^32), past any a coder divides, at the multiples of `freq` and just below them, where
    /// a quotient that is not exact would be one off.
    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 CPU (avx512f, avx512bw); CI skips it, saying so, on others"]
    fn avx512_quotients_are_integer_division() {
        use std::arch::x86_64::*;
        crate::codec::rans::wide::needs_avx512("checks the AVX-512 coders' quotients");
        let inv = crate::codec::rans::reciprocals();
        let mut r: u64 = 1;
        let mut next = || {
            r = r
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            r >> 24
        };
        for round in 0..20_000u64 {
            let freq: [u32; 16] = std::array::from_fn(|i| match (round + i as u64) % 4 {
                0 => 1 + (next() % 65_536) as u32,
                1 => 65_536 - (next() % 4) as u32,
                2 => 1 + (next() % 16) as u32,
                _ => 1 + (next() % 4096) as u32,
            });
            let y: [u32; 16] = std::array::from_fn(|i| {
                let top = (u64::from(freq[i]) << 21).min(1 << 32);
                let y = match next() % 3 {
                    0 => next() % top,
                    1 => (next() % (1 << 21)) * u64::from(freq[i]),
                    _ => ((next() % (1 << 21)) * u64::from(freq[i])).saturating_sub(1),
                };
                y.min(top - 1) as u32
            });
            for table in [false, true] {
                // SAFETY: the CPU has AVX-512 F and BW (checked above); 16 u32s and doubles.
                let (rem, q) = unsafe {
                    let yv = _mm512_loadu_si512(y.as_ptr().cast());
                    let fv = _mm512_loadu_si512(freq.as_ptr().cast());
                    let i: [f64; 16] = std::array::from_fn(|k| inv[freq[k] as usize]);
                    let halves = [
                        _mm512_loadu_pd(i.as_ptr()),
                        _mm512_loadu_pd(i[8..].as_ptr()),
                    ];
                    super::avx512::quotients(yv, fv, table.then_some(halves))
                };
                let lanes = |v: __m512i| -> [u32; 16] {
                    let mut out = [0u32; 16];
                    // SAFETY: 16 u32s of room; the CPU has AVX-512 F (checked above).
                    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) };
                    out
                };
                let (rem, q) = (lanes(rem), lanes(q));
                for k in 0..16 {
                    assert_eq!(
                        (q[k], rem[k]),
                        (y[k] / freq[k], y[k] % freq[k]),
                        "{} / {}",
                        y[k],
                        freq[k]
                    );
                }
            }
        }
    }

    /// A thread's word buffer passes from a long stream to shorter ones: their bytes are
    /// those a fresh thread writes (stale words past a stream's end are never read).
    #[test]
    fn a_reused_word_buffer_writes_what_a_fresh_one_does() {
        let code = |n: usize, seed: u32| {
            let data = bytes(n, seed, false);
            let mut counts = [0u64; 256];
            data.iter().for_each(|&b| counts[b as usize] += 1);
            let table = FreqTable::from_counts(&counts).unwrap();
            let mut out = Vec::new();
            code_table_bytes::<WIDE>(&table.view(), &data, &mut out);
            out
        };
        let fresh: Vec<Vec<u8>> = [(1000, 2), (33, 3)]
            .iter()
            .map(|&(n, seed)| std::thread::spawn(move || code(n, seed)).join().unwrap())
            .collect();
        let reused = std::thread::spawn(move || {
            code(300_000, 1);
            [code(1000, 2), code(33, 3)]
        })
        .join()
        .unwrap();
        assert_eq!(reused.as_slice(), fresh.as_slice());
    }

    /// Pairs in runs of 32 (the SIMD groups on 32 lanes) and of 8 (older layouts, scalar),
    /// on 32 and 4 lanes, with lows over every width: coded directly, the stream that queuing
    /// each run's high bytes, then its lows, gives.
    #[test]
    fn pairs_code_as_queued_symbols() {
        fn check<const L: usize>(n: usize, run: usize, seed: u32) {
            let highs = bytes(n, seed, false);
            let mut counts = [0u64; 256];
            highs.iter().for_each(|&b| counts[b as usize] += 1);
            counts[0] += 1;
            let table = FreqTable::from_counts(&counts).unwrap();
            let mut r = seed;
            let lows: Vec<Symbol> = (0..n)
                .map(|_| {
                    r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let width = 1 + (r >> 8) % if r.is_multiple_of(3) { 32_768 } else { 256 };
                    Split::of(width).symbol((r >> 4) % width)
                })
                .collect();
            let mut enc = Encoder::<L>::with_capacity(2 * n);
            for first in (0..n).step_by(run) {
                let last = (first + run).min(n);
                (first..last).for_each(|i| enc.push(table.symbol(highs[i]), i));
                (first..last).for_each(|i| enc.push(lows[i], i));
            }
            let mut queued = Vec::new();
            enc.finish_into(&mut queued);
            let packed: Vec<u32> = lows.iter().map(|s| s.start | (s.freq - 1) << 16).collect();
            let mut direct = Vec::new();
            code_pair_runs::<L>(table.view().packed, run, &highs, &packed, &mut direct);
            assert_eq!(direct, queued, "n={n} run={run} lanes={L}");
        }
        for (n, seed) in [(0, 1), (1, 2), (32, 3), (40, 4), (1000, 5), (50_001, 6)] {
            for run in [8, 32] {
                check::<WIDE>(n, run, seed);
                check::<NARROW>(n, run, seed);
            }
        }
    }

    /// Positions over widths from 1 to 2^15 with a share of elements that have none: coded
    /// directly, the stream that queuing the symbols one by one gives.
    #[test]
    fn positions_code_as_queued_symbols() {
        for (n, seed) in [(0, 1), (1, 2), (32, 3), (33, 4), (1000, 5), (100_003, 6)] {
            let mut r: u32 = seed;
            let mut next = || {
                r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                r >> 8
            };
            let mut enc = Encoder::<WIDE>::with_capacity(n);
            let positions: Vec<u32> = (0..n)
                .map(|i| {
                    let width = match next() % 8 {
                        0 => return NO_SYMBOL,
                        1 => 1 + next() % 32_768,
                        2 => 1,
                        _ => 1 + next() % 300,
                    };
                    let s = Split::of(width).symbol(next() % width);
                    enc.push(s, i);
                    s.start | (s.freq - 1) << 16
                })
                .collect();
            let mut queued = Vec::new();
            enc.finish_into(&mut queued);
            let mut direct = Vec::new();
            code_positions(&positions, &mut direct);
            assert_eq!(direct, queued, "n={n}");
        }
    }
}
