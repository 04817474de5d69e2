//! Pure compression: quantization, the residual model and the entropy coder. No I/O here; every
//! function maps byte slices to byte slices so the format layer can run them on any thread.

mod escapes;
pub mod freq;
pub mod quantize;
pub mod rans;
pub mod residual;
mod row_tables;

use freq::FreqTable;
use rans::{Decoder, Encoder};
use row_tables::RowTables;

pub use rans::simd_enabled;

/// How many rANS lanes a chunk's stream interleaves: 4 in version-1 blobs, 32 in version 2
/// (which SIMD decodes eight at a time). Both are read; new chunks are written wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lanes {
    Narrow,
    Wide,
}

/// Runs `$f::<L>($args)` with `L` the lane count of `$lanes`.
macro_rules! with_lanes {
    ($lanes:expr, $f:ident($($arg:expr),*)) => {
        match $lanes {
            $crate::codec::Lanes::Narrow => $f::<{ $crate::codec::rans::NARROW }>($($arg),*),
            $crate::codec::Lanes::Wide => $f::<{ $crate::codec::rans::WIDE }>($($arg),*),
        }
    };
}

/// A chunk that cannot be decoded: the blob is damaged (or was not written by us).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("corrupt chunk: {0}")]
    Corrupt(&'static str),
}

/// Codes int8 values with one static table per chunk: measured on real weights, richer contexts
/// (row or column spread) gain under 0.02 bits per value.
pub fn encode_int8(q: &[u8], lanes: Lanes) -> Vec<u8> {
    with_lanes!(lanes, encode_planes(&[q]))
}

/// Decodes [`encode_int8`] output as the bytes of the int8 values.
pub fn decode_int8(data: &[u8], lanes: Lanes, out: &mut [u8]) -> Result<(), CodecError> {
    decode(PlaneChunk {
        planes: Planes::Int8,
        lanes,
        data,
        out,
        finished: &mut |_| {},
    })
}

/// Codes int8 values on 32 lanes with one coarse table ([`freq::COARSE_BITS`], format version
/// 5): the AVX-512 loop then takes one gather per sixteen values instead of two. `None` when
/// the values are all one byte, which a coarse table cannot hold.
pub fn encode_int8_coarse(q: &[u8]) -> Option<Vec<u8>> {
    encode_planes_at::<{ rans::WIDE }>(&[q], freq::COARSE_BITS)
}

/// What an int8 chunk on 32 lanes may be coded as, fastest decode last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Coding {
    /// One 2^14 table ([`encode_int8`]).
    Fine,
    /// A 2^14 table per group of rows ([`encode_int8_rows`]).
    Rows,
    /// One coarse table ([`encode_int8_coarse`]).
    Coarse,
    /// Coarse tables, per group of rows where grouping pays, with their rare values escaped
    /// (format version 6, see [`escapes`]).
    Escaped,
}

/// The estimated sizes in bytes of an int8 chunk's codings (the streams' states aside, equal
/// in all): `None` where a coding does not apply (rows that do not pay for a table per group;
/// coarse tables for values that are nearly all one byte).
#[derive(Debug, Clone, Copy)]
pub struct Int8Estimates {
    pub fine: f64,
    pub rows: Option<f64>,
    pub coarse: Option<f64>,
    pub escaped: Option<f64>,
}

/// Codes int8 values, rows of `row_len`, on 32 lanes, as `pick` says from the estimated sizes
/// of the codings: the values are counted and grouped once and only the pick is coded. A pick
/// that does not apply codes [`Int8Coding::Fine`]. Says which was coded.
pub fn encode_int8_picking(
    q: &[u8],
    row_len: usize,
    pick: impl FnOnce(&Int8Estimates) -> Int8Coding,
) -> (Vec<u8>, Int8Coding) {
    let counts = [byte_counts(q)];
    let (fine, coarse) = planes_estimates(&[q], &counts);
    let grouped = row_tables::group_rows(q, row_len);
    let rows = grouped.as_ref().map(|(rows, counts)| {
        let coded: Option<f64> = counts.iter().map(FreqTable::best_cost).sum();
        coded.unwrap_or(f64::INFINITY) / 8.0 + rows.written_len(counts.len()) as f64
    });
    let escaped = match &grouped {
        Some((rows, group_counts)) => escapes::Plan::new(rows.clone(), group_counts),
        None => escapes::Plan::new(RowTables::one(q.len()), &counts),
    };
    let estimates = Int8Estimates {
        fine,
        rows,
        coarse,
        escaped: escaped.as_ref().map(escapes::Plan::estimate),
    };
    let bits = match (pick(&estimates), escaped, grouped) {
        (Int8Coding::Escaped, Some(plan), _) => return (plan.encode(q), Int8Coding::Escaped),
        (Int8Coding::Rows, _, Some((rows, group_counts))) => {
            let stored = row_tables::encode_grouped(q, &rows, &group_counts);
            return (stored, Int8Coding::Rows);
        }
        (Int8Coding::Coarse, _, _) if coarse.is_some() => freq::COARSE_BITS,
        _ => freq::TABLE_BITS,
    };
    let stored = encode_counted_planes::<{ rans::WIDE }>(&[q], &counts, bits)
        .expect("a coarse table is coded only where one holds the values");
    let coding = match bits {
        freq::TABLE_BITS => Int8Coding::Fine,
        _ => Int8Coding::Coarse,
    };
    (stored, coding)
}

