//! `POST /models/{name}`: receive a checkpoint, encode it into one blob, and make it a commit on
//! `main` whose files are exactly the upload's, through the same commit path as the Hub API.
//!
//! Memory is bounded independently of model size: the body streams to a spool directory under
//! `data_dir/tmp`, hashed as it flows (a raw body is encoded while it arrives; a form's files are
//! header-checked as each arrives), the encoder works in bounded batches, and the blob goes to the
//! object store in 8 MiB multipart parts. Temporary disk: the upload plus its blob (up to about
//! 1.8x the upload, docs/SERVER.md), removed when the request ends, whether it succeeded, failed
//! or was aborted. A blob written before a failure is deleted; nothing is visible until the
//! catalog commit.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::AppState;
use super::auth::Caller;
use super::bodies::{StoredFile, UploadReport};
use super::error::{ApiError, ApiResult, ErrorKind};
use super::names;
use crate::format::{Arrival, EncodeInput, EncodeOptions, EncodeSummary, FormatError};
use crate::repo::commit::Source;
use crate::repo::refs::MAIN;
use crate::repo::tree::{self, MAX_REGULAR_BYTES};
use crate::repo::{Change, CommitRequest, Committed, NewFile, PreparedBlob, make_commit};
use crate::storage::FileSet;

/// How much of a refused body is read (and dropped) so the client can read the answer.
const DRAIN_BYTES: usize = 32 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);
/// How long an oversized raw upload waits for the encoder's verdict on its header.
const HEADER_VERDICT: std::time::Duration = std::time::Duration::from_secs(1);
/// Name given to the weights of a raw-body upload.
const RAW_BODY_NAME: &str = "model.safetensors";
/// Multipart field name for files of a supplied INT8 checkpoint.
const INT8_FIELD: &str = "int8";

/// A plain (non-weight) file of the upload, spooled.
struct PlainFile {
    path: String,
    local: PathBuf,
    size: u64,
    sha256: String,
}

/// The upload as it lands on local disk.
struct Spool {
    /// Shared with the encode task, so the directory outlives a request dropped mid-encode.
    dir: Arc<tempfile::TempDir>,
    high: Vec<(PathBuf, String)>,
    shard_index: Option<PathBuf>,
    /// A supplied INT8 checkpoint: spool path and sha256.
    int8: Vec<(PathBuf, String)>,
    plain: Vec<PlainFile>,
    received: u64,
}

impl Spool {
    fn new(state: &AppState) -> ApiResult<Spool> {
        let dir = std::fs::create_dir_all(state.spool.path())
            .and_then(|()| {
                tempfile::Builder::new()
                    .prefix("upload-")
                    .tempdir_in(state.spool.path())
            })
            .map_err(|e| ApiError::io("creating the upload spool", e))?;
        for sub in ["high", "int8", "plain"] {
            std::fs::create_dir(dir.path().join(sub))
                .map_err(|e| ApiError::io("creating the upload spool", e))?;
        }
        Ok(Spool {
            dir: Arc::new(dir),
            high: Vec::new(),
            shard_index: None,
            int8: Vec::new(),
            plain: Vec::new(),
            received: 0,
        })
    }

    fn file_count(&self) -> usize {
        self.high.len()
            + self.int8.len()
            + self.plain.len()
            + usize::from(self.shard_index.is_some())
    }
}

pub(super) async fn upload(state: AppState, name: &str, request: Request) -> ApiResult<Response> {
    let caller = match state
        .writes
        .writer(&state.catalog, request.headers(), Some(name))
        .await
    {
        Ok(c) => c,
        Err(e) => return Err(refuse(request, e).await),
    };
    let result = receive_and_store(&state, name, &caller, request).await;
    match &result {
        Ok((_, received)) => state.metrics.add_upload(true, *received),
        Err(e) => {
            state.metrics.add_upload(false, 0);
            tracing::info!(model = name, code = e.kind.code(), message = %e.message, "upload refused");
        }
    }
    result.map(|(response, _)| response)
}

async fn receive_and_store(
    state: &AppState,
    name: &str,
    caller: &Caller,
    request: Request,
) -> ApiResult<(Response, u64)> {
    let mut spool = Spool::new(state)?;
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("multipart/form-data"));
    let summary = if is_multipart {
        receive_and_encode_form(state, request, &mut spool).await?
    } else {
        receive_and_encode_raw(state, request, &mut spool).await?
    };
    check_reproduces_upload(&summary, &spool)?;
    let response = commit_upload(state, name, caller, &spool, summary).await?;
    Ok((response, spool.received))
}

