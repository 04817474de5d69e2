//! Serving one file: conditional requests, single byte ranges, and a body streamed with
//! backpressure from the blob decoder (off the runtime) or from a plain object.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::error::{ApiError, ApiResult, ErrorKind};
use super::metrics::Served;
use super::{AppState, OpenedBlob};
use crate::format::{Blob, BlobSource, Decoded, FormatError, OutputFile, OutputSink, Precision};
use crate::storage::cache::{FileCache, Fill, Hit};
use crate::storage::{FileEntry, ObjectSource};

/// Bytes handed to the HTTP body per message when they are copied (small decoded pieces, a
/// stored blob's regions): large enough to keep syscalls few, small enough that the bounded
/// channel holds little.
const BODY_PIECE: usize = 256 << 10;
/// A decoded piece at least this large goes to the body as it is, in slices (no copy); smaller
/// ones (headers, norms, biases) are gathered into `BODY_PIECE` messages, so the connection is
/// not handed one message per few bytes.
const SEND_AS_IS: usize = 64 << 10;
/// Messages queued between the decoder and the connection, besides those being sent.
const BODY_QUEUE: usize = 4;

/// Where a served file's bytes come from.
pub enum Source {
    /// An output file decoded from a revision's blob.
    Blob {
        blob: Arc<Blob<ObjectSource>>,
        file: OutputFile,
        precision: Precision,
        /// The index's share of the index-memory budget, held until the body ends.
        admission: OwnedSemaphorePermit,
    },
    /// A plain object (config, tokenizer...).
    Object { key: String },
    /// A revision's blob as stored, for clients that decode themselves; every region checked.
    Stored {
        blob: Arc<Blob<ObjectSource>>,
        /// The blob's id: its ETag (a blob never changes under its id).
        id: String,
        admission: OwnedSemaphorePermit,
    },
}

/// A file about to be answered, with the headers every answer carries.
pub struct ServedFile {
    pub source: Source,
    /// The file's name, for `Content-Disposition` (its path's last segment).
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// `X-Repo-Commit` for Hugging Face clients.
    pub commit: Option<String>,
    pub cache_control: String,
    /// Further headers of this kind of resource (a stored blob's section ranges).
    pub extra: Vec<(&'static str, String)>,
}

impl ServedFile {
    /// A catalog entry served from `blob` (if it has no object) or from its object.
    pub fn from_entry(
        entry: &FileEntry,
        blob: Option<(OpenedBlob, Precision)>,
        commit: Option<String>,
        cache_control: String,
    ) -> ApiResult<ServedFile> {
        let source = match (&entry.object_key, blob) {
            (Some(key), _) => Source::Object { key: key.clone() },
            (None, Some((OpenedBlob { blob, admission }, precision))) => {
                let file = blob.file(precision, Some(&entry.path))?.clone();
                if file.sha256 != entry.sha256 || file.size != entry.size {
                    return Err(ApiError::internal(
                        "blob index disagrees with the catalog",
                        &entry.path,
                    ));
                }
                Source::Blob {
                    blob,
                    file,
                    precision,
                    admission,
                }
            }
            (None, None) => return Err(ApiError::internal("no blob for a blob file", &entry.path)),
        };
        Ok(ServedFile {
            source,
            name: entry
                .path
                .rsplit('/')
                .next()
                .unwrap_or(&entry.path)
                .to_string(),
            size: entry.size,
            sha256: entry.sha256.clone(),
            commit,
            cache_control,
            extra: Vec::new(),
        })
    }
}

impl ServedFile {
    /// The opaque part of the ETag: the file's sha256, or a stored blob's id (its sha256 is not
    /// kept, and it does not need one: it is immutable under its id).
    fn tag(&self) -> &str {
        match &self.source {
            Source::Stored { id, .. } => id,
            _ => &self.sha256,
        }
    }
}

/// A revision's blob as stored (see [`Source::Stored`]), with the byte ranges of its sections
/// as headers a client can pass straight back as `Range`: `x-qstore-base` (what INT8 outputs
/// read), `x-qstore-residual` (what the high precision adds) and `x-qstore-index` (index and
/// footer).
pub fn stored_blob(
    opened: OpenedBlob,
    id: String,
    name: String,
    commit: String,
    cache_control: String,
) -> ServedFile {
    let OpenedBlob { blob, admission } = opened;
    let index = blob.index();
    let size = blob.source().len();
    let bytes = |[a, b]: [u64; 2]| format!("bytes={a}-{}", b.max(a + 1) - 1);
    let extra = vec![
        ("x-qstore-base", bytes(index.base)),
        ("x-qstore-residual", bytes(index.residual)),
        ("x-qstore-index", bytes([index.residual[1], size])),
    ];
    ServedFile {
        source: Source::Stored {
            blob,
            id,
            admission,
        },
        name,
        size,
        sha256: String::new(),
        commit: Some(commit),
        cache_control,
        extra,
    }
}

/// RFC 9530 `Repr-Digest` of the whole file (also on ranges and HEAD), so a careful client can
/// check what it assembled: `sha-256=:BASE64:`.
pub fn repr_digest(sha256_hex: &str) -> String {
    use base64::Engine;
    let raw = hex::decode(sha256_hex).unwrap_or_default();
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// `Cache-Control` for a URL pinned to an immutable revision, or naming a moving branch.
pub fn cache_control(pinned: bool, branch_max_age: u64) -> String {
    if pinned {
        "public, max-age=31536000, immutable".into()
    } else {
        format!("public, max-age={branch_max_age}")
    }
}

/// Answers GET or HEAD for `file`, honouring `If-None-Match`, `Range` and `If-Range`.
pub async fn respond(
    state: &AppState,
    file: ServedFile,
    method: &Method,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let etag = format!("\"{}\"", file.tag());
    let mut builder = Response::builder().header(header::ETAG, &etag);
    if !matches!(file.source, Source::Stored { .. }) {
        builder = builder.header("repr-digest", repr_digest(&file.sha256));
    }
    builder = builder
        .header(
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}\"",
                file.name.replace(['"', '\\'], "_")
            ),
        )
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, &file.cache_control);
    if let Some(commit) = &file.commit {
        builder = builder.header("x-repo-commit", commit);
    }
    for (name, value) in &file.extra {
        builder = builder.header(*name, value);
    }
    if none_match(headers, file.tag()) {
        return Ok(builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid response"));
    }
    let (status, span) = match requested_range(headers, &etag, file.size)? {
        Some(r) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", r.start, r.end - 1, file.size),
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
        None => (StatusCode::OK, 0..file.size),
    };
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, span.end - span.start)
        .header(header::CONTENT_TYPE, content_type(&file));
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        body_of(state, file, span).await?
    };
    Ok(builder.body(body).expect("valid response"))
}

