//! Static order-0 frequency tables over byte symbols, normalised to 2^14 (or 2^12, see
//! [`COARSE_BITS`]) and stored per chunk.
//!
//! A chunk covers up to 2^19 symbols, so a table of at most a few hundred bytes costs well under
//! 0.01 bits per symbol, while letting the decoder use a direct slot → symbol lookup.

use super::CodecError;
use super::rans::{BytePlanes, Decoder, LOOKUP_LEN, Symbol, TableView};
pub use super::rans::{COARSE_BITS, TABLE_BITS};

const TOTAL: u32 = 1 << TABLE_BITS;
/// Slot entries of a coarse table ([`TableView::entries`]).
const COARSE_SLOTS: usize = 1 << COARSE_BITS;

/// Normalised frequencies plus the decoder's lookup structures.
pub struct FreqTable {
    freq: [u32; 256],
    start: [u32; 256],
    /// `freq | start << 16` per symbol, for the decoder.
    packed: [u32; 256],
    /// `packed` as byte planes, for the AVX-512 VBMI decode loop.
    planes: BytePlanes<4>,
    /// Taken from this thread's spares when built, given back when dropped.
    lookups: Option<Lookups>,
    /// The resolution: the frequencies sum to `2^bits`.
    bits: u32,
}

/// A table's slot lookups, built for every chunk decoded: 16 KiB, plus 128 KiB of slot entries
/// where the AVX2 loops run ([`slots_wanted`]). Allocated fresh each time, they often came
/// from the kernel as new pages, faulted in and zeroed (4% of the CPU time of an INT8 decode
/// with three tables per chunk, measured); dropped tables leave them to the next table built
/// on the thread instead.
struct Lookups {
    /// The symbol of each slot, then padding.
    lookup: Box<[u8; LOOKUP_LEN]>,
    /// `sym << 32 | freq << 16 | (slot - start)` per slot, for the AVX2 decode loops.
    slots: Option<Box<[u64; TOTAL as usize]>>,
    /// A coarse table's slot entries, for the AVX-512 loops (see [`TableView::entries`]).
    entries: Option<Box<[u32; COARSE_SLOTS]>>,
}

/// Whether tables get their slot entries: only the AVX2 loops read them (one scalar load per
/// symbol instead of two dependent ones, 8-11% faster on Zen 3). The AVX-512 loops gather
/// the symbol, then its `freq | start`, from 17 KiB that stay in L1: gathering the 64-bit
/// entries instead, built per table, was slower (synthetic INT8, 2 threads: 22.9 against 21.9
/// ms).
fn slots_wanted() -> bool {
    #[cfg(target_arch = "x86_64")]
    let avx512 = super::rans::avx512_enabled();
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    super::rans::simd_enabled() && !avx512
}

/// Whether coarse tables get their slot entries: only the AVX-512 loops read them.
fn entries_wanted() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::rans::avx512_enabled();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Spare lookups kept per thread: enough for two chunks of up to four tables decoding
/// together, and at most 1.2 MiB (with the AVX2 loops' slot entries; 256 KiB with the AVX-512
/// loops' coarse entries, 128 KiB without either).
const SPARE_LOOKUPS: usize = 8;

thread_local! {
    static SPARES: std::cell::RefCell<Vec<Lookups>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Lookups {
    /// A spare, or new (zeroed) buffers, with slot entries if `slots` and coarse entries if
    /// `entries`; every byte the table reads is overwritten by the table built in them.
    fn take(slots: bool, entries: bool) -> Lookups {
        let spare = SPARES.with(|s| s.borrow_mut().pop());
        let mut l = spare.unwrap_or_else(|| Lookups {
            lookup: vec![0u8; LOOKUP_LEN].into_boxed_slice().try_into().unwrap(),
            slots: None,
            entries: None,
        });
        match entries {
            true => {
                l.entries.get_or_insert_with(|| Box::new([0; COARSE_SLOTS]));
            }
            false => l.entries = None,
        }
        match slots {
            true => {
                l.slots.get_or_insert_with(|| {
                    vec![0u64; TOTAL as usize]
                        .into_boxed_slice()
                        .try_into()
                        .unwrap()
                });
            }
            false => l.slots = None,
        }
        l
    }
}

impl Drop for FreqTable {
    fn drop(&mut self) {
        if let Some(l) = self.lookups.take() {
            // During thread teardown the spares may be gone: the buffers are then just freed.
            let _ = SPARES.try_with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < SPARE_LOOKUPS {
                    s.push(l);
                }
            });
        }
    }
}