/// Waits for a slot among `limits.max_concurrent_encodes`.
async fn encode_turn(state: &AppState) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
    state
        .encodes
        .acquire()
        .await
        .map_err(|e| ApiError::internal("encode admission", e))
}

/// A form may hold shards, their index and a supplied INT8 checkpoint, whose roles are known
/// only once it has ended: received whole (each weight file checked as it arrives), then encoded.
async fn receive_and_encode_form(
    state: &AppState,
    request: Request,
    spool: &mut Spool,
) -> ApiResult<EncodeSummary> {
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?;
    if let Err(e) = receive_form(state, &mut form, spool).await {
        drain_form_briefly(&mut form).await;
        return Err(e);
    }
    if spool.high.is_empty() {
        return Err(ApiError::bad_request(
            "the upload has no .safetensors weights",
        ));
    }
    let _turn = encode_turn(state).await?;
    let input = EncodeInput {
        high: spool.high.iter().map(|(p, _)| p.clone()).collect(),
        shard_index: spool.shard_index.clone(),
        int8: spool.int8.iter().map(|(p, _)| p.clone()).collect(),
        arriving: None,
    };
    encode_result(encode(spool, input).await, spool)
}

/// A raw body is one safetensors file: it is encoded while it arrives. The encoder reads the
/// spool file behind the receiving loop, so a bad header is refused after its first bytes and the
/// encode finishes shortly after the last byte arrives.
async fn receive_and_encode_raw(
    state: &AppState,
    request: Request,
    spool: &mut Spool,
) -> ApiResult<EncodeSummary> {
    let dest = spool.dir.path().join("high").join(RAW_BODY_NAME);
    let file = tokio::fs::File::create(&dest)
        .await
        .map_err(|e| ApiError::io("creating the upload spool", e))?;
    let _turn = encode_turn(state).await?;
    let arrival = AbortOnDrop(Arrival::new());
    let input = EncodeInput {
        high: vec![dest.clone()],
        arriving: Some(arrival.0.clone()),
        ..EncodeInput::default()
    };
    let mut encoding = encode(spool, input);
    let limit = state.config.limits.max_upload_bytes;
    let mut body = request.into_body().into_data_stream();
    match receive_arriving(&mut body, file, limit, &arrival.0, &mut encoding).await {
        Ok(Arrived::Body { size, sha256 }) => {
            arrival.0.finish(Ok(()));
            spool.received = size;
            spool.high.push((dest, sha256));
            encode_result(encoding.await, spool)
        }
        Ok(Arrived::EncoderStopped(joined)) => {
            // The encoder failed on what it read before the body ended: its error says why.
            drain_briefly(&mut body).await;
            Err(encode_result(joined, spool).err().unwrap_or_else(|| {
                ApiError::internal("upload", "the encoder finished before the upload")
            }))
        }
        Err(e) if e.kind == ErrorKind::PayloadTooLarge => {
            // The limit can be reached before the encoder (a blocking thread, maybe not yet
            // scheduled) has judged the header it already has: a bad header is the better
            // answer, whichever happened first. A good header keeps the encoder waiting for
            // more bytes, so this waits at most HEADER_VERDICT before answering 413.
            if let Ok(joined) = tokio::time::timeout(HEADER_VERDICT, &mut encoding).await {
                match encode_result(joined, spool) {
                    Err(refused) if refused.kind == ErrorKind::BadRequest => return Err(refused),
                    _ => {}
                }
            }
            arrival.0.finish(Err(e.message.clone()));
            let _ = encoding.await;
            Err(e)
        }
        Err(e) => {
            arrival.0.finish(Err(e.message.clone()));
            let _ = encoding.await;
            Err(e)
        }
    }
}

/// Tells the encoder the upload is over, whatever way the request ends (a dropped request
/// future included), so it never waits for bytes that will not come.
struct AbortOnDrop(Arc<Arrival>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.finish(Err("the upload was aborted".into()));
    }
}

/// How receiving a raw body ended.
enum Arrived {
    /// All of it, with its sha256.
    Body { size: u64, sha256: String },
    /// The encoder ended first (it failed on what it had read); its result.
    EncoderStopped(Result<Result<EncodeSummary, FormatError>, tokio::task::JoinError>),
}

