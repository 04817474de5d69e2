//! `qstore pull`: a revision's files in one precision, with the weights rebuilt locally from the
//! blob's sections (only the chunks that precision needs are fetched) and every other file
//! downloaded as it is. Trusts nothing it receives: chunks and index by their CRCs (the
//! decoder), every weights file by its sha256 against both the blob's index and the server's
//! catalog, every other file by its sha256 (LFS) or git blob id. Files appear in the output
//! directory only once checked (temporary file, then rename), in the layout of the repo, which
//! `transformers` and `huggingface_hub` load as a local folder.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

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
    /// Bytes written.
    pub produced: u64,
}

/// Pulls `repo` at `rev` in `precision` (`None`: the precision the weights were uploaded in)
/// into `dir`. `produced` is told the bytes written as they are, for a progress line.
pub fn pull(
    remote: &Remote,
    repo: &str,
    rev: &str,
    precision: Option<&str>,
    dir: &Path,
    produced: &(dyn Fn(u64) + Sync),
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
    let mut received = 0;
    let mut total = 0;
    if served != "no-weights" {
        let url = format!("{}/api/models/{repo}/qstore/{commit}", remote.endpoint);
        let source = RemoteBlob::open(url, remote.token.clone())?;
        let blob = Blob::open(source).context("the server's blob")?;
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
            let wrote = write_checked(dir, &file.name, &file.sha256, produced, |out| {
                Ok(blob.write_file(file, out)?)
            })?;
            total += wrote;
            done.push(file.name.clone());
        }
        received += blob.source().received();
    }
    for s in &siblings {
        let path = s["rfilename"].as_str().context("a file without a name")?;
        if done.iter().any(|d| d == path) {
            continue;
        }
        let bytes = super::runtime()?.block_on(remote.download(repo, &commit, path))?;
        received += bytes.len() as u64;
        check_plain(path, s, &bytes)?;
        let sha = hex::encode(Sha256::digest(&bytes));
        total += write_checked(dir, path, &sha, produced, |out| Ok(out.write_all(&bytes)?))?;
    }
    Ok(Pulled {
        commit,
        precision: served,
        files: siblings
            .iter()
            .filter_map(|s| Some((s["rfilename"].as_str()?.to_string(), s["size"].as_u64()?)))
            .collect(),
        received,
        produced: total,
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
