//! Making a commit: the new file set from the branch head and the requested changes, the blob
//! its weights need (reused when any blob already holds exactly these weights, else encoded from
//! the uploaded objects and the files of earlier blobs), the INT8 view, and one catalog
//! transaction that moves the branch only if it still points where the commit started (a stale
//! head is refused when the client named a parent, else the commit is rebuilt on the new head).
//!
//! Memory is bounded as the encoder's: weight files are materialised on local disk (the spool),
//! never held whole; plain files never pass through here (they are objects already).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::pushed::PushedWeights;
use super::refs::{MAIN, int8_twin, new_commit_id};
use super::tree::{self, Tree, TreeFile, is_weight_path, sha256_hex};
use super::{RepoError, RepoResult};
use crate::codec::quantize::HighDtype;
use crate::format::{
    Blob, EncodeInput, EncodeOptions, EncodeSummary, Index, OutputFile, Precision,
};
use crate::storage::catalog::now_millis;
use crate::storage::{
    BlobRecord, Catalog, CommitOutcome, CommitRecord, FileEntry, FileSet, NewCommit, Objects,
    RefKind,
};

/// Largest `config.json` turned into an INT8 config (it is parsed in memory).
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Times a commit without a client-named parent is rebuilt when its branch moved meanwhile: each
/// round lands at least one of the racing commits, so this many racing writers all land.
const REBUILDS: usize = 32;

/// What a commit works with, passed explicitly.
pub struct Store<'a> {
    pub catalog: &'a Catalog,
    pub objects: &'a Objects,
    /// Local directory for spools (weights materialised for encoding).
    pub spool_root: &'a Path,
    /// Admission for encodes (each holds ~90 MiB).
    pub encodes: &'a Semaphore,
}

/// Where the bytes of a file being committed are.
#[derive(Debug, Clone)]
pub enum Source {
    /// A verified object (content-addressed, or a legacy key).
    Object(String),
    /// The high-precision file `name` of a stored blob.
    Blob { blob: Box<BlobRecord>, name: String },
}

/// A file added or replaced by a commit.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub git_oid: Option<String>,
    pub lfs: bool,
    pub source: Source,
}

/// One change of a commit, as the Hub's commit API names them.
#[derive(Debug, Clone)]
pub enum Change {
    Add(NewFile),
    Delete(String),
    DeleteFolder(String),
}

/// Weights already encoded by the caller (the native upload encodes while the body arrives).
pub struct PreparedBlob {
    pub path: PathBuf,
    pub summary: EncodeSummary,
    /// Names and sha256 of a supplied INT8 checkpoint's files, if one was stored.
    pub supplied_int8: Vec<(String, String)>,
}

/// A commit to make.
pub struct CommitRequest {
    pub repo: String,
    pub branch: String,
    /// The client's `parentCommit`: the commit is refused unless the branch is still there.
    pub parent: Option<String>,
    pub author: String,
    pub title: String,
    pub message: String,
    pub changes: Vec<Change>,
    /// The commit's files are exactly the changes (plus `prepared`), not added to the parent's.
    pub replace_all: bool,
    /// Create the repo if it does not exist.
    pub create_repo: bool,
    pub prepared: Option<PreparedBlob>,
    /// Weights pushed as a blob (already decoded and checked): they replace every weight file
    /// of the head, and the INT8 the pushed blob claims must be the one derived.
    pub pushed: Option<PushedWeights>,
}

/// A commit that landed.
#[derive(Debug)]
pub struct Committed {
    pub commit: CommitRecord,
    pub files: Vec<(FileSet, FileEntry)>,
    /// True when this commit stored a new blob (false: it reuses one).
    pub new_blob: bool,
}

impl Committed {
    /// The files of one view.
    pub fn view(&self, set: FileSet) -> Vec<&FileEntry> {
        self.files
            .iter()
            .filter(|(s, _)| *s == set || *s == FileSet::Both)
            .map(|(_, f)| f)
            .collect()
    }
}

