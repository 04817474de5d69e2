//! A revision's blob on a server, read with ranged GETs (`GET /api/models/{repo}/qstore/{commit}`):
//! the source `qstore pull` opens and decodes, so only the chunks a precision needs cross the
//! wire. Reads a decode schedules ahead go to a few fetcher threads, so several GETs are in
//! flight; every byte is checked by the decoder (index CRC, chunk CRCs) before it is used.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use crate::format::{BlobSource, ReadAhead};

/// GETs in flight at once.
const FETCHERS: usize = 8;
/// Attempts per ranged GET before the pull fails (a dropped connection is retried).
const ATTEMPTS: usize = 3;

type Reply = SyncSender<std::io::Result<Vec<u8>>>;

/// The blob of one pinned commit on a server.
pub struct RemoteBlob {
    fetch: Arc<Fetch>,
    len: u64,
    jobs: Mutex<Sender<(u64, usize, Reply)>>,
}

/// What each fetcher thread shares.
struct Fetch {
    http: reqwest::blocking::Client,
    url: String,
    token: Option<String>,
    /// Body bytes received, for the progress line and the benchmark.
    received: AtomicU64,
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
        let fetch = Arc::new(Fetch {
            http,
            url,
            token,
            received: AtomicU64::new(0),
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
            jobs: Mutex::new(tx),
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.fetch.received.load(Relaxed)
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
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match self.try_range(offset, len) {
                Ok(bytes) => return Ok(bytes),
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
