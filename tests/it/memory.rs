//! Memory stays bounded on a model larger than the bound (slow: set QSTORE_SLOW_TESTS=1).

use std::process::Command;

/// Bounds documented in docs/FORMAT.md ("Memory").
const ENCODE_BOUND_MIB: u64 = 160;
const DECODE_BOUND_MIB: u64 = 48;

fn slow_tests_enabled() -> bool {
    std::env::var_os("QSTORE_SLOW_TESTS").is_some_and(|v| v != "0")
}

/// Peak RSS in MiB of one `qstore` run, as the process itself reports it (VmHWM). The parent's
/// getrusage is no use here: a child spawned with vfork inherits the test process's own peak.
fn peak_rss_mib(args: &[&str]) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_qstore"))
        .args(args)
        .env("QSTORE_REPORT_PEAK_RSS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qstore {args:?}: {stderr}");
    reported_peak_mib(&stderr)
}

/// The peak RSS a `qstore` process run with QSTORE_REPORT_PEAK_RSS=1 printed, in MiB.
fn reported_peak_mib(stderr: &str) -> u64 {
    let kib: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("qstore: peak RSS "))
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS report in {stderr:?}"));
    kib / 1024
}

/// Writes `dir/big.safetensors`: 6 × 4096 × 4096 BF16 = 192 MiB, larger than every bound.
fn big_model(dir: &std::path::Path, seed: u64) -> (std::path::PathBuf, u64) {
    let model = dir.join("big.safetensors");
    qstore::synth::write_llm_like(&model, 6, 4096, 4096, seed).unwrap();
    let size_mib = std::fs::metadata(&model).unwrap().len() >> 20;
    (model, size_mib)
}

#[test]
fn encode_and_decode_memory_is_bounded_on_a_large_model() {
    if !slow_tests_enabled() {
        eprintln!("skipped: set QSTORE_SLOW_TESTS=1");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (model, size_mib) = big_model(dir.path(), 1);
    assert!(size_mib > ENCODE_BOUND_MIB);
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let blob = dir.path().join("big.qstore");
    let out = dir.path().join("out.safetensors");
    let encode = peak_rss_mib(&["encode", "-q", &s(&model), "-o", &s(&blob)]);
    eprintln!("encode: peak RSS {encode} MiB");
    assert!(encode <= ENCODE_BOUND_MIB, "encode peaked at {encode} MiB");
    for p in ["bf16", "int8"] {
        let decode = peak_rss_mib(&["decode", "-q", &s(&blob), "--precision", p, "-o", &s(&out)]);
        eprintln!("decode {p}: peak RSS {decode} MiB");
        assert!(
            decode <= DECODE_BOUND_MIB,
            "decode {p} peaked at {decode} MiB"
        );
    }
    let status = Command::new(env!("CARGO_BIN_EXE_qstore"))
        .args([
            "decode",
            "-q",
            &s(&blob),
            "--precision",
            "bf16",
            "-o",
            &s(&out),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        crate::helpers::sha(&std::fs::read(&out).unwrap()),
        crate::helpers::sha(&std::fs::read(&model).unwrap())
    );
}

/// Documented in docs/SERVER.md ("Memory").
const SERVER_BOUND_MIB: u64 = 160;

/// A port that was free a moment ago, for a server process started by the test.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn server_memory_is_bounded_during_an_upload_and_16_concurrent_downloads() {
    if !slow_tests_enabled() {
        eprintln!("skipped: set QSTORE_SLOW_TESTS=1");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (model, size_mib) = big_model(dir.path(), 2);
    assert!(
        size_mib > SERVER_BOUND_MIB,
        "the model must be larger than the bound"
    );
    let want = crate::helpers::sha(&std::fs::read(&model).unwrap());
    let port = free_port();
    let server = Command::new(env!("CARGO_BIN_EXE_qstore"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("QSTORE_REPORT_PEAK_RSS", "1")
        .env("QSTORE__LOG__LEVEL", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = crate::server::client();
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let file = tokio::fs::File::open(&model).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let r = client
        .post(format!("{base}/models/big"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);

    let downloads: Vec<_> = (0..16)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{base}/models/big/bf16"));
            tokio::spawn(async move {
                use sha2::Digest;
                let mut r = client.get(url).send().await.unwrap();
                let mut h = sha2::Sha256::new();
                while let Some(piece) = r.chunk().await.unwrap() {
                    h.update(&piece);
                }
                hex::encode(h.finalize())
            })
        })
        .collect();
    for d in downloads {
        assert_eq!(d.await.unwrap(), want);
    }
    let pid = server.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = server.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let peak = reported_peak_mib(&stderr);
    eprintln!(
        "server: peak RSS {peak} MiB (upload + 16 concurrent BF16 downloads of {size_mib} MiB)"
    );
    assert!(peak <= SERVER_BOUND_MIB, "server peaked at {peak} MiB");
}
