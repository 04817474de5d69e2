//! The real MiniLM-L6 through the server: native downloads, and the real `huggingface_hub`
//! client (tests/hf_client/check_hub.py) for revisions main, bf16 and int8; uploads with the
//! library and the `hf` CLI, through LFS and Xet; transformers `push_to_hub` and `from_pretrained`.
//!
//! Each test is ignored by default with what it needs (tests/it/needs.rs): the weights from
//! `scripts/fetch-minilm.sh`, a Python with huggingface_hub (QSTORE_TEST_PYTHON, and 0.36 in
//! QSTORE_TEST_PYTHON_036), a Python with transformers (QSTORE_TEST_TRANSFORMERS_PYTHON).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{T, derived_int8, sha, write_st};
use crate::server::{Opts, TestServer, get, get_bytes, post_form, unique};

/// Files of a repo: (path in the repo, bytes).
type RepoFiles = Vec<(String, Vec<u8>)>;

/// The BF16 weights and the repo's other files (the test fails when they were not fetched).
fn minilm() -> (Vec<u8>, RepoFiles) {
    let root = crate::needs::minilm_dir();
    let mut files = Vec::new();
    collect(&root.join("repo"), &root.join("repo"), &mut files);
    files.sort();
    (
        std::fs::read(root.join("model-bf16.safetensors")).unwrap(),
        files,
    )
}

fn collect(base: &Path, dir: &Path, out: &mut RepoFiles) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(base, &path, out);
        } else {
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read(&path).unwrap()));
        }
    }
}

/// Uploads MiniLM with all its files; returns the 201 report.
async fn upload_minilm(
    s: &TestServer,
    name: &str,
    weights: &[u8],
    files: &[(String, Vec<u8>)],
) -> Value {
    let mut form = vec![("file", "model.safetensors".to_string(), weights.to_vec())];
    form.extend(files.iter().map(|(p, b)| ("file", p.clone(), b.clone())));
    let (status, report) = post_form(s, name, form, None).await;
    assert_eq!(status, StatusCode::CREATED, "{report}");
    report
}

