//! Turning what a URL says (repo, branch, tag, view or commit id) into a commit and a view,
//! for callers allowed to see the repo.

use axum::http::HeaderMap;

use super::AppState;
use super::auth::{Caller, can_read};
use super::error::{ApiError, ApiResult, ErrorKind};
use crate::repo::{self, Resolved};
use crate::storage::RepoRecord;

/// The repo, if it exists and `caller` may see it; a private repo is, to others, absent.
pub async fn visible_repo(
    state: &AppState,
    caller: Option<&Caller>,
    repo: &str,
) -> ApiResult<RepoRecord> {
    match state.catalog.repo(repo).await? {
        Some(r) if can_read(caller, &r) => Ok(r),
        _ => Err(ApiError::new(
            ErrorKind::RepoNotFound,
            format!("model {repo:?} not found"),
        )),
    }
}

/// Looks up `rev` of `repo` for the caller the headers name.
pub async fn resolve(
    state: &AppState,
    headers: &HeaderMap,
    repo: &str,
    rev: &str,
) -> ApiResult<Resolved> {
    let caller = state.writes.caller(&state.catalog, headers).await?;
    visible_repo(state, caller.as_ref(), repo).await?;
    Ok(repo::resolve(&state.catalog, repo, rev).await?)
}
