//! Where models live: blobs and plain files in an object store, and the SQL catalog that says
//! which revisions exist. Backends are configuration (`object_store`, sqlx `Any`).

pub mod cache;
pub mod catalog;
pub mod gc;
pub mod objects;
pub mod space;
pub mod spool;

pub use catalog::{
    BlobRecord, Catalog, CommitOutcome, CommitRecord, DeleteCommit, FileEntry, FileSet, LfsUpload,
    NewCommit, RefKind, RepoRecord, RepoSort, TokenRecord, XetToken,
};
pub use objects::{ObjectSource, Objects, PutStreamError, StoredObject};

/// Failures of the storage layer; all are server-side (the API maps them to 5xx, or 404 for a
/// missing object).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    #[error("catalog: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
}

impl StorageError {
    /// True when the disk (or quota) under the store or catalog is full.
    pub fn is_full(&self) -> bool {
        space::is_full(self)
    }

    /// True when an object the catalog refers to is missing from the store.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StorageError::Object(object_store::Error::NotFound { .. })
        )
    }
}

/// The latest modification time of a path and anything below it: how garbage collection tells
/// an abandoned folder from one an upload is still writing.
pub(crate) fn newest_modification(
    path: &std::path::Path,
) -> std::io::Result<std::time::SystemTime> {
    let meta = std::fs::metadata(path)?;
    let mut newest = meta.modified()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            newest = newest.max(newest_modification(&entry?.path())?);
        }
    }
    Ok(newest)
}
