//! A commit's file set: path rules, which files are LFS, git object ids as Hub clients compute
//! them, applying a commit's changes, and listing folders.

use std::collections::BTreeMap;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{RepoError, RepoResult};
use crate::format::SHARD_INDEX_NAME;
use crate::storage::{BlobRecord, FileEntry};

/// Longest path of a file inside a repo.
pub const MAX_PATH: usize = 255;
/// Regular (non-LFS) files are at most this large; Hub clients hash them whole in memory.
pub const MAX_REGULAR_BYTES: u64 = 5 << 20;

/// Extensions the Hub's default `.gitattributes` sends through LFS.
const LFS_EXTENSIONS: [&str; 28] = [
    ".7z",
    ".arrow",
    ".bin",
    ".bz2",
    ".ckpt",
    ".ftz",
    ".gz",
    ".h5",
    ".joblib",
    ".mlmodel",
    ".model",
    ".msgpack",
    ".npy",
    ".npz",
    ".onnx",
    ".ot",
    ".parquet",
    ".pb",
    ".pickle",
    ".pkl",
    ".pt",
    ".pth",
    ".rar",
    ".safetensors",
    ".tar",
    ".tflite",
    ".xz",
    ".zip",
];

/// Checks a relative file path such as `config.json` or `1_Pooling/config.json`.
pub fn check_path(path: &str) -> RepoResult<()> {
    let bad = |why: &str| Err(RepoError::BadInput(format!("file name {path:?}: {why}")));
    if path.is_empty() || path.len() > MAX_PATH {
        return bad("must be 1-255 characters");
    }
    for s in path.split('/') {
        if s.is_empty() || s == "." || s == ".." {
            return bad("empty, `.` and `..` parts are not allowed");
        }
        if s == ".git" {
            return bad("`.git` is reserved");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_. +=@,()[]~".contains(&b))
        {
            return bad("only A-Z a-z 0-9 and - _ . + = @ , ( ) [ ] ~ space are allowed");
        }
    }
    Ok(())
}

/// Whether a file goes through LFS: large, binary (a NUL in its first bytes) or of a kind the
/// Hub always stores in LFS. Weights always do.
pub fn is_lfs(path: &str, size: u64, sample: &[u8]) -> bool {
    size > MAX_REGULAR_BYTES
        || sample.contains(&0)
        || LFS_EXTENSIONS.iter().any(|e| path.ends_with(e))
}

/// Git's blob id of `bytes` (SHA-1 over `blob LEN\0` and the bytes): the `oid` Hub clients
/// compare for regular files.
pub fn git_blob_oid(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

/// The LFS pointer file git stores for an LFS file, as the Hub's tree reports it: its git blob
/// id and its size.
pub fn lfs_pointer(sha256: &str, size: u64) -> (String, u64) {
    let pointer =
        format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n");
    (git_blob_oid(pointer.as_bytes()), pointer.len() as u64)
}

/// The `oid` of a file in a tree listing: its pointer's git id for LFS files, its own git id
/// for regular ones (sha256 for regular files stored before git ids were kept).
pub fn tree_oid(f: &FileEntry) -> String {
    match (&f.git_oid, f.lfs) {
        (Some(oid), false) => oid.clone(),
        (_, true) => lfs_pointer(&f.sha256, f.size).0,
        (None, false) => f.sha256.clone(),
    }
}

/// Top-level safetensors files and their sharding index: what a commit's blob holds.
pub fn is_weight_path(path: &str) -> bool {
    !path.contains('/') && (path.ends_with(".safetensors") || path == SHARD_INDEX_NAME)
}

/// Lowercase hex sha256: how files are named everywhere (oids, ETags, object keys).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A file of a tree being built, with where its bytes are.
#[derive(Debug, Clone)]
pub struct TreeFile {
    pub entry: FileEntry,
    /// The blob holding it and its name there, when `entry.object_key` is None.
    pub in_blob: Option<(BlobRecord, String)>,
}

/// A commit's high-precision file set, by path.
pub type Tree = BTreeMap<String, TreeFile>;

/// The tree a commit starts from: its parent's high-precision files.
pub fn tree_of(files: Vec<FileEntry>, blob: Option<&BlobRecord>) -> Tree {
    files
        .into_iter()
        .map(|entry| {
            let in_blob = match (&entry.object_key, blob) {
                (None, Some(b)) => Some((b.clone(), entry.path.clone())),
                _ => None,
            };
            (entry.path.clone(), TreeFile { entry, in_blob })
        })
        .collect()
}

/// Removes `path`; a missing file is an error, as on the Hub.
pub fn delete_file(tree: &mut Tree, path: &str) -> RepoResult<()> {
    tree.remove(path).map(|_| ()).ok_or_else(|| {
        RepoError::EntryNotFound(format!("A file with this name doesn't exist: {path:?}"))
    })
}

/// Removes everything under folder `path`; an empty match is an error.
pub fn delete_folder(tree: &mut Tree, path: &str) -> RepoResult<()> {
    let prefix = format!("{}/", path.trim_end_matches('/'));
    let before = tree.len();
    tree.retain(|p, _| !p.starts_with(&prefix));
    if tree.len() == before {
        return Err(RepoError::EntryNotFound(format!(
            "A folder with this name doesn't exist: {path:?}"
        )));
    }
    Ok(())
}

/// One row of a tree listing.
#[derive(Debug, PartialEq)]
pub enum Listed<'a> {
    File(&'a FileEntry),
    Folder(String),
}

/// The entries under `prefix` (the root when empty): with `recursive`, every file below it and
/// every folder; without, its direct files and folders. Folders first within a level, as git.
pub fn list<'a>(files: &'a [FileEntry], prefix: &str, recursive: bool) -> Vec<Listed<'a>> {
    let base = if prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix.trim_end_matches('/'))
    };
    let mut folders = std::collections::BTreeSet::new();
    let mut out_files = Vec::new();
    for f in files.iter().filter(|f| f.path.starts_with(&base)) {
        let rest = &f.path[base.len()..];
        let parts: Vec<&str> = rest.split('/').collect();
        for depth in 1..parts.len() {
            if !recursive && depth > 1 {
                break;
            }
            folders.insert(format!("{base}{}", parts[..depth].join("/")));
        }
        if recursive || parts.len() == 1 {
            out_files.push(Listed::File(f));
        }
    }
    let mut out: Vec<Listed> = folders.into_iter().map(Listed::Folder).collect();
    out.extend(out_files);
    out
}

