//! The native API: `/models`, `/models/{name}`, `/models/{name}/{int8|bf16|fp16}`. A model is a
//! repo; an upload is a commit on `main` (api/upload.rs); downloads default to `main`.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorKind};
use super::hf::{query_pairs, stored_bytes};
use super::revisions::{self, visible_repo};
use super::serve::{ServedFile, cache_control, respond};
use super::{names, upload};
use crate::format::Precision;
use crate::repo::refs::commit_id_of;
use crate::storage::{BlobRecord, CommitRecord, DeleteCommit, FileSet, RefKind};

/// `/models/...` after the `models` segment.
pub(super) async fn dispatch(
    state: AppState,
    segments: &[&str],
    request: Request,
) -> ApiResult<Response> {
    let method = request.method().clone();
    let precision = segments
        .last()
        .copied()
        .filter(|s| ["int8", "bf16", "fp16"].contains(s) && segments.len() > 1);
    let name_segments = if precision.is_some() {
        &segments[..segments.len() - 1]
    } else {
        segments
    };
    let name = name_segments.join("/");
    if let Some(word) = unserved_precision(segments) {
        return Err(ApiError::new(
            ErrorKind::RevisionNotFound,
            format!(
                "qstore serves {word:?} of no model: ask for /int8, or for /bf16 or /fp16 (the precision the model was uploaded in)"
            ),
        ));
    }
    let allowed: &[&str] = match (&precision, &method) {
        (None, &Method::POST) => &[],
        (None, &Method::DELETE) => &["revision", "force"],
        _ => &["revision", "file"],
    };
    let checked = names::check_repo_name(&name).and_then(|()| {
        match query_pairs(request.uri())
            .iter()
            .find(|(k, _)| !allowed.contains(&k.as_str()))
        {
            Some((k, _)) => Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?} (this request takes {allowed:?})"
            ))),
            None => Ok(()),
        }
    });
    if let Err(e) = checked {
        return Err(match method {
            Method::POST => upload::refuse(request, e).await,
            _ => e,
        });
    }
    match (precision, method) {
        (Some(p), Method::GET | Method::HEAD) => download(state, &name, p, request).await,
        (None, Method::GET) => details(state, &name, request.headers())
            .await
            .map(IntoResponse::into_response),
        (None, Method::POST) => upload::upload(state, &name, request).await,
        (None, Method::DELETE) => delete(state, &name, request).await,
        _ => Err(ApiError::bad_request(
            "use GET /models/NAME, POST /models/NAME, DELETE /models/NAME[?revision=ID], \
             or GET|HEAD /models/NAME/{int8|bf16|fp16}",
        )),
    }
}

/// A last path segment that names a precision qstore does not serve under that spelling
/// (`fp32`, `INT8`...), which would otherwise read as a model name.
fn unserved_precision<'a>(segments: &[&'a str]) -> Option<&'a str> {
    const WORDS: [&str; 14] = [
        "int8", "bf16", "fp16", "fp32", "f32", "f16", "float32", "float16", "bfloat16", "int4",
        "nf4", "fp8", "q8", "q4",
    ];
    let last = *segments.last()?;
    let known = WORDS.contains(&last.to_ascii_lowercase().as_str());
    (segments.len() > 1 && known && !["int8", "bf16", "fp16"].contains(&last)).then_some(last)
}

/// `GET|HEAD /models/{name}/{precision}[?revision=REV][&file=NAME]`.
async fn download(
    state: AppState,
    name: &str,
    precision: &str,
    request: Request,
) -> ApiResult<Response> {
    let query = query_pairs(request.uri());
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let rev = get("revision").unwrap_or("main");
    let resolved = revisions::resolve(&state, request.headers(), name, rev).await?;
    let commit = &resolved.commit;
    let Some(blob) = &commit.blob else {
        return Err(ApiError::new(
            ErrorKind::EntryNotFound,
            format!("model {name:?} has no weights at {rev}"),
        ));
    };
    let precision = match precision {
        "int8" => Precision::Int8,
        p if p == blob.high_dtype => Precision::High,
        p => {
            return Err(ApiError::new(
                ErrorKind::RevisionNotFound,
                format!(
                    "model {name:?} is stored as {}, not {p}: use /{}",
                    blob.high_dtype, blob.high_dtype
                ),
            ));
        }
    };
    let set = match precision {
        Precision::Int8 => FileSet::Int8,
        Precision::High => FileSet::High,
    };
    let files = state.catalog.files(&commit.id, set).await?;
    let blob_files: Vec<_> = files.iter().filter(|f| f.object_key.is_none()).collect();
    let entry = match get("file") {
        Some(f) => blob_files.iter().find(|e| e.path == f).ok_or_else(|| {
            ApiError::new(ErrorKind::EntryNotFound, format!("no file {f:?} in {name}"))
        })?,
        None => {
            let weights: Vec<_> = blob_files
                .iter()
                .filter(|e| e.path.ends_with(".safetensors"))
                .collect();
            match weights.as_slice() {
                [one] => *one,
                _ => {
                    let list: Vec<&str> = blob_files.iter().map(|e| e.path.as_str()).collect();
                    return Err(ApiError::bad_request(format!(
                        "model {name:?} has several files; pass ?file= one of {list:?}"
                    )));
                }
            }
        }
    };
    let opened = state.blob(blob).await?;
    let served = ServedFile::from_entry(
        entry,
        Some((opened, precision)),
        Some(commit_id_of(commit, precision).to_string()),
        cache_control(resolved.pinned, state.config.server.branch_max_age_secs),
    )?;
    respond(&state, served, request.method(), request.headers()).await
}

