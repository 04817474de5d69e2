//! LLM.int8 vector-wise quantization exactly as bitsandbytes does it on CPU, and the inverse view
//! the residual coder needs: for a row scale and an int8 value, the exact range of high-precision
//! codes that quantize to it.

use half::f16;

use super::rans::Uniform;

/// The precision the model was uploaded in; both are 16-bit, sign-magnitude codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum HighDtype {
    #[serde(rename = "BF16")]
    Bf16,
    #[serde(rename = "F16")]
    F16,
}

impl HighDtype {
    /// Largest finite magnitude code (0x7F7F is the largest finite bfloat16, 0x7BFF the largest half).
    pub fn max_finite(self) -> u16 {
        match self {
            HighDtype::Bf16 => 0x7F7F,
            HighDtype::F16 => 0x7BFF,
        }
    }

    /// The name users type: `bf16` or `fp16`.
    pub fn precision_name(self) -> &'static str {
        match self {
            HighDtype::Bf16 => "bf16",
            HighDtype::F16 => "fp16",
        }
    }

    /// The value bitsandbytes quantizes: the weight cast to float16, then to float32.
    #[inline(always)]
    pub fn quant_input(self, code: u16) -> f32 {
        match self {
            HighDtype::Bf16 => {
                let x = f32::from_bits(u32::from(code) << 16);
                // bfloat16 values in the float16 normal range are exact in float16.
                if BF16_EXACT_IN_F16.contains(&(code & 0x7FFF)) {
                    x
                } else {
                    f16::from_f32(x).to_f32()
                }
            }
            HighDtype::F16 => f16::from_bits(code).to_f32(),
        }
    }

    /// A magnitude code whose value is close to `v` (v ≥ 0), used only as a search start: for
    /// bfloat16 the smallest code at or above `v`, which is the bound itself more often than not.
    fn code_near(self, v: f32) -> u32 {
        match self {
            HighDtype::Bf16 => v.to_bits().div_ceil(1 << 16),
            HighDtype::F16 => u32::from(f16::from_f32(v).to_bits()),
        }
    }
}

/// The multiplier bitsandbytes applies to a row: `127 / absmax` evaluated as torch does,
/// reciprocal first, then the multiply (two roundings).
#[inline]
pub fn row_multiplier(absmax: f32) -> f32 {
    (1.0f32 / absmax) * 127.0
}

/// 1.5 * 2^23: `y + ROUNDER` is `y` rounded to an integer `r` (half to even) for
/// `|y| < ROUNDS_BELOW`, and its bits are `0x4B40_0000 + r`: its low byte is `r as i8`.
const ROUNDER: f32 = 12_582_912.0;
const ROUNDS_BELOW: f32 = 4_194_304.0;

/// `round_half_even(x * s)` in float32, as an integer (saturating far outside the int8 range).
#[inline(always)]
fn quantize_value(x: f32, s: f32) -> i32 {
    let y = x * s;
    // Adding and removing ROUNDER rounds to nearest even in the default rounding mode, for
    // |y| < 2^22; larger values are already integers. Avoids a libm call on baseline x86-64.
    let r = if y.abs() < ROUNDS_BELOW {
        (y + ROUNDER) - ROUNDER
    } else {
        y
    };
    r as i32
}

/// Quantizes one row of high-precision codes into `q` and returns its SCB (the row absmax).
///
/// Degenerate rows are defined as bitsandbytes leaves them on x86: an all-zero row has SCB 0 and
/// q 0; a row holding NaN or a value beyond the float16 range has SCB NaN or inf and q 0.
pub fn quantize_row(dtype: HighDtype, row: &[u16], q: &mut [u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd_enabled() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { quantize_row_avx2(dtype, row, q) };
    }
    quantize_row_portable(dtype, row, q)
}

/// The same code compiled for AVX2: its loops vectorize eight lanes wide instead of four
/// (same arithmetic, same results; the CI's scalar run takes the other copy).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
fn quantize_row_avx2(dtype: HighDtype, row: &[u16], q: &mut [u8]) -> f32 {
    quantize_row_portable(dtype, row, q)
}

