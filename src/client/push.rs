//! `qstore push`: a folder as one commit, with the weights encoded here and sent as the blob's
//! bytes (about two thirds of a BF16 file) instead of the files themselves. Everything goes
//! through the Hub's upload protocol (LFS batch, basic or multipart PUTs, an NDJSON commit), plus
//! one `qstoreBlob` commit line naming the blob; the server decodes and checks the blob before
//! the commit lands (`crate::repo::pushed`). An interrupted push resumes for free: objects the
//! server holds already are not sent again (the batch answers that they are present).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Remote;
use crate::format::{EncodeInput, EncodeOptions};
use crate::repo::tree::{MAX_REGULAR_BYTES, check_path, is_weight_path};

/// Parts of a multipart upload sent at once (each held in memory: 16 MiB).
const PARTS_IN_FLIGHT: usize = 4;

/// What was pushed, and what it cost on the wire.
#[derive(Debug)]
pub struct Pushed {
    pub commit: String,
    pub int8_commit: String,
    /// Files of the folder, and their total size.
    pub files: usize,
    pub file_bytes: u64,
    /// Bytes of the weights files, and of the blob sent for them (0 when none were encoded).
    pub weights_bytes: u64,
    pub blob_bytes: u64,
    /// Bytes of bodies sent (LFS objects and the commit), skipping what the server had.
    pub sent: u64,
}

/// What to push where.
pub struct PushRequest<'a> {
    pub dir: &'a Path,
    pub repo: &'a str,
    pub branch: &'a str,
    pub message: Option<&'a str>,
}

/// A file of the folder: its path in the repo and on disk.
#[derive(Debug)]
struct LocalFile {
    path: String,
    disk: PathBuf,
    size: u64,
}

/// An object to upload through LFS.
struct Object {
    disk: PathBuf,
    oid: String,
    size: u64,
}

