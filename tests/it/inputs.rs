//! Input shapes: shards with an index, a user-supplied INT8 checkpoint, tensor selection, and
//! malformed files.

use qstore::format::{
    EncodeInput, EncodeOptions, FormatError, Precision, Selection, encode_to_path,
};
use qstore::safetensors::Dtype;
use qstore::synth::{Rng, llm_like_bf16};

use crate::helpers::*;

#[test]
fn sharded_model_round_trips_with_both_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("model-00001-of-00002.safetensors"),
        dir.path().join("model-00002-of-00002.safetensors"),
    );
    write_st(
        &a,
        &[("format", "pt")],
        &[
            T::llm("embed_tokens.weight", 10, 16, 1),
            T::llm("layers.0.q_proj.weight", 16, 16, 2),
        ],
    );
    write_st(
        &b,
        &[("format", "pt")],
        &[
            T::llm("layers.1.q_proj.weight", 32, 16, 3),
            T::codes("norm.weight", Dtype::BF16, &[16], &llm_like_bf16(1, 16, 4)),
        ],
    );
    let index = dir.path().join("model.safetensors.index.json");
    let index_text = r#"{"metadata": {"total_size": 2112}, "weight_map": {"embed_tokens.weight": "model-00001-of-00002.safetensors", "layers.0.q_proj.weight": "model-00001-of-00002.safetensors", "layers.1.q_proj.weight": "model-00002-of-00002.safetensors", "norm.weight": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(&index, index_text).unwrap();
    let blob = encode(
        dir.path(),
        &[a.clone(), b.clone()],
        Some(index.clone()),
        &[],
    );
    let high = decode_all(&blob, Precision::High);
    let names: Vec<&str> = high.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );
    assert_eq!(high[0].1, std::fs::read(&a).unwrap());
    assert_eq!(high[1].1, std::fs::read(&b).unwrap());
    assert_eq!(high[2].1, index_text.as_bytes());
    let int8 = decode_all(&blob, Precision::Int8);
    let quantized = |n: &str| n.contains("q_proj");
    check_derived_int8(&high[0].1, &int8[0].1, &quantized);
    check_derived_int8(&high[1].1, &int8[1].1, &quantized);
    let idx: serde_json::Value = serde_json::from_slice(&int8[2].1).unwrap();
    assert_eq!(
        idx["weight_map"]["layers.1.q_proj.SCB"],
        "model-00002-of-00002.safetensors"
    );
    assert_eq!(
        idx["weight_map"]["layers.0.q_proj.weight_format"],
        "model-00001-of-00002.safetensors"
    );
    assert_eq!(idx["weight_map"].as_object().unwrap().len(), 2 + 2 * 3);
    let data_len = |f: &[u8]| tensors_of(f).iter().map(|t| t.3.len() as u64).sum::<u64>();
    assert_eq!(
        idx["metadata"]["total_size"],
        data_len(&int8[0].1) + data_len(&int8[1].1)
    );
}

#[test]
fn supplied_int8_checkpoint_is_stored_and_served_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let high = dir.path().join("high.safetensors");
    let int8 = dir.path().join("int8.safetensors");
    let w = llm_like_bf16(12, 40, 5);
    let emb = llm_like_bf16(4, 8, 6);
    write_st(
        &high,
        &[("format", "pt")],
        &[
            T::codes("emb.weight", Dtype::BF16, &[4, 8], &emb),
            T::codes("fc.weight", Dtype::BF16, &[12, 40], &w),
            T::codes("fc.bias", Dtype::BF16, &[12], &w[..12]),
            T::codes("other.weight", Dtype::BF16, &[2, 2], &[1, 2, 3, 4]),
        ],
    );
    // Arbitrary int8 values and scales (not what quantizing would give), kept tensors in another
    // order, a quantizable weight left unquantized, other metadata: all must come back exactly.
    let mut rng = Rng::new(11);
    let q: Vec<u8> = (0..12 * 40).map(|_| rng.next_u64() as u8).collect();
    let scb: Vec<u8> = (0..12)
        .flat_map(|i| (0.01f32 * i as f32 + 0.003).to_le_bytes())
        .collect();
    write_st(
        &int8,
        &[("format", "pt"), ("quantizer", "custom")],
        &[
            T::new("fc.SCB", Dtype::F32, &[12], scb),
            T::new("fc.weight", Dtype::I8, &[12, 40], q),
            T::new("fc.weight_format", Dtype::U8, &[], vec![0]),
            T::codes("other.weight", Dtype::BF16, &[2, 2], &[1, 2, 3, 4]),
            T::codes("emb.weight", Dtype::BF16, &[4, 8], &emb),
            T::codes("fc.bias", Dtype::BF16, &[12], &w[..12]),
        ],
    );
    let blob = encode(
        dir.path(),
        std::slice::from_ref(&high),
        None,
        std::slice::from_ref(&int8),
    );
    assert_eq!(
        decode_all(&blob, Precision::High)[0].1,
        std::fs::read(&high).unwrap()
    );
    let served = decode_all(&blob, Precision::Int8);
    assert_eq!(served[0].0, "int8.safetensors");
    assert_eq!(sha(&served[0].1), sha(&std::fs::read(&int8).unwrap()));
}