/// The byte range to send: `None` for the whole file (no `Range`, one to ignore, or an `If-Range`
/// naming another version); 416 when it cannot be satisfied.
fn requested_range(headers: &HeaderMap, etag: &str, size: u64) -> ApiResult<Option<Range<u64>>> {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if !if_range_allows(headers, etag) {
        return Ok(None);
    }
    parse_range(spec, size).map_err(|Unsatisfiable| ApiError {
        total: Some(size),
        ..ApiError::new(
            ErrorKind::RangeNotSatisfiable,
            format!("range {spec:?} is outside the {size}-byte file"),
        )
    })
}

fn content_type(file: &ServedFile) -> HeaderValue {
    let name = match &file.source {
        Source::Blob { file, .. } => file.name.as_str(),
        Source::Object { key } => key.as_str(),
        Source::Stored { .. } => "blob.qstore",
    };
    HeaderValue::from_static(match name.rsplit('.').next() {
        Some("json") => "application/json",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    })
}

/// True when `If-None-Match` names this file's ETag (or `*`).
fn none_match(headers: &HeaderMap, sha256: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|t| t == "*" || t == sha256)
}

/// `If-Range` with a different validator means "send the whole file".
fn if_range_allows(headers: &HeaderMap, etag: &str) -> bool {
    match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v.trim() == etag,
    }
}

/// A `Range` that lies wholly outside the file (answered 416).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Parses a `Range` header against a file of `size` bytes. `Ok(None)`: ignore it (not a single
/// byte range, or syntactically invalid, as RFC 9110 allows); `Err`: unsatisfiable (416). An end
/// past the file is clamped, as download accelerators expect.
pub fn parse_range(spec: &str, size: u64) -> Result<Option<Range<u64>>, Unsatisfiable> {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if set.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ok(None);
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                Err(Unsatisfiable)
            } else {
                Ok(Some(size.saturating_sub(n)..size))
            }
        }
        (false, Some(a), None) if last.trim().is_empty() => {
            if a >= size {
                Err(Unsatisfiable)
            } else {
                Ok(Some(a..size))
            }
        }
        (false, Some(a), Some(b)) if a <= b => {
            if a >= size {
                Err(Unsatisfiable)
            } else {
                Ok(Some(a..b.saturating_add(1).min(size)))
            }
        }
        _ => Ok(None),
    }
}

