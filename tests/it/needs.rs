//! What environment-dependent tests need, found or failed for.
//!
//! Such a test carries `#[ignore = "needs …"]`: the default `cargo test` lists it as ignored, with
//! the reason, instead of passing without having run. Asked for explicitly (`-- --include-ignored`,
//! as CI does, or `-- --ignored NAME`), it fails with one line saying what is missing.

use std::path::{Path, PathBuf};

/// The fetched MiniLM-L6 folder (scripts/fetch-minilm.sh), or `QSTORE_MINILM`'s weights' folder.
pub fn minilm_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/minilm");
    let ok = dir.join("model-bf16.safetensors").is_file() && dir.join("repo/config.json").is_file();
    assert!(ok, "{} missing: run scripts/fetch-minilm.sh", dir.display());
    dir
}

/// The Python named by `var`, which must have `what` installed.
pub fn python(var: &str, what: &str) -> PathBuf {
    match std::env::var_os(var).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => panic!("set {var} to a Python with {what}"),
    }
}

/// `QSTORE_TEST_PYTHON`: a Python with `huggingface_hub` (and selenium for the browser test).
pub fn hub_python() -> PathBuf {
    python("QSTORE_TEST_PYTHON", "huggingface_hub")
}

/// `QSTORE_TEST_TRANSFORMERS_PYTHON`: a Python with torch, transformers, bitsandbytes, accelerate.
pub fn transformers_python() -> PathBuf {
    python(
        "QSTORE_TEST_TRANSFORMERS_PYTHON",
        "torch, transformers, bitsandbytes and accelerate",
    )
}

/// Debian's chromedriver (with chromium), for the browser test.
pub fn chromedriver() -> &'static str {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromedriver missing: apt-get install chromium chromium-driver")
}
