//! Int8 values with a table per group of rows (format version 4).
//!
//! One table per chunk mixes rows whose values spread very differently. An LLM.int8 row scaled
//! by an outlier has nearly all its values at 0 and ±1; a row without one spreads over dozens
//! of values. On the synthetic LLM-like set, one table per chunk codes the int8 values in 3.69
//! bits each, and a table per group of rows (up to four groups) in 3.60. The encoder groups a
//! chunk's rows by their histograms and keeps the grouping only when it saves more than a
//! table costs: its stored bytes, and its build at decode (16 or 144 KiB of lookups).
//!
//! Chunk layout: `varint row_len`, one byte `k` (2..=4 tables), the `k` tables, each row's
//! table in `bits(k)` bits (1 for two tables, 2 for more), packed from the low bit of each byte,
//! then one 32-lane stream of the values, element `i` on lane `i % 32` with the table of row
//! `i / row_len`.

use std::ops::Range;

use super::CodecError;
use super::freq::{FreqTable, read_varint, take, write_varint};
use super::rans::{TableView, WIDE};

/// Most tables one chunk holds.
pub const MAX_TABLES: usize = 4;

/// Rows shorter than this are not grouped: their histograms say little, their row map costs
/// more per value, and grouping many short rows is slow (MiniLM's rows of 384: +35% encode time
/// for 6 KB of its 30 MB).
pub const MIN_ROW_LEN: usize = 1024;

/// Each extra table must save at least this many bits per element of the chunk: a table's
/// build in a decode took about 15 µs when every table had 144 KiB of lookups (written to
/// memory no longer cached; the AVX-512 loops now need 16 KiB of them, the AVX2 loops still
/// 144), as long as decoding 20,000 values, so a table that saves less than a hundredth of
/// a bit per value slows the INT8 download for a gain it barely sees.
const MIN_GAIN_PER_TABLE: f64 = 0.01;

/// Lloyd iterations of the grouping; it settles within a few on real rows.
const ROUNDS: usize = 6;

/// Which table each row of a chunk uses.
#[derive(Clone)]
pub(super) struct RowTables {
    /// Elements per row, a multiple of the lanes: every row starts on lane 0, so the decode
    /// loops switch tables between groups of 32.
    row_len: usize,
    of_row: Vec<u8>,
}

impl RowTables {
    /// One table for the `n` elements of a chunk.
    pub fn one(n: usize) -> RowTables {
        RowTables {
            row_len: n.max(1),
            of_row: vec![0],
        }
    }

    /// The runs of `elems` whose rows share a table, in order: `(table, elements)`.
    pub fn runs(&self, elems: Range<usize>) -> impl Iterator<Item = (usize, Range<usize>)> + '_ {
        let mut at = elems.start;
        std::iter::from_fn(move || {
            if at >= elems.end {
                return None;
            }
            let row = at / self.row_len;
            let table = self.of_row[row];
            let mut end = (row + 1) * self.row_len;
            while end < elems.end && self.of_row[end / self.row_len] == table {
                end += self.row_len;
            }
            let run = at..end.min(elems.end);
            at = run.end;
            Some((usize::from(table), run))
        })
    }
}

/// Where a table loop over some elements switches tables: `(element, table)`.
pub(super) type Switches<'t> = Vec<(usize, TableView<'t>)>;

impl RowTables {
    /// The table of `tables` that elements `elems` start with, and where it changes in them.
    pub fn schedule<'t>(
        &self,
        tables: &'t [FreqTable],
        elems: Range<usize>,
    ) -> (TableView<'t>, Switches<'t>) {
        let mut runs = self.runs(elems);
        let first = runs.next().map_or(0, |(t, _)| t);
        let switches = runs.map(|(t, r)| (r.start, tables[t].view())).collect();
        (tables[first].view(), switches)
    }
}

/// Bits of a row's entry in the map of `k` tables: none for one.
fn entry_bits(k: usize) -> usize {
    match k {
        0 | 1 => 0,
        2 => 1,
        _ => 2,
    }
}

/// Codes the int8 values `q` (rows of `row_len`) with a table per group of rows, when that
/// pays; `None` when one table is as good (the caller then writes one-table chunks).
pub fn encode(q: &[u8], row_len: usize) -> Option<Vec<u8>> {
    let (rows, counts) = group_rows(q, row_len)?;
    Some(encode_grouped(q, &rows, &counts))
}

