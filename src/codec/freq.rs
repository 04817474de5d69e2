//! Static order-0 frequency tables over byte symbols, normalised to 2^14 and stored per chunk.
//!
//! A chunk covers up to 2^19 symbols, so a table of at most a few hundred bytes costs well under
//! 0.01 bits per symbol, while letting the decoder use a direct slot → symbol lookup.

use super::CodecError;
use super::rans::{Decoder, Symbol};

/// Probability resolution of table-coded symbols.
pub const TABLE_BITS: u32 = 14;
const TOTAL: u32 = 1 << TABLE_BITS;

/// Normalised frequencies plus the decoder's lookup structures.
pub struct FreqTable {
    freq: [u32; 256],
    start: [u32; 256],
    lookup: Box<[u8; TOTAL as usize]>,
}

impl FreqTable {
    /// Builds a table from symbol counts; `None` when no symbol occurs.
    pub fn from_counts(counts: &[u64; 256]) -> Option<FreqTable> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let mut freq = [0u32; 256];
        for (f, &c) in freq.iter_mut().zip(counts) {
            if c > 0 {
                *f = ((c as u128 * TOTAL as u128 / total as u128) as u32).max(1);
            }
        }
        rebalance(&mut freq, counts);
        Some(Self::from_freqs(freq))
    }

    fn from_freqs(freq: [u32; 256]) -> FreqTable {
        let mut start = [0u32; 256];
        let mut lookup = Box::new([0u8; TOTAL as usize]);
        let mut acc = 0u32;
        for s in 0..256 {
            start[s] = acc;
            lookup[acc as usize..(acc + freq[s]) as usize].fill(s as u8);
            acc += freq[s];
        }
        FreqTable {
            freq,
            start,
            lookup,
        }
    }

    /// The coding interval of `sym`; the symbol must have occurred in the counts.
    #[inline(always)]
    pub fn symbol(&self, sym: u8) -> Symbol {
        Symbol {
            start: self.start[sym as usize],
            freq: self.freq[sym as usize],
            bits: TABLE_BITS,
        }
    }

    /// Decodes one symbol from `lane`.
    #[inline(always)]
    pub fn decode(&self, dec: &mut Decoder, lane: usize) -> u8 {
        let sym = self.lookup[dec.slot(lane, TABLE_BITS) as usize & (TOTAL as usize - 1)];
        dec.advance(lane, self.symbol(sym));
        sym
    }

    /// Decodes one symbol per byte of `out`, element `i` on lane `i % 4`.
    pub fn decode_all(&self, dec: &mut Decoder, out: &mut [u8]) {
        dec.decode_table_bytes(&self.lookup, &self.start, &self.freq, out);
    }

    /// Appends the table: a mode byte, then per symbol a zigzag LEB128 value, either the
    /// frequency itself (mode 0) or its difference from the previous symbol's (mode 1: weight
    /// distributions are smooth, so most differences fit one byte), whichever is shorter. A zero
    /// frequency is followed by a byte counting further zeros (up to 255).
    pub fn write(&self, out: &mut Vec<u8>) {
        let (plain, delta) = (self.encode_entries(false), self.encode_entries(true));
        let (mode, best) = if delta.len() < plain.len() {
            (1, delta)
        } else {
            (0, plain)
        };
        out.push(mode);
        out.extend_from_slice(&best);
    }

    fn encode_entries(&self, delta: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = 0;
        let mut prev = 0i64;
        while s < 256 {
            let f = i64::from(self.freq[s]);
            write_varint(&mut out, zigzag(f - prev));
            if delta {
                prev = f;
            }
            s += 1;
            if f == 0 {
                let run = self.freq[s..]
                    .iter()
                    .take(255)
                    .take_while(|&&f| f == 0)
                    .count();
                out.push(run as u8);
                s += run;
            }
        }
        out
    }

    /// Reads a table written by [`FreqTable::write`], rejecting any that does not sum to 2^14.
    pub fn read(buf: &mut &[u8]) -> Result<FreqTable, CodecError> {
        let delta = match take(buf, 1)?[0] {
            0 => false,
            1 => true,
            _ => return Err(CodecError::Corrupt("unknown frequency table mode")),
        };
        let mut freq = [0u32; 256];
        let mut s = 0;
        let mut prev = 0i64;
        while s < 256 {
            let f = prev.saturating_add(unzigzag(read_varint(buf)?));
            if !(0..=i64::from(TOTAL)).contains(&f) {
                return Err(CodecError::Corrupt("frequency out of range"));
            }
            freq[s] = f as u32;
            if delta {
                prev = f;
            }
            s += 1;
            if f == 0 {
                let run = *take(buf, 1)?.first().unwrap() as usize;
                if s + run > 256 {
                    return Err(CodecError::Corrupt("frequency table overruns 256 symbols"));
                }
                s += run;
            }
        }
        if freq.iter().sum::<u32>() != TOTAL {
            return Err(CodecError::Corrupt("frequency table does not sum to 2^14"));
        }
        Ok(Self::from_freqs(freq))
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Makes the frequencies sum to exactly 2^14 by moving the rounding error onto the symbols that
/// can absorb it with the least loss (the most frequent ones).
fn rebalance(freq: &mut [u32; 256], counts: &[u64; 256]) {
    let mut sum: i64 = freq.iter().map(|&f| i64::from(f)).sum();
    let mut order: Vec<usize> = (0..256).filter(|&s| counts[s] > 0).collect();
    order.sort_by_key(|&s| std::cmp::Reverse(counts[s]));
    while sum != i64::from(TOTAL) {
        let mut changed = false;
        for &s in &order {
            if sum < i64::from(TOTAL) {
                freq[s] += 1;
                sum += 1;
                changed = true;
            } else if freq[s] > 1 {
                freq[s] -= 1;
                sum -= 1;
                changed = true;
            }
            if sum == i64::from(TOTAL) {
                break;
            }
        }
        assert!(changed, "at most 256 symbols always fit in 2^14");
    }
}

/// Appends an unsigned LEB128 integer.
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an unsigned LEB128 integer of at most 10 bytes.
pub fn read_varint(buf: &mut &[u8]) -> Result<u64, CodecError> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *take(buf, 1)?.first().unwrap();
        v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(CodecError::Corrupt("varint too long"))
}

