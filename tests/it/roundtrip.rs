//! Byte-exact round trips of both outputs, over generated models and edge-case values.

use proptest::prelude::*;
use qstore::format::{EncodeOptions, Precision};
use qstore::safetensors::Dtype;

use crate::helpers::*;

/// Values that stress the codec: signed zeros, subnormals, NaN payloads, infinities, tiny and
/// huge magnitudes, plus ordinary weights.
fn special_codes() -> Vec<u16> {
    vec![
        0x0000, 0x8000, 0x0001, 0x807F, 0x0080, 0x7F80, 0xFF80, 0x7FC0, 0x7FC1, 0xFF81, 0x7F81,
        0x7F7F, 0xFF7F, 0x3F80, 0xBF80, 0x3380, 0x4780, 0x477F, 0x3880, 0x387F, 0x7C00, 0xFC00,
        0x7E01, 0x03FF,
    ]
}

#[derive(Debug, Clone)]
enum RowKind {
    Normal,
    Zero,
    Outlier,
    Special,
}

fn row_strategy(cols: usize) -> impl Strategy<Value = Vec<u16>> {
    (prop_oneof![4 => Just(RowKind::Normal), 1 => Just(RowKind::Zero), 1 => Just(RowKind::Outlier), 1 => Just(RowKind::Special)], any::<u64>(), 0.001f64..2.0).prop_map(
        move |(kind, seed, sigma)| {
            let mut rng = qstore::synth::Rng::new(seed);
            let specials = special_codes();
            (0..cols)
                .map(|j| match kind {
                    RowKind::Zero => if rng.uniform() < 0.5 { 0x0000 } else { 0x8000 },
                    RowKind::Special => specials[(rng.next_u64() % specials.len() as u64) as usize],
                    RowKind::Outlier if j == 0 => half::bf16::from_f64(sigma * 50.0).to_bits(),
                    _ => half::bf16::from_f64(sigma * rng.normal()).to_bits(),
                })
                .collect()
        },
    )
}