#[test]
fn selection_patterns_choose_what_is_quantized() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_st(
        &path,
        &[],
        &[
            T::llm("lm_head.weight", 4, 8, 1),
            T::llm("a.weight", 4, 8, 2),
            T::llm("b.weight", 4, 8, 3),
        ],
    );
    let original = std::fs::read(&path).unwrap();
    for (skip, only, quantized) in [
        (None, None, vec!["a.weight", "b.weight"]),
        (Some("^b"), None, vec!["lm_head.weight", "a.weight"]),
        (None, Some("head"), vec!["lm_head.weight"]),
        (Some("a"), Some("weight"), vec!["b.weight"]),
    ] {
        let opts = EncodeOptions {
            selection: Selection::new(skip, only).unwrap(),
            ..EncodeOptions::default()
        };
        let blob = encode_with(dir.path(), std::slice::from_ref(&path), None, &[], &opts);
        let int8 = decode_all(&blob, Precision::Int8);
        check_derived_int8(&original, &int8[0].1, &|n: &str| quantized.contains(&n));
    }
    assert!(matches!(
        Selection::new(Some("("), None),
        Err(FormatError::Input(_))
    ));
}

/// Encodes `high` with a supplied INT8 checkpoint made of `int8` tensors; the error message.
fn supplied_int8_error(high: &[T], int8: &[T]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (h, i) = (
        dir.path().join("h.safetensors"),
        dir.path().join("i.safetensors"),
    );
    write_st(&h, &[], high);
    write_st(&i, &[], int8);
    let input = EncodeInput {
        high: vec![h],
        int8: vec![i],
        ..EncodeInput::default()
    };
    let out = dir.path().join("out.qstore");
    let err = encode_to_path(&input, &EncodeOptions::default(), &out, &|_| {})
        .err()
        .expect("encoding must fail");
    assert!(!out.exists(), "nothing half-written is left behind");
    assert!(matches!(err, FormatError::Input(_)), "{err:?}");
    err.to_string()
}

#[test]
fn a_supplied_int8_checkpoint_must_be_the_llm_int8_layout_of_the_model() {
    let w = llm_like_bf16(6, 16, 3);
    let high = [
        T::codes("fc.weight", Dtype::BF16, &[6, 16], &w),
        T::codes("fc.bias", Dtype::BF16, &[6], &w[..6]),
    ];
    let q = || T::new("fc.weight", Dtype::I8, &[6, 16], vec![1; 96]);
    let scb = || T::new("fc.SCB", Dtype::F32, &[6], vec![0; 24]);
    let fmt = || T::new("fc.weight_format", Dtype::U8, &[], vec![0]);
    let bias = || T::codes("fc.bias", Dtype::BF16, &[6], &w[..6]);
    let cases: Vec<(Vec<T>, &str)> = vec![
        // What the probe found: a 3-byte I8 tensor accepted as the model's INT8 file.
        (
            vec![T::new("x", Dtype::I8, &[3], vec![1, 2, 3])],
            "lacks the model's tensor \"fc.weight\"",
        ),
        (
            vec![q(), scb(), fmt()],
            "lacks the model's tensor \"fc.bias\"",
        ),
        (
            vec![
                q(),
                scb(),
                fmt(),
                bias(),
                T::new("x", Dtype::U8, &[1], vec![0]),
            ],
            "tensor \"x\" (in i.safetensors) is not a tensor of the model",
        ),
        (vec![q(), fmt(), bias()], "needs \"fc.SCB\" as F32[6]"),
        (
            vec![
                q(),
                T::new("fc.SCB", Dtype::F32, &[3], vec![0; 12]),
                fmt(),
                bias(),
            ],
            "needs \"fc.SCB\" as F32[6]",
        ),
        (
            vec![q(), scb(), bias()],
            "needs \"fc.weight_format\" as U8[]",
        ),
        (
            vec![
                T::new("fc.weight", Dtype::I8, &[16, 6], vec![1; 96]),
                scb(),
                fmt(),
                bias(),
            ],
            "is I8[16, 6] but the model's is BF16[6, 16]",
        ),
        (
            vec![
                q(),
                scb(),
                fmt(),
                T::new("fc.bias", Dtype::F32, &[6], vec![0; 24]),
            ],
            "tensor \"fc.bias\" is F32[6] but the model's is BF16[6]",
        ),
        (
            vec![
                q(),
                scb(),
                fmt(),
                T::codes("fc.bias", Dtype::BF16, &[6], &[7; 6]),
            ],
            "\"fc.bias\" is not quantized, so it must equal the model's, but its bytes differ",
        ),
        (
            vec![T::codes("fc.weight", Dtype::BF16, &[6, 16], &w), bias()],
            "no quantized weight",
        ),
    ];
    for (int8, needle) in cases {
        let msg = supplied_int8_error(&high, &int8);
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        assert!(
            msg.contains("not an LLM.int8 checkpoint of this model"),
            "{msg}"
        );
    }
}

