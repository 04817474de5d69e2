//! Load and faults together, bounded in time: 16 clients download both precisions of two models,
//! whole and in ranges, from two server processes sharing one store and catalog, every body
//! checked byte for byte, while uploads keep landing on the first server and the second is
//! killed (SIGKILL) and restarted every few seconds. The surviving server must answer every
//! request correctly; nobody may ever get a wrong byte; its memory stays within the bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::sync::RwLock;

use crate::helpers::{check_derived_int8, sha};
use crate::process::ServerProcess;
use crate::server::{client, get_bytes, post_raw, unique};

/// How long the load runs.
const LOAD_SECS: u64 = 25;
const CLIENTS: usize = 16;

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    bytes: AtomicU64,
    /// Failed requests to the server that is never killed: must stay 0.
    errors: AtomicU64,
    /// Requests to the replica being killed that failed (connection refused or cut): expected;
    /// a client retries after 50 ms, as a real one would back off.
    killed_replica_errors: AtomicU64,
    /// Requests the replica being killed answered correctly.
    replica_ok: AtomicU64,
    /// Bodies that differ from the expected bytes: must stay 0, wherever they came from.
    wrong: AtomicU64,
    uploads: AtomicU64,
    restarts: AtomicU64,
}

/// A model's expected bytes in both precisions.
struct Expected {
    name: String,
    bf16: Vec<u8>,
    int8: Vec<u8>,
}

fn llm_like(dir: &std::path::Path, seed: u64) -> Vec<u8> {
    let path = dir.join(format!("m{seed}.safetensors"));
    qstore::synth::write_llm_like(&path, 4, 1024, 1024, seed).unwrap();
    std::fs::read(path).unwrap()
}

/// A random `(precision, range)` request for one of the models and what it must return.
fn pick(models: &[Expected], x: u64) -> (String, Option<(u64, u64)>, &[u8]) {
    let m = &models[(x % models.len() as u64) as usize];
    let (precision, bytes) = match (x >> 8) % 2 {
        0 => ("bf16", &m.bf16[..]),
        _ => ("int8", &m.int8[..]),
    };
    let path = format!("/models/{}/{precision}", m.name);
    if (x >> 16).is_multiple_of(3) {
        return (path, None, bytes);
    }
    let len = bytes.len() as u64;
    let start = (x >> 20) % len;
    let end = (start + 1 + (x >> 40) % (4 << 20)).min(len);
    (
        path,
        Some((start, end)),
        &bytes[start as usize..end as usize],
    )
}

