//! Deployment as several replicas: real `qstore serve` processes sharing one object store and
//! one catalog (a data directory on the local backend; the bucket and database the suite's
//! configuration names otherwise), killed without warning, and cleaned up by `qstore gc`.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use qstore::storage::Objects;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::sha;
use crate::process::{ServerProcess, qstore, test_config};
use crate::server::{
    Endpoint, client, get_bytes, post_raw, small_model_bytes, spool_entries, unique, wait_until,
};

/// A raw upload that must succeed; its JSON answer.
async fn upload(server: &ServerProcess, name: &str, model: Vec<u8>) -> Value {
    let (status, v) = post_raw(server, name, model).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

async fn json(server: &ServerProcess, path: &str) -> Value {
    let (status, body) = get_bytes(server, path).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Environment giving a server its own key prefix in a shared bucket (ignored by the local
/// backend, whose data directory is private anyway): for tests that collect garbage, which
/// must not see other tests' uploads in flight.
fn private_prefix() -> [(&'static str, String); 1] {
    [("QSTORE__STORAGE__S3__PREFIX", unique("gc-test"))]
}

#[tokio::test]
async fn two_replicas_share_one_store_and_catalog() {
    let data = tempfile::tempdir().unwrap();
    let a = ServerProcess::start(data.path(), &[]).await;
    let b = ServerProcess::start(data.path(), &[]).await;
    let name = unique("replicas");

    // Uploaded through one, served byte-exact by the other.
    let model = small_model_bytes(40);
    let first = upload(&a, &name, model.clone()).await;
    let (status, bf16) = get_bytes(&b, &format!("/models/{name}/bf16")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha(&bf16), sha(&model));
    let (_, int8) = get_bytes(&b, &format!("/models/{name}/int8")).await;
    assert_eq!(
        sha(&int8),
        first["files"]["int8"][0]["sha256"].as_str().unwrap()
    );

    // Concurrent uploads of the same name through both: every one lands as a revision, and
    // the branches all name the same one of them.
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    let uploads: Vec<_> = (0..8u64)
        .map(|i| {
            let server = if i % 2 == 0 { a.clone() } else { b.clone() };
            let name = name.clone();
            tokio::spawn(async move {
                let model = small_model_bytes(41 + i);
                let v = upload(&server, &name, model.clone()).await;
                (v["revision"].as_str().unwrap().to_string(), sha(&model))
            })
        })
        .collect();
    let mut uploaded = vec![(first["revision"].as_str().unwrap().to_string(), sha(&model))];
    for u in uploads {
        uploaded.push(u.await.unwrap());
    }
    let details = json(&b, &format!("/models/{name}")).await;
    let stored: HashSet<&str> = details["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_str().unwrap())
        .collect();
    let want: HashSet<&str> = uploaded.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(stored, want, "no revision lost, none invented");
    let branches = details["branches"].as_object().unwrap();
    let main = branches["main"].as_str().unwrap();
    assert_eq!(
        branches.len(),
        1,
        "bf16 and int8 are views of main: {branches:?}"
    );
    let winner = &uploaded.iter().find(|(id, _)| id == main).unwrap().1;
    for server in [&a, &b] {
        let (_, bf16) = get_bytes(server.as_ref(), &format!("/models/{name}/bf16")).await;
        assert_eq!(&sha(&bf16), winner, "both replicas serve the winner");
    }
}

#[tokio::test]
async fn a_server_killed_mid_upload_leaves_nothing_visible_and_gc_cleans_up() {
    let data = tempfile::tempdir().unwrap();
    let prefix = private_prefix();
    let env: Vec<(&str, &str)> = prefix.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = test_config(data.path(), &env);
    let objects = Objects::open(&config).unwrap();

    let server = ServerProcess::start(data.path(), &env).await;
    let kept_model = small_model_bytes(50);
    let kept_name = unique("kept");
    let kept = upload(&server, &kept_name, kept_model.clone()).await;
    let kept_blob = kept["blob_key"].as_str().unwrap().to_string();
    // What a server killed between putting a blob and committing it leaves behind.
    let orphan = "0123456789abcdef0123456789abcdef01234567";
    objects
        .put_bytes(
            &Objects::blob_key(orphan),
            Bytes::from_static(b"orphaned blob"),
        )
        .await
        .unwrap();

    // An upload whose body stops halfway, then the server dies with it in flight.
    let name = unique("killed");
    let model = small_model_bytes(51);
    let half = Bytes::from(model[..model.len() / 2].to_vec());
    let body =
        futures::stream::iter([Ok::<_, std::io::Error>(half)]).chain(futures::stream::pending());
    let url = server.at(&format!("/models/{name}"));
    let length = model.len().to_string();
    let in_flight = tokio::spawn(async move {
        client()
            .post(url)
            .header("content-length", length)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
    });
    wait_until(|| spool_entries(data.path()) == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the client sees the connection die"
    );

    // Another replica (here: the restarted one) shows nothing of it.
    let server = ServerProcess::start(data.path(), &env).await;
    let (status, _) = get_bytes(&server, &format!("/models/{name}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let list = json(&server, "/models").await;
    assert!(!list.to_string().contains(&name));
    // Its spool belonged to a process that is provably gone (its lock was free): removed at
    // start, not a day later.
    assert_eq!(
        spool_entries(data.path()),
        0,
        "the dead process's spool is gone"
    );
    assert!(
        server
            .log()
            .contains("removed the spool of a process that is gone"),
        "{}",
        server.log()
    );

    // gc keeps young leftovers (an upload may still be writing them)...
    let out = qstore("gc", data.path(), &env).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("0 unreferenced removed (0 bytes), 1 unreferenced kept"),
        "{report}"
    );

    // ...and removes them once past the grace period, never what the catalog names.
    let out = qstore("gc", data.path(), &env)
        .args(["--grace-secs", "0"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(&format!("removed {}", Objects::blob_key(orphan))),
        "{report}"
    );
    for part in [
        "1 unreferenced removed",
        "0 unreferenced kept",
        "0 upload spools removed",
    ] {
        assert!(report.contains(part), "{report}");
    }
    assert_eq!(spool_entries(data.path()), 0);
    let left: Vec<String> = objects
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.key)
        .collect();
    assert_eq!(left, vec![kept_blob.clone()]);
    let (status, bf16) = get_bytes(&server, &format!("/models/{kept_name}/bf16")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha(&bf16), sha(&kept_model));
}

#[tokio::test]
async fn a_blob_missing_or_truncated_in_the_store_is_a_logged_5xx() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]).await;
    let objects = Objects::open(&test_config(data.path(), &[])).unwrap();
    let name = unique("lost");
    let v = upload(&server, &name, small_model_bytes(60)).await;
    let key = v["blob_key"].as_str().unwrap().to_string();

    objects
        .put_bytes(&key, Bytes::from_static(b"a truncated blob"))
        .await
        .unwrap();
    let (status, body) = get_bytes(&server, &format!("/models/{name}/bf16")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "Internal");

    objects.delete(&key).await.unwrap();
    let (status, _) = get_bytes(&server, &format!("/models/{name}/int8")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let log = server.log();
    assert!(log.contains("blob size differs from the catalog"), "{log}");
    assert!(
        log.contains("an object the catalog refers to is missing"),
        "{log}"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: QSTORE_TEST_CONFIG from scripts/services.sh"]
async fn replicas_starting_together_migrate_a_fresh_catalog_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = test_config(dir.path(), &[]).database_url();
    assert!(
        url.starts_with("postgres"),
        "needs the PostgreSQL catalog: run under scripts/services.sh (QSTORE_TEST_CONFIG)"
    );
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&url).await.unwrap();
    let db = unique("migrate").replace('-', "_");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();
    let fresh = format!("{}/{db}", url.rsplit_once('/').unwrap().0);

    // Four replicas at once on an empty database, each migrating at start.
    let env = [("QSTORE__CATALOG__DATABASE_URL", fresh.as_str())];
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers =
        futures::future::join_all(dirs.iter().map(|d| ServerProcess::start(d.path(), &env))).await;
    let catalog = sqlx::AnyPool::connect(&fresh).await.unwrap();
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&catalog)
            .await
            .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(
        applied.len(),
        files,
        "each migration applied once: {applied:?}"
    );
    assert!(applied.iter().all(|(_, ok)| *ok));

    // And they work as one registry.
    let name = unique("fresh");
    let model = small_model_bytes(70);
    upload(&servers[0], &name, model.clone()).await;
    let (status, bf16) = get_bytes(&servers[3], &format!("/models/{name}/bf16")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha(&bf16), sha(&model));

    drop(servers);
    catalog.close().await;
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn gc_collects_what_no_commit_references_once_past_the_grace_period() {
    use crate::hub::{TOKEN, commit, create_repo, lfs_file, lfs_upload};
    let data = tempfile::tempdir().unwrap();
    let prefix = private_prefix();
    let env: Vec<(&str, &str)> = prefix.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let objects = Objects::open(&test_config(data.path(), &env)).unwrap();
    let server = ServerProcess::start(data.path(), &env).await;
    let model = crate::server::small_model_bytes(70);
    let (a, b) = (unique("gc/a"), unique("gc/b"));
    for repo in [&a, &b] {
        assert_eq!(
            create_repo(&server, repo, TOKEN, false).await.0,
            StatusCode::OK
        );
        let (oid, st) = lfs_upload(&server, repo, &model, false).await;
        assert_eq!(st, StatusCode::OK);
        let (st, v) = commit(
            &server,
            repo,
            "main",
            TOKEN,
            None,
            &[lfs_file("model.safetensors", &oid, model.len())],
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    // Uploaded through LFS and never committed.
    let stray = b"an upload nobody committed".repeat(100);
    lfs_upload(&server, &a, &stray, false).await;
    let keys = || async {
        let mut k: Vec<String> = objects
            .list_all()
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        k.sort();
        k
    };
    let before = keys().await;
    let blob: Vec<&String> = before.iter().filter(|k| k.starts_with("blobs/")).collect();
    assert_eq!(blob.len(), 1, "both repos share one blob: {before:?}");
    let blob = blob[0].clone();

    let gc = |grace: &'static str| {
        let out = qstore("gc", data.path(), &env)
            .args(["--grace-secs", grace])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        report
    };
    let report = gc("86400");
    assert!(
        report.contains("0 unreferenced removed"),
        "young objects stay: {report}"
    );
    assert_eq!(keys().await, before);

    // Repo a goes: its blob stays (b uses it); the raw weights (now in the blob) and the stray
    // upload go.
    let (st, _) = crate::hub::send_delete_repo(&server, &a).await;
    assert_eq!(st, StatusCode::OK);
    let report = gc("0");
    assert!(
        report.contains(&format!("removed {}", Objects::content_key(&sha(&stray)))),
        "{report}"
    );
    assert!(
        report.contains(&format!("removed {}", Objects::content_key(&sha(&model)))),
        "{report}"
    );
    let left = keys().await;
    assert!(left.contains(&blob), "{left:?}");
    let (st, int8) = get_bytes(&server, &format!("/{b}/resolve/int8/model.safetensors")).await;
    assert_eq!(
        (st, sha(&int8)),
        (StatusCode::OK, sha(&crate::helpers::derived_int8(&model)))
    );

    // Repo b goes: the blob's row is released and the blob removed. (Its `.gitattributes` goes
    // too unless another repo in a shared catalog has the same bytes.)
    let (st, _) = crate::hub::send_delete_repo(&server, &b).await;
    assert_eq!(st, StatusCode::OK);
    let report = gc("0");
    assert!(report.contains(&format!("removed {blob}")), "{report}");
    let left = keys().await;
    assert!(
        left.iter().all(|k| k.starts_with("objects/sha256/")),
        "{left:?}"
    );
    assert!(
        left.len() <= 1,
        "at most the shared .gitattributes: {left:?}"
    );
}