/// Writes the body to the spool file in 1 MiB steps, telling the encoder after each flushed step,
/// and stops early if the encoder does.
async fn receive_arriving<S, E>(
    body: &mut S,
    mut file: tokio::fs::File,
    limit: u64,
    arrival: &Arrival,
    encoding: &mut tokio::task::JoinHandle<Result<EncodeSummary, FormatError>>,
) -> ApiResult<Arrived>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    const STEP: usize = 1 << 20;
    let spool_err = |e: std::io::Error| ApiError::io("writing the upload spool", e);
    let mut intake = Intake::new(RAW_BODY_NAME, limit);
    let mut pending = Vec::with_capacity(STEP);
    loop {
        let piece = tokio::select! {
            joined = &mut *encoding => return Ok(Arrived::EncoderStopped(joined)),
            piece = body.next() => piece,
        };
        let Some(piece) = piece else { break };
        pending.extend_from_slice(&intake.accept(piece, body).await?);
        if pending.len() >= STEP {
            file.write_all(&pending).await.map_err(spool_err)?;
            file.flush().await.map_err(spool_err)?;
            pending.clear();
            arrival.advance(intake.size);
        }
    }
    file.write_all(&pending).await.map_err(spool_err)?;
    file.flush().await.map_err(spool_err)?;
    arrival.advance(intake.size);
    let (size, sha256) = intake.finish();
    Ok(Arrived::Body { size, sha256 })
}

/// Reads every form field into the spool, classifying it by field name and file name.
async fn receive_form(state: &AppState, form: &mut Multipart, spool: &mut Spool) -> ApiResult<()> {
    let limits = &state.config.limits;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?
    {
        if spool.file_count() >= limits.max_files {
            return Err(ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!("more than {} files in one upload", limits.max_files),
            ));
        }
        let field_name = field.name().unwrap_or_default().to_string();
        let Some(path) = field.file_name().map(str::to_string) else {
            return Err(ApiError::bad_request(format!(
                "form field {field_name:?} is not a file (send files with a filename)"
            )));
        };
        names::check_file_path(&path)?;
        let is_weights = path.ends_with(".safetensors");
        let is_shard_index = path.ends_with(".safetensors.index.json");
        if (is_weights || field_name == INT8_FIELD) && path.contains('/') {
            return Err(ApiError::bad_request(format!(
                "{path:?}: weight files must be at the top of the repo"
            )));
        }
        let left = limits.max_upload_bytes.saturating_sub(spool.received);
        let (dest, limit) = if field_name == INT8_FIELD {
            if !is_weights {
                return Err(ApiError::bad_request(format!(
                    "{path:?}: the int8 field takes .safetensors files only"
                )));
            }
            (spool.dir.path().join("int8").join(&path), left)
        } else if is_weights || is_shard_index {
            (spool.dir.path().join("high").join(&path), left)
        } else {
            let local = spool
                .dir
                .path()
                .join("plain")
                .join(spool.plain.len().to_string());
            (local, left.min(limits.max_plain_file_bytes))
        };
        if dest.exists() || spool.plain.iter().any(|p| p.path == path) {
            return Err(ApiError::bad_request(format!("{path:?} appears twice")));
        }
        let (size, sha256) = spool_stream(field, &dest, limit, &path).await?;
        spool.received += size;
        if field_name == INT8_FIELD {
            check_safetensors(&dest, &path).await?;
            spool.int8.push((dest, sha256));
        } else if is_weights {
            check_safetensors(&dest, &path).await?;
            spool.high.push((dest, sha256));
        } else if is_shard_index {
            if spool.shard_index.is_some() {
                return Err(ApiError::bad_request("more than one shard index"));
            }
            spool.shard_index = Some(dest);
        } else {
            spool.plain.push(PlainFile {
                path,
                local: dest,
                size,
                sha256,
            });
        }
    }
    Ok(())
}

/// Writes a body stream to `dest`, hashing it; more than `limit` bytes is a 413.
async fn spool_stream<S, E>(
    mut stream: S,
    dest: &Path,
    limit: u64,
    what: &str,
) -> ApiResult<(u64, String)>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let spool_err = |e: std::io::Error| ApiError::io("writing the upload spool", e);
    let file = tokio::fs::File::create(dest).await.map_err(spool_err)?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut intake = Intake::new(what, limit);
    while let Some(piece) = stream.next().await {
        let piece = intake.accept(piece, &mut stream).await?;
        out.write_all(&piece).await.map_err(spool_err)?;
    }
    out.flush().await.map_err(spool_err)?;
    Ok(intake.finish())
}