/// Codes 16-bit floats on 32 lanes with 2^14 tables ([`encode_float`]) or coarse ones
/// ([`encode_float16_coarse`]), as `pick(fine, coarse)` says from their estimated sizes in
/// bytes (`coarse` is `None` where no coarse table holds a plane): `Some(true)` coarse,
/// `Some(false)` 2^14, `None` neither. The planes are counted once and only the pick is
/// coded; says whether it is coarse.
pub fn encode_float16_picking(
    data: &[u8],
    pick: impl FnOnce(f64, Option<f64>) -> Option<bool>,
) -> Option<(Vec<u8>, bool)> {
    let planes = rotated_planes(data, 2);
    let planes: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
    encode_picking(&planes, pick)
}

/// [`encode_float16_picking`] of any byte planes on 32 lanes.
fn encode_picking(
    planes: &[&[u8]],
    pick: impl FnOnce(f64, Option<f64>) -> Option<bool>,
) -> Option<(Vec<u8>, bool)> {
    let counts: Vec<[u64; 256]> = planes.iter().map(|p| byte_counts(p)).collect();
    let (fine, coarse) = planes_estimates(planes, &counts);
    let coarse = pick(fine, coarse)? && coarse.is_some();
    let bits = if coarse {
        freq::COARSE_BITS
    } else {
        freq::TABLE_BITS
    };
    let stored = encode_counted_planes::<{ rans::WIDE }>(planes, &counts, bits)
        .expect("a coarse table is picked only where one holds the planes");
    Some((stored, coarse))
}

/// Bytes [`encode_planes_at`] would store with 2^14 tables and with coarse ones: its raw
/// planes, and each coded plane's table and ideal coded size.
fn planes_estimates(planes: &[&[u8]], counts: &[[u64; 256]]) -> (f64, Option<f64>) {
    let at = |bits| -> Option<f64> {
        planes.iter().zip(counts).try_fold(0.0, |sum, (p, counts)| {
            let coded = FreqTable::best_cost_at(counts, bits)? / 8.0;
            Some(sum + coded.min(plane_kept_raw_above(p.len())).max(0.0))
        })
    };
    (at(freq::TABLE_BITS).unwrap_or(0.0), at(freq::COARSE_BITS))
}

/// The coded size in bytes above which a plane of `n` bytes is kept raw ([`Plane::choose`]).
fn plane_kept_raw_above(n: usize) -> f64 {
    (1.0 - RAW_PLANE_GAIN) * n as f64
}

/// Codes 16-bit floats as [`encode_float`] does on 32 lanes, a coded plane's table coarse
/// (see [`encode_int8_coarse`]); `None` when a plane that would be coded is all one byte.
pub fn encode_float16_coarse(data: &[u8]) -> Option<Vec<u8>> {
    let planes = rotated_planes(data, 2);
    let planes: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
    encode_planes_at::<{ rans::WIDE }>(&planes, freq::COARSE_BITS)
}

/// Decodes [`encode_int8_coarse`] output as the bytes of the int8 values.
pub fn decode_int8_coarse(data: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    decode(PlaneChunk {
        planes: Planes::Int8Coarse,
        lanes: Lanes::Wide,
        data,
        out,
        finished: &mut |_| {},
    })
}

/// Decodes [`encode_float16_coarse`] output into `out` (which has the decoded length).
pub fn decode_float16_coarse(data: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    decode(PlaneChunk {
        planes: Planes::Float16Coarse,
        lanes: Lanes::Wide,
        data,
        out,
        finished: &mut |_| {},
    })
}

/// Codes int8 values, rows of `row_len` (whole rows of a tensor), with a table per group of
/// rows whose values spread alike (format version 4, see [`row_tables`]); `None` when one
/// table codes them as well, counting the extra tables' price, or the rows are too short to
/// group: [`encode_int8`] then.
pub fn encode_int8_rows(q: &[u8], row_len: usize) -> Option<Vec<u8>> {
    row_tables::encode(q, row_len)
}

/// Decodes [`encode_int8_rows`] output as the bytes of the int8 values.
pub fn decode_int8_rows(data: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    decode(PlaneChunk {
        planes: Planes::Int8Rows,
        lanes: Lanes::Wide,
        data,
        out,
        finished: &mut |_| {},
    })
}

/// Decodes [`Int8Coding::Escaped`] output as the bytes of the int8 values.
pub fn decode_int8_escaped(data: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    decode(PlaneChunk {
        planes: Planes::Int8Escaped,
        lanes: Lanes::Wide,
        data,
        out,
        finished: &mut |_| {},
    })
}

/// Codes floating-point data as byte planes after rotating each value left by one bit, which
/// puts the exponent in the top byte and the sign next to the mantissa: the exponent plane then
/// carries almost all the redundancy and gets its own table.
pub fn encode_float(data: &[u8], elem_size: usize, lanes: Lanes) -> Vec<u8> {
    let planes = rotated_planes(data, elem_size);
    let planes: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
    with_lanes!(lanes, encode_planes(&planes))
}