async fn body_of(state: &AppState, file: ServedFile, span: Range<u64>) -> ApiResult<Body> {
    match file.source {
        Source::Blob {
            blob,
            file: output,
            precision,
            admission,
        } => {
            let whole = span.start == 0 && span.end == file.size;
            let cache = state.cache.as_ref().filter(|_| whole);
            if let Some(cache) = cache
                && let Some(hit) = lookup_off_runtime(cache, &file.sha256, file.size).await
            {
                let cache = cache.clone();
                return Ok(cached_body(
                    state,
                    cache,
                    hit,
                    file.size,
                    file.sha256,
                    precision,
                ));
            }
            let fill = cache.and_then(|c| c.start_fill(&file.sha256, file.size));
            let decode = state
                .decodes
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| ApiError::internal("decode admission", e))?;
            Ok(decoded_body(
                state,
                blob,
                output,
                precision,
                span,
                [decode, admission],
                fill,
            ))
        }
        Source::Object { key } => {
            let whole = span.start == 0 && span.end == file.size;
            let stream = state.objects.get_range_stream(&key, span).await?;
            let served = state.metrics.clone();
            let check = whole.then(|| Check::Sha256(Sha256::new(), file.sha256));
            let verified = verify_stream(stream, check, key).inspect(move |r| {
                if let Ok(b) = r {
                    served.add_served(Served::Plain, b.len() as u64);
                }
            });
            Ok(Body::from_stream(verified))
        }
        Source::Stored {
            blob, admission, ..
        } => {
            let label = file.name.clone();
            Ok(blocking_body(
                state,
                Served::Blob,
                admission,
                None,
                label,
                move |out| blob.write_stored_range(span, out),
            ))
        }
    }
}

/// [`FileCache::lookup`] on a blocking thread (it opens and stats the entry).
async fn lookup_off_runtime(cache: &Arc<FileCache>, sha256: &str, size: u64) -> Option<Hit> {
    let (cache, sha256) = (cache.clone(), sha256.to_string());
    tokio::task::spawn_blocking(move || cache.lookup(&sha256, size))
        .await
        .ok()
        .flatten()
}

/// A whole file from the local cache, checked against the entry's CRC-32 as it streams with its
/// last piece held back until it matches; an entry found damaged is dropped from the cache.
fn cached_body(
    state: &AppState,
    cache: Arc<FileCache>,
    hit: Hit,
    size: u64,
    sha256: String,
    precision: Precision,
) -> Body {
    use tokio::io::AsyncReadExt;
    state.metrics.add_cache_hit();
    let entry = tokio::fs::File::from_std(hit.file);
    let stream = tokio_util::io::ReaderStream::with_capacity(entry.take(size), BODY_PIECE)
        .map(|r| r.map_err(crate::storage::StorageError::from))
        .boxed();
    let (served, kind) = (state.metrics.clone(), Served::from(precision));
    let key = hit.path.display().to_string();
    let check = Check::Crc32(crc32fast::Hasher::new(), hit.crc32);
    let verified = verify_stream(stream, Some(check), key).inspect(move |r| match r {
        Ok(b) => served.add_served(kind, b.len() as u64),
        Err(_) => {
            served.add_failed_download();
            cache.remove(&sha256);
        }
    });
    Body::from_stream(verified)
}

/// Streams `span` of a blob output file. Decoding runs on a blocking thread and feeds a bounded
/// channel, so a slow client slows the decoder instead of filling memory. A chunk that fails its
/// checksum ends the body with an error: the connection is cut, and no wrong byte goes out. With
/// `fill`, the bytes also go to the file cache, published only if the whole file was sent.
fn decoded_body(
    state: &AppState,
    blob: Arc<Blob<ObjectSource>>,
    file: OutputFile,
    precision: Precision,
    span: Range<u64>,
    permits: [OwnedSemaphorePermit; 2],
    fill: Option<Fill>,
) -> Body {
    let budget = state.decode_budget.clone();
    let label = file.name.clone();
    blocking_body(
        state,
        Served::from(precision),
        permits,
        fill,
        label,
        move |out| blob.send_range_budgeted(&file, span, out, &budget),
    )
}

