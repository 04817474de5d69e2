//! The repository model, below the HTTP layer: a repo is a history of commits, each with a
//! parent, a message, an author, a date and a full file set; branches and tags point at
//! commits. Weights are one `.qstore` blob per distinct weight set, shared by every commit that
//! has those weights; every other file is an object addressed by its sha256, stored once across
//! the registry. Each commit has an INT8 twin: the same files with the weights (and
//! `config.json`) in their LLM.int8 form, reached by a fixed twin commit id or by `int8`
//! (following `main`) and `int8-REF` (following any branch or tag).

pub mod commit;
pub mod lfs;
pub mod pushed;
pub mod refs;
pub mod tree;
pub mod xet;

pub use commit::{Change, CommitRequest, Committed, NewFile, PreparedBlob, make_commit};
pub use refs::{Resolved, resolve};

use crate::format::FormatError;
use crate::storage::StorageError;

/// What can go wrong in the repository model; the API maps each to one HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0}")]
    RepoNotFound(String),
    #[error("{0}")]
    RevisionNotFound(String),
    #[error("{0}")]
    EntryNotFound(String),
    /// The request is malformed or names something that cannot be.
    #[error("{0}")]
    BadInput(String),
    /// It exists already (a repo, branch or tag).
    #[error("{0}")]
    Conflict(String),
    /// A credential is missing, unknown or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// A body is larger than its limit.
    #[error("{0}")]
    TooLarge(String),
    /// The client's `parentCommit` is no longer the branch head.
    #[error("{0}")]
    StaleParent(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The data volume filled up while writing (context for the log).
    #[error("{0}")]
    StoreFull(String),
    /// Server-side failure with context (logged, never shown).
    #[error("{0}")]
    Internal(String),
}

impl RepoError {
    /// An I/O failure while writing working files (spools): a full disk is said as such.
    pub fn io(context: &str, e: std::io::Error) -> RepoError {
        if crate::storage::space::is_full(&e) {
            RepoError::StoreFull(format!("{context}: {e}"))
        } else {
            RepoError::Internal(format!("{context}: {e}"))
        }
    }
}

/// Results of the repository model.
pub type RepoResult<T> = Result<T, RepoError>;