#[tokio::test]
#[ignore = "needs scripts/fetch-minilm.sh"]
async fn minilm_upload_serves_both_precisions_byte_exact() {
    let (weights, files) = minilm();
    let s = TestServer::start();
    let name = unique("st/minilm");
    let report = upload_minilm(&s, &name, &weights, &files).await;
    assert!(report["ratio"].as_f64().unwrap() >= 2.6, "{report}");

    let (st, bf16) = get_bytes(&s, &format!("/models/{name}/bf16")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(sha(&bf16), sha(&weights));
    let (_, int8) = get_bytes(&s, &format!("/models/{name}/int8")).await;
    assert_eq!(sha(&int8), sha(&derived_int8(&weights)));
    for (path, bytes) in &files {
        let (st, got) = get_bytes(&s, &format!("/{name}/resolve/main/{path}")).await;
        assert_eq!(st, StatusCode::OK, "{path}");
        assert_eq!(sha(&got), sha(bytes), "{path}");
    }
    let r = get(&s, &format!("/{name}/resolve/int8/model.safetensors")).await;
    assert_eq!(
        r.headers()["x-repo-commit"],
        report["commits"]["int8"].as_str().unwrap()
    );
    assert_eq!(sha(&r.bytes().await.unwrap()), sha(&int8));
}

#[tokio::test]
#[ignore = "needs QSTORE_TEST_PYTHON (huggingface_hub) and scripts/fetch-minilm.sh"]
async fn huggingface_hub_downloads_every_revision() {
    let python = crate::needs::hub_python();
    let (weights, files) = minilm();
    let s = TestServer::start();
    let name = unique("st/minilm");
    let report = upload_minilm(&s, &name, &weights, &files).await;

    let mut high: BTreeMap<String, String> =
        files.iter().map(|(p, b)| (p.clone(), sha(b))).collect();
    high.insert("model.safetensors".into(), sha(&weights));
    let mut int8 = high.clone();
    int8.insert("model.safetensors".into(), sha(&derived_int8(&weights)));
    let served_int8_config = report["files"]["int8"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "config.json")
        .unwrap()["sha256"]
        .clone();
    int8.insert(
        "config.json".into(),
        served_int8_config.as_str().unwrap().into(),
    );
    let (high_commit, int8_commit) = (&report["commits"]["bf16"], &report["commits"]["int8"]);
    let expected = json!({
        "server": s.url,
        "repo": name,
        "revisions": {
            "main": {"commit": high_commit, "files": high},
            "bf16": {"commit": high_commit, "files": high},
            "int8": {"commit": int8_commit, "files": int8},
        },
    });
    let dir = tempfile::tempdir().unwrap();
    check_hub(python, dir.path(), &expected).await;
}

/// Runs tests/hf_client/check_hub.py on what `expected` says each revision holds.
async fn check_hub(python: PathBuf, dir: &Path, expected: &Value) {
    let expected_path = dir.join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    run_check(
        python,
        "tests/hf_client/check_hub.py",
        vec![expected_path.into_os_string()],
    )
    .await;
}

/// `qstore push` of a folder, then the real client downloads `main` and `int8` of it: every
/// file byte-exact, the weights' INT8 the same derivation a local encode makes.
#[tokio::test]
#[ignore = "needs QSTORE_TEST_PYTHON (huggingface_hub) and scripts/fetch-minilm.sh"]
async fn huggingface_hub_downloads_what_qstore_pushed() {
    let python = crate::needs::hub_python();
    let (weights, files) = minilm();
    let s = TestServer::start();
    let name = unique("st/pushed");
    let dir = tempfile::tempdir().unwrap();
    let folder = minilm_folder(dir.path(), &weights, &files);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_qstore"))
        .args(["push", "-q"])
        .arg(&folder)
        .arg(&name)
        .env("QSTORE_ENDPOINT", &s.url)
        .env("XDG_CONFIG_HOME", dir.path())
        .env_remove("QSTORE_TOKEN")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let line = String::from_utf8_lossy(&o.stdout).into_owned();
    let id =
        |after: &str| -> String { line.split(after).nth(1).unwrap().chars().take(40).collect() };
    let (high_commit, int8_commit) = (id("commit "), id("INT8 view "));
    // What only the server makes: the Hub's default .gitattributes and the INT8 config.
    let served = |rev: &'static str, path: &'static str| {
        let url = format!("/{name}/resolve/{rev}/{path}");
        let s = &s;
        async move { sha(&get_bytes(s, &url).await.1) }
    };
    let mut high: BTreeMap<String, String> =
        files.iter().map(|(p, b)| (p.clone(), sha(b))).collect();
    high.insert("model.safetensors".into(), sha(&weights));
    high.insert(
        ".gitattributes".into(),
        served("main", ".gitattributes").await,
    );
    let mut int8 = high.clone();
    int8.insert("model.safetensors".into(), sha(&derived_int8(&weights)));
    int8.insert("config.json".into(), served("int8", "config.json").await);
    let expected = json!({
        "server": s.url,
        "repo": name,
        "revisions": {
            "main": {"commit": high_commit, "files": high},
            "int8": {"commit": int8_commit, "files": int8},
        },
    });
    check_hub(python, dir.path(), &expected).await;
}

/// MiniLM as a repo folder: its files plus the BF16 weights as `model.safetensors`.
fn minilm_folder(dir: &Path, weights: &[u8], files: &RepoFiles) -> PathBuf {
    let folder = dir.join("minilm");
    for (path, bytes) in files {
        let dest = folder.join(path);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, bytes).unwrap();
    }
    std::fs::write(folder.join("model.safetensors"), weights).unwrap();
    folder
}

#[tokio::test]
#[ignore = "needs QSTORE_TEST_PYTHON (huggingface_hub) and scripts/fetch-minilm.sh"]
async fn huggingface_hub_uploads_like_to_the_hub() {
    let python = crate::needs::hub_python();
    upload_check(python).await;
}

/// The same with huggingface_hub 0.36 (QSTORE_TEST_PYTHON_036), the last 0.x release line.
#[tokio::test]
#[ignore = "needs QSTORE_TEST_PYTHON_036 (huggingface_hub 0.36) and scripts/fetch-minilm.sh"]
async fn huggingface_hub_036_uploads_like_to_the_hub() {
    let python = crate::needs::python("QSTORE_TEST_PYTHON_036", "huggingface_hub 0.36");
    upload_check(python).await;
}