#[inline(always)]
fn quantize_row_portable(dtype: HighDtype, row: &[u16], q: &mut [u8]) -> f32 {
    let absmax = row_absmax(dtype, row);
    if !(absmax.is_finite() && absmax > 0.0) {
        q.fill(0);
        return absmax;
    }
    let s = row_multiplier(absmax);
    match dtype {
        HighDtype::Bf16 => quantize_bf16_row(row, s, q),
        HighDtype::F16 => {
            for (qi, &c) in q.iter_mut().zip(row) {
                *qi = quantize_value(dtype.quant_input(c), s) as i8 as u8;
            }
        }
    }
    absmax
}

/// The largest `|quant_input|` of a row, NaN if it holds one. The float16 cast is monotonic
/// and odd, and no magnitude code above 0x7F80 (bfloat16) or 0x7C00 (float16) is a number, so
/// this is the cast of the largest magnitude code: an integer maximum, which vectorizes.
#[inline(always)]
fn row_absmax(dtype: HighDtype, row: &[u16]) -> f32 {
    let largest = row.iter().fold(0u16, |m, &c| m.max(c & 0x7FFF));
    let inf = match dtype {
        HighDtype::Bf16 => 0x7F80,
        HighDtype::F16 => 0x7C00,
    };
    if largest > inf {
        f32::NAN
    } else {
        dtype.quant_input(largest)
    }
}

/// [`quantize_row`]'s values for a bfloat16 row: every value quantized as if it were exact in
/// float16 (a vectorizable loop), then the few that are not (below 2^-14 or above 65,504 in
/// magnitude) redone through the cast.
#[inline(always)]
fn quantize_bf16_row(row: &[u16], s: f32, q: &mut [u8]) {
    let (mut cast_needed, mut large) = (false, false);
    // The int8 byte straight from the rounded float's bits: `quantize_value`'s saturating
    // conversion kept this loop from vectorizing (a twelfth of an encode). Rows are quantized
    // against their absmax, so |y| stays near 127; any value it did not (NaN included) sends
    // the row through `quantize_value`.
    for (qi, &c) in q.iter_mut().zip(row) {
        let y = f32::from_bits(u32::from(c) << 16) * s;
        *qi = (y + ROUNDER).to_bits() as u8;
        large |= y.abs() >= ROUNDS_BELOW || y.is_nan();
        cast_needed |= !BF16_EXACT_IN_F16.contains(&(c & 0x7FFF));
    }
    if large {
        for (qi, &c) in q.iter_mut().zip(row) {
            *qi = quantize_value(f32::from_bits(u32::from(c) << 16), s) as i8 as u8;
        }
    }
    // In a row that quantizes at all (no magnitude reaches 65,504), only magnitudes below
    // 2^-17 change in the cast: from 2^-17 on, a bfloat16 value's 8 significant bits make it a
    // multiple of 2^-24, a float16 subnormal. The cast is monotonic and keeps 2^-17, so when
    // 2^-17 s <= 0.5 those values and their casts all quantize to 0 (a tie rounds to even),
    // as the loop above left them: most rows of real weights.
    if cast_needed && s > CAST_CHANGES_NOTHING_BELOW {
        for (qi, &c) in q.iter_mut().zip(row) {
            if !BF16_EXACT_IN_F16.contains(&(c & 0x7FFF)) {
                *qi = quantize_value(HighDtype::Bf16.quant_input(c), s) as i8 as u8;
            }
        }
    }
}

/// The row multiplier up to which the float16 cast of a bfloat16 row changes no quantized
/// value: `0.5 * 2^17` (see [`quantize_bf16_row`]).
const CAST_CHANGES_NOTHING_BELOW: f32 = 65536.0;

/// Bfloat16 magnitude codes in the float16 normal range, which the float16 cast keeps exact.
const BF16_EXACT_IN_F16: std::ops::RangeInclusive<u16> = 0x3880..=0x477F;

