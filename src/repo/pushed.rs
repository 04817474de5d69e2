//! Weights pushed as a blob the client encoded (`qstore push`): the client sends the blob's
//! bytes instead of the larger BF16 files, and the server believes none of it. The blob must
//! have been uploaded for this repo; opening it validates its structure; every stored byte is
//! checked (each chunk by its stored CRC); every high-precision file is decoded (each chunk's
//! decoded CRC checked) and must hash to the sha256 the index claims;
//! only then do those files become the commit's weights. The commit then takes its blob as any
//! other commit does (an identical stored blob, or the server's own encode of the decoded files),
//! and the INT8 files the pushed blob claims must be exactly the ones the server derives.

use sha2::{Digest, Sha256};

use super::commit::{NewFile, Source, Store, blob_record};
use super::lfs::check_oid;
use super::tree::{Tree, TreeFile, check_path, is_weight_path};
use super::{RepoError, RepoResult};
use crate::format::{Blob, BlobSource, FormatError, Index, Precision};
use crate::storage::{FileEntry, Objects};

/// Largest index JSON a pushed blob may have: held in memory while it is checked. A 1 MiB chunk
/// costs ~60 bytes of index, so this is room for models of several hundred billion parameters.
pub const MAX_PUSHED_INDEX_JSON: usize = 64 << 20;

/// A pushed blob whose high-precision files decode to what its index says.
#[derive(Debug, Clone)]
pub struct PushedWeights {
    /// The blob's sha256 (its LFS oid), for messages.
    pub oid: String,
    /// The weight files, decoded from the pushed blob when the commit needs their bytes.
    pub files: Vec<NewFile>,
    /// The INT8 files the blob claims to reproduce: (name, sha256).
    pub int8_claims: Vec<(String, String)>,
}

/// Checks the uploaded blob `oid` (`size` bytes) for a commit to `repo`: see the module docs.
/// Runs in an encode slot (decoding a model costs as much CPU as encoding it).
pub async fn verify(
    store: &Store<'_>,
    repo: &str,
    oid: &str,
    size: u64,
) -> RepoResult<PushedWeights> {
    check_oid(oid)?;
    let key = Objects::content_key(oid);
    if !(store.catalog.lfs_object_in(oid, repo).await? && store.objects.has(&key, size).await?) {
        return Err(RepoError::BadInput(format!(
            "qstoreBlob {oid} ({size} bytes) was never uploaded for this repo (upload it through the LFS batch endpoint first)"
        )));
    }
    let _turn = store
        .encodes
        .acquire()
        .await
        .map_err(|e| RepoError::Internal(format!("encode admission: {e}")))?;
    let source = store.objects.blob_source(&key).await?;
    let index = tokio::task::spawn_blocking(move || decode_and_check(source))
        .await
        .map_err(|e| RepoError::Internal(format!("pushed blob check task: {e}")))??;
    let record = blob_record(format!("pushed-{oid}"), String::new(), key, &index, size);
    let files = index
        .high_files
        .iter()
        .map(|f| NewFile {
            path: f.name.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            git_oid: None,
            lfs: true,
            source: Source::Blob {
                blob: Box::new(record.clone()),
                name: f.name.clone(),
            },
        })
        .collect();
    let int8_claims = index
        .int8_files
        .iter()
        .map(|f| (f.name.clone(), f.sha256.clone()))
        .collect();
    Ok(PushedWeights {
        oid: oid.to_string(),
        files,
        int8_claims,
    })
}

impl PushedWeights {
    /// Makes the pushed files the tree's weights: every weight file the tree had goes.
    pub fn replace_weights(&self, tree: &mut Tree) {
        tree.retain(|path, _| !is_weight_path(path));
        for f in &self.files {
            let Source::Blob { blob, name } = &f.source else {
                unreachable!("pushed files are decoded from the pushed blob");
            };
            let entry = FileEntry {
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                git_oid: None,
                lfs: true,
                object_key: None,
            };
            let in_blob = Some(((**blob).clone(), name.clone()));
            tree.insert(f.path.clone(), TreeFile { entry, in_blob });
        }
    }

    /// Refuses the commit unless the blob it got reproduces exactly the INT8 files the pushed
    /// blob claims (the server's derivation, not the client's, is what gets served).
    pub fn check_int8(&self, int8: &[FileEntry]) -> RepoResult<()> {
        let mut derived: Vec<(&str, &str)> = int8
            .iter()
            .map(|f| (f.path.as_str(), f.sha256.as_str()))
            .collect();
        derived.sort_unstable();
        let mut claimed: Vec<(&str, &str)> = self
            .int8_claims
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_str()))
            .collect();
        claimed.sort_unstable();
        if derived == claimed {
            return Ok(());
        }
        let wrong = claimed
            .iter()
            .find(|c| !derived.contains(c))
            .map(|(name, sha)| format!("its INT8 {name} (sha256 {sha})"))
            .or_else(|| {
                derived
                    .iter()
                    .find(|d| !claimed.contains(d))
                    .map(|(name, _)| format!("it has no INT8 {name}"))
            })
            .unwrap_or_default();
        Err(RepoError::BadInput(format!(
            "pushed blob {}: {wrong}, but the LLM.int8 derivation of its weights differs; re-encode with this server's qstore",
            self.oid
        )))
    }
}

/// Opens the blob (its index capped), checks every stored byte (each chunk against its stored
/// CRC, even those no high-precision file reads), then decodes each high-precision file and
/// checks its sha256; returns the index.
fn decode_and_check<S: BlobSource>(source: S) -> RepoResult<Index> {
    let blob = Blob::open_limited(source, MAX_PUSHED_INDEX_JSON).map_err(refused)?;
    blob.write_stored_range(0..blob.source().len(), &mut std::io::sink())
        .map_err(refused)?;
    for f in blob.files(Precision::High) {
        check_path(&f.name)?;
        if !is_weight_path(&f.name) {
            return Err(RepoError::BadInput(format!(
                "pushed blob: {:?} is not a top-level weights file",
                f.name
            )));
        }
        let mut sink = HashSink(Sha256::new());
        blob.write_file(f, &mut sink).map_err(refused)?;
        let got = hex::encode(sink.0.finalize());
        if got != f.sha256 {
            return Err(RepoError::BadInput(format!(
                "pushed blob: {} decodes to sha256 {got}, its index says {}",
                f.name, f.sha256
            )));
        }
    }
    Ok(blob.index().clone())
}

/// What is wrong with a pushed blob is the client's error; failing to read it is ours.
fn refused(e: FormatError) -> RepoError {
    match e {
        FormatError::Io(_) => RepoError::Format(e),
        e => RepoError::BadInput(format!("pushed blob: {e}")),
    }
}

struct HashSink(Sha256);

impl std::io::Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