/// `GET /models`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

/// A model in `GET /models`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ModelSummary {
    pub name: String,
    pub private: bool,
    /// Commits (high-precision ones; each has an INT8 twin).
    pub revisions: usize,
    /// The commit `main` points at.
    pub latest: Option<String>,
    /// `BF16` or `F16`, once weights were uploaded.
    pub high_dtype: Option<String>,
    pub stored_bytes: u64,
    /// Bytes served per precision of `main`'s weights, e.g. `{"BF16": …, "int8": …}`.
    pub served_bytes: std::collections::BTreeMap<String, u64>,
    /// Fraction saved by one blob against the two precisions as separate files.
    pub savings: f64,
}

/// `GET /models/{name}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ModelDetails {
    pub name: String,
    pub high_dtype: Option<String>,
    pub stored_bytes: u64,
    /// Branch name → commit id.
    pub branches: std::collections::BTreeMap<String, String>,
    /// Tag name → commit id.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Newest first.
    pub revisions: Vec<RevisionDetails>,
}

/// A commit in `GET /models/{name}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RevisionDetails {
    pub revision: String,
    pub parent: Option<String>,
    pub title: String,
    pub author: String,
    /// Precision → commit id: the commit and its INT8 twin.
    pub commits: std::collections::BTreeMap<String, String>,
    pub created_at_ms: i64,
    pub tensors: u64,
    pub quantized_tensors: u64,
    pub blob_bytes: u64,
    pub served_bytes: std::collections::BTreeMap<String, u64>,
    pub savings: f64,
    /// Precision → files of that view.
    pub files: std::collections::BTreeMap<String, Vec<FileInfo>>,
}

/// A file of a revision.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `DELETE /models/{name}[?revision=ID]`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// The model name, or the commit id.
    pub deleted: String,
    /// Refs moved to the deleted commit's parent (`force=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_refs: Option<Vec<String>>,
}

/// `GET /models`: every model the caller may see, with its stored and served sizes.
pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<ModelList>> {
    let caller = state.writes.caller(&state.catalog, &headers).await?;
    let mut models = Vec::new();
    let repos = state
        .catalog
        .list_repos("", None, crate::storage::RepoSort::Name, u32::MAX as u64, 0)
        .await?;
    for repo in repos
        .iter()
        .filter(|r| super::auth::can_read(caller.as_ref(), r))
    {
        let head = state
            .catalog
            .ref_target(&repo.name, RefKind::Branch, "main")
            .await?;
        let commits = state.catalog.commits(&repo.name).await?;
        let blob = head.as_ref().and_then(|h| h.blob.as_ref());
        models.push(ModelSummary {
            name: repo.name.clone(),
            private: repo.private,
            revisions: commits.len(),
            latest: head.as_ref().map(|h| h.id.clone()),
            high_dtype: blob.map(|b| b.high_dtype.clone()),
            stored_bytes: stored_bytes(&state, &repo.name).await?,
            served_bytes: served_bytes(blob),
            savings: blob.map_or(0.0, savings),
        });
    }
    Ok(Json(ModelList { models }))
}

fn served_bytes(blob: Option<&BlobRecord>) -> std::collections::BTreeMap<String, u64> {
    match blob {
        Some(b) => [
            (b.high_dtype.clone(), b.high_size),
            ("int8".into(), b.int8_size),
        ]
        .into(),
        None => Default::default(),
    }
}

