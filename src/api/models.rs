//! The native API: `/models`, `/models/{name}`, `/models/{name}/{int8|bf16|fp16}`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorKind};
use super::revisions::{self, file_set};
use super::serve::{ServedFile, cache_control, respond};
use super::{names, upload};
use crate::format::Precision;
use crate::storage::{FileSet, Revision};

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
    if let Err(e) = names::check_repo_name(&name) {
        return Err(match method {
            Method::POST => upload::refuse(request, e).await,
            _ => e,
        });
    }
    match (precision, method) {
        (Some(p), Method::GET | Method::HEAD) => download(state, &name, p, request).await,
        (None, Method::GET) => details(state, &name).await.map(IntoResponse::into_response),
        (None, Method::POST) => upload::upload(state, &name, request).await,
        (None, Method::DELETE) => delete(state, &name, request.headers()).await,
        _ => Err(ApiError::bad_request(
            "use GET /models/NAME, POST /models/NAME, DELETE /models/NAME, \
             or GET|HEAD /models/NAME/{int8|bf16|fp16}",
        )),
    }
}

/// `GET|HEAD /models/{name}/{precision}[?revision=ID][&file=NAME]`.
async fn download(
    state: AppState,
    name: &str,
    precision: &str,
    request: Request,
) -> ApiResult<Response> {
    let query: HashMap<String, String> = Query::try_from_uri(request.uri())
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("query string: {e}")))?;
    let rev = query.get("revision").map_or("main", String::as_str);
    let resolved = revisions::resolve(&state, name, rev).await?;
    let revision = &resolved.revision;
    let precision = match precision {
        "int8" => Precision::Int8,
        p if p == revision.high_dtype => Precision::High,
        p => {
            return Err(ApiError::new(
                ErrorKind::RevisionNotFound,
                format!(
                    "model {name:?} is stored as {}, not {p}: use /{}",
                    revision.high_dtype, revision.high_dtype
                ),
            ));
        }
    };
    let files = state
        .catalog
        .files(&revision.id, file_set(precision))
        .await?;
    let blob_files: Vec<_> = files.iter().filter(|f| f.object_key.is_none()).collect();
    let entry = match query.get("file") {
        Some(f) => blob_files.iter().find(|e| &e.path == f).ok_or_else(|| {
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
    let blob = state.blob(revision).await?;
    let commit = revisions::commit_of(revision, precision).to_string();
    let served = ServedFile::from_entry(
        entry,
        Some((blob, precision)),
        Some(commit),
        cache_control(resolved.pinned, state.config.server.branch_max_age_secs),
    )?;
    respond(&state, served, request.method(), request.headers()).await
}

/// `GET /models`: every model with its stored and served sizes.
pub(super) async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let mut models = Vec::new();
    for name in state.catalog.repos().await? {
        let revisions = state.catalog.revisions(&name).await?;
        let Some(latest) = revisions.first() else {
            continue;
        };
        let stored: u64 = revisions.iter().map(stored_bytes).sum();
        models.push(json!({
            "name": name,
            "revisions": revisions.len(),
            "latest": latest.id,
            "high_dtype": latest.high_dtype,
            "stored_bytes": stored,
            "served_bytes": {latest.high_dtype.as_str(): latest.high_size, "int8": latest.int8_size},
            "savings": savings(latest),
        }));
    }
    Ok(Json(json!({ "models": models })))
}

/// `GET /models/{name}`: revisions, branches, files and sizes.
async fn details(state: AppState, name: &str) -> ApiResult<Json<Value>> {
    let revisions = state.catalog.revisions(name).await?;
    if revisions.is_empty() {
        return Err(ApiError::new(
            ErrorKind::RepoNotFound,
            format!("model {name:?} not found"),
        ));
    }
    let branches: serde_json::Map<String, Value> = state
        .catalog
        .branches(name)
        .await?
        .into_iter()
        .map(|(b, r)| (b, Value::String(r)))
        .collect();
    let mut out = Vec::new();
    for r in &revisions {
        let high = state.catalog.files(&r.id, FileSet::High).await?;
        let int8 = state.catalog.files(&r.id, FileSet::Int8).await?;
        let list = |files: &[crate::storage::FileEntry]| -> Vec<Value> {
            files
                .iter()
                .map(|f| json!({"path": f.path, "size": f.size, "sha256": f.sha256}))
                .collect()
        };
        out.push(json!({
            "revision": r.id,
            "commits": {r.high_dtype.as_str(): r.id, "int8": r.int8_id},
            "created_at_ms": r.created_at,
            "tensors": r.tensors,
            "quantized_tensors": r.quantized,
            "stored_bytes": stored_bytes(r),
            "blob_bytes": r.blob_size,
            "served_bytes": {r.high_dtype.as_str(): r.high_size, "int8": r.int8_size},
            "savings": savings(r),
            "files": {r.high_dtype.as_str(): list(&high), "int8": list(&int8)},
        }));
    }
    Ok(Json(json!({
        "name": name,
        "high_dtype": revisions[0].high_dtype,
        "branches": branches,
        "revisions": out,
    })))
}

/// Blob plus plain files.
fn stored_bytes(r: &Revision) -> u64 {
    r.blob_size + r.plain_size
}

/// Fraction saved by the blob against storing the two precisions' weights separately.
pub(super) fn savings(r: &Revision) -> f64 {
    let separate = (r.high_size + r.int8_size) as f64;
    if separate == 0.0 {
        0.0
    } else {
        1.0 - r.blob_size as f64 / separate
    }
}

/// `DELETE /models/{name}`: the catalog rows first (so nothing dangles), then the objects.
async fn delete(state: AppState, name: &str, headers: &HeaderMap) -> ApiResult<Response> {
    state.writes.check(&state.catalog, headers).await?;
    let Some(revisions) = state.catalog.delete_repo(name).await? else {
        return Err(ApiError::new(
            ErrorKind::RepoNotFound,
            format!("model {name:?} not found"),
        ));
    };
    for r in &revisions {
        state.blobs.remove(&r.id);
        if let Err(e) = state.objects.delete_revision_folder(&r.id).await {
            tracing::warn!(revision = %r.id, error = %e, "objects of a deleted model remain (qstore gc removes them)");
        }
    }
    tracing::info!(model = name, revisions = revisions.len(), "model deleted");
    Ok((
        StatusCode::OK,
        Json(json!({"deleted": name, "revisions": revisions.len()})),
    )
        .into_response())
}
