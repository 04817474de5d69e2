//! The real MiniLM-L6 checkpoint (fetched by scripts/fetch-minilm.sh; ignored by default, run by
//! CI with `--include-ignored`, failing when the weights are missing).

use std::path::PathBuf;

use qstore::format::{Blob, Precision, Report};

use crate::helpers::*;

fn minilm() -> PathBuf {
    match std::env::var_os("QSTORE_MINILM") {
        Some(p) => PathBuf::from(p),
        None => crate::needs::minilm_dir().join("model-bf16.safetensors"),
    }
}

#[test]
#[ignore = "needs scripts/fetch-minilm.sh"]
fn minilm_round_trips_and_its_int8_matches_bitsandbytes() {
    let model = minilm();
    let dir = tempfile::tempdir().unwrap();
    let blob_path = encode(dir.path(), std::slice::from_ref(&model), None, &[]);
    let original = std::fs::read(&model).unwrap();
    let high = decode_all(&blob_path, Precision::High);
    assert_eq!(sha(&high[0].1), sha(&original));
    let int8 = decode_all(&blob_path, Precision::Int8);
    let linear =
        |n: &str| n.ends_with(".weight") && !n.contains("embeddings") && !n.contains("LayerNorm");
    check_derived_int8(&original, &int8[0].1, &linear);
    let quantized = tensors_of(&int8[0].1)
        .iter()
        .filter(|t| t.1 == qstore::safetensors::Dtype::I8)
        .count();
    assert_eq!(
        quantized, 37,
        "the 37 linear layers of MiniLM-L6 (incl. pooler.dense) are quantized"
    );

    let blob = Blob::open(std::fs::File::open(&blob_path).unwrap()).unwrap();
    let report = Report::new(blob.index(), std::fs::metadata(&blob_path).unwrap().len());
    eprintln!(
        "MiniLM: {} bytes, {:.3}x, {:.3} bits/param",
        report.blob_bytes, report.ratio_vs_separate_files, report.quantized_bits_per_param
    );
    assert!(
        report.quantized_bits_per_param <= 10.6,
        "{}",
        report.quantized_bits_per_param
    );
    assert!(report.blob_bytes <= 30_800_000 && report.ratio_vs_separate_files >= 2.6);
}
