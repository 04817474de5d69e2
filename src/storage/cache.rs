//! A bounded local cache of decoded files, so a hot model is served at the speed of a file
//! server instead of the decoder's. Entries are named by the sha256 of their content (the
//! catalog's sha256 of the served file), written only from a complete decode whose sha256
//! matched, published by rename, and evicted least-recently-served first. Everything in the
//! object store stays the compact blob; this is each replica's own disk, like a CDN's.
//!
//! An entry is the file's bytes followed by an 8-byte trailer: the CRC-32 of those bytes (u32
//! little-endian) and the magic `QSC1`. Serving checks the CRC-32 as it streams, which catches
//! disk damage as the blob's chunk CRCs do, at a fraction of sha256's cost.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// The cache directory and its size bound.
pub struct FileCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Files being filled now: one download fills a file, concurrent ones just decode.
    filling: Mutex<HashSet<String>>,
}

impl FileCache {
    /// Opens (creating) the cache under `dir`, dropping fills a previous process left half-done.
    /// `None` when `max_bytes` is 0 (the cache is off).
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Option<Arc<FileCache>>> {
        if max_bytes == 0 {
            return Ok(None);
        }
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(FILL_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Some(Arc::new(FileCache {
            dir: dir.to_path_buf(),
            max_bytes,
            filling: Mutex::default(),
        })))
    }

    /// The cached file with this content, opened, if present and whole; marks it as just used
    /// (its mtime orders eviction). Blocking file I/O: call it off the async runtime. The open
    /// file stays readable even if eviction unlinks it meanwhile.
    pub fn lookup(&self, sha256: &str, size: u64) -> Option<Hit> {
        use std::os::unix::fs::FileExt;
        let path = self.entry_path(sha256)?;
        let file = File::options().read(true).write(true).open(&path).ok()?;
        let mut trailer = [0u8; TRAILER_LEN as usize];
        let whole = file.metadata().ok()?.len() == size + TRAILER_LEN
            && file.read_exact_at(&mut trailer, size).is_ok()
            && trailer[4..] == *TRAILER_MAGIC;
        if !whole {
            drop(file);
            self.remove(sha256);
            return None;
        }
        let _ = file.set_modified(SystemTime::now());
        let crc32 = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        Some(Hit { path, file, crc32 })
    }

    /// Drops an entry (found damaged while serving it).
    pub fn remove(&self, sha256: &str) {
        if let Some(path) = self.entry_path(sha256) {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::warn!(sha256, "removed a damaged cache entry"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(sha256, error = %e, "cannot remove a cache entry"),
            }
        }
    }

    /// Starts filling the entry for a file of `size` bytes with this sha256, unless another
    /// download is filling it already or it could never fit.
    pub fn start_fill(self: &Arc<Self>, sha256: &str, size: u64) -> Option<Fill> {
        let path = self.entry_path(sha256)?;
        if size.saturating_add(TRAILER_LEN) > self.max_bytes || path.exists() {
            return None;
        }
        if !self.lock_filling().insert(sha256.to_string()) {
            return None;
        }
        let fill = tempfile::Builder::new()
            .prefix(FILL_PREFIX)
            .tempfile_in(&self.dir);
        match fill {
            Ok(file) => Some(Fill {
                cache: self.clone(),
                sha256: sha256.to_string(),
                size,
                file: Some(file),
                hasher: Sha256::new(),
                crc: crc32fast::Hasher::new(),
                written: 0,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a cache fill");
                self.lock_filling().remove(sha256);
                None
            }
        }
    }

    fn lock_filling(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.filling.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries are named by lowercase hex sha256; anything else is not a cache key.
    fn entry_path(&self, sha256: &str) -> Option<PathBuf> {
        let valid = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| self.dir.join(sha256))
    }

    /// Removes least-recently-served entries until the cache fits its bound.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(FILL_PREFIX))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                tracing::debug!(path = %path.display(), "evicted from the file cache");
            }
        }
    }
}

const FILL_PREFIX: &str = "fill-";
const TRAILER_MAGIC: &[u8; 4] = b"QSC1";
const TRAILER_LEN: u64 = 8;

/// A cache entry to serve: its first `size` bytes are the file, whose CRC-32 must be `crc32`.
pub struct Hit {
    pub path: PathBuf,
    pub file: File,
    pub crc32: u32,
}

/// A cache entry being written from a download's decoded bytes. Published by [`Fill::finish`]
/// only if every byte arrived and the sha256 matches; dropped otherwise, leaving nothing.
pub struct Fill {
    cache: Arc<FileCache>,
    sha256: String,
    size: u64,
    file: Option<tempfile::NamedTempFile>,
    hasher: Sha256,
    crc: crc32fast::Hasher,
    written: u64,
}

