//! The Xet write path over raw HTTP, with xorbs and shards built by HF's own format crate, for
//! what the real client never sends: xorbs whose bytes are not their hash, shards naming xorbs
//! never uploaded (or uploaded for another repo), files whose bytes are not their sha256, lying
//! terms, tokens for another repo, expired tokens. Each must be a 4xx with a JSON error, make
//! nothing visible, and leave nothing after gc. (The real client: tests/hf_client/check_xet.py.)

use std::time::Duration;

use qstore::storage::{Objects, gc};
use reqwest::StatusCode;
use serde_json::Value;
use xet_core_structures::merklehash::{MerkleHash, compute_data_hash, file_hash, xorb_hash};
use xet_core_structures::metadata_shard::chunk_verification::range_hash_from_chunks;
use xet_core_structures::metadata_shard::file_structs::{
    FileDataSequenceEntry, FileDataSequenceHeader, FileMetadataExt, FileVerificationEntry,
    MDBFileInfo,
};
use xet_core_structures::metadata_shard::shard_in_memory::MDBInMemoryShard;
use xet_core_structures::xorb_object::{CompressionScheme, serialize_chunk};

use crate::helpers::sha;
use crate::hub::{TOKEN, commit, create_repo, lfs_file, paths, token_cli};
use crate::server::{Endpoint, Opts, TestServer, client, get_bytes, small_model_bytes, unique};

const CHUNK: usize = 64 << 10;

/// A CAS session: where to send, with which token.
struct Cas {
    url: String,
    token: String,
}

async fn write_token(s: &impl Endpoint, repo: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut r = client().get(s.at(&format!("/api/models/{repo}/xet-write-token/main")));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let v: Value = r.json().await.unwrap();
    if status == StatusCode::OK {
        // Older clients read the same from headers.
        assert_eq!(headers["x-xet-cas-url"], v["casUrl"].as_str().unwrap());
        assert_eq!(
            headers["x-xet-access-token"],
            v["accessToken"].as_str().unwrap()
        );
        assert_eq!(
            headers["x-xet-token-expiration"],
            v["exp"].as_i64().unwrap().to_string().as_str()
        );
    }
    (status, v)
}