/// The identity of a weight set: sha256 over the names and sha256 of the high-precision files
/// (and of a supplied INT8 checkpoint). Equal identities reproduce equal bytes, so one blob
/// serves them all.
pub fn weights_key(high: &[(String, String)], supplied_int8: &[(String, String)]) -> String {
    let mut lines: Vec<String> = high
        .iter()
        .map(|(n, s)| format!("high {n} {s}\n"))
        .chain(supplied_int8.iter().map(|(n, s)| format!("int8 {n} {s}\n")))
        .collect();
    lines.sort();
    let mut h = Sha256::new();
    h.update(b"qstore weights v1\n");
    for l in lines {
        h.update(l.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A blob this commit stored, deleted again unless a commit ends up using it (also when the
/// request is dropped halfway).
struct MadeBlob {
    record: BlobRecord,
    objects: Objects,
    used: bool,
}

impl Drop for MadeBlob {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        let (objects, key) = (self.objects.clone(), self.record.object_key.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = objects.delete(&key).await {
                    tracing::warn!(%key, error = %e, "an unused blob remains (qstore gc removes it)");
                }
            });
        }
    }
}

/// Makes the commit `req` describes.
pub async fn make_commit(store: &Store<'_>, mut req: CommitRequest) -> RepoResult<Committed> {
    let mut made: Option<MadeBlob> = None;
    let prepared = req.prepared.take();
    for _ in 0..REBUILDS {
        let head = store
            .catalog
            .ref_target(&req.repo, RefKind::Branch, &req.branch)
            .await?;
        check_parent(&req, head.as_ref())?;
        if head.is_none() && !(req.branch == MAIN || req.create_repo) {
            return Err(RepoError::RevisionNotFound(format!(
                "model {:?} has no branch {:?}",
                req.repo, req.branch
            )));
        }
        let mut tree = match (&head, req.replace_all) {
            (Some(h), false) => tree::tree_of(
                store.catalog.files(&h.id, FileSet::High).await?,
                h.blob.as_ref(),
            ),
            _ => Tree::new(),
        };
        apply(&mut tree, &req.changes)?;
        if let Some(p) = &req.pushed {
            p.replace_weights(&mut tree);
        }
        let blob = match &prepared {
            Some(p) => Some(prepared_blob(store, p, &mut made).await?),
            None => weights_blob(store, &tree, head.as_ref(), &mut made).await?,
        };
        if let Some(p) = &req.pushed {
            p.check_int8(blob.as_ref().map(|(_, _, int8)| &int8[..]).unwrap_or(&[]))?;
        }
        let files = commit_files(store, tree, blob.as_ref()).await?;
        let id = new_commit_id()?;
        let commit = CommitRecord {
            int8_id: int8_twin(&id),
            id,
            repo: req.repo.clone(),
            parent: head.as_ref().map(|h| h.id.clone()),
            title: req.title.clone(),
            message: req.message.clone(),
            author: req.author.clone(),
            created_at: now_millis(),
            blob: blob.as_ref().map(|(b, _, _)| b.clone()),
        };
        let new_blob = made
            .as_ref()
            .zip(commit.blob.as_ref())
            .is_some_and(|(m, b)| m.record.id == b.id);
        let new = NewCommit {
            commit,
            files,
            branch: req.branch.clone(),
            expected_head: head.as_ref().map(|h| h.id.clone()),
            create_repo: req.create_repo,
        };
        match store.catalog.commit(&new).await? {
            CommitOutcome::Committed => {
                if let (true, Some(m)) = (new_blob, made.as_mut()) {
                    m.used = true;
                }
                return Ok(Committed {
                    commit: new.commit,
                    files: new.files,
                    new_blob,
                });
            }
            CommitOutcome::NoRepo => {
                return Err(RepoError::RepoNotFound(format!(
                    "model {:?} not found",
                    req.repo
                )));
            }
            CommitOutcome::StaleHead if req.parent.is_some() => {
                return Err(stale(&req));
            }
            CommitOutcome::StaleHead => {
                // Rebuild on the new head, after a short random pause so racing writers spread.
                let mut jitter = [0u8; 1];
                let _ = getrandom::fill(&mut jitter);
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(jitter[0] % 20)))
                    .await;
            }
        }
    }
    Err(RepoError::Conflict(format!(
        "branch {:?} kept moving while this commit was made; try again",
        req.branch
    )))
}

fn stale(req: &CommitRequest) -> RepoError {
    RepoError::StaleParent(format!(
        "a commit has happened on {:?} since {}: refresh and try again",
        req.branch,
        req.parent
            .as_deref()
            .unwrap_or("the one this commit was based on")
    ))
}

