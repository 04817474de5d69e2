//! The Xet write path: current Hub clients (`hf_xet`) upload large files as xorbs (containers of
//! compressed, content-defined chunks named by a Merkle hash) and then a shard that says how
//! each file is rebuilt from xorb chunk ranges and what its sha256 is. qstore verifies every
//! claim against the bytes and turns each file into what an LFS upload would have left: a
//! verified object under its content key, recorded for the repo, that a commit's `lfsFile` line
//! names by sha256. So a commit goes through one pipeline whichever way its files came.
//!
//! The formats are HF's (`xet_core_structures`); this module only decides what to trust. Xorbs
//! are working data: their rows expire after the gc grace period like LFS records, and the CAS
//! URL carries a generation that changes when any are collected, because clients dedup against
//! a local cache of their earlier shards keyed by that URL.

use std::io::{BufReader, BufWriter, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use xet_core_structures::merklehash::{
    MerkleHash, MerkleHashSubtree, compute_data_hash, xorb_hash,
};
use xet_core_structures::metadata_shard::MDBShardFileHeader;
use xet_core_structures::metadata_shard::file_structs::MDBFileInfoView;
use xet_core_structures::metadata_shard::streaming_shard::process_shard_file_info_section;
use xet_core_structures::xorb_object::{
    XorbObject, XorbObjectInfoV1, deserialize_chunk, deserialize_chunk_header,
};

use super::{RepoError, RepoResult, lfs};
use crate::storage::catalog::now_millis;
use crate::storage::{Catalog, ObjectSource, Objects, PutStreamError, XetToken};

/// Largest chunk a client makes (128 KiB raw).
const MAX_CHUNK_BYTES: u32 = 128 << 10;
/// Most chunks in one xorb.
const MAX_XORB_CHUNKS: usize = 8192;
/// Largest xorb body: 64 MiB of chunks, their 8-byte headers, and room for chunks LZ4 could not
/// shrink.
pub const MAX_XORB_BYTES: u64 = (64 << 20) + (MAX_XORB_CHUNKS as u64) * 8 + (1 << 20);
/// Largest shard accepted (the client splits its shards at 64 MiB).
pub const MAX_SHARD_BYTES: u64 = 80 << 20;
/// Most bytes of file entries one shard may hold: what is kept in memory while it is checked
/// (48 bytes per term; about 170,000 terms, each up to a 64 MiB xorb).
const MAX_FILE_SECTION_BYTES: u64 = 8 << 20;
/// Largest xorb footer read back (8,192 chunks take about 400 KiB).
const MAX_FOOTER_BYTES: u64 = 4 << 20;
/// Decompressed bytes sent to the object store at a time while a file is rebuilt.
const REBUILD_PIECE: usize = 1 << 20;
/// Stored bytes of a xorb read at once while a file is rebuilt.
const READ_GROUP: u32 = 1 << 20;

/// A CAS token as handed to a client.
#[derive(Debug, Clone)]
pub struct Grant {
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The path segment that names this repo's CAS for this generation (see module docs).
    pub scope: String,
}

/// Issues a CAS token that may write `repo` for `ttl_secs`; `parent` is the hash of the API
/// token it is issued for (empty when there is none to revoke).
pub async fn issue_token(
    catalog: &Catalog,
    repo: &str,
    parent: &str,
    ttl_secs: u64,
) -> RepoResult<Grant> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| RepoError::Internal(format!("random token: {e}")))?;
    let token = format!("xet_{}", hex::encode(bytes));
    let expires_at = now_millis() / 1000 + i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2);
    let record = XetToken {
        repo: repo.to_string(),
        parent: parent.to_string(),
        expires_at,
    };
    catalog.add_xet_token(&record, &token_hash(&token)).await?;
    Ok(Grant {
        token,
        expires_at,
        scope: scope(catalog, repo).await?,
    })
}

/// The CAS URL segment for `repo`: changes with the generation, so a client's dedup cache
/// (kept per URL) starts afresh once xorbs it may remember have been collected.
pub async fn scope(catalog: &Catalog, repo: &str) -> RepoResult<String> {
    let generation = catalog.xet_generation().await?;
    let digest = Sha256::digest(format!("qstore xet scope\n{repo}\n{generation}"));
    Ok(hex::encode(&digest[..8]))
}

