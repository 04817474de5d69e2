//! A damaged blob gives an error, never wrong bytes.

use qstore::format::{Blob, Precision};
use qstore::safetensors::Dtype;
use qstore::synth::{Rng, llm_like_bf16};

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
            T::codes(
                "embed.weight",
                Dtype::BF16,
                &[20, 16],
                &llm_like_bf16(20, 16, 1),
            ),
            T::codes(
                "a.weight",
                Dtype::BF16,
                &[24, 32],
                &llm_like_bf16(24, 32, 2),
            ),
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