/// The byte planes of [`rotate`]d elements, plane 0 first: 16-bit values (the common case) in
/// one pass, wider ones through an interleaved copy.
fn rotated_planes(data: &[u8], elem_size: usize) -> Vec<Vec<u8>> {
    let n = data.len() / elem_size;
    if elem_size == 2 {
        let (mut hi, mut lo) = (vec![0u8; n], vec![0u8; n]);
        for ((v, h), l) in data.chunks_exact(2).zip(&mut hi).zip(&mut lo) {
            let r = u16::from_le_bytes([v[0], v[1]]).rotate_left(1);
            (*h, *l) = ((r >> 8) as u8, r as u8);
        }
        return vec![hi, lo];
    }
    let rotated = rotate(data, elem_size, true);
    (0..elem_size)
        .map(|p| rotated.chunks_exact(elem_size).map(|e| e[p]).collect())
        .collect()
}

/// Byte frequencies, counted into four tables so that runs of one byte value do not wait on
/// their own increments.
fn byte_counts(bytes: &[u8]) -> [u64; 256] {
    let mut part = [[0u64; 256]; 4];
    let mut quads = bytes.chunks_exact(4);
    for q in &mut quads {
        for (table, &b) in part.iter_mut().zip(q) {
            table[b as usize] += 1;
        }
    }
    for &b in quads.remainder() {
        part[0][b as usize] += 1;
    }
    std::array::from_fn(|b| part.iter().map(|t| t[b]).sum())
}

/// Decodes [`encode_float`] output into `out` (which has the decoded length).
pub fn decode_float(
    data: &[u8],
    elem_size: usize,
    lanes: Lanes,
    out: &mut [u8],
) -> Result<(), CodecError> {
    decode(PlaneChunk {
        planes: Planes::Float(elem_size),
        lanes,
        data,
        out,
        finished: &mut |_| {},
    })
}

/// Rotates every little-endian element by one bit (left when `forward`) and lays its bytes out
/// most significant first, so plane 0 is the exponent-bearing byte.
fn rotate(data: &[u8], elem_size: usize, forward: bool) -> Vec<u8> {
    let bits = (elem_size * 8) as u32;
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let mut out = vec![0u8; data.len()];
    for (src, dst) in data
        .chunks_exact(elem_size)
        .zip(out.chunks_exact_mut(elem_size))
    {
        let v = if forward {
            src.iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        } else {
            src.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        };
        let r = if forward {
            ((v << 1) | (v >> (bits - 1))) & mask
        } else {
            ((v >> 1) | (v << (bits - 1))) & mask
        };
        if forward {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = (r >> (8 * (elem_size - 1 - i))) as u8;
            }
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = (r >> (8 * i)) as u8;
            }
        }
    }
    out
}

/// How one byte plane is stored.
enum Plane {
    /// rANS-coded with a static table.
    Coded(Box<FreqTable>),
    /// Stored as is, outside the rANS stream: the table would save under [`RAW_PLANE_GAIN`],
    /// and a plain byte copy decodes several times faster than a symbol (mantissa bytes).
    Raw,
}

/// A plane is kept raw unless coding it saves at least this fraction of its bytes.
const RAW_PLANE_GAIN: f64 = 0.015;
/// Descriptor byte of a raw plane, where a table's mode byte would be.
const RAW_PLANE: u8 = 4;

impl Plane {
    /// `None` when no symbol occurs, or no table of `bits` holds them.
    fn choose(counts: &[u64; 256], bits: u32) -> Option<Plane> {
        let table = FreqTable::best_for_at(counts, bits)?;
        let n: u64 = counts.iter().sum();
        let coded_bytes = table.coded_bits(counts) / 8.0 + table.written_len() as f64;
        Some(if coded_bytes > plane_kept_raw_above(n as usize) {
            Plane::Raw
        } else {
            Plane::Coded(Box::new(table))
        })
    }
}

/// Codes byte planes of equal length (plane `p` holds byte `p` of every element). Layout: one
/// descriptor per plane (a frequency table, or the byte 4 for a raw plane), then each raw
/// plane's bytes, then one rANS stream holding every coded plane's byte of element `i` on lane
/// `i % L`.
fn encode_planes<const L: usize>(planes: &[&[u8]]) -> Vec<u8> {
    encode_planes_at::<L>(planes, freq::TABLE_BITS).expect("a 2^14 table holds any plane")
}

/// [`encode_planes`] with tables of `bits`; `None` when one cannot hold a plane's bytes.
fn encode_planes_at<const L: usize>(planes: &[&[u8]], bits: u32) -> Option<Vec<u8>> {
    let counts: Vec<[u64; 256]> = planes.iter().map(|p| byte_counts(p)).collect();
    encode_counted_planes::<L>(planes, &counts, bits)
}

