//! A data volume low on space, and one that is really full: writes answer 507 with a JSON error
//! saying the store is full, nothing half-written becomes visible, reads go on, and `/readyz`
//! and `/metrics` say so.

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::sha;
use crate::process::ServerProcess;
use crate::server::{Endpoint, client, get_bytes, post_raw, small_model_bytes, unique};

fn assert_store_full(status: StatusCode, v: &Value) {
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_eq!(v["error"]["code"], "InsufficientStorage", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("the store is full"), "{msg}");
}

async fn text(s: &impl Endpoint, path: &str) -> String {
    let (status, body) = get_bytes(s, path).await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn writes_are_refused_with_507_while_the_data_volume_is_below_min_free() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let model = small_model_bytes(71);
    let name = unique("disk/kept");
    let mut server = ServerProcess::start(&data, &[]).await;
    let (status, v) = post_raw(&server, &name, model.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert!(
        text(&server, "/metrics")
            .await
            .contains("qstore_data_low_space 0")
    );
    server.stop();

    // The same data, with more free space required than any disk has.
    let server =
        ServerProcess::start(&data, &[("QSTORE__STORAGE__MIN_FREE_MIB", "4000000000")]).await;
    let (status, v) = post_raw(&server, &unique("disk/refused"), model.clone()).await;
    assert_store_full(status, &v);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("storage.min_free_mib")
    );
    let r = client()
        .post(server.at("/api/repos/create"))
        .json(&serde_json::json!({"name": unique("refused"), "type": "model"}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_store_full(status, &r.json().await.unwrap());
    // Reads go on.
    let (status, body) = get_bytes(&server, &format!("/models/{name}/bf16")).await;
    assert_eq!((status, sha(&body)), (StatusCode::OK, sha(&model)));
    let ready = text(&server, "/readyz").await;
    assert!(ready.starts_with("ready\nlow space:"), "{ready}");
    let metrics = text(&server, "/metrics").await;
    assert!(metrics.contains("qstore_data_low_space 1"), "{metrics}");
    assert!(metrics.contains("qstore_data_free_bytes "), "{metrics}");
    // Deleting frees space, so it is allowed.
    let r = client()
        .delete(server.at(&format!("/models/{name}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "needs root to mount a tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path, _dir: dir }
    }

    fn free_mib(&self) -> u64 {
        qstore::storage::space::free_bytes(&self.path).unwrap() >> 20
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

fn llm_like(dir: &Path, matrices: usize, seed: u64) -> Vec<u8> {
    let path = dir.join(format!("m{seed}.safetensors"));
    qstore::synth::write_llm_like(&path, matrices, 1024, 1024, seed).unwrap();
    std::fs::read(path).unwrap()
}

#[tokio::test]
#[ignore = "needs root: mounts a 24 MiB tmpfs as the data volume"]
async fn a_full_disk_answers_507_keeps_nothing_and_keeps_serving() {
    let disk = SmallDisk::mount(24);
    let data = disk.path.join("data");
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&data, &[("QSTORE__STORAGE__MIN_FREE_MIB", "0")]).await;
    let small = llm_like(work.path(), 1, 1);
    let kept = unique("full/kept");
    let (status, v) = post_raw(&server, &kept, small.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let free_before = disk.free_mib();

    // 16 x 2 MiB of BF16: the spool alone needs more than the disk has left.
    let big = llm_like(work.path(), 16, 2);
    assert!(big.len() as u64 > (free_before + 4) << 20);
    let refused = unique("full/refused");
    let (status, v) = post_raw(&server, &refused, big).await;
    assert_store_full(status, &v);
    // Nothing of it is visible or left behind; what was there is served byte-exact.
    let (status, _) = get_bytes(&server, &format!("/models/{refused}/bf16")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        disk.free_mib() + 1 >= free_before,
        "the refused upload's spool was not removed"
    );
    let (status, body) = get_bytes(&server, &format!("/models/{kept}/bf16")).await;
    assert_eq!((status, sha(&body)), (StatusCode::OK, sha(&small)));
    // Deleting works on a full disk; a small upload then goes through again.
    let r = client()
        .delete(server.at(&format!("/models/{kept}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (status, v) = post_raw(&server, &unique("full/again"), small).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