/// A body written by `write` on a blocking thread, through a bounded channel (backpressure from
/// the client). `hold` (admission permits) lives until the writing ends; a failure mid-body is
/// logged, counted and ends the body with an error, so the client sees a truncated transfer.
fn blocking_body<H: Send + 'static>(
    state: &AppState,
    kind: Served,
    hold: H,
    fill: Option<Fill>,
    label: String,
    write: impl FnOnce(&mut ChannelWriter) -> Result<(), FormatError> + Send + 'static,
) -> Body {
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(BODY_QUEUE);
    let metrics = state.metrics.clone();
    tokio::task::spawn_blocking(move || {
        let _hold = hold;
        let started = Instant::now();
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::new(),
            metrics: metrics.clone(),
            kind,
            fill,
            written: 0,
        };
        let result = write(&mut out).and_then(|()| out.flush().map_err(Into::into));
        match result {
            Ok(()) => {
                metrics.add_decode(kind, out.written, started.elapsed());
                if out.fill.take().is_some_and(Fill::finish) {
                    metrics.add_cache_fill();
                }
            }
            Err(e) if out.client_gone() => {
                tracing::debug!(file = %label, error = %e, "client went away")
            }
            Err(e) => {
                metrics.add_failed_download();
                tracing::error!(file = %label, error = %e, "download aborted: blob failed its checks");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// `Write` into the body channel, in `BODY_PIECE` messages; blocks while the client is behind.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
    /// Counts each piece as it is handed to the connection.
    metrics: Arc<super::metrics::Metrics>,
    kind: Served,
    /// The file cache entry these bytes also go to, if any.
    fill: Option<Fill>,
    /// Bytes sent so far.
    written: u64,
}

impl ChannelWriter {
    fn client_gone(&self) -> bool {
        self.tx.is_closed()
    }

    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.buf));
        self.send(piece)
    }

    /// Hands `piece` to the connection (and the cache fill), blocking while the queue is full.
    fn send(&mut self, piece: Bytes) -> std::io::Result<()> {
        let n = piece.len() as u64;
        if let Some(fill) = self.fill.as_mut() {
            fill.write(&piece);
        }
        self.tx.blocking_send(Ok(piece)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "client closed the connection",
            )
        })?;
        self.metrics.add_served(self.kind, n);
        self.written += n;
        Ok(())
    }
}

impl OutputSink for ChannelWriter {
    fn put(&mut self, piece: Decoded) -> std::io::Result<()> {
        if piece.len() < SEND_AS_IS {
            return self.write_all(&piece);
        }
        self.send_buffered()?;
        // In `BODY_PIECE` slices of the chunk, as the copies were: the queue holds as many
        // bytes as before, and a chunk is freed once its last slice is sent.
        let chunk = Bytes::from_owner(piece);
        for at in (0..chunk.len()).step_by(BODY_PIECE) {
            self.send(chunk.slice(at..chunk.len().min(at + BODY_PIECE)))?;
        }
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // Made when first needed: a body of large decoded pieces copies nothing.
        self.buf.reserve_exact(BODY_PIECE - self.buf.len());
        let room = BODY_PIECE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BODY_PIECE {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffered()
    }
}

/// What a whole body must hash to.
enum Check {
    /// The catalog's sha256 of a plain object.
    Sha256(Sha256, String),
    /// A file cache entry's CRC-32.
    Crc32(crc32fast::Hasher, u32),
}

impl Check {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Check::Sha256(h, _) => h.update(bytes),
            Check::Crc32(h, _) => h.update(bytes),
        }
    }

    fn matches(self) -> bool {
        match self {
            Check::Sha256(h, want) => hex::encode(h.finalize()) == want,
            Check::Crc32(h, want) => h.finalize() == want,
        }
    }
}