fn matrix(
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> impl Strategy<Value = (usize, usize, Vec<u16>)> {
    (rows, cols).prop_flat_map(|(r, c)| {
        (
            Just(r),
            Just(c),
            proptest::collection::vec(row_strategy(c), r).prop_map(|rows| rows.concat()),
        )
    })
}

/// Reinterprets BF16 codes as FP16 codes: the same bit patterns, so every special value class
/// appears in both precisions.
fn model(dtype: Dtype) -> impl Strategy<Value = Vec<T>> {
    (
        proptest::collection::vec(matrix(1..6, 1..40), 1..4),
        matrix(1..3, 1..9),
        proptest::collection::vec(any::<u8>(), 0..20),
        any::<bool>(),
    )
        .prop_map(move |(mats, (er, ec, emb), extra, empty)| {
            let mut ts = vec![T::codes(
                "embeddings.word_embeddings.weight",
                dtype,
                &[er as u64, ec as u64],
                &emb,
            )];
            for (i, (r, c, codes)) in mats.into_iter().enumerate() {
                ts.push(T::codes(
                    &format!("layer.{i}.dense.weight"),
                    dtype,
                    &[r as u64, c as u64],
                    &codes,
                ));
                ts.push(T::codes(
                    &format!("layer.{i}.LayerNorm.weight"),
                    dtype,
                    &[c as u64],
                    &codes[..c],
                ));
            }
            ts.push(T::new(
                "position_ids",
                Dtype::I64,
                &[extra.len() as u64 / 8],
                extra[..extra.len() / 8 * 8].to_vec(),
            ));
            ts.push(T::new(
                "flags",
                Dtype::BOOL,
                &[extra.len() as u64],
                extra.iter().map(|b| b & 1).collect(),
            ));
            ts.push(T::new("scalar", Dtype::F32, &[], vec![0, 0, 128, 63]));
            if empty {
                ts.push(T::new("empty.weight", dtype, &[0, 7], vec![]));
                ts.push(T::new("empty2.weight", dtype, &[3, 0], vec![]));
            }
            ts
        })
}

fn is_quantized(name: &str) -> bool {
    name.starts_with("layer.") && name.ends_with("dense.weight")
}

fn round_trip(
    tensors: &[T],
    metadata: &[(&str, &str)],
    opts: &EncodeOptions,
    quantized: &dyn Fn(&str) -> bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_st(&path, metadata, tensors);
    let original = std::fs::read(&path).unwrap();
    let blob = encode_with(dir.path(), std::slice::from_ref(&path), None, &[], opts);
    let high = decode_all(&blob, Precision::High);
    assert_eq!(high.len(), 1);
    assert_eq!(
        sha(&high[0].1),
        sha(&original),
        "high-precision output is byte-identical"
    );
    let int8 = decode_all(&blob, Precision::Int8);
    check_derived_int8(&original, &int8[0].1, quantized);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn bf16_models_round_trip(tensors in model(Dtype::BF16), meta in proptest::option::of("[a-z]{1,8}")) {
        let meta_pairs: Vec<(&str, &str)> = meta.as_deref().map(|m| vec![("format", "pt"), ("note", m)]).unwrap_or_default();
        round_trip(&tensors, &meta_pairs, &EncodeOptions::default(), &is_quantized);
    }

    #[test]
    fn fp16_models_round_trip(tensors in model(Dtype::F16)) {
        round_trip(&tensors, &[], &EncodeOptions::default(), &is_quantized);
    }

    #[test]
    fn small_chunks_round_trip(tensors in model(Dtype::BF16), chunk_elems in 1u64..50, stream_bytes in 1u64..64) {
        let opts = EncodeOptions { chunk_elems, stream_chunk_bytes: stream_bytes, ..EncodeOptions::default() };
        round_trip(&tensors, &[("format", "pt")], &opts, &is_quantized);
    }
}

#[test]
fn row_and_column_vectors_and_llm_like_weights_round_trip() {
    let tensors = vec![
        T::llm("row.weight", 1, 3000, 1),
        T::llm("col.weight", 3000, 1, 2),
        T::llm("layer.0.dense.weight", 64, 512, 3),
    ];
    let quantized = |n: &str| n.ends_with(".weight");
    round_trip(
        &tensors,
        &[("format", "pt")],
        &EncodeOptions::default(),
        &quantized,
    );
}

/// The decoder takes large chunks two at a time (one task, their streams in one loop), past
/// the small tensors between them: quantized weights alternating with biases, after a large
/// float tensor, decoded on pools of one and two threads, give the input back exactly and the
/// INT8 file the reference quantizer gives.
#[test]
fn large_chunks_decoded_two_at_a_time_round_trip() {
    let mut tensors = vec![T::llm("embed.weight", 300, 256, 1)];
    for k in 0..5u64 {
        tensors.push(T::llm(&format!("layer.{k}.dense.bias"), 1, 256, 20 + k));
        tensors.push(T::llm(
            &format!("layer.{k}.dense.weight"),
            96 + 32 * k,
            256,
            2 + k,
        ));
        tensors.push(T::llm(&format!("layer.{k}.norm.weight"), 1, 256, 30 + k));
    }
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            round_trip(
                &tensors,
                &[("format", "pt")],
                &EncodeOptions::default(),
                &is_quantized,
            )
        });
    }
}

#[test]
fn derived_int8_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let path = one_weight_model(dir.path(), 8, 64, 9);
    let a = decode_all(
        &encode(dir.path(), std::slice::from_ref(&path), None, &[]),
        Precision::Int8,
    );
    let other = tempfile::tempdir().unwrap();
    let b = decode_all(
        &encode(other.path(), std::slice::from_ref(&path), None, &[]),
        Precision::Int8,
    );
    assert_eq!(sha(&a[0].1), sha(&b[0].1));
}

#[test]
fn every_dtype_is_carried_byte_exact() {
    use Dtype::*;
    let mut rng = qstore::synth::Rng::new(5);
    let mut tensors: Vec<T> = [
        BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, I32, U32, F32, I64, U64, F64,
    ]
    .into_iter()
    .map(|d| {
        let shape = [3u64, 5];
        let data = (0..15 * d.size()).map(|_| rng.next_u64() as u8).collect();
        T::new(&format!("t.{}", d.name()), d, &shape, data)
    })
    .collect();
    tensors.push(T::llm("layer.0.dense.weight", 4, 6, 1));
    round_trip(
        &tensors,
        &[("format", "pt")],
        &EncodeOptions::default(),
        &is_quantized,
    );
}
