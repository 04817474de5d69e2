//! `qstore pull`: a revision's files in one precision, with the weights rebuilt locally from the
//! blob's sections (only the chunks that precision needs are fetched) and every other file
//! downloaded as it is. Trusts nothing it receives: chunks and index by their CRCs (the
//! decoder), every weights file by its sha256 against both the blob's index and the server's
//! catalog, every other file by its sha256 (LFS) or git blob id. Files appear in the output
//! directory only once checked (temporary file, then rename), in the layout of the repo, which
//! `transformers` and `huggingface_hub` load as a local folder.
//!
//! Resumable: files already in the folder with the listed size and sha256 are kept, and the
//! blob's chunks are kept as they arrive in `DIR/.cache/qstore/{blob}.part` (removed once the
//! pull completes), so a pull run again after an interruption fetches only what it lacks.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Remote;
use super::blob::RemoteBlob;
use crate::format::{Blob, Precision};

/// What was pulled, and what it cost on the wire.
#[derive(Debug)]
pub struct Pulled {
    /// The commit the files are from (the INT8 twin's id for an INT8 pull).
    pub commit: String,
    /// `int8`, `bf16` or `fp16` (or `no-weights`).
    pub precision: String,
    /// Path in the repo and size, in the server's order.
    pub files: Vec<(String, u64)>,
    /// Bytes received: blob sections plus the other files.
    pub received: u64,
    /// Blob bytes read from an interrupted pull's part file instead of the wire.
    pub reused: u64,
    /// Files found in place and checked (size and sha256), not fetched again.
    pub kept: usize,
    /// Bytes written.
    pub produced: u64,
}

/// Where a pull is, for a progress line (bytes, cumulative).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Of the files, written or found in place.
    pub done: u64,
    /// The files' total size.
    pub total: u64,
    /// Received over the wire.
    pub received: u64,
}

/// Pulls `repo` at `rev` in `precision` (`None`: the precision the weights were uploaded in)
/// into `dir`. `progress` is told how far it is as bytes are written.
pub fn pull(
    remote: &Remote,
    repo: &str,
    rev: &str,
    precision: Option<&str>,
    dir: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Pulled> {
    super::check_repo(repo)?;
    // `int8` and `int8-REF` already name INT8 views; any other revision gets one by prefix.
    let int8_view = rev == "int8" || rev.starts_with("int8-");
    let int8 = match precision {
        None => int8_view,
        Some("bf16" | "fp16") if int8_view => bail!("{rev} is an INT8 view: drop --precision"),
        Some("bf16" | "fp16") => false,
        Some("int8") => true,
        Some(other) => bail!("unknown precision {other:?}: int8, bf16 or fp16"),
    };
    let view = match int8 && !int8_view {
        true => format!("int8-{rev}"),
        false => rev.to_string(),
    };
    let info = super::runtime()?.block_on(remote.get(&format!(
        "/api/models/{repo}/revision/{}?blobs=true",
        encode(&view)
    )))?;
    let commit = info["sha"]
        .as_str()
        .context("the server named no commit")?
        .to_string();
    let served = info["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|t| ["int8", "bf16", "fp16", "no-weights"].contains(t))
        .unwrap_or("no-weights")
        .to_string();
    if let Some(p @ ("bf16" | "fp16")) = precision
        && served != p
    {
        bail!("{repo}@{rev} is stored as {served}, not {p}: ask for --precision {served} or int8");
    }
    let siblings: Vec<&Value> = info["siblings"].as_array().into_iter().flatten().collect();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut done = Vec::new();
    let (mut received, mut reused, mut kept, mut total) = (0, 0, 0, 0);
    let mut part = None;
    let written = AtomicU64::new(0);
    let all = siblings.iter().filter_map(|s| s["size"].as_u64()).sum();
    let report = |n: u64, received: u64| {
        let done = written.fetch_add(n, Relaxed) + n;
        progress(Progress {
            done,
            total: all,
            received,
        })
    };
    if served != "no-weights" {
        let url = format!("{}/api/models/{repo}/qstore/{commit}", remote.endpoint);
        let source = RemoteBlob::open(url, remote.token.clone())?;
        let blob = Blob::open(source).context("the server's blob")?;
        part = Some(
            blob.source()
                .keep_chunks(&dir.join(PART_DIR), blob.index())?,
        );
        let p = if int8 {
            Precision::Int8
        } else {
            Precision::High
        };
        for file in blob.files(p) {
            let listed = sibling(&siblings, &file.name)?;
            if listed["lfs"]["sha256"].as_str() != Some(file.sha256.as_str())
                || listed["size"].as_u64() != Some(file.size)
            {
                bail!("{}: the server's catalog and its blob disagree", file.name);
            }
            done.push(file.name.clone());
            if in_place(dir, &file.name, file.size, Some(&file.sha256), None)? {
                kept += 1;
                report(file.size, blob.source().received());
                continue;
            }
            let tick = |n| report(n, blob.source().received());
            let wrote = write_checked(dir, &file.name, &file.sha256, &tick, |out| {
                Ok(blob.write_file(file, out)?)
            })?;
            total += wrote;
        }
        received += blob.source().received();
        reused += blob.source().reused();
    }
    for s in &siblings {
        let path = s["rfilename"].as_str().context("a file without a name")?;
        if done.iter().any(|d| d == path) {
            continue;
        }
        let size = s["size"].as_u64().unwrap_or(u64::MAX);
        let (sha, oid) = (s["lfs"]["sha256"].as_str(), s["blobId"].as_str());
        if in_place(dir, path, size, sha, oid)? {
            kept += 1;
            report(size, received);
            continue;
        }
        let bytes = super::runtime()?.block_on(remote.download(repo, &commit, path))?;
        received += bytes.len() as u64;
        check_plain(path, s, &bytes)?;
        let sha = hex::encode(Sha256::digest(&bytes));
        let tick = |n| report(n, received);
        total += write_checked(dir, path, &sha, &tick, |out| Ok(out.write_all(&bytes)?))?;
    }
    if let Some(part) = part {
        forget_chunks(dir, &part);
    }
    Ok(Pulled {
        commit,
        precision: served,
        files: siblings
            .iter()
            .filter_map(|s| Some((s["rfilename"].as_str()?.to_string(), s["size"].as_u64()?)))
            .collect(),
        received,
        reused,
        kept,
        produced: total,
    })
}

/// Where the chunks of a pull in progress are kept, inside the output folder (`.cache` is
/// where huggingface_hub keeps its own download state; loaders skip it).
const PART_DIR: &str = ".cache/qstore";

/// Removes a finished pull's part file, and its folders if that leaves them empty.
fn forget_chunks(dir: &Path, part: &Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_dir(dir.join(PART_DIR));
    let _ = std::fs::remove_dir(dir.join(".cache"));
}

/// True when `dir/path` exists with `size` bytes that hash to `sha256` (else, to the git blob
/// id `git_oid`): a file an earlier pull completed. Read in 1 MiB steps.
fn in_place(
    dir: &Path,
    path: &str,
    size: u64,
    sha256: Option<&str>,
    git_oid: Option<&str>,
) -> Result<bool> {
    use sha1::Digest as _;
    let target = dir.join(relative(path)?);
    match std::fs::metadata(&target) {
        Ok(m) if m.is_file() && m.len() == size => {}
        _ => return Ok(false),
    }
    let mut file =
        std::fs::File::open(&target).with_context(|| format!("reading {}", target.display()))?;
    let (mut sha, mut git) = (Sha256::new(), sha1::Sha1::new());
    git.update(format!("blob {size}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        match sha256 {
            Some(_) => sha.update(&buf[..n]),
            None => git.update(&buf[..n]),
        }
    }
    Ok(match (sha256, git_oid) {
        (Some(want), _) => hex::encode(sha.finalize()) == want,
        (None, Some(want)) => hex::encode(git.finalize()) == want,
        (None, None) => false,
    })
}

pub(super) fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn sibling<'a>(siblings: &[&'a Value], path: &str) -> Result<&'a Value> {
    siblings
        .iter()
        .find(|s| s["rfilename"].as_str() == Some(path))
        .copied()
        .with_context(|| format!("the blob has {path}, the revision does not list it"))
}