/// Codes `q` with a table per group of `rows`, from each group's byte `counts`.
pub(super) fn encode_grouped(q: &[u8], rows: &RowTables, counts: &[[u64; 256]]) -> Vec<u8> {
    let tables: Vec<FreqTable> = counts
        .iter()
        .map(|c| FreqTable::best_for(c).expect("every group has rows"))
        .collect();
    let mut out = Vec::new();
    rows.write(&tables, &mut out);
    let runs: Vec<_> = rows.runs(0..q.len()).collect();
    let views: Vec<TableView> = tables.iter().map(FreqTable::view).collect();
    super::rans::code_table_runs::<WIDE>(&views, &runs, q, &mut out);
    out
}

/// The grouping of the rows of `q` (rows of `row_len`) into tables that pays, with each
/// group's byte counts; `None` when one table is as good or the rows cannot be grouped.
pub(super) fn group_rows(q: &[u8], row_len: usize) -> Option<(RowTables, Vec<[u64; 256]>)> {
    if row_len < MIN_ROW_LEN || !row_len.is_multiple_of(WIDE) || !q.len().is_multiple_of(row_len) {
        return None;
    }
    let rows: Vec<Row> = q.chunks_exact(row_len).map(Row::of).collect();
    let groups = group(&rows, q.len())?;
    let counts = groups.counts(&rows);
    let rows = RowTables {
        row_len,
        of_row: groups.of_row,
    };
    Some((rows, counts))
}

impl RowTables {
    /// Writes the row length, the table count, `tables` and the row map (none for one table).
    pub(super) fn write(&self, tables: &[FreqTable], out: &mut Vec<u8>) {
        write_varint(out, self.row_len as u64);
        out.push(tables.len() as u8);
        for t in tables {
            t.write(out);
        }
        let bits = entry_bits(tables.len());
        let mut map = vec![0u8; (self.of_row.len() * bits).div_ceil(8)];
        for (r, &g) in self.of_row.iter().enumerate().filter(|_| bits > 0) {
            map[r * bits / 8] |= g << (r * bits % 8);
        }
        out.extend_from_slice(&map);
    }

    /// Bytes [`RowTables::write`] takes besides the tables.
    pub(super) fn written_len(&self, tables: usize) -> usize {
        let mut v = Vec::new();
        write_varint(&mut v, self.row_len as u64);
        v.len() + 1 + (self.of_row.len() * entry_bits(tables)).div_ceil(8)
    }
}

/// The tables and row map of a chunk of `n` elements written by [`encode`]; `data` is left at
/// its stream.
pub(super) fn read(data: &mut &[u8], n: usize) -> Result<(Vec<FreqTable>, RowTables), CodecError> {
    read_at(data, n, 2, super::freq::TABLE_BITS)
}

/// [`read`] of at least `min_tables` tables of resolution `bits`. One table takes any row
/// length that tiles the chunk; more switch between groups of lanes, so their rows are whole
/// groups.
pub(super) fn read_at(
    data: &mut &[u8],
    n: usize,
    min_tables: usize,
    bits: u32,
) -> Result<(Vec<FreqTable>, RowTables), CodecError> {
    let row_len = usize::try_from(read_varint(data)?).unwrap_or(usize::MAX);
    let k = usize::from(take(data, 1)?[0]);
    if !(min_tables..=MAX_TABLES).contains(&k) {
        return Err(CodecError::Corrupt("int8 chunk has an invalid table count"));
    }
    if row_len == 0 || !n.is_multiple_of(row_len) || (k > 1 && !row_len.is_multiple_of(WIDE)) {
        return Err(CodecError::Corrupt("int8 rows do not tile the chunk"));
    }
    let tables = (0..k)
        .map(|_| FreqTable::read_at(data, bits))
        .collect::<Result<Vec<_>, _>>()?;
    let (rows, bits) = (n / row_len, entry_bits(k));
    let map = take(data, (rows * bits).div_ceil(8))?;
    let of_row: Vec<u8> = match bits {
        0 => vec![0; rows],
        _ => (0..rows)
            .map(|r| (map[r * bits / 8] >> (r * bits % 8)) & ((1 << bits) - 1))
            .collect(),
    };
    if of_row.iter().any(|&t| usize::from(t) >= k) {
        return Err(CodecError::Corrupt(
            "int8 row names a table the chunk lacks",
        ));
    }
    let used = rows * bits;
    if used % 8 != 0 && map[used / 8] >> (used % 8) != 0 {
        return Err(CodecError::Corrupt("int8 row map has stray bits"));
    }
    Ok((tables, RowTables { row_len, of_row }))
}

/// A row's values as (byte, count) for the bytes it holds: rows of weights use a few dozen of
/// the 256, so grouping works on these rather than on whole histograms.
struct Row(Vec<(u8, u32)>);

