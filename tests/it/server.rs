//! The registry server end to end: a real server on an ephemeral port, driven over HTTP.
//!
//! Backend-agnostic: the server's configuration comes from the same layers as in production, so
//! `QSTORE_TEST_CONFIG=file.toml` or `QSTORE__CATALOG__DATABASE_URL=...` runs this suite
//! unchanged against other object stores and catalogs. Repo names are unique per test, so tests
//! may share one catalog.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use qstore::config::{Config, Overrides};
use qstore::format::{Blob, Precision};
use qstore::safetensors::Dtype;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_NONE_MATCH, IF_RANGE, RANGE};
use serde_json::Value;

use crate::helpers::{T, sha, write_st};

/// A server running on its own runtime thread, as a separate process would.
pub struct TestServer {
    pub url: String,
    pub data_dir: PathBuf,
    /// Objects are files under `data_dir/objects` (the local backend), so tests can inspect them.
    pub local_objects: bool,
    /// The configuration it runs with (to open its catalog and store from a test).
    pub config: Config,
    _dir: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a test changes from the defaults.
#[derive(Default, Clone)]
pub struct Opts {
    pub tokens: Vec<String>,
    pub listen_any: bool,
    pub max_upload_bytes: Option<u64>,
    pub data_dir: Option<PathBuf>,
    /// The server's own SQLite catalog in its data directory, whatever the suite's backend: for
    /// tests that change catalog-wide state (API tokens) other tests would see.
    pub private_catalog: bool,
    /// `server.shutdown_timeout_secs` (10 when unset).
    pub shutdown_timeout_secs: Option<u64>,
    /// Leave `server.run_migrations` off (migrations applied by `qstore migrate` instead).
    pub skip_migrations: bool,
    /// `cache.max_bytes` (off when unset).
    pub cache_max_bytes: Option<u64>,
    /// Objects under a key prefix no other test uses (S3; the local store is per test anyway):
    /// for tests that collect garbage. Use with `private_catalog`.
    pub private_store: bool,
    /// `limits.xet_token_secs`.
    pub xet_token_secs: Option<u64>,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with(Opts::default())
    }