/// [`encode_planes_at`] with each plane's byte counts.
fn encode_counted_planes<const L: usize>(
    planes: &[&[u8]],
    counts: &[[u64; 256]],
    bits: u32,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if planes.first().is_none_or(|p| p.is_empty()) {
        return Some(out);
    }
    let kinds = counts
        .iter()
        .map(|c| Plane::choose(c, bits))
        .collect::<Option<Vec<_>>>()?;
    for kind in &kinds {
        match kind {
            Plane::Coded(t) => t.write(&mut out),
            Plane::Raw => out.push(RAW_PLANE),
        }
    }
    let mut coded = Vec::new();
    for (kind, &plane) in kinds.iter().zip(planes) {
        match kind {
            Plane::Raw => out.extend_from_slice(plane),
            Plane::Coded(t) => coded.push((t, plane)),
        }
    }
    if let [(table, plane)] = coded[..] {
        table.encode_all::<L>(plane, &mut out);
        return Some(out);
    }
    let n = planes.first().map_or(0, |p| p.len());
    let mut enc = Encoder::<L>::with_capacity(n * coded.len());
    for i in 0..n {
        for (table, plane) in &coded {
            enc.push(table.symbol(plane[i]), i);
        }
    }
    enc.finish_into(&mut out);
    Some(out)
}

/// What a plane-coded chunk holds: int8 values ([`encode_int8`]) or floats of `elem_size`
/// bytes ([`encode_float`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planes {
    Int8,
    /// Int8 values with a table per group of rows ([`encode_int8_rows`]; 32 lanes only).
    Int8Rows,
    Float(usize),
    /// [`Planes::Int8`] with a coarse table ([`encode_int8_coarse`]; 32 lanes only).
    Int8Coarse,
    /// 16-bit floats with coarse tables ([`encode_float16_coarse`]; 32 lanes only).
    Float16Coarse,
    /// Int8 values with coarse tables and escapes ([`Int8Coding::Escaped`]; 32 lanes only).
    Int8Escaped,
}

impl Planes {
    /// The layout the planes have, and the resolution of their tables.
    fn layout(self) -> (Planes, u32) {
        match self {
            Planes::Int8Coarse => (Planes::Int8, freq::COARSE_BITS),
            Planes::Float16Coarse => (Planes::Float(2), freq::COARSE_BITS),
            Planes::Int8Escaped => (Planes::Int8Escaped, freq::COARSE_BITS),
            other => (other, freq::TABLE_BITS),
        }
    }
}

/// A plane-coded chunk to decode into `out`, which has the decoded length.
pub struct PlaneChunk<'a> {
    pub planes: Planes,
    pub lanes: Lanes,
    pub data: &'a [u8],
    pub out: &'a mut [u8],
    /// Told of the output as it becomes final: see [`Finished`].
    pub finished: Finished<'a>,
}

/// Where a decode reports its output as it becomes final: consecutive stretches of `out` from
/// its start, each a slice of `out` itself, never written again once reported (a failed decode
/// may stop short). A table loop reports every [`STEP`] bytes or so, while they are still in
/// cache: a caller that checksums a decoded chunk only afterwards reads it back from memory
/// (8-11% of a decode, measured). Other decodes report their whole output at the end.
pub type Finished<'a> = &'a mut dyn FnMut(&[u8]);

/// Symbols per step of a table loop (a multiple of the lanes, so every step starts on lane 0):
/// two chunks' steps (at most 128 KiB of output each), and the stored bytes they read, fit in
/// L2 with room to spare.
pub const STEP: usize = 64 << 10;

/// Decodes one plane-coded chunk.
pub fn decode(c: PlaneChunk) -> Result<(), CodecError> {
    with_lanes!(c.lanes, decode_alone(c.planes, c.data, c.out, c.finished))
}

fn decode_alone<const L: usize>(
    planes: Planes,
    data: &[u8],
    out: &mut [u8],
    finished: Finished,
) -> Result<(), CodecError> {
    open::<L>(planes, data, out.len())?.decode(planes, out, finished)
}

/// Decodes two plane-coded chunks. When both come to one table loop on 32 lanes (int8 chunks,
/// and 16-bit floats with raw mantissas: nearly every large chunk), the two loops run as one:
/// a single stream keeps the core waiting on its lookups' latency, two keep it busy (see
/// [`rans::decode_table_bytes_together`]). The results are each chunk's own.
pub fn decode_two(a: PlaneChunk, b: PlaneChunk) -> [Result<(), CodecError>; 2] {
    use rans::WIDE;
    if (a.lanes, b.lanes) != (Lanes::Wide, Lanes::Wide) {
        return [decode(a), decode(b)];
    }
    let opened = [
        open::<WIDE>(a.planes, a.data, a.out.len()),
        open::<WIDE>(b.planes, b.data, b.out.len()),
    ];
    let [Ok(Opened::Table(mut ta)), Ok(Opened::Table(mut tb))] = opened else {
        let [oa, ob] = opened;
        return [
            oa.and_then(|o| o.decode(a.planes, a.out, a.finished)),
            ob.and_then(|o| o.decode(b.planes, b.out, b.finished)),
        ];
    };
    // Step by step, together while both have elements left, then the longer alone.
    let (na, nb) = (ta.region.len(), tb.region.len());
    for at in (0..na.max(nb)).step_by(STEP) {
        let (ra, rb) = (
            at.min(na)..(at + STEP).min(na),
            at.min(nb)..(at + STEP).min(nb),
        );
        match (ra.is_empty(), rb.is_empty()) {
            (false, false) => {
                step_together([
                    (&mut ta, &mut *a.out, ra.clone()),
                    (&mut tb, &mut *b.out, rb.clone()),
                ]);
                ta.finish_step(a.out, ra, a.finished);
                tb.finish_step(b.out, rb, b.finished);
            }
            (false, true) => ta.step_alone(a.out, ra, a.finished),
            (true, false) => tb.step_alone(b.out, rb, b.finished),
            (true, true) => {}
        }
    }
    [ta.finish(), tb.finish()]
}

