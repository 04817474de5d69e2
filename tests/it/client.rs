//! `qstore login`, `ls` and `rm` against a server, as a user runs them: the login file and its
//! mode, the environment overriding it, one readable line on every error, and a delete that asks.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use reqwest::StatusCode;

use crate::hub::{TOKEN, commit_weights, create_repo};
use crate::server::{Endpoint, Opts, TestServer, small_model_bytes, unique};

/// Runs the CLI with its config directory in `home` and no endpoint or token from the caller's
/// environment.
pub fn qstore(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qstore"));
    c.args(args)
        .env("XDG_CONFIG_HOME", home)
        .stdin(Stdio::null());
    for v in ["QSTORE_ENDPOINT", "QSTORE_TOKEN", "HF_ENDPOINT", "HF_TOKEN"] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failure: non-zero exit and exactly one line on stderr.
pub fn one_line_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected a failure: {}", stdout(o));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

#[tokio::test]
async fn login_ls_and_rm_work_against_a_server_and_fail_in_one_clear_line() {
    let s = TestServer::with(Opts {
        tokens: vec![TOKEN.into()],
        ..Opts::default()
    });
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let login_file = home.join("qstore/login.json");

    // A wrong token is refused by the server and nothing is stored.
    let o = qstore(
        home,
        &[],
        &["login", "--endpoint", s.url(), "--token", "wrong"],
    );
    assert!(one_line_error(&o).contains("invalid or revoked API token"));
    assert!(!login_file.exists());

    let o = qstore(
        home,
        &[],
        &["login", "--endpoint", s.url(), "--token", TOKEN],
    );
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("as admin"), "{}", stdout(&o));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&login_file).unwrap()).unwrap();
    assert_eq!(stored["token"], TOKEN);
    assert_eq!(stored["endpoint"], s.url().trim_end_matches('/'));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&login_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let repo = unique("org/client");
    let (status, _) = create_repo(&s, &repo, TOKEN, true).await;
    assert_eq!(status, StatusCode::OK);
    commit_weights(&s, &repo, &small_model_bytes(7)).await;

    // ls through the stored login sees the private repo; without the token it does not.
    let o = qstore(home, &[], &["ls"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains(&repo) && stdout(&o).contains("private"));
    let o = qstore(home, &[("QSTORE_TOKEN", "")], &["ls"]);
    assert!(
        stdout(&o).contains(&repo),
        "an empty variable does not hide the login"
    );
    let other = tempfile::tempdir().unwrap();
    let o = qstore(other.path(), &[("QSTORE_ENDPOINT", s.url())], &["ls"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        !stdout(&o).contains(&repo),
        "a private repo listed without a token"
    );

    let o = qstore(home, &[], &["ls", &repo]);
    assert!(o.status.success(), "{o:?}");
    let listing = stdout(&o);
    assert!(listing.contains("branch  main") && listing.contains("model.safetensors"));
    let o = qstore(home, &[], &["ls", &format!("{repo}@int8")]);
    assert!(stdout(&o).contains("int8"), "{}", stdout(&o));
    let o = qstore(home, &[], &["ls", "org/no-such-repo"]);
    assert!(one_line_error(&o).contains("not found"));
    let o = qstore(home, &[], &["ls", "../etc"]);
    assert!(one_line_error(&o).contains("model name"));

    // rm asks; without a terminal and without --yes nothing is deleted.
    let o = qstore(home, &[], &["rm", &repo]);
    assert!(one_line_error(&o).contains("pass --yes"));
    let o = qstore(home, &[], &["ls", &repo]);
    assert!(o.status.success(), "the repo went without confirmation");
    let o = qstore(home, &[], &["rm", &repo, "--yes"]);
    assert!(o.status.success(), "{o:?}");
    let o = qstore(home, &[], &["ls", &repo]);
    assert!(one_line_error(&o).contains("not found"));

    // The environment wins over the stored login: a server that is not there is named.
    let o = qstore(home, &[("QSTORE_ENDPOINT", "http://127.0.0.1:9")], &["ls"]);
    assert!(one_line_error(&o).contains("cannot reach http://127.0.0.1:9"));
}

/// sha256 of a file the server serves at `rev`.
async fn served_sha(s: &TestServer, repo: &str, rev: &str, path: &str) -> String {
    let r = crate::server::client()
        .get(s.at(&format!("/{repo}/resolve/{rev}/{path}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    crate::helpers::sha(&r.bytes().await.unwrap())
}

fn file_sha(path: &Path) -> String {
    crate::helpers::sha(&std::fs::read(path).unwrap())
}

#[tokio::test]
async fn pull_rebuilds_each_precision_from_fewer_bytes_than_it_writes() {
    let s = TestServer::with(Opts {
        tokens: vec![TOKEN.into()],
        ..Opts::default()
    });
    let repo = unique("org/pulled");
    let (status, _) = create_repo(&s, &repo, TOKEN, true).await;
    assert_eq!(status, StatusCode::OK);
    let model = small_model_bytes(9);
    let (oid, status) = crate::hub::lfs_upload(&s, &repo, &model, false).await;
    assert_eq!(status, StatusCode::OK);
    let config = br#"{"model_type": "llama"}"#;
    let pooling = br#"{"word_embedding_dimension": 256}"#;
    let ops = [
        crate::hub::lfs_file("model.safetensors", &oid, model.len()),
        crate::hub::inline("config.json", config),
        crate::hub::inline("1_Pooling/config.json", pooling),
    ];
    let (status, answer) = crate::hub::commit(&s, &repo, "main", TOKEN, None, &ops).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let commit = answer["commitOid"].as_str().unwrap().to_string();

    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let env = [("QSTORE_ENDPOINT", s.url()), ("QSTORE_TOKEN", TOKEN)];
    let pull = |target: &str, args: &[&str], dir: &str| {
        let dir = out.path().join(dir);
        let mut all = vec!["pull", target, "-q", "-o", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        (qstore(home.path(), &env, &all), dir)
    };

    // The uploaded precision, by default: byte-exact, with the repo's other files in place.
    let (o, high) = pull(&repo, &[], "high");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read(high.join("model.safetensors")).unwrap(),
        model
    );
    assert_eq!(std::fs::read(high.join("config.json")).unwrap(), config);
    assert_eq!(
        std::fs::read(high.join("1_Pooling/config.json")).unwrap(),
        pooling
    );
    let line = stdout(&o);
    let ratio: f64 = line
        .split(" received (")
        .nth(1)
        .and_then(|r| r.split('x').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no ratio in {line:?}"));
    assert!(ratio < 0.8, "received {ratio}x of what was written: {line}");

    // INT8 at the branch and at the pinned commit: what the server's resolve serves.
    let want = served_sha(&s, &repo, "int8", "model.safetensors").await;
    let views: [(String, &[&str]); 3] = [
        (repo.clone(), &["--precision", "int8"]),
        (format!("{repo}@{commit}"), &["--precision", "int8"]),
        (format!("{repo}@int8"), &[]),
    ];
    for (target, args) in views {
        let (o, int8) = pull(&target, args, "int8");
        assert!(o.status.success(), "{target}: {o:?}");
        assert_eq!(file_sha(&int8.join("model.safetensors")), want, "{target}");
        // The INT8 view's config carries `quantization_config`, as the server serves it.
        let served_config = served_sha(&s, &repo, "int8", "config.json").await;
        assert_eq!(file_sha(&int8.join("config.json")), served_config);
    }

    // Errors: one line each, and nothing written for them.
    let (o, dir) = pull(&repo, &["--precision", "fp16"], "fp16");
    assert!(one_line_error(&o).contains("stored as bf16"));
    assert!(!dir.join("model.safetensors").exists());
    let (o, _) = pull(&format!("{repo}@no-such-branch"), &[], "missing");
    assert!(one_line_error(&o).contains("404"));
    let o = qstore(
        home.path(),
        &[("QSTORE_ENDPOINT", s.url())],
        &[
            "pull",
            &repo,
            "-q",
            "-o",
            out.path().join("anon").to_str().unwrap(),
        ],
    );
    assert!(
        one_line_error(&o).contains("not found"),
        "a private repo without a token"
    );
}

/// What a test proxy does to a ranged answer of the blob resource (`/qstore/`), given the
/// offset the range starts at.
type Tamper = dyn Fn(u64) -> Tampered + Send + Sync;

enum Tampered {
    Pass,
    /// Flip one byte in the middle: a server, or a network, that sends wrong bytes.
    FlipByte,
    /// 503, as a server that went away.
    Refuse,
}

/// A proxy in front of `upstream` that forwards everything, and treats each ranged answer of
/// the blob resource as `tamper` says.
async fn proxy(upstream: String, tamper: Arc<Tamper>) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::{HeaderMap, StatusCode as Code};
    let handler = move |request: Request| {
        let (upstream, tamper) = (upstream.clone(), tamper.clone());
        async move {
            let uri = request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let start = request.headers().get("range").and_then(|v| {
                v.to_str()
                    .ok()?
                    .strip_prefix("bytes=")?
                    .split('-')
                    .next()?
                    .parse()
                    .ok()
            });
            let action = match start {
                Some(start) if uri.contains("/qstore/") => tamper(start),
                _ => Tampered::Pass,
            };
            if let Tampered::Refuse = action {
                return (Code::SERVICE_UNAVAILABLE, HeaderMap::new(), Body::empty());
            }
            let mut forward = crate::server::client()
                .request(request.method().clone(), format!("{upstream}{uri}"));
            for name in ["range", "authorization"] {
                if let Some(v) = request.headers().get(name) {
                    forward = forward.header(name, v.as_bytes());
                }
            }
            let answer = forward.send().await.unwrap();
            let status = Code::from_u16(answer.status().as_u16()).unwrap();
            let mut headers = HeaderMap::new();
            for (name, value) in answer.headers() {
                if let (Ok(n), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(name.as_str().as_bytes()),
                    axum::http::HeaderValue::from_bytes(value.as_bytes()),
                ) {
                    headers.insert(n, v);
                }
            }
            let mut body = answer.bytes().await.unwrap().to_vec();
            if let Tampered::FlipByte = action
                && status == Code::PARTIAL_CONTENT
                && !body.is_empty()
            {
                let mid = body.len() / 2;
                body[mid] ^= 0x01;
            }
            (status, headers, Body::from(body))
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

// Multi-threaded: the CLI blocks one worker while the proxy answers it on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_from_a_server_sending_wrong_bytes_fails_and_writes_no_weights() {
    let s = TestServer::with(Opts {
        tokens: vec![TOKEN.into()],
        ..Opts::default()
    });
    let repo = unique("org/rotten");
    let (status, _) = create_repo(&s, &repo, TOKEN, false).await;
    assert_eq!(status, StatusCode::OK);
    commit_weights(&s, &repo, &small_model_bytes(11)).await;
    let upstream = s.url().trim_end_matches('/').to_string();
    let proxy = proxy(upstream, Arc::new(|_| Tampered::FlipByte)).await;
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    for precision in ["int8", "bf16"] {
        let dir = out.path().join(precision);
        let env = [("QSTORE_ENDPOINT", proxy.as_str()), ("QSTORE_TOKEN", TOKEN)];
        let args = [
            "pull",
            &repo,
            "-q",
            "-p",
            precision,
            "-o",
            dir.to_str().unwrap(),
        ];
        let o = qstore(home.path(), &env, &args);
        let err = one_line_error(&o);
        assert!(
            err.contains("checksum") || err.contains("CRC") || err.contains("corrupt"),
            "{err}"
        );
        assert!(
            !dir.join("model.safetensors").exists(),
            "{precision}: a wrong file was written"
        );
    }
}

/// The number before `what` in the CLI's summary line.
pub fn number_before(line: &str, what: &str) -> f64 {
    line.split(what)
        .next()
        .and_then(|b| b.split([' ', '(']).rfind(|w| !w.is_empty())?.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {line:?}"))
}

// Multi-threaded: the CLI blocks one worker while the proxy answers it on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pull_resumes_with_what_it_kept_and_ends_byte_exact() {
    let data = tempfile::tempdir().unwrap();
    let opts = || Opts {
        tokens: vec![TOKEN.into()],
        data_dir: Some(data.path().to_owned()),
        ..Opts::default()
    };
    let mut s = TestServer::with(opts());
    let repo = unique("org/resumed");
    let (status, _) = create_repo(&s, &repo, TOKEN, false).await;
    assert_eq!(status, StatusCode::OK);
    let model = small_model_bytes(13);
    commit_weights(&s, &repo, &model).await;
    let upstream = s.url().trim_end_matches('/').to_string();
    // The server goes away once the pull reaches the residual section: every chunk before it
    // (headers, int8 values, scales) has arrived, none of the residual.
    let head = crate::server::client()
        .head(s.at(&format!("/api/models/{repo}/qstore/main")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let residual: Vec<u64> = head.headers()["x-qstore-residual"]
        .to_str()
        .unwrap()
        .trim_start_matches("bytes=")
        .split('-')
        .map(|n| n.parse().unwrap())
        .collect();
    let (from, to) = (residual[0], residual[1]);
    let dying = proxy(
        upstream,
        Arc::new(move |start| match (from..=to).contains(&start) {
            true => Tampered::Refuse,
            false => Tampered::Pass,
        }),
    )
    .await;
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let pull = |endpoint: &str, dir: &Path| {
        let env = [("QSTORE_ENDPOINT", endpoint), ("QSTORE_TOKEN", TOKEN)];
        let args = ["pull", &repo, "-q", "-o", dir.to_str().unwrap()];
        qstore(home.path(), &env, &args)
    };
    let fresh = pull(s.url(), &out.path().join("fresh"));
    assert!(fresh.status.success(), "{fresh:?}");
    let full = number_before(&stdout(&fresh), "MB received");

    let dir = out.path().join("resumed");
    let o = pull(&dying, &dir);
    assert!(one_line_error(&o).contains("503"), "{o:?}");
    assert!(!dir.join("model.safetensors").exists());
    let part = std::fs::read_dir(dir.join(".cache/qstore"))
        .unwrap()
        .next()
        .expect("a part file")
        .unwrap()
        .path();
    // A kept chunk damaged on disk is fetched again, not used.
    let mut kept = std::fs::read(&part).unwrap();
    let first_chunk = kept.iter().position(|b| *b != 0).expect("kept chunks");
    kept[first_chunk] ^= 0xff;
    std::fs::write(&part, kept).unwrap();

    // The server itself is stopped and started again on the same data directory.
    s.stop();
    let s = TestServer::with(opts());
    let o = pull(s.url(), &dir);
    assert!(o.status.success(), "{o:?}");
    let line = stdout(&o);
    let again = number_before(&line, "MB received");
    let reused = number_before(&line, "MB of chunks");
    assert!(
        reused > 0.0 && again < full,
        "{line} (a fresh pull received {full} MB)"
    );
    assert!((again + reused - full).abs() < 0.05, "{line} vs {full} MB");
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), model);
    assert!(
        !dir.join(".cache").exists(),
        "the part file outlived the pull"
    );

    // Run once more: every file is in place and checked; only the listing and index travel.
    let o = pull(s.url(), &dir);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("files in place"), "{}", stdout(&o));
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), model);
}