/// Pushes `req.dir` to `req.repo` (created if missing) as one commit on `req.branch`.
/// `phase` names each step (encode, upload) and its size; `progress` is told the bytes done as
/// they are (input encoded, then bodies sent).
pub fn push(
    remote: &Remote,
    req: &PushRequest<'_>,
    phase: &(dyn Fn(&str, u64) + Sync),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Pushed> {
    super::check_repo(req.repo)?;
    let files = folder_files(req.dir)?;
    if files.is_empty() {
        bail!("{} has no files to push", req.dir.display());
    }
    let (weights, plain): (Vec<&LocalFile>, Vec<&LocalFile>) =
        files.iter().partition(|f| is_weight_path(&f.path));
    let work = tempfile::Builder::new()
        .prefix("qstore-push-")
        .tempdir()
        .context("making a working directory")?;
    let blob = if encodable(&weights)? {
        let total = weights.iter().map(|f| f.size).sum();
        phase("encode", total);
        Some(encode(&weights, work.path(), progress)?)
    } else {
        None
    };
    let mut objects = Vec::new();
    let mut lines = vec![json!({"key": "header", "value": {
        "summary": req.message.unwrap_or("Push with qstore"),
        "description": "",
    }})];
    let lfs_files = plain
        .iter()
        .copied()
        .chain(weights.iter().copied().filter(|_| blob.is_none()));
    for f in lfs_files {
        if f.size <= MAX_REGULAR_BYTES && !is_weight_path(&f.path) {
            let bytes = std::fs::read(&f.disk).with_context(|| f.disk.display().to_string())?;
            lines.push(json!({"key": "file", "value": {
                "path": f.path,
                "content": base64::engine::general_purpose::STANDARD.encode(bytes),
                "encoding": "base64",
            }}));
        } else {
            let oid = sha256_of(&f.disk)?;
            lines.push(json!({"key": "lfsFile", "value": {
                "path": f.path, "algo": "sha256", "oid": oid, "size": f.size,
            }}));
            objects.push(Object {
                disk: f.disk.clone(),
                oid,
                size: f.size,
            });
        }
    }
    let blob_bytes = match &blob {
        Some(b) => {
            lines.push(json!({"key": "qstoreBlob", "value": {"oid": b.oid, "size": b.size}}));
            let size = b.size;
            objects.push(Object {
                disk: b.disk.clone(),
                oid: b.oid.clone(),
                size,
            });
            size
        }
        None => 0,
    };
    let body = commit_body(&lines, work.path())?;
    let rt = super::runtime()?;
    let to_send = objects.iter().map(|o| o.size).sum::<u64>() + body.1;
    phase("upload", to_send);
    let (commit, int8_commit, sent_bytes) = rt.block_on(async {
        ensure_repo(remote, req.repo).await?;
        let mut total = upload_objects(remote, req.repo, &objects, progress).await?;
        let answer = remote
            .send(
                remote
                    .client()?
                    .post(format!(
                        "{}/api/models/{}/commit/{}",
                        remote.endpoint,
                        req.repo,
                        super::pull::encode(req.branch)
                    ))
                    .header("content-type", "application/x-ndjson")
                    .body(file_body(&body.0).await?),
            )
            .await?;
        progress(body.1);
        total += body.1;
        let id = |k: &str| answer[k].as_str().unwrap_or("?").to_string();
        Ok::<_, anyhow::Error>((id("commitOid"), id("int8CommitOid"), total))
    })?;
    Ok(Pushed {
        commit,
        int8_commit,
        files: files.len(),
        file_bytes: files.iter().map(|f| f.size).sum(),
        weights_bytes: weights.iter().map(|f| f.size).sum(),
        blob_bytes,
        sent: sent_bytes,
    })
}

/// Every regular file under `dir` but `.git/` and `.cache/` (git's and huggingface_hub's own),
/// sorted, with paths the server accepts.
fn folder_files(dir: &Path) -> Result<Vec<LocalFile>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<LocalFile>) -> Result<()> {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let disk = entry.path();
            let kind = entry.file_type()?;
            let name = entry.file_name();
            if kind.is_dir() {
                if dir == root && (name == ".git" || name == ".cache") {
                    continue;
                }
                walk(root, &disk, out)?;
            } else if kind.is_file() || (kind.is_symlink() && disk.is_file()) {
                let rel = disk.strip_prefix(root).expect("under root");
                let path = rel
                    .to_str()
                    .with_context(|| format!("{} is not UTF-8", rel.display()))?
                    .replace(std::path::MAIN_SEPARATOR, "/");
                check_path(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
                let size = std::fs::metadata(&disk)?.len();
                out.push(LocalFile { path, disk, size });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// True when some weights file holds BF16 or FP16 tensors (what a blob stores); F32-only
/// weights go as plain files, as the server keeps them.
fn encodable(weights: &[&LocalFile]) -> Result<bool> {
    for f in weights.iter().filter(|f| f.path.ends_with(".safetensors")) {
        let mut file = std::fs::File::open(&f.disk)?;
        let header = crate::safetensors::read_header(&mut file)
            .with_context(|| format!("{}: not a safetensors file", f.path))?;
        if header.has_16bit_floats() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The weights' blob, encoded here.
struct LocalBlob {
    disk: PathBuf,
    oid: String,
    size: u64,
}

fn encode(
    weights: &[&LocalFile],
    work: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<LocalBlob> {
    let mut input = EncodeInput::default();
    for f in weights {
        input.add_high(&f.path, f.disk.clone());
    }
    let disk = work.join("weights.qstore");
    let summary = crate::format::encode_to_path(&input, &EncodeOptions::default(), &disk, progress)
        .context("encoding the weights")?;
    Ok(LocalBlob {
        oid: sha256_of(&disk)?,
        size: summary.blob_len,
        disk,
    })
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// The commit's NDJSON, written to a file (inline files can add up): its path and length.
fn commit_body(lines: &[Value], work: &Path) -> Result<(PathBuf, u64)> {
    let path = work.join("commit.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for line in lines {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let len = std::fs::metadata(&path)?.len();
    Ok((path, len))
}

async fn file_body(path: &Path) -> Result<reqwest::Body> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(reqwest::Body::wrap_stream(
        tokio_util::io::ReaderStream::new(file),
    ))
}

/// Creates the repo unless it exists (a token that may only write to an existing repo need not
/// be allowed to create one).
async fn ensure_repo(remote: &Remote, repo: &str) -> Result<()> {
    let url = format!("{}/api/models/{repo}", remote.endpoint);
    let status = remote.answer(remote.client()?.get(url)).await?.status();
    if status != reqwest::StatusCode::NOT_FOUND {
        return Ok(());
    }
    let (organization, name) = match repo.split_once('/') {
        Some((org, name)) => (Some(org), name),
        None => (None, repo),
    };
    let body = json!({"name": name, "organization": organization, "type": "model"});
    let url = format!("{}/api/repos/create", remote.endpoint);
    remote
        .send(remote.client()?.post(url).json(&body))
        .await
        .map(|_| ())
}

/// Uploads what the server does not hold yet; returns the bytes sent.
async fn upload_objects(
    remote: &Remote,
    repo: &str,
    objects: &[Object],
    sent: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    if objects.is_empty() {
        return Ok(0);
    }
    let request = json!({
        "operation": "upload",
        "transfers": ["basic", "multipart"],
        "hash_algo": "sha256",
        "objects": objects.iter().map(|o| json!({"oid": o.oid, "size": o.size})).collect::<Vec<_>>(),
    });
    let batch = remote
        .send(
            remote
                .client()?
                .post(format!(
                    "{}/{repo}.git/info/lfs/objects/batch",
                    remote.endpoint
                ))
                .header("accept", "application/vnd.git-lfs+json")
                .header("content-type", "application/vnd.git-lfs+json")
                .body(request.to_string()),
        )
        .await?;
    let mut total = 0;
    for (object, answer) in objects
        .iter()
        .zip(batch["objects"].as_array().into_iter().flatten())
    {
        if answer["oid"].as_str() != Some(object.oid.as_str()) {
            bail!("the LFS batch answer does not follow the request's order");
        }
        if let Some(message) = answer["error"]["message"].as_str() {
            bail!("{} refused {}: {message}", remote.endpoint, object.oid);
        }
        let Some(upload) = answer.get("actions").and_then(|a| a.get("upload")) else {
            continue; // Held already.
        };
        total += upload_object(remote, object, upload, sent).await?;
    }
    Ok(total)
}

async fn upload_object(
    remote: &Remote,
    object: &Object,
    upload: &Value,
    sent: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let href = upload["href"]
        .as_str()
        .context("an LFS upload action without href")?;
    let header = upload.get("header").and_then(Value::as_object);
    let Some(chunk_size) = header.and_then(|h| h.get("chunk_size")) else {
        let put = remote
            .client()?
            .put(href)
            .header("content-length", object.size)
            .body(file_body(&object.disk).await?);
        expect_ok(remote.answer(put).await?, &object.oid).await?;
        sent(object.size);
        return Ok(object.size);
    };
    let part_size: u64 = chunk_size
        .as_str()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .context("an LFS multipart upload without a usable chunk_size")?;
    let parts = object.size.div_ceil(part_size);
    let header = header.expect("chunk_size came from it");
    let etags: Vec<(u64, String)> = futures::stream::iter(1..=parts)
        .map(|n| async move {
            let url = header
                .get(&n.to_string())
                .and_then(Value::as_str)
                .with_context(|| format!("no URL for part {n}"))?;
            let start = (n - 1) * part_size;
            let len = part_size.min(object.size - start);
            let bytes = read_part(&object.disk, start, len).await?;
            let response = remote.answer(remote.client()?.put(url).body(bytes)).await?;
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            expect_ok(response, &object.oid).await?;
            sent(len);
            Ok::<_, anyhow::Error>((n, etag))
        })
        .buffered(PARTS_IN_FLIGHT)
        .try_collect()
        .await?;
    let done = json!({
        "oid": object.oid,
        "parts": etags.iter().map(|(n, e)| json!({"partNumber": n, "etag": e})).collect::<Vec<_>>(),
    });
    let complete = remote
        .client()?
        .post(href)
        .header("content-type", "application/vnd.git-lfs+json")
        .body(done.to_string());
    expect_ok(remote.answer(complete).await?, &object.oid).await?;
    Ok(object.size)
}

async fn read_part(path: &Path, start: u64, len: u64) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact(&mut bytes)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

/// Fails with the server's own message unless the answer is a success.
async fn expect_ok(response: reqwest::Response, what: &str) -> Result<()> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let message = body["error"]["message"]
        .as_str()
        .or(body["error"].as_str())
        .or(body.as_str())
        .unwrap_or("no message");
    bail!("uploading {what}: {status}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_its_files_without_git_and_cache_folders() {
        let dir = tempfile::tempdir().unwrap();
        for p in [
            "a.json",
            "sub/b.txt",
            ".git/HEAD",
            ".cache/huggingface/x",
            ".gitattributes",
        ] {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, p).unwrap();
        }
        let files = folder_files(dir.path()).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, [".gitattributes", "a.json", "sub/b.txt"]);
        assert_eq!(files[1].size, 6);
    }

    #[test]
    fn a_folder_with_a_name_the_server_refuses_is_refused_here() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad:name"), b"x").unwrap();
        let e = folder_files(dir.path()).unwrap_err().to_string();
        assert!(e.contains("bad:name"), "{e}");
    }
}