/// A plane-coded chunk opened for decoding, by what its planes need.
enum Opened<'a, const L: usize> {
    /// No elements.
    Empty,
    /// One table loop, then a finishing step.
    Table(TableChunk<'a, L>),
    /// Any other mix of planes, element by element.
    General(OpenPlanes<'a, L>),
}

impl<const L: usize> Opened<'_, L> {
    /// Decodes the chunk alone.
    fn decode(self, planes: Planes, out: &mut [u8], finished: Finished) -> Result<(), CodecError> {
        match self {
            Opened::Empty => Ok(()),
            Opened::Table(mut t) => {
                for at in (0..t.region.len()).step_by(STEP) {
                    let elems = at..(at + STEP).min(t.region.len());
                    t.step_alone(out, elems, finished);
                }
                t.finish()
            }
            Opened::General(p) => {
                p.decode(planes, out)?;
                finished(out);
                Ok(())
            }
        }
    }
}

/// Decodes a step of two chunks, elements `elems` of each, with their table loops together.
fn step_together<const L: usize>(
    chunks: [(&mut TableChunk<'_, L>, &mut [u8], std::ops::Range<usize>); 2],
) {
    let [(ta, oa, ra), (tb, ob, rb)] = chunks;
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    rans::decode_table_bytes_together([ta.share(oa, ra, &mut sa), tb.share(ob, rb, &mut sb)]);
}

/// A chunk whose decode is one table loop into `out[region]`: an int8 chunk (the whole
/// output), or 16-bit floats with a coded exponent plane and raw mantissas (the exponent
/// bytes into the output's upper half, spread over the whole by [`TableChunk::finish_step`]).
struct TableChunk<'a, const L: usize> {
    /// One, or one per group of rows (version-4 int8 chunks).
    tables: Vec<FreqTable>,
    rows: RowTables,
    dec: Decoder<'a, L>,
    region: std::ops::Range<usize>,
    /// The mantissa plane of 16-bit floats.
    mantissas: Option<&'a [u8]>,
    /// The escaped values of a chunk with escapes.
    escapes: Option<escapes::Escapes<'a>>,
}

impl<'a, const L: usize> TableChunk<'a, L> {
    /// Whether the stream ended where it should, and every escaped value was used.
    fn finish(self) -> Result<(), CodecError> {
        self.dec.finish()?;
        self.escapes
            .as_ref()
            .map_or(Ok(()), escapes::Escapes::finish)
    }

    /// Decodes elements `elems` (a step) by themselves, then finishes them.
    fn step_alone(&mut self, out: &mut [u8], elems: std::ops::Range<usize>, finished: Finished) {
        let mut switches = Vec::new();
        rans::decode_table_bytes_together([self.share(out, elems.clone(), &mut switches)]);
        self.finish_step(out, elems, finished);
    }

    /// The table loop's share of elements `elems`: the stream, their output, the table they
    /// start with and, in `switches`, where it changes.
    fn share<'r>(
        &'r mut self,
        out: &'r mut [u8],
        elems: std::ops::Range<usize>,
        switches: &'r mut row_tables::Switches<'r>,
    ) -> rans::TableBytes<'r, 'a, L> {
        let TableChunk {
            tables,
            rows,
            dec,
            region,
            ..
        } = self;
        let (table, changes) = rows.schedule(tables, elems.clone());
        *switches = changes;
        let at = region.start + elems.start;
        rans::TableBytes {
            dec,
            table,
            out: &mut out[at..at + elems.len()],
            switches,
            at: elems.start,
        }
    }

    /// After the table loop has decoded elements `elems`: puts their escaped values in place
    /// or spreads their float exponents, and reports their output bytes (none once escaped
    /// values ran short: the chunk is damaged).
    fn finish_step(&mut self, out: &mut [u8], elems: std::ops::Range<usize>, finished: Finished) {
        if let Some(escapes) = &mut self.escapes {
            if escapes.fill(&mut out[elems.clone()]) {
                finished(&out[elems]);
            }
            return;
        }
        match self.mantissas {
            Some(lo) => {
                spread_exponents(lo, out, elems.clone());
                finished(&out[2 * elems.start..2 * elems.end]);
            }
            None => finished(&out[elems]),
        }
    }
}

