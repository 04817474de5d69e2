//! Int8 values with coarse tables whose rare values are escaped (format version 6).
//!
//! A coarse table (2^12 slots) decodes faster than a 2^14 one (one gather per sixteen values
//! on AVX-512), but every value it holds takes at least one of its 4,096 slots: on rows of
//! LLM.int8 values, whose outliers reach far into values seen a few times per chunk, those
//! slots are taken from the common values and cost 0.03 bits per value. Here a table codes
//! its rare values as one symbol, [`ESCAPE`], and their bytes go as they are into a list the
//! decoder reads in order: the table loop stays the coarse one, and a pass over its output,
//! while still in cache, puts the escaped bytes in place.
//!
//! `ESCAPE` is the byte of -128, which LLM.int8 never writes (its values are within ±127);
//! where the byte does occur it is escaped like a rare value, so any bytes code.
//!
//! Chunk layout: the row tables of [`super::row_tables`] (row length, table count `k` from 1
//! to 4, the tables, all coarse, the row map of `k > 1`), `varint e`, the `e` escaped bytes in
//! the order of their elements, then the 32-lane stream of the values, each escaped one as
//! `ESCAPE`.

use super::CodecError;
use super::freq::{COARSE_BITS, FreqTable, read_varint, take, write_varint};
use super::rans::{TableView, WIDE};
use super::row_tables::{self, RowTables};

/// The symbol that stands for an escaped value.
pub const ESCAPE: u8 = 0x80;

/// Candidate rarities, in slots of a coarse table: a table escapes the values whose share of
/// its symbols is below `t / 4096`, for the `t` that codes smallest. A value below one slot
/// pays for the slot it is rounded up to; escaping it costs 8 bits plus the escape symbol.
const RARE_BELOW_SLOTS: [u64; 4] = [0, 1, 2, 4];

/// One table's escaping: which bytes it escapes, and the counts its table is built from.
struct Escaping {
    escaped: [bool; 256],
    counts: [u64; 256],
    /// Bits of the coded values, the escaped bytes and the table.
    cost: f64,
}

impl Escaping {
    /// The cheapest escaping of values with byte counts `counts`; `None` where no coarse
    /// table holds what is left (one value in every slot).
    fn best(counts: &[u64; 256]) -> Option<Escaping> {
        let total: u64 = counts.iter().sum();
        RARE_BELOW_SLOTS
            .iter()
            .filter_map(|&t| Escaping::below(counts, |c| c << COARSE_BITS < t * total))
            .min_by(|a, b| a.cost.total_cmp(&b.cost))
    }

    /// The escaping of the bytes `rare` says are rare, and `ESCAPE` itself.
    fn below(counts: &[u64; 256], rare: impl Fn(u64) -> bool) -> Option<Escaping> {
        let mut escaped = [false; 256];
        let mut kept = *counts;
        let mut n = 0;
        for (b, c) in counts.iter().enumerate() {
            if *c > 0 && (b == usize::from(ESCAPE) || rare(*c)) {
                escaped[b] = true;
                kept[b] = 0;
                n += c;
            }
        }
        kept[usize::from(ESCAPE)] = n;
        let cost = FreqTable::best_cost_at(&kept, COARSE_BITS)? + 8.0 * n as f64;
        Some(Escaping {
            escaped,
            counts: kept,
            cost,
        })
    }
}

/// How an int8 chunk would be coded with escapes: its row tables and each table's escaping.
pub struct Plan {
    rows: RowTables,
    tables: Vec<Escaping>,
}

impl Plan {
    /// The plan for `n` values grouped as `rows` says, with `counts` the byte counts of each
    /// group; `None` where a group's values fit no coarse table.
    pub(super) fn new(rows: RowTables, counts: &[[u64; 256]]) -> Option<Plan> {
        let tables = counts
            .iter()
            .map(Escaping::best)
            .collect::<Option<Vec<_>>>()?;
        Some(Plan { rows, tables })
    }

    /// Bytes the chunk would take, the stream's states aside (as in the other estimates).
    pub fn estimate(&self) -> f64 {
        let coded: f64 = self.tables.iter().map(|t| t.cost).sum();
        coded / 8.0 + self.rows.written_len(self.tables.len()) as f64
    }

