//! LFS uploads: what the batch endpoint offers for each object, receiving a whole body or its
//! parts under an unguessable upload id (the capability in the URLs the client PUTs to, since
//! LFS clients send no credentials there), and the check that the bytes hash to the oid before
//! they get the content key any commit can name. Parts and bodies land in the object store, so
//! any replica can take any part.

use futures::{StreamExt, TryStreamExt};

use super::commit::Source;
use super::{RepoError, RepoResult};
use crate::storage::catalog::now_millis;
use crate::storage::{Catalog, LfsUpload, Objects, PutStreamError};

/// Objects larger than this are offered as multipart uploads, in parts of this size: the client
/// holds one part in memory per upload thread.
pub const PART_BYTES: u64 = 16 << 20;
/// Most parts one upload may have (S3's limit).
pub const MAX_PARTS: u64 = 10_000;

/// What the batch endpoint answers for one object.
#[derive(Debug)]
pub enum Offer {
    /// Already stored (as an object, or as weights some blob reproduces): nothing to send.
    Present,
    /// One PUT of the whole body.
    Basic(LfsUpload),
    /// PUTs of `parts` slices, then a completion POST.
    Multipart(LfsUpload),
}

/// Checks an oid is a sha256 in lowercase hex.
pub fn check_oid(oid: &str) -> RepoResult<()> {
    if oid.len() == 64
        && oid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(RepoError::BadInput(format!(
            "oid {oid:?} is not a lowercase hex sha256"
        )))
    }
}

/// Offers an upload for `oid` unless it is stored already.
pub async fn offer(
    catalog: &Catalog,
    objects: &Objects,
    repo: &str,
    oid: &str,
    size: u64,
    multipart: bool,
    max_size: u64,
) -> RepoResult<Offer> {
    check_oid(oid)?;
    if size > max_size {
        return Err(RepoError::BadInput(format!(
            "{oid}: {size} bytes is more than the {max_size}-byte limit"
        )));
    }
    if locate(catalog, objects, repo, oid, size).await?.is_some() {
        return Ok(Offer::Present);
    }
    let multipart = multipart && size > PART_BYTES;
    let part_size = if multipart {
        PART_BYTES.max(size.div_ceil(MAX_PARTS))
    } else {
        size
    };
    let upload = LfsUpload {
        id: new_upload_id()?,
        repo: repo.to_string(),
        oid: oid.to_string(),
        size,
        part_size,
        parts: if multipart {
            size.div_ceil(part_size)
        } else {
            1
        },
        created_at: now_millis(),
    };
    catalog.add_lfs_upload(&upload).await?;
    Ok(if multipart {
        Offer::Multipart(upload)
    } else {
        Offer::Basic(upload)
    })
}

/// Where a commit to `repo` may take the bytes with this sha256 and size from, if anywhere: an
/// object uploaded for `repo`, or a file a commit of `repo` or of a public repo has (as an object,
/// or as weights a blob reproduces). Bytes only someone else's private repo has, or uploaded for
/// another repo, are not offered: knowing a hash proves nothing.
pub async fn locate(
    catalog: &Catalog,
    objects: &Objects,
    repo: &str,
    oid: &str,
    size: u64,
) -> RepoResult<Option<Source>> {
    let key = Objects::content_key(oid);
    if catalog.lfs_object_in(oid, repo).await? && objects.has(&key, size).await? {
        return Ok(Some(Source::Object(key)));
    }
    let Some((commit, entry)) = catalog.file_by_sha256(oid, repo).await? else {
        return Ok(None);
    };
    if entry.size != size {
        return Ok(None);
    }
    Ok(match (entry.object_key, commit.blob) {
        (Some(key), _) => Some(Source::Object(key)),
        (None, Some(blob)) => Some(Source::Blob {
            blob: Box::new(blob),
            name: entry.path,
        }),
        (None, None) => None,
    })
}

