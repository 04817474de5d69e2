//! Random access: any byte range equals the slice of the full output, and INT8 never touches the
//! residual section.

use std::sync::atomic::{AtomicU64, Ordering};

use qstore::format::{Blob, BlobSource, DecodeBudget, EncodeOptions, Precision};
use qstore::safetensors::Dtype;
use qstore::synth::Rng;

use crate::helpers::*;

fn multi_chunk_blob(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("m.safetensors");
    write_st(
        &path,
        &[("format", "pt")],
        &[
            T::llm("embed.weight", 50, 30, 1),
            T::llm("a.weight", 37, 53, 2),
            T::new(
                "ids",
                Dtype::I64,
                &[100],
                (0..800).map(|i| (i % 7) as u8).collect(),
            ),
            T::llm("b.weight", 64, 16, 3),
        ],
    );
    let opts = EncodeOptions {
        chunk_elems: 300,
        stream_chunk_bytes: 256,
        ..EncodeOptions::default()
    };
    std::fs::read(encode_with(dir, &[path], None, &[], &opts)).unwrap()
}

#[test]
fn every_sampled_range_matches_the_full_output() {
    let dir = tempfile::tempdir().unwrap();
    let blob = Blob::open(multi_chunk_blob(dir.path())).unwrap();
    let mut rng = Rng::new(42);
    for p in [Precision::High, Precision::Int8] {
        let file = blob.file(p, None).unwrap().clone();
        let mut full = Vec::new();
        blob.write_file(&file, &mut full).unwrap();
        let n = file.size;
        let mut ranges = vec![(0, 0), (0, n), (n, n), (0, 1), (n - 1, n), (8, 9)];
        for _ in 0..300 {
            let a = rng.next_u64() % (n + 1);
            let b = a + rng.next_u64() % (n - a + 1);
            ranges.push((a, b));
        }
        for (a, b) in ranges {
            let mut part = Vec::new();
            blob.write_range(&file, a..b, &mut part).unwrap();
            assert_eq!(part, &full[a as usize..b as usize], "{p:?} range {a}..{b}");
        }
        let mut none = Vec::new();
        assert!(blob.write_range(&file, 0..n + 1, &mut none).is_err());
    }
}

/// A blob in memory that counts reads landing in a forbidden byte range.
struct Watched {
    bytes: Vec<u8>,
    forbidden: (u64, u64),
    hits: AtomicU64,
    reads: AtomicU64,
}

impl BlobSource for Watched {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if offset < self.forbidden.1 && offset + len as u64 > self.forbidden.0 {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes.read_at(offset, len)
    }
}

#[test]
fn int8_outputs_never_read_the_residual_section() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = multi_chunk_blob(dir.path());
    let residual = Blob::open(bytes.clone()).unwrap().index().residual;
    assert!(residual[1] > residual[0]);
    let watched = Watched {
        bytes,
        forbidden: (residual[0], residual[1]),
        hits: AtomicU64::new(0),
        reads: AtomicU64::new(0),
    };
    let blob = Blob::open(watched).unwrap();
    let file = blob.file(Precision::Int8, None).unwrap().clone();
    blob.write_file(&file, &mut Vec::new()).unwrap();
    let high = blob.file(Precision::High, None).unwrap().clone();
    assert!(blob.source().reads.load(Ordering::Relaxed) > 2);
    assert_eq!(blob_hits(&blob), 0, "int8 decode read residual bytes");
    blob.write_file(&high, &mut Vec::new()).unwrap();
    assert!(blob_hits(&blob) > 0, "the watcher does see residual reads");
}

fn blob_hits(blob: &Blob<Watched>) -> u64 {
    blob.source().hits.load(Ordering::Relaxed)
}

#[test]
fn decoding_inside_a_callers_thread_pool_completes() {
    // A caller may already run on a rayon pool (a bench pinning one thread, an application's own
    // pool): the decode must use it without waiting on itself.
    let dir = tempfile::tempdir().unwrap();
    let bytes = multi_chunk_blob(dir.path());
    let blob = std::sync::Arc::new(Blob::open(bytes).unwrap());
    let file = blob.files(Precision::High)[0].clone();
    let mut direct = Vec::new();
    blob.write_file(&file, &mut direct).unwrap();
    for threads in [1, 2] {
        let (blob, file) = (blob.clone(), file.clone());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = Vec::new();
            let alone = DecodeBudget::alone(1);
            pool.install(|| blob.write_range_budgeted(&file, 0..file.size, &mut out, &alone))
                .unwrap();
            done_tx.send(out).unwrap();
        });
        let out = done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("decode inside a {threads}-thread pool never finished"));
        assert!(out == direct, "{threads} threads");
    }
}

/// A server's downloads share one budget of chunks in flight: with no shares each still gets
/// its one chunk, with a few they pass them around; all finish exact and give every share back.
#[test]
fn decodes_sharing_a_budget_finish_exact_and_give_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let blob = std::sync::Arc::new(Blob::open(multi_chunk_blob(dir.path())).unwrap());
    let file = blob.files(Precision::High)[0].clone();
    let mut direct = Vec::new();
    blob.write_file(&file, &mut direct).unwrap();
    for shares in [0, 3] {
        let budget = std::sync::Arc::new(DecodeBudget::shared(4, shares));
        let decodes: Vec<_> = (0..6)
            .map(|_| {
                let (blob, file, budget) = (blob.clone(), file.clone(), budget.clone());
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    blob.write_range_budgeted(&file, 0..file.size, &mut out, &budget)
                        .unwrap();
                    out
                })
            })
            .collect();
        for d in decodes {
            assert!(d.join().unwrap() == direct, "{shares} shares");
        }
        assert_eq!(budget.free_shares(), shares);
    }
}