/// Counts, bounds and hashes a body as it flows.
struct Intake<'a> {
    what: &'a str,
    limit: u64,
    size: u64,
    hasher: Sha256,
}

impl<'a> Intake<'a> {
    fn new(what: &'a str, limit: u64) -> Intake<'a> {
        Intake {
            what,
            limit,
            size: 0,
            hasher: Sha256::new(),
        }
    }

    /// Takes the next piece of `body`: a transport error is the client's (400); going over the
    /// limit is a 413, answered after draining a little more of `body` so the client reads it.
    async fn accept<S, E>(&mut self, piece: Result<Bytes, E>, body: &mut S) -> ApiResult<Bytes>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let what = self.what;
        let piece = piece
            .map_err(|e| ApiError::bad_request(format!("{what}: the upload ended early ({e})")))?;
        self.size += piece.len() as u64;
        if self.size > self.limit {
            drain_briefly(body).await;
            return Err(ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "{what}: the upload is larger than the {}-byte limit",
                    self.limit
                ),
            ));
        }
        self.hasher.update(&piece);
        Ok(piece)
    }

    /// Bytes received and their sha256.
    fn finish(self) -> (u64, String) {
        (self.size, hex::encode(self.hasher.finalize()))
    }
}

/// Answers `error` to an upload refused before its body was read, after draining some of the body
/// so that the client reads the answer rather than a reset connection. A client that asked
/// `Expect: 100-continue` is waiting for the answer before it sends the body: it gets the error
/// with no `100 Continue` (reading the body would send one) and sends nothing.
pub(super) async fn refuse(request: Request, error: ApiError) -> ApiError {
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if !expects_continue {
        drain_briefly(&mut request.into_body().into_data_stream()).await;
    }
    error
}