impl Row {
    fn of(values: &[u8]) -> Row {
        let counts = super::byte_counts(values);
        Row((0..=255u8)
            .zip(counts)
            .filter(|&(_, c)| c > 0)
            .map(|(b, c)| (b, c as u32))
            .collect())
    }

    /// Bits this row takes under a group's log-probabilities.
    fn bits_under(&self, log_p: &[f64; 256]) -> f64 {
        self.0
            .iter()
            .map(|&(b, c)| -f64::from(c) * log_p[b as usize])
            .sum()
    }

    /// Its empirical entropy, which orders rows from narrow to wide for the first grouping.
    fn spread(&self) -> f64 {
        let n: f64 = self.0.iter().map(|&(_, c)| f64::from(c)).sum();
        self.0
            .iter()
            .map(|&(_, c)| -f64::from(c) / n * (f64::from(c) / n).log2())
            .sum()
    }
}

/// Rows assigned to groups `0..k`.
struct Groups {
    k: usize,
    of_row: Vec<u8>,
}

impl Groups {
    /// The symbol counts of each group.
    fn counts(&self, rows: &[Row]) -> Vec<[u64; 256]> {
        let mut counts = vec![[0u64; 256]; self.k];
        for (row, &g) in rows.iter().zip(&self.of_row) {
            for &(b, c) in &row.0 {
                counts[usize::from(g)][b as usize] += u64::from(c);
            }
        }
        counts
    }

    /// Bits the chunk's values take with a table per group: coded values, tables, row map.
    fn cost(&self, rows: &[Row]) -> f64 {
        let tables: f64 = self
            .counts(rows)
            .iter()
            .map(|c| FreqTable::best_cost(c).expect("every group has rows"))
            .sum();
        let map = if self.k > 1 {
            rows.len() * entry_bits(self.k)
        } else {
            0
        };
        tables + map as f64
    }

    /// Drops empty groups, numbering the others in order.
    fn compact(mut self) -> Groups {
        let mut used = [false; MAX_TABLES];
        for &g in &self.of_row {
            used[usize::from(g)] = true;
        }
        let mut new = [0u8; MAX_TABLES];
        let mut k = 0;
        for g in 0..self.k {
            if used[g] {
                new[g] = k as u8;
                k += 1;
            }
        }
        for g in &mut self.of_row {
            *g = new[usize::from(*g)];
        }
        Groups {
            k,
            of_row: self.of_row,
        }
    }
}

/// The grouping of `rows` (of a chunk of `n` values) that codes smallest, counting each extra
/// table's decode price ([`MIN_GAIN_PER_TABLE`]); `None` when that is a single table.
fn group(rows: &[Row], n: usize) -> Option<Groups> {
    if rows.len() < 2 {
        return None;
    }
    let price = MIN_GAIN_PER_TABLE * n as f64;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let spread: Vec<f64> = rows.iter().map(Row::spread).collect();
    order.sort_by(|&a, &b| spread[a].total_cmp(&spread[b]).then(a.cmp(&b)));
    let one = Groups {
        k: 1,
        of_row: vec![0; rows.len()],
    };
    let mut best = (one.cost(rows), one);
    for k in 2..=MAX_TABLES.min(rows.len()) {
        let mut of_row = vec![0u8; rows.len()];
        for (i, &r) in order.iter().enumerate() {
            of_row[r] = (i * k / rows.len()) as u8;
        }
        let groups = refine(rows, Groups { k, of_row });
        let cost = groups.cost(rows) + price * (groups.k - 1) as f64;
        if cost >= best.0 {
            // A table more rarely pays where this one did not: the rest are not tried.
            break;
        }
        best = (cost, groups);
    }
    (best.1.k > 1).then_some(best.1)
}