/// The stored record of a CAS token, if it is known and has not expired.
pub async fn token_record(catalog: &Catalog, token: &str) -> RepoResult<XetToken> {
    let record = catalog
        .xet_token(&token_hash(token))
        .await?
        .ok_or_else(|| RepoError::Unauthorized("unknown Xet token".into()))?;
    if !record.parent.is_empty() && catalog.token_by_hash(&record.parent).await?.is_none() {
        return Err(RepoError::Unauthorized(
            "the API token this Xet token was issued for has been revoked".into(),
        ));
    }
    if record.expires_at <= now_millis() / 1000 {
        return Err(RepoError::Unauthorized(format!(
            "the Xet token expired at {} (unix seconds); ask xet-write-token for a new one",
            record.expires_at
        )));
    }
    Ok(record)
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(format!("qstore xet token\n{token}")))
}

/// Parses a Merkle hash from a URL.
pub fn parse_hash(hex: &str) -> RepoResult<MerkleHash> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RepoError::BadInput(format!(
            "{hex:?} is not a 64-digit hex Merkle hash"
        )));
    }
    MerkleHash::from_hex(hex).map_err(|e| RepoError::BadInput(format!("{hex:?}: {e}")))
}

/// True when the xorb `hash` is held for `repo` (a client asks before uploading it).
pub async fn has_xorb(catalog: &Catalog, repo: &str, hash: &MerkleHash) -> RepoResult<bool> {
    Ok(catalog.xet_xorb_in(&hash.hex(), repo).await?.is_some())
}

/// Receives a xorb body (chunks without footer) for `repo`: spools it, checks every chunk and
/// that they hash to `hash`, adds the footer, and stores it unless the same xorb is stored.
/// Returns whether the xorb is new for this repo, and its stored size.
pub async fn receive_xorb<S, E>(
    catalog: &Catalog,
    objects: &Objects,
    spool_root: &Path,
    repo: &str,
    hash: MerkleHash,
    body: S,
) -> RepoResult<(bool, u64)>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let spool = spool_body(spool_root, "upload-xorb-", body, MAX_XORB_BYTES).await?;
    let path = spool.path().to_path_buf();
    let size = tokio::task::spawn_blocking(move || seal_xorb(&path, &hash))
        .await
        .map_err(|e| RepoError::Internal(format!("xorb check task: {e}")))??;
    let key = Objects::xorb_key(&hash.hex());
    if !objects.has(&key, size).await? {
        // Streamed like an LFS body: at most two store parts in flight.
        let file = tokio::fs::File::open(spool.path())
            .await
            .map_err(|e| RepoError::io("xorb spool", e))?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        objects
            .put_stream(&key, body, size)
            .await
            .map_err(|e| match e {
                PutStreamError::Store(e) => RepoError::Storage(e),
                e => RepoError::Internal(format!("storing xorb {}: {e}", hash.hex())),
            })?;
    }
    let inserted = catalog.add_xet_xorb(&hash.hex(), repo, size).await?;
    Ok((inserted, size))
}

/// A request body in a spool file under `spool_root` (named `prefix*`, so gc knows it), removed
/// when dropped; more than `limit` bytes is refused.
async fn spool_body<S, E>(
    spool_root: &Path,
    prefix: &str,
    mut body: S,
    limit: u64,
) -> RepoResult<tempfile::NamedTempFile>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    std::fs::create_dir_all(spool_root).map_err(|e| RepoError::io("spool directory", e))?;
    let spool = tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(spool_root)
        .map_err(|e| RepoError::io("spool file", e))?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(spool.path())
        .await
        .map_err(|e| RepoError::io("spool file", e))?;
    let mut total = 0u64;
    while let Some(piece) = body.next().await {
        let piece =
            piece.map_err(|e| RepoError::BadInput(format!("the upload ended early: {e}")))?;
        total += piece.len() as u64;
        if total > limit {
            return Err(RepoError::TooLarge(format!(
                "more than the {limit}-byte limit"
            )));
        }
        file.write_all(&piece)
            .await
            .map_err(|e| RepoError::io("spool write", e))?;
    }
    file.flush()
        .await
        .map_err(|e| RepoError::io("spool write", e))?;
    Ok(spool)
}

