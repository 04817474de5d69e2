//! The version-2 residual (codec 12): positions and whole values in separate streams.
//!
//! After the exceptions and the table come `varint whole_len`, a 4-lane stream of `whole_len`
//! bytes holding the whole values (the `k`-th whole value of the chunk on lane `k % 4`; absent
//! when the chunk has none), and a 32-lane stream holding one [`Split`] position per element,
//! element `i` on lane `i % 32`. Elements that are whole values or exceptions take the
//! one-position no-op there, which reads nothing and leaves the lane's state as it is, so every
//! element has exactly one symbol and 32 consecutive elements decode in step: the decoder
//! fills a block with each element's split (a table lookup by row and int8 byte), decodes the
//! positions eight lanes at a time, and assembles codes as `base + position`.

use super::super::freq::{FreqTable, read_varint, take, write_varint};
use super::super::quantize::{HighDtype, RowIntervals};
use super::super::rans::{Decoder, Encoder, NARROW, Split, WIDE};
use super::{ChunkRows, CodecError, Head, Item, ScaleCache, decode_whole, push_whole};

/// Elements per decode block: their splits and positions (24 KiB) stay in L1.
const BLOCK: usize = 2048;

/// Codes the streams of a chunk whose exceptions and table are already in `out`.
pub(super) fn code_streams(items: &[Item], table: Option<&FreqTable>, out: &mut Vec<u8>) {
    let mut positions = Encoder::<WIDE>::with_capacity(items.len());
    let mut whole = Encoder::<NARROW>::with_capacity(0);
    let mut k = 0;
    for (i, item) in items.iter().enumerate() {
        match *item {
            Item::Whole { hi, lo, low } => {
                push_whole(&mut whole, table, hi, lo, low, k);
                k += 1;
            }
            Item::Position { r, u } => {
                positions.push(Split::of(u.len()).symbol(u32::from(r)), i);
            }
            Item::Exception => {}
        }
    }
    let mut whole_stream = Vec::new();
    if k > 0 {
        whole.finish_into(&mut whole_stream);
    }
    write_varint(out, whole_stream.len() as u64);
    out.extend_from_slice(&whole_stream);
    positions.finish_into(out);
}

/// What decoding a row needs, per distinct scale: its intervals, and per int8 byte the packed
/// split of the position and the code position 0 stands for (sign included).
struct RowCoding {
    iv: RowIntervals,
    split: [u32; 256],
    base: [u16; 256],
}

impl RowCoding {
    fn new(dtype: HighDtype, scale: f32) -> RowCoding {
        let iv = RowIntervals::new(dtype, scale);
        let mut split = [Split::NOOP.packed(); 256];
        let mut base = [0u16; 256];
        if !iv.is_degenerate() {
            for b in 1..256 {
                let q = b as u8 as i8;
                if q == i8::MIN {
                    continue;
                }
                let (lo, u) = iv.interval(q.unsigned_abs() as usize);
                split[b] = Split::of(u.len()).packed();
                base[b] = lo | if q < 0 { 0x8000 } else { 0 };
            }
        }
        RowCoding { iv, split, base }
    }

    #[inline(always)]
    fn is_whole(&self, q: u8) -> bool {
        q == 0 || self.iv.is_degenerate()
    }
}

/// Decodes the streams after `head` into `out` (little-endian codes).
pub(super) fn decode(rows: &ChunkRows, head: Head, out: &mut [u8]) -> Result<(), CodecError> {
    let n = out.len() / 2;
    let Head {
        exceptions,
        table,
        rest: mut buf,
    } = head;
    let whole_len = usize::try_from(read_varint(&mut buf)?)
        .map_err(|_| CodecError::Corrupt("whole-value stream longer than memory"))?;
    let whole_bytes = take(&mut buf, whole_len)?;
    let mut whole = match whole_len {
        0 => None,
        _ => Some(Decoder::<NARROW>::new(whole_bytes)?),
    };
    let mut positions = Decoder::<WIDE>::new(buf)?;
    let mut cache = ScaleCache::with(rows.dtype, RowCoding::new);
    let (mut splits, mut r) = ([0u32; BLOCK], [0u16; BLOCK]);
    let (mut exc, mut k) = (0, 0);
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        for (row, span) in row_spans(start..end, rows.cols) {
            let c = cache.get(rows.scales[row]);
            for (s, &q) in splits[span.start - start..span.end - start]
                .iter_mut()
                .zip(&rows.q[span])
            {
                *s = c.split[q as usize];
            }
        }
        for &(i, _) in exceptions[exc..].iter().take_while(|e| e.0 < end) {
            splits[i - start] = Split::NOOP.packed();
        }
        positions.decode_positions(&splits[..end - start], &mut r[..end - start]);
        for (row, span) in row_spans(start..end, rows.cols) {
            let c = cache.get(rows.scales[row]);
            for i in span {
                let q = rows.q[i];
                let code = if exceptions.get(exc).is_some_and(|e| e.0 == i) {
                    exc += 1;
                    exceptions[exc - 1].1
                } else if c.is_whole(q) {
                    let dec = whole
                        .as_mut()
                        .ok_or(CodecError::Corrupt("whole value without its stream"))?;
                    k += 1;
                    decode_whole::<false, NARROW>(&c.iv, table.as_ref(), dec, k - 1)?
                } else {
                    c.base[q as usize].wrapping_add(r[i - start])
                };
                out[2 * i..2 * i + 2].copy_from_slice(&code.to_le_bytes());
            }
        }
    }
    positions.finish()?;
    whole.map_or(Ok(()), Decoder::finish)
}

/// The rows that elements `span` cover, each with the part of `span` inside it.
fn row_spans(
    span: std::ops::Range<usize>,
    cols: usize,
) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
    let first_row = span.start / cols.max(1);
    (first_row..)
        .map(move |row| {
            let a = (row * cols).max(span.start);
            (row, a..((row + 1) * cols).min(span.end))
        })
        .take_while(|(_, s)| s.start < s.end)
}
