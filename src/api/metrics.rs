//! Counters exported at `GET /metrics` in the Prometheus text format. Plain atomics: the set is
//! small and fixed, and a registry crate would add more than it saves.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::format::Precision;

/// What a served byte was.
#[derive(Debug, Clone, Copy)]
pub enum Served {
    Int8 = 0,
    High = 1,
    Plain = 2,
    /// A blob as stored, to a client that decodes itself.
    Blob = 3,
}

impl From<Precision> for Served {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Int8 => Served::Int8,
            Precision::High => Served::High,
        }
    }
}

const SERVED_LABELS: [&str; 4] = ["int8", "high", "plain", "blob"];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    served_bytes: [AtomicU64; 4],
    decoded_bytes: [AtomicU64; 2],
    decode_micros: [AtomicU64; 2],
    failed_downloads: AtomicU64,
    cache_hits: AtomicU64,
    cache_fills: AtomicU64,
    uploads_ok: AtomicU64,
    uploads_failed: AtomicU64,
    uploaded_bytes: AtomicU64,
    xet_xorb_bytes: AtomicU64,
    xet_files: AtomicU64,
}

impl Metrics {
    pub fn add_request(&self, method: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((method.to_string(), status)).or_default() += 1;
    }

    pub fn add_served(&self, kind: Served, bytes: u64) {
        self.served_bytes[kind as usize].fetch_add(bytes, Relaxed);
    }

    /// A completed decode of `bytes` output bytes that took `took` (wall time, client included).
    pub fn add_decode(&self, kind: Served, bytes: u64, took: Duration) {
        let i = kind as usize;
        if i < self.decoded_bytes.len() {
            self.decoded_bytes[i].fetch_add(bytes, Relaxed);
            self.decode_micros[i].fetch_add(took.as_micros() as u64, Relaxed);
        }
    }

    pub fn add_failed_download(&self) {
        self.failed_downloads.fetch_add(1, Relaxed);
    }

    /// A whole file served from the local file cache instead of decoded.
    pub fn add_cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }

    /// A decoded file stored in the local file cache.
    pub fn add_cache_fill(&self) {
        self.cache_fills.fetch_add(1, Relaxed);
    }

    pub fn add_upload(&self, ok: bool, bytes: u64) {
        if ok {
            self.uploads_ok.fetch_add(1, Relaxed);
            self.uploaded_bytes.fetch_add(bytes, Relaxed);
        } else {
            self.uploads_failed.fetch_add(1, Relaxed);
        }
    }

    /// A xorb received and stored through the Xet CAS (`bytes` as stored, with its footer).
    pub fn add_xet_xorb(&self, bytes: u64) {
        self.xet_xorb_bytes.fetch_add(bytes, Relaxed);
    }

    /// Files named by an accepted shard (each rebuilt from xorbs and verified, or held already).
    pub fn add_xet_files(&self, n: u64) {
        self.xet_files.fetch_add(n, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP qstore_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE qstore_http_requests_total counter\n");
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((method, status), n) in map.iter() {
            let _ = writeln!(
                out,
                "qstore_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        drop(map);
        out.push_str("# HELP qstore_served_bytes_total Body bytes sent, by what they were.\n");
        out.push_str("# TYPE qstore_served_bytes_total counter\n");
        for (i, label) in SERVED_LABELS.iter().enumerate() {
            let n = self.served_bytes[i].load(Relaxed);
            let _ = writeln!(out, "qstore_served_bytes_total{{kind=\"{label}\"}} {n}");
        }
        out.push_str("# HELP qstore_decoded_bytes_total Bytes of completed blob decodes.\n");
        out.push_str("# TYPE qstore_decoded_bytes_total counter\n");
        out.push_str("# HELP qstore_decode_seconds_total Wall time of completed blob decodes; bytes / seconds is the decode throughput.\n");
        out.push_str("# TYPE qstore_decode_seconds_total counter\n");
        for (i, label) in SERVED_LABELS[..2].iter().enumerate() {
            let bytes = self.decoded_bytes[i].load(Relaxed);
            let secs = self.decode_micros[i].load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "qstore_decoded_bytes_total{{precision=\"{label}\"}} {bytes}"
            );
            let _ = writeln!(
                out,
                "qstore_decode_seconds_total{{precision=\"{label}\"}} {secs}"
            );
        }
        let counters = [
            (
                "qstore_download_errors_total",
                "Downloads cut because stored bytes failed verification or could not be read.",
                self.failed_downloads.load(Relaxed),
            ),
            (
                "qstore_cache_hits_total",
                "Whole files served from the local file cache.",
                self.cache_hits.load(Relaxed),
            ),
            (
                "qstore_cache_fills_total",
                "Decoded files added to the local file cache.",
                self.cache_fills.load(Relaxed),
            ),
            (
                "qstore_uploads_total",
                "Uploads committed.",
                self.uploads_ok.load(Relaxed),
            ),
            (
                "qstore_upload_errors_total",
                "Uploads rejected or failed.",
                self.uploads_failed.load(Relaxed),
            ),
            (
                "qstore_uploaded_bytes_total",
                "Bytes received in committed uploads.",
                self.uploaded_bytes.load(Relaxed),
            ),
            (
                "qstore_xet_xorb_bytes_total",
                "Bytes of xorbs received through the Xet CAS.",
                self.xet_xorb_bytes.load(Relaxed),
            ),
            (
                "qstore_xet_files_total",
                "Files named by accepted Xet shards (rebuilt from xorbs and verified, or held already).",
                self.xet_files.load(Relaxed),
            ),
        ];
        for (name, help, n) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}"
            );
        }
        out
    }
}

/// Gauges of the data volume, read at scrape time: free bytes, and 1 while writes are refused
/// for lack of space (`storage.min_free_mib`).
pub fn data_space_gauges(free: u64, low: bool) -> String {
    format!(
        "# HELP qstore_data_free_bytes Free bytes on the data volume (spool, local objects, SQLite).\n\
         # TYPE qstore_data_free_bytes gauge\nqstore_data_free_bytes {free}\n\
         # HELP qstore_data_low_space 1 while writes are refused for lack of space (storage.min_free_mib).\n\
         # TYPE qstore_data_low_space gauge\nqstore_data_low_space {}\n",
        u8::from(low)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.add_request("GET", 200);
        m.add_request("GET", 200);
        m.add_served(Served::High, 10);
        m.add_decode(Served::Int8, 100, Duration::from_millis(500));
        m.add_upload(true, 7);
        let text = m.render();
        assert!(text.contains("qstore_http_requests_total{method=\"GET\",status=\"200\"} 2"));
        assert!(text.contains("qstore_served_bytes_total{kind=\"high\"} 10"));
        assert!(text.contains("qstore_decoded_bytes_total{precision=\"int8\"} 100"));
        assert!(text.contains("qstore_decode_seconds_total{precision=\"int8\"} 0.5"));
        assert!(text.contains("qstore_uploads_total 1"));
        assert!(text.contains("qstore_uploaded_bytes_total 7"));
    }
}