/// For one row: where each int8 value's range of magnitude codes begins, and how wide it is.
///
/// `bounds[k]` is the smallest magnitude code that quantizes to at least `k` (for k = 1..=128),
/// so magnitudes quantizing to `k` are exactly `bounds[k]..bounds[k + 1]`, and those quantizing
/// to 0 are `0..bounds[1]`. A degenerate row (scale not finite and positive) has no intervals.
#[derive(Clone)]
pub struct RowIntervals {
    bounds: [u16; 129],
    /// The uniform coder over each k's width (empty where the width is 0).
    positions: [Uniform; 128],
    degenerate: bool,
    /// Top high byte of whole values, and the uniform coder over the (low 7 bits, sign) pairs
    /// possible under it.
    whole_top: (u16, Uniform),
}

impl RowIntervals {
    pub fn new(dtype: HighDtype, absmax: f32) -> RowIntervals {
        let mut r = RowIntervals {
            bounds: [0; 129],
            positions: [Uniform::EMPTY; 128],
            degenerate: true,
            whole_top: (0xFF, Uniform::new(256)),
        };
        if !(absmax.is_finite() && absmax > 0.0) {
            return r;
        }
        let s = row_multiplier(absmax);
        if !(s.is_finite() && s > 0.0) {
            return r;
        }
        r.degenerate = false;
        let end = u32::from(dtype.max_finite()) + 1;
        let guesses: [u32; 129] =
            std::array::from_fn(|k| dtype.code_near((k as f32 - 0.5) / s).min(end));
        let confirmed = confirmed_bounds(dtype, s, &guesses);
        for k in 1..=128usize {
            r.bounds[k] = if confirmed[k] {
                guesses[k] as u16
            } else {
                lower_bound(dtype, s, k as i32, guesses[k], end) as u16
            };
        }
        for k in 1..128 {
            let width = u32::from(r.bounds[k + 1]) - u32::from(r.bounds[k]);
            if width > 0 {
                r.positions[k] = Uniform::of(width);
            }
        }
        let last = r.bounds[1] - 1;
        let count = u32::from(last & 0x7F) + 1;
        r.whole_top = (last >> 7, Uniform::of(2 * count));
        r
    }

    /// True when the row has no usable scale; every element is then coded whole.
    #[inline(always)]
    pub fn is_degenerate(&self) -> bool {
        self.degenerate
    }

    /// First magnitude code that does not quantize to 0.
    #[inline(always)]
    pub fn zero_end(&self) -> u16 {
        self.bounds[1]
    }

    /// For values coded whole (q = 0): the largest possible high byte of the magnitude, and
    /// the uniform coder over the (low 7 bits, sign) pairs possible under it (the band just
    /// below `zero_end` is partial).
    #[inline(always)]
    pub fn whole_top(&self) -> (u16, Uniform) {
        self.whole_top
    }

    /// The codes quantizing to magnitude `k` (1..=127): the first, and the uniform coder over
    /// their count.
    #[inline(always)]
    pub fn interval(&self, k: usize) -> (u16, Uniform) {
        (self.bounds[k], self.positions[k])
    }
}

/// Which guesses are already the bound, found without a search: for bfloat16 codes in the
/// float16 normal range (where the float16 cast changes nothing), `guess[k]` is `B[k]` when it
/// quantizes to at least `k` and the code below it does not. Straight-line float arithmetic
/// over all 128 at once, which the compiler vectorizes; the rest go through [`lower_bound`].
fn confirmed_bounds(dtype: HighDtype, s: f32, guesses: &[u32; 129]) -> [bool; 129] {
    let mut ok = [false; 129];
    if dtype != HighDtype::Bf16 {
        return ok;
    }
    for (k, (ok, &g)) in ok.iter_mut().zip(guesses).enumerate().skip(1) {
        let normal = (0x3881..=0x477F).contains(&g);
        let at = quantize_value(f32::from_bits(g << 16), s);
        let below = quantize_value(f32::from_bits(g.wrapping_sub(1) << 16), s);
        *ok = normal & (at >= k as i32) & (below < k as i32);
    }
    ok
}