/// Opens a chunk of `out_len` decoded bytes.
fn open<const L: usize>(
    planes: Planes,
    data: &[u8],
    out_len: usize,
) -> Result<Opened<'_, L>, CodecError> {
    let (layout, bits) = planes.layout();
    if bits != freq::TABLE_BITS && L != rans::WIDE {
        return Err(CodecError::Corrupt("coarse tables on narrow lanes"));
    }
    let (count, elem_size) = match layout {
        Planes::Int8 | Planes::Int8Rows | Planes::Int8Escaped => (1, 1),
        Planes::Float(e) => (e, e),
        Planes::Int8Coarse | Planes::Float16Coarse => unreachable!("layout() maps them"),
    };
    // The encoder only writes whole elements; a partial one would leave output bytes unwritten.
    if elem_size == 0 || !out_len.is_multiple_of(elem_size) {
        return Err(CodecError::Corrupt("chunk of a partial element"));
    }
    let n = out_len / elem_size;
    if matches!(planes, Planes::Int8Rows | Planes::Int8Escaped) {
        return open_int8_rows(data, n, planes == Planes::Int8Escaped);
    }
    let Some(mut open) = open_planes::<L>(data, count, n, bits)? else {
        return Ok(Opened::Empty);
    };
    let region = match (layout, &open.kinds[..]) {
        (Planes::Int8, [Plane::Coded(_)]) => 0..n,
        (Planes::Float(2), [Plane::Coded(_), Plane::Raw]) => n..2 * n,
        _ => return Ok(Opened::General(open)),
    };
    let Some(Plane::Coded(table)) = open.kinds.drain(..).next() else {
        unreachable!("the first plane is coded (matched above)");
    };
    Ok(Opened::Table(TableChunk {
        tables: vec![*table],
        rows: RowTables::one(n),
        dec: open.dec,
        region,
        mantissas: open.raw.first().copied(),
        escapes: None,
    }))
}

/// Opens a chunk of `n` int8 values with a table per group of rows (version 4), or with coarse
/// tables and `escaped` values (version 6).
fn open_int8_rows<const L: usize>(
    data: &[u8],
    n: usize,
    escaped: bool,
) -> Result<Opened<'_, L>, CodecError> {
    if L != rans::WIDE {
        return Err(CodecError::Corrupt("int8 row tables on narrow lanes"));
    }
    if n == 0 {
        return if data.is_empty() {
            Ok(Opened::Empty)
        } else {
            Err(CodecError::Corrupt("data for an empty chunk"))
        };
    }
    let mut buf = data;
    let (tables, rows, escapes) = match escaped {
        true => escapes::read(&mut buf, n).map(|(t, r, e)| (t, r, Some(e)))?,
        false => row_tables::read(&mut buf, n).map(|(t, r)| (t, r, None))?,
    };
    Ok(Opened::Table(TableChunk {
        tables,
        rows,
        dec: Decoder::new(buf)?,
        region: 0..n,
        mantissas: None,
        escapes,
    }))
}

/// The exponent plane, decoded into the output's second half, spread forward in place with the
/// mantissas a block at a time, for elements `elems` (which must go in order, each after the
/// ones before it): values below i + B end before byte n + i + B, the plane bytes still to
/// read. No per-chunk scratch to allocate and fault in.
fn spread_exponents(lo_plane: &[u8], out: &mut [u8], elems: std::ops::Range<usize>) {
    const B: usize = 4096;
    let n = lo_plane.len();
    let mut block = [0u8; B];
    for i in elems.clone().step_by(B) {
        let lo = &lo_plane[i..(i + B).min(elems.end)];
        let hi = &mut block[..lo.len()];
        hi.copy_from_slice(&out[n + i..n + i + lo.len()]);
        unrotate(&mut out[2 * i..2 * (i + lo.len())], hi, lo);
    }
}

/// Puts 16-bit values back from their rotated high and low bytes ([`put_unrotated`]) into
/// `out`, compiled for the widest vectors the CPU has: the baseline's SSE2 took 8% of a
/// `qstore decode` of MiniLM's INT8 file (whose BF16 embeddings are two thirds of it).
fn unrotate(out: &mut [u8], hi: &[u8], lo: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if rans::avx512_enabled() {
            // SAFETY: the CPU has AVX-512 F and BW (checked just now).
            return unsafe { unrotate_avx512(out, hi, lo) };
        }
        if simd_enabled() {
            // SAFETY: the CPU has AVX2 (checked just now).
            return unsafe { unrotate_avx2(out, hi, lo) };
        }
    }
    unrotate_portable(out, hi, lo);
}

#[inline(always)]
fn unrotate_portable(out: &mut [u8], hi: &[u8], lo: &[u8]) {
    for ((o, &h), &l) in out.chunks_exact_mut(2).zip(hi).zip(lo) {
        put_unrotated(o, h, l);
    }
}

/// [`unrotate_portable`] compiled with AVX-512 BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn unrotate_avx512(out: &mut [u8], hi: &[u8], lo: &[u8]) {
    unrotate_portable(out, hi, lo);
}

/// [`unrotate_portable`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unrotate_avx2(out: &mut [u8], hi: &[u8], lo: &[u8]) {
    unrotate_portable(out, hi, lo);
}

/// A plane-coded chunk opened for decoding: plane kinds, the raw planes' bytes, the stream.
struct OpenPlanes<'a, const L: usize> {
    kinds: Vec<Plane>,
    raw: Vec<&'a [u8]>,
    dec: Decoder<'a, L>,
}

