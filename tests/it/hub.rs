//! The Hub write API driven over raw HTTP, for what the real clients never send: hashes that
//! lie, LFS objects never uploaded, files that are not what their names say, bad paths, stale
//! parents, racing commits, tokens out of scope or revoked. Each must be a 4xx with a JSON
//! error and leave the repo as it was. (The real clients' happy paths: tests/it/hf_client.rs.)

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{derived_int8, sha};
use crate::server::{Endpoint, Opts, TestServer, client, get_bytes, small_model_bytes, unique};

pub const TOKEN: &str = "qst_hub_test_admin";

fn admin() -> TestServer {
    TestServer::with(Opts {
        tokens: vec![TOKEN.into()],
        ..Opts::default()
    })
}

async fn send(
    s: &impl Endpoint,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = client().request(method, s.at(path));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The status of a request made with the admin token.
async fn status_of(s: &impl Endpoint, method: reqwest::Method, path: &str) -> StatusCode {
    send(s, method, path, Some(TOKEN), None).await.0
}

pub async fn create_repo(
    s: &impl Endpoint,
    repo: &str,
    token: &str,
    private: bool,
) -> (StatusCode, Value) {
    let (org, name) = repo.split_once('/').unwrap();
    let body = json!({"name": name, "organization": org, "type": "model", "private": private});
    send(
        s,
        reqwest::Method::POST,
        "/api/repos/create",
        Some(token),
        Some(body),
    )
    .await
}

/// Offers `bytes` to the LFS batch endpoint and PUTs them to the URL(s) it gives; `lie` sends
/// other bytes of the same length instead. Returns the oid and the status of the last PUT.
pub async fn lfs_upload(
    s: &impl Endpoint,
    repo: &str,
    bytes: &[u8],
    lie: bool,
) -> (String, StatusCode) {
    let oid = sha(bytes);
    let batch = json!({
        "operation": "upload", "transfers": ["basic", "multipart"], "hash_algo": "sha256",
        "objects": [{"oid": oid, "size": bytes.len()}],
    });
    let (st, v) = send(
        s,
        reqwest::Method::POST,
        &format!("/{repo}.git/info/lfs/objects/batch"),
        Some(TOKEN),
        Some(batch),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let object = &v["objects"][0];
    let Some(upload) = object["actions"]["upload"].as_object() else {
        return (oid, StatusCode::OK); // Stored already.
    };
    let sent: Vec<u8> = if lie {
        bytes.iter().map(|b| b ^ 1).collect()
    } else {
        bytes.to_vec()
    };
    let href = upload["href"].as_str().unwrap();
    let Some(header) = upload.get("header") else {
        let r = client().put(href).body(sent).send().await.unwrap();
        return (oid, r.status());
    };
    let chunk: usize = header["chunk_size"].as_str().unwrap().parse().unwrap();
    let mut parts = Vec::new();
    for (i, piece) in sent.chunks(chunk).enumerate() {
        let url = header[(i + 1).to_string()].as_str().unwrap();
        let r = client().put(url).body(piece.to_vec()).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        parts.push(json!({"partNumber": i + 1, "etag": r.headers()["etag"].to_str().unwrap()}));
    }
    let r = client()
        .post(href)
        .json(&json!({"oid": oid, "parts": parts}))
        .send()
        .await
        .unwrap();
    (oid, r.status())
}

/// Uploads `model` through LFS and commits it as `model.safetensors` on `main`: its oid and the
/// commit's answer.
pub async fn commit_weights(
    s: &impl Endpoint,
    repo: &str,
    model: &[u8],
) -> (String, (StatusCode, Value)) {
    let (oid, status) = lfs_upload(s, repo, model, false).await;
    assert_eq!(status, StatusCode::OK);
    let op = [lfs_file("model.safetensors", &oid, model.len())];
    let answer = commit(s, repo, "main", TOKEN, None, &op).await;
    (oid, answer)
}

pub fn inline(path: &str, bytes: &[u8]) -> Value {
    let content = base64::engine::general_purpose::STANDARD.encode(bytes);
    json!({"key": "file", "value": {"path": path, "content": content, "encoding": "base64"}})
}

pub fn lfs_file(path: &str, oid: &str, size: usize) -> Value {
    json!({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": size}})
}

pub async fn commit(
    s: &impl Endpoint,
    repo: &str,
    branch: &str,
    token: &str,
    parent: Option<&str>,
    ops: &[Value],
) -> (StatusCode, Value) {
    let mut header = json!({"summary": "test commit", "description": ""});
    if let Some(p) = parent {
        header["parentCommit"] = json!(p);
    }
    let mut body = json!({"key": "header", "value": header}).to_string();
    for op in ops {
        body.push('\n');
        body.push_str(&op.to_string());
    }
    let r = client()
        .post(s.at(&format!("/api/models/{repo}/commit/{branch}")))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn head(s: &impl Endpoint, repo: &str, rev: &str) -> String {
    let (st, v) = send(
        s,
        reqwest::Method::GET,
        &format!("/api/models/{repo}/revision/{rev}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["sha"].as_str().unwrap().to_string()
}

pub async fn paths(s: &impl Endpoint, repo: &str, rev: &str) -> Vec<String> {
    let (_, v) = send(
        s,
        reqwest::Method::GET,
        &format!("/api/models/{repo}/tree/{rev}?recursive=true"),
        Some(TOKEN),
        None,
    )
    .await;
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "file")
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn lying_uploads_and_missing_objects_change_nothing() {
    let s = admin();
    let repo = unique("org/lies");
    assert_eq!(create_repo(&s, &repo, TOKEN, false).await.0, StatusCode::OK);
    let before = head(&s, &repo, "main").await;

    // Bytes that do not hash to their oid: refused at the PUT (basic) or completion (multipart).
    for size in [1000, 20 << 20] {
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let (oid, status) = lfs_upload(&s, &repo, &bytes, true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "size {size}");
        let verify = json!({"oid": oid, "size": size});
        let (st, _) = send(
            &s,
            reqwest::Method::POST,
            &format!("/{repo}.git/info/lfs/objects/verify"),
            Some(TOKEN),
            Some(verify),
        )
        .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, v) = commit(
            &s,
            &repo,
            "main",
            TOKEN,
            None,
            &[lfs_file("x.bin", &oid, size)],
        )
        .await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, "BadRequest"),
            "{v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("never uploaded"),
            "{v}"
        );
    }
    // A made-up oid.
    let (st, _) = commit(
        &s,
        &repo,
        "main",
        TOKEN,
        None,
        &[lfs_file("y.bin", &"ab".repeat(32), 5)],
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // A .safetensors that is not one, sent through LFS.
    let junk = b"this is not a safetensors file at all".repeat(10);
    let (_, (st, v)) = commit_weights(&s, &repo, &junk).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model.safetensors"),
        "{v}"
    );
    // Paths that escape or are empty.
    for bad in [
        "../x",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "a/../b",
        "",
        ".git/config",
        "a\\b",
    ] {
        let (st, v) = commit(&s, &repo, "main", TOKEN, None, &[inline(bad, b"x")]).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad:?}: {v}");
    }
    // Unknown operations and malformed lines.
    let (st, _) = commit(
        &s,
        &repo,
        "main",
        TOKEN,
        None,
        &[json!({"key": "copyEverything", "value": {}})],
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = commit(&s, &repo, "main", TOKEN, None, &[json!("not an object")]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // Deleting what is not there.
    let (st, v) = commit(
        &s,
        &repo,
        "main",
        TOKEN,
        None,
        &[json!({"key": "deletedFile", "value": {"path": "nope.txt"}})],
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::NOT_FOUND, "EntryNotFound"),
        "{v}"
    );

    assert_eq!(
        head(&s, &repo, "main").await,
        before,
        "nothing became visible"
    );
    assert_eq!(paths(&s, &repo, "main").await, [".gitattributes"]);
}

#[tokio::test]
async fn weights_become_a_blob_that_later_commits_and_other_repos_reuse() {
    let s = admin();
    let repo = unique("org/w");
    create_repo(&s, &repo, TOKEN, false).await;
    let model = small_model_bytes(21);
    let (oid, status) = lfs_upload(&s, &repo, &model, false).await;
    assert_eq!(status, StatusCode::OK);
    let config = br#"{"model_type": "llama"}"#;
    let (st, v) = commit(
        &s,
        &repo,
        "main",
        TOKEN,
        None,
        &[
            lfs_file("model.safetensors", &oid, model.len()),
            inline("config.json", config),
        ],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let first = v["commitOid"].as_str().unwrap().to_string();
    assert!(
        v["commitUrl"]
            .as_str()
            .unwrap()
            .contains(&format!("/commit/{first}"))
    );
    let twin = v["int8CommitOid"].as_str().unwrap().to_string();

    let (_, bf16) = get_bytes(&s, &format!("/{repo}/resolve/main/model.safetensors")).await;
    assert_eq!(sha(&bf16), oid);
    let (_, int8) = get_bytes(&s, &format!("/{repo}/resolve/int8/model.safetensors")).await;
    assert_eq!(sha(&int8), sha(&derived_int8(&model)));
    let (_, pinned) = get_bytes(&s, &format!("/{repo}/resolve/{twin}/model.safetensors")).await;
    assert_eq!(pinned, int8);

    let stored = |v: &Value| v["stored_bytes"].as_u64().unwrap();
    let (_, d1) = send(
        &s,
        reqwest::Method::GET,
        &format!("/models/{repo}"),
        None,
        None,
    )
    .await;
    let readme = b"---\nlicense: mit\n---\n# A card\n";
    let (st, v) = commit(
        &s,
        &repo,
        "main",
        TOKEN,
        Some(&first),
        &[inline("README.md", readme)],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, d2) = send(
        &s,
        reqwest::Method::GET,
        &format!("/models/{repo}"),
        None,
        None,
    )
    .await;
    assert_eq!(
        stored(&d2),
        stored(&d1) + readme.len() as u64,
        "a README commit stores the README only"
    );
    let blobs = |d: &Value| -> Vec<u64> {
        d["revisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["blob_bytes"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(blobs(&d2)[0], blobs(&d2)[1], "same blob");

    // A second repo with the same weights stores no second blob.
    let other = unique("org/w2");
    create_repo(&s, &other, TOKEN, false).await;
    let (same_oid, status) = lfs_upload(&s, &other, &model, false).await;
    assert_eq!((same_oid.as_str(), status), (oid.as_str(), StatusCode::OK));
    let (st, _) = commit(
        &s,
        &other,
        "main",
        TOKEN,
        None,
        &[lfs_file("model.safetensors", &oid, model.len())],
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    if s.local_objects {
        let blob_files = std::fs::read_dir(s.data_dir.join("objects/blobs"))
            .unwrap()
            .count();
        assert_eq!(blob_files, 1, "one blob for both repos");
    }
    let (_, again) = get_bytes(&s, &format!("/{other}/resolve/int8/model.safetensors")).await;
    assert_eq!(again, int8);

    // Stale parent: 412, nothing lost.
    let (st, v) = commit(
        &s,
        &repo,
        "main",
        TOKEN,
        Some(&first),
        &[inline("late.txt", b"late")],
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::PRECONDITION_FAILED, "PreconditionFailed"),
        "{v}"
    );
    assert!(
        !paths(&s, &repo, "main")
            .await
            .contains(&"late.txt".to_string())
    );

    // Changing the weights encodes a new blob; the old commit still serves the old ones.
    let model2 = small_model_bytes(22);
    let (oid2, (st, _)) = commit_weights(&s, &repo, &model2).await;
    assert_eq!(st, StatusCode::OK);
    let (_, now) = get_bytes(&s, &format!("/{repo}/resolve/main/model.safetensors")).await;
    assert_eq!(sha(&now), oid2);
    let (_, old) = get_bytes(&s, &format!("/{repo}/resolve/{first}/model.safetensors")).await;
    assert_eq!(sha(&old), oid);
    let (_, card) = send(
        &s,
        reqwest::Method::GET,
        &format!("/api/models/{repo}"),
        None,
        None,
    )
    .await;
    assert_eq!(card["cardData"]["license"], "mit");
}

#[tokio::test]
async fn racing_commits_are_all_kept_in_order_or_refused() {
    let s = admin();
    let repo = unique("org/race");
    create_repo(&s, &repo, TOKEN, false).await;
    let base = head(&s, &repo, "main").await;
    // Without a parent: each commit is rebuilt on whatever landed first; none is lost.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (url, repo) = (s.url.clone(), repo.clone());
            tokio::spawn(async move {
                let op = inline(&format!("f{i}.txt"), format!("file {i}").as_bytes());
                let body = format!(
                    "{}\n{op}",
                    json!({"key": "header", "value": {"summary": format!("c{i}")}})
                );
                client()
                    .post(format!("{url}/api/models/{repo}/commit/main"))
                    .bearer_auth(TOKEN)
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut kept = 0;
    for t in tasks {
        let st = t.await.unwrap();
        assert!(st == StatusCode::OK || st == StatusCode::CONFLICT, "{st}");
        kept += usize::from(st == StatusCode::OK);
    }
    let files = paths(&s, &repo, "main").await;
    assert_eq!(files.len(), 1 + kept, "{files:?}");
    let (_, history) = send(
        &s,
        reqwest::Method::GET,
        &format!("/api/models/{repo}/commits/main"),
        None,
        None,
    )
    .await;
    assert_eq!(history.as_array().unwrap().len(), 1 + kept);

    // With the same parent: exactly one wins.
    let now = head(&s, &repo, "main").await;
    assert_ne!(now, base);
    let (op_a, op_b) = ([inline("a.txt", b"a")], [inline("b.txt", b"b")]);
    let a = commit(&s, &repo, "main", TOKEN, Some(&now), &op_a);
    let b = commit(&s, &repo, "main", TOKEN, Some(&now), &op_b);
    let (a, b) = tokio::join!(a, b);
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::PRECONDITION_FAILED]);
}

#[tokio::test]
async fn branches_tags_and_their_int8_views() {
    let s = admin();
    let repo = unique("org/refs");
    create_repo(&s, &repo, TOKEN, false).await;
    let model = small_model_bytes(23);
    let (_, (_, v)) = commit_weights(&s, &repo, &model).await;
    let first = v["commitOid"].as_str().unwrap().to_string();
    let post = reqwest::Method::POST;
    let (st, _) = send(
        &s,
        post.clone(),
        &format!("/api/models/{repo}/branch/dev"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = send(
        &s,
        post.clone(),
        &format!("/api/models/{repo}/branch/dev"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    for bad in ["int8", "int8-x", "refs%2Fheads%2Fx", "a..b"] {
        let (st, _) = send(
            &s,
            post.clone(),
            &format!("/api/models/{repo}/branch/{bad}"),
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (st, _) = send(
        &s,
        post.clone(),
        &format!("/api/models/{repo}/tag/{first}"),
        Some(TOKEN),
        Some(json!({"tag": "v1"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = commit(&s, &repo, "dev", TOKEN, None, &[inline("dev.txt", b"dev")]).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        paths(&s, &repo, "dev")
            .await
            .contains(&"dev.txt".to_string())
    );
    assert!(
        !paths(&s, &repo, "main")
            .await
            .contains(&"dev.txt".to_string())
    );
    let (st, _) = commit(&s, &repo, "nobranch", TOKEN, None, &[inline("x.txt", b"x")]).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let int8 = sha(&derived_int8(&model));
    for rev in ["int8", "int8-dev", "int8-v1"] {
        let (st, got) = get_bytes(&s, &format!("/{repo}/resolve/{rev}/model.safetensors")).await;
        assert_eq!((st, sha(&got)), (StatusCode::OK, int8.clone()), "{rev}");
    }
    let (_, refs) = send(
        &s,
        reqwest::Method::GET,
        &format!("/api/models/{repo}/refs"),
        None,
        None,
    )
    .await;
    assert_eq!(refs["tags"][0]["targetCommit"], first.as_str());
    assert_eq!(refs["branches"].as_array().unwrap().len(), 2);
    let del = reqwest::Method::DELETE;
    assert_eq!(
        status_of(&s, del.clone(), &format!("/api/models/{repo}/branch/main")).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status_of(&s, del.clone(), &format!("/api/models/{repo}/branch/dev")).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&s, del.clone(), &format!("/api/models/{repo}/tag/v1")).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&s, del, &format!("/api/models/{repo}/tag/v1")).await,
        StatusCode::NOT_FOUND
    );
}

/// `qstore token ...` on the server's own catalog.
pub fn token_cli(data: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qstore"))
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("QSTORE__CATALOG__DATABASE_URL")
        .env_remove("QSTORE_TEST_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn scoped_read_only_and_revoked_tokens() {
    let data = tempfile::tempdir().unwrap();
    let team = token_cli(
        data.path(),
        &["create", "--name", "team-bot", "--scope", "team"],
    );
    let reader = token_cli(
        data.path(),
        &[
            "create",
            "--name",
            "reader",
            "--scope",
            "team",
            "--read-only",
        ],
    );
    let gone = token_cli(data.path(), &["create", "--name", "gone"]);
    let listed = token_cli(data.path(), &["list"]);
    assert!(
        listed.contains("team-bot") && listed.contains("read") && !listed.contains(&team),
        "{listed}"
    );
    assert_eq!(token_cli(data.path(), &["revoke", "gone"]), "revoked gone");
    let s = TestServer::with(Opts {
        data_dir: Some(data.path().to_path_buf()),
        private_catalog: true,
        ..Opts::default()
    });
    let (st, who) = send(
        &s,
        reqwest::Method::GET,
        "/api/whoami-v2",
        Some(&team),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (
            who["name"].as_str(),
            who["auth"]["accessToken"]["role"].as_str()
        ),
        (Some("team-bot"), Some("write"))
    );
    let (_, who) = send(
        &s,
        reqwest::Method::GET,
        "/api/whoami-v2",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(who["auth"]["accessToken"]["role"], "read");
    for t in [&gone, &"qst_made_up".to_string()] {
        let (st, _) = send(&s, reqwest::Method::GET, "/api/whoami-v2", Some(t), None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        assert_eq!(
            create_repo(&s, "team/x", t, false).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    let private = unique("team/private");
    assert_eq!(
        create_repo(&s, &private, &team, true).await.0,
        StatusCode::OK
    );
    let (st, v) = create_repo(&s, &unique("other/x"), &team, false).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "Forbidden"), "{v}");
    assert_eq!(
        create_repo(&s, &unique("team/y"), &reader, false).await.0,
        StatusCode::FORBIDDEN
    );
    let (st, _) = commit(
        &s,
        &private,
        "main",
        &reader,
        None,
        &[inline("a.txt", b"a")],
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = commit(&s, &private, "main", &team, None, &[inline("a.txt", b"a")]).await;
    assert_eq!(st, StatusCode::OK);

    // A private repo is invisible without a token that covers it, readable with one.
    for path in [
        format!("/api/models/{private}"),
        format!("/{private}/resolve/main/a.txt"),
    ] {
        let (st, v) = send(&s, reqwest::Method::GET, &path, None, None).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::NOT_FOUND, "RepoNotFound"),
            "{path}"
        );
        assert_eq!(
            send(&s, reqwest::Method::GET, &path, Some(&reader), None)
                .await
                .0,
            StatusCode::OK,
            "{path}"
        );
    }
    let (_, list) = send(
        &s,
        reqwest::Method::GET,
        "/api/models?search=private",
        None,
        None,
    )
    .await;
    assert!(!list.to_string().contains(&private));
    let (_, list) = send(
        &s,
        reqwest::Method::GET,
        "/api/models?search=private",
        Some(&reader),
        None,
    )
    .await;
    assert!(list.to_string().contains(&private));
}

#[tokio::test]
async fn native_deletes_one_revision_and_refuses_unknown_parameters() {
    let s = admin();
    let name = unique("org/native");
    let mut ids = Vec::new();
    for seed in 30..33 {
        let r = client()
            .post(s.at(&format!("/models/{name}")))
            .bearer_auth(TOKEN)
            .body(small_model_bytes(seed))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        ids.push(
            r.json::<Value>().await.unwrap()["revision"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let del = |q: String| {
        let path = format!("/models/{name}?{q}");
        let s = &s;
        async move { send(s, reqwest::Method::DELETE, &path, Some(TOKEN), None).await }
    };
    assert_eq!(
        del(format!("revision={}&colour=red", ids[1])).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(del(format!("revision={}", ids[1])).await.0, StatusCode::OK);
    let (st, v) = del(format!("revision={}", ids[2])).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, "Conflict"),
        "main points at it: {v}"
    );
    assert_eq!(
        del(format!("revision={}&force=true", ids[2])).await.0,
        StatusCode::OK
    );
    assert_eq!(
        head(&s, &name, "main").await,
        ids[0],
        "main moved to the parent"
    );
    let (_, history) = send(
        &s,
        reqwest::Method::GET,
        &format!("/api/models/{name}/commits/main"),
        None,
        None,
    )
    .await;
    assert_eq!(history.as_array().unwrap().len(), 1);
    let (st, _) = get_bytes(&s, &format!("/models/{name}/bf16?revision={}", ids[1])).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let r = client()
        .post(s.at(&format!("/models/{name}?branch=dev")))
        .bearer_auth(TOKEN)
        .body(small_model_bytes(34))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        del(String::new()).await.0,
        StatusCode::OK,
        "the whole model"
    );
    assert_eq!(
        get_bytes(&s, &format!("/models/{name}/bf16")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn validate_yaml_and_preupload_answer_what_clients_read() {
    let s = admin();
    let ok = json!({"content": "---\nlicense: mit\n---\nhi", "repoType": "model"});
    let (st, v) = send(
        &s,
        reqwest::Method::POST,
        "/api/validate-yaml",
        Some(TOKEN),
        Some(ok),
    )
    .await;
    assert_eq!(
        (st, v),
        (StatusCode::OK, json!({"errors": [], "warnings": []}))
    );
    let bad = json!({"content": "---\nlicense: [mit\n---\nhi", "repoType": "model"});
    let (st, v) = send(
        &s,
        reqwest::Method::POST,
        "/api/validate-yaml",
        Some(TOKEN),
        Some(bad),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        v["errors"][0]["message"].as_str().unwrap().contains("YAML"),
        "{v}"
    );

    let repo = unique("org/pre");
    create_repo(&s, &repo, TOKEN, false).await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let files = json!({"files": [
        {"path": "README.md", "sample": b64(b"# hi"), "size": 4},
        {"path": "model.safetensors", "sample": b64(b"x"), "size": 10},
        {"path": "data.bin", "sample": b64(b"\0\0"), "size": 2},
        {"path": "big.txt", "sample": b64(b"text"), "size": 6 << 20},
        {"path": ".gitattributes", "sample": b64(b"*"), "size": 10},
    ]});
    let (st, v) = send(
        &s,
        reqwest::Method::POST,
        &format!("/api/models/{repo}/preupload/main"),
        Some(TOKEN),
        Some(files),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let modes: Vec<(&str, &str, bool)> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap(),
                f["uploadMode"].as_str().unwrap(),
                f["shouldIgnore"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("README.md", "regular", false),
            ("model.safetensors", "lfs", false),
            ("data.bin", "lfs", false),
            ("big.txt", "lfs", false),
            (".gitattributes", "regular", false)
        ]
    );
    assert_eq!(
        v["files"][4]["oid"].as_str().unwrap().len(),
        40,
        "git id of the stored .gitattributes"
    );
    let bad = json!({"files": [{"path": "../x", "sample": "", "size": 1}]});
    let (st, _) = send(
        &s,
        reqwest::Method::POST,
        &format!("/api/models/{repo}/preupload/main"),
        Some(TOKEN),
        Some(bad),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

/// `DELETE /api/repos/delete` for `org/name`.
pub async fn send_delete_repo(s: &impl Endpoint, repo: &str) -> (StatusCode, Value) {
    let (org, name) = repo.split_once('/').unwrap();
    let body = json!({"name": name, "organization": org, "type": "model"});
    send(
        s,
        reqwest::Method::DELETE,
        "/api/repos/delete",
        Some(TOKEN),
        Some(body),
    )
    .await
}

/// Sends only the headers of a large upload with `Expect: 100-continue`, as curl and most HTTP
/// clients do, and returns the first status line the server answers.
async fn first_answer_to_expect_continue(
    s: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000000000\r\n{auth}Expect: 100-continue\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("the server answers without the body")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn refused_uploads_are_answered_before_their_body_is_sent() {
    let s = admin();
    let repo = unique("org/expect");
    create_repo(&s, &repo, TOKEN, false).await;
    let cases = [
        ("POST", format!("/models/{repo}"), None),
        ("POST", format!("/models/{repo}"), Some("wrong-token")),
        ("POST", format!("/api/models/{repo}/commit/main"), None),
        ("PUT", format!("/lfs/uploads/{}", "ab".repeat(32)), None),
    ];
    for (method, path, token) in cases {
        let line = first_answer_to_expect_continue(&s, method, &path, token).await;
        assert!(
            line.starts_with("HTTP/1.1 401") || line.starts_with("HTTP/1.1 404"),
            "{method} {path}: {line:?}"
        );
    }
    // An accepted upload is told to go on.
    let line = first_answer_to_expect_continue(
        &s,
        "POST",
        &format!("/api/models/{repo}/commit/main"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(line, "HTTP/1.1 100 Continue");
}

/// Whether the batch endpoint asks `repo` to send the object with these bytes.
async fn batch_wants_upload(s: &TestServer, repo: &str, bytes: &[u8]) -> bool {
    let batch = json!({
        "operation": "upload", "transfers": ["basic"],
        "objects": [{"oid": sha(bytes), "size": bytes.len()}],
    });
    let path = format!("/{repo}.git/info/lfs/objects/batch");
    let (st, v) = send(s, reqwest::Method::POST, &path, Some(TOKEN), Some(batch)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["objects"][0].get("actions").is_some()
}

#[tokio::test]
async fn knowing_a_hash_does_not_give_access_to_bytes_uploaded_elsewhere() {
    let s = admin();
    let (private, other, third) = (unique("org/private"), unique("org/b"), unique("org/c"));
    create_repo(&s, &private, TOKEN, true).await;
    create_repo(&s, &other, TOKEN, false).await;
    create_repo(&s, &third, TOKEN, false).await;
    // Bytes no other test has: the catalog may be shared with the whole suite (PostgreSQL pass).
    let model = small_model_bytes(rand::random());
    let (oid, _) = lfs_upload(&s, &private, &model, false).await;
    let op = [lfs_file("model.safetensors", &oid, model.len())];
    assert_eq!(
        commit(&s, &private, "main", TOKEN, None, &op).await.0,
        StatusCode::OK
    );
    // Uploaded for a third repo and never committed.
    let note = b"uploaded for another repo".repeat(40);
    lfs_upload(&s, &third, &note, false).await;

    assert!(
        !batch_wants_upload(&s, &private, &model).await,
        "its own repo has it"
    );
    assert!(
        batch_wants_upload(&s, &other, &model).await,
        "only a private repo has it"
    );
    assert!(
        batch_wants_upload(&s, &other, &note).await,
        "uploaded for another repo"
    );
    let (st, v) = commit(&s, &other, "main", TOKEN, None, &op).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let note_op = [lfs_file("n.bin", &sha(&note), note.len())];
    let (st, _) = commit(&s, &other, "main", TOKEN, None, &note_op).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Once the repo is public, its bytes are anyone's to reuse (they could download them).
    let (st, _) = send(
        &s,
        reqwest::Method::PUT,
        &format!("/api/models/{private}/settings"),
        Some(TOKEN),
        Some(json!({"private": false})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(!batch_wants_upload(&s, &other, &model).await);
    assert_eq!(
        commit(&s, &other, "main", TOKEN, None, &op).await.0,
        StatusCode::OK
    );
    // And uploading the bytes yourself always works.
    lfs_upload(&s, &other, &note, false).await;
    let (st, _) = commit(&s, &other, "main", TOKEN, None, &note_op).await;
    assert_eq!(st, StatusCode::OK);
}

/// Follows `Link: <…>; rel="next"` from `path` and returns every page's items.
async fn all_pages(s: &TestServer, path: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut url = s.at(path);
    loop {
        let r = client().get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        let next = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_string());
        pages.push(r.json::<Vec<Value>>().await.unwrap());
        let Some(link) = next else { return pages };
        assert!(link.ends_with("; rel=\"next\""), "{link}");
        url = link[1..link.find('>').unwrap()].to_string();
        assert!(pages.len() < 20, "pagination does not end");
    }
}

#[tokio::test]
async fn listings_are_paginated_with_link_headers() {
    let s = admin();
    let ns = unique("pages");
    for name in ["a", "b", "c"] {
        create_repo(&s, &format!("{ns}/{name}"), TOKEN, false).await;
    }
    let ids = |pages: &[Vec<Value>]| -> Vec<Vec<String>> {
        pages
            .iter()
            .map(|p| {
                p.iter()
                    .map(|m| m["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    };
    let pages = all_pages(&s, &format!("/api/models?search={ns}&limit=2")).await;
    let want = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{ns}/{n}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&pages), [want(&["a", "b"]), want(&["c"])]);
    let by_author = all_pages(&s, &format!("/api/models?author={ns}")).await;
    assert_eq!(ids(&by_author), [want(&["a", "b", "c"])]);
    let (st, _) = send(
        &s,
        reqwest::Method::GET,
        "/api/models?filter=text-generation",
        None,
        None,
    )
    .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "an unsupported filter is not ignored"
    );

    let repo = format!("{ns}/a");
    for i in 0..4 {
        let (st, _) = commit(
            &s,
            &repo,
            "main",
            TOKEN,
            None,
            &[inline(&format!("d/f{i}.txt"), b"x")],
        )
        .await;
        assert_eq!(st, StatusCode::OK);
    }
    let history = all_pages(&s, &format!("/api/models/{repo}/commits/main?limit=2")).await;
    assert_eq!(history.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let tree = all_pages(
        &s,
        &format!("/api/models/{repo}/tree/main?recursive=true&limit=2"),
    )
    .await;
    let paths: Vec<String> = tree
        .concat()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "d",
            ".gitattributes",
            "d/f0.txt",
            "d/f1.txt",
            "d/f2.txt",
            "d/f3.txt"
        ]
    );
    let top = all_pages(&s, &format!("/api/models/{repo}/tree/main")).await;
    assert_eq!(
        top.concat().len(),
        2,
        "a folder and .gitattributes: {top:?}"
    );
}

#[tokio::test]
async fn garbage_sent_to_every_hub_route_is_a_4xx_never_a_5xx() {
    let s = admin();
    let repo = unique("org/junk");
    create_repo(&s, &repo, TOKEN, false).await;
    let routes = [
        ("POST", "/api/repos/create".to_string()),
        ("DELETE", "/api/repos/delete".to_string()),
        ("POST", "/api/validate-yaml".to_string()),
        ("POST", format!("/api/models/{repo}/preupload/main")),
        ("POST", format!("/api/models/{repo}/commit/main")),
        ("POST", format!("/api/models/{repo}/commit/no-such-branch")),
        ("POST", format!("/api/models/{repo}/branch/x")),
        ("POST", format!("/api/models/{repo}/tag/main")),
        ("PUT", format!("/api/models/{repo}/settings")),
        ("POST", format!("/api/models/{repo}/paths-info/main")),
        ("POST", format!("/{repo}.git/info/lfs/objects/batch")),
        ("POST", format!("/{repo}.git/info/lfs/objects/verify")),
        ("PUT", format!("/lfs/uploads/{}", "0".repeat(64))),
        ("POST", format!("/lfs/uploads/{}", "0".repeat(64))),
        (
            "PUT",
            format!("/lfs/uploads/{}/99999999999999999999", "0".repeat(64)),
        ),
        (
            "GET",
            format!("/api/models/{repo}/commits/main?p=99999999999999999999"),
        ),
        ("GET", format!("/api/models/{repo}/commits/main?limit=-1")),
        ("GET", format!("/api/models/{repo}/tree/main?cursor=x")),
        (
            "GET",
            format!("/api/models/{repo}/tree/main/no/such/folder"),
        ),
        ("GET", format!("/api/models/{repo}/revision/int8-nothing")),
        ("GET", "/api/models?sort=banana".to_string()),
        ("GET", "/api/models?limit=abc".to_string()),
    ];
    let bodies: [&[u8]; 7] = [
        b"",
        b"null",
        b"[]",
        b"{\"name\": 5}",
        b"{\"files\": [{\"path\": 1}]}",
        b"{\"key\":\"header\",\"value\":{\"parentCommit\":\"zz\"}}\n{\"key\":\"lfsFile\",\"value\":{}}",
        &[0xff, 0xfe, 0x00, b'{'],
    ];
    for (method, path) in &routes {
        for body in bodies {
            let r = client()
                .request(method.parse().unwrap(), s.at(path))
                .bearer_auth(TOKEN)
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert!(
                status.is_client_error() || status.is_success(),
                "{method} {path} with {body:?}: {status} {text}"
            );
            if status.is_client_error() {
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
                assert!(v.get("error").is_some(), "{method} {path}: {v}");
            }
        }
    }
    // Nothing above changed the repo.
    assert_eq!(paths(&s, &repo, "main").await, [".gitattributes"]);
}

/// `/openapi.json` and the dispatcher cannot drift apart: every documented operation, with its
/// path filled in for a real repo, reaches a handler (never the "no route" 404) and answers a
/// status its description lists. (Schemathesis, in CI, checks the bodies against the schemas.)
#[tokio::test]
async fn every_operation_the_openapi_document_describes_is_served_as_described() {
    let s = admin();
    let repo = unique("org/described");
    create_repo(&s, &repo, TOKEN, false).await;
    commit_weights(&s, &repo, &small_model_bytes(41)).await;
    let (namespace, name) = repo.split_once('/').unwrap();
    let doc = client()
        .get(s.at("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let fill = |path: &str| {
        [
            ("{namespace}", namespace),
            ("{repo}", name),
            ("{name}", repo.as_str()),
            ("{revision}", "main"),
            ("{precision}", "int8"),
            ("{file}", "model.safetensors"),
            ("{branch}", "some-branch"),
            ("{tag}", "some-tag"),
            ("{upload}", "no-such-upload"),
        ]
        .iter()
        .fold(path.to_string(), |p, (k, v)| p.replace(k, v))
    };
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let url = fill(path);
            assert!(
                !url.contains('{'),
                "{path}: a parameter the test cannot fill"
            );
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = client()
                .request(method.clone(), s.at(&url))
                .bearer_auth(TOKEN)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            assert!(
                !body.contains("no route for"),
                "{method} {path}: documented but not routed: {body}"
            );
            let documented = &op["responses"][status.as_str()];
            assert!(
                documented.is_object(),
                "{method} {url}: {status} is not among the documented responses {}: {body}",
                op["responses"]
            );
            operations += 1;
        }
    }
    assert!(operations >= 30, "only {operations} operations described");
}