/// Passes stored bytes through; with a check (the body is a whole file), hashes them and holds
/// the last piece back until the hash matches, so damaged bytes never arrive as a complete file.
fn verify_stream(
    inner: futures::stream::BoxStream<'static, Result<Bytes, crate::storage::StorageError>>,
    check: Option<Check>,
    key: String,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    struct St {
        inner: futures::stream::BoxStream<'static, Result<Bytes, crate::storage::StorageError>>,
        check: Option<Check>,
        held: Option<Bytes>,
        key: String,
        done: bool,
    }
    let st = St {
        inner,
        check,
        held: None,
        key,
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.inner.next().await {
                Some(Ok(b)) => {
                    let Some(check) = st.check.as_mut() else {
                        return Some((Ok(b), st));
                    };
                    check.update(&b);
                    if let Some(prev) = st.held.replace(b) {
                        return Some((Ok(prev), st));
                    }
                }
                Some(Err(e)) => {
                    tracing::error!(key = %st.key, error = %e, "object read failed mid-body");
                    st.done = true;
                    return Some((Err(std::io::Error::other(e.to_string())), st));
                }
                None => {
                    st.done = true;
                    if !st.check.take()?.matches() {
                        tracing::error!(key = %st.key, "stored bytes do not match their checksum; download aborted");
                        return Some((Err(std::io::Error::other("checksum mismatch")), st));
                    }
                    return st.held.take().map(|b| (Ok(b), st));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded body reaches the connection in order and byte-exact; its large chunks go as
    /// they are, in slices of their own buffers (copies would be separate buffers), and the
    /// small pieces between them are gathered into messages of at most `BODY_PIECE`.
    #[test]
    fn decoded_chunks_reach_the_body_without_a_copy() {
        let blob = Blob::open(crate::synth::encoded_llm_like(1, 1024, 2048, 9)).unwrap();
        let file = blob.file(Precision::High, None).unwrap().clone();
        let mut whole = Vec::new();
        blob.write_file(&file, &mut whole).unwrap();

        let (tx, mut rx) = mpsc::channel(1024);
        let mut out = ChannelWriter {
            tx,
            buf: Vec::new(),
            metrics: Arc::new(super::super::metrics::Metrics::default()),
            kind: Served::High,
            fill: None,
            written: 0,
        };
        let budget = crate::format::DecodeBudget::alone(4);
        blob.send_range_budgeted(&file, 0..file.size, &mut out, &budget)
            .unwrap();
        out.flush().unwrap();
        assert_eq!(out.written, file.size);
        drop(out);
        let mut messages = Vec::new();
        while let Some(m) = rx.blocking_recv() {
            messages.push(m.unwrap());
        }
        let sent: Vec<u8> = messages.iter().flat_map(|m| m.iter().copied()).collect();
        assert!(sent == whole, "the body is the file");
        // Four chunks of 256 rows x 2048 (1 MiB each) after a small header piece, each sent
        // as slices of its own buffer: runs of messages that continue one another in memory.
        assert!(messages.iter().all(|m| m.len() <= BODY_PIECE));
        let mut runs: Vec<usize> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let continues = i > 0 && {
                let before = &messages[i - 1];
                before.as_ptr() as usize + before.len() == m.as_ptr() as usize
            };
            match (continues, runs.last_mut()) {
                (true, Some(run)) => *run += m.len(),
                _ => runs.push(m.len()),
            }
        }
        assert!(runs[0] < SEND_AS_IS, "the header went alone");
        assert_eq!(&runs[1..], &[1 << 20; 4]);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-0", 10), Ok(Some(0..1)));
        assert_eq!(parse_range("bytes=2-5", 10), Ok(Some(2..6)));
        assert_eq!(parse_range("bytes=2-", 10), Ok(Some(2..10)));
        assert_eq!(parse_range("bytes=-3", 10), Ok(Some(7..10)));
        assert_eq!(parse_range("bytes=-30", 10), Ok(Some(0..10)));
        assert_eq!(parse_range("bytes=5-99", 10), Ok(Some(5..10)));
        assert_eq!(parse_range("bytes=10-", 10), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=10-12", 10), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 10), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-0", 0), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=5-2", 10), Ok(None));
        assert_eq!(parse_range("bytes=0-1,4-5", 10), Ok(None));
        assert_eq!(parse_range("items=0-1", 10), Ok(None));
        assert_eq!(parse_range("bytes=a-b", 10), Ok(None));
        assert_eq!(parse_range("bytes=+1-2", 10), Ok(None));
    }

    #[test]
    fn etags_match_quoted_weak_and_star() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, "W/\"abc\", \"def\"".parse().unwrap());
        assert!(none_match(&h, "abc"));
        assert!(none_match(&h, "def"));
        assert!(!none_match(&h, "ab"));
        h.insert(header::IF_NONE_MATCH, "*".parse().unwrap());
        assert!(none_match(&h, "x"));
    }
}
