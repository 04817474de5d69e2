//! HTTP: the native `/models/...` API, the Hugging Face-compatible routes, and operations
//! endpoints. Handlers read top-down: route → catalog lookup → blob range read → body stream.

mod access_log;
pub mod auth;
mod bodies;
pub mod error;
mod hf;
mod hub;
mod lfs;
pub mod metrics;
mod models;
pub mod names;
mod openapi;
mod revisions;
mod serve;
mod upload;
mod web;
mod xet;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::config::Config;
use crate::format::{Blob, BlobSource};
use crate::storage::cache::FileCache;
use crate::storage::{BlobRecord, Catalog, ObjectSource, Objects};
pub use auth::WritePolicy;
use error::{ApiError, ApiResult, ErrorKind};
/// Parsers of what clients send, public for the fuzz targets (fuzz/).
pub use hub::{CommitHeader, CommitOp, parse_commit_line};
pub use lfs::{BatchObject, BatchRequest, parse_batch_request};
use metrics::Metrics;
pub use serve::parse_range;

/// Everything a handler needs, passed explicitly (no globals).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub catalog: Catalog,
    pub objects: Objects,
    pub metrics: Arc<Metrics>,
    pub blobs: Arc<BlobCache>,
    pub writes: Arc<WritePolicy>,
    /// Admission for the memory-heavy work: blob encodes and blob decodes.
    pub encodes: Arc<Semaphore>,
    pub decodes: Arc<Semaphore>,
    /// The decoded chunks in flight that downloads share (see [`DecodeBudget`]).
    pub decode_budget: Arc<crate::format::DecodeBudget>,
    /// Admission for the memory blob indexes take while served (`limits.max_index_memory_mib`),
    /// in `INDEX_UNIT`s: a download holds its index's weight until its body ends.
    pub index_memory: Arc<Semaphore>,
    /// Held while a blob never opened before is opened (`blob`).
    pub first_opens: Arc<tokio::sync::Mutex<()>>,
    /// Admission for LFS bodies being received or joined (api/lfs.rs).
    pub lfs_transfers: Arc<Semaphore>,
    /// Decoded files kept on local disk (`cache.max_bytes`), if on.
    pub cache: Option<Arc<FileCache>>,
    /// Where uploads and commits spool files: this process's own directory under `data_dir/tmp`,
    /// locked as this live process's while the value lives (storage::spool).
    pub spool: Arc<crate::storage::spool::ProcessSpool>,
}

/// Index memory is admitted in KiB: a semaphore takes at most `u32` permits at once.
const INDEX_UNIT: usize = 1 << 10;

/// Memory a served blob's index takes per byte of its JSON: the parsed index and the output
/// header a download writes (measured on the worst header the limits allow, docs/SERVER.md).
const INDEX_MEMORY_PER_JSON_BYTE: usize = 3;

/// The `index_memory` semaphore's size.
pub fn index_memory_units(config: &crate::config::Config) -> usize {
    ((config.limits.max_index_memory_mib.max(1) as usize) << 20) / INDEX_UNIT
}

/// A blob opened for a download, with its index's share of `limits.max_index_memory_mib`:
/// held until the download ends, so the indexes in use never take more than that together.
pub struct OpenedBlob {
    pub blob: Arc<Blob<ObjectSource>>,
    pub admission: OwnedSemaphorePermit,
}

impl AppState {
    /// An opened blob (footer and index read and validated), cached per blob, admitted by the
    /// memory its index takes. The index size of a blob is known once it has been opened here;
    /// before that, it is opened first (one such open at a time, so at most one index is held
    /// outside the budget, waiting) and then admitted.
    pub async fn blob(&self, record: &BlobRecord) -> ApiResult<OpenedBlob> {
        if let Some(len) = self.blobs.index_len(&record.id) {
            let admission = self.admit_index(len).await?;
            let blob = self.cached_or_open(record).await?;
            return Ok(OpenedBlob { blob, admission });
        }
        let _one_at_a_time = self.first_opens.lock().await;
        let blob = self.cached_or_open(record).await?;
        let admission = self.admit_index(blob.index_json_len()).await?;
        Ok(OpenedBlob { blob, admission })
    }

    /// Waits for an index's weight in `limits.max_index_memory_mib`; one index alone always
    /// fits.
    async fn admit_index(&self, json_len: usize) -> ApiResult<OwnedSemaphorePermit> {
        let budget = index_memory_units(&self.config);
        let weight = (json_len * INDEX_MEMORY_PER_JSON_BYTE / INDEX_UNIT).clamp(1, budget);
        self.index_memory
            .clone()
            .acquire_many_owned(weight as u32)
            .await
            .map_err(|e| ApiError::internal("index memory admission", e))
    }