/// An upload's part `n` (1-based), or its whole body for `n` = 0, from the body stream; the
/// whole body is checked against the oid at once, a part by its length (the oid check comes at
/// completion). Returns the part's ETag.
pub async fn receive<S, E>(
    catalog: &Catalog,
    objects: &Objects,
    upload: &LfsUpload,
    n: u64,
    body: S,
) -> RepoResult<String>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let expected = match n {
        0 if upload.parts == 1 => upload.size,
        0 => {
            return Err(RepoError::BadInput(
                "this upload is multipart: PUT its parts".into(),
            ));
        }
        n if n > upload.parts => {
            return Err(RepoError::BadInput(format!(
                "part {n} of an upload of {} parts",
                upload.parts
            )));
        }
        n if n == upload.parts => upload.size - upload.part_size * (upload.parts - 1),
        _ => upload.part_size,
    };
    let key = Objects::upload_part_key(&upload.id, n);
    let (size, sha256) = objects
        .put_stream(&key, body, expected)
        .await
        .map_err(|e| match e {
            PutStreamError::Store(e) => RepoError::Storage(e),
            e => RepoError::BadInput(format!("{}: {e}", upload.oid)),
        })?;
    if size != expected {
        objects.delete(&key).await?;
        return Err(RepoError::BadInput(format!(
            "{}: received {size} bytes, expected {expected}",
            upload.oid
        )));
    }
    if n == 0 {
        publish(catalog, objects, upload, &key, &sha256).await?;
    }
    Ok(sha256)
}

/// Joins the parts of a multipart upload in order and publishes them if they hash to the oid.
pub async fn complete(catalog: &Catalog, objects: &Objects, upload: &LfsUpload) -> RepoResult<()> {
    let mut keys = Vec::new();
    for n in 1..=upload.parts {
        let key = Objects::upload_part_key(&upload.id, n);
        let expected = if n == upload.parts {
            upload.size - upload.part_size * (upload.parts - 1)
        } else {
            upload.part_size
        };
        if !objects.has(&key, expected).await? {
            return Err(RepoError::BadInput(format!(
                "{}: part {n} of {} has not arrived",
                upload.oid, upload.parts
            )));
        }
        keys.push((key, expected));
    }
    let objects2 = objects.clone();
    let joined = futures::stream::iter(keys)
        .then(move |(key, len)| {
            let objects = objects2.clone();
            async move { objects.get_range_stream(&key, 0..len).await }
        })
        .try_flatten()
        .boxed();
    let whole = Objects::upload_part_key(&upload.id, 0);
    let (size, sha256) = objects
        .put_stream(&whole, joined, upload.size)
        .await
        .map_err(|e| match e {
            PutStreamError::Store(e) => RepoError::Storage(e),
            e => RepoError::Internal(format!("joining parts: {e}")),
        })?;
    if size != upload.size {
        objects.delete(&whole).await?;
        return Err(RepoError::Internal(format!(
            "{}: joined {size} bytes of {}",
            upload.oid, upload.size
        )));
    }
    publish(catalog, objects, upload, &whole, &sha256).await
}

/// Gives verified bytes their content key and forgets the upload; bytes that do not hash to
/// the oid are deleted and refused.
async fn publish(
    catalog: &Catalog,
    objects: &Objects,
    upload: &LfsUpload,
    key: &str,
    sha256: &str,
) -> RepoResult<()> {
    if sha256 != upload.oid {
        objects
            .delete_prefix(&format!("uploads/{}/", upload.id))
            .await?;
        catalog.delete_lfs_upload(&upload.id).await?;
        return Err(RepoError::BadInput(format!(
            "the uploaded bytes hash to {sha256}, not to the oid {}",
            upload.oid
        )));
    }
    objects.rename(key, &Objects::content_key(sha256)).await?;
    catalog.add_lfs_object(sha256, &upload.repo).await?;
    objects
        .delete_prefix(&format!("uploads/{}/", upload.id))
        .await?;
    catalog.delete_lfs_upload(&upload.id).await?;
    Ok(())
}

fn new_upload_id() -> RepoResult<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| RepoError::Internal(format!("random id: {e}")))?;
    Ok(hex::encode(bytes))
}

/// True for strings shaped like an upload id (so a URL cannot name anything else).
pub fn is_upload_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
