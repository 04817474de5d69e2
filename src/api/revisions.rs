//! Turning what a URL says (a branch or a 40-hex commit) into a revision and a precision.

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorKind};
use crate::format::Precision;
use crate::storage::{FileSet, Revision};

/// A revision as a URL named it.
pub struct Resolved {
    pub revision: Revision,
    /// The precision the name implies: `int8` and the int8 commit mean INT8, the rest high.
    pub precision: Precision,
    /// True when the URL named an immutable commit rather than a moving branch.
    pub pinned: bool,
}

impl Resolved {
    /// The commit id of the files served for `precision`.
    pub fn commit(&self) -> &str {
        commit_of(&self.revision, self.precision)
    }
}

pub fn commit_of(revision: &Revision, precision: Precision) -> &str {
    match precision {
        Precision::Int8 => &revision.int8_id,
        Precision::High => &revision.id,
    }
}

pub fn file_set(precision: Precision) -> FileSet {
    match precision {
        Precision::Int8 => FileSet::Int8,
        Precision::High => FileSet::High,
    }
}

/// Looks up `rev` (branch name or commit id) of `repo`.
pub async fn resolve(state: &AppState, repo: &str, rev: &str) -> ApiResult<Resolved> {
    if !state.catalog.repo_exists(repo).await? {
        return Err(ApiError::new(
            ErrorKind::RepoNotFound,
            format!("model {repo:?} not found"),
        ));
    }
    // (revision, names the INT8 files, pinned to an immutable commit)
    let found = if is_commit_id(rev) {
        state.catalog.revision_by_commit(repo, rev).await?.map(|r| {
            let int8 = r.int8_id == rev;
            (r, int8, true)
        })
    } else {
        state
            .catalog
            .branch(repo, rev)
            .await?
            .map(|r| (r, rev == "int8", false))
    };
    if let Some((revision, int8, pinned)) = found {
        let precision = if int8 {
            Precision::Int8
        } else {
            Precision::High
        };
        return Ok(Resolved {
            revision,
            precision,
            pinned,
        });
    }
    Err(ApiError::new(
        ErrorKind::RevisionNotFound,
        format!("model {repo:?} has no revision {rev:?}"),
    ))
}

/// 40 lowercase hex digits, the shape of every commit id we hand out.
pub fn is_commit_id(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh commit id.
pub fn new_commit_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}