    async fn cached_or_open(&self, record: &BlobRecord) -> ApiResult<Arc<Blob<ObjectSource>>> {
        match self.blobs.get(&record.id) {
            Some(blob) => Ok(blob),
            None => self.open_blob(record).await,
        }
    }

    async fn open_blob(&self, record: &BlobRecord) -> ApiResult<Arc<Blob<ObjectSource>>> {
        let source = self.objects.blob_source(&record.object_key).await?;
        if source.len() != record.size {
            return Err(ApiError::internal(
                "blob size differs from the catalog",
                &record.object_key,
            ));
        }
        let blob = tokio::task::spawn_blocking(move || Blob::open(source))
            .await
            .map_err(|e| ApiError::internal("blob open task", e))??;
        let blob = Arc::new(blob);
        tracing::debug!(blob = %record.id, index_json_len = blob.index_json_len(), "blob opened");
        self.blobs.put(&record.id, blob.clone());
        Ok(blob)
    }

    /// A slot of `limits.max_concurrent_lfs_transfers`, taken before a body that streams into
    /// the object store is read (LFS bodies, commits, Xet xorbs and shards); `what` names the
    /// request in the error if the semaphore were closed.
    pub async fn transfer_slot(&self, what: &str) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
        self.lfs_transfers
            .acquire()
            .await
            .map_err(|e| ApiError::internal(&format!("{what} admission"), e))
    }

    /// Free bytes on the data volume and whether they are below `storage.min_free_mib`; None
    /// when the volume cannot be asked (then writes are not held back by it).
    pub fn data_space(&self) -> Option<(u64, bool)> {
        let free = crate::storage::space::free_bytes(&self.config.storage.data_dir)
            .inspect_err(|e| tracing::warn!(error = %e, "free space of the data volume"))
            .ok()?;
        Some((free, free < self.config.storage.min_free_mib << 20))
    }

    /// Refuses a write while the data volume is low on space, before any of its body is read:
    /// better than filling the disk to the last byte mid-upload. Reads go on.
    pub fn check_room(&self) -> ApiResult<()> {
        match self.data_space() {
            Some((free, true)) => Err(ApiError::new(
                ErrorKind::InsufficientStorage,
                format!(
                    "the store is full: {} MiB free on the server's data volume, below its \
                     storage.min_free_mib ({} MiB); writes are refused until space is freed \
                     (downloads still work)",
                    free >> 20,
                    self.config.storage.min_free_mib
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Everything a commit needs, borrowed from the state.
    pub fn repo_store(&self) -> crate::repo::commit::Store<'_> {
        crate::repo::commit::Store {
            catalog: &self.catalog,
            objects: &self.objects,
            spool_root: self.spool.path(),
            encodes: &self.encodes,
        }
    }

    /// The URL clients reach this server at: `server.public_url`, else from the request.
    pub fn base_url(&self, headers: &axum::http::HeaderMap) -> String {
        let configured = self.config.server.public_url.trim_end_matches('/');
        if !configured.is_empty() {
            return configured.to_string();
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let host = header("host").unwrap_or("localhost");
        let scheme = header("x-forwarded-proto").unwrap_or("http");
        format!("{scheme}://{host}")
    }
}

/// Opened blobs by revision id: opening reads the index (a ranged GET or two), which every
/// request for the same revision would otherwise repeat. Bounded by count and by the size of the
/// indexes held (a model of 2^17 tensors has an index of tens of MB); oldest out first, and an
/// index larger than the whole budget is used without being kept.
#[derive(Default)]
pub struct BlobCache {
    entries: Mutex<VecDeque<(String, Arc<Blob<ObjectSource>>)>>,
    /// The index size of every blob opened so far (kept or not): what admits its next download.
    index_lens: Mutex<HashMap<String, usize>>,
}

const BLOB_CACHE_ENTRIES: usize = 32;
const BLOB_CACHE_INDEX_BYTES: usize = 32 << 20;

impl BlobCache {
    fn get(&self, revision: &str) -> Option<Arc<Blob<ObjectSource>>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .find(|(id, _)| id == revision)
            .map(|(_, b)| b.clone())
    }

    fn index_len(&self, revision: &str) -> Option<usize> {
        let lens = self.index_lens.lock().unwrap_or_else(|p| p.into_inner());
        lens.get(revision).copied()
    }

    fn put(&self, revision: &str, blob: Arc<Blob<ObjectSource>>) {
        self.index_lens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(revision.to_string(), blob.index_json_len());
        if blob.index_json_len() > BLOB_CACHE_INDEX_BYTES {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(id, _)| id != revision);
        entries.push_back((revision.to_string(), blob));
        let held = |e: &VecDeque<(String, Arc<Blob<ObjectSource>>)>| {
            e.iter().map(|(_, b)| b.index_json_len()).sum::<usize>()
        };
        while entries.len() > BLOB_CACHE_ENTRIES || held(&entries) > BLOB_CACHE_INDEX_BYTES {
            entries.pop_front();
        }
    }

    /// Forgets a blob (it was deleted).
    pub fn remove(&self, revision: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(id, _)| id != revision);
    }
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi::document))
        .route("/models", get(models::list))
        .fallback(dispatch)
        .layer(DefaultBodyLimit::disable())
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("handler panicked", "see the panic message above").into_response()
        }))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(middleware::from_fn(access_log::log_at_body_end))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                // Headers out; the access log line comes when the body ends (access_log.rs).
                .on_response(DefaultOnResponse::new().level(Level::DEBUG)),
        )
        .with_state(state)
}