/// Checks a spooled xorb body chunk by chunk (holding one chunk), requires its chunks to hash
/// to `expected`, appends the footer, and has the whole checked again by the format's own
/// validator. Returns the stored size.
fn seal_xorb(path: &Path, expected: &MerkleHash) -> RepoResult<u64> {
    let io = |e: std::io::Error| RepoError::io("xorb spool", e);
    let bad = |m: String| RepoError::BadInput(format!("xorb {}: {m}", expected.hex()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let body_len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(&mut file);
    let mut info = XorbObjectInfoV1::default();
    let mut chunks = Vec::new();
    let (mut offset, mut unpacked) = (0u64, 0u32);
    let mut data = Vec::with_capacity(MAX_CHUNK_BYTES as usize);
    while offset < body_len {
        let n = chunks.len();
        if n == MAX_XORB_CHUNKS {
            return Err(bad(format!("more than {MAX_XORB_CHUNKS} chunks")));
        }
        let header = deserialize_chunk_header(&mut reader)
            .map_err(|e| bad(format!("chunk {n} at byte {offset}: {e}")))?;
        let (stored, raw) = (
            header.get_compressed_length(),
            header.get_uncompressed_length(),
        );
        if raw > MAX_CHUNK_BYTES || stored > MAX_CHUNK_BYTES + 4096 {
            return Err(bad(format!(
                "chunk {n} claims {stored} stored and {raw} raw bytes; chunks hold at most {MAX_CHUNK_BYTES}"
            )));
        }
        data.clear();
        let scheme = header
            .get_compression_scheme()
            .map_err(|e| bad(format!("chunk {n}: {e}")))?;
        let mut payload = (&mut reader).take(u64::from(stored));
        let mut sink = Bounded {
            out: &mut data,
            cap: raw as usize,
        };
        scheme
            .decompress_from_reader(&mut payload, &mut sink)
            .map_err(|e| bad(format!("chunk {n} does not decompress: {e}")))?;
        if payload.limit() != 0 || data.len() != raw as usize {
            return Err(bad(format!(
                "chunk {n} holds {} raw bytes, its header says {raw}",
                data.len()
            )));
        }
        let chunk_hash = compute_data_hash(&data);
        chunks.push((chunk_hash, u64::from(raw)));
        offset += 8 + u64::from(stored);
        unpacked += raw;
        info.chunk_hashes.push(chunk_hash);
        info.chunk_boundary_offsets.push(offset as u32);
        info.unpacked_chunk_offsets.push(unpacked);
    }
    if chunks.is_empty() {
        return Err(bad("a xorb holds at least one chunk".into()));
    }
    if offset != body_len {
        return Err(bad(format!(
            "the body is {body_len} bytes, its chunks {offset}"
        )));
    }
    let computed = xorb_hash(&chunks);
    if computed != *expected {
        return Err(bad(format!("its chunks hash to {}", computed.hex())));
    }
    info.xorb_hash = computed;
    info.num_chunks = chunks.len() as u32;
    info.fill_in_boundary_offsets();
    drop(reader);
    file.seek(SeekFrom::End(0)).map_err(io)?;
    let mut writer = BufWriter::new(&mut file);
    XorbObject::serialize_given_info(&mut writer, info)
        .map_err(|e| RepoError::Internal(format!("xorb footer: {e}")))?;
    writer.flush().map_err(io)?;
    drop(writer);
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let valid = XorbObject::validate_xorb_object(&mut BufReader::new(&mut file), expected)
        .map_err(|e| bad(format!("{e}")))?;
    if valid.is_none() {
        return Err(bad("the sealed xorb does not validate".into()));
    }
    Ok(file.metadata().map_err(io)?.len())
}

/// A writer that refuses more than `cap` bytes: a chunk whose payload inflates past its
/// header's length is cut off there, not buffered.
struct Bounded<'a> {
    out: &'a mut Vec<u8>,
    cap: usize,
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.cap {
            return Err(std::io::Error::other(format!(
                "decompresses to more than {} bytes",
                self.cap
            )));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a shard added.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShardOutcome {
    /// Files the shard describes.
    pub files: usize,
    /// Files rebuilt, verified and recorded for the repo now (the rest were there already).
    pub added: usize,
}

/// Receives a shard for `repo`: for each file it describes, checks every term against xorbs
/// held for the repo, rebuilds the bytes from them and requires they hash to the file's
/// claimed sha256; only then is the file recorded for the repo, as a verified LFS object.
/// Nothing of a file that fails a check is kept; the shard's xorb section is never trusted.
pub async fn receive_shard<S, E>(
    catalog: &Catalog,
    objects: &Objects,
    spool_root: &Path,
    repo: &str,
    max_file_bytes: u64,
    body: S,
) -> RepoResult<ShardOutcome>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let spool = spool_body(spool_root, "upload-shard-", body, MAX_SHARD_BYTES).await?;
    let path: PathBuf = spool.path().to_path_buf();
    let files = tokio::task::spawn_blocking(move || read_file_section(&path))
        .await
        .map_err(|e| RepoError::Internal(format!("shard read task: {e}")))??;
    let mut outcome = ShardOutcome {
        files: files.len(),
        added: 0,
    };
    for file in files {
        if admit_file(catalog, objects, repo, &file, max_file_bytes).await? {
            outcome.added += 1;
        }
    }
    Ok(outcome)
}

/// The file entries of a spooled shard, parsed with a size budget.
fn read_file_section(path: &Path) -> RepoResult<Vec<MDBFileInfoView>> {
    let bad = |m: String| RepoError::BadInput(format!("shard: {m}"));
    let file = std::fs::File::open(path).map_err(|e| RepoError::io("shard spool", e))?;
    let mut reader = BufReader::new(file);
    let header = MDBShardFileHeader::deserialize(&mut reader).map_err(|e| bad(e.to_string()))?;
    if header.version != 2 {
        return Err(bad(format!("version {} (expected 2)", header.version)));
    }
    let mut files = Vec::new();
    process_shard_file_info_section(
        &mut reader,
        |view| {
            files.push(view);
            Ok(())
        },
        Some(MAX_FILE_SECTION_BYTES),
    )
    .map_err(|e| bad(e.to_string()))?;
    Ok(files)
}

/// Checks and rebuilds one file of a shard; true when it was added for the repo now.
async fn admit_file(
    catalog: &Catalog,
    objects: &Objects,
    repo: &str,
    file: &MDBFileInfoView,
    max_file_bytes: u64,
) -> RepoResult<bool> {
    let name = file.file_hash().hex();
    let bad = |m: String| RepoError::BadInput(format!("shard file {name}: {m}"));
    let Some(ext) = file.metadata_ext() else {
        return Err(bad("no sha256 (metadata extension) given".into()));
    };
    if !file.contains_verification() {
        return Err(bad("no verification entries given".into()));
    }
    let sha256 = ext.sha256.hex();
    let size: u64 = (0..file.num_entries())
        .map(|i| u64::from(file.entry(i).unpacked_segment_bytes))
        .sum();
    if size > max_file_bytes {
        return Err(bad(format!(
            "{size} bytes is more than the {max_file_bytes}-byte limit"
        )));
    }
    if lfs::locate(catalog, objects, repo, &sha256, size)
        .await?
        .is_some()
    {
        return Ok(false); // The repo may use these bytes already: nothing new is claimed.
    }
    let mut terms = Vec::with_capacity(file.num_entries());
    for i in 0..file.num_entries() {
        let entry = file.entry(i);
        let xorb = entry.xorb_hash.hex();
        if catalog.xet_xorb_in(&xorb, repo).await?.is_none() {
            return Err(bad(format!(
                "term {i} names xorb {xorb}, which was not uploaded for {repo}"
            )));
        }
        terms.push(Term {
            xorb: entry.xorb_hash,
            start: entry.chunk_index_start,
            end: entry.chunk_index_end,
            bytes: entry.unpacked_segment_bytes,
            range_hash: file.verification(i).range_hash,
        });
    }
    let upload = format!("xet-{}", hex::encode(random_bytes()?));
    let key = Objects::upload_part_key(&upload, 0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(2);
    let rebuild = {
        let objects = objects.clone();
        let runtime = tokio::runtime::Handle::current();
        let name = name.clone();
        tokio::task::spawn_blocking(move || {
            let result = rebuild(&runtime, &objects, &terms, &tx, &name);
            if let Err(e) = &result {
                let _ = tx.blocking_send(Err(e.to_string()));
            }
            result
        })
    };
    let stream = tokio_stream_from(rx);
    let put = objects.put_stream(&key, stream, size).await;
    let rebuilt_hash = rebuild
        .await
        .map_err(|e| RepoError::Internal(format!("rebuild task: {e}")))??;
    let (written, digest) = put.map_err(|e| match e {
        PutStreamError::Store(e) => RepoError::Storage(e),
        e => RepoError::Internal(format!("rebuilding {name}: {e}")),
    })?;
    let refuse = |m: String| async {
        objects.delete(&key).await?;
        Err::<bool, _>(bad(m))
    };
    if written != size {
        return refuse(format!("its terms hold {written} bytes, not {size}")).await;
    }
    if rebuilt_hash != file.file_hash() {
        return refuse("its chunks do not hash to the file hash".into()).await;
    }
    if digest != sha256 {
        return refuse(format!(
            "its bytes hash to sha256 {digest}, not to the claimed {sha256}"
        ))
        .await;
    }
    objects.rename(&key, &Objects::content_key(&sha256)).await?;
    catalog.add_lfs_object(&sha256, repo).await?;
    Ok(true)
}

/// One term of a file: chunks `start..end` of a xorb, `bytes` long when decompressed, with the
/// client's proof that it knows those chunks.
struct Term {
    xorb: MerkleHash,
    start: u32,
    end: u32,
    bytes: u32,
    range_hash: MerkleHash,
}

/// Streams a file's bytes from its terms into `tx`, checking each term against the stored
/// xorb (range, length, verification hash) and each chunk against its stored hash. Holds one
/// xorb footer, a group of stored chunks and a MiB of rebuilt bytes. Returns the file hash of
/// the chunks it sent.
fn rebuild(
    runtime: &tokio::runtime::Handle,
    objects: &Objects,
    terms: &[Term],
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, String>>,
    name: &str,
) -> RepoResult<MerkleHash> {
    use crate::format::BlobSource;
    let bad = |m: String| RepoError::BadInput(format!("shard file {name}: {m}"));
    let mut chunks = FileHasher::default();
    let mut current: Option<(String, Arc<(ObjectSource, XorbObject)>)> = None;
    let mut piece = Vec::with_capacity(REBUILD_PIECE);
    for (i, term) in terms.iter().enumerate() {
        let key = Objects::xorb_key(&term.xorb.hex());
        let xorb = match &current {
            Some((open, x)) if *open == key => x.clone(),
            _ => {
                let x = Arc::new(open_xorb(runtime, objects, &key)?);
                current = Some((key.clone(), x.clone()));
                x
            }
        };
        let (source, footer) = (&xorb.0, &xorb.1);
        if term.start >= term.end || term.end > footer.info.num_chunks {
            return Err(bad(format!(
                "term {i} names chunks {}..{} of a xorb of {}",
                term.start, term.end, footer.info.num_chunks
            )));
        }
        let length = footer
            .uncompressed_range_length(term.start, term.end)
            .map_err(|e| bad(format!("term {i}: {e}")))?;
        if length != term.bytes {
            return Err(bad(format!(
                "term {i} claims {} bytes, its chunks hold {length}",
                term.bytes
            )));
        }
        let proof = footer
            .generate_chunk_range_hash(term.start, term.end)
            .map_err(|e| bad(format!("term {i}: {e}")))?;
        if proof != term.range_hash {
            return Err(bad(format!(
                "term {i}: the verification hash does not match"
            )));
        }
        let stored_err =
            |n: u32, e: String| RepoError::Internal(format!("stored {} chunk {n}: {e}", key));
        let mut n = term.start;
        while n < term.end {
            // One ranged read per group of chunks up to READ_GROUP bytes (at least one chunk).
            let (from, _) = footer
                .get_byte_offset(n, n + 1)
                .map_err(|e| stored_err(n, e.to_string()))?;
            let mut m = n + 1;
            while m < term.end {
                let (_, to) = footer
                    .get_byte_offset(n, m + 1)
                    .map_err(|e| stored_err(m, e.to_string()))?;
                if to - from > READ_GROUP {
                    break;
                }
                m += 1;
            }
            let (_, to) = footer
                .get_byte_offset(n, m)
                .map_err(|e| stored_err(n, e.to_string()))?;
            let stored = source
                .read_at(u64::from(from), (to - from) as usize)
                .map_err(|e| RepoError::Internal(format!("reading {}: {e}", key)))?;
            let mut cursor = Cursor::new(&stored);
            for k in n..m {
                let (data, _, raw) =
                    deserialize_chunk(&mut cursor).map_err(|e| stored_err(k, e.to_string()))?;
                let hash = compute_data_hash(&data);
                if hash != footer.info.chunk_hashes[k as usize] {
                    return Err(stored_err(k, "does not match its hash".into()));
                }
                chunks.push(hash, u64::from(raw))?;
                piece.extend_from_slice(&data);
                if piece.len() >= REBUILD_PIECE {
                    send(tx, &mut piece)?;
                }
            }
            n = m;
        }
    }
    send(tx, &mut piece)?;
    chunks.finish()
}

/// The file hash of a stream of chunks in O(log n) memory (the format's `file_hash` wants them
/// all at once: 40 bytes per 64 KiB chunk, 160 MB for the largest file accepted).
#[derive(Default)]
struct FileHasher {
    done: Option<MerkleHashSubtree>,
    pending: Vec<(MerkleHash, u64)>,
}

/// Chunks gathered before they are folded into the subtree.
const HASH_BATCH: usize = 4096;

impl FileHasher {
    fn push(&mut self, hash: MerkleHash, size: u64) -> RepoResult<()> {
        if self.pending.len() == HASH_BATCH {
            // Folded while one chunk stays pending: the last batch is the one marked as the end.
            let last = self.pending.pop().expect("a full batch");
            self.fold(false)?;
            self.pending.push(last);
        }
        self.pending.push((hash, size));
        Ok(())
    }

    fn fold(&mut self, at_end: bool) -> RepoResult<()> {
        let part = MerkleHashSubtree::from_chunks(self.done.is_none(), &self.pending, at_end);
        self.pending.clear();
        match &mut self.done {
            None => self.done = Some(part),
            Some(done) => done
                .merge_into(&part)
                .map_err(|e| RepoError::Internal(format!("file hash: {e}")))?,
        }
        Ok(())
    }

    fn finish(mut self) -> RepoResult<MerkleHash> {
        if self.done.is_none() && self.pending.is_empty() {
            return Ok(MerkleHash::default()); // The format's hash of an empty file.
        }
        self.fold(true)?;
        let tree = self.done.expect("folded");
        let aggregated = tree
            .final_hash()
            .ok_or_else(|| RepoError::Internal("file hash: open subtree".into()))?;
        Ok(aggregated.hmac(MerkleHash::default()))
    }
}

fn send(
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, String>>,
    piece: &mut Vec<u8>,
) -> RepoResult<()> {
    if piece.is_empty() {
        return Ok(());
    }
    let bytes = Bytes::from(std::mem::replace(piece, Vec::with_capacity(REBUILD_PIECE)));
    tx.blocking_send(Ok(bytes))
        .map_err(|_| RepoError::Internal("the object store stopped taking the rebuilt file".into()))
}

/// A stored xorb: a ranged reader and its footer (read from the end of the object).
fn open_xorb(
    runtime: &tokio::runtime::Handle,
    objects: &Objects,
    key: &str,
) -> RepoResult<(ObjectSource, XorbObject)> {
    use crate::format::BlobSource;
    let missing = |e: String| RepoError::BadInput(format!("xorb {key} is not held any more: {e}"));
    let source = runtime
        .block_on(objects.blob_source(key))
        .map_err(|e| missing(e.to_string()))?;
    let len = source.len();
    let read = |offset: u64, n: u64| {
        source
            .read_at(offset, n as usize)
            .map_err(|e| RepoError::Internal(format!("reading {key}: {e}")))
    };
    if len < 4 {
        return Err(RepoError::Internal(format!(
            "stored xorb {key} is {len} bytes"
        )));
    }
    let tail = read(len - 4, 4)?;
    let info_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if info_len > MAX_FOOTER_BYTES || info_len + 4 > len {
        return Err(RepoError::Internal(format!(
            "stored xorb {key} has a bad footer"
        )));
    }
    let footer = read(len - 4 - info_len, info_len + 4)?;
    let xorb = XorbObject::deserialize(&mut Cursor::new(footer))
        .map_err(|e| RepoError::Internal(format!("stored xorb {key}: {e}")))?;
    Ok((source, xorb))
}

fn random_bytes() -> RepoResult<[u8; 16]> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| RepoError::Internal(format!("random id: {e}")))?;
    Ok(bytes)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
) -> impl futures::Stream<Item = Result<Bytes, String>> + Unpin {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[cfg(test)]
mod tests {
    use xet_core_structures::xorb_object::{CompressionScheme, serialize_chunk};

    use super::*;

    /// A xorb body (chunks without footer) and its hash, as a client builds them.
    fn xorb(chunks: &[Vec<u8>], scheme: CompressionScheme) -> (Vec<u8>, MerkleHash) {
        let mut body = Vec::new();
        let mut hashes = Vec::new();
        for c in chunks {
            serialize_chunk(c, &mut body, scheme).unwrap();
            hashes.push((compute_data_hash(c), c.len() as u64));
        }
        (body, xorb_hash(&hashes))
    }

    fn sample_chunks() -> Vec<Vec<u8>> {
        let text: Vec<u8> = b"qstore xet "
            .iter()
            .cycle()
            .take(70_000)
            .copied()
            .collect();
        let noise: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        vec![text, noise, vec![7u8; 1]]
    }

    fn seal(body: &[u8], hash: &MerkleHash) -> RepoResult<u64> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), body).unwrap();
        let result = seal_xorb(file.path(), hash);
        if result.is_ok() {
            // What is stored is a complete xorb the format's reader accepts.
            let stored = std::fs::read(file.path()).unwrap();
            let footer = XorbObject::deserialize(&mut Cursor::new(&stored)).unwrap();
            assert_eq!(footer.info.xorb_hash, *hash);
            assert_eq!(&stored[..body.len()], body);
        }
        result
    }

    fn refused(result: RepoResult<u64>, words: &str) {
        match result {
            Err(RepoError::BadInput(m)) => assert!(m.contains(words), "{m}"),
            other => panic!("expected a refusal naming {words:?}, got {other:?}"),
        }
    }

    #[test]
    fn the_streamed_file_hash_is_the_formats() {
        use xet_core_structures::merklehash::file_hash;
        for n in [
            0usize,
            1,
            2,
            9,
            HASH_BATCH - 1,
            HASH_BATCH,
            HASH_BATCH + 1,
            3 * HASH_BATCH + 17,
        ] {
            let chunks: Vec<(MerkleHash, u64)> = (0..n as u64)
                .map(|i| (compute_data_hash(&i.to_le_bytes()), 1000 + i % 7))
                .collect();
            let mut hasher = FileHasher::default();
            for &(h, size) in &chunks {
                hasher.push(h, size).unwrap();
            }
            assert_eq!(hasher.finish().unwrap(), file_hash(&chunks), "{n} chunks");
        }
    }

    #[test]
    fn a_valid_xorb_is_sealed_with_its_footer() {
        for scheme in [CompressionScheme::None, CompressionScheme::LZ4] {
            let (body, hash) = xorb(&sample_chunks(), scheme);
            let size = seal(&body, &hash).unwrap();
            assert!(size > body.len() as u64);
        }
    }

    #[test]
    fn xorbs_that_lie_are_refused() {
        let (body, hash) = xorb(&sample_chunks(), CompressionScheme::LZ4);
        let (_, other) = xorb(&[b"other".to_vec()], CompressionScheme::None);
        refused(seal(&body, &other), "chunks hash to");
        let mut flipped = body.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        refused(seal(&flipped, &hash), "xorb");
        refused(seal(&body[..body.len() - 3], &hash), "chunk 2");
        let mut trailing = body.clone();
        trailing.push(0);
        refused(seal(&trailing, &hash), "chunk 3");
        refused(seal(&[], &hash), "at least one chunk");
    }

    #[test]
    fn a_chunk_that_inflates_past_its_header_is_cut_off() {
        // An uncompressed chunk whose header says 16 raw bytes but carries 64.
        let mut body = vec![0u8, 64, 0, 0, 0, 16, 0, 0];
        body.extend_from_slice(&[1u8; 64]);
        let hash = xorb_hash(&[(compute_data_hash(&[1u8; 16]), 16)]);
        refused(seal(&body, &hash), "chunk 0");
        // A header claiming more than a chunk may hold.
        let mut body = vec![0u8, 0, 0, 4, 0, 0, 0, 4];
        body.extend_from_slice(&[0u8; 16]);
        refused(seal(&body, &hash), "chunk 0 at byte 0");
    }
}
