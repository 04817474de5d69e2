//! Blobs written by older encoders stay readable, byte-exact, whatever later versions of the
//! format change: small blobs of versions 1 to 5 (tests/data/v1/ to v5/, see the READMEs
//! there) decode to the files they were encoded from (their sha256 recorded when they were
//! made), and their INT8 outputs are still what the reference LLM.int8 formula gives for those
//! files.

use std::path::Path;

use qstore::format::{Blob, Precision};

use crate::helpers::{check_derived_int8, sha};

/// A checked-in blob (its format version, its path under tests/data) and the sha256 of each
/// output file: (precision, name, sha256).
struct Fixture {
    version: u32,
    file: &'static str,
    outputs: &'static [(Precision, &'static str, &'static str)],
}

/// What the input of tests/data/v2/make.py decodes to, in every version it was encoded with.
const WHOLE_VALUES_OUTPUTS: &[(Precision, &str, &str)] = &[
    (
        Precision::High,
        "model.safetensors",
        "160dcd6a1ca2ad9372441813665d8153ac6864498846ba83b549ceb8f22157b2",
    ),
    (
        Precision::Int8,
        "model.safetensors",
        "9a6c1e88ccb328996ccb2853b3d22febfe0930e2344968f6fce161822ed39a13",
    ),
];

const FIXTURES: &[Fixture] = &[
    Fixture {
        version: 1,
        file: "v1/bf16.qstore",
        outputs: &[
            (
                Precision::High,
                "model.safetensors",
                "32dbf029376e7eb2712a2891198facd4ba59fdae858a0c0cf506f83c2f739433",
            ),
            (
                Precision::Int8,
                "model.safetensors",
                "60f6e98e01855fb5787a08c47b3496f98514dfff347b32525ffbf341e2b9c9f3",
            ),
        ],
    },
    Fixture {
        version: 1,
        file: "v1/fp16-sharded.qstore",
        outputs: &[
            (
                Precision::High,
                "model-00001-of-00002.safetensors",
                "3c228d55966f0ad7a857aa1ae163007ea464784d04c16c97860c94f726b99571",
            ),
            (
                Precision::High,
                "model-00002-of-00002.safetensors",
                "a68f16a8fdd9a8cb90a40c7f1dffec8613f552bebed76e291bc1e3aa99f447f8",
            ),
            (
                Precision::High,
                "model.safetensors.index.json",
                "493ae350de6bfbd7565b97e6a8a2f0753d38aaf500b0baecce484762e0314dfd",
            ),
            (
                Precision::Int8,
                "model-00001-of-00002.safetensors",
                "ffc59cd215223f38f5edd9bcbf7359237b253e75c9a1aee3804242246e0c58ab",
            ),
            (
                Precision::Int8,
                "model-00002-of-00002.safetensors",
                "091e6e962179c46b948e7240aecd96243d32fb27d6f9ca9928aa390d7bb795ab",
            ),
            (
                Precision::Int8,
                "model.safetensors.index.json",
                "da59cc0d787443df0c0ec696cd5ff772bf25843269e3b03c40b4907db6fc8e86",
            ),
        ],
    },
    Fixture {
        version: 2,
        file: "v2/bf16-whole-values.qstore",
        outputs: WHOLE_VALUES_OUTPUTS,
    },
    Fixture {
        version: 3,
        file: "v3/bf16-whole-values.qstore",
        outputs: WHOLE_VALUES_OUTPUTS,
    },
    Fixture {
        version: 4,
        file: "v4/bf16-whole-values.qstore",
        outputs: WHOLE_VALUES_OUTPUTS,
    },
    Fixture {
        version: 5,
        file: "v5/mixed-tables.qstore",
        outputs: &[
            (
                Precision::High,
                "model.safetensors",
                "bb711ecd3922e3c6d9d630c4477d09d6ab4891ee5f1228134c8be093555857da",
            ),
            (
                Precision::Int8,
                "model.safetensors",
                "6875aa042b1643f51a869a9532a29b40775fd557babcd30795f63f131cea3a20",
            ),
        ],
    },
];

fn decoded(blob: &Blob<std::fs::File>, p: Precision, name: &str) -> Vec<u8> {
    let file = blob.file(p, Some(name)).unwrap();
    let mut out = Vec::new();
    blob.write_file(file, &mut out).unwrap();
    out
}

#[test]
fn older_blobs_decode_byte_exact() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for f in FIXTURES {
        let blob = Blob::open(std::fs::File::open(dir.join(f.file)).unwrap()).unwrap();
        assert_eq!(blob.index().version, f.version, "{}", f.file);
        let mut names = Vec::new();
        for p in [Precision::High, Precision::Int8] {
            names.extend(blob.files(p).iter().map(|o| (p, o.name.clone())));
        }
        let listed: Vec<(Precision, String)> = f
            .outputs
            .iter()
            .map(|(p, n, _)| (*p, n.to_string()))
            .collect();
        assert_eq!(names, listed, "{}: its files", f.file);
        for (p, name, want) in f.outputs {
            let got = sha(&decoded(&blob, *p, name));
            assert_eq!(&got, want, "{}: {name} ({p:?})", f.file);
        }
        for high in blob.files(Precision::High) {
            if high.name.ends_with(".safetensors") {
                let h = decoded(&blob, Precision::High, &high.name);
                let i = decoded(&blob, Precision::Int8, &high.name);
                check_derived_int8(&h, &i, &|n| {
                    n.contains("_proj.weight") && !n.contains("embed")
                });
            }
        }
    }
}