/// Splits `n` bytes off the front of `buf`.
pub fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], CodecError> {
    if buf.len() < n {
        return Err(CodecError::Corrupt("chunk ends early"));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_normalise_and_round_trip() {
        let mut counts = [0u64; 256];
        counts[0] = 1_000_000;
        counts[7] = 1;
        counts[255] = 3;
        for c in counts.iter_mut().skip(100).take(50) {
            *c = 12345;
        }
        let t = FreqTable::from_counts(&counts).unwrap();
        assert_eq!(t.freq.iter().sum::<u32>(), TOTAL);
        assert!(counts.iter().zip(t.freq).all(|(&c, f)| (c > 0) == (f > 0)));
        let mut buf = Vec::new();
        t.write(&mut buf);
        assert!(buf.len() < 200, "{}", buf.len());
        let back = FreqTable::read(&mut &buf[..]).unwrap();
        assert_eq!(back.freq, t.freq);
    }

    #[test]
    fn every_symbol_present_still_fits() {
        let mut counts = [1u64; 256];
        counts[3] = u64::MAX / 512;
        let t = FreqTable::from_counts(&counts).unwrap();
        assert_eq!(t.freq.iter().sum::<u32>(), TOTAL);
        assert!(t.freq.iter().all(|&f| f >= 1));
    }

    #[test]
    fn corrupt_tables_are_errors() {
        assert!(FreqTable::read(&mut &[0u8, 0x80, 0x80, 0x80][..]).is_err());
        assert!(FreqTable::read(&mut &[0u8, 0, 255, 0, 0][..]).is_err());
        assert!(FreqTable::read(&mut &[7u8, 0, 255][..]).is_err());
        assert!(FreqTable::read(&mut &[][..]).is_err());
        assert!(FreqTable::from_counts(&[0; 256]).is_none());
    }
}