    /// Codes `q`, the values the plan was made for.
    pub fn encode(&self, q: &[u8]) -> Vec<u8> {
        let mut symbols = q.to_vec();
        let mut escaped = Vec::new();
        let runs: Vec<_> = self.rows.runs(0..q.len()).collect();
        for (t, run) in &runs {
            let escapes = &self.tables[*t].escaped;
            for s in &mut symbols[run.clone()] {
                if escapes[usize::from(*s)] {
                    escaped.push(*s);
                    *s = ESCAPE;
                }
            }
        }
        let tables: Vec<FreqTable> = self
            .tables
            .iter()
            .map(|t| {
                FreqTable::best_for_at(&t.counts, COARSE_BITS)
                    .expect("the plan was made with a coarse table for these counts")
            })
            .collect();
        let mut out = Vec::with_capacity(q.len() / 2);
        self.rows.write(&tables, &mut out);
        write_varint(&mut out, escaped.len() as u64);
        out.extend_from_slice(&escaped);
        let views: Vec<TableView> = tables.iter().map(FreqTable::view).collect();
        super::rans::code_table_runs::<WIDE>(&views, &runs, &symbols, &mut out);
        out
    }
}

/// The tables, row map and escaped bytes of a chunk of `n` values written by
/// [`Plan::encode`]; `data` is left at its stream.
pub(super) fn read<'a>(
    data: &mut &'a [u8],
    n: usize,
) -> Result<(Vec<FreqTable>, RowTables, Escapes<'a>), CodecError> {
    let (tables, rows) = row_tables::read_at(data, n, 1, COARSE_BITS)?;
    let e = usize::try_from(read_varint(data)?).unwrap_or(usize::MAX);
    if e > n {
        return Err(CodecError::Corrupt("more escaped values than values"));
    }
    let values = take(data, e)?;
    Ok((
        tables,
        rows,
        Escapes {
            values,
            short: false,
        },
    ))
}

/// The escaped bytes still to put in place, in order.
pub(super) struct Escapes<'a> {
    values: &'a [u8],
    /// Whether an `ESCAPE` was met with no byte left for it.
    short: bool,
}

impl Escapes<'_> {
    /// Puts the next escaped bytes in place of the `ESCAPE`s of `out`, the next stretch of
    /// decoded values; false (and nothing more ever) when there are too few.
    pub fn fill(&mut self, out: &mut [u8]) -> bool {
        if !self.short {
            self.short = !fill(out, &mut self.values);
        }
        !self.short
    }

    /// Whether every escaped byte was put in place, and no `ESCAPE` was left without one.
    pub fn finish(&self) -> Result<(), CodecError> {
        match (self.short, self.values.is_empty()) {
            (false, true) => Ok(()),
            (true, _) => Err(CodecError::Corrupt("fewer escaped values than escapes")),
            (false, false) => Err(CodecError::Corrupt("more escaped values than escapes")),
        }
    }
}

/// Replaces the `ESCAPE`s of `out` with `values` in order, taking them from it; false when it
/// runs out (`out` then holds some of them). With AVX-512 VBMI2, a block of 64 bytes takes
/// one compare and one expanding load, without a branch on what it holds: at one value in a
/// hundred escaped, half the blocks have one, and a branch per block cost more than the loop
/// (a sixth of a synthetic INT8 decode). Elsewhere sixteen bytes are compared at once (SSE2,
/// every x86-64), or one at a time.
fn fill(out: &mut [u8], values: &mut &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if vbmi2_enabled() {
            // SAFETY: the CPU has AVX-512 F, BW and VBMI2 (checked just now).
            return unsafe { fill_vbmi2(out, values) };
        }
        fill_sse2(out, values)
    }
    #[cfg(not(target_arch = "x86_64"))]
    fill_portable(out, values)
}

/// Whether [`fill_vbmi2`] may run: the AVX-512 loops may ([`super::rans::avx512_enabled`]),
/// and the CPU has VBMI2.
#[cfg(target_arch = "x86_64")]
fn vbmi2_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        super::rans::avx512_enabled() && std::arch::is_x86_feature_detected!("avx512vbmi2")
    })
}