/// check_upload.py against a fresh server, with MiniLM as the folder to upload.
async fn upload_check(python: PathBuf) {
    let (weights, files) = minilm();
    let token = "qst_test_upload_token";
    let s = TestServer::with(Opts {
        tokens: vec![token.into()],
        ..Opts::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let folder = minilm_folder(dir.path(), &weights, &files);
    let expected = json!({
        "server": s.url,
        "token": token,
        "token_name": "admin",
        "namespace": unique("hub"),
        "folder": folder,
        "int8_sha256": sha(&derived_int8(&weights)),
    });
    let expected_path = dir.path().join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    run_check(
        python,
        "tests/hf_client/check_upload.py",
        vec![expected_path.into_os_string()],
    )
    .await;
}

/// A sharded BF16 model as a repo folder, and a retrained second shard (one of its two tensors
/// changed, so most of its chunks are the old shard's).
fn sharded_folder(dir: &Path) -> (PathBuf, PathBuf) {
    let folder = dir.join("sharded");
    std::fs::create_dir_all(&folder).unwrap();
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write_st(
        &folder.join(names[0]),
        &[("format", "pt")],
        &[
            T::llm("model.embed_tokens.weight", 64, 512, 1),
            T::llm("model.layers.0.q_proj.weight", 512, 512, 2),
        ],
    );
    let second = |seed: u64, path: &Path| {
        write_st(
            path,
            &[("format", "pt")],
            &[
                T::llm("model.layers.1.q_proj.weight", 1024, 512, 3),
                T::llm("model.layers.1.v_proj.weight", 1024, 512, seed),
            ],
        )
    };
    second(4, &folder.join(names[1]));
    let changed = dir.join("retrained.safetensors");
    second(5, &changed);
    let index = json!({
        "metadata": {"total_size": 2 * (64 * 512 + 512 * 512 + 2 * 1024 * 512)},
        "weight_map": {
            "model.embed_tokens.weight": names[0],
            "model.layers.0.q_proj.weight": names[0],
            "model.layers.1.q_proj.weight": names[1],
            "model.layers.1.v_proj.weight": names[1],
        },
    });
    std::fs::write(
        folder.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::write(folder.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    (folder, changed)
}

/// The newest client as installed (hf_xet, no HF_HUB_DISABLE_XET): uploads go through Xet.
#[tokio::test]
#[ignore = "needs QSTORE_TEST_PYTHON (huggingface_hub) and scripts/fetch-minilm.sh"]
async fn huggingface_hub_uploads_through_xet() {
    let python = crate::needs::hub_python();
    let (weights, files) = minilm();
    let token = "qst_test_xet_token";
    let s = TestServer::with(Opts {
        tokens: vec![token.into()],
        ..Opts::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let minilm = minilm_folder(dir.path(), &weights, &files);
    let (sharded, changed) = sharded_folder(dir.path());
    let first = std::fs::read(sharded.join("model-00001-of-00002.safetensors")).unwrap();
    let retrained = std::fs::read(&changed).unwrap();
    let expected = json!({
        "server": s.url,
        "token": token,
        "namespace": unique("xet"),
        "minilm": {"folder": minilm, "int8_sha256": sha(&derived_int8(&weights))},
        "sharded": {
            "folder": sharded,
            "changed": changed,
            "changed_name": "model-00002-of-00002.safetensors",
            "int8_sha256": {
                "model-00001-of-00002.safetensors": sha(&derived_int8(&first)),
                "model-00002-of-00002.safetensors": sha(&derived_int8(&retrained)),
            },
        },
    });
    let expected_path = dir.path().join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    run_check(
        python,
        "tests/hf_client/check_xet.py",
        vec![expected_path.into_os_string()],
    )
    .await;
    // Every weights file came through the CAS: MiniLM, two shards, the retrained shard.
    let metrics = get(&s, "/metrics").await.text().await.unwrap();
    let files = metric(&metrics, "qstore_xet_files_total");
    assert!(files >= 4.0, "{files} files through Xet");
}

/// The value of an unlabelled counter in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

#[tokio::test]
#[ignore = "needs QSTORE_TEST_TRANSFORMERS_PYTHON (torch, transformers) and scripts/fetch-minilm.sh"]
async fn transformers_loads_both_precisions() {
    let python = crate::needs::transformers_python();
    let (weights, files) = minilm();
    let s = TestServer::start();
    let name = unique("st/minilm");
    upload_minilm(&s, &name, &weights, &files).await;
    let args = vec![s.url.clone().into(), name.into()];
    run_check(python, "tests/hf_client/check_transformers.py", args).await;
}

/// `qstore pull` writes folders transformers loads with no server at all (offline), in both
/// precisions: the INT8 one as LLM.int8 layers, from its `quantization_config`.
#[tokio::test]
#[ignore = "needs QSTORE_TEST_TRANSFORMERS_PYTHON (torch, transformers) and scripts/fetch-minilm.sh"]
async fn transformers_loads_folders_qstore_pulled_offline() {
    let python = crate::needs::transformers_python();
    let (weights, files) = minilm();
    let s = TestServer::start();
    let name = unique("st/minilm");
    upload_minilm(&s, &name, &weights, &files).await;
    let out = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for precision in ["bf16", "int8"] {
        let dir = out.path().join(precision);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_qstore"))
            .args(["pull", &name, "-q", "-p", precision, "-o"])
            .arg(&dir)
            .env("QSTORE_ENDPOINT", &s.url)
            .env("XDG_CONFIG_HOME", out.path())
            .env_remove("QSTORE_TOKEN")
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        dirs.push(dir.into_os_string());
    }
    drop(s); // Offline means offline.
    let mut args = vec!["--folders".into()];
    args.extend(dirs);
    run_check(python, "tests/hf_client/check_transformers.py", args).await;
}

#[tokio::test]
#[ignore = "needs QSTORE_TEST_TRANSFORMERS_PYTHON (torch, transformers) and scripts/fetch-minilm.sh"]
async fn transformers_pushes_to_hub_over_lfs_and_loads_both_precisions() {
    push_to_hub_check("lfs").await;
}

/// The same with the client as installed: the weights go through the Xet CAS.
#[tokio::test]
#[ignore = "needs QSTORE_TEST_TRANSFORMERS_PYTHON (torch, transformers) and scripts/fetch-minilm.sh"]
async fn transformers_pushes_to_hub_over_xet_and_loads_both_precisions() {
    push_to_hub_check("xet").await;
}

async fn push_to_hub_check(transport: &str) {
    let python = crate::needs::transformers_python();
    let (weights, files) = minilm();
    let token = "qst_test_push_token";
    let s = TestServer::with(Opts {
        tokens: vec![token.into()],
        ..Opts::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let folder = minilm_folder(dir.path(), &weights, &files);
    let repo = unique("hub/pushed-minilm");
    let args = vec![
        s.url.clone().into(),
        token.into(),
        repo.into(),
        folder.into_os_string(),
        transport.into(),
    ];
    run_check(python, "tests/hf_client/check_push_to_hub.py", args).await;
    let metrics = get(&s, "/metrics").await.text().await.unwrap();
    let through_xet = metric(&metrics, "qstore_xet_files_total");
    match transport {
        "xet" => assert!(through_xet >= 1.0, "the weights did not go through Xet"),
        _ => assert_eq!(through_xet, 0.0, "HF_HUB_DISABLE_XET=1 still used Xet"),
    }
}

/// Runs the Python check `script` (a path from the crate's root) with `ARGS...`; it must exit 0
/// and print "NAME: OK" (its file name without `.py`). The script's temporary files (HF caches,
/// a browser profile of 160 MB) go to a directory removed when it ends, so runs leave no litter.
pub async fn run_check(python: PathBuf, script: &str, args: Vec<std::ffi::OsString>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let scratch = tempfile::tempdir().unwrap();
    let tmpdir = scratch.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(path)
            .args(args)
            .env("TMPDIR", tmpdir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}");
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    let name = Path::new(script).file_stem().unwrap().to_string_lossy();
    let marker = format!("{name}: OK");
    assert!(
        stdout.contains(&marker),
        "{script} did not finish:\n{stdout}"
    );
}