/// A file of `n` one-element BF16 tensors named `{prefix}{i}`.
fn tiny_tensors(prefix: &str, n: usize) -> Vec<u8> {
    let specs: Vec<_> = (0..n)
        .map(|i| qstore::safetensors::TensorSpec {
            name: format!("{prefix}{i}"),
            dtype: Dtype::BF16,
            shape: vec![1],
        })
        .collect();
    let mut bytes = qstore::safetensors::write_header(None, &specs);
    bytes.resize(bytes.len() + 2 * n, 0x3f);
    bytes
}

#[test]
fn tensor_count_and_header_size_are_capped_per_model() {
    use qstore::safetensors::{MAX_HEADER_LEN, MAX_TENSORS};
    let msg = encode_error(&[("bad.safetensors", tiny_tensors("t", MAX_TENSORS + 1))]);
    assert!(
        msg.contains(&format!("more than {MAX_TENSORS} tensors")),
        "{msg}"
    );
    // Two files within the per-file cap, too many together.
    let half = MAX_TENSORS / 2 + 1;
    let msg = encode_error(&[
        ("a.safetensors", tiny_tensors("a", half)),
        ("b.safetensors", tiny_tensors("b", half)),
    ]);
    assert!(
        msg.contains(&format!(
            "the model has {} tensors; at most {MAX_TENSORS}",
            2 * half
        )),
        "{msg}"
    );
    let mut huge = (MAX_HEADER_LEN + 8).to_le_bytes().to_vec();
    huge.extend_from_slice(&[b' '; 64]);
    let msg = encode_error(&[("bad.safetensors", huge)]);
    assert!(
        msg.contains(&format!("{MAX_HEADER_LEN}-byte limit")),
        "{msg}"
    );
}

fn encode_error(files: &[(&str, Vec<u8>)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = files
        .iter()
        .map(|(n, b)| {
            let p = dir.path().join(n);
            std::fs::write(&p, b).unwrap();
            p
        })
        .collect();
    let input = EncodeInput {
        high: paths,
        shard_index: None,
        int8: vec![],
        arriving: None,
    };
    let out = dir.path().join("out.qstore");
    let err = encode_to_path(&input, &EncodeOptions::default(), &out, &|_| {})
        .err()
        .expect("encoding must fail");
    assert!(!out.exists(), "nothing half-written is left behind");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        files.len(),
        "temporary files are removed"
    );
    assert!(matches!(err, FormatError::Input(_)), "{err:?}");
    err.to_string()
}

#[test]
fn malformed_inputs_are_rejected_with_a_reason() {
    let good = {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.safetensors");
        write_st(
            &p,
            &[],
            &[T::codes("a.weight", Dtype::BF16, &[2, 2], &[1, 2, 3, 4])],
        );
        std::fs::read(p).unwrap()
    };
    let with_header = |json: &str| {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 1].to_vec(), "does not match"),
        ([good.clone(), vec![0]].concat(), "does not match"),
        (good[..5].to_vec(), "too short"),
        (u64::MAX.to_le_bytes().to_vec(), "limit"),
        (with_header("{\"a\": 1}"), "must be an object"),
        (with_header("not json"), "JSON"),
        (
            [
                with_header(r#"{"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#),
                vec![1, 2],
            ]
            .concat(),
            "no BF16 or FP16",
        ),
    ];
    for (bytes, needle) in cases {
        let msg = encode_error(&[("bad.safetensors", bytes)]);
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        assert!(
            msg.contains("bad.safetensors") || needle == "no BF16 or FP16",
            "{msg}"
        );
    }
    let msg = encode_error(&[
        ("x.safetensors", good.clone()),
        ("y.safetensors", vec![1, 2, 3]),
    ]);
    assert!(msg.contains("y.safetensors"), "{msg}");
}