/// [`fill`] with AVX-512 VBMI2, 64 bytes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi2,popcnt")]
unsafe fn fill_vbmi2(out: &mut [u8], values: &mut &[u8]) -> bool {
    use std::arch::x86_64::*;
    let escape = _mm512_set1_epi8(ESCAPE as i8);
    let mut blocks = out.chunks_exact_mut(64);
    for block in &mut blocks {
        // SAFETY: the loads and the store touch the block's 64 bytes; the expanding load reads
        // one byte of `values` per bit of `m`, which are no more than it holds (checked).
        unsafe {
            let v = _mm512_loadu_si512(block.as_ptr().cast());
            let m = _mm512_cmpeq_epi8_mask(v, escape);
            let k = m.count_ones() as usize;
            if k > values.len() {
                return false;
            }
            let filled = _mm512_mask_expandloadu_epi8(v, m, values.as_ptr().cast());
            _mm512_storeu_si512(block.as_mut_ptr().cast(), filled);
            *values = values.get_unchecked(k..);
        }
    }
    fill_sse2(blocks.into_remainder(), values)
}

/// [`fill`] with SSE2, sixteen bytes at a time.
#[cfg(target_arch = "x86_64")]
fn fill_sse2(out: &mut [u8], values: &mut &[u8]) -> bool {
    let mut blocks = out.chunks_exact_mut(16);
    for block in &mut blocks {
        // SAFETY: SSE2 is part of x86-64; the load reads the block's 16 bytes.
        let mut mask = unsafe {
            use std::arch::x86_64::*;
            let v = _mm_loadu_si128(block.as_ptr().cast());
            _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(ESCAPE as i8))) as u32
        };
        while mask != 0 {
            let Some((&v, rest)) = values.split_first() else {
                return false;
            };
            block[mask.trailing_zeros() as usize] = v;
            *values = rest;
            mask &= mask - 1;
        }
    }
    fill_portable(blocks.into_remainder(), values)
}

