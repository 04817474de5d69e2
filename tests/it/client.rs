//! `qstore login`, `ls` and `rm` against a server, as a user runs them: the login file and its
//! mode, the environment overriding it, one readable line on every error, and a delete that asks.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use reqwest::StatusCode;

use crate::hub::{TOKEN, commit_weights, create_repo};
use crate::server::{Endpoint, Opts, TestServer, small_model_bytes, unique};

/// Runs the CLI with its config directory in `home` and no endpoint or token from the caller's
/// environment.
fn qstore(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
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

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failure: non-zero exit and exactly one line on stderr.
fn one_line_error(o: &Output) -> String {
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
