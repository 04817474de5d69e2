//! Where models live: blobs and plain files in an object store, and the SQL catalog that says
//! which revisions exist. Backends are configuration (`object_store`, sqlx `Any`).

pub mod catalog;
pub mod objects;

pub use catalog::{Catalog, FileEntry, FileSet, NewRevision, Revision};
pub use objects::{ObjectSource, Objects};

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
}

impl StorageError {
    /// True when an object the catalog refers to is missing from the store.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StorageError::Object(object_store::Error::NotFound { .. })
        )
    }
}