impl<const L: usize> OpenPlanes<'_, L> {
    /// Decodes element by element, plane by plane; floats are rotated back.
    fn decode(self, planes: Planes, out: &mut [u8]) -> Result<(), CodecError> {
        let planes = planes.layout().0;
        let OpenPlanes {
            kinds,
            raw,
            mut dec,
        } = self;
        if let (Planes::Float(2), [Plane::Coded(hi_t), Plane::Coded(lo_t)]) = (planes, &kinds[..]) {
            for (i, o) in out.chunks_exact_mut(2).enumerate() {
                put_unrotated(o, hi_t.decode(&mut dec, i), lo_t.decode(&mut dec, i));
            }
            return dec.finish();
        }
        for (i, elem) in out.chunks_exact_mut(kinds.len()).enumerate() {
            let mut raw_planes = raw.iter();
            for (o, kind) in elem.iter_mut().zip(&kinds) {
                *o = match kind {
                    Plane::Coded(t) => t.decode(&mut dec, i),
                    Plane::Raw => raw_planes.next().expect("one slice per raw plane")[i],
                };
            }
        }
        if let Planes::Float(elem_size) = planes {
            let restored = rotate(out, elem_size, false);
            out.copy_from_slice(&restored);
        }
        dec.finish()
    }
}

/// Reads the descriptors and raw planes of a chunk of `n` elements; `None` for an empty chunk.
fn open_planes<const L: usize>(
    data: &[u8],
    planes: usize,
    n: usize,
    bits: u32,
) -> Result<Option<OpenPlanes<'_, L>>, CodecError> {
    if n == 0 {
        return if data.is_empty() {
            Ok(None)
        } else {
            Err(CodecError::Corrupt("data for an empty chunk"))
        };
    }
    let mut buf = data;
    let mut kinds = Vec::with_capacity(planes);
    for _ in 0..planes {
        if buf.first() == Some(&RAW_PLANE) {
            buf = &buf[1..];
            kinds.push(Plane::Raw);
        } else {
            kinds.push(Plane::Coded(Box::new(FreqTable::read_at(&mut buf, bits)?)));
        }
    }
    let mut raw = Vec::new();
    for kind in &kinds {
        if let Plane::Raw = kind {
            raw.push(freq::take(&mut buf, n)?);
        }
    }
    Ok(Some(OpenPlanes {
        kinds,
        raw,
        dec: Decoder::new(buf)?,
    }))
}