/// Smallest code in `[0, end]` whose value quantizes to at least `k`, starting near `guess`.
/// Quantization is monotone in the magnitude code, so a short walk in one direction usually
/// suffices (two evaluations when the guess is right); a binary search takes over if the guess
/// was far off (float16 subnormals).
fn lower_bound(dtype: HighDtype, s: f32, k: i32, guess: u32, end: u32) -> u32 {
    let reaches = |c: u32| c >= end || quantize_value(dtype.quant_input(c as u16), s) >= k;
    let mut g = guess.min(end);
    if reaches(g) {
        for _ in 0..8 {
            if g == 0 || !reaches(g - 1) {
                return g;
            }
            g -= 1;
        }
    } else {
        for _ in 0..8 {
            g += 1;
            if reaches(g) {
                return g;
            }
        }
    }
    let (mut lo, mut hi) = (0u32, end);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if reaches(mid) { hi = mid } else { lo = mid + 1 }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16(v: f32) -> u16 {
        half::bf16::from_f32(v).to_bits()
    }

    #[test]
    fn intervals_match_brute_force_quantization() {
        for dtype in [HighDtype::Bf16, HighDtype::F16] {
            // Round figures, then scales spread over twelve decades at random.
            let mut seed = 0x9E37_79B9_7F4A_7C15u64;
            let random = (0..40).map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                10f32.powf((seed >> 40) as f32 / (1u64 << 24) as f32 * 12.0 - 8.0)
            });
            let round = [1.0f32, 0.037, 3.1e-5, 1.0e-7, 250.0, 60000.0];
            for absmax in round.into_iter().chain(random) {
                let iv = RowIntervals::new(dtype, absmax);
                assert!(!iv.is_degenerate());
                let s = row_multiplier(absmax);
                for c in 0..=dtype.max_finite() {
                    let q = quantize_value(dtype.quant_input(c), s);
                    let k = q.clamp(0, 128) as usize;
                    if k == 0 {
                        assert!(c < iv.zero_end());
                    } else if k <= 127 {
                        let (lo, u) = iv.interval(k);
                        assert!(
                            c >= lo && u32::from(c) < u32::from(lo) + u.len(),
                            "{dtype:?} {absmax} {c:#x} q={q}"
                        );
                    } else {
                        assert!(c >= iv.bounds[128]);
                    }
                }
            }
        }
    }

    /// The definition, element by element: every value through `quant_input`.
    fn quantize_row_by_definition(dtype: HighDtype, row: &[u16], q: &mut [u8]) -> f32 {
        let inputs: Vec<f32> = row.iter().map(|&c| dtype.quant_input(c)).collect();
        let absmax = if inputs.iter().any(|x| x.is_nan()) {
            f32::NAN
        } else {
            inputs.iter().fold(0.0f32, |m, x| m.max(x.abs()))
        };
        let s = row_multiplier(absmax);
        for (qi, &x) in q.iter_mut().zip(&inputs) {
            let ok = absmax.is_finite() && absmax > 0.0;
            *qi = if ok {
                quantize_value(x, s) as i8 as u8
            } else {
                0
            };
        }
        absmax
    }

    #[test]
    fn fast_rows_quantize_as_defined() {
        // Rows mixing ordinary weights with subnormal-in-float16, huge, infinite and NaN codes.
        let specials = [
            0u16, 0x0001, 0x3800, 0x387F, 0x3880, 0x477F, 0x4780, 0x7F7F, 0x7F80, 0x7FC0,
        ];
        let mut x = 0x2545F491u32;
        for dtype in [HighDtype::Bf16, HighDtype::F16] {
            for trial in 0..2000 {
                let len = 1 + trial % 97;
                let row: Vec<u16> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        // Every third row is all tiny, where the float16 cast matters.
                        let ordinary = match (dtype, trial % 3) {
                            (HighDtype::Bf16, 0) => 0x3200 + (x >> 20) as u16 % 0x600,
                            (HighDtype::Bf16, _) => 0x3A00 + (x >> 20) as u16 % 0x700,
                            (HighDtype::F16, _) => 0x0001 + (x >> 20) as u16 % 0x5000,
                        };
                        let sign = ((x >> 3) as u16 & 1) << 15;
                        let special = specials[(x >> 8) as usize % specials.len()];
                        sign | if x.is_multiple_of(3 + trial as u32 % 50) {
                            special
                        } else {
                            ordinary
                        }
                    })
                    .collect();
                let (mut fast, mut slow) = (vec![7u8; len], vec![9u8; len]);
                let a = quantize_row(dtype, &row, &mut fast);
                let b = quantize_row_by_definition(dtype, &row, &mut slow);
                assert_eq!(a.to_bits(), b.to_bits(), "{dtype:?} {row:04x?}");
                assert_eq!(fast, slow, "{dtype:?} {row:04x?}");
            }
        }
    }

    /// Rows whose absmax puts the multiplier on both sides of the threshold above which tiny
    /// values are redone through the float16 cast (2^15 to 2^17), holding every tiny magnitude
    /// code: quantized as defined, and the cast does change some of them (so the test would
    /// see a threshold set too high).
    #[test]
    fn tiny_values_quantize_as_defined_around_the_cast_threshold() {
        let tiny: Vec<u16> = (0x3000..0x3890).flat_map(|c| [c, c | 0x8000]).collect();
        let mut cast_mattered = 0;
        for absmax in 0x3A00..0x3C00u16 {
            let mut row = tiny.clone();
            row.push(absmax);
            let (mut fast, mut slow) = (vec![7u8; row.len()], vec![9u8; row.len()]);
            let a = quantize_row(HighDtype::Bf16, &row, &mut fast);
            let b = quantize_row_by_definition(HighDtype::Bf16, &row, &mut slow);
            assert_eq!(a.to_bits(), b.to_bits());
            assert_eq!(fast, slow, "absmax {absmax:04x}");
            let s = row_multiplier(a);
            let uncast = row
                .iter()
                .map(|&c| quantize_value(f32::from_bits(u32::from(c) << 16), s) as i8 as u8);
            cast_mattered += usize::from(uncast.ne(slow.iter().copied()));
        }
        assert!(cast_mattered > 0);
    }

    /// The vectorized loop's byte of the rounded float's bits stands for the value only under
    /// 2^22: a multiplier no absmax gives (quantize_row never passes one) sends the row
    /// through quantize_value, which saturates, and NaN products give 0 as it does.
    #[test]
    fn products_past_the_rounding_range_take_the_exact_path() {
        let row: Vec<u16> = [1.0, -3.5, 0.0, 1e-3, 100.0, -7.25]
            .iter()
            .map(|&v| bf16(v))
            .collect();
        for s in [127.0, 3e6, 5e6, 1e30, f32::INFINITY, f32::NAN] {
            let mut q = vec![9u8; row.len()];
            quantize_bf16_row(&row, s, &mut q);
            let by_value: Vec<u8> = row
                .iter()
                .map(|&c| quantize_value(f32::from_bits(u32::from(c) << 16), s) as i8 as u8)
                .collect();
            assert_eq!(q, by_value, "multiplier {s}");
        }
    }

    #[test]
    fn degenerate_rows_follow_bitsandbytes() {
        let mut q = [5u8; 3];
        assert_eq!(quantize_row(HighDtype::Bf16, &[0, 0x8000, 0], &mut q), 0.0);
        assert_eq!(q, [0; 3]);
        let absmax = quantize_row(HighDtype::Bf16, &[bf16(1.0), bf16(70000.0), 0], &mut q);
        assert!(absmax.is_infinite());
        assert_eq!(q, [0; 3]);
        assert!(quantize_row(HighDtype::Bf16, &[bf16(f32::NAN), bf16(1.0), 0], &mut q).is_nan());
        assert!(RowIntervals::new(HighDtype::Bf16, 0.0).is_degenerate());
        assert!(RowIntervals::new(HighDtype::Bf16, f32::INFINITY).is_degenerate());
    }

    #[test]
    fn quantization_goes_through_float16_first() {
        // 1e-6 is a float16 subnormal: the float16 rounding changes the quantized value.
        let row = [bf16(1e-6), bf16(0.9e-6), bf16(-0.5e-6)];
        let mut q = [0u8; 3];
        let a = quantize_row(HighDtype::Bf16, &row, &mut q);
        assert_eq!(
            a,
            f16::from_f32(half::bf16::from_bits(row[0]).to_f32()).to_f32()
        );
        assert_eq!(q[0], 127);
    }
}