/// A folder's id in a listing: a digest of what it holds, so it changes when its files do.
pub fn folder_oid(files: &[FileEntry], folder: &str) -> String {
    let prefix = format!("{folder}/");
    let mut h = Sha1::new();
    for f in files.iter().filter(|f| f.path.starts_with(&prefix)) {
        h.update(f.path.as_bytes());
        h.update(f.sha256.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: 1,
            sha256: "00".into(),
            git_oid: None,
            lfs: false,
            object_key: Some("k".into()),
        }
    }

    #[test]
    fn paths() {
        for ok in [
            "config.json",
            "1_Pooling/config.json",
            "a b.txt",
            ".gitattributes",
            "x(1).md",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "../x",
            "a/./b",
            "a\\b",
            "x\n",
            "a/",
            ".git/config",
            "a/../b",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn git_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            git_blob_oid(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(
            git_blob_oid(b""),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        let (_, len) = lfs_pointer(&"a".repeat(64), 1234);
        assert_eq!(len, 129);
    }

    #[test]
    fn lfs_rule() {
        assert!(is_lfs("model.safetensors", 10, b"x"));
        assert!(is_lfs("data.txt", MAX_REGULAR_BYTES + 1, b"x"));
        assert!(is_lfs("blob.dat", 10, b"a\0b"));
        assert!(!is_lfs("README.md", 10, b"# hi"));
    }

    #[test]
    fn listings_have_folders() {
        let files = vec![
            entry("1_Pooling/config.json"),
            entry("a/b/c.txt"),
            entry("config.json"),
        ];
        let names = |l: Vec<Listed>| -> Vec<String> {
            l.into_iter()
                .map(|e| match e {
                    Listed::File(f) => f.path.clone(),
                    Listed::Folder(p) => format!("{p}/"),
                })
                .collect()
        };
        assert_eq!(
            names(list(&files, "", false)),
            ["1_Pooling/", "a/", "config.json"]
        );
        assert_eq!(
            names(list(&files, "", true)),
            [
                "1_Pooling/",
                "a/",
                "a/b/",
                "1_Pooling/config.json",
                "a/b/c.txt",
                "config.json"
            ]
        );
        assert_eq!(names(list(&files, "a", false)), ["a/b/"]);
        assert_eq!(names(list(&files, "a/b", false)), ["a/b/c.txt"]);
    }

    #[test]
    fn deletes() {
        let mut t = tree_of(vec![entry("a/x"), entry("a/y"), entry("b")], None);
        assert!(delete_file(&mut t, "c").is_err());
        delete_folder(&mut t, "a").unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), ["b"]);
        assert!(delete_folder(&mut t, "a").is_err());
        delete_file(&mut t, "b").unwrap();
    }
}