/// `GET /models/{name}`: commits (newest first), branches, tags, files and sizes.
async fn details(
    state: AppState,
    name: &str,
    headers: &HeaderMap,
) -> ApiResult<Json<ModelDetails>> {
    let caller = state.writes.caller(&state.catalog, headers).await?;
    visible_repo(&state, caller.as_ref(), name).await?;
    let (mut branches, mut tags) = (Default::default(), Default::default());
    for (kind, ref_name, commit) in state.catalog.refs(name).await? {
        let refs: &mut std::collections::BTreeMap<_, _> = match kind {
            RefKind::Branch => &mut branches,
            RefKind::Tag => &mut tags,
        };
        refs.insert(ref_name, commit);
    }
    let commits = state.catalog.commits(name).await?;
    let mut out = Vec::new();
    for c in &commits {
        out.push(commit_details(&state, c).await?);
    }
    let head = state
        .catalog
        .ref_target(name, RefKind::Branch, "main")
        .await?;
    Ok(Json(ModelDetails {
        name: name.to_string(),
        high_dtype: head
            .as_ref()
            .and_then(|h| h.blob.as_ref())
            .map(|b| b.high_dtype.clone()),
        stored_bytes: stored_bytes(&state, name).await?,
        branches,
        tags,
        revisions: out,
    }))
}

async fn commit_details(state: &AppState, c: &CommitRecord) -> ApiResult<RevisionDetails> {
    let high = state.catalog.files(&c.id, FileSet::High).await?;
    let int8 = state.catalog.files(&c.id, FileSet::Int8).await?;
    let list = |files: &[crate::storage::FileEntry]| -> Vec<FileInfo> {
        files
            .iter()
            .map(|f| FileInfo {
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
            })
            .collect()
    };
    let dtype = c.blob.as_ref().map_or("high", |b| b.high_dtype.as_str());
    Ok(RevisionDetails {
        revision: c.id.clone(),
        parent: c.parent.clone(),
        title: c.title.clone(),
        author: c.author.clone(),
        commits: [
            (dtype.to_string(), c.id.clone()),
            ("int8".to_string(), c.int8_id.clone()),
        ]
        .into(),
        created_at_ms: c.created_at,
        tensors: c.blob.as_ref().map_or(0, |b| b.tensors),
        quantized_tensors: c.blob.as_ref().map_or(0, |b| b.quantized),
        blob_bytes: c.blob.as_ref().map_or(0, |b| b.size),
        served_bytes: served_bytes(c.blob.as_ref()),
        savings: c.blob.as_ref().map_or(0.0, savings),
        files: [
            (dtype.to_string(), list(&high)),
            ("int8".to_string(), list(&int8)),
        ]
        .into(),
    })
}

/// Fraction saved by the blob against storing the two precisions' weights separately.
pub(super) fn savings(b: &BlobRecord) -> f64 {
    let separate = (b.high_size + b.int8_size) as f64;
    if separate == 0.0 {
        0.0
    } else {
        1.0 - b.size as f64 / separate
    }
}

/// `DELETE /models/{name}`: the whole model. `?revision=ID`: that one commit, refused while a
/// branch or tag points at it unless `force=true` (they move to its parent).
async fn delete(state: AppState, name: &str, request: Request) -> ApiResult<Response> {
    state
        .writes
        .check(&state.catalog, request.headers(), name)
        .await?;
    let query = query_pairs(request.uri());
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let Some(rev) = get("revision") else {
        super::hub::remove_repo(&state, name).await?;
        let deleted = Deleted {
            deleted: name.to_string(),
            moved_refs: None,
        };
        return Ok((StatusCode::OK, Json(deleted)).into_response());
    };
    let force = matches!(get("force"), Some("true" | "1"));
    let resolved = revisions::resolve(&state, request.headers(), name, rev).await?;
    let id = resolved.commit.id.clone();
    match state.catalog.delete_commit(name, &id, force).await? {
        DeleteCommit::Deleted(moved) => {
            tracing::info!(model = name, commit = %id, ?moved, "commit deleted");
            let deleted = Deleted {
                deleted: id,
                moved_refs: Some(moved),
            };
            Ok(Json(deleted).into_response())
        }
        DeleteCommit::Referenced(refs) => Err(ApiError::new(
            ErrorKind::Conflict,
            format!(
                "{refs:?} point at {id}; pass force=true to move them to its parent (a first commit cannot be deleted while referenced: delete the model)"
            ),
        )),
        DeleteCommit::NotFound => Err(ApiError::new(
            ErrorKind::RevisionNotFound,
            format!("model {name:?} has no revision {rev:?}"),
        )),
    }
}