impl FreqTable {
    /// Builds a table from symbol counts; `None` when no symbol occurs.
    pub fn from_counts(counts: &[u64; 256]) -> Option<FreqTable> {
        normalised(counts, TABLE_BITS).map(Self::from_freqs)
    }

    /// Every byte equally likely (exactly 8 bits each): what a table-coded plane falls back to
    /// when its table would cost more than it saves (small chunks, near-uniform mantissa bytes).
    pub fn uniform() -> FreqTable {
        Self::uniform_at(TABLE_BITS)
    }

    /// [`FreqTable::uniform`] at a resolution of `bits`.
    fn uniform_at(bits: u32) -> FreqTable {
        Self::from_freqs_at([(1 << bits) / 256; 256], bits)
    }

    /// The cheapest of a fitted table, its mirror-symmetric version (int8 weights are close to
    /// symmetric around 0, and a symmetric table is stored in half the bytes) and the uniform
    /// table, counting each table's own bytes. Candidates are compared by their frequencies;
    /// only the winner gets its decode structures (see `Lookups`, built per chunk).
    pub fn best_for(counts: &[u64; 256]) -> Option<FreqTable> {
        Self::best_for_at(counts, TABLE_BITS)
    }

    /// [`FreqTable::best_for`] at a resolution of `bits` ([`TABLE_BITS`] or [`COARSE_BITS`]);
    /// `None` also for a coarse table whose one symbol would take every slot (a slot entry
    /// holds frequencies below `2^12`).
    pub fn best_for_at(counts: &[u64; 256], bits: u32) -> Option<FreqTable> {
        best_freqs(counts, bits).map(|(freq, _)| Self::from_freqs_at(freq, bits))
    }

    /// What [`FreqTable::best_for`]'s table costs: its coded bits plus its own bytes, without
    /// building it (an encoder weighing ways to split symbols between tables).
    pub fn best_cost(counts: &[u64; 256]) -> Option<f64> {
        Self::best_cost_at(counts, TABLE_BITS)
    }

    /// [`FreqTable::best_cost`] of [`FreqTable::best_for_at`]'s table.
    pub fn best_cost_at(counts: &[u64; 256], bits: u32) -> Option<f64> {
        best_freqs(counts, bits).map(|(_, cost)| cost)
    }

    /// Bits needed to code `counts` with this table.
    pub fn coded_bits(&self, counts: &[u64; 256]) -> f64 {
        coded_bits(&self.freq, counts, self.bits)
    }

    /// Bytes [`FreqTable::write`] produces.
    pub fn written_len(&self) -> usize {
        written_len(&self.freq, self.bits)
    }

    /// The table's resolution: its frequencies sum to `2^bits`.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    #[cfg(test)]
    fn is_uniform(&self) -> bool {
        is_uniform(&self.freq, self.bits)
    }

    /// `freq` sums to 2^14: normalised counts, or a read table that was checked.
    fn from_freqs(freq: [u32; 256]) -> FreqTable {
        Self::from_freqs_at(freq, TABLE_BITS)
    }

    /// `freq` sums to `2^bits`, and below a coarse table's `2^bits` each.
    fn from_freqs_at(freq: [u32; 256], bits: u32) -> FreqTable {
        let entries = bits == COARSE_BITS && entries_wanted();
        Self::with_lookups(freq, bits, slots_wanted(), entries)
    }

