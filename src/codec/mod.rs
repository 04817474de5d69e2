//! Pure compression: quantization, the residual model and the entropy coder. No I/O here; every
//! function maps byte slices to byte slices so the format layer can run them on any thread.

pub mod freq;
pub mod quantize;
pub mod rans;
pub mod residual;

use freq::FreqTable;
use rans::{Decoder, Encoder};

/// A chunk that cannot be decoded: the blob is damaged (or was not written by us).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("corrupt chunk: {0}")]
    Corrupt(&'static str),
}

/// Codes int8 values with one static table per chunk: measured on real weights, richer contexts
/// (row or column spread) gain under 0.02 bits per value.
pub fn encode_int8(q: &[u8]) -> Vec<u8> {
    encode_planes_raw(q, 1)
}

/// Decodes [`encode_int8`] output as the bytes of the int8 values.
pub fn decode_int8(data: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    decode_planes_raw(data, 1, out)
}

/// Codes floating-point data as byte planes after rotating each value left by one bit, which
/// puts the exponent in the top byte and the sign next to the mantissa: the exponent plane then
/// carries almost all the redundancy and gets its own table.
pub fn encode_float(data: &[u8], elem_size: usize) -> Vec<u8> {
    let rotated = rotate(data, elem_size, true);
    encode_planes_raw(&rotated, elem_size)
}

/// Decodes [`encode_float`] output into `out` (which has the decoded length).
pub fn decode_float(data: &[u8], elem_size: usize, out: &mut [u8]) -> Result<(), CodecError> {
    if elem_size == 2 {
        return decode_float16(data, out);
    }
    decode_planes_raw(data, elem_size, out)?;
    let restored = rotate(out, elem_size, false);
    out.copy_from_slice(&restored);
    Ok(())
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

/// Codes `data` as `planes` interleaved byte planes, one static table each; every byte of
/// element `i` goes on rANS lane `i % 4`. Layout: one table per plane, then the rANS stream.
fn encode_planes_raw(data: &[u8], planes: usize) -> Vec<u8> {
    let mut counts = vec![[0u64; 256]; planes];
    for elem in data.chunks_exact(planes) {
        for (c, &b) in counts.iter_mut().zip(elem) {
            c[b as usize] += 1;
        }
    }
    let mut out = Vec::new();
    let Some(tables) = counts
        .iter()
        .map(FreqTable::best_for)
        .collect::<Option<Vec<_>>>()
    else {
        return out;
    };
    tables.iter().for_each(|t| t.write(&mut out));
    let mut enc = Encoder::with_capacity(data.len());
    for (i, elem) in data.chunks_exact(planes).enumerate() {
        for (t, &b) in tables.iter().zip(elem) {
            enc.push(t.symbol(b), i);
        }
    }
    enc.finish_into(&mut out);
    out
}

/// Reads the tables of a plane-coded chunk and opens its stream; `None` for an empty chunk.
fn open_planes<'a>(
    data: &'a [u8],
    planes: usize,
    out_len: usize,
) -> Result<Option<(Vec<FreqTable>, Decoder<'a>)>, CodecError> {
    if out_len == 0 {
        return if data.is_empty() {
            Ok(None)
        } else {
            Err(CodecError::Corrupt("data for an empty chunk"))
        };
    }
    let mut buf = data;
    let tables = (0..planes)
        .map(|_| FreqTable::read(&mut buf))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((tables, Decoder::new(buf)?)))
}

fn decode_planes_raw(data: &[u8], planes: usize, out: &mut [u8]) -> Result<(), CodecError> {
    let Some((tables, mut dec)) = open_planes(data, planes, out.len())? else {
        return Ok(());
    };
    if planes == 1 {
        tables[0].decode_all(&mut dec, out);
    } else {
        for (i, elem) in out.chunks_exact_mut(planes).enumerate() {
            for (o, t) in elem.iter_mut().zip(&tables) {
                *o = t.decode(&mut dec, i);
            }
        }
    }
    dec.finish()
}

/// Float16-family decode fused with the inverse rotation: no intermediate buffer.
fn decode_float16(data: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let Some((tables, mut dec)) = open_planes(data, 2, out.len())? else {
        return Ok(());
    };
    let (hi_t, lo_t) = (&tables[0], &tables[1]);
    let one = |dec: &mut Decoder, lane: usize, o: &mut [u8]| {
        let r = (u16::from(hi_t.decode(dec, lane)) << 8) | u16::from(lo_t.decode(dec, lane));
        o.copy_from_slice(&r.rotate_right(1).to_le_bytes());
    };
    let mut quads = out.chunks_exact_mut(8);
    for quad in &mut quads {
        for (lane, o) in quad.chunks_exact_mut(2).enumerate() {
            one(&mut dec, lane, o);
        }
    }
    for (lane, o) in quads.into_remainder().chunks_exact_mut(2).enumerate() {
        one(&mut dec, lane, o);
    }
    dec.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_planes_round_trip_every_width() {
        for es in [2usize, 4, 8] {
            let data: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            let data = &data[..data.len() / es * es];
            let enc = encode_float(data, es);
            let mut out = vec![0u8; data.len()];
            decode_float(&enc, es, &mut out).unwrap();
            assert_eq!(out, data);
        }
        assert!(encode_float(&[], 2).is_empty());
        decode_float(&[], 2, &mut []).unwrap();
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
        let enc = encode_int8(&q);
        assert!(enc.len() < q.len() / 2);
        let mut out = vec![0u8; q.len()];
        decode_int8(&enc, &mut out).unwrap();
        assert_eq!(out, q);
        assert!(decode_int8(&enc[..enc.len() - 2], &mut out).is_err());
    }
}