fn check_parent(req: &CommitRequest, head: Option<&CommitRecord>) -> RepoResult<()> {
    let Some(parent) = &req.parent else {
        return Ok(());
    };
    match head {
        Some(h) if &h.id == parent || &h.int8_id == parent => Ok(()),
        _ => Err(stale(req)),
    }
}

fn apply(tree: &mut Tree, changes: &[Change]) -> RepoResult<()> {
    for change in changes {
        match change {
            Change::Add(f) => {
                tree::check_path(&f.path)?;
                let (object_key, in_blob) = match &f.source {
                    Source::Object(key) => (Some(key.clone()), None),
                    Source::Blob { blob, name } => {
                        if !is_weight_path(&f.path) {
                            // Only weights are decoded from blobs; a plain file needs its object.
                            return Err(RepoError::BadInput(format!(
                                "{}: these bytes are stored only as model weights; upload the file itself",
                                f.path
                            )));
                        }
                        (None, Some(((**blob).clone(), name.clone())))
                    }
                };
                let entry = FileEntry {
                    path: f.path.clone(),
                    size: f.size,
                    sha256: f.sha256.clone(),
                    git_oid: f.git_oid.clone(),
                    lfs: f.lfs,
                    object_key,
                };
                tree.insert(f.path.clone(), TreeFile { entry, in_blob });
            }
            Change::Delete(path) => tree::delete_file(tree, path)?,
            Change::DeleteFolder(path) => tree::delete_folder(tree, path)?,
        }
    }
    Ok(())
}

/// The blob of a commit: its record, its (high, int8) files.
type ChosenBlob = (BlobRecord, Vec<FileEntry>, Vec<FileEntry>);

/// The caller's encoded weights: an identical stored blob if there is one, else this one.
async fn prepared_blob(
    store: &Store<'_>,
    p: &PreparedBlob,
    made: &mut Option<MadeBlob>,
) -> RepoResult<ChosenBlob> {
    let high: Vec<(String, String)> = p
        .summary
        .index
        .high_files
        .iter()
        .map(|f| (f.name.clone(), f.sha256.clone()))
        .collect();
    let key = weights_key(&high, &p.supplied_int8);
    if let Some(existing) = store.catalog.blob_by_weights(&key).await? {
        let (h, i) = store.catalog.blob_files(&existing.id).await?;
        if !h.is_empty() {
            return Ok((existing, h, i));
        }
    }
    if made.is_none() {
        *made = Some(store_blob(store, &p.path, &p.summary, key).await?);
    }
    let m = made.as_ref().expect("set above");
    Ok((
        m.record.clone(),
        blob_entries(&p.summary.index.high_files),
        blob_entries(&p.summary.index.int8_files),
    ))
}

/// The blob for the weight files of `tree`: the head's when they did not change, an identical
/// stored one, or a new encode. None when the tree has no weights, or only weights the codec
/// does not take (no BF16/FP16 tensors): those stay plain objects.
async fn weights_blob(
    store: &Store<'_>,
    tree: &Tree,
    head: Option<&CommitRecord>,
    made: &mut Option<MadeBlob>,
) -> RepoResult<Option<ChosenBlob>> {
    let weights: Vec<&TreeFile> = tree
        .values()
        .filter(|f| is_weight_path(&f.entry.path))
        .collect();
    if !weights
        .iter()
        .any(|f| f.entry.path.ends_with(".safetensors"))
    {
        return Ok(None);
    }
    if let Some(h) = head.and_then(|h| h.blob.as_ref()) {
        let (high, int8) = store.catalog.blob_files(&h.id).await?;
        let untouched = weights.len() == high.len()
            && weights.iter().all(|f| {
                f.in_blob
                    .as_ref()
                    .is_some_and(|(b, name)| b.id == h.id && name == &f.entry.path)
            });
        if untouched {
            return Ok(Some((h.clone(), high, int8)));
        }
    }
    let high: Vec<(String, String)> = weights
        .iter()
        .map(|f| (f.entry.path.clone(), f.entry.sha256.clone()))
        .collect();
    let key = weights_key(&high, &[]);
    if let Some(existing) = store.catalog.blob_by_weights(&key).await? {
        let (h, i) = store.catalog.blob_files(&existing.id).await?;
        if !h.is_empty() {
            return Ok(Some((existing, h, i)));
        }
    }
    if let Some(m) = made.as_ref().filter(|m| m.record.weights == key) {
        let (h, i) = made_files(store, m).await?;
        return Ok(Some((m.record.clone(), h, i)));
    }
    if !encodable(store, &weights).await? {
        return Ok(None);
    }
    let (path, summary, _spool) = encode_weights(store, &weights).await?;
    let m = store_blob(store, &path, &summary, key).await?;
    let files = (
        blob_entries(&summary.index.high_files),
        blob_entries(&summary.index.int8_files),
    );
    let record = m.record.clone();
    *made = Some(m);
    Ok(Some((record, files.0, files.1)))
}

