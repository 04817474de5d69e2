//! A damaged blob gives an error, never wrong bytes.

use qstore::format::{Blob, Precision};
use qstore::synth::Rng;

use crate::helpers::*;

fn outputs(blob: &Blob<Vec<u8>>) -> Result<Vec<Vec<u8>>, qstore::format::FormatError> {
    let mut all = Vec::new();
    for p in [Precision::Int8, Precision::High] {
        for f in blob.files(p) {
            let mut out = Vec::new();
            blob.write_file(f, &mut out)?;
            all.push(out);
        }
    }
    Ok(all)
}

#[test]
fn flipped_bytes_anywhere_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_st(
        &path,
        &[("format", "pt")],
        &[
            T::llm("embed.weight", 20, 16, 1),
            T::llm("a.weight", 24, 32, 2),
        ],
    );
    let good = std::fs::read(encode(dir.path(), &[path], None, &[])).unwrap();
    let expected = outputs(&Blob::open(good.clone()).unwrap()).unwrap();
    let mut rng = Rng::new(7);
    let mut positions: Vec<usize> = (0..good.len()).step_by(7).collect();
    positions.extend((0..200).map(|_| (rng.next_u64() % good.len() as u64) as usize));
    let (mut caught, mut harmless) = (0, 0);
    for pos in positions {
        let mut bad = good.clone();
        bad[pos] ^= 1 << (rng.next_u64() % 8);
        match Blob::open(bad).map(|b| outputs(&b)) {
            Err(_) | Ok(Err(_)) => caught += 1,
            Ok(Ok(got)) => {
                assert_eq!(got, expected, "flip at {pos} produced wrong bytes");
                harmless += 1;
            }
        }
    }
    assert_eq!(harmless, 0, "every byte of a blob is checked");
    assert!(caught > 100);
}

/// A damaged chunk is named for what failed: its stored bytes (damage in the blob, caught even
/// where the decode would not notice), or the decode itself (intact bytes that decode to other
/// bytes than were encoded).
#[test]
fn a_damaged_chunk_is_named_for_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let path = one_weight_model(dir.path(), 24, 32, 3);
    let good = std::fs::read(encode(dir.path(), &[path], None, &[])).unwrap();
    let blob = Blob::open(good.clone()).unwrap();
    let last = blob.index().chunks.len() - 1;
    let c = blob.index().chunks[last];
    let error = |bytes: Vec<u8>| {
        outputs(&Blob::open(bytes).unwrap())
            .unwrap_err()
            .to_string()
    };

    let mut flipped = good.clone();
    flipped[(c.offset() + u64::from(c.stored_len()) / 2) as usize] ^= 0x10;
    let e = error(flipped);
    assert!(e.contains("fails its stored checksum"), "{e}");

    let wrong = with_index(&good, |i| {
        let crc = &mut i["chunks"][last][3];
        *crc = serde_json::json!(crc.as_u64().unwrap() ^ 1);
    });
    let e = error(wrong);
    assert!(
        e.contains(&format!("chunk {last} fails its checksum")),
        "{e}"
    );
}

#[test]
fn truncated_and_foreign_files_are_not_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = one_weight_model(dir.path(), 4, 4, 1);
    let good = std::fs::read(encode(dir.path(), std::slice::from_ref(&path), None, &[])).unwrap();
    for cut in [0, 10, 47, good.len() / 2, good.len() - 1] {
        assert!(Blob::open(good[..cut].to_vec()).is_err(), "cut at {cut}");
    }
    assert!(Blob::open(std::fs::read(&path).unwrap()).is_err());
    let mut extended = good.clone();
    extended.push(0);
    assert!(Blob::open(extended).is_err());
}

mod hostile_input {
    use proptest::prelude::*;
    use qstore::codec::Lanes;
    use qstore::codec::freq::FreqTable;
    use qstore::codec::quantize::HighDtype;
    use qstore::codec::residual::{self, ChunkRows};
    use qstore::format::{Blob, Precision};

    use super::*;

    fn small_blob() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = one_weight_model(dir.path(), 6, 24, 3);
        std::fs::read(encode(dir.path(), &[path], None, &[])).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

        /// Arbitrary bytes never make a parser or decoder panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cols in 1usize..8) {
            let _ = qstore::safetensors::read_header(&mut &bytes[..]);
            let _ = FreqTable::read(&mut &bytes[..]);
            let _ = Blob::open(bytes.clone());
            let rows = 3;
            let q: Vec<u8> = bytes.iter().cycle().take(rows * cols).copied().collect();
            let scales = [0.5f32, 0.0, f32::NAN];
            let chunk = ChunkRows { dtype: HighDtype::Bf16, q: &q, scales: &scales, cols };
            let mut out = vec![0u8; 2 * rows * cols];
            for layout in residual::Layout::ALL {
                let _ = residual::decode(&chunk, &bytes, layout, &mut out);
            }
            for lanes in [Lanes::Narrow, Lanes::Wide] {
                let mut plain = vec![0u8; 64];
                let _ = qstore::codec::decode_float(&bytes, 2, lanes, &mut plain);
                let _ = qstore::codec::decode_int8(&bytes, lanes, &mut plain);
            }
        }

        /// Several random byte changes to a valid blob give an error or the exact original bytes.
        #[test]
        fn mutated_blobs_never_serve_wrong_bytes(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
            let good = small_blob();
            let blob = Blob::open(good.clone()).unwrap();
            let expected: Vec<Vec<u8>> = [Precision::Int8, Precision::High].iter().flat_map(|&p| blob.files(p).to_vec()).map(|f| {
                let mut out = Vec::new();
                blob.write_file(&f, &mut out).unwrap();
                out
            }).collect();
            let mut bad = good.clone();
            for (at, value) in edits {
                let i = at.index(bad.len());
                bad[i] = value;
            }
            if let Ok(b) = Blob::open(bad) {
                let files: Vec<_> = [Precision::Int8, Precision::High].iter().flat_map(|&p| b.files(p).to_vec()).collect();
                for (f, want) in files.iter().zip(&expected) {
                    let mut out = Vec::new();
                    if b.write_file(f, &mut out).is_ok() {
                        prop_assert_eq!(&out, want);
                    }
                }
            }
        }
    }
}