    /// [`FreqTable::from_freqs_at`], with the slot entries or without, and a coarse table's
    /// entries or without.
    fn with_lookups(freq: [u32; 256], bits: u32, slots: bool, entries: bool) -> FreqTable {
        let mut l = Lookups::take(slots, entries);
        let mut start = [0u32; 256];
        let mut packed = [0u32; 256];
        let mut acc = 0u32;
        for s in 0..256 {
            let (from, f) = (acc as usize, freq[s] as usize);
            start[s] = acc;
            packed[s] = freq[s] | acc << 16;
            l.lookup[from..from + f].fill(s as u8);
            if let Some(slots) = l.slots.as_mut() {
                let entry = (s as u64) << 32 | u64::from(freq[s] << 16);
                for (bias, slot) in slots[from..from + f].iter_mut().enumerate() {
                    *slot = entry | bias as u64;
                }
            }
            acc += freq[s];
        }
        assert_eq!(acc, 1 << bits, "frequencies sum to 2^bits");
        l.lookup[acc as usize..].fill(0);
        if let Some(entries) = l.entries.as_mut() {
            for s in 0..256 {
                let (from, f) = (start[s] as usize, freq[s]);
                debug_assert!(f < 1 << COARSE_BITS, "checked by whoever built freq");
                let entry = s as u32 | f << 20;
                for (bias, e) in entries[from..from + f as usize].iter_mut().enumerate() {
                    *e = entry | (bias as u32) << 8;
                }
            }
        }
        FreqTable {
            freq,
            start,
            planes: BytePlanes::of_u32(&packed),
            packed,
            lookups: Some(l),
            bits,
        }
    }

    /// This table with its slot entries (and a coarse one with its entries), whatever
    /// [`slots_wanted`] and [`entries_wanted`] say: tests run the AVX2 loops on CPUs where the
    /// AVX-512 ones are chosen, and the AVX-512 ones where `QSTORE_SCALAR` turns them off.
    #[cfg(test)]
    pub(crate) fn with_slots(&self) -> FreqTable {
        Self::with_lookups(self.freq, self.bits, true, self.bits == COARSE_BITS)
    }

    /// The decode loops' view of the table.
    pub fn view(&self) -> TableView<'_> {
        let lookups = self
            .lookups
            .as_ref()
            .expect("only a dropped table lacks them");
        TableView {
            lookup: &lookups.lookup,
            packed: &self.packed,
            slots: lookups.slots.as_deref(),
            planes: &self.planes,
            bits: self.bits,
            entries: lookups.entries.as_deref(),
        }
    }

    /// The coding interval of `sym`; the symbol must have occurred in the counts.
    #[inline(always)]
    pub fn symbol(&self, sym: u8) -> Symbol {
        Symbol {
            start: self.start[sym as usize],
            freq: self.freq[sym as usize],
            bits: self.bits,
        }
    }

    /// Decodes one symbol from `lane`.
    #[inline(always)]
    pub fn decode<const L: usize>(&self, dec: &mut Decoder<L>, lane: usize) -> u8 {
        self.decode_in::<false, L>(dec, lane)
    }

    /// [`FreqTable::decode`]; `WITHIN` as in [`Decoder::advance_in`].
    #[inline(always)]
    pub fn decode_in<const WITHIN: bool, const L: usize>(
        &self,
        dec: &mut Decoder<L>,
        lane: usize,
    ) -> u8 {
        let sym = self.view().lookup[dec.slot(lane, self.bits) as usize];
        dec.advance_in::<WITHIN>(lane, self.symbol(sym));
        sym
    }

    /// Codes one symbol per byte of `bytes`, element `i` on lane `i % L`, and appends the
    /// stream: what queuing each byte in an [`super::rans::Encoder`] gives, without the queue.
    pub fn encode_all<const L: usize>(&self, bytes: &[u8], out: &mut Vec<u8>) {
        super::rans::code_table_bytes::<L>(&self.view(), bytes, out);
    }

    /// Decodes one symbol per byte of `out`, element `i` on lane `i % L`.
    pub fn decode_all<const L: usize>(&self, dec: &mut Decoder<L>, out: &mut [u8]) {
        dec.decode_table_bytes(&self.view(), out);
    }

    /// Appends the table: a mode byte (2 = uniform, nothing follows), then per symbol a zigzag
    /// LEB128 value, either the
    /// frequency itself (mode 0) or its difference from the previous symbol's (mode 1: weight
    /// distributions are smooth, so most differences fit one byte), whichever is shorter. A zero
    /// frequency is followed by a byte counting further zeros (up to 255).
    pub fn write(&self, out: &mut Vec<u8>) {
        write_freqs(&self.freq, self.bits, out);
    }

    /// Reads a table written by [`FreqTable::write`], rejecting any that does not sum to 2^14.
    pub fn read(buf: &mut &[u8]) -> Result<FreqTable, CodecError> {
        Self::read_at(buf, TABLE_BITS)
    }

    /// [`FreqTable::read`] of a table of `bits`, rejecting any that does not sum to `2^bits`,
    /// and a coarse one with a symbol in every slot.
    pub fn read_at(buf: &mut &[u8], bits: u32) -> Result<FreqTable, CodecError> {
        let total = 1u32 << bits;
        let mut freq = [0u32; 256];
        match take(buf, 1)?[0] {
            0 => read_entries(buf, false, total, &mut freq)?,
            1 => read_entries(buf, true, total, &mut freq)?,
            2 => return Ok(Self::uniform_at(bits)),
            3 => {
                read_entries(buf, true, total, &mut freq[1..=128])?;
                for b in 129..256 {
                    freq[b] = freq[256 - b];
                }
                let rest: u32 = freq[1..].iter().sum();
                freq[0] = total
                    .checked_sub(rest)
                    .ok_or(CodecError::Corrupt("symmetric table overflows"))?;
            }
            _ => return Err(CodecError::Corrupt("unknown frequency table mode")),
        }
        if freq.iter().sum::<u32>() != total {
            return Err(CodecError::Corrupt(
                "frequency table does not sum to its total",
            ));
        }
        if bits == COARSE_BITS && freq.contains(&total) {
            return Err(CodecError::Corrupt(
                "coarse table with one symbol in every slot",
            ));
        }
        Ok(Self::from_freqs_at(freq, bits))
    }
}

