//! The blob's own bytes, as stored, for a client that fetches chunks and decodes them itself.
//!
//! Every byte handed out is checked first, the way a decode checks what it reads: the preamble
//! and footer against what [`Blob::open`] validated, the index by its CRC, each chunk by its
//! stored CRC. A region is read whole and checked before any of its bytes are written, so a
//! range that ends inside a chunk still costs that whole chunk's read; bytes no region covers
//! (a blob we did not write could have gaps) are refused rather than passed on unchecked.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::Range;

use super::reader::{Blob, BlobSource, ReadAhead};
use super::{FOOTER_LEN, FormatError, MAGIC, PREAMBLE_LEN};

/// Reads started ahead of the region being written: on an object store their round trips
/// overlap; locally they are deferred and cost nothing.
const READS_AHEAD: usize = 8;

/// A stretch of the blob with the check that covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub check: RegionCheck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionCheck {
    Preamble,
    Chunk(u32),
    Index,
    Footer,
}

impl<S: BlobSource> Blob<S> {
    /// The blob's checked regions in offset order: preamble, chunks, index, footer.
    pub fn stored_regions(&self) -> Vec<Region> {
        let index = self.index();
        let (index_offset, _) = self.index_location();
        let len = self.source().len();
        let mut regions = Vec::with_capacity(index.chunks.len() + 3);
        regions.push(Region {
            start: 0,
            end: PREAMBLE_LEN,
            check: RegionCheck::Preamble,
        });
        let first_chunk = regions.len();
        regions.extend(index.chunks.iter().enumerate().map(|(id, c)| Region {
            start: c.offset(),
            end: c.offset() + u64::from(c.stored_len()),
            check: RegionCheck::Chunk(id as u32),
        }));
        regions[first_chunk..].sort_unstable_by_key(|r| r.start);
        regions.push(Region {
            start: index_offset,
            end: len - FOOTER_LEN,
            check: RegionCheck::Index,
        });
        regions.push(Region {
            start: len - FOOTER_LEN,
            end: len,
            check: RegionCheck::Footer,
        });
        regions
    }

    /// Writes bytes `range` of the blob as stored, each region checked before any of its bytes
    /// are written (see the module comment).
    pub fn write_stored_range(
        &self,
        range: Range<u64>,
        out: &mut dyn Write,
    ) -> Result<(), FormatError> {
        if range.start > range.end || range.end > self.source().len() {
            return Err(FormatError::NotFound(format!(
                "range {range:?} is outside the {}-byte blob",
                self.source().len()
            )));
        }
        let regions = self.stored_regions();
        // Regions that end after the range starts; the first may begin before it.
        let first = regions.partition_point(|r| r.end <= range.start);
        let mut wanted = regions[first..]
            .iter()
            .take_while(|r| r.start < range.end)
            .copied();
        let mut ahead: VecDeque<(Region, ReadAhead)> = VecDeque::new();
        let mut pos = range.start;
        let mut buf = Vec::new();
        while pos < range.end {
            while ahead.len() < READS_AHEAD
                && let Some(r) = wanted.next()
            {
                ahead.push_back((r, self.source().read_ahead(r.start, span_len(&r)?)));
            }
            let Some((region, read)) = ahead.pop_front() else {
                return Err(uncovered(pos));
            };
            if region.end <= pos {
                continue; // Overlapped by the region before (a crafted layout): already sent.
            }
            if region.start > pos {
                return Err(uncovered(pos));
            }
            read.take(self.source(), region.start, span_len(&region)?, &mut buf)?;
            self.check_region(&region, &buf)?;
            let end = region.end.min(range.end);
            out.write_all(&buf[(pos - region.start) as usize..(end - region.start) as usize])?;
            pos = end;
        }
        Ok(())
    }

