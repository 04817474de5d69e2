//! The per-element loops of a version-2 residual block that surround the entropy decoders:
//! each element's split from its int8 byte, the queue of whole values, codes as base plus
//! position. The queue has an AVX2 loop (eight elements at a time, identical results); the
//! two table lookups stay scalar: on Zen 3 a gather is slower than eight loads (the AVX2
//! versions of both were measured 2-15% slower over a whole BF16 decode).

use super::super::rans::simd_enabled;

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
        if simd_enabled() {
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

/// `out` (little-endian codes) `= base[q[j]] + r[j]`, wrapping.
pub(super) fn add_bases(base: &[u16; 256], q: &[u8], r: &[u16], out: &mut [u8]) {
    for ((o, &q), &r) in out.chunks_exact_mut(2).zip(q).zip(r) {
        o.copy_from_slice(&base[q as usize].wrapping_add(r).to_le_bytes());
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// For each mask of eight lanes, the lanes that are set, in order (then zeros).
    static LEFT_PACK: [[u32; 8]; 256] = crate::codec::rans::packed_lanes(false);

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
        for n in [0, 1, 7, 8, 9, 100, 2048] {
            let q = bytes(n, n as u32 + 1);
            for all in [false, true] {
                let (mut simd, mut simd_len) = (vec![0u32; n + 8 + 3], 3);
                let done = unsafe { avx2::queue_whole(&q, 500, all, &mut simd, &mut simd_len) };
                for (j, &q) in q.iter().enumerate().skip(done) {
                    simd[simd_len] = 500 + j as u32;
                    simd_len += usize::from(all || q == 0);
                }
                let portable: Vec<u32> = (0..n)
                    .filter(|&j| all || q[j] == 0)
                    .map(|j| 500 + j as u32)
                    .collect();
                assert_eq!(&simd[3..simd_len], &portable[..]);
            }
        }
    }
}
