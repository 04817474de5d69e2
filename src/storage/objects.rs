//! Object storage for blobs and plain repo files, through `object_store` so the backend is
//! configuration. Plain files are addressed by their sha256 (`objects/sha256/..`), so each is
//! stored once across the registry; blobs live under `blobs/`, LFS uploads in progress under
//! `uploads/`. Older deployments also have `revisions/{id}/...` keys, still served as named.

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

use super::StorageError;
use crate::config::{Config, S3Config, StorageBackend};
use crate::format::{BlobSource, ReadAhead};

/// Bytes per multipart part when uploading a blob (S3 needs ≥ 5 MiB per part).
const PART_BYTES: usize = 8 << 20;

/// The object store, shared by every request.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// The local backend's directory: garbage collection also sees (and removes) the staging
    /// files a killed multipart put leaves, which the `object_store` listing hides.
    local_root: Option<PathBuf>,
    /// What all downloads together may hold read ahead; `None` for the local backend (no
    /// round trip to hide) or when turned off.
    read_ahead: Option<Arc<ReadAheadBudget>>,
}

/// KiB of stored chunks read ahead and not yet decoded, shared by every download.
struct ReadAheadBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

/// The S3 client: bucket and endpoint from the configuration, credentials (and any other
/// `AWS_*` setting) from the environment. Retries are kept short so a dead endpoint answers
/// `/readyz` and downloads with an error within seconds, not minutes.
fn open_s3(config: &S3Config) -> Result<AmazonS3, StorageError> {
    if config.bucket.is_empty() {
        return Err(StorageError::Config(
            "storage.s3.bucket must be set when storage.backend is \"s3\"".into(),
        ));
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&config.bucket)
        .with_virtual_hosted_style_request(!config.path_style)
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            ..Default::default()
        });
    if !config.endpoint.is_empty() {
        builder = builder
            .with_endpoint(&config.endpoint)
            .with_allow_http(config.endpoint.starts_with("http://"));
    }
    if !config.region.is_empty() {
        builder = builder.with_region(&config.region);
    }
    Ok(builder.build()?)
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
                    local_root: Some(root),
                    // A local read costs no round trip: chunks are read when decoded.
                    read_ahead: None,
                })
            }
            StorageBackend::S3 => {
                let s3 = open_s3(&config.storage.s3)?;
                let store: Arc<dyn ObjectStore> = if config.storage.s3.prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, config.storage.s3.prefix.as_str()))
                };
                let kib = u32::try_from(config.storage.read_ahead_mib.saturating_mul(1024))
                    .unwrap_or(u32::MAX);
                Ok(Objects {
                    store,
                    local_root: None,
                    read_ahead: (kib > 0).then(|| {
                        Arc::new(ReadAheadBudget {
                            kib: Arc::new(Semaphore::new(kib as usize)),
                            total_kib: kib,
                        })
                    }),
                })
            }
        }
    }

    /// Where the plain object with this sha256 lives.
    pub fn content_key(sha256: &str) -> String {
        let fan = sha256.get(..2).unwrap_or("xx");
        format!("objects/sha256/{fan}/{sha256}")
    }

    /// Where a new blob lives.
    pub fn blob_key(id: &str) -> String {
        format!("blobs/{id}.qstore")
    }

    /// Where a xorb of the Xet write path lives (its chunks and footer); the catalog's
    /// `referenced_keys` builds the same key in SQL.
    pub fn xorb_key(hash: &str) -> String {
        format!("xet/xorbs/{hash}")
    }

    /// Where part `n` (or, for 0, the whole body) of an LFS upload in progress lands.
    pub fn upload_part_key(upload: &str, n: u64) -> String {
        format!("uploads/{upload}/{n:05}")
    }

    /// True when an object with this key and size exists (a content-addressed object that
    /// needs no second put).
    pub async fn has(&self, key: &str, size: u64) -> Result<bool, StorageError> {
        match self.store.head(&Path::from(key)).await {
            Ok(meta) => Ok(meta.size == size),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a local file under its content key unless it is there already.
    pub async fn put_content_file(
        &self,
        sha256: &str,
        size: u64,
        file: &FsPath,
    ) -> Result<String, StorageError> {
        let key = Self::content_key(sha256);
        if !self.has(&key, size).await? {
            self.put_file(&key, file).await?;
        }
        Ok(key)
    }

    /// Stores small bytes under their content key unless they are there already.
    pub async fn put_content_bytes(
        &self,
        sha256: &str,
        data: Bytes,
    ) -> Result<String, StorageError> {
        let key = Self::content_key(sha256);
        if !self.has(&key, data.len() as u64).await? {
            self.put_bytes(&key, data).await?;
        }
        Ok(key)
    }

    /// Moves an object (an LFS upload, once verified, to its content key).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.store
            .rename(&Path::from(from), &Path::from(to))
            .await?;
        Ok(())
    }

    /// Removes one object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The first `len` bytes of an object, or fewer if it is shorter.
    pub async fn read_prefix(&self, key: &str, len: u64) -> Result<Bytes, StorageError> {
        let size = self.size(key).await?;
        Ok(self
            .store
            .get_range(&Path::from(key), 0..len.min(size))
            .await?)
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

    /// Streams `body` into a new object with a multipart put, counting and hashing it; more
    /// than `limit` bytes, or a body that fails, aborts the put and leaves nothing.
    pub async fn put_stream<S, E>(
        &self,
        key: &str,
        mut body: S,
        limit: u64,
    ) -> Result<(u64, String), PutStreamError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use sha2::Digest;
        let upload = self
            .store
            .put_multipart(&Path::from(key))
            .await
            .map_err(|e| PutStreamError::Store(e.into()))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut hasher = sha2::Sha256::new();
        let mut total = 0u64;
        while let Some(piece) = body.next().await {
            let failed = match piece {
                Err(e) => Some(PutStreamError::Body(e.to_string())),
                Ok(piece) => {
                    total += piece.len() as u64;
                    if total > limit {
                        Some(PutStreamError::TooLarge(limit))
                    } else if let Err(e) = writer.wait_for_capacity(2).await {
                        Some(PutStreamError::Store(e.into()))
                    } else {
                        hasher.update(&piece);
                        writer.put(piece);
                        None
                    }
                }
            };
            if let Some(e) = failed {
                let _ = writer.abort().await;
                return Err(e);
            }
        }
        writer
            .finish()
            .await
            .map_err(|e| PutStreamError::Store(e.into()))?;
        Ok((total, hex::encode(hasher.finalize())))
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

    /// Removes every object under `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        if let Some(root) = &self.local_root {
            let dir = root.join(prefix.trim_end_matches('/'));
            return match tokio::fs::remove_dir_all(&dir).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            };
        }
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

    /// Every object in the store with the time it was last written: what garbage collection
    /// weighs against the catalog. The local backend reads the directory itself, so the staging
    /// files of a put cut short by a crash count too (under the key they were staged for plus a
    /// `#` suffix, which no catalog row names).
    pub async fn list_all(&self) -> Result<Vec<StoredObject>, StorageError> {
        if let Some(root) = &self.local_root {
            let root = root.clone();
            return tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                local_objects(&root, &root, &mut out)?;
                Ok(out)
            })
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
        }
        let mut out = Vec::new();
        let mut listing = self.store.list(None);
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            out.push(StoredObject {
                key: meta.location.to_string(),
                size: meta.size,
                modified: SystemTime::from(meta.last_modified),
            });
        }
        Ok(out)
    }

    /// Cheap reachability probe for `/readyz`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.store
            .list_with_delimiter(Some(&Path::from("blobs")))
            .await?;
        Ok(())
    }

    /// A synchronous, ranged view of one blob for the decoder (which runs off the runtime).
    pub async fn blob_source(&self, key: &str) -> Result<ObjectSource, StorageError> {
        let len = self.size(key).await?;
        let local = self.local_root.as_ref().map(|root| root.join(key));
        Ok(ObjectSource {
            store: self.store.clone(),
            read_ahead: self.read_ahead.clone(),
            path: Path::from(key),
            len,
            runtime: tokio::runtime::Handle::current(),
            local,
        })
    }
}