    fn check_region(&self, region: &Region, bytes: &[u8]) -> Result<(), FormatError> {
        let ok = bytes.len() as u64 == region.end - region.start
            && match region.check {
                RegionCheck::Preamble => bytes == preamble(self.index().version),
                RegionCheck::Footer => bytes == self.footer_bytes(),
                RegionCheck::Index => crc32fast::hash(bytes) == self.index_location().1,
                RegionCheck::Chunk(id) => {
                    crc32fast::hash(bytes) == self.index().chunks[id as usize].stored_crc32()
                }
            };
        if !ok {
            return Err(FormatError::Corrupt(format!(
                "blob bytes {}..{} ({:?}) fail their check",
                region.start, region.end, region.check
            )));
        }
        Ok(())
    }
}

fn span_len(r: &Region) -> Result<usize, FormatError> {
    usize::try_from(r.end - r.start)
        .map_err(|_| FormatError::Corrupt("a blob region larger than memory".into()))
}

fn uncovered(pos: u64) -> FormatError {
    FormatError::Corrupt(format!(
        "blob byte {pos} is covered by no checksum; it is not served"
    ))
}

/// The only preamble readers accept for a blob of format `version`.
fn preamble(version: u32) -> [u8; PREAMBLE_LEN as usize] {
    let mut p = [0u8; PREAMBLE_LEN as usize];
    p[..8].copy_from_slice(&MAGIC);
    p[8..12].copy_from_slice(&version.to_le_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_blob() -> Vec<u8> {
        crate::synth::encoded_llm_like(2, 1024, 640, 7)
    }

    fn stored(blob: &Blob<Vec<u8>>, range: Range<u64>) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        blob.write_stored_range(range, &mut out).map(|()| out)
    }

    #[test]
    fn regions_tile_the_blob_and_any_range_comes_back_as_stored() {
        let bytes = small_blob();
        let blob = Blob::open(bytes.clone()).unwrap();
        let regions = blob.stored_regions();
        assert!(regions.len() > 6, "{} regions", regions.len());
        assert_eq!(regions[0].start, 0);
        assert_eq!(regions.last().unwrap().end, bytes.len() as u64);
        for pair in regions.windows(2) {
            assert_eq!(pair[0].end, pair[1].start, "{pair:?}");
        }
        let n = bytes.len() as u64;
        let mid = regions[regions.len() / 2];
        for range in [
            0..n,
            0..1,
            5..40,
            mid.start..mid.end,
            mid.start + 1..mid.end + 3,
            n - 40..n,
            7..7,
        ] {
            let got = stored(&blob, range.clone()).unwrap();
            assert_eq!(
                got,
                bytes[range.start as usize..range.end as usize],
                "{range:?}"
            );
        }
        assert!(stored(&blob, 0..n + 1).is_err());
    }

    #[test]
    fn a_damaged_region_is_refused_and_nothing_of_it_is_written() {
        let bytes = small_blob();
        let blob = Blob::open(bytes.clone()).unwrap();
        let regions = blob.stored_regions();
        let chunk = regions[regions.len() / 2];
        for damaged in [chunk.start + 3, 9, (bytes.len() - 9) as u64] {
            let mut bad = bytes.clone();
            bad[damaged as usize] ^= 0x10;
            // Opened before the damage (as a server holds an open blob while its store rots).
            let mut blob = Blob::open(bytes.clone()).unwrap();
            *blob.source_mut() = bad;
            let mut out = Vec::new();
            let whole = blob.write_stored_range(0..bytes.len() as u64, &mut out);
            assert!(whole.is_err(), "byte {damaged}");
            let before = regions.iter().find(|r| r.end > damaged).unwrap().start;
            assert_eq!(
                out,
                bytes[..before as usize],
                "only the checked regions before it"
            );
        }
        // The index is checked by its CRC.
        let index = regions[regions.len() - 2];
        let mut bad = bytes.clone();
        bad[index.start as usize + 1] ^= 1;
        let mut blob = Blob::open(bytes).unwrap();
        *blob.source_mut() = bad;
        assert!(stored(&blob, index.start..index.end).is_err());
    }

    #[test]
    fn a_blob_from_outside_can_be_opened_with_a_tighter_index_cap() {
        let bytes = small_blob();
        let len = Blob::open(bytes.clone()).unwrap().index_json_len();
        assert!(Blob::open_limited(bytes.clone(), len).is_ok());
        let e = Blob::open_limited(bytes, len - 1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
    }
}