async fn open_cas(s: &impl Endpoint, repo: &str) -> Cas {
    let (status, v) = write_token(s, repo, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    Cas {
        url: v["casUrl"].as_str().unwrap().to_string(),
        token: v["accessToken"].as_str().unwrap().to_string(),
    }
}

async fn send(
    cas: &Cas,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let r = client()
        .request(method, format!("{}{path}", cas.url))
        .bearer_auth(&cas.token)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post_xorb(cas: &Cas, xorb: &Xorb) -> (StatusCode, Value) {
    let path = format!("/v1/xorbs/default/{}", xorb.hash.hex());
    send(cas, reqwest::Method::POST, &path, xorb.body.clone()).await
}

async fn has_xorb(cas: &Cas, hash: &MerkleHash) -> StatusCode {
    let path = format!("/v1/xorbs/default/{}", hash.hex());
    send(cas, reqwest::Method::HEAD, &path, Vec::new()).await.0
}

async fn post_shard(cas: &Cas, shard: Vec<u8>) -> (StatusCode, Value) {
    send(cas, reqwest::Method::POST, "/v1/shards", shard).await
}

/// A xorb of one file's chunks, as the client packs it.
struct Xorb {
    body: Vec<u8>,
    hash: MerkleHash,
    chunks: Vec<(MerkleHash, u64)>,
}

fn xorb_of(file: &[u8]) -> Xorb {
    let mut body = Vec::new();
    let mut chunks = Vec::new();
    for c in file.chunks(CHUNK) {
        serialize_chunk(c, &mut body, CompressionScheme::LZ4).unwrap();
        chunks.push((compute_data_hash(c), c.len() as u64));
    }
    Xorb {
        body,
        hash: xorb_hash(&chunks),
        chunks,
    }
}

/// What a shard claims about one file; each field can be made to lie.
struct Claim {
    xorb: MerkleHash,
    chunks: Vec<(MerkleHash, u64)>,
    sha256: String,
    bytes: u64,
    range_hash: MerkleHash,
    file_hash: MerkleHash,
}

impl Claim {
    fn honest(file: &[u8], xorb: &Xorb) -> Claim {
        let hashes: Vec<MerkleHash> = xorb.chunks.iter().map(|c| c.0).collect();
        Claim {
            xorb: xorb.hash,
            chunks: xorb.chunks.clone(),
            sha256: sha(file),
            bytes: file.len() as u64,
            range_hash: range_hash_from_chunks(&hashes),
            file_hash: file_hash(&xorb.chunks),
        }
    }

    fn shard(&self) -> Vec<u8> {
        let n = self.chunks.len() as u32;
        let info = MDBFileInfo {
            metadata: FileDataSequenceHeader::new(self.file_hash, 1, true, true),
            segments: vec![FileDataSequenceEntry::new(
                self.xorb,
                self.bytes as u32,
                0,
                n,
            )],
            verification: vec![FileVerificationEntry::new(self.range_hash)],
            metadata_ext: Some(FileMetadataExt::new(
                MerkleHash::from_hex(&self.sha256).unwrap(),
            )),
        };
        let mut shard = MDBInMemoryShard::default();
        shard.add_file_reconstruction_info(info).unwrap();
        shard.to_bytes().unwrap()
    }
}

/// A commit on `main` naming `weights` as model.safetensors by sha256, as the real client does.
async fn commit_weights(s: &TestServer, repo: &str, weights: &[u8]) -> (StatusCode, Value) {
    let file = lfs_file("model.safetensors", &sha(weights), weights.len());
    commit(s, repo, "main", TOKEN, None, &[file]).await
}

fn admin(opts: Opts) -> TestServer {
    TestServer::with(Opts {
        tokens: vec![TOKEN.into()],
        ..opts
    })
}

#[tokio::test]
async fn a_file_uploaded_through_xet_is_committed_and_served_byte_exact() {
    let s = admin(Opts::default());
    let repo = format!("{}/xet-model", unique("org"));
    assert_eq!(create_repo(&s, &repo, TOKEN, false).await.0, StatusCode::OK);
    let weights = small_model_bytes(7101);
    let x = xorb_of(&weights);
    let cas = open_cas(&s, &repo).await;
    assert!(
        cas.url.starts_with(&format!("{}/xet/", s.url)),
        "{}",
        cas.url
    );

    assert_eq!(has_xorb(&cas, &x.hash).await, StatusCode::NOT_FOUND);
    let (status, v) = post_xorb(&cas, &x).await;
    assert_eq!(
        (status, &v["was_inserted"]),
        (StatusCode::OK, &Value::Bool(true)),
        "{v}"
    );
    assert_eq!(has_xorb(&cas, &x.hash).await, StatusCode::OK);
    let (status, v) = post_xorb(&cas, &x).await;
    assert_eq!(
        (status, &v["was_inserted"]),
        (StatusCode::OK, &Value::Bool(false)),
        "{v}"
    );
    let (status, v) = post_shard(&cas, Claim::honest(&weights, &x).shard()).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // The commit names the file by sha256 only, as the real client does.
    let oid = sha(&weights);
    let (status, v) = commit_weights(&s, &repo, &weights).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, got) = get_bytes(&s, &format!("/{repo}/resolve/main/model.safetensors")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha(&got), oid, "served byte-exact");
    let (status, _) = get_bytes(&s, &format!("/{repo}/resolve/int8/model.safetensors")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the INT8 view is derived as for LFS uploads"
    );

    // Bytes uploaded through another repo's CAS token are not this repo's to commit.
    let other = format!("{}/xet-other", unique("org"));
    assert_eq!(create_repo(&s, &other, TOKEN, true).await.0, StatusCode::OK);
    let private = format!("{}/xet-private", unique("org"));
    assert_eq!(
        create_repo(&s, &private, TOKEN, true).await.0,
        StatusCode::OK
    );
    let secret = small_model_bytes(7104);
    let y = xorb_of(&secret);
    let cas_private = open_cas(&s, &private).await;
    assert_eq!(post_xorb(&cas_private, &y).await.0, StatusCode::OK);
    let (status, v) = post_shard(&cas_private, Claim::honest(&secret, &y).shard()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = commit_weights(&s, &other, &secret).await;
    assert!(status.is_client_error(), "{status} {v}");

    // The read-side and optional CAS calls answer 404 (the client then uploads directly).
    let chunk = format!("/v1/chunks/default/{}", x.chunks[0].0.hex());
    assert_eq!(
        send(&cas, reqwest::Method::GET, &chunk, Vec::new()).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&cas, reqwest::Method::POST, "/v2/shards", Vec::new())
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn xet_uploads_that_do_not_check_out_are_refused_and_leave_nothing_after_gc() {
    let s = admin(Opts {
        private_catalog: true,
        private_store: true,
        ..Opts::default()
    });
    let repo = format!("{}/xet-bad", unique("org"));
    let other = format!("{}/xet-other", unique("org"));
    for r in [&repo, &other] {
        assert_eq!(create_repo(&s, r, TOKEN, false).await.0, StatusCode::OK);
    }
    let cas_repo = open_cas(&s, &repo).await;
    let file = small_model_bytes(7102);
    let x = xorb_of(&file);
    let refused = |(status, v): (StatusCode, Value), words: &str| {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{words}: {v}");
        let error = v["error"]["message"].as_str().unwrap_or_default();
        assert!(error.contains(words), "{words:?} not in {v}");
    };

    // A xorb whose bytes are not its hash: refused, not held.
    let mut lying = xorb_of(&file);
    lying.hash = xorb_of(b"something else").hash;
    refused(post_xorb(&cas_repo, &lying).await, "chunks hash to");
    assert_eq!(
        has_xorb(&cas_repo, &lying.hash).await,
        StatusCode::NOT_FOUND
    );
    let mut flipped = xorb_of(&file);
    let mid = flipped.body.len() / 2;
    flipped.body[mid] ^= 0x40;
    let (status, _) = post_xorb(&cas_repo, &flipped).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A shard naming a xorb never uploaded.
    refused(
        post_shard(&cas_repo, Claim::honest(&file, &x).shard()).await,
        "was not uploaded for",
    );
    // A xorb uploaded for another repo is not this repo's to build from.
    let cas_other = open_cas(&s, &other).await;
    assert_eq!(post_xorb(&cas_other, &x).await.0, StatusCode::OK);
    refused(
        post_shard(&cas_repo, Claim::honest(&file, &x).shard()).await,
        "was not uploaded for",
    );
    assert_eq!(post_xorb(&cas_repo, &x).await.0, StatusCode::OK);

    // Terms and hashes that lie about held chunks.
    let mut claim = Claim::honest(&file, &x);
    claim.sha256 = sha(b"not these bytes");
    refused(
        post_shard(&cas_repo, claim.shard()).await,
        "not to the claimed",
    );
    let mut claim = Claim::honest(&file, &x);
    claim.range_hash = x.chunks[0].0;
    refused(
        post_shard(&cas_repo, claim.shard()).await,
        "verification hash",
    );
    let mut claim = Claim::honest(&file, &x);
    claim.bytes -= 1;
    refused(post_shard(&cas_repo, claim.shard()).await, "claims");
    let mut claim = Claim::honest(&file, &x);
    claim.file_hash = x.hash;
    refused(post_shard(&cas_repo, claim.shard()).await, "file hash");
    refused(
        post_shard(&cas_repo, b"not a shard".to_vec()).await,
        "shard",
    );

    // Nothing of it can be committed.
    let (status, v) = commit_weights(&s, &repo, &file).await;
    assert!(status.is_client_error(), "{status} {v}");
    assert_eq!(paths(&s, &repo, "main").await, vec![".gitattributes"]);

    // Tokens: none, unknown, for a repo the caller may not write.
    let none = Cas {
        url: cas_repo.url.clone(),
        token: "xet_unknown".into(),
    };
    assert_eq!(has_xorb(&none, &x.hash).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        write_token(&s, &repo, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let scoped = token_cli(
        &s.data_dir,
        &["create", "--name", "elsewhere", "--scope", "someone-else"],
    );
    let (status, v) = write_token(&s, &repo, Some(scoped.trim())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    // A CAS token dies with the API token it was issued for.
    let api = token_cli(&s.data_dir, &["create", "--name", "short-lived"]);
    let (status, v) = write_token(&s, &repo, Some(api.trim())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let issued = Cas {
        url: v["casUrl"].as_str().unwrap().into(),
        token: v["accessToken"].as_str().unwrap().into(),
    };
    assert_eq!(has_xorb(&issued, &x.hash).await, StatusCode::OK);
    token_cli(&s.data_dir, &["revoke", "short-lived"]);
    let (status, v) = send(&issued, reqwest::Method::POST, "/v1/shards", Vec::new()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("revoked"),
        "{v}"
    );

    // gc (past the grace period) leaves only what a commit names: no xorb, no rebuilt file.
    let catalog = qstore::server::open_catalog(&s.config).await.unwrap();
    let objects = Objects::open(&s.config).unwrap();
    let spool = s.data_dir.join("tmp");
    let report = gc::collect(&catalog, &objects, &spool, Duration::ZERO, false)
        .await
        .unwrap();
    assert!(report.xorbs_released >= 2, "{report}");
    let left: Vec<String> = objects
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.starts_with("xet/") || k.starts_with("uploads/") || k.contains(&sha(&file)))
        .collect();
    assert!(left.is_empty(), "left after gc: {left:?}");
}

#[tokio::test]
async fn an_expired_xet_token_is_refused() {
    let s = admin(Opts {
        private_catalog: true,
        xet_token_secs: Some(1),
        ..Opts::default()
    });
    let repo = format!("{}/xet-exp", unique("org"));
    assert_eq!(create_repo(&s, &repo, TOKEN, false).await.0, StatusCode::OK);
    let cas = open_cas(&s, &repo).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // (A request without a body: the answer comes before any body would be read.)
    let (status, v) = send(&cas, reqwest::Method::POST, "/v1/shards", Vec::new()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
}
