//! A revision's blob on a server, read with ranged GETs (`GET /api/models/{repo}/qstore/{commit}`):
//! the source `qstore pull` opens and decodes, so only the chunks a precision needs cross the
//! wire. Reads a decode schedules ahead go to a few fetcher threads, so several GETs are in
//! flight; every byte is checked by the decoder (index CRC, chunk CRCs) before it is used.
//!
//! Chunks fetched and found whole (their stored CRC) are also written to a part file beside the
//! output, so a pull run again after an interruption reads them from disk instead of the wire;
//! a chunk read back from it is checked against its CRC again, and fetched when it fails.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, bail};

use crate::format::{BlobSource, Index, ReadAhead};

/// GETs in flight at once.
const FETCHERS: usize = 8;
/// Attempts per ranged GET before the pull fails (a dropped connection is retried).
const ATTEMPTS: usize = 3;

type Reply = SyncSender<std::io::Result<Vec<u8>>>;

/// The blob of one pinned commit on a server.
pub struct RemoteBlob {
    fetch: Arc<Fetch>,
    len: u64,
    /// The server's ETag for the blob (its id): names the part file.
    etag: String,
    jobs: Mutex<Sender<(u64, usize, Reply)>>,
}

/// The chunks of this blob kept on disk: a sparse file as long as the blob, with each verified
/// chunk at its offset.
struct PartFile {
    path: PathBuf,
    file: std::fs::File,
    /// Stored chunks by offset: (stored length, stored CRC-32).
    chunks: HashMap<u64, (usize, u32)>,
}

/// What each fetcher thread shares.
struct Fetch {
    http: reqwest::blocking::Client,
    url: String,
    token: Option<String>,
    /// Body bytes received, for the progress line and the benchmark.
    received: AtomicU64,
    /// Chunk bytes read back from the part file instead of the wire.
    reused: AtomicU64,
    part: OnceLock<PartFile>,
}

impl RemoteBlob {
    /// Asks the server for the blob's length (HEAD); `url` names a pinned commit, so the
    /// blob cannot change under the pull.
    pub fn open(url: String, token: Option<String>) -> Result<RemoteBlob> {
        let http = reqwest::blocking::Client::builder()
            .user_agent(concat!("qstore/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(300))
            .build()?;
        let mut head = http.head(&url);
        if let Some(t) = &token {
            head = head.bearer_auth(t);
        }
        let r = head.send().with_context(|| format!("cannot reach {url}"))?;
        if !r.status().is_success() {
            bail!("{url} answered {}", r.status());
        }
        let len = r
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .context("the server did not say how large the blob is")?;
        let etag = r
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_string())
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()))
            .context("the server did not name the blob (ETag)")?;
        let fetch = Arc::new(Fetch {
            http,
            url,
            token,
            received: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            part: OnceLock::new(),
        });
        let (tx, rx) = channel::<(u64, usize, Reply)>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..FETCHERS {
            let (fetch, rx) = (fetch.clone(), rx.clone());
            std::thread::spawn(move || fetcher(&fetch, &rx));
        }
        Ok(RemoteBlob {
            fetch,
            len,
            etag,
            jobs: Mutex::new(tx),
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.fetch.received.load(Relaxed)
    }

    /// Chunk bytes taken from an earlier, interrupted pull's part file.
    pub fn reused(&self) -> u64 {
        self.fetch.reused.load(Relaxed)
    }

    /// From now on keeps every verified chunk of `index` in `dir/{etag}.part`, and reads chunks
    /// from there when an earlier pull left them. Returns the part file's path.
    pub fn keep_chunks(&self, dir: &Path, index: &Index) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.part", self.etag));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.metadata()?.len() != self.len {
            file.set_len(0)?; // Not this blob's: start over, sparse.
            file.set_len(self.len)?;
        }
        let chunks = index
            .chunks
            .iter()
            .map(|c| (c.offset(), (c.stored_len() as usize, c.stored_crc32())))
            .collect();
        let part = PartFile {
            path: path.clone(),
            file,
            chunks,
        };
        if self.fetch.part.set(part).is_err() {
            bail!("chunks of this blob are kept already");
        }
        Ok(path)
    }
}

impl PartFile {
    /// The chunk at `offset` if the file holds it whole.
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let &(stored, crc) = self.chunks.get(&offset)?;
        if stored != len {
            return None;
        }
        let mut bytes = vec![0; len];
        self.file.read_exact_at(&mut bytes, offset).ok()?;
        (crc32fast::hash(&bytes) == crc).then_some(bytes)
    }

    /// Keeps a fetched chunk if it is whole; a failed write only costs a refetch later.
    fn keep(&self, offset: u64, bytes: &[u8]) {
        let whole = self
            .chunks
            .get(&offset)
            .is_some_and(|&(len, crc)| len == bytes.len() && crc32fast::hash(bytes) == crc);
        if whole && let Err(e) = self.file.write_all_at(bytes, offset) {
            tracing::debug!(path = %self.path.display(), error = %e, "chunk not kept");
        }
    }
}

/// Runs GETs until the blob is dropped (its job sender with it).
fn fetcher(fetch: &Fetch, jobs: &Mutex<Receiver<(u64, usize, Reply)>>) {
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((offset, len, reply)) = job else {
            return;
        };
        let _ = reply.send(fetch.range(offset, len));
    }
}

impl Fetch {
    fn range(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let part = self.part.get();
        if let Some(bytes) = part.and_then(|p| p.read(offset, len)) {
            self.reused.fetch_add(len as u64, Relaxed);
            return Ok(bytes);
        }
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match self.try_range(offset, len) {
                Ok(bytes) => {
                    if let Some(p) = part {
                        p.keep(offset, &bytes);
                    }
                    return Ok(bytes);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn try_range(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let io = |m: String| std::io::Error::other(m);
        if len == 0 {
            return Ok(Vec::new());
        }
        let last = offset + len as u64 - 1;
        let mut get = self
            .http
            .get(&self.url)
            .header(reqwest::header::RANGE, format!("bytes={offset}-{last}"));
        if let Some(t) = &self.token {
            get = get.bearer_auth(t);
        }
        let r = get.send().map_err(|e| io(format!("{}: {e}", self.url)))?;
        let want = format!("bytes {offset}-{last}/");
        let range_ok = r
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(&want));
        if r.status() != reqwest::StatusCode::PARTIAL_CONTENT || !range_ok {
            return Err(io(format!(
                "{} answered {} to bytes {offset}-{last}",
                self.url,
                r.status()
            )));
        }
        let bytes = r.bytes().map_err(|e| io(format!("{}: {e}", self.url)))?;
        self.received.fetch_add(bytes.len() as u64, Relaxed);
        if bytes.len() != len {
            return Err(io(format!(
                "{} sent {} of {len} bytes at {offset}",
                self.url,
                bytes.len()
            )));
        }
        Ok(bytes.to_vec())
    }
}

impl BlobSource for RemoteBlob {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.fetch.range(offset, len)
    }

    fn read_ahead(&self, offset: u64, len: usize) -> ReadAhead {
        let (reply, result) = sync_channel(1);
        let queued = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((offset, len, reply));
        match queued {
            Ok(()) => ReadAhead::started(result, Box::new(())),
            Err(_) => ReadAhead::deferred(),
        }
    }

    fn reads_ahead(&self) -> bool {
        true
    }
}