/// Writes a 16-bit value from its rotated planes.
#[inline(always)]
fn put_unrotated(out: &mut [u8], hi: u8, lo: u8) {
    out.copy_from_slice(
        &((u16::from(hi) << 8) | u16::from(lo))
            .rotate_right(1)
            .to_le_bytes(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop this CPU takes (AVX-512, AVX2, or portable: CI runs the codec tests with
    /// QSTORE_NO_AVX512 and QSTORE_SCALAR too) gives the portable loop's bytes, tail included.
    #[test]
    fn unrotate_gives_the_portable_bytes() {
        let n = 1000;
        let hi: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
        let lo: Vec<u8> = (0..n).map(|i| (i * 101 + 7) as u8).collect();
        let (mut got, mut want) = (vec![0u8; 2 * n], vec![0u8; 2 * n]);
        unrotate(&mut got, &hi, &lo);
        unrotate_portable(&mut want, &hi, &lo);
        assert_eq!(got, want);
        assert_eq!(&want[..2], &0x0B07u16.rotate_right(1).to_le_bytes());
    }

    #[test]
    fn float_planes_round_trip_every_width() {
        for es in [2usize, 4, 8] {
            let data: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            let data = &data[..data.len() / es * es];
            for lanes in [Lanes::Narrow, Lanes::Wide] {
                let enc = encode_float(data, es, lanes);
                let mut out = vec![0u8; data.len()];
                decode_float(&enc, es, lanes, &mut out).unwrap();
                assert_eq!(out, data);
            }
        }
        assert!(encode_float(&[], 2, Lanes::Wide).is_empty());
        decode_float(&[], 2, Lanes::Wide, &mut []).unwrap();
    }

    /// Every pair of chunk shapes (int8, 16-bit floats with raw mantissas, 32-bit floats,
    /// narrow, empty, int8 with a table per group of rows; valid or damaged) decodes two at a
    /// time exactly as each does alone, in steps or not; and what a decode that succeeds
    /// reports as finished is its whole output, in order.
    #[test]
    fn chunks_decode_two_at_a_time_as_alone() {
        let q: Vec<u8> = (0..70_001u32)
            .map(|i| (((i.wrapping_mul(2654435761) >> 24) as i8) / 16) as u8)
            .collect();
        let floats: Vec<u8> = (0..150_001u32)
            .flat_map(|i| {
                let x = ((i.wrapping_mul(2654435761) >> 8) as f32 / 16_777_216.0 - 0.5) * 0.1;
                half::bf16::from_f32(x).to_le_bytes()
            })
            .collect();
        let f32s: Vec<u8> = (0..9_000u32)
            .flat_map(|i| (i as f32 * 0.37).sin().to_le_bytes())
            .collect();
        // Rows of 1,056 values of four spreads in an irregular order: tables change every few
        // rows, at other places than a partner's.
        let rows: Vec<u8> = (0..60 * 1056u32)
            .map(|i| {
                let spread = [3, 9, 40, 120][((i / 1056) * (i / 1056) % 5 % 4) as usize];
                ((i.wrapping_mul(2654435761) >> 16) % spread) as i32 - spread as i32 / 2
            })
            .map(|v| v as i8 as u8)
            .collect();
        let grouped = encode_int8_rows(&rows, 1056).expect("rows of four spreads are grouped");
        let chunks = [
            (
                Planes::Int8,
                Lanes::Wide,
                encode_int8(&q, Lanes::Wide),
                q.len(),
            ),
            (
                Planes::Float(2),
                Lanes::Wide,
                encode_float(&floats, 2, Lanes::Wide),
                floats.len(),
            ),
            (
                Planes::Float(4),
                Lanes::Wide,
                encode_float(&f32s, 4, Lanes::Wide),
                f32s.len(),
            ),
            (
                Planes::Int8,
                Lanes::Narrow,
                encode_int8(&q[..5000], Lanes::Narrow),
                5000,
            ),
            (Planes::Int8, Lanes::Wide, Vec::new(), 0),
            (Planes::Int8Rows, Lanes::Wide, grouped, rows.len()),
        ];
        let damaged = |data: &[u8]| {
            let mut d = data.to_vec();
            if let Some(b) = d.get_mut(data.len() * 2 / 3) {
                *b ^= 0x21;
            }
            d
        };
        let reported_all = |r: &Result<(), CodecError>, reports: &[u8], out: &[u8]| {
            if r.is_ok() {
                assert_eq!(reports, out, "reports are not the output");
            }
        };
        let alone = |(planes, lanes, data, n): (Planes, Lanes, &[u8], usize)| {
            let (mut out, mut reports) = (vec![0u8; n], Vec::new());
            let r = decode(PlaneChunk {
                planes,
                lanes,
                data,
                out: &mut out,
                finished: &mut |b| reports.extend_from_slice(b),
            });
            reported_all(&r, &reports, &out);
            (r, out)
        };
        for (pa, la, da, na) in &chunks {
            for (pb, lb, db, nb) in &chunks {
                let (a_bad, b_bad) = (damaged(da), damaged(db));
                for (da, db) in [(da, db), (&a_bad, db), (da, &b_bad)] {
                    let (want_a, want_b) = (alone((*pa, *la, da, *na)), alone((*pb, *lb, db, *nb)));
                    let (mut oa, mut ob) = (vec![0u8; *na], vec![0u8; *nb]);
                    let (mut reports_a, mut reports_b) = (Vec::new(), Vec::new());
                    let [ra, rb] = decode_two(
                        PlaneChunk {
                            planes: *pa,
                            lanes: *la,
                            data: da,
                            out: &mut oa,
                            finished: &mut |b| reports_a.extend_from_slice(b),
                        },
                        PlaneChunk {
                            planes: *pb,
                            lanes: *lb,
                            data: db,
                            out: &mut ob,
                            finished: &mut |b| reports_b.extend_from_slice(b),
                        },
                    );
                    reported_all(&ra, &reports_a, &oa);
                    reported_all(&rb, &reports_b, &ob);
                    assert_eq!((ra, oa), want_a, "{pa:?} {la:?} with {pb:?} {lb:?}");
                    assert_eq!((rb, ob), want_b, "{pb:?} {lb:?} after {pa:?} {la:?}");
                }
            }
        }
        assert_eq!(
            alone((Planes::Int8, Lanes::Wide, &chunks[0].2, q.len())).1,
            q
        );
        assert_eq!(
            alone((Planes::Float(2), Lanes::Wide, &chunks[1].2, floats.len())).1,
            floats
        );
        assert_eq!(
            alone((Planes::Float(4), Lanes::Wide, &chunks[2].2, f32s.len())).1,
            f32s
        );
        assert_eq!(
            alone((Planes::Int8Rows, Lanes::Wide, &chunks[5].2, rows.len())).1,
            rows
        );
    }

    #[test]
    fn rotation_moves_the_bfloat16_exponent_into_the_top_byte() {
        let one = 0x3F80u16.to_le_bytes();
        assert_eq!(rotate(&one, 2, true), [0x7F, 0x00]);
        assert_eq!(rotate(&rotate(&one, 2, true), 2, false), one);
    }

    #[test]
    fn int8_round_trips_and_compresses_a_peaked_distribution() {
        let q: Vec<u8> = (0..100_000u32)
            .map(|i| (((i.wrapping_mul(2654435761) >> 24) as i8) / 32) as u8)
            .collect();
        for lanes in [Lanes::Narrow, Lanes::Wide] {
            let enc = encode_int8(&q, lanes);
            assert!(enc.len() < q.len() / 2);
            let mut out = vec![0u8; q.len()];
            decode_int8(&enc, lanes, &mut out).unwrap();
            assert_eq!(out, q);
            assert!(decode_int8(&enc[..enc.len() - 2], lanes, &mut out).is_err());
        }
    }
}