/// Serialises frequencies as zigzag LEB128 values (differences from the previous one when
/// `delta`), a zero followed by a byte counting further zeros.
fn encode_entries(freq: &[u32], delta: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = 0;
    let mut prev = 0i64;
    while s < freq.len() {
        let f = i64::from(freq[s]);
        write_varint(&mut out, zigzag(f - prev));
        if delta {
            prev = f;
        }
        s += 1;
        if f == 0 {
            let run = freq[s..].iter().take(255).take_while(|&&f| f == 0).count();
            out.push(run as u8);
            s += run;
        }
    }
    out
}

fn read_entries(
    buf: &mut &[u8],
    delta: bool,
    total: u32,
    freq: &mut [u32],
) -> Result<(), CodecError> {
    let mut s = 0;
    let mut prev = 0i64;
    while s < freq.len() {
        let f = prev.saturating_add(unzigzag(read_varint(buf)?));
        if !(0..=i64::from(total)).contains(&f) {
            return Err(CodecError::Corrupt("frequency out of range"));
        }
        freq[s] = f as u32;
        if delta {
            prev = f;
        }
        s += 1;
        if f == 0 {
            let run = *take(buf, 1)?.first().unwrap() as usize;
            if s + run > freq.len() {
                return Err(CodecError::Corrupt("frequency table overruns its symbols"));
            }
            s += run;
        }
    }
    Ok(())
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The frequencies of [`FreqTable::best_for_at`] and their cost in bits, table included.
fn best_freqs(counts: &[u64; 256], bits: u32) -> Option<([u32; 256], f64)> {
    let total = 1u32 << bits;
    let fitted = normalised(counts, bits)?;
    if bits == COARSE_BITS && fitted.contains(&total) {
        return None;
    }
    let cost = |f: &[u32; 256]| coded_bits(f, counts, bits) + 8.0 * written_len(f, bits) as f64;
    let mut best = (fitted, cost(&fitted));
    let candidates = [symmetric(&fitted, counts, total), Some([total / 256; 256])];
    for freq in candidates.into_iter().flatten() {
        let c = cost(&freq);
        if c < best.1 {
            best = (freq, c);
        }
    }
    Some(best)
}

/// Normalised frequencies summing to `2^bits`, each symbol that occurs at least 1; `None` when
/// no symbol occurs.
fn normalised(counts: &[u64; 256], bits: u32) -> Option<[u32; 256]> {
    let total_slots = 1u32 << bits;
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let mut freq = [0u32; 256];
    for (f, &c) in freq.iter_mut().zip(counts) {
        if c > 0 {
            *f = ((c as u128 * total_slots as u128 / total as u128) as u32).max(1);
        }
    }
    rebalance(&mut freq, counts, total_slots);
    Some(freq)
}

fn coded_bits(freq: &[u32; 256], counts: &[u64; 256], bits: u32) -> f64 {
    counts
        .iter()
        .zip(freq)
        .filter(|(c, _)| **c > 0)
        .map(|(&c, &f)| c as f64 * (f64::from(bits) - f64::from(f).log2()))
        .sum()
}

fn written_len(freq: &[u32; 256], bits: u32) -> usize {
    let mut buf = Vec::new();
    write_freqs(freq, bits, &mut buf);
    buf.len()
}

fn is_uniform(freq: &[u32; 256], bits: u32) -> bool {
    freq.iter().all(|&f| f == (1 << bits) / 256)
}

/// [`FreqTable::write`].
fn write_freqs(freq: &[u32; 256], bits: u32, out: &mut Vec<u8>) {
    if is_uniform(freq, bits) {
        out.push(2);
        return;
    }
    if is_symmetric(freq) {
        out.push(3);
        out.extend_from_slice(&encode_entries(&freq[1..=128], true));
        return;
    }
    let (plain, delta) = (encode_entries(freq, false), encode_entries(freq, true));
    let (mode, best) = if delta.len() < plain.len() {
        (1, delta)
    } else {
        (0, plain)
    };
    out.push(mode);
    out.extend_from_slice(&best);
}

/// True when byte `b` and byte `256 - b` (the int8 values q and -q) have equal frequencies.
fn is_symmetric(freq: &[u32; 256]) -> bool {
    (1..128).all(|b| freq[b] == freq[256 - b])
}

/// A symmetric table close to `freq`: each ±q pair gets the mean of the pair, and q = 0 absorbs
/// the rounding. `None` if that leaves q = 0 without room.
fn symmetric(freq: &[u32; 256], counts: &[u64; 256], total: u32) -> Option<[u32; 256]> {
    let mut g = *freq;
    for b in 1..128 {
        let pair = 256 - b;
        let mut mean = (freq[b] + freq[pair]).div_ceil(2);
        if counts[b] > 0 || counts[pair] > 0 {
            mean = mean.max(1);
        }
        g[b] = mean;
        g[pair] = mean;
    }
    let rest: u32 = g[1..].iter().sum();
    g[0] = total.checked_sub(rest)?;
    (counts[0] == 0 || g[0] > 0).then_some(g)
}

/// Makes the frequencies sum to exactly `total` by moving the rounding error onto the symbols
/// that can absorb it with the least loss (the most frequent ones).
fn rebalance(freq: &mut [u32; 256], counts: &[u64; 256], total: u32) {
    let mut sum: i64 = freq.iter().map(|&f| i64::from(f)).sum();
    let mut order: Vec<usize> = (0..256).filter(|&s| counts[s] > 0).collect();
    order.sort_by_key(|&s| std::cmp::Reverse(counts[s]));
    while sum != i64::from(total) {
        let mut changed = false;
        for &s in &order {
            if sum < i64::from(total) {
                freq[s] += 1;
                sum += 1;
                changed = true;
            } else if freq[s] > 1 {
                freq[s] -= 1;
                sum -= 1;
                changed = true;
            }
            if sum == i64::from(total) {
                break;
            }
        }
        assert!(changed, "at most 256 symbols always fit in 2^12 or more");
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

    /// Tables with and without slot entries decode the same symbols through whichever loop
    /// is chosen: the AVX2 loops take only tables that have them, the others never read them.
    #[test]
    fn tables_decode_alike_with_or_without_slot_entries() {
        use super::super::rans::{Decoder, Encoder, WIDE};
        let data: Vec<u8> = (0..5_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 29) as u8)
            .collect();
        let mut counts = [0u64; 256];
        data.iter().for_each(|&b| counts[b as usize] += 1);
        let with = FreqTable::from_counts(&counts).unwrap().with_slots();
        let without = FreqTable::with_lookups(with.freq, TABLE_BITS, false, false);
        assert!(with.view().slots.is_some() && without.view().slots.is_none());
        let mut enc = Encoder::<WIDE>::with_capacity(data.len());
        for (i, &b) in data.iter().enumerate() {
            enc.push(with.symbol(b), i);
        }
        let mut bytes = Vec::new();
        enc.finish_into(&mut bytes);
        for t in [&with, &without] {
            let mut dec = Decoder::<WIDE>::new(&bytes).unwrap();
            let mut out = vec![0u8; data.len()];
            t.decode_all(&mut dec, &mut out);
            assert_eq!(out, data);
            dec.finish().unwrap();
        }
    }

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
    fn small_flat_planes_use_the_uniform_table() {
        let mut counts = [0u64; 256];
        counts
            .iter_mut()
            .enumerate()
            .for_each(|(i, c)| *c = 1 + (i as u64 % 3));
        let t = FreqTable::best_for(&counts).unwrap();
        assert!(t.is_uniform());
        let mut buf = Vec::new();
        t.write(&mut buf);
        assert_eq!(buf, [2]);
        assert!(FreqTable::read(&mut &buf[..]).unwrap().is_uniform());
        let mut peaked = [0u64; 256];
        peaked[0] = 100_000;
        peaked[1] = 10;
        assert!(!FreqTable::best_for(&peaked).unwrap().is_uniform());
    }

    #[test]
    fn near_symmetric_int8_tables_are_stored_half_size() {
        let mut counts = [0u64; 256];
        for q in -60i32..=60 {
            let c = (100_000.0 * (-(q as f64).powi(2) / 400.0).exp()) as u64 + 1;
            counts[(q as i8 as u8) as usize] = c + u64::from(q == 7);
        }
        let t = FreqTable::best_for(&counts).unwrap();
        assert!(is_symmetric(&t.freq));
        let mut buf = Vec::new();
        t.write(&mut buf);
        assert_eq!(buf[0], 3);
        let back = FreqTable::read(&mut &buf[..]).unwrap();
        assert_eq!(back.freq, t.freq);
        assert!(FreqTable::read(&mut &[3u8, 0x80, 0x80, 0x01][..]).is_err());
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

    /// Coarse tables sum to 2^12, are written and read back as they were (read at their own
    /// resolution only), code and decode byte-exact on 4 and 32 lanes, and their slot entries
    /// say what the lookups say.
    #[test]
    fn coarse_tables_round_trip() {
        let mut counts = [0u64; 256];
        for v in -60i32..=60 {
            counts[v as i8 as u8 as usize] = 1 + 10_000 / (1 + v.unsigned_abs() as u64).pow(2);
        }
        counts[77] = 0;
        let t = FreqTable::best_for_at(&counts, COARSE_BITS).unwrap();
        assert_eq!(
            (t.bits(), t.freq.iter().sum::<u32>()),
            (COARSE_BITS, 1 << COARSE_BITS)
        );
        let mut buf = Vec::new();
        t.write(&mut buf);
        assert_eq!(buf.len(), t.written_len());
        let back = FreqTable::read_at(&mut &buf[..], COARSE_BITS).unwrap();
        assert_eq!((back.freq, back.bits()), (t.freq, COARSE_BITS));
        let data: Vec<u8> = (0..50_000u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 20) % 121) as u8)
            .map(|v| (v as i32 - 60) as i8 as u8)
            .filter(|&b| b != 77)
            .collect();
        for lanes in [4, 32] {
            let mut stream = Vec::new();
            let mut out = vec![0u8; data.len()];
            if lanes == 4 {
                t.encode_all::<4>(&data, &mut stream);
                let mut dec = Decoder::<4>::new(&stream).unwrap();
                t.decode_all(&mut dec, &mut out);
                dec.finish().unwrap();
            } else {
                t.encode_all::<32>(&data, &mut stream);
                let mut dec = Decoder::<32>::new(&stream).unwrap();
                t.decode_all(&mut dec, &mut out);
                dec.finish().unwrap();
            }
            assert_eq!(out, data, "{lanes} lanes");
        }
        let view = t.view();
        if let Some(entries) = view.entries {
            for (slot, &e) in entries.iter().enumerate() {
                let sym = view.lookup[slot];
                let (start, freq) = (t.start[sym as usize], t.freq[sym as usize]);
                assert_eq!(e, sym as u32 | (slot as u32 - start) << 8 | freq << 20);
            }
        }
    }

    /// A coarse slot entry holds frequencies below 2^12: a table whose one symbol takes every
    /// slot is neither built nor read.
    #[test]
    fn coarse_tables_refuse_a_symbol_in_every_slot() {
        let mut one = [0u64; 256];
        one[3] = 1000;
        assert!(FreqTable::best_for_at(&one, COARSE_BITS).is_none());
        assert!(FreqTable::best_for_at(&one, TABLE_BITS).is_some());
        let mut freq = [0u32; 256];
        freq[3] = 1 << COARSE_BITS;
        let mut buf = Vec::new();
        write_freqs(&freq, COARSE_BITS, &mut buf);
        assert!(FreqTable::read_at(&mut &buf[..], COARSE_BITS).is_err());
    }
}
