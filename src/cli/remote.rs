//! `qstore login`, `ls` and `rm`: the commands that talk to a server (crate::client).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::client::{Remote, runtime};

/// Checks the token with the server, then stores endpoint and token (mode 0600). The token
/// comes from `--token`, else from the environment, else from one line of stdin.
pub fn login(endpoint: Option<String>, token: Option<String>) -> Result<()> {
    let resolved = Remote::resolve()?;
    let token = match token.or(resolved.token) {
        Some(t) => t,
        None => read_token()?,
    };
    let remote = Remote {
        endpoint: endpoint
            .unwrap_or(resolved.endpoint)
            .trim_end_matches('/')
            .to_string(),
        token: Some(token.trim().to_string()),
    };
    let user = runtime()?.block_on(remote.whoami())?;
    let path = remote.store()?;
    println!(
        "logged in to {} as {user} (saved in {})",
        remote.endpoint,
        path.display()
    );
    Ok(())
}

fn read_token() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("token: ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let token = line.trim().to_string();
    if token.is_empty() {
        bail!("no token given (pass --token, set QSTORE_TOKEN, or type it)");
    }
    Ok(token)
}

/// Without a repo: every repo the caller may see. With one: its refs and the files of a
/// revision (`REPO@REVISION`, default `main`).
pub fn ls(target: Option<String>) -> Result<()> {
    let remote = Remote::resolve()?;
    let rt = runtime()?;
    let mut out = std::io::stdout().lock();
    let Some(target) = target else {
        for r in rt.block_on(remote.list_repos())? {
            let private = if r["private"].as_bool() == Some(true) {
                "private"
            } else {
                "public"
            };
            writeln!(
                out,
                "{:<48} {:<8} {}",
                text(&r["id"]),
                private,
                text(&r["lastModified"])
            )?;
        }
        return Ok(());
    };
    let (repo, revision) = split_target(&target);
    let (refs, info) = rt.block_on(remote.repo(repo, revision.unwrap_or("main")))?;
    writeln!(out, "{repo} at {} ({})", text(&info["sha"]), tags(&info))?;
    for (kind, key) in [("branch", "branches"), ("tag", "tags")] {
        for r in refs[key].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  {kind:<7} {:<24} {}",
                text(&r["name"]),
                text(&r["targetCommit"])
            )?;
        }
    }
    for f in info["siblings"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {:>14} {}",
            f["size"].as_u64().unwrap_or(0),
            text(&f["rfilename"])
        )?;
    }
    Ok(())
}

/// Deletes a repo, or one commit of it (`REPO@COMMIT`), after asking, unless `yes`.
pub fn rm(target: &str, yes: bool) -> Result<()> {
    let remote = Remote::resolve()?;
    let (repo, revision) = split_target(target);
    let what = match revision {
        Some(rev) => format!("commit {rev} of {repo} on {}", remote.endpoint),
        None => format!(
            "the repo {repo} on {}, every revision of it",
            remote.endpoint
        ),
    };
    if !yes {
        confirm(&what)?;
    }
    let rt = runtime()?;
    match revision {
        Some(rev) => rt.block_on(remote.delete_revision(repo, rev))?,
        None => rt.block_on(remote.delete_repo(repo))?,
    }
    println!("deleted {what}");
    Ok(())
}

/// Asks on the terminal; without one, refuses (a script must say `--yes`).
fn confirm(what: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("not deleting {what} without confirmation: pass --yes");
    }
    eprint!("delete {what}? [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        bail!("not deleted");
    }
    Ok(())
}

/// `REPO@REVISION` into its parts.
fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('@') {
        Some((repo, rev)) if !rev.is_empty() => (repo, Some(rev)),
        Some((repo, _)) => (repo, None),
        None => (target, None),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn tags(info: &Value) -> String {
    info["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `qstore pull`: see [`crate::client::pull`]. Reports what crossed the wire next to what was
/// written, the saving the command exists for.
pub fn pull(
    target: &str,
    precision: Option<&str>,
    output: Option<std::path::PathBuf>,
    bar: indicatif::ProgressBar,
) -> Result<()> {
    let (repo, rev) = target.split_once('@').unwrap_or((target, "main"));
    let dir = output.unwrap_or_else(|| repo.rsplit('/').next().unwrap_or(repo).into());
    let remote = Remote::resolve()?;
    bar.set_message(format!("pull {repo}@{rev}"));
    let progress = |p: crate::client::pull::Progress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
        bar.set_message(format!(
            "pull {repo}@{rev}, {:.1} MB received",
            p.received as f64 / 1e6
        ));
    };
    let pulled = crate::client::pull(&remote, repo, rev, precision, &dir, &progress)?;
    bar.finish_and_clear();
    let resumed = match (pulled.reused, pulled.kept) {
        (0, 0) => String::new(),
        (bytes, files) => format!(
            "; resumed: {files} files in place and {:.2} MB of chunks from an earlier pull",
            bytes as f64 / 1e6
        ),
    };
    println!(
        "{repo}@{rev} ({}, commit {}): {} files, {:.2} MB written from {:.2} MB received ({:.2}x), in {}{resumed}",
        pulled.precision,
        pulled.commit,
        pulled.files.len(),
        pulled.produced as f64 / 1e6,
        pulled.received as f64 / 1e6,
        pulled.received as f64 / pulled.produced.max(1) as f64,
        dir.display()
    );
    Ok(())
}

/// `qstore push`: see [`crate::client::push`]. Reports the bytes sent next to the folder's.
pub fn push(
    dir: &std::path::Path,
    repo: &str,
    branch: &str,
    message: Option<&str>,
    bar: indicatif::ProgressBar,
) -> Result<()> {
    let remote = Remote::resolve()?;
    let request = crate::client::PushRequest {
        dir,
        repo,
        branch,
        message,
    };
    let phase = |what: &str, len: u64| {
        bar.set_message(format!("{what} {}", dir.display()));
        bar.set_position(0);
        bar.set_length(len);
    };
    let pushed = crate::client::push(&remote, &request, &phase, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    let weights = match pushed.blob_bytes {
        0 => String::new(),
        b => format!(
            "; weights {:.2} MB sent as a {:.2} MB blob ({:.2}x)",
            pushed.weights_bytes as f64 / 1e6,
            b as f64 / 1e6,
            b as f64 / pushed.weights_bytes.max(1) as f64
        ),
    };
    println!(
        "{repo}@{branch}: commit {} (INT8 view {}), {} files, {:.2} MB, {:.2} MB sent{weights}",
        pushed.commit,
        pushed.int8_commit,
        pushed.files,
        pushed.file_bytes as f64 / 1e6,
        pushed.sent as f64 / 1e6,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_at_the_at_sign() {
        assert_eq!(split_target("org/m"), ("org/m", None));
        assert_eq!(split_target("org/m@int8"), ("org/m", Some("int8")));
        assert_eq!(split_target("m@"), ("m", None));
    }
}