/// [`fill`] a byte at a time.
fn fill_portable(out: &mut [u8], values: &mut &[u8]) -> bool {
    for b in out.iter_mut().filter(|b| **b == ESCAPE) {
        let Some((&v, rest)) = values.split_first() else {
            return false;
        };
        *b = v;
        *values = rest;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLM.int8-like rows: most values near 0, a few far out (seen a handful of times each).
    fn heavy_tailed(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        (0..n)
            .map(|_| {
                let r = next();
                let v = if r % 500 == 0 {
                    (next() % 255) as i32 - 127
                } else {
                    (r % 15) as i32 + (next() % 15) as i32 - 14
                };
                v as i8 as u8
            })
            .collect()
    }

    fn plan_of(q: &[u8]) -> Plan {
        Plan::new(RowTables::one(q.len()), &[super::super::byte_counts(q)]).unwrap()
    }

    fn decode(data: &[u8], n: usize) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![0u8; n];
        super::super::decode_int8_escaped(data, &mut out)?;
        Ok(out)
    }

    #[test]
    fn rare_values_are_escaped_and_round_trip() {
        let q = heavy_tailed(1 << 18, 7);
        let plan = plan_of(&q);
        let stored = plan.encode(&q);
        let mut data = &stored[..];
        let (tables, _, escapes) = read(&mut data, q.len()).unwrap();
        assert_eq!(tables[0].bits(), COARSE_BITS);
        let e = escapes.values.len();
        assert!(e > 0 && e < q.len() / 100, "{e} escaped");
        assert_eq!(decode(&stored, q.len()).unwrap(), q);
        // Within 1% of its estimate, and smaller than a plain coarse table.
        let est = plan.estimate();
        assert!(
            (stored.len() as f64 - est).abs() < est / 100.0,
            "{} vs {est}",
            stored.len()
        );
        let plain = super::super::encode_int8_coarse(&q).unwrap();
        assert!(
            stored.len() < plain.len(),
            "{} vs {}",
            stored.len(),
            plain.len()
        );
    }

    #[test]
    fn the_escape_byte_itself_round_trips_however_common() {
        let mut q = heavy_tailed(1 << 16, 9);
        for v in q.iter_mut().step_by(3) {
            *v = ESCAPE;
        }
        let stored = plan_of(&q).encode(&q);
        assert_eq!(decode(&stored, q.len()).unwrap(), q);
        let q = vec![ESCAPE; 4096];
        assert!(
            Plan::new(RowTables::one(q.len()), &[super::super::byte_counts(&q)]).is_none(),
            "all escapes leave one symbol, which no coarse table holds"
        );
    }

    #[test]
    fn row_groups_escape_each_their_own() {
        // Narrow rows (0, ±1) then wide ones: two tables, the wide one escaping its tail.
        let row_len = 1024;
        let mut q = Vec::new();
        for r in 0..64 {
            if r % 2 == 0 {
                q.extend(heavy_tailed(row_len, r + 1));
            } else {
                q.extend((0..row_len).map(|i| [0u8, 1, 255][i * 7 % 3]));
            }
        }
        let (rows, counts) = row_tables::group_rows(&q, row_len).unwrap();
        assert_eq!(counts.len(), 2);
        let stored = Plan::new(rows, &counts).unwrap().encode(&q);
        assert_eq!(decode(&stored, q.len()).unwrap(), q);
    }

    type Fill = fn(&mut [u8], &mut &[u8]) -> bool;

    /// `fill` gives the bytes of the portable fill on escapes at block edges and in a run,
    /// takes as many values for any length, and fails where they run short.
    fn agrees_with_the_portable_fill(name: &str, fill: Fill) {
        let mut out = heavy_tailed(1000, 3);
        for i in [0, 15, 16, 17, 63, 64, 500, 998, 999] {
            out[i] = ESCAPE;
        }
        out[128..192].fill(ESCAPE);
        let n = out.iter().filter(|&&b| b == ESCAPE).count();
        let values: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
        let mut expected = out.clone();
        let mut rest = &values[..];
        assert!(fill_portable(&mut expected, &mut rest) && rest.is_empty());
        for len in [out.len(), 64, 65, 200] {
            let mut got = out[..len].to_vec();
            let k = got.iter().filter(|&&b| b == ESCAPE).count();
            let mut rest = &values[..];
            assert!(fill(&mut got, &mut rest), "{name}, {len}");
            assert_eq!(got, expected[..len], "{name}, {len}");
            assert_eq!(rest.len(), n - k, "{name}, {len}");
            assert!(
                !fill(&mut out[..len].to_vec(), &mut &values[..k - 1]),
                "{name}, {len}"
            );
        }
    }

    #[test]
    fn fills_agree_with_the_portable_fill_and_count_their_values() {
        agrees_with_the_portable_fill("fill", fill);
        #[cfg(target_arch = "x86_64")]
        agrees_with_the_portable_fill("sse2", fill_sse2);
    }

    /// Needs AVX-512 VBMI2 (CI skips it on CPUs without).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_vbmi2_fill_agrees_with_the_portable_fill() {
        assert!(
            std::arch::is_x86_feature_detected!("avx512vbmi2")
                && std::arch::is_x86_feature_detected!("avx512bw"),
            "this CPU lacks AVX-512 VBMI2"
        );
        // SAFETY: the CPU has what the fill needs (asserted just now).
        agrees_with_the_portable_fill("vbmi2", |o, v| unsafe { fill_vbmi2(o, v) });
    }

    #[test]
    fn damaged_chunks_are_errors_or_other_bytes() {
        let q = heavy_tailed(1 << 14, 5);
        let good = plan_of(&q).encode(&q);
        assert_eq!(decode(&good, q.len()).unwrap(), q);
        // One escaped byte more or fewer than the stream's escapes.
        let mut data = &good[..];
        row_tables::read_at(&mut data, q.len(), 1, COARSE_BITS).unwrap();
        let at = good.len() - data.len();
        let e = read_varint(&mut data).unwrap() as usize;
        assert!((1..128).contains(&e), "{e} fits one varint byte");
        for e2 in [e - 1, e + 1] {
            let mut d = good[..at].to_vec();
            d.push(e2 as u8);
            d.extend_from_slice(&good[at + 1..at + 1 + e.min(e2)]);
            if e2 > e {
                d.push(0);
            }
            d.extend_from_slice(&good[at + 1 + e..]);
            assert!(decode(&d, q.len()).is_err(), "{e2} escaped bytes for {e}");
        }
        assert!(decode(&good[..good.len() / 2], q.len()).is_err());
        for at in 0..good.len() {
            let mut d = good.clone();
            d[at] ^= 0x5A;
            // Any damage is an error or other bytes, never a panic.
            let _ = decode(&d, q.len());
        }
    }
}
