//! `qstore push` and the `qstoreBlob` commit line behind it: a folder goes up as one commit with
//! its weights sent as a blob encoded on the client, served afterwards byte-exact in both views;
//! and a pushed blob the server cannot fully check (a flipped byte, a bad index, weights that
//! are not what the index claims, an INT8 that is not the derivation of the weights) is refused
//! with a clear error, leaving the branch where it was.

use std::path::Path;
use std::process::Output;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::client::{number_before, one_line_error, stdout};
use crate::helpers::{encode, encode_with, sha, with_index};
use crate::hub::{TOKEN, commit, commit_weights, create_repo, head, lfs_upload, paths};
use crate::server::{Endpoint, Opts, TestServer, client, small_model, small_model_bytes, unique};
use qstore::format::{EncodeOptions, Selection};

fn admin() -> TestServer {
    TestServer::with(Opts {
        tokens: vec![TOKEN.into()],
        ..Opts::default()
    })
}

/// Runs the CLI against `s` with the admin token and a config directory of its own.
fn qstore(s: &TestServer, home: &Path, args: &[&str]) -> Output {
    let env = [("QSTORE_ENDPOINT", s.url()), ("QSTORE_TOKEN", TOKEN)];
    crate::client::qstore(home, &env, args)
}

async fn served(s: &TestServer, repo: &str, rev: &str, path: &str) -> Vec<u8> {
    let r = client()
        .get(s.at(&format!("/{repo}/resolve/{rev}/{path}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{repo}@{rev}/{path}");
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn a_pushed_folder_is_one_commit_served_byte_exact_from_fewer_bytes_than_it_holds() {
    let s = admin();
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = std::fs::read(small_model(dir.path(), 31)).unwrap();
    let plain: [(&str, Vec<u8>); 4] = [
        ("config.json", br#"{"model_type": "llama"}"#.to_vec()),
        ("README.md", b"# pushed\n".to_vec()),
        ("tokenizer/vocab.txt", b"a\nb\nc\n".to_vec()),
        // Above the inline limit: goes through LFS like the blob.
        (
            "extra/table.bin",
            (0..6u32 << 20)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
    ];
    for (path, bytes) in &plain {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/HEAD"), b"ref: refs/heads/main\n").unwrap();

    // The repo does not exist yet: push creates it.
    let repo = unique("org/pushed");
    let folder = dir.path().to_str().unwrap();
    let o = qstore(
        &s,
        home.path(),
        &["push", folder, &repo, "-q", "-m", "first"],
    );
    assert!(o.status.success(), "{o:?}");
    let line = stdout(&o);
    let ratio = number_before(&line, "x)");
    assert!(ratio < 0.8, "the blob is {ratio}x of the weights: {line}");

    // Every file byte-exact, .git left out; the INT8 view is the server's own derivation.
    let mut want: Vec<String> = plain.iter().map(|(p, _)| p.to_string()).collect();
    want.extend([".gitattributes".into(), "model.safetensors".into()]);
    want.sort();
    let mut got = paths(&s, &repo, "main").await;
    got.sort();
    assert_eq!(got, want);
    assert_eq!(served(&s, &repo, "main", "model.safetensors").await, model);
    for (path, bytes) in &plain {
        assert_eq!(&served(&s, &repo, "main", path).await, bytes, "{path}");
    }
    let reference = unique("org/reference");
    let (status, _) = create_repo(&s, &reference, TOKEN, false).await;
    assert_eq!(status, StatusCode::OK);
    commit_weights(&s, &reference, &model).await;
    assert_eq!(
        sha(&served(&s, &repo, "int8", "model.safetensors").await),
        sha(&served(&s, &reference, "int8", "model.safetensors").await),
    );

    // Pushing again sends only the commit: the server holds the blob and the large file.
    let first = head(&s, &repo, "main").await;
    let o = qstore(&s, home.path(), &["push", folder, &repo, "-q"]);
    assert!(o.status.success(), "{o:?}");
    let sent = number_before(&stdout(&o), "MB sent");
    assert!(sent < 0.1, "{sent} MB sent again: {}", stdout(&o));
    assert_ne!(head(&s, &repo, "main").await, first);
    assert_eq!(served(&s, &repo, "main", "model.safetensors").await, model);

    // Errors: one line each, and nothing committed for them.
    let now = head(&s, &repo, "main").await;
    let o = qstore(
        &s,
        home.path(),
        &["push", folder, &repo, "-q", "-b", "nope"],
    );
    assert!(one_line_error(&o).contains("no branch"), "{o:?}");
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("model.safetensors"), b"not safetensors").unwrap();
    let o = qstore(
        &s,
        home.path(),
        &["push", bad.path().to_str().unwrap(), &repo, "-q"],
    );
    assert!(one_line_error(&o).contains("model.safetensors"), "{o:?}");
    assert_eq!(head(&s, &repo, "main").await, now);
}

/// Uploads `blob` through LFS and commits it as the weights of `repo`'s main.
async fn push_blob(s: &TestServer, repo: &str, blob: &[u8]) -> (StatusCode, Value) {
    let (oid, status) = lfs_upload(s, repo, blob, false).await;
    assert_eq!(status, StatusCode::OK);
    let op = json!({"key": "qstoreBlob", "value": {"oid": oid, "size": blob.len()}});
    commit(s, repo, "main", TOKEN, None, &[op]).await
}

#[tokio::test]
async fn pushed_blobs_that_do_not_check_out_are_refused_and_change_nothing() {
    let s = admin();
    let repo = unique("org/strict");
    let (status, _) = create_repo(&s, &repo, TOKEN, false).await;
    assert_eq!(status, StatusCode::OK);
    let work = tempfile::tempdir().unwrap();
    let weights = small_model(work.path(), 41);
    let good = std::fs::read(encode(
        work.path(),
        std::slice::from_ref(&weights),
        None,
        &[],
    ))
    .unwrap();

    // A good blob lands, and is served byte-exact in both views.
    let (status, answer) = push_blob(&s, &repo, &good).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let model = std::fs::read(&weights).unwrap();
    assert_eq!(served(&s, &repo, "main", "model.safetensors").await, model);
    let int8 = served(&s, &repo, "int8", "model.safetensors").await;
    let landed = head(&s, &repo, "main").await;

    let flipped = {
        let mut b = good.clone();
        b[16 + 1000] ^= 0x40; // Inside the first chunk of the base section.
        b
    };
    let index_at =
        u64::from_le_bytes(good[good.len() - 32..good.len() - 24].try_into().unwrap()) as usize;
    let bad_index = {
        let mut b = good.clone();
        b[index_at + 3] ^= 0x01;
        b
    };
    // Claims other weights (here: another model's sha256) than the bytes decode to.
    let other = sha(&small_model_bytes(42));
    let lying = with_index(&good, |i| i["high_files"][0]["sha256"] = json!(other));
    // A well-formed blob whose INT8 quantizes fewer tensors than the server derives.
    let fewer = {
        let d = tempfile::tempdir().unwrap();
        let opts = EncodeOptions {
            selection: Selection::new(None, Some("q_proj")).unwrap(),
            ..EncodeOptions::default()
        };
        std::fs::read(encode_with(
            d.path(),
            std::slice::from_ref(&weights),
            None,
            &[],
            &opts,
        ))
        .unwrap()
    };
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("flipped byte", flipped, "fail their check"),
        ("bad index", bad_index, "index"),
        ("lying index", lying, "decodes to sha256"),
        ("other int8", fewer, "derivation"),
        ("not a blob", b"no blob, ".repeat(64), "not a qstore blob"),
    ];
    for (what, blob, says) in cases {
        let (status, answer) = push_blob(&s, &repo, &blob).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default().to_string()
            + answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {answer}");
        assert_eq!(head(&s, &repo, "main").await, landed, "{what}");
        assert_eq!(served(&s, &repo, "int8", "model.safetensors").await, int8);
    }

    // A blob never uploaded for this repo, two blobs, or a blob next to weights of the commit.
    let op =
        |oid: &str, size: usize| json!({"key": "qstoreBlob", "value": {"oid": oid, "size": size}});
    let never = op(&sha(b"never"), 5);
    let (oid, _) = lfs_upload(&s, &repo, &good, false).await;
    let blob_op = op(&oid, good.len());
    let weights_op = crate::hub::lfs_file("model.safetensors", &oid, good.len());
    let bodies: [(&str, Vec<Value>, &str); 3] = [
        ("never uploaded", vec![never], "never uploaded"),
        (
            "two blobs",
            vec![blob_op.clone(), blob_op.clone()],
            "at most one",
        ),
        (
            "weights too",
            vec![blob_op, weights_op],
            "from the blob only",
        ),
    ];
    for (what, ops, says) in bodies {
        let (status, answer) = commit(&s, &repo, "main", TOKEN, None, &ops).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert!(answer.to_string().contains(says), "{what}: {answer}");
        assert_eq!(head(&s, &repo, "main").await, landed, "{what}");
    }
}

#[tokio::test]
async fn sharded_and_f32_weights_are_pushed_and_replace_the_heads_weights() {
    use crate::helpers::{T, write_st};
    use qstore::safetensors::Dtype;
    let s = admin();
    let home = tempfile::tempdir().unwrap();
    let repo = unique("org/shards");

    // First a single-file model, then a sharded one: the push's weights replace the head's.
    let single = tempfile::tempdir().unwrap();
    small_model(single.path(), 51);
    let o = qstore(
        &s,
        home.path(),
        &["push", single.path().to_str().unwrap(), &repo, "-q"],
    );
    assert!(o.status.success(), "{o:?}");

    let dir = tempfile::tempdir().unwrap();
    let shard = |i: u64| {
        dir.path()
            .join(format!("model-0000{i}-of-00002.safetensors"))
    };
    write_st(
        &shard(1),
        &[("format", "pt")],
        &[T::llm("a.q_proj.weight", 256, 128, 52)],
    );
    write_st(
        &shard(2),
        &[("format", "pt")],
        &[T::llm("b.k_proj.weight", 128, 256, 53)],
    );
    let index = r#"{"metadata": {"total_size": 131072}, "weight_map": {"a.q_proj.weight": "model-00001-of-00002.safetensors", "b.k_proj.weight": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let o = qstore(
        &s,
        home.path(),
        &["push", dir.path().to_str().unwrap(), &repo, "-q"],
    );
    assert!(o.status.success(), "{o:?}");
    let listed = paths(&s, &repo, "main").await;
    assert!(
        !listed.contains(&"model.safetensors".to_string()),
        "{listed:?}"
    );
    for name in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ] {
        let local = std::fs::read(dir.path().join(name)).unwrap();
        assert_eq!(served(&s, &repo, "main", name).await, local, "{name}");
    }
    let int8_index = served(&s, &repo, "int8", "model.safetensors.index.json").await;
    let int8_index: Value = serde_json::from_slice(&int8_index).unwrap();
    assert!(
        int8_index["weight_map"]["a.q_proj.SCB"].is_string(),
        "{int8_index}"
    );

    // F32-only weights are no blob's: they go up, and are served, as plain files.
    let f32_dir = tempfile::tempdir().unwrap();
    let values: Vec<u8> = (0..64 * 64)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    write_st(
        &f32_dir.path().join("model.safetensors"),
        &[],
        &[T::new("w.weight", Dtype::F32, &[64, 64], values)],
    );
    let repo32 = unique("org/f32");
    let o = qstore(
        &s,
        home.path(),
        &["push", f32_dir.path().to_str().unwrap(), &repo32, "-q"],
    );
    assert!(o.status.success(), "{o:?}");
    assert!(!stdout(&o).contains("blob"), "{}", stdout(&o));
    let local = std::fs::read(f32_dir.path().join("model.safetensors")).unwrap();
    assert_eq!(
        served(&s, &repo32, "main", "model.safetensors").await,
        local
    );
}
