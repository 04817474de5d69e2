//! The Hugging Face-compatible routes (see shared/docs/hub-protocol.md): `resolve` for files and
//! `api/models` for repo info and trees, so `huggingface_hub` and `transformers` work unmodified
//! with `HF_ENDPOINT` pointing here. Revisions `main`/`bf16`/`fp16` serve the high-precision files,
//! `int8` the INT8 files; every (upload, precision) pair has its own 40-hex commit.

use axum::Json;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorKind};
use super::names;
use super::revisions::{self, Resolved, file_set};
use super::serve::{ServedFile, cache_control, respond};
use crate::format::Precision;
use crate::storage::FileEntry;

/// `/{repo_id}/resolve/{revision}/{path}`, decoded segment by segment.
pub(super) struct ResolveRoute {
    repo: String,
    revision: String,
    path: String,
}

/// Recognises a resolve URL; the repo id is one segment or two.
pub(super) fn resolve_route(segments: &[&str]) -> Option<ResolveRoute> {
    let at = segments.iter().position(|s| *s == "resolve")?;
    if !(1..=2).contains(&at) || segments.len() < at + 3 {
        return None;
    }
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    let repo = segments[..at]
        .iter()
        .map(|s| decode(s))
        .collect::<Option<Vec<_>>>()?
        .join("/");
    let path = segments[at + 2..]
        .iter()
        .map(|s| decode(s))
        .collect::<Option<Vec<_>>>()?
        .join("/");
    Some(ResolveRoute {
        repo,
        revision: decode(segments[at + 1])?,
        path,
    })
}

/// `HEAD|GET /{repo_id}/resolve/{revision}/{path}`.
pub(super) async fn resolve(
    state: AppState,
    route: ResolveRoute,
    method: &Method,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    check_hub_repo(&route.repo)?;
    let resolved = revisions::resolve(&state, &route.repo, &route.revision).await?;
    let commit = resolved.commit().to_string();
    let files = repo_files(&state, &resolved).await?;
    let Some(entry) = files.iter().find(|f| f.path == route.path) else {
        return Err(ApiError::new(
            ErrorKind::EntryNotFound,
            format!(
                "{} has no file {:?} at {}",
                route.repo, route.path, route.revision
            ),
        )
        .with_commit(&commit));
    };
    let blob = match entry.object_key {
        Some(_) => None,
        None => Some((state.blob(&resolved.revision).await?, resolved.precision)),
    };
    let served = ServedFile::from_entry(
        entry,
        blob,
        Some(commit),
        cache_control(resolved.pinned, state.config.server.branch_max_age_secs),
    )?;
    respond(&state, served, method, headers).await
}

/// A repo id that cannot exist is, to a Hub client, a repo that does not exist.
fn check_hub_repo(repo: &str) -> ApiResult<()> {
    names::check_repo_name(repo).map_err(|e| ApiError::new(ErrorKind::RepoNotFound, e.message))
}

async fn repo_files(state: &AppState, resolved: &Resolved) -> ApiResult<Vec<FileEntry>> {
    Ok(state
        .catalog
        .files(&resolved.revision.id, file_set(resolved.precision))
        .await?)
}

/// `GET /api/models/{repo_id}[/revision/{rev}]` and `GET /api/models/{repo_id}/tree/{rev}[/path]`.
pub(super) async fn api_models(state: AppState, segments: &[&str]) -> ApiResult<Response> {
    let verb_at = segments
        .iter()
        .position(|s| *s == "revision" || *s == "tree")
        .filter(|&i| (1..=2).contains(&i));
    let (repo_segments, verb, rest) = match verb_at {
        Some(i) => (&segments[..i], Some(segments[i]), &segments[i + 1..]),
        None => (segments, None, &segments[segments.len()..]),
    };
    let decode = |s: &&str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let repo = repo_segments
        .iter()
        .map(decode)
        .collect::<Vec<_>>()
        .join("/");
    check_hub_repo(&repo)?;
    let rev = rest.first().map(decode).unwrap_or_else(|| "main".into());
    let resolved = revisions::resolve(&state, &repo, &rev).await?;
    let files = repo_files(&state, &resolved).await?;
    match verb {
        Some("tree") => {
            let path = rest.get(1..).unwrap_or_default();
            let prefix = path.iter().map(decode).collect::<Vec<_>>().join("/");
            Ok(Json(tree(&files, &prefix)).into_response())
        }
        _ => Ok(Json(model_info(&repo, &resolved, &files)).into_response()),
    }
}

/// Repo info as `huggingface_hub.ModelInfo` reads it.
fn model_info(repo: &str, resolved: &Resolved, files: &[FileEntry]) -> Value {
    let r = &resolved.revision;
    let modified = chrono::DateTime::from_timestamp_millis(r.created_at)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let precision = match resolved.precision {
        Precision::Int8 => "int8",
        Precision::High => r.high_dtype.as_str(),
    };
    json!({
        "_id": resolved.commit(),
        "id": repo,
        "modelId": repo,
        "sha": resolved.commit(),
        "lastModified": modified,
        "createdAt": modified,
        "private": false,
        "gated": false,
        "disabled": false,
        "downloads": 0,
        "likes": 0,
        "library_name": "transformers",
        "tags": ["safetensors", precision],
        "siblings": files.iter().map(|f| json!({"rfilename": f.path})).collect::<Vec<_>>(),
        "usedStorage": r.blob_size + r.plain_size,
    })
}

/// The tree listing: every file under `prefix` (recursive), safetensors marked as LFS.
fn tree(files: &[FileEntry], prefix: &str) -> Value {
    let under = |p: &str| prefix.is_empty() || p.starts_with(&format!("{prefix}/"));
    let entries: Vec<Value> = files
        .iter()
        .filter(|f| under(&f.path))
        .map(|f| {
            let mut e = json!({"type": "file", "path": f.path, "size": f.size, "oid": f.sha256});
            if f.object_key.is_none() {
                e["lfs"] = json!({"oid": f.sha256, "size": f.size, "pointerSize": 134});
            }
            e
        })
        .collect();
    Value::Array(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Option<(String, String, String)> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        resolve_route(&segments).map(|r| (r.repo, r.revision, r.path))
    }

    #[test]
    fn resolve_urls() {
        let t = |a: &str, b: &str, c: &str| Some((a.into(), b.into(), c.into()));
        assert_eq!(
            route("/m/resolve/main/config.json"),
            t("m", "main", "config.json")
        );
        assert_eq!(
            route("/org/m/resolve/refs%2Fpr%2F1/1_Pooling/config.json"),
            t("org/m", "refs/pr/1", "1_Pooling/config.json")
        );
        assert_eq!(route("/resolve/main/x"), None);
        assert_eq!(route("/a/b/c/resolve/main/x"), None);
        assert_eq!(route("/m/resolve/main"), None);
    }
}