/// [`drain_briefly`] for a form refused halfway, so the client reads the answer instead of a
/// reset connection (seen under load with a 21 MB form refused at its first part).
async fn drain_form_briefly(form: &mut Multipart) {
    let drain = async {
        let mut drained = 0;
        while let Ok(Some(mut field)) = form.next_field().await {
            while let Ok(Some(piece)) = field.chunk().await {
                drained += piece.len();
                if drained > DRAIN_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

/// Reads and drops a little more of a refused body, so that a client still sending a moderately
/// large upload gets to read the error instead of a reset connection. Bounded in bytes and time.
async fn drain_briefly<S, E>(stream: &mut S)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let drain = async {
        let mut drained = 0;
        while let Some(Ok(piece)) = stream.next().await {
            drained += piece.len();
            if drained > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

/// Rejects a file that is not safetensors as soon as it has arrived.
async fn check_safetensors(path: &Path, name: &str) -> ApiResult<()> {
    let path = path.to_owned();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || -> ApiResult<()> {
        let bad = |e: &dyn Display| ApiError::bad_request(format!("{name}: {e}"));
        let mut f = std::fs::File::open(&path).map_err(|e| ApiError::internal("spool", e))?;
        let len = f
            .metadata()
            .map_err(|e| ApiError::internal("spool", e))?
            .len();
        let header = crate::safetensors::read_header(&mut std::io::BufReader::new(&mut f))
            .map_err(|e| bad(&e))?;
        header.check_file_len(len).map_err(|e| bad(&e))
    })
    .await
    .map_err(|e| ApiError::internal("header check task", e))?
}

/// Starts encoding `input` into `spool/model.qstore` on a blocking thread.
fn encode(
    spool: &Spool,
    input: EncodeInput,
) -> tokio::task::JoinHandle<Result<EncodeSummary, FormatError>> {
    let dir = spool.dir.clone();
    tokio::task::spawn_blocking(move || {
        let out = dir.path().join("model.qstore");
        crate::format::encode_to_path(&input, &EncodeOptions::default(), &out, &|_| {})
    })
}

/// An encode's outcome; its input errors become 400s that name files as the client did (never
/// by their spool paths).
fn encode_result(
    joined: Result<Result<EncodeSummary, FormatError>, tokio::task::JoinError>,
    spool: &Spool,
) -> ApiResult<EncodeSummary> {
    let result = joined.map_err(|e| ApiError::internal("encode task", e))?;
    result.map_err(|e| {
        let mut error = ApiError::from(e);
        for sub in ["high", "int8", ""] {
            let prefix = format!("{}/", spool.dir.path().join(sub).display());
            error.message = error.message.replace(&prefix, "");
        }
        error
    })
}

/// The blob must give back every uploaded high-precision file exactly (the encoder verified its
/// chunks; this ties the whole file to the bytes received).
fn check_reproduces_upload(summary: &EncodeSummary, spool: &Spool) -> ApiResult<()> {
    for (path, sha) in &spool.high {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let stored = summary.index.high_files.iter().find(|f| f.name == name);
        if stored.map(|f| &f.sha256) != Some(sha) {
            return Err(ApiError::internal(
                "the blob does not reproduce an uploaded file",
                name,
            ));
        }
    }
    Ok(())
}

/// Stores the upload's plain files (once, by content) and commits blob and files on `main`.
async fn commit_upload(
    state: &AppState,
    name: &str,
    caller: &Caller,
    spool: &Spool,
    summary: EncodeSummary,
) -> ApiResult<Response> {
    let mut changes = Vec::new();
    for p in &spool.plain {
        let sample = read_sample(&p.local, p.size).await?;
        let lfs = tree::is_lfs(&p.path, p.size, &sample);
        let key = state
            .objects
            .put_content_file(&p.sha256, p.size, &p.local)
            .await?;
        changes.push(Change::Add(NewFile {
            path: p.path.clone(),
            size: p.size,
            sha256: p.sha256.clone(),
            git_oid: (!lfs).then(|| tree::git_blob_oid(&sample)),
            lfs,
            source: Source::Object(key),
        }));
    }
    let supplied_int8 = spool
        .int8
        .iter()
        .map(|(p, sha)| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            (name.to_string(), sha.clone())
        })
        .collect();
    let storing = std::time::Instant::now();
    let committed = make_commit(
        &state.repo_store(),
        CommitRequest {
            repo: name.to_string(),
            branch: MAIN.into(),
            parent: None,
            author: caller.name.clone(),
            title: format!("Upload {name}"),
            message: String::new(),
            changes,
            replace_all: true,
            create_repo: true,
            prepared: Some(PreparedBlob {
                path: spool.dir.path().join("model.qstore"),
                summary,
                supplied_int8,
            }),
            pushed: None,
        },
    )
    .await?;
    tracing::info!(
        model = name,
        commit = %committed.commit.id,
        new_blob = committed.new_blob,
        store_ms = storing.elapsed().as_millis() as u64,
        "upload committed"
    );
    Ok((StatusCode::CREATED, Json(upload_report(name, &committed))).into_response())
}

/// A regular file's whole bytes (for its git id), or an LFS file's first 512.
async fn read_sample(path: &Path, size: u64) -> ApiResult<Vec<u8>> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| ApiError::internal("reading the spool", e))?;
    let want = if size <= MAX_REGULAR_BYTES { size } else { 512 };
    let mut buf = Vec::with_capacity(want as usize);
    tokio::io::AsyncReadExt::take(&mut f, want)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| ApiError::internal("reading the spool", e))?;
    Ok(buf)
}

/// The 201 body: what was stored and what it saves.
fn upload_report(name: &str, c: &Committed) -> UploadReport {
    let blob = c.commit.blob.as_ref();
    let dtype = blob.map_or("bf16", |b| b.high_dtype.as_str());
    let list = |set: FileSet| -> Vec<StoredFile> {
        c.view(set)
            .iter()
            .map(|f| StoredFile {
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
            })
            .collect()
    };
    let blob_bytes = blob.map_or(0, |b| b.size);
    let separate = blob.map_or(0, |b| b.high_size + b.int8_size);
    let plain: u64 = c
        .files
        .iter()
        .filter(|(_, f)| f.object_key.is_some())
        .map(|(_, f)| f.size)
        .sum();
    UploadReport {
        name: name.to_string(),
        revision: c.commit.id.clone(),
        commits: BTreeMap::from([
            (dtype.to_string(), c.commit.id.clone()),
            ("int8".to_string(), c.commit.int8_id.clone()),
        ]),
        files: BTreeMap::from([
            (dtype.to_string(), list(FileSet::High)),
            ("int8".to_string(), list(FileSet::Int8)),
        ]),
        blob_bytes,
        blob_key: blob.map(|b| b.object_key.clone()),
        new_blob: c.new_blob,
        stored_bytes: blob_bytes + plain,
        separate_bytes: separate,
        ratio: if blob_bytes == 0 {
            0.0
        } else {
            separate as f64 / blob_bytes as f64
        },
    }
}
