//! The per-element loops of a version-2 residual block that surround the entropy coders:
//! each element's split from its int8 byte, the queue of whole values, codes as base plus
//! position (the general path; whole aligned groups decode in the keyed position loop), and
//! the encoder's row classification. The queue and the classification have AVX2 loops (eight
//! elements at a time, identical results), the queue an AVX-512 one too (sixteen); the plain table lookups stay scalar: on Zen 3 a
//! gather is slower than eight loads (AVX2 versions of both were measured 2-15% slower over
//! a whole BF16 decode).

use super::super::rans::{NO_SYMBOL, Split, simd_enabled};

/// `out[j] = table[q[j]]`: each element's packed split.
pub(super) fn fill_splits(table: &[u32; 256], q: &[u8], out: &mut [u32]) {
    for (o, &q) in out.iter_mut().zip(q) {
        *o = table[q as usize];
    }
}

/// Appends to `queue` (from `*len`) the index `first + j` of each element whose int8 byte is
/// 0, or of every element if `all`: whole values. `queue` has room for `q.len() + 8` more.
pub(super) fn queue_whole(q: &[u8], first: u32, all: bool, queue: &mut [u32], len: &mut usize) {
    let done = {
        #[cfg(target_arch = "x86_64")]
        if crate::codec::rans::avx512_enabled() {
            // SAFETY: the CPU supports AVX-512 F (checked at run time).
            unsafe { avx512::queue_whole(q, first, all, queue, len) }
        } else if simd_enabled() {
            // SAFETY: the CPU supports AVX2 (checked at run time).
            unsafe { avx2::queue_whole(q, first, all, queue, len) }
        } else {
            0
        }
        #[cfg(not(target_arch = "x86_64"))]
        0
    };
    for (j, &q) in q.iter().enumerate().skip(done) {
        queue[*len] = first + j as u32;
        *len += usize::from(all || q == 0);
    }
}

/// The encoder's row classification (`classify_row` in wide.rs) eight elements at a time, as
/// far as whole groups of eight go: each element's packed position symbol or [`NO_SYMBOL`],
/// and the elements outside their byte's interval appended to `slow`, which has room for
/// `high.len()`. Returns how many elements it did and how many it listed; the caller does the
/// rest the portable way (the only way without AVX2).
pub(super) fn classify_eights(
    bw: &[u32; 256],
    split: &[Split; 256],
    high: &[u16],
    q: &[u8],
    positions: &mut [u32],
    slow: &mut [u32],
) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if simd_enabled() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { avx2::classify_eights(bw, split, high, q, positions, slow) };
    }
    let _ = (bw, split, high, q, positions, slow);
    (0, 0)
}