/// Why [`Objects::put_stream`] stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum PutStreamError {
    /// The body failed (the client's side).
    #[error("the upload ended early: {0}")]
    Body(String),
    #[error("more than the {0}-byte limit")]
    TooLarge(u64),
    #[error(transparent)]
    Store(#[from] StorageError),
}

/// One object as garbage collection sees it.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

fn local_objects(
    root: &FsPath,
    dir: &FsPath,
    out: &mut Vec<StoredObject>,
) -> Result<(), StorageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            local_objects(root, &entry.path(), out)?;
        } else {
            let key = entry
                .path()
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(StoredObject {
                key,
                size: meta.len(),
                modified: meta.modified()?,
            });
        }
    }
    Ok(())
}

/// A blob in the object store read by ranged GETs, one per chunk the decoder asks for. Must be
/// used from blocking threads (it waits on the runtime), never from async tasks.
pub struct ObjectSource {
    store: Arc<dyn ObjectStore>,
    read_ahead: Option<Arc<ReadAheadBudget>>,
    path: Path,
    len: u64,
    runtime: tokio::runtime::Handle,
    /// The local backend's file: a chunk is an `open` and a `pread` into the decoder's reused
    /// buffer, on the decoding thread. Through `object_store`, each chunk cost a blocking task
    /// on the runtime and the thread handoffs, a fresh buffer and a copy of it: a BF16
    /// download ran at four fifths of this speed. The file is not kept open: a cached blob
    /// that garbage collection removes must free its disk space.
    local: Option<PathBuf>,
}