/// Files of a blob made by an earlier attempt of this commit (read back from its index).
async fn made_files(
    store: &Store<'_>,
    m: &MadeBlob,
) -> RepoResult<(Vec<FileEntry>, Vec<FileEntry>)> {
    let source = store.objects.blob_source(&m.record.object_key).await?;
    let blob = tokio::task::spawn_blocking(move || Blob::open(source))
        .await
        .map_err(|e| RepoError::Internal(format!("blob open task: {e}")))??;
    Ok((
        blob_entries(blob.files(Precision::High)),
        blob_entries(blob.files(Precision::Int8)),
    ))
}

fn blob_entries(files: &[OutputFile]) -> Vec<FileEntry> {
    files
        .iter()
        .map(|f| FileEntry {
            path: f.name.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            git_oid: None,
            lfs: true,
            object_key: None,
        })
        .collect()
}

/// True when the safetensors among `weights` hold BF16 or FP16 tensors (what the codec
/// stores); a file that is not safetensors at all is the client's error.
async fn encodable(store: &Store<'_>, weights: &[&TreeFile]) -> RepoResult<bool> {
    for f in weights
        .iter()
        .filter(|f| f.entry.path.ends_with(".safetensors"))
    {
        let Some(key) = &f.entry.object_key else {
            return Ok(true); // Already in a blob: encoded once, so encodable.
        };
        let head = store.objects.read_prefix(key, 8).await?;
        let n = head
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .unwrap_or(0);
        let raw = store
            .objects
            .read_prefix(
                key,
                8u64.saturating_add(n.min(crate::safetensors::MAX_HEADER_LEN)),
            )
            .await?;
        let header = crate::safetensors::read_header(&mut &raw[..])
            .map_err(|e| RepoError::BadInput(format!("{}: {e}", f.entry.path)))?;
        header
            .check_file_len(f.entry.size)
            .map_err(|e| RepoError::BadInput(format!("{}: {e}", f.entry.path)))?;
        if header.has_16bit_floats() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Materialises the weight files in a spool and encodes them; returns the blob's path, the
/// summary and the spool (removed when dropped).
async fn encode_weights(
    store: &Store<'_>,
    weights: &[&TreeFile],
) -> RepoResult<(PathBuf, EncodeSummary, Arc<tempfile::TempDir>)> {
    let spool = Arc::new(new_spool(store.spool_root)?);
    let high_dir = spool.path().join("high");
    std::fs::create_dir(&high_dir).map_err(|e| RepoError::io("spool", e))?;
    let mut input = EncodeInput::default();
    for f in weights {
        let dest = high_dir.join(&f.entry.path);
        materialise(store, f, &dest).await?;
        input.add_high(&f.entry.path, dest);
    }
    let _turn = store
        .encodes
        .acquire()
        .await
        .map_err(|e| RepoError::Internal(format!("encode admission: {e}")))?;
    let out = spool.path().join("model.qstore");
    let (dir, target) = (spool.clone(), out.clone());
    let summary = tokio::task::spawn_blocking(move || {
        let _keep = dir;
        crate::format::encode_to_path(&input, &EncodeOptions::default(), &target, &|_| {})
    })
    .await
    .map_err(|e| RepoError::Internal(format!("encode task: {e}")))?
    .map_err(|e| {
        let mut e = RepoError::from(e);
        if let RepoError::Format(crate::format::FormatError::Input(m)) = &mut e {
            *m = m.replace(&format!("{}/", high_dir.display()), "");
        }
        e
    })?;
    for f in weights {
        let stored = summary
            .index
            .high_files
            .iter()
            .find(|o| o.name == f.entry.path);
        if stored.map(|o| &o.sha256) != Some(&f.entry.sha256) {
            return Err(RepoError::Internal(format!(
                "the blob does not reproduce {}",
                f.entry.path
            )));
        }
    }
    Ok((out, summary, spool))
}

/// A fresh spool directory for one commit's weights.
pub fn new_spool(root: &Path) -> RepoResult<tempfile::TempDir> {
    std::fs::create_dir_all(root)
        .and_then(|()| tempfile::Builder::new().prefix("upload-").tempdir_in(root))
        .map_err(|e| RepoError::Internal(format!("creating a spool: {e}")))
}

/// Writes a tree file's bytes to `dest`: copied from its object, or decoded from its blob.
async fn materialise(store: &Store<'_>, f: &TreeFile, dest: &Path) -> RepoResult<()> {
    match (&f.entry.object_key, &f.in_blob) {
        (Some(key), _) => {
            let mut out = tokio::fs::File::create(dest)
                .await
                .map_err(|e| RepoError::io("spool", e))?;
            let mut body = store.objects.get_range_stream(key, 0..f.entry.size).await?;
            let mut hasher = Sha256::new();
            while let Some(piece) = body.next().await {
                let piece = piece?;
                hasher.update(&piece);
                out.write_all(&piece)
                    .await
                    .map_err(|e| RepoError::io("spool", e))?;
            }
            out.flush().await.map_err(|e| RepoError::io("spool", e))?;
            if hex::encode(hasher.finalize()) != f.entry.sha256 {
                return Err(RepoError::Internal(format!(
                    "stored object {key} does not hash to {}",
                    f.entry.sha256
                )));
            }
            Ok(())
        }
        (None, Some((blob, name))) => {
            let name = name.clone();
            let source = store.objects.blob_source(&blob.object_key).await?;
            let dest = dest.to_owned();
            tokio::task::spawn_blocking(move || -> RepoResult<()> {
                let blob = Blob::open(source)?;
                let file = blob.file(Precision::High, Some(&name))?.clone();
                let out = std::fs::File::create(&dest).map_err(|e| RepoError::io("spool", e))?;
                let mut out = std::io::BufWriter::new(out);
                blob.write_file(&file, &mut out)?;
                std::io::Write::flush(&mut out).map_err(|e| RepoError::io("spool", e))?;
                Ok(())
            })
            .await
            .map_err(|e| RepoError::Internal(format!("decode task: {e}")))?
        }
        (None, None) => Err(RepoError::Internal(format!(
            "{}: no object and no blob",
            f.entry.path
        ))),
    }
}

/// Puts an encoded blob in the object store.
async fn store_blob(
    store: &Store<'_>,
    path: &Path,
    summary: &EncodeSummary,
    weights: String,
) -> RepoResult<MadeBlob> {
    let id = new_commit_id()?;
    let key = Objects::blob_key(&id);
    let started = std::time::Instant::now();
    let mut made = MadeBlob {
        record: blob_record(id, weights, key.clone(), &summary.index, summary.blob_len),
        objects: store.objects.clone(),
        used: false,
    };
    store.objects.put_file(&key, path).await?;
    made.record.size = summary.blob_len;
    tracing::info!(blob = %key, bytes = summary.blob_len, store_ms = started.elapsed().as_millis() as u64, "blob stored");
    Ok(made)
}

/// The catalog record of a blob with this index, stored at `key`.
pub(super) fn blob_record(
    id: String,
    weights: String,
    key: String,
    index: &Index,
    size: u64,
) -> BlobRecord {
    let total = |fs: &[OutputFile]| fs.iter().map(|f| f.size).sum::<u64>();
    BlobRecord {
        id,
        weights,
        object_key: key,
        size,
        high_dtype: match index.high_dtype {
            HighDtype::Bf16 => "bf16",
            HighDtype::F16 => "fp16",
        }
        .into(),
        high_size: total(&index.high_files),
        int8_size: total(&index.int8_files),
        tensors: (index.streams.iter().filter(|s| s.dtype.is_some()).count()
            + index.quantized.len()) as u64,
        quantized: index.quantized.len() as u64,
        created_at: now_millis(),
    }
}

/// The catalog rows of a commit: with a blob, its high and INT8 files, the INT8 `config.json`,
/// and every other file shared by both views; without, every file in both.
async fn commit_files(
    store: &Store<'_>,
    tree: Tree,
    blob: Option<&ChosenBlob>,
) -> RepoResult<Vec<(FileSet, FileEntry)>> {
    let Some((record, high, int8)) = blob else {
        return Ok(tree
            .into_values()
            .map(|f| (FileSet::Both, f.entry))
            .collect());
    };
    let mut files: Vec<(FileSet, FileEntry)> = Vec::new();
    files.extend(high.iter().cloned().map(|f| (FileSet::High, f)));
    files.extend(int8.iter().cloned().map(|f| (FileSet::Int8, f)));
    for (path, f) in tree {
        if is_weight_path(&path) {
            continue; // In the blob.
        }
        if path == "config.json" {
            let int8 = int8_config_object(store, &f.entry, &record.high_dtype).await?;
            files.push((FileSet::High, f.entry));
            files.push((FileSet::Int8, int8));
        } else {
            files.push((FileSet::Both, f.entry));
        }
    }
    Ok(files)
}

/// Stores (once) and describes the INT8 view's `config.json`.
async fn int8_config_object(
    store: &Store<'_>,
    config: &FileEntry,
    high_dtype: &str,
) -> RepoResult<FileEntry> {
    let key = config
        .object_key
        .as_deref()
        .ok_or_else(|| RepoError::Internal("config.json has no object".into()))?;
    if config.size > MAX_CONFIG_BYTES {
        return Err(RepoError::BadInput(format!(
            "config.json is larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    let raw = store.objects.read_prefix(key, config.size).await?;
    let bytes = int8_config(&raw, high_dtype)?;
    let sha256 = sha256_hex(&bytes);
    let entry = FileEntry {
        path: config.path.clone(),
        size: bytes.len() as u64,
        git_oid: Some(tree::git_blob_oid(&bytes)),
        lfs: false,
        object_key: None,
        sha256: sha256.clone(),
    };
    let key = store.objects.put_content_bytes(&sha256, bytes).await?;
    Ok(FileEntry {
        object_key: Some(key),
        ..entry
    })
}

/// The config.json of the INT8 files: the original plus bitsandbytes' `quantization_config`, as
/// transformers writes it when saving an LLM.int8 model.
pub fn int8_config(raw: &[u8], high_dtype: &str) -> RepoResult<Bytes> {
    let mut config: serde_json::Map<String, Value> = serde_json::from_slice(raw)
        .map_err(|e| RepoError::BadInput(format!("config.json is not a JSON object: {e}")))?;
    config.insert(
        "quantization_config".into(),
        json!({
            "_load_in_4bit": false,
            "_load_in_8bit": true,
            "bnb_4bit_compute_dtype": "float32",
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": "fp4",
            "bnb_4bit_use_double_quant": false,
            "llm_int8_enable_fp32_cpu_offload": false,
            "llm_int8_has_fp16_weight": false,
            "llm_int8_skip_modules": null,
            "llm_int8_threshold": 6.0,
            "load_in_4bit": false,
            "load_in_8bit": true,
            "quant_method": "bitsandbytes"
        }),
    );
    let dtype = if high_dtype == "bf16" {
        "bfloat16"
    } else {
        "float16"
    };
    config.insert("dtype".into(), json!(dtype));
    let mut out = serde_json::to_vec_pretty(&config).expect("JSON values serialise");
    out.push(b'\n');
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_keys_ignore_order_and_see_every_byte() {
        let a = ("a.safetensors".to_string(), "11".to_string());
        let b = ("b.safetensors".to_string(), "22".to_string());
        let key = |high: &[(String, String)], int8: &[(String, String)]| weights_key(high, int8);
        let (only_a, only_b) = (vec![a.clone()], vec![b.clone()]);
        assert_eq!(key(&[a.clone(), b.clone()], &[]), key(&[b, a], &[]));
        assert_ne!(key(&only_a, &[]), key(&only_b, &[]));
        assert_ne!(key(&only_a, &[]), key(&only_a, &only_b));
    }

    #[test]
    fn int8_config_adds_quantization() {
        let out = int8_config(br#"{"model_type":"bert"}"#, "bf16").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["quantization_config"]["load_in_8bit"], true);
        assert_eq!(v["dtype"], "bfloat16");
        assert!(int8_config(b"[1]", "bf16").is_err());
    }
}