#[tokio::test]
#[ignore = "slow (about 40 s): load while a replica is killed and restarted"]
async fn downloads_stay_exact_under_load_uploads_and_a_replica_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a = ServerProcess::start(
        &data,
        &[
            ("QSTORE_REPORT_PEAK_RSS", "1"),
            ("QSTORE__LOG__LEVEL", "warn"),
        ],
    )
    .await;
    let b = ServerProcess::start(&data, &[("QSTORE__LOG__LEVEL", "warn")]).await;

    let mut models = Vec::new();
    for seed in [1, 2] {
        let bf16 = llm_like(dir.path(), seed);
        let name = unique("load/m");
        let (status, v) = post_raw(&a, &name, bf16.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let (_, int8) = get_bytes(&a, &format!("/models/{name}/int8")).await;
        check_derived_int8(&bf16, &int8, &|_| true);
        models.push(Expected {
            name,
            bf16,
            int8: int8.to_vec(),
        });
    }
    let models = Arc::new(models);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let a = Arc::new(a);
    // The replica comes back on a new port: clients read where it is now.
    let b_url = Arc::new(std::sync::RwLock::new(b.url.clone()));
    let b = Arc::new(RwLock::new(Some(b)));
    let start = Instant::now();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (models, tally, stop, a_url, b_url) = (
                models.clone(),
                tally.clone(),
                stop.clone(),
                a.url.clone(),
                b_url.clone(),
            );
            tokio::spawn(async move {
                let http = client();
                let mut x = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (path, range, want) = pick(&models, x);
                    let to_replica = i % 2 == 1;
                    let base = match to_replica {
                        true => b_url.read().unwrap().clone(),
                        false => a_url.clone(),
                    };
                    let url = format!("{base}{path}");
                    let mut req = http.get(url);
                    if let Some((s, e)) = range {
                        req = req.header("range", format!("bytes={s}-{}", e - 1));
                    }
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    let got = async {
                        let r = req.send().await.map_err(|e| e.to_string())?;
                        let ok = if range.is_some() {
                            StatusCode::PARTIAL_CONTENT
                        } else {
                            StatusCode::OK
                        };
                        if r.status() != ok {
                            return Err(format!("status {}", r.status()));
                        }
                        r.bytes().await.map_err(|e| e.to_string())
                    }
                    .await;
                    match got {
                        Ok(body) if body[..] == *want => {
                            tally.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                            if to_replica {
                                tally.replica_ok.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // A body cut short by the kill is an error, not a wrong byte: it ends
                        // before its length, and the client sees the failure.
                        Ok(body) => {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                            eprintln!("WRONG BYTES: {path} {range:?}: got {} bytes", body.len());
                        }
                        Err(_) if to_replica => {
                            tally.killed_replica_errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("error from the surviving server: {path} {range:?}: {e}");
                        }
                    }
                }
            })
        })
        .collect();

    // Uploads keep landing on the surviving server, each one checked.
    let uploader = {
        let (tally, stop, a) = (tally.clone(), stop.clone(), a.clone());
        let dir = dir.path().to_path_buf();
        tokio::spawn(async move {
            let mut seed = 10;
            while !stop.load(Ordering::Relaxed) {
                let model = llm_like(&dir, seed);
                let name = unique("load/up");
                let (status, v) = post_raw(a.as_ref(), &name, model.clone()).await;
                assert_eq!(status, StatusCode::CREATED, "{v}");
                let (_, back) = get_bytes(a.as_ref(), &format!("/models/{name}/bf16")).await;
                assert_eq!(sha(&back), sha(&model));
                tally.uploads.fetch_add(1, Ordering::Relaxed);
                seed += 1;
            }
        })
    };

    // The replica dies without warning every 3.5 s and comes back on the same data.
    let chaos = {
        let (tally, stop, b, data) = (tally.clone(), stop.clone(), b.clone(), data.clone());
        let b_url = b_url.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(3000)).await;
                if let Some(server) = b.write().await.take() {
                    server.kill9();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let restarted =
                    ServerProcess::start(&data, &[("QSTORE__LOG__LEVEL", "warn")]).await;
                *b_url.write().unwrap() = restarted.url.clone();
                *b.write().await = Some(restarted);
                tally.restarts.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(LOAD_SECS)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    uploader.await.unwrap();
    chaos.await.unwrap();
    let elapsed = start.elapsed().as_secs_f64();

    let a = Arc::into_inner(a).expect("every task has ended");
    let t = &tally;
    let (requests, errors, wrong) = (
        t.requests.load(Ordering::Relaxed),
        t.errors.load(Ordering::Relaxed),
        t.wrong.load(Ordering::Relaxed),
    );
    let peak = crate::memory::stop_and_check_peak(a, dir.path(), "load and faults");
    eprintln!(
        "load and faults: {requests} requests in {elapsed:.1} s ({} MB checked), {errors} errors \
         from the surviving server, {} answered and {} failed by the killed replica, {wrong} \
         wrong bodies, {} uploads, {} kill -9 + restarts, surviving server peak RSS {peak} MiB",
        t.bytes.load(Ordering::Relaxed) >> 20,
        t.replica_ok.load(Ordering::Relaxed),
        t.killed_replica_errors.load(Ordering::Relaxed),
        t.uploads.load(Ordering::Relaxed),
        t.restarts.load(Ordering::Relaxed),
    );
    assert_eq!(wrong, 0, "a client got wrong bytes");
    assert_eq!(errors, 0, "the surviving server failed requests");
    assert!(t.restarts.load(Ordering::Relaxed) >= 3);
    assert!(
        t.replica_ok.load(Ordering::Relaxed) > 50,
        "the replica served between kills"
    );
    assert!(t.uploads.load(Ordering::Relaxed) >= 2);
    assert!(requests > 200, "too little load: {requests}");
}