    pub fn with(opts: Opts) -> TestServer {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
        let (dir, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().to_path_buf();
                (Some(dir), path)
            }
        };
        let listen = if opts.listen_any {
            "0.0.0.0:0"
        } else {
            "127.0.0.1:0"
        };
        let file = std::env::var_os("QSTORE_TEST_CONFIG").map(PathBuf::from);
        let mut config = Config::load(
            file.as_deref(),
            std::env::vars(),
            &Overrides {
                listen: Some(listen.parse().unwrap()),
                data_dir: Some(data_dir.clone()),
            },
        )
        .unwrap();
        config.auth.tokens.extend(opts.tokens.iter().cloned());
        if opts.private_catalog {
            config.catalog.database_url = String::new();
        }
        config.server.shutdown_timeout_secs = opts.shutdown_timeout_secs.unwrap_or(10);
        if opts.skip_migrations {
            config.server.run_migrations = false;
        }
        if let Some(n) = opts.max_upload_bytes {
            config.limits.max_upload_bytes = n;
        }
        config.cache.max_bytes = opts.cache_max_bytes.unwrap_or(0);
        if opts.private_store {
            config.storage.s3.prefix = unique("private-store");
        }
        if let Some(secs) = opts.xet_token_secs {
            config.limits.xet_token_secs = secs;
        }
        let server_config = config.clone();
        let local_objects = config.storage.backend == qstore::config::StorageBackend::Local;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let bound = qstore::server::Bound::new(config).await.unwrap();
                addr_tx.send(bound.local_addr()).unwrap();
                bound
                    .serve(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        TestServer {
            url: format!("http://127.0.0.1:{}", addr.port()),
            data_dir,
            local_objects,
            config: server_config,
            _dir: dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Asks for a graceful shutdown and waits for the server to exit.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Where a test server answers: in this process ([`TestServer`]) or as a child process
/// ([`crate::process::ServerProcess`]); the request helpers below take either.
pub trait Endpoint {
    fn url(&self) -> &str;

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }
}

impl Endpoint for TestServer {
    fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A repo name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::rng().random::<u64>())
}

/// A small LLM-like BF16 model whose weights span several chunks.
pub fn small_model(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join("model.safetensors");
    write_st(
        &path,
        &[("format", "pt")],
        &[
            T::llm("embed_tokens.weight", 64, 256, seed),
            T::llm("layers.0.q_proj.weight", 1024, 768, seed + 1),
            T::llm("layers.0.k_proj.weight", 512, 1024, seed + 2),
            T::codes("norm.weight", Dtype::BF16, &[256], &vec![0x3f80; 256]),
        ],
    );
    path
}

/// The bytes of [`small_model`].
pub fn small_model_bytes(seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::read(small_model(dir.path(), seed)).unwrap()
}

/// Uploads one file as the raw body; returns the status and JSON answer.
pub async fn post_raw(s: &impl Endpoint, name: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let r = client()
        .post(s.at(&format!("/models/{name}")))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Uploads files as a multipart form: `(field, path in repo, bytes)`.
pub async fn post_form(
    s: &TestServer,
    name: &str,
    files: Vec<(&str, String, Vec<u8>)>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (field, path, bytes) in files {
        form = form.part(
            field.to_string(),
            reqwest::multipart::Part::bytes(bytes).file_name(path),
        );
    }
    let mut req = client()
        .post(s.at(&format!("/models/{name}")))
        .multipart(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `DELETE /models/{name}`, with a bearer token if given.
async fn delete(s: &TestServer, name: &str, token: Option<&str>) -> StatusCode {
    let mut req = client().delete(s.at(&format!("/models/{name}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status()
}

/// GET `url` with extra request headers.
async fn get_with(url: &str, headers: &[(reqwest::header::HeaderName, &str)]) -> reqwest::Response {
    let mut req = client().get(url);
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    req.send().await.unwrap()
}

pub async fn get(s: &impl Endpoint, path: &str) -> reqwest::Response {
    client().get(s.at(path)).send().await.unwrap()
}

pub async fn get_bytes(s: &impl Endpoint, path: &str) -> (StatusCode, Bytes) {
    let r = get(s, path).await;
    let status = r.status();
    (status, r.bytes().await.unwrap())
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// An error answer: this status, this stable code, and a message that names `needle`.
fn expect_error((status, v): (StatusCode, Value), want: StatusCode, code: &str, needle: &str) {
    assert_eq!((status, error_code(&v)), (want, code), "{v}");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(needle),
        "{message:?} should name {needle:?}"
    );
}

/// No blob is in the store (checked on the local backend, where objects are files).
fn no_revision_objects(s: &TestServer) -> bool {
    !s.local_objects
        || std::fs::read_dir(s.data_dir.join("objects/blobs"))
            .map_or(true, |mut d| d.next().is_none())
}

/// Upload spools under `data_dir/tmp`, in processes' own directories (`proc-*`) or not.
pub fn spool_entries(data_dir: &Path) -> usize {
    let entries = |dir: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    entries(&data_dir.join("tmp"))
        .into_iter()
        .flat_map(|p| match name(&p).starts_with("proc-") {
            true => entries(&p),
            false => vec![p],
        })
        .filter(|p| name(p) != "owner.lock")
        .count()
}

#[tokio::test]
async fn upload_then_download_both_precisions_exactly() {
    let s = TestServer::start();
    let model = small_model_bytes(1);
    let name = unique("m");
    let (status, report) = post_raw(&s, &name, model.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{report}");
    let revision = report["revision"].as_str().unwrap().to_string();
    assert_eq!(revision.len(), 40);
    assert!(report["ratio"].as_f64().unwrap() > 1.5, "{report}");

    // The blob the server stored decodes to what a local encode gives.
    let (st, bf16) = get_bytes(&s, &format!("/models/{name}/bf16")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(sha(&bf16), sha(&model));
    let (st, int8) = get_bytes(&s, &format!("/models/{name}/int8")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(sha(&int8), sha(&crate::helpers::derived_int8(&model)));
    assert_eq!(report["files"]["int8"][0]["sha256"], sha(&int8));
    crate::helpers::check_derived_int8(&model, &int8, &|n| n.contains("proj"));

    // Pinned by either commit id; the wrong precision is a clear 404.
    let pinned = get(&s, &format!("/models/{name}/bf16?revision={revision}")).await;
    assert_eq!(
        pinned.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(sha(&pinned.bytes().await.unwrap()), sha(&model));
    let branch = get(&s, &format!("/models/{name}/int8")).await;
    assert_eq!(branch.headers()["cache-control"], "public, max-age=60");
    let int8_commit = report["commits"]["int8"].as_str().unwrap();
    let (_, again) = get_bytes(&s, &format!("/models/{name}/int8?revision={int8_commit}")).await;
    assert_eq!(again, int8);
    let r = get(&s, &format!("/models/{name}/fp16")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["x-error-code"], "RevisionNotFound");

    // Listing and details.
    let (_, list) = get_bytes(&s, "/models").await;
    let list: Value = serde_json::from_slice(&list).unwrap();
    let entry = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name.as_str())
        .unwrap();
    assert_eq!(entry["served_bytes"]["bf16"], model.len() as u64);
    assert_eq!(entry["served_bytes"]["int8"], int8.len() as u64);
    assert!(entry["savings"].as_f64().unwrap() > 0.3);
    let (_, details) = get_bytes(&s, &format!("/models/{name}")).await;
    let details: Value = serde_json::from_slice(&details).unwrap();
    assert_eq!(details["branches"]["main"], revision.as_str());
    assert_eq!(details["revisions"][0]["quantized_tensors"], 2);
}

#[tokio::test]
async fn ranges_heads_and_conditional_requests() {
    let s = TestServer::start();
    let model = small_model_bytes(7);
    let name = unique("r");
    assert_eq!(
        post_raw(&s, &name, model.clone()).await.0,
        StatusCode::CREATED
    );
    let (_, int8) = get_bytes(&s, &format!("/models/{name}/int8")).await;
    let c = client();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for (precision, full) in [("bf16", &model[..]), ("int8", &int8[..])] {
        let url = s.at(&format!("/models/{name}/{precision}"));
        let n = full.len() as u64;
        let mut cases: Vec<(String, u64, u64)> = (0..40)
            .map(|_| {
                let a = rng.random_range(0..n);
                let b = rng.random_range(a..n);
                (format!("bytes={a}-{b}"), a, b + 1)
            })
            .collect();
        cases.extend([
            (format!("bytes=-{}", 1000), n - 1000, n),
            (format!("bytes={}-", n - 5), n - 5, n),
            (format!("bytes={}-{}", n - 10, n + 10_000_000), n - 10, n),
            ("bytes=0-0".to_string(), 0, 1),
            (format!("bytes=-{}", n + 5), 0, n),
        ]);
        for (spec, a, b) in cases {
            let r = c.get(&url).header(RANGE, &spec).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{spec}");
            assert_eq!(
                r.headers()[CONTENT_RANGE],
                format!("bytes {a}-{}/{n}", b - 1).as_str()
            );
            assert_eq!(r.headers()["content-length"], (b - a).to_string().as_str());
            let body = r.bytes().await.unwrap();
            assert!(
                body[..] == full[a as usize..b as usize],
                "{precision} {spec}"
            );
        }
        for spec in [
            format!("bytes={n}-"),
            format!("bytes={}-{}", n, n + 4),
            "bytes=-0".into(),
        ] {
            let r = c.get(&url).header(RANGE, &spec).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{spec}");
            assert_eq!(r.headers()[CONTENT_RANGE], format!("bytes */{n}").as_str());
        }
        // Multiple ranges are answered with the whole file.
        let r = get_with(&url, &[(RANGE, "bytes=0-1,5-6")]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.unwrap().len() as u64, n);

        let head = c.head(&url).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()["content-length"], n.to_string().as_str());
        assert_eq!(head.headers()["accept-ranges"], "bytes");
        let etag = head.headers()[ETAG].to_str().unwrap().to_string();
        assert_eq!(etag, format!("\"{}\"", sha(full)));
        assert!(head.bytes().await.unwrap().is_empty());

        let r = get_with(&url, &[(IF_NONE_MATCH, &etag)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[ETAG], etag.as_str());
        assert!(r.bytes().await.unwrap().is_empty());
        let r = get_with(&url, &[(IF_NONE_MATCH, "\"other\""), (RANGE, "bytes=0-9")]).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        let r = get_with(&url, &[(IF_RANGE, "\"stale\""), (RANGE, "bytes=0-9")]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.unwrap().len() as u64, n);
    }
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_store_nothing() {
    let s = TestServer::with(Opts {
        max_upload_bytes: Some(4 << 20),
        ..Opts::default()
    });
    let model = small_model_bytes(2);

    let bad = StatusCode::BAD_REQUEST;
    let answer = post_raw(&s, "a..b", model.clone()).await;
    expect_error(answer, bad, "BadRequest", "a..b");
    let answer = post_raw(&s, "x/y/z", model.clone()).await;
    expect_error(answer, bad, "BadRequest", "x/y/z");

    let name = unique("bad");
    let answer = post_raw(&s, &name, b"definitely not safetensors".to_vec()).await;
    expect_error(answer, bad, "BadRequest", "model.safetensors");
    let answer = post_raw(&s, &name, model[..model.len() - 3].to_vec()).await;
    expect_error(answer, bad, "BadRequest", "model.safetensors");
    // A bad header is refused from the body's first bytes, before any size limit is reached.
    let answer = post_raw(&s, &name, vec![0u8; 5 << 20]).await;
    expect_error(answer, bad, "BadRequest", "header");
    let mut oversized = model.clone();
    oversized.resize(5 << 20, 0);
    let answer = post_raw(&s, &name, oversized).await;
    let too_large = StatusCode::PAYLOAD_TOO_LARGE;
    expect_error(answer, too_large, "PayloadTooLarge", "limit");
    let mut trailing = model.clone();
    trailing.extend_from_slice(b"extra");
    let answer = post_raw(&s, &name, trailing).await;
    expect_error(answer, bad, "BadRequest", "model.safetensors");
    let config_only = vec![("file", "config.json".into(), b"{}".to_vec())];
    let answer = post_form(&s, &name, config_only, None).await;
    expect_error(answer, bad, "BadRequest", "no .safetensors");
    for (path, bytes) in [
        ("../escape.json", &b"{}"[..]),
        ("config.json", b"[not json"),
    ] {
        let files = vec![
            ("file", "model.safetensors".to_string(), model.clone()),
            ("file", path.to_string(), bytes.to_vec()),
        ];
        let (st, v) = post_form(&s, &name, files, None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path}: {v}");
    }
    // Refused at the first part: the rest of the form is drained so the answer can be read.
    let mut files = vec![("file", "../escape.json".to_string(), b"{}".to_vec())];
    files.extend((0..8).map(|i| ("file", format!("m{i}.safetensors"), model.clone())));
    let answer = post_form(&s, &name, files, None).await;
    expect_error(answer, bad, "BadRequest", "escape.json");

    // Nothing of the refused uploads is visible or left behind.
    let r = get(&s, &format!("/models/{name}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["x-error-code"], "RepoNotFound");
    let v: Value = r.json().await.unwrap();
    assert_eq!(error_code(&v), "RepoNotFound");
    wait_until(|| spool_entries(&s.data_dir) == 0 && no_revision_objects(&s)).await;

    let r = get(&s, &format!("/models/{name}/int8")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = get(&s, "/no/such/route/here").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = client().put(s.at("/models/x")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// Polls `cond` for up to five seconds (cleanup after an aborted request is asynchronous).
pub async fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cond(), "condition not reached within 5 s");
}

#[tokio::test]
async fn writes_need_a_token_when_one_is_configured() {
    let s = TestServer::with(Opts {
        tokens: vec!["s3cret".into()],
        ..Opts::default()
    });
    let model = small_model_bytes(3);
    let name = unique("auth");
    let files = || vec![("file", "model.safetensors".to_string(), model.clone())];
    let answer = post_form(&s, &name, files(), None).await;
    expect_error(answer, StatusCode::UNAUTHORIZED, "Unauthorized", "Bearer");
    let (st, _) = post_form(&s, &name, files(), Some("wrong")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = post_form(&s, &name, files(), Some("s3cret")).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    // Reads are public.
    assert_eq!(
        get(&s, &format!("/models/{name}/int8")).await.status(),
        StatusCode::OK
    );
    assert_eq!(delete(&s, &name, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(delete(&s, &name, Some("s3cret")).await, StatusCode::OK);
    assert_eq!(
        get(&s, &format!("/models/{name}/int8")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        delete(&s, &name, Some("s3cret")).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn without_tokens_only_a_loopback_server_accepts_writes() {
    let s = TestServer::with(Opts {
        listen_any: true,
        ..Opts::default()
    });
    let model = small_model_bytes(4);
    let answer = post_raw(&s, &unique("open"), model).await;
    expect_error(answer, StatusCode::FORBIDDEN, "Forbidden", "no API token");
}

#[tokio::test]
async fn tokens_made_by_the_cli_authorise_writes() {
    let data = tempfile::tempdir().unwrap();
    let token = crate::hub::token_cli(data.path(), &["create", "--name", "ci"]);
    assert!(token.starts_with("qst_"));
    let s = TestServer::with(Opts {
        data_dir: Some(data.path().to_path_buf()),
        listen_any: true,
        private_catalog: true,
        ..Opts::default()
    });
    let model = small_model_bytes(5);
    let files = vec![("file", "model.safetensors".to_string(), model)];
    let (st, _) = post_form(&s, &unique("tok"), files.clone(), None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = post_form(&s, &unique("tok"), files, Some(&token)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn sharded_upload_with_a_supplied_int8_checkpoint() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let shard = |i: u32, tensors: &[T]| -> (String, Vec<u8>) {
        let name = format!("model-0000{i}-of-00002.safetensors");
        let path = dir.path().join(&name);
        write_st(&path, &[("format", "pt")], tensors);
        (name, std::fs::read(path).unwrap())
    };
    let (n1, s1) = shard(
        1,
        &[
            T::llm("embed_tokens.weight", 10, 64, 1),
            T::llm("l0.q_proj.weight", 128, 64, 2),
        ],
    );
    let (n2, s2) = shard(2, &[T::llm("l1.q_proj.weight", 256, 64, 3)]);
    let index = format!(
        r#"{{"metadata": {{"total_size": {}}}, "weight_map": {{"embed_tokens.weight": "{n1}", "l0.q_proj.weight": "{n1}", "l1.q_proj.weight": "{n2}"}}}}"#,
        2 * (10 * 64 + 128 * 64 + 256 * 64)
    );
    let name = unique("sharded");
    let (st, v) = post_form(
        &s,
        &name,
        vec![
            ("file", n1.clone(), s1.clone()),
            ("file", n2.clone(), s2.clone()),
            (
                "file",
                "model.safetensors.index.json".into(),
                index.clone().into_bytes(),
            ),
        ],
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = get_bytes(&s, &format!("/models/{name}/bf16")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v:?}");
    assert!(String::from_utf8_lossy(&v).contains(&n2));
    let (_, b1) = get_bytes(&s, &format!("/models/{name}/bf16?file={n1}")).await;
    let (_, b2) = get_bytes(&s, &format!("/models/{name}/bf16?file={n2}")).await;
    assert_eq!((sha(&b1), sha(&b2)), (sha(&s1), sha(&s2)));
    let (_, idx) = get_bytes(
        &s,
        &format!("/models/{name}/bf16?file=model.safetensors.index.json"),
    )
    .await;
    assert_eq!(idx, index.as_bytes());
    let (_, i2) = get_bytes(&s, &format!("/models/{name}/int8?file={n2}")).await;
    crate::helpers::check_derived_int8(&s2, &i2, &|n| n.contains("proj"));
    assert_eq!(
        get(&s, &format!("/models/{name}/int8?file=nope.safetensors"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // A supplied INT8 checkpoint is served as given.
    let one = dir.path().join("one.safetensors");
    write_st(&one, &[], &[T::llm("a.weight", 64, 64, 9)]);
    let high = std::fs::read(&one).unwrap();
    let int8 = crate::helpers::derived_int8(&high);
    let name = unique("paired");
    let (st, v) = post_form(
        &s,
        &name,
        vec![
            ("file", "model.safetensors".into(), high.clone()),
            ("int8", "model.safetensors".into(), int8.clone()),
        ],
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(get_bytes(&s, &format!("/models/{name}/int8")).await.1, int8);
    assert_eq!(get_bytes(&s, &format!("/models/{name}/bf16")).await.1, high);
}

#[tokio::test]
async fn concurrent_uploads_and_downloads() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let models: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let sub = dir.path().join(i.to_string());
            std::fs::create_dir(&sub).unwrap();
            std::fs::read(small_model(&sub, 100 + i)).unwrap()
        })
        .collect();
    let shared = unique("same");
    let names: Vec<String> = (0..3).map(|_| unique("par")).collect();
    let mut tasks = Vec::new();
    for (i, m) in models.iter().enumerate() {
        for target in [names[i].clone(), shared.clone()] {
            let (url, body) = (s.at(&format!("/models/{target}")), m.clone());
            tasks.push(tokio::spawn(async move {
                client().post(url).body(body).send().await.unwrap().status()
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let mut downloads = Vec::new();
    for round in 0..2 {
        for (i, m) in models.iter().enumerate() {
            let url = s.at(&format!("/models/{}/{}", names[i], ["bf16", "int8"][round]));
            let want = (round == 0).then(|| sha(m));
            downloads.push(tokio::spawn(async move {
                let body = client()
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                (sha(&body), want)
            }));
        }
    }
    for d in downloads {
        let (got, want) = d.await.unwrap();
        if let Some(want) = want {
            assert_eq!(got, want);
        }
    }
    // The shared name kept all three revisions; main is one of them, served exactly.
    let (_, details) = get_bytes(&s, &format!("/models/{shared}")).await;
    let details: Value = serde_json::from_slice(&details).unwrap();
    assert_eq!(details["revisions"].as_array().unwrap().len(), 3);
    let (_, main) = get_bytes(&s, &format!("/models/{shared}/bf16")).await;
    assert!(models.iter().any(|m| sha(m) == sha(&main)));
}

#[tokio::test]
async fn an_upload_killed_midway_leaves_nothing() {
    let s = TestServer::start();
    let model = small_model_bytes(11);
    let name = unique("killed");
    let half = Bytes::from(model[..model.len() / 2].to_vec());
    let stream = futures::stream::iter(vec![
        Ok::<Bytes, std::io::Error>(half),
        Err(std::io::Error::other("client died")),
    ]);
    let result = client()
        .post(s.at(&format!("/models/{name}")))
        .header("content-length", model.len().to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    assert!(result.is_err() || !result.unwrap().status().is_success());
    wait_until(|| spool_entries(&s.data_dir) == 0).await;
    assert_eq!(
        get(&s, &format!("/models/{name}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(no_revision_objects(&s));
}

#[tokio::test]
async fn a_corrupted_blob_fails_the_download_instead_of_sending_wrong_bytes() {
    let s = TestServer::start();
    // Damages the blob on the local disk: CI's S3 pass skips it by name (.ci/run).
    assert!(s.local_objects, "needs the local object store");
    let model = small_model_bytes(12);
    let name = unique("rot");
    let (st, v) = post_raw(&s, &name, model.clone()).await;
    assert_eq!(st, StatusCode::CREATED);
    let blob_path = s
        .data_dir
        .join("objects")
        .join(v["blob_key"].as_str().unwrap());
    let mut blob = std::fs::read(&blob_path).unwrap();
    let opened = Blob::open(blob.clone()).unwrap();
    let [start, end] = opened.index().residual;
    let mid = ((start + end) / 2) as usize;
    blob[mid] ^= 0x5a;
    std::fs::write(&blob_path, &blob).unwrap();

    let r = get(&s, &format!("/models/{name}/bf16")).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "headers go out before the bad chunk"
    );
    let body = r.bytes().await;
    assert!(body.is_err(), "the body must be cut, not completed");
    // INT8 never reads the residual section, so it is still served whole and exact.
    let (st, int8) = get_bytes(&s, &format!("/models/{name}/int8")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        sha(&int8),
        v["files"]["int8"][0]["sha256"].as_str().unwrap()
    );
    let (_, metrics) = get_bytes(&s, "/metrics").await;
    assert!(String::from_utf8_lossy(&metrics).contains("qstore_download_errors_total 1"));
}

/// Parses an `x-qstore-*` section header (`bytes=A-B`, inclusive) into `A..B+1`.
fn section(r: &reqwest::Response, name: &str) -> std::ops::Range<usize> {
    let v = r.headers()[name].to_str().unwrap();
    let (a, b) = v.strip_prefix("bytes=").unwrap().split_once('-').unwrap();
    a.parse().unwrap()..b.parse::<usize>().unwrap() + 1
}

#[tokio::test]
async fn a_revisions_blob_is_served_as_stored_with_its_sections_and_ranges() {
    let s = TestServer::start();
    let model = small_model_bytes(21);
    let name = unique("stored");
    let (st, v) = post_raw(&s, &name, model.clone()).await;
    assert_eq!(st, StatusCode::CREATED);
    let url = format!("/api/models/{name}/qstore/main");
    let r = get(&s, &url).await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("x-repo-commit"));
    let (base, residual, index) = (
        section(&r, "x-qstore-base"),
        section(&r, "x-qstore-residual"),
        section(&r, "x-qstore-index"),
    );
    let blob = r.bytes().await.unwrap().to_vec();
    assert_eq!(blob.len() as u64, v["blob_bytes"].as_u64().unwrap());
    assert_eq!((base.start, base.end), (16, residual.start));
    assert_eq!((residual.end, index.end), (index.start, blob.len()));

    // What the client gets decodes, by itself, to the files the server serves.
    let opened = Blob::open(blob.clone()).unwrap();
    let high = opened.file(Precision::High, None).unwrap().clone();
    let mut decoded = Vec::new();
    opened.write_file(&high, &mut decoded).unwrap();
    assert_eq!(decoded, model);

    // Sections by their header ranges; HEAD; conditional; the int8 view names the same blob.
    for range in [base.clone(), index.clone(), 100..101] {
        let spec = format!("bytes={}-{}", range.start, range.end - 1);
        let r = get_with(&s.at(&url), &[(reqwest::header::RANGE, &spec)]).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{spec}");
        assert_eq!(r.bytes().await.unwrap(), blob[range.clone()], "{spec}");
    }
    let head = client().head(s.at(&url)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        blob.len().to_string().as_str()
    );
    let r = get_with(&s.at(&url), &[(reqwest::header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let (st, int8_view) = get_bytes(&s, &format!("/api/models/{name}/qstore/int8")).await;
    assert_eq!((st, int8_view.to_vec()), (StatusCode::OK, blob.clone()));
    let (_, metrics) = get_bytes(&s, "/metrics").await;
    let sent = String::from_utf8_lossy(&metrics)
        .lines()
        .find_map(|l| {
            l.strip_prefix("qstore_served_bytes_total{kind=\"blob\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or(0u64);
    assert!(sent >= 2 * blob.len() as u64, "{sent} blob bytes counted");

    // Revisions and repos that are not there.
    let (st, _) = get_bytes(&s, &format!("/api/models/{name}/qstore/nope")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = get_bytes(&s, &format!("/api/models/{name}-x/qstore/main")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let spec = format!("bytes={}-", blob.len());
    let r = get_with(&s.at(&url), &[(reqwest::header::RANGE, &spec)]).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn a_damaged_blob_is_not_served_as_stored_past_the_damage() {
    let s = TestServer::start();
    // Damages the blob on the local disk: CI's S3 pass skips it by name (.ci/run).
    assert!(s.local_objects, "needs the local object store");
    let name = unique("stored-rot");
    let (st, v) = post_raw(&s, &name, small_model_bytes(22)).await;
    assert_eq!(st, StatusCode::CREATED);
    let path = s
        .data_dir
        .join("objects")
        .join(v["blob_key"].as_str().unwrap());
    let good = std::fs::read(&path).unwrap();
    let [start, end] = Blob::open(good.clone()).unwrap().index().residual;
    let mid = ((start + end) / 2) as usize;
    let mut bad = good.clone();
    bad[mid] ^= 0x5a;
    std::fs::write(&path, &bad).unwrap();
    let url = s.at(&format!("/api/models/{name}/qstore/main"));
    let r = get_with(&url, &[]).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "headers go out before the bad chunk"
    );
    assert!(
        r.bytes().await.is_err(),
        "the body must be cut, not completed"
    );
    // When the damaged region comes first, the connection may be cut before the headers.
    let spec = format!("bytes={mid}-{mid}");
    let r = client().get(&url).header(RANGE, &spec).send().await;
    let body = match r {
        Ok(r) => r.bytes().await.ok(),
        Err(_) => None,
    };
    assert_eq!(body, None, "not even the one byte asked for");
    // Ranges that stay clear of the damaged chunk are still served, exact.
    let spec = format!("bytes=0-{}", start - 1);
    let r = get_with(&url, &[(reqwest::header::RANGE, &spec)]).await;
    assert_eq!(r.bytes().await.unwrap(), good[..start as usize]);
}

#[tokio::test]
async fn small_answers_on_a_kept_alive_connection_are_not_held_back() {
    // With Nagle's algorithm on, a small body waits behind its headers for the client's
    // delayed ACK: ~40 ms per request. One connection, requests one after another.
    let s = TestServer::start();
    let name = unique("nagle");
    let (st, _) = post_raw(&s, &name, small_model_bytes(5)).await;
    assert_eq!(st, StatusCode::CREATED);
    let (client, url) = (client(), s.at(&format!("/api/models/{name}/qstore/main")));
    let mut took = Vec::new();
    for i in 0..21 {
        let started = std::time::Instant::now();
        let r = client
            .get(&url)
            .header(RANGE, format!("bytes={i}-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), 1);
        took.push(started.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(25),
        "median {median:?} per small request"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = TestServer::start();
    assert_eq!(get_bytes(&s, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get_bytes(&s, "/readyz").await.0, StatusCode::OK);
    let model = small_model_bytes(13);
    let name = unique("met");
    post_raw(&s, &name, model.clone()).await;
    let (_, int8) = get_bytes(&s, &format!("/models/{name}/int8")).await;
    // A decode is counted when its task ends, which may be just after the client has the bytes.
    let mut text = String::new();
    for _ in 0..100 {
        text = String::from_utf8(get_bytes(&s, "/metrics").await.1.to_vec()).unwrap();
        if !text.contains("qstore_decoded_bytes_total{precision=\"int8\"} 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let value = |line: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} missing:\n{text}"))
    };
    assert_eq!(value("qstore_uploads_total"), 1);
    assert_eq!(value("qstore_uploaded_bytes_total"), model.len() as u64);
    assert_eq!(
        value("qstore_served_bytes_total{kind=\"int8\"}"),
        int8.len() as u64
    );
    assert_eq!(
        value("qstore_decoded_bytes_total{precision=\"int8\"}"),
        int8.len() as u64
    );
    assert!(value("qstore_http_requests_total{method=\"GET\",status=\"200\"}") >= 3);
}

#[tokio::test]
async fn shutdown_lets_a_download_in_flight_finish() {
    let mut s = TestServer::start();
    let model = small_model_bytes(14);
    let name = unique("drain");
    post_raw(&s, &name, model.clone()).await;
    let mut r = get(&s, &format!("/models/{name}/bf16")).await;
    let mut got = r.chunk().await.unwrap().unwrap().to_vec();
    let url = s.url.clone();
    let stopper = std::thread::spawn(move || s.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(piece) = r.chunk().await.unwrap() {
        got.extend_from_slice(&piece);
    }
    assert_eq!(sha(&got), sha(&model));
    stopper.join().unwrap();
    assert!(client().get(format!("{url}/healthz")).send().await.is_err());
}

#[tokio::test]
async fn an_fp16_model_is_served_as_fp16_under_its_own_name() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let f16_codes: Vec<u16> = qstore::synth::llm_like_bf16(256, 512, 21)
        .iter()
        .map(|&b| half::f16::from_f32(half::bf16::from_bits(b).to_f32()).to_bits())
        .collect();
    let path = dir.path().join("model.safetensors");
    write_st(
        &path,
        &[],
        &[T::codes(
            "l.q_proj.weight",
            Dtype::F16,
            &[256, 512],
            &f16_codes,
        )],
    );
    let model = std::fs::read(&path).unwrap();
    let name = unique("half");
    let (st, v) = post_raw(&s, &name, model.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["commits"]["fp16"], v["revision"]);
    assert_eq!(
        get_bytes(&s, &format!("/models/{name}/fp16")).await.1,
        model
    );
    let r = get(&s, &format!("/models/{name}/bf16")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("fp16"),
        "{v}"
    );
    let (st, int8) = get_bytes(&s, &format!("/{name}/resolve/int8/model.safetensors")).await;
    assert_eq!(st, StatusCode::OK);
    crate::helpers::check_derived_int8(&model, &int8, &|_| true);
    let (st, fp16) = get_bytes(&s, &format!("/{name}/resolve/fp16/model.safetensors")).await;
    assert_eq!((st, fp16), (StatusCode::OK, Bytes::from(model)));
    let r = get(&s, &format!("/{name}/resolve/bf16/model.safetensors")).await;
    assert_eq!(r.headers()["x-error-code"], "RevisionNotFound");
}

#[tokio::test]
async fn hub_api_answers_info_tree_and_typed_errors() {
    let s = TestServer::start();
    let model = small_model_bytes(22);
    let name = unique("org/hub");
    let (st, report) = post_form(
        &s,
        &name,
        vec![
            ("file", "model.safetensors".into(), model.clone()),
            (
                "file",
                "config.json".into(),
                br#"{"model_type": "llama"}"#.to_vec(),
            ),
            ("file", "sub/notes.txt".into(), b"hello".to_vec()),
        ],
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{report}");
    let (high, int8) = (
        report["commits"]["bf16"].as_str().unwrap(),
        report["commits"]["int8"].as_str().unwrap(),
    );
    for (rev, sha) in [
        ("main", high),
        ("bf16", high),
        ("int8", int8),
        (high, high),
        (int8, int8),
    ] {
        let info: Value = get(&s, &format!("/api/models/{name}/revision/{rev}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(info["sha"], sha, "{rev}");
        assert_eq!(info["id"], name.as_str());
        let tree: Value = get(&s, &format!("/api/models/{name}/tree/{sha}?recursive=true"))
            .await
            .json()
            .await
            .unwrap();
        let paths: Vec<&str> = tree
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            ["sub", "config.json", "model.safetensors", "sub/notes.txt"]
        );
        assert_eq!(tree[0]["type"], "directory");
        let weights = &tree[2];
        assert_eq!(weights["lfs"]["size"], weights["size"]);
        assert_eq!(
            weights["oid"].as_str().unwrap().len(),
            40,
            "git id of the LFS pointer"
        );
        let head = client()
            .head(s.at(&format!("/{name}/resolve/{rev}/model.safetensors")))
            .send()
            .await
            .unwrap();
        assert_eq!(head.headers()["x-repo-commit"], sha);
        assert_eq!(
            head.headers()["etag"],
            format!("\"{}\"", weights["lfs"]["oid"].as_str().unwrap()).as_str()
        );
    }
    let sub: Value = get(&s, &format!("/api/models/{name}/tree/main/sub"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(sub.as_array().unwrap().len(), 1);
    let config: Value = get(&s, &format!("/{name}/resolve/int8/config.json"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(config["quantization_config"]["load_in_8bit"], true);
    assert_eq!(config["model_type"], "llama");
    let plain = get_bytes(&s, &format!("/{name}/resolve/main/config.json"))
        .await
        .1;
    assert_eq!(&plain[..], br#"{"model_type": "llama"}"#);

    let code = |r: &reqwest::Response| {
        r.headers()
            .get("x-error-code")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let r = get(&s, &format!("/{name}/resolve/main/missing.json")).await;
    assert_eq!(
        (r.status(), code(&r).as_deref()),
        (StatusCode::NOT_FOUND, Some("EntryNotFound"))
    );
    assert_eq!(r.headers()["x-repo-commit"], high);
    let r = get(&s, &format!("/{name}/resolve/refs%2Fpr%2F1/config.json")).await;
    assert_eq!(code(&r).as_deref(), Some("RevisionNotFound"));
    let r = get(&s, &format!("/{name}-nope/resolve/main/config.json")).await;
    assert_eq!(code(&r).as_deref(), Some("RepoNotFound"));
    let r = get(&s, &format!("/api/models/{name}-nope/revision/main")).await;
    assert_eq!(code(&r).as_deref(), Some("RepoNotFound"));
    for bare in ["tree", "revision"] {
        let r = get(&s, &format!("/api/models/{name}/{bare}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{bare} alone means main");
        let r = get(&s, &format!("/api/models/{name}/{bare}/")).await;
        assert_eq!(code(&r).as_deref(), Some("RevisionNotFound"), "{bare}/");
    }
    let r = get(&s, "/api/models/").await;
    assert_eq!(code(&r).as_deref(), Some("RepoNotFound"));
    let r = get(&s, "/api/agent-harnesses").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_raw_upload_is_checked_while_it_arrives() {
    let s = TestServer::start();
    // The first megabyte is not safetensors, and the body never ends: the answer must come
    // from the bytes that arrived, not after the upload.
    let first = Bytes::from(vec![0xffu8; 1 << 20]);
    use futures::StreamExt;
    let body = futures::stream::iter(vec![Ok::<Bytes, std::io::Error>(first)])
        .chain(futures::stream::pending());
    let request = client()
        .post(s.at(&format!("/models/{}", unique("stream"))))
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let response = tokio::time::timeout(Duration::from_secs(20), request)
        .await
        .expect("answered before the body ended")
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let v: Value = response.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("header"),
        "{v}"
    );
    wait_until(|| spool_entries(&s.data_dir) == 0).await;
}

#[tokio::test]
async fn spools_left_by_a_dead_server_are_removed_at_start() {
    let data = tempfile::tempdir().unwrap();
    let tmp = data.path().join("tmp");
    for name in ["upload-stale", "upload-fresh", "not-a-spool"] {
        std::fs::create_dir_all(tmp.join(name)).unwrap();
        std::fs::write(tmp.join(name).join("model.safetensors"), b"x").unwrap();
    }
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    for name in ["upload-stale", "not-a-spool"] {
        for path in [tmp.join(name).join("model.safetensors"), tmp.join(name)] {
            std::fs::File::open(path)
                .unwrap()
                .set_modified(two_days_ago)
                .unwrap();
        }
    }
    let _s = TestServer::with(Opts {
        data_dir: Some(data.path().to_path_buf()),
        ..Opts::default()
    });
    assert!(!tmp.join("upload-stale").exists());
    assert!(tmp.join("upload-fresh").exists());
    assert!(tmp.join("not-a-spool").exists());
}

#[tokio::test]
async fn shutdown_gives_up_on_a_stalled_client_after_its_timeout() {
    let mut s = TestServer::with(Opts {
        shutdown_timeout_secs: Some(1),
        ..Opts::default()
    });
    // Larger than what socket buffers can hold, so the response is still in flight.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_st(&path, &[], &[T::llm("big.q_proj.weight", 6144, 4096, 15)]);
    let model = std::fs::read(path).unwrap();
    let name = unique("stall");
    post_raw(&s, &name, model).await;
    // A client that reads one piece and then nothing: the server must not wait for it forever.
    let mut stalled = get(&s, &format!("/models/{name}/bf16")).await;
    stalled.chunk().await.unwrap();
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "shutdown did not wait: {took:?}"
    );
}

#[tokio::test]
async fn odd_paths_get_4xx_never_5xx() {
    let s = TestServer::start();
    // (`/` is the home page: tests/it/web.rs.)
    let paths = [
        "//",
        "/models/",
        "/models//int8",
        "/models/int8",
        "/models/a/b/c/int8",
        "/api",
        "/api/models/",
        "/api/models/a/b/c/d",
        "/api/models/tree/main",
        "/a/resolve",
        "/a/resolve/main",
        "/a/b/resolve/main/",
        "/%ff/resolve/main/x",
        "/models/%2e%2e/int8",
        "/a/resolve/%ff/x",
        "/resolve/resolve/resolve/x",
        "/models/a/bf16?revision=",
        "/models/a/bf16?file=%ff",
    ];
    for path in paths {
        for method in [
            reqwest::Method::GET,
            reqwest::Method::HEAD,
            reqwest::Method::DELETE,
        ] {
            let r = client()
                .request(method.clone(), s.at(path))
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_client_error(),
                "{method} {path}: {}",
                r.status()
            );
        }
    }
}

#[tokio::test]
async fn serve_can_leave_migrations_to_the_migrate_command() {
    let data = tempfile::tempdir().unwrap();
    let migrate = std::process::Command::new(env!("CARGO_BIN_EXE_qstore"))
        .args(["migrate", "--data-dir"])
        .arg(data.path())
        .env_remove("QSTORE__CATALOG__DATABASE_URL")
        .output()
        .unwrap();
    assert!(migrate.status.success());
    let s = TestServer::with(Opts {
        data_dir: Some(data.path().to_path_buf()),
        private_catalog: true,
        skip_migrations: true,
        ..Opts::default()
    });
    let model = small_model_bytes(16);
    let (st, v) = post_raw(&s, &unique("premigrated"), model).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

/// The value of one counter in `/metrics`.
async fn metric(s: &TestServer, name: &str) -> u64 {
    let (_, text) = get_bytes(s, "/metrics").await;
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test]
async fn whole_downloads_fill_the_file_cache_and_later_ones_read_it_verified() {
    let s = TestServer::with(Opts {
        cache_max_bytes: Some(64 << 20),
        ..Opts::default()
    });
    let model = small_model_bytes(80);
    let name = unique("cached");
    let (st, _) = post_raw(&s, &name, model.clone()).await;
    assert_eq!(st, StatusCode::CREATED);
    let url = format!("/models/{name}/bf16");

    // A range is decoded and fills nothing; the first whole download decodes and fills.
    let r = get_with(&s.at(&url), &[(RANGE, "bytes=1000-1999")]).await;
    assert_eq!(r.bytes().await.unwrap(), model[1000..2000]);
    assert_eq!(metric(&s, "qstore_cache_fills_total").await, 0);
    let (_, first) = get_bytes(&s, &url).await;
    assert_eq!(sha(&first), sha(&model));
    assert_eq!(metric(&s, "qstore_cache_fills_total").await, 1);
    let entry = s.data_dir.join("cache").join(sha(&model));
    let cached = |entry: &Path| std::fs::read(entry).unwrap()[..model.len()].to_vec();
    assert_eq!(cached(&entry), model);

    // The next whole download is read from the cache, byte-exact.
    let decoded = metric(&s, "qstore_decoded_bytes_total{precision=\"high\"}").await;
    let (_, second) = get_bytes(&s, &url).await;
    assert_eq!(sha(&second), sha(&model));
    assert_eq!(metric(&s, "qstore_cache_hits_total").await, 1);
    assert_eq!(
        metric(&s, "qstore_decoded_bytes_total{precision=\"high\"}").await,
        decoded,
        "nothing decoded"
    );

    // A damaged entry is caught by its CRC-32: the body is cut, the entry dropped...
    let mut damaged = std::fs::read(&entry).unwrap();
    damaged[model.len() / 2] ^= 1;
    std::fs::write(&entry, &damaged).unwrap();
    let r = get(&s, &url).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.bytes().await.is_err(),
        "the body must be cut, not completed"
    );
    assert!(!entry.exists());
    // ...and the next download decodes again, exact, and fills the cache anew.
    let (_, again) = get_bytes(&s, &url).await;
    assert_eq!(sha(&again), sha(&model));
    assert_eq!(metric(&s, "qstore_cache_fills_total").await, 2);
    assert_eq!(cached(&entry), model);
}

#[tokio::test]
async fn file_answers_carry_a_representation_digest_and_a_file_name() {
    use base64::Engine;
    let s = TestServer::start();
    let model = small_model_bytes(14);
    let name = unique("digest");
    let (st, _) = post_raw(&s, &name, model.clone()).await;
    assert_eq!(st, StatusCode::CREATED);
    let digest = |bytes: &[u8]| {
        let raw = <sha2::Sha256 as sha2::Digest>::digest(bytes);
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    };
    let whole = get(&s, &format!("/models/{name}/bf16")).await;
    let headers = whole.headers().clone();
    assert_eq!(headers["repr-digest"], digest(&model).as_str());
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"model.safetensors\""
    );
    // A range carries the digest of the whole file it is part of.
    let part = get_with(
        &s.at(&format!("/models/{name}/bf16")),
        &[(RANGE, "bytes=10-20")],
    )
    .await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["repr-digest"], digest(&model).as_str());
    let (_, int8) = get_bytes(&s, &format!("/{name}/resolve/int8/model.safetensors")).await;
    let head = client()
        .head(s.at(&format!("/{name}/resolve/int8/model.safetensors")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["repr-digest"], digest(&int8).as_str());
}

#[tokio::test]
async fn wrong_precisions_and_non_safetensors_bodies_get_errors_that_say_what_to_do() {
    let s = TestServer::start();
    let name = unique("words");
    let (st, _) = post_raw(&s, &name, small_model_bytes(15)).await;
    assert_eq!(st, StatusCode::CREATED);
    for word in ["fp32", "INT8", "Bf16", "float16"] {
        let r = get(&s, &format!("/models/{name}/{word}")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{word}");
        let v: Value = r.json().await.unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("/int8") && message.contains(word),
            "{message}"
        );
    }
    let answer = post_raw(&s, &unique("json"), br#"{"model_type": "bert"}"#.to_vec()).await;
    expect_error(
        answer,
        StatusCode::BAD_REQUEST,
        "BadRequest",
        "not a safetensors file",
    );
}
