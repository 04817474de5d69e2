//! Object storage for blobs and plain repo files, through `object_store` so the backend is
//! configuration. Every object of a revision lives under `revisions/{id}/`, so an upload that
//! fails can remove exactly what it wrote.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use super::StorageError;
use crate::config::{Config, StorageBackend};
use crate::format::BlobSource;

/// Bytes per multipart part when uploading a blob (S3 needs ≥ 5 MiB per part).
const PART_BYTES: usize = 8 << 20;

/// The object store, shared by every request.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
}

impl Objects {
    /// Opens the backend the configuration names.
    pub fn open(config: &Config) -> Result<Objects, StorageError> {
        match config.storage.backend {
            StorageBackend::Local => {
                let root = config.storage.data_dir.join("objects");
                std::fs::create_dir_all(&root)?;
                let store = LocalFileSystem::new_with_prefix(&root)?.with_automatic_cleanup(true);
                Ok(Objects {
                    store: Arc::new(store),
                })
            }
        }
    }

    /// Where a revision's blob lives.
    pub fn blob_key(revision: &str) -> String {
        format!("revisions/{revision}/model.qstore")
    }

    /// Where a plain file of a revision lives; `variant` keeps per-precision versions apart.
    pub fn file_key(revision: &str, variant: &str, path: &str) -> String {
        format!("revisions/{revision}/{variant}/{path}")
    }

    /// Uploads a local file with a multipart put (aborted on failure), streaming it in parts.
    pub async fn put_file(&self, key: &str, file: &FsPath) -> Result<u64, StorageError> {
        let mut f = tokio::fs::File::open(file).await?;
        let upload = self.store.put_multipart(&Path::from(key)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e.into());
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(4).await {
                let _ = writer.abort().await;
                return Err(e.into());
            }
            writer.write(&buf[..n]);
            total += n as u64;
        }
        writer.finish().await?;
        Ok(total)
    }

    /// Stores a small object in one put.
    pub async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&Path::from(key), PutPayload::from_bytes(data))
            .await?;
        Ok(())
    }

    /// Streams `range` of an object.
    pub async fn get_range_stream(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(range)),
            ..Default::default()
        };
        let result = self.store.get_opts(&Path::from(key), opts).await?;
        Ok(result.into_stream().map(|r| r.map_err(Into::into)).boxed())
    }

    /// Size of an object, or NotFound.
    pub async fn size(&self, key: &str) -> Result<u64, StorageError> {
        Ok(self.store.head(&Path::from(key)).await?.size)
    }

    /// Removes every object under `prefix` (a revision's folder).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let prefix = Path::from(prefix);
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            match self.store.delete(&meta?.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Cheap reachability probe for `/readyz`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.store
            .list_with_delimiter(Some(&Path::from("revisions")))
            .await?;
        Ok(())
    }

    /// A synchronous, ranged view of one blob for the decoder (which runs off the runtime).
    pub async fn blob_source(&self, key: &str) -> Result<ObjectSource, StorageError> {
        let len = self.size(key).await?;
        Ok(ObjectSource {
            store: self.store.clone(),
            path: Path::from(key),
            len,
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

/// A blob in the object store read by ranged GETs, one per chunk the decoder asks for. Must be
/// used from blocking threads (it waits on the runtime), never from async tasks.
pub struct ObjectSource {
    store: Arc<dyn ObjectStore>,
    path: Path,
    len: u64,
    runtime: tokio::runtime::Handle,
}

impl BlobSource for ObjectSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| std::io::Error::other("read past the end of the blob"))?;
        let bytes = self
            .runtime
            .block_on(self.store.get_range(&self.path, offset..end))
            .map_err(|e| std::io::Error::other(format!("object store: {e}")))?;
        if bytes.len() != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "object store returned {} of {len} bytes at {offset}",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes.to_vec())
    }
}