/// A downloaded file against the listing: its LFS sha256, else its git blob id.
fn check_plain(path: &str, listed: &Value, bytes: &[u8]) -> Result<()> {
    let ok = match (listed["lfs"]["sha256"].as_str(), listed["blobId"].as_str()) {
        (Some(sha), _) => hex::encode(Sha256::digest(bytes)) == sha,
        (None, Some(oid)) => git_blob_id(bytes) == oid,
        (None, None) => false,
    };
    if !ok {
        bail!("{path}: what the server sent does not match its listing");
    }
    Ok(())
}

/// The id git gives a file's bytes: sha1 of `blob {len}\0` and the bytes.
fn git_blob_id(bytes: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

/// Writes `dir/path` through `fill`, hashing as it goes; the file appears only if its sha256
/// is `sha256`. Returns the bytes written.
fn write_checked(
    dir: &Path,
    path: &str,
    sha256: &str,
    produced: &(dyn Fn(u64) + Sync),
    fill: impl FnOnce(&mut (dyn Write + Send)) -> Result<()>,
) -> Result<u64> {
    let target = dir.join(relative(path)?);
    let parent = target.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = crate::format::output_tempfile(parent)
        .with_context(|| format!("writing in {}", parent.display()))?;
    let (hash, len) = {
        let mut out = Hashing {
            inner: std::io::BufWriter::with_capacity(1 << 20, tmp.as_file()),
            hash: Sha256::new(),
            len: 0,
            produced,
        };
        fill(&mut out).with_context(|| path.to_string())?;
        out.inner.flush()?;
        (hex::encode(out.hash.finalize()), out.len)
    };
    if hash != sha256 {
        bail!("{path}: the rebuilt file's sha256 is {hash}, the server says {sha256}");
    }
    tmp.persist(&target)
        .with_context(|| format!("writing {}", target.display()))?;
    Ok(len)
}

/// A repo path as a relative path with no `..`: a server cannot make us write elsewhere.
fn relative(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("the server listed an unsafe path {path:?}");
    }
    Ok(p.to_path_buf())
}

/// Hashes and counts what passes through to the file.
struct Hashing<'a, W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
    produced: &'a (dyn Fn(u64) + Sync),
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        (self.produced)(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_the_server_stay_inside_the_output_directory() {
        assert!(relative("config.json").is_ok());
        assert!(relative("1_Pooling/config.json").is_ok());
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "./a"] {
            assert!(relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn git_blob_ids_are_what_git_computes() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            git_blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }
}