impl BlobSource for ObjectSource {
    fn len(&self) -> u64 {
        self.len
    }

    /// One ranged GET started on the runtime now; a download's writer thread schedules the
    /// next chunks' reads this way, so round trips overlap instead of adding up. Bytes read
    /// ahead and not yet decoded count against the store's read-ahead budget, shared by every
    /// download: when it is spent, the writer waits here, which bounds their memory.
    fn read_ahead(&self, offset: u64, len: usize) -> ReadAhead {
        let Some(budget) = &self.read_ahead else {
            return ReadAhead::deferred(); // Local (no round trip to hide), or turned off.
        };
        // Waiting for budget cannot deadlock: it is held only by reads in flight and by chunks
        // queued for decoding, which the decode pool frees without waiting on anything.
        let kib = u32::try_from(len.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(budget.total_kib);
        let Ok(permit) = self
            .runtime
            .block_on(budget.kib.clone().acquire_many_owned(kib))
        else {
            return ReadAhead::deferred(); // The semaphore is never closed.
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (store, path) = (self.store.clone(), self.path.clone());
        let end = offset.saturating_add(len as u64);
        self.runtime.spawn(async move {
            let read = store
                .get_range(&path, offset..end)
                .await
                .map(|bytes| bytes.to_vec())
                .map_err(|e| std::io::Error::other(format!("object store: {e}")));
            let _ = tx.send(read);
        });
        ReadAhead::started(rx, Box::new(permit))
    }

    fn reads_ahead(&self) -> bool {
        self.read_ahead.is_some()
    }

    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_at_into(offset, len, &mut buf)?;
        Ok(buf)
    }

    fn read_at_into(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| std::io::Error::other("read past the end of the blob"))?;
        if let Some(path) = &self.local {
            return std::fs::File::open(path)?.read_at_into(offset, len, buf);
        }
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
        buf.clear();
        buf.extend_from_slice(&bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local blob is read chunk by chunk straight from its file, bounds checked, and not
    /// held open: once removed (as garbage collection does), reads fail instead of keeping
    /// its disk space.
    #[tokio::test]
    async fn a_local_blob_is_read_from_its_file_and_not_held_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.data_dir = dir.path().to_owned();
        let objects = Objects::open(&config).unwrap();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let key = Objects::blob_key("0123");
        objects
            .put_bytes(&key, Bytes::from(bytes.clone()))
            .await
            .unwrap();
        let source = objects.blob_source(&key).await.unwrap();
        assert_eq!(source.len(), 100_000);
        let objects2 = objects.clone();
        tokio::task::spawn_blocking(move || {
            assert!(source.read_at(99_000, 1000).unwrap() == bytes[99_000..]);
            let mut buf = vec![7; 5];
            source.read_at_into(10, 20_000, &mut buf).unwrap();
            assert!(buf == bytes[10..20_010]);
            let e = source.read_at(99_001, 1000).unwrap_err();
            assert!(e.to_string().contains("past the end"), "{e}");
            let runtime = tokio::runtime::Handle::current();
            runtime.block_on(objects2.delete(&key)).unwrap();
            let e = source.read_at(0, 10).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        })
        .await
        .unwrap();
    }
}