impl Fill {
    /// Appends the next decoded bytes. On a write error (disk full...) the fill is abandoned;
    /// the download itself goes on.
    pub fn write(&mut self, bytes: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = file.write_all(bytes) {
            tracing::warn!(error = %e, "cache fill abandoned");
            self.file = None;
            return;
        }
        self.hasher.update(bytes);
        self.crc.update(bytes);
        self.written += bytes.len() as u64;
    }

    /// Publishes the entry if it is complete and its sha256 matches, then evicts to the bound.
    pub fn finish(mut self) -> bool {
        let Some(mut file) = self.file.take() else {
            return false;
        };
        let digest = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if self.written != self.size || digest != self.sha256 {
            tracing::error!(sha256 = %self.sha256, "decoded bytes do not match the file's sha256; not cached");
            return false;
        }
        let Some(path) = self.cache.entry_path(&self.sha256) else {
            return false;
        };
        let crc = std::mem::take(&mut self.crc).finalize();
        if let Err(e) = file
            .write_all(&crc.to_le_bytes())
            .and_then(|()| file.write_all(TRAILER_MAGIC))
        {
            tracing::warn!(error = %e, "cannot finish a cache entry");
            return false;
        }
        match file.persist(&path) {
            Ok(_) => {
                self.cache.evict();
                true
            }
            Err(e) => {
                tracing::warn!(error = %e.error, "cannot publish a cache entry");
                false
            }
        }
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.cache.lock_filling().remove(&self.sha256);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn off_at_zero_bytes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FileCache::open(dir.path(), 0).unwrap().is_none());
    }

    #[test]
    fn a_complete_matching_fill_is_published_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open(dir.path(), 1000).unwrap().unwrap();
        let data = b"decoded bytes".to_vec();
        let key = sha(&data);
        let mut fill = cache.start_fill(&key, data.len() as u64).unwrap();
        assert!(
            cache.start_fill(&key, data.len() as u64).is_none(),
            "one filler at a time"
        );
        fill.write(&data[..4]);
        fill.write(&data[4..]);
        assert!(fill.finish());
        assert_eq!(entries(dir.path()), vec![key.clone()]);
        let hit = cache.lookup(&key, data.len() as u64).unwrap();
        let stored = std::fs::read(&hit.path).unwrap();
        assert_eq!(stored[..data.len()], data);
        assert_eq!(
            &stored[data.len()..],
            [&crc32fast::hash(&data).to_le_bytes()[..], b"QSC1"].concat()
        );
        assert_eq!(hit.crc32, crc32fast::hash(&data));
        assert!(
            cache.start_fill(&key, data.len() as u64).is_none(),
            "already cached"
        );
    }

    #[test]
    fn short_or_wrong_fills_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open(dir.path(), 1000).unwrap().unwrap();
        let data = b"0123456789";
        let key = sha(data);
        let mut short = cache.start_fill(&key, 10).unwrap();
        short.write(&data[..9]);
        assert!(!short.finish());
        let mut wrong = cache.start_fill(&key, 10).unwrap();
        wrong.write(b"0123456780");
        assert!(!wrong.finish());
        let abandoned = cache.start_fill(&key, 10).unwrap();
        drop(abandoned);
        assert!(entries(dir.path()).is_empty());
        assert!(cache.lookup(&key, 10).is_none());
        assert!(cache.start_fill("../etc/passwd", 10).is_none());
    }

    #[test]
    fn eviction_keeps_the_most_recently_served_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open(dir.path(), 41).unwrap().unwrap();
        let put = |data: &[u8]| {
            let mut fill = cache.start_fill(&sha(data), data.len() as u64).unwrap();
            fill.write(data);
            assert!(fill.finish());
        };
        let (a, b, c) = (vec![1u8; 10], vec![2u8; 10], vec![3u8; 10]);
        put(&a);
        put(&b);
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        for (data, age) in [(&a, 0), (&b, 30)] {
            File::options()
                .write(true)
                .open(dir.path().join(sha(data)))
                .unwrap()
                .set_modified(old + std::time::Duration::from_secs(age))
                .unwrap();
        }
        assert!(
            cache.lookup(&sha(&a), 10).is_some(),
            "a is served: now the newest"
        );
        put(&c);
        let mut want = vec![sha(&a), sha(&c)];
        want.sort();
        assert_eq!(entries(dir.path()), want, "b, least recently served, went");
        assert!(
            cache.start_fill(&sha(&[0u8; 42]), 42).is_none(),
            "never fits"
        );
    }

    #[test]
    fn an_entry_of_the_wrong_size_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open(dir.path(), 100).unwrap().unwrap();
        let key = sha(b"abc");
        std::fs::write(dir.path().join(&key), b"abQSC1xx").unwrap();
        assert!(cache.lookup(&key, 3).is_none(), "too short");
        std::fs::write(dir.path().join(&key), b"abc\0\0\0\0QSC2").unwrap();
        assert!(cache.lookup(&key, 3).is_none(), "no trailer");
        assert!(entries(dir.path()).is_empty());
    }
}
