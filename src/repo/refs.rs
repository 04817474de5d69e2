//! Names of revisions: branches, tags, commit ids and their INT8 twins, and the views that
//! follow them (`int8` = INT8 of `main`, `int8-REF` = INT8 of any branch or tag; `bf16`/`fp16`
//! = `main` in its uploaded precision, as before commits existed).

use sha2::{Digest, Sha256};

use super::{RepoError, RepoResult};
use crate::format::Precision;
use crate::storage::{Catalog, CommitRecord, FileSet, RefKind};

/// Longest branch or tag name.
pub const MAX_REF_NAME: usize = 200;
/// The branch every repo has.
pub const MAIN: &str = "main";
/// Prefix of the INT8 view of a branch or tag.
pub const INT8_PREFIX: &str = "int8-";

/// A revision as a URL named it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub commit: CommitRecord,
    /// The view the name implies: `int8`, `int8-REF` and twin ids mean INT8, the rest high.
    pub precision: Precision,
    /// True when the name was an immutable commit id rather than a moving ref.
    pub pinned: bool,
}

impl Resolved {
    /// The commit id of the files served for this view.
    pub fn commit_id(&self) -> &str {
        commit_id_of(&self.commit, self.precision)
    }

    /// Which rows of the catalog hold the files of this view.
    pub fn file_set(&self) -> FileSet {
        match self.precision {
            Precision::Int8 => FileSet::Int8,
            Precision::High => FileSet::High,
        }
    }
}

/// The id a view of a commit goes by: the commit's own, or its INT8 twin's.
pub fn commit_id_of(commit: &CommitRecord, precision: Precision) -> &str {
    match precision {
        Precision::Int8 => &commit.int8_id,
        Precision::High => &commit.id,
    }
}

/// Looks up `rev` (branch, tag, view or commit id) of `repo`; the repo is known to exist.
pub async fn resolve(catalog: &Catalog, repo: &str, rev: &str) -> RepoResult<Resolved> {
    let not_found =
        || RepoError::RevisionNotFound(format!("model {repo:?} has no revision {rev:?}"));
    if is_commit_id(rev) {
        let commit = catalog
            .commit_by_id(repo, rev)
            .await?
            .ok_or_else(not_found)?;
        let precision = if commit.int8_id == rev {
            Precision::Int8
        } else {
            Precision::High
        };
        return Ok(Resolved {
            commit,
            precision,
            pinned: true,
        });
    }
    // `int8-{commit id}`: the INT8 view of a pinned commit, as `int8-{branch}` is of a branch.
    if let Some(id) = rev.strip_prefix(INT8_PREFIX).filter(|id| is_commit_id(id)) {
        let commit = catalog
            .commit_by_id(repo, id)
            .await?
            .filter(|c| c.id == id)
            .ok_or_else(not_found)?;
        return Ok(Resolved {
            commit,
            precision: Precision::Int8,
            pinned: true,
        });
    }
    let (name, precision) = match rev {
        "int8" => (MAIN, Precision::Int8),
        "bf16" | "fp16" => (MAIN, Precision::High),
        _ => match rev.strip_prefix(INT8_PREFIX) {
            Some(inner) => (inner, Precision::Int8),
            None => (rev, Precision::High),
        },
    };
    let commit = match named_ref(catalog, repo, name).await? {
        Some(c) => c,
        None => return Err(not_found()),
    };
    if rev == "bf16" || rev == "fp16" {
        // The old per-precision names: only the precision the weights are stored in.
        if commit.blob.as_ref().map(|b| b.high_dtype.as_str()) != Some(rev) {
            return Err(not_found());
        }
    }
    Ok(Resolved {
        commit,
        precision,
        pinned: false,
    })
}

/// A branch, else a tag, of that name (`refs/heads/X` and `refs/tags/X` accepted).
async fn named_ref(catalog: &Catalog, repo: &str, name: &str) -> RepoResult<Option<CommitRecord>> {
    if let Some(b) = name.strip_prefix("refs/heads/") {
        return Ok(catalog.ref_target(repo, RefKind::Branch, b).await?);
    }
    if let Some(t) = name.strip_prefix("refs/tags/") {
        return Ok(catalog.ref_target(repo, RefKind::Tag, t).await?);
    }
    if let Some(c) = catalog.ref_target(repo, RefKind::Branch, name).await? {
        return Ok(Some(c));
    }
    Ok(catalog.ref_target(repo, RefKind::Tag, name).await?)
}

/// 40 lowercase hex digits, the shape of every commit id we hand out.
pub fn is_commit_id(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh commit id.
pub fn new_commit_id() -> RepoResult<String> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| RepoError::Internal(format!("random id: {e}")))?;
    Ok(hex::encode(bytes))
}

/// The fixed id of a commit's INT8 twin: derived, so it never changes and needs no lookup to
/// compute.
pub fn int8_twin(commit_id: &str) -> String {
    let digest = Sha256::digest(format!("qstore int8 twin of {commit_id}").as_bytes());
    hex::encode(digest)[..40].to_string()
}

/// Checks a new branch or tag name: git-like, and never one the views or commit ids use.
pub fn check_ref_name(name: &str) -> RepoResult<()> {
    let bad = |why: &str| Err(RepoError::BadInput(format!("ref name {name:?}: {why}")));
    if name.is_empty() || name.len() > MAX_REF_NAME {
        return bad(&format!("must be 1-{MAX_REF_NAME} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        return bad("only A-Z a-z 0-9 - _ . / are allowed");
    }
    if name.contains("..")
        || name.contains("//")
        || name.starts_with(['/', '.', '-'])
        || name.ends_with(['/', '.'])
        || name.ends_with(".lock")
    {
        return bad("no `..`, `//`, leading `/ . -`, trailing `/ .` or `.lock`");
    }
    if is_commit_id(name) {
        return bad("40 hex digits would read as a commit id");
    }
    if ["int8", "bf16", "fp16"].contains(&name)
        || name.starts_with(INT8_PREFIX)
        || name.starts_with("refs/")
    {
        return bad("int8, bf16, fp16, int8-... and refs/... are views qstore provides");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_are_fixed_and_distinct() {
        let a = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(int8_twin(a), int8_twin(a));
        assert!(is_commit_id(&int8_twin(a)));
        assert_ne!(int8_twin(a), a);
        assert_ne!(int8_twin(a), int8_twin(&int8_twin(a)));
    }

    #[test]
    fn ref_names() {
        for ok in ["main", "dev", "v1.0", "feature/x", "release-2_b"] {
            assert!(check_ref_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(MAX_REF_NAME + 1);
        for bad in [
            "",
            "int8",
            "bf16",
            "int8-dev",
            "refs/heads/x",
            "a..b",
            "/a",
            "a/",
            ".a",
            "a.lock",
            "a b",
            "a//b",
            "-x",
            "é",
            &long,
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad}");
        }
    }
}