/// Routes whose paths embed repo ids of one or two segments, which a route table cannot tell
/// apart; parsed from the raw path so that a percent-encoded `/` in a revision stays one segment.
async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let method = request.method().clone();
    let uri: Uri = request.uri().clone();
    let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let writes = matches!(method, Method::POST | Method::PUT) && segments != ["v1", "telemetry"];
    if writes && let Err(e) = state.check_room() {
        return upload::refuse(request, e).await.into_response();
    }
    let result = match (segments.as_slice(), &method) {
        (["models", rest @ ..], _) => models::dispatch(state, rest, request).await,
        (["api", "whoami-v2"], &Method::GET) => hub::whoami(state, request.headers()).await,
        (["api", "repos", "create"], &Method::POST) => hub::create_repo(state, request).await,
        (["api", "repos", "delete"], &Method::DELETE) => hub::delete_repo(state, request).await,
        (["api", "validate-yaml"], &Method::POST) => hub::validate_yaml(request).await,
        (["api", "models"], &Method::GET) => hf::list_models(state, request).await,
        (["api", "models", rest @ ..], _) => hub::api_models(state, rest, request).await,
        (["lfs", "uploads", rest @ ..], _) => lfs::upload(state, rest, request).await,
        _ if xet::is_cas_route(&segments) => xet::cas(state, &segments, request).await,
        // Xet clients post telemetry at the host root; it is not collected.
        (["v1", "telemetry"], &Method::POST) => Ok(StatusCode::NO_CONTENT.into_response()),
        _ if lfs::is_batch_route(&segments) => lfs::dispatch(state, &segments, request).await,
        (_, &Method::GET) if web::route(uri.path()).is_some() => {
            let page = web::route(uri.path()).expect("checked");
            web::serve(state, page, &uri, request.headers()).await
        }
        (_, &Method::GET | &Method::HEAD) => match hf::resolve_route(&segments) {
            Some(route) => hf::resolve(state, route, &method, request.headers()).await,
            None => Err(not_found(&uri)),
        },
        _ => Err(not_found(&uri)),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn not_found(uri: &Uri) -> ApiError {
    ApiError::new(
        ErrorKind::EntryNotFound,
        format!("no route for {}", uri.path()),
    )
}

async fn readyz(State(state): State<AppState>) -> ApiResult<String> {
    let unavailable = |what: &str, e: crate::storage::StorageError| {
        tracing::warn!(error = %e, "readiness: {what} unreachable");
        ApiError::new(ErrorKind::Unavailable, format!("{what} unreachable"))
    };
    state
        .catalog
        .ping()
        .await
        .map_err(|e| unavailable("catalog", e))?;
    state
        .objects
        .ping()
        .await
        .map_err(|e| unavailable("object store", e))?;
    // Still ready (downloads work), but say why uploads are refused.
    match state.data_space() {
        Some((free, true)) => Ok(format!(
            "ready\nlow space: {} MiB free on the data volume, below storage.min_free_mib \
             ({} MiB): writes are refused\n",
            free >> 20,
            state.config.storage.min_free_mib
        )),
        _ => Ok("ready\n".into()),
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    if let Some((free, low)) = state.data_space() {
        text.push_str(&metrics::data_space_gauges(free, low));
    }
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        text,
    )
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    state
        .metrics
        .add_request(&method, response.status().as_u16());
    response
}