/// Lloyd rounds: each row moves to the group whose distribution codes it in the fewest bits.
fn refine(rows: &[Row], mut groups: Groups) -> Groups {
    for _ in 0..ROUNDS {
        let log_p: Vec<[f64; 256]> = groups
            .counts(rows)
            .iter()
            .map(|c| {
                // Smoothed, so a row may move to a group that has not seen all its values.
                let total = c.iter().sum::<u64>() as f64 + 128.0;
                std::array::from_fn(|b| ((c[b] as f64 + 0.5) / total).log2())
            })
            .collect();
        let mut moved = false;
        for (row, g) in rows.iter().zip(groups.of_row.iter_mut()) {
            let mut best = (f64::INFINITY, 0);
            for (i, log_p) in log_p.iter().enumerate() {
                let bits = row.bits_under(log_p);
                if bits < best.0 {
                    best = (bits, i as u8);
                }
            }
            moved |= best.1 != *g;
            *g = best.1;
        }
        if !moved {
            break;
        }
    }
    groups.compact()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of two kinds, interleaved: narrow ones (values 0 and ±1, an outlier's row) and
    /// wide ones.
    fn mixed_rows(rows: usize, row_len: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        (0..rows * row_len)
            .map(|i| {
                let r = next();
                let spread = if (i / row_len).is_multiple_of(3) {
                    40
                } else {
                    3
                };
                let v = (r % spread) as i32 - (spread / 2) as i32;
                v as i8 as u8
            })
            .collect()
    }

    fn decode(data: &[u8], n: usize) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![0u8; n];
        super::super::decode_int8_rows(data, &mut out)?;
        Ok(out)
    }

    #[test]
    fn mixed_rows_get_a_table_per_kind_and_round_trip() {
        let q = mixed_rows(96, 1024);
        let grouped = encode(&q, 1024).expect("two kinds of rows pay for two tables");
        let one = super::super::encode_int8(&q, super::super::Lanes::Wide);
        assert!(
            grouped.len() < one.len() * 9 / 10,
            "{} vs {}",
            grouped.len(),
            one.len()
        );
        let mut data = &grouped[..];
        let (tables, rows) = read(&mut data, q.len()).unwrap();
        assert_eq!(tables.len(), 2);
        for (r, &t) in rows.of_row.iter().enumerate() {
            assert_eq!(t == rows.of_row[0], r % 3 == 0, "row {r}");
        }
        assert_eq!(decode(&grouped, q.len()).unwrap(), q);
    }

    #[test]
    fn like_rows_keep_one_table_and_short_rows_are_not_grouped() {
        let q: Vec<u8> = mixed_rows(64, 1024)
            .chunks(1024)
            .enumerate()
            .filter(|(r, _)| r % 3 != 0)
            .flat_map(|(_, row)| row.to_vec())
            .collect();
        assert!(encode(&q, 1024).is_none());
        let short = mixed_rows(200, 512);
        assert!(encode(&short, 512).is_none());
        assert!(
            encode(&mixed_rows(10, 1040), 1040).is_none(),
            "not a multiple of the lanes"
        );
    }

    /// The stream of a grouped chunk is the one queuing each value with its row's table gives,
    /// whichever coder ran (AVX2 groups or scalar).
    #[test]
    fn grouped_stream_is_each_value_queued_with_its_rows_table() {
        let q = mixed_rows(33, 1024);
        let grouped = encode(&q, 1024).unwrap();
        let mut data = &grouped[..];
        let (tables, rows) = read(&mut data, q.len()).unwrap();
        let mut enc = super::super::Encoder::<WIDE>::with_capacity(q.len());
        for (i, &b) in q.iter().enumerate() {
            enc.push(tables[usize::from(rows.of_row[i / 1024])].symbol(b), i);
        }
        let mut queued = Vec::new();
        enc.finish_into(&mut queued);
        assert_eq!(data, &queued[..]);
    }

    #[test]
    fn runs_merge_rows_of_one_table_and_stop_at_the_range() {
        let rows = RowTables {
            row_len: 32,
            of_row: vec![0, 0, 1, 0, 0, 0],
        };
        let runs: Vec<_> = rows.runs(0..192).collect();
        assert_eq!(runs, [(0, 0..64), (1, 64..96), (0, 96..192)]);
        let runs: Vec<_> = rows.runs(40..128).collect();
        assert_eq!(runs, [(0, 40..64), (1, 64..96), (0, 96..128)]);
        assert_eq!(
            RowTables::one(70).runs(0..70).collect::<Vec<_>>(),
            [(0, 0..70)]
        );
    }

    #[test]
    fn damaged_headers_are_errors() {
        let q = mixed_rows(12, 1024);
        let good = encode(&q, 1024).unwrap();
        assert_eq!(decode(&good, q.len()).unwrap(), q);
        let n = q.len();
        // Row length 1024 is two varint bytes (0x80 0x08); then k.
        let mut bad_len = good.clone();
        bad_len[0] = 0x81;
        assert!(decode(&bad_len, n).is_err());
        for k in [0u8, 1, 5, 255] {
            let mut bad_k = good.clone();
            bad_k[2] = k;
            assert!(decode(&bad_k, n).is_err(), "k = {k}");
        }
        assert!(
            decode(&good, n - 1024).is_err(),
            "rows no longer match the chunk"
        );
        assert!(decode(&good[..good.len() / 2], n).is_err());
        for at in 0..good.len() {
            let mut d = good.clone();
            d[at] ^= 0x5A;
            // Any damage is an error or other bytes, never a panic.
            let _ = decode(&d, n);
        }
    }
}