/// `out` (little-endian codes) `= base[q[j]] + r[j]`, wrapping.
pub(super) fn add_bases(base: &[u16; 256], q: &[u8], r: &[u16], out: &mut [u8]) {
    for ((o, &q), &r) in out.chunks_exact_mut(2).zip(q).zip(r) {
        o.copy_from_slice(&base[q as usize].wrapping_add(r).to_le_bytes());
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{NO_SYMBOL, Split};

    /// For each mask of eight lanes, the lanes that are set, in order (then zeros).
    static LEFT_PACK: [[u32; 8]; 256] = crate::codec::rans::packed_lanes(false);

    /// Per eight elements: their `(base, width)` and split by eight scalar loads each (cheaper
    /// than gathers on Zen 3), then position, inside test and symbol as `Split::symbol`
    /// computes it, in 32-bit lanes (`r f` stays below 2^32 for `r < 2^16`).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn classify_eights(
        bw: &[u32; 256],
        split: &[Split; 256],
        high: &[u16],
        q: &[u8],
        positions: &mut [u32],
        slow: &mut [u32],
    ) -> (usize, usize) {
        let n = high.len().min(q.len()).min(positions.len()) / 8 * 8;
        assert!(slow.len() >= n);
        let (low, one) = (_mm256_set1_epi32(0xFFFF), _mm256_set1_epi32(1));
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut n_slow = 0;
        for j in (0..n).step_by(8) {
            let qs: &[u8; 8] = q[j..j + 8].try_into().unwrap();
            let b = |k: usize| usize::from(qs[k]);
            let t = |k: usize| bw[b(k)] as i32;
            let t = _mm256_setr_epi32(t(0), t(1), t(2), t(3), t(4), t(5), t(6), t(7));
            let p = |k: usize| split[b(k)].packed() as i32;
            let s = _mm256_setr_epi32(p(0), p(1), p(2), p(3), p(4), p(5), p(6), p(7));
            // SAFETY: j + 8 <= n within high.
            let code =
                _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(high.as_ptr().add(j).cast()) });
            let r = _mm256_and_si256(_mm256_sub_epi32(code, t), low);
            let inside = _mm256_cmpgt_epi32(_mm256_srli_epi32::<16>(t), r);
            let (f_1, e) = (_mm256_and_si256(s, low), _mm256_srli_epi32::<16>(s));
            let start = _mm256_add_epi32(
                _mm256_mullo_epi32(r, _mm256_add_epi32(f_1, one)),
                _mm256_min_epu32(r, e),
            );
            let freq_1 = _mm256_sub_epi32(f_1, _mm256_cmpgt_epi32(e, r));
            let sym = _mm256_or_si256(start, _mm256_slli_epi32::<16>(freq_1));
            let none = _mm256_set1_epi32(NO_SYMBOL as i32);
            let m = !_mm256_movemask_ps(_mm256_castsi256_ps(inside)) as usize & 0xFF;
            // SAFETY: eight u32s at j within positions; eight at n_slow <= j within slow
            // (n_slow grows by at most eight per step), which has room for n.
            unsafe {
                let out = _mm256_blendv_epi8(none, sym, inside);
                _mm256_storeu_si256(positions.as_mut_ptr().add(j).cast(), out);
                let order = _mm256_loadu_si256(LEFT_PACK[m].as_ptr().cast());
                let idx = _mm256_add_epi32(lanes, _mm256_set1_epi32(j as i32));
                let packed = _mm256_permutevar8x32_epi32(idx, order);
                _mm256_storeu_si256(slow.as_mut_ptr().add(n_slow).cast(), packed);
            }
            n_slow += m.count_ones() as usize;
        }
        (n, n_slow)
    }

    /// # Safety
    /// The CPU must support AVX2; `queue` has room for `q.len() + 8` after `*len`.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn queue_whole(
        q: &[u8],
        first: u32,
        all: bool,
        queue: &mut [u32],
        len: &mut usize,
    ) -> usize {
        let n = q.len() / 8 * 8;
        assert!(queue.len() >= *len + n + 8);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for j in (0..n).step_by(8) {
            // SAFETY: j + 8 <= n within q; the store of eight at *len stays within queue
            // (asserted above: *len grows by at most eight per step).
            unsafe {
                let bytes = _mm_loadl_epi64(q.as_ptr().add(j).cast());
                let zero = _mm_cmpeq_epi8(bytes, _mm_setzero_si128());
                let m = if all {
                    0xFF
                } else {
                    (_mm_movemask_epi8(zero) & 0xFF) as usize
                };
                let order = _mm256_loadu_si256(LEFT_PACK[m].as_ptr().cast());
                let idx = _mm256_add_epi32(lanes, _mm256_set1_epi32((first as usize + j) as i32));
                let packed = _mm256_permutevar8x32_epi32(idx, order);
                _mm256_storeu_si256(queue.as_mut_ptr().add(*len).cast(), packed);
                *len += m.count_ones() as usize;
            }
        }
        n
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::queue_whole`] sixteen elements at a time: a compress puts the indices of the
    /// zero bytes at the bottom of a vector (no lookup table, half the steps of AVX2).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW; `queue` has room for `q.len() + 8` after `*len`.
    #[target_feature(enable = "avx512f,avx512bw,popcnt")]
    pub(super) unsafe fn queue_whole(
        q: &[u8],
        first: u32,
        all: bool,
        queue: &mut [u32],
        len: &mut usize,
    ) -> usize {
        let n = q.len() / 16 * 16;
        assert!(queue.len() >= *len + n + 8);
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for j in (0..n).step_by(16) {
            // SAFETY: j + 16 <= n within q; the store of sixteen at *len stays within queue
            // (asserted above: *len grows by at most sixteen per step, and j + 16 <= n).
            unsafe {
                let bytes = _mm_loadu_si128(q.as_ptr().add(j).cast());
                // A movemask, not `_mm_cmpeq_epi8_mask`: that one needs AVX-512 VL, which
                // this function is not compiled for, so it was a call per sixteen elements.
                let m: u16 = if all {
                    0xFFFF
                } else {
                    _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_setzero_si128())) as u16
                };
                let idx = _mm512_add_epi32(lanes, _mm512_set1_epi32((first as usize + j) as i32));
                let packed = _mm512_maskz_compress_epi32(m, idx);
                _mm512_storeu_si512(queue.as_mut_ptr().add(*len).cast(), packed);
                *len += m.count_ones() as usize;
            }
        }
        n
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut r = seed;
        (0..n)
            .map(|_| {
                r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                // Many zeros, as whole values make them.
                if r >> 29 == 0 { 0 } else { (r >> 20) as u8 }
            })
            .collect()
    }

    #[test]
    fn simd_and_portable_queue_loops_agree() {
        assert!(
            std::arch::is_x86_feature_detected!("avx2"),
            "this test compares the AVX2 loops with the portable ones: it needs an AVX2 CPU"
        );
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 100, 2048] {
            let q = bytes(n, n as u32 + 1);
            for all in [false, true] {
                let portable: Vec<u32> = (0..n)
                    .filter(|&j| all || q[j] == 0)
                    .map(|j| 500 + j as u32)
                    .collect();
                type QueueLoop = unsafe fn(&[u8], u32, bool, &mut [u32], &mut usize) -> usize;
                let mut loops: Vec<QueueLoop> = vec![avx2::queue_whole];
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                {
                    loops.push(avx512::queue_whole);
                }
                for f in loops {
                    let (mut simd, mut simd_len) = (vec![0u32; n + 8 + 3], 3);
                    // SAFETY: the CPU has what each loop needs (checked above).
                    let done = unsafe { f(&q, 500, all, &mut simd, &mut simd_len) };
                    for (j, &q) in q.iter().enumerate().skip(done) {
                        simd[simd_len] = 500 + j as u32;
                        simd_len += usize::from(all || q == 0);
                    }
                    assert_eq!(&simd[3..simd_len], &portable[..]);
                }
            }
        }
    }
}
