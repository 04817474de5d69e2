//! The catalog: repos, their commits and refs, the blobs and objects commits name, LFS uploads in
//! progress and API tokens, in SQL that SQLite and PostgreSQL both run (through sqlx's `Any`
//! driver, so the backend is the URL). Plain data in, plain data out: what the rows mean is the
//! repository model's business (`crate::repo`).

use std::collections::HashSet;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::StorageError;

/// Which of a commit's file lists a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSet {
    High,
    Int8,
    /// Shared by both precisions (the tokenizer, the README...).
    Both,
}

impl FileSet {
    pub fn as_str(self) -> &'static str {
        match self {
            FileSet::High => "high",
            FileSet::Int8 => "int8",
            FileSet::Both => "both",
        }
    }
}

/// A repo as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoRecord {
    pub name: String,
    pub private: bool,
    pub created_at: i64,
}

/// One stored `.qstore` blob, shared by every commit whose weights it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobRecord {
    pub id: String,
    /// What the blob reproduces (see `crate::repo::weights_key`): equal keys, equal blobs.
    pub weights: String,
    pub object_key: String,
    pub size: u64,
    /// `bf16` or `fp16`.
    pub high_dtype: String,
    pub high_size: u64,
    pub int8_size: u64,
    pub tensors: u64,
    pub quantized: u64,
    pub created_at: i64,
}

/// One immutable commit with its blob, if it has weights.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitRecord {
    pub id: String,
    pub int8_id: String,
    pub repo: String,
    pub parent: Option<String>,
    pub title: String,
    pub message: String,
    pub author: String,
    pub created_at: i64,
    pub blob: Option<BlobRecord>,
}

/// A file of a commit: decoded from the commit's blob (`object_key` None) or a plain object.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Git blob SHA-1 of a regular file's bytes (what Hub clients compare for regular files).
    pub git_oid: Option<String>,
    /// Stored through LFS (large or binary), as Hub tree listings mark it.
    pub lfs: bool,
    pub object_key: Option<String>,
}

/// Branch or tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Branch,
    Tag,
}

impl RefKind {
    fn as_str(self) -> &'static str {
        match self {
            RefKind::Branch => "branch",
            RefKind::Tag => "tag",
        }
    }
}

/// A new commit and everything that becomes visible with it.
pub struct NewCommit {
    pub commit: CommitRecord,
    pub files: Vec<(FileSet, FileEntry)>,
    pub branch: String,
    /// The commit the branch must still point at (None: the branch must not exist yet).
    pub expected_head: Option<String>,
    /// Create the repo if missing (the native upload does; Hub commits need `create_repo`).
    pub create_repo: bool,
}

/// Why a commit did not land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// The branch moved (or appeared) since the commit was prepared.
    StaleHead,
    /// The repo does not exist (and the commit may not create it).
    NoRepo,
}

/// What deleting one commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteCommit {
    /// Deleted; these refs moved to its parent.
    Deleted(Vec<String>),
    /// Not deleted: these refs point at it (and `force` was not given, or it has no parent).
    Referenced(Vec<String>),
    NotFound,
}

/// An API token as stored (its hash, never the token).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    /// Namespaces it may write in; empty: every namespace.
    pub scopes: Vec<String>,
    pub read_only: bool,
    pub created_at: i64,
}

/// An LFS upload that was offered and not yet completed.
#[derive(Debug, Clone, PartialEq)]
pub struct LfsUpload {
    pub id: String,
    pub repo: String,
    pub oid: String,
    pub size: u64,
    pub part_size: u64,
    pub parts: u64,
    pub created_at: i64,
}

/// A short-lived CAS token (the Xet write path): which repo it may write, until when (unix
/// seconds), and the hash of the API token it was issued for (empty: a configured token or an
/// open loopback server).
#[derive(Debug, Clone, PartialEq)]
pub struct XetToken {
    pub repo: String,
    pub parent: String,
    pub expires_at: i64,
}

/// Order of `GET /api/models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoSort {
    Name,
    /// Newest commit first.
    Recent,
    /// Most stored bytes first.
    Size,
}

/// The SQL catalog.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
}

const BLOB_COLUMNS: &str = "b.id, b.weights, b.object_key, b.size, b.high_dtype, b.high_size, \
     b.int8_size, b.tensors, b.quantized, b.created_at";
const COMMIT_COLUMNS: &str =
    "c.id, c.int8_id, c.repo, c.parent, c.title, c.message, c.author, c.created_at";

fn commit_select() -> String {
    format!(
        "SELECT {COMMIT_COLUMNS}, {BLOB_COLUMNS} FROM commits c LEFT JOIN blobs b ON b.id = c.blob"
    )
}

impl Catalog {
    /// Connects; a SQLite file is created if missing and switched to WAL.
    pub async fn connect(url: &str, max_connections: Option<u32>) -> Result<Catalog, StorageError> {
        sqlx::any::install_default_drivers();
        if let Some(parent) = sqlite_path(url).and_then(|p| std::path::Path::new(p).parent()) {
            std::fs::create_dir_all(parent)?;
        }
        let options = AnyConnectOptions::from_str(url)?;
        // One direct connection first: an unreachable server is reported at once with its real
        // error, not after the pool's 30 s of retries as "pool timed out".
        sqlx::Connection::close(
            <sqlx::AnyConnection as sqlx::Connection>::connect_with(&options).await?,
        )
        .await?;
        let mut pool = AnyPoolOptions::new();
        if let Some(n) = max_connections {
            pool = pool.max_connections(n);
        }
        let pool = pool.connect_with(options).await?;
        if sqlite_path(url).is_some() {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
        }
        Ok(Catalog { pool })
    }

    /// Applies the migrations in `migrations/` (PostgreSQL: under sqlx's advisory lock).
    pub async fn migrate(&self) -> Result<(), StorageError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    /// Reachability probe for `/readyz`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ----- repos

    /// Creates a repo; false when it already exists.
    pub async fn create_repo(&self, name: &str, private: bool) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "INSERT INTO repos (name, created_at, private) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now_millis())
        .bind(i64::from(private))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A repo by name (private or not: visibility is the caller's business).
    pub async fn repo(&self, name: &str) -> Result<Option<RepoRecord>, StorageError> {
        let row = sqlx::query("SELECT name, private, created_at FROM repos WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(repo_from_row).transpose()
    }

    /// Changes a repo's visibility; false when there is no such repo.
    pub async fn set_private(&self, name: &str, private: bool) -> Result<bool, StorageError> {
        let done = sqlx::query("UPDATE repos SET private = $2 WHERE name = $1")
            .bind(name)
            .bind(i64::from(private))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Repos whose name contains `search` and, with `author`, whose namespace is `author`; at
    /// most `limit` from `offset` in `sort` order. Private repos only when `include_private`
    /// says so for their namespace.
    pub async fn list_repos(
        &self,
        search: &str,
        author: Option<&str>,
        sort: RepoSort,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<RepoRecord>, StorageError> {
        let order = match sort {
            RepoSort::Name => "r.name",
            RepoSort::Recent => "latest DESC, r.name",
            RepoSort::Size => "stored DESC, r.name",
        };
        let like = format!("%{}%", escape_like(&search.to_ascii_lowercase()));
        let author_like = author.map(|a| format!("{}/%", escape_like(a)));
        let rows = sqlx::query(&format!(
            "SELECT r.name, r.private, r.created_at, \
               COALESCE((SELECT MAX(c.created_at) FROM commits c WHERE c.repo = r.name), r.created_at) AS latest, \
               CAST(COALESCE((SELECT SUM(b.size) FROM blobs b WHERE b.id IN \
                  (SELECT c.blob FROM commits c WHERE c.repo = r.name)), 0) AS BIGINT) AS stored \
             FROM repos r \
             WHERE LOWER(r.name) LIKE $1 ESCAPE '\\' AND ($2 = '' OR r.name LIKE $3 ESCAPE '\\') \
             ORDER BY {order} LIMIT $4 OFFSET $5"
        ))
        .bind(like)
        .bind(author.unwrap_or(""))
        .bind(author_like.unwrap_or_default())
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(repo_from_row).collect()
    }

    /// Removes a repo from the catalog (commits, files, refs). Objects and blobs stay until
    /// garbage collection finds nothing else refers to them.
    pub async fn delete_repo(&self, repo: &str) -> Result<bool, StorageError> {
        let mut tx = self.pool.begin().await?;
        // Write first: a transaction that reads before its first write cannot wait for SQLite's
        // write lock (it fails with "database is locked" instead).
        sqlx::query("DELETE FROM refs WHERE repo = $1")
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM commit_files WHERE commit_id IN (SELECT id FROM commits WHERE repo = $1)",
        )
        .bind(repo)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM commits WHERE repo = $1")
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        // Bytes uploaded for the repo must not serve a new repo that takes its name.
        sqlx::query("DELETE FROM lfs_objects WHERE repo = $1")
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        let xorbs = sqlx::query("DELETE FROM xet_xorbs WHERE repo = $1")
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        if xorbs.rows_affected() > 0 {
            sqlx::query("UPDATE xet_state SET generation = generation + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM repos WHERE name = $1")
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    // ----- commits

    /// Makes a commit, its files and its branch move visible at once, if the branch still
    /// points where the commit was prepared from (compare and swap: never a lost update).
    pub async fn commit(&self, new: &NewCommit) -> Result<CommitOutcome, StorageError> {
        let c = &new.commit;
        let mut tx = self.pool.begin().await?;
        // Write first (see delete_repo).
        if new.create_repo {
            sqlx::query(
                "INSERT INTO repos (name, created_at, private) VALUES ($1, $2, 0) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(&c.repo)
            .bind(c.created_at)
            .execute(&mut *tx)
            .await?;
        } else {
            // A no-op write that takes the lock and tells whether the repo exists.
            let touched = sqlx::query("UPDATE repos SET private = private WHERE name = $1")
                .bind(&c.repo)
                .execute(&mut *tx)
                .await?;
            if touched.rows_affected() == 0 {
                return Ok(CommitOutcome::NoRepo);
            }
        }
        if let Some(b) = &c.blob {
            // A new blob gets its row; a reused one keeps it (or gets it back, had garbage
            // collection released it since the commit found it).
            sqlx::query(
                "INSERT INTO blobs (id, weights, object_key, size, high_dtype, high_size, \
                 int8_size, tensors, quantized, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&b.id)
            .bind(&b.weights)
            .bind(&b.object_key)
            .bind(b.size as i64)
            .bind(&b.high_dtype)
            .bind(b.high_size as i64)
            .bind(b.int8_size as i64)
            .bind(b.tensors as i64)
            .bind(b.quantized as i64)
            .bind(b.created_at)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO commits (id, int8_id, repo, parent, blob, title, message, author, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&c.id)
        .bind(&c.int8_id)
        .bind(&c.repo)
        .bind(c.parent.clone())
        .bind(c.blob.as_ref().map(|b| b.id.clone()))
        .bind(&c.title)
        .bind(&c.message)
        .bind(&c.author)
        .bind(c.created_at)
        .execute(&mut *tx)
        .await?;
        for (set, f) in &new.files {
            sqlx::query(
                "INSERT INTO commit_files (commit_id, precision, path, size, sha256, git_oid, lfs, object_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&c.id)
            .bind(set.as_str())
            .bind(&f.path)
            .bind(f.size as i64)
            .bind(&f.sha256)
            .bind(f.git_oid.clone())
            .bind(i64::from(f.lfs))
            .bind(f.object_key.clone())
            .execute(&mut *tx)
            .await?;
        }
        let moved = match &new.expected_head {
            Some(head) => sqlx::query(
                "UPDATE refs SET commit_id = $4 WHERE repo = $1 AND kind = 'branch' AND name = $2 \
                 AND commit_id = $3",
            )
            .bind(&c.repo)
            .bind(&new.branch)
            .bind(head)
            .bind(&c.id)
            .execute(&mut *tx)
            .await?,
            None => {
                sqlx::query(
                    "INSERT INTO refs (repo, kind, name, commit_id) VALUES ($1, 'branch', $2, $3) \
                 ON CONFLICT (repo, kind, name) DO NOTHING",
                )
                .bind(&c.repo)
                .bind(&new.branch)
                .bind(&c.id)
                .execute(&mut *tx)
                .await?
            }
        };
        if moved.rows_affected() != 1 {
            return Ok(CommitOutcome::StaleHead); // Dropping `tx` rolls it back.
        }
        tx.commit().await?;
        Ok(CommitOutcome::Committed)
    }

    /// The commit a branch or tag points at.
    pub async fn ref_target(
        &self,
        repo: &str,
        kind: RefKind,
        name: &str,
    ) -> Result<Option<CommitRecord>, StorageError> {
        let row = sqlx::query(&format!(
            "{} JOIN refs f ON f.commit_id = c.id WHERE f.repo = $1 AND f.kind = $2 AND f.name = $3",
            commit_select()
        ))
        .bind(repo)
        .bind(kind.as_str())
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(commit_from_row).transpose()
    }

    /// The commit of `repo` whose id or INT8 twin id is `id`.
    pub async fn commit_by_id(
        &self,
        repo: &str,
        id: &str,
    ) -> Result<Option<CommitRecord>, StorageError> {
        let row = sqlx::query(&format!(
            "{} WHERE c.repo = $1 AND (c.id = $2 OR c.int8_id = $2)",
            commit_select()
        ))
        .bind(repo)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(commit_from_row).transpose()
    }

    /// `limit` commits of the history ending at `head`, newest first, skipping `offset`.
    pub async fn history(
        &self,
        head: &str,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<CommitRecord>, StorageError> {
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE chain(id, depth) AS ( \
                SELECT id, 0 FROM commits WHERE id = $1 \
                UNION ALL \
                SELECT p.parent, chain.depth + 1 FROM commits p JOIN chain ON p.id = chain.id \
                WHERE p.parent IS NOT NULL) \
             {} JOIN chain h ON h.id = c.id ORDER BY h.depth LIMIT $2 OFFSET $3",
            commit_select()
        ))
        .bind(head)
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(commit_from_row).collect()
    }

    /// Every commit of a repo, newest first.
    pub async fn commits(&self, repo: &str) -> Result<Vec<CommitRecord>, StorageError> {
        let rows = sqlx::query(&format!(
            "{} WHERE c.repo = $1 ORDER BY c.created_at DESC, c.id DESC",
            commit_select()
        ))
        .bind(repo)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(commit_from_row).collect()
    }

    /// The files of one view of a commit, sorted by path.
    pub async fn files(&self, commit: &str, set: FileSet) -> Result<Vec<FileEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT path, size, sha256, git_oid, lfs, object_key FROM commit_files \
             WHERE commit_id = $1 AND (precision = $2 OR precision = 'both') ORDER BY path",
        )
        .bind(commit)
        .bind(set.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// A committed high-precision or shared file with these bytes in `repo` or in a public repo,
    /// with its commit: where a commit to `repo` naming the same sha256 can take them from
    /// (never from someone else's private repo).
    pub async fn file_by_sha256(
        &self,
        sha256: &str,
        repo: &str,
    ) -> Result<Option<(CommitRecord, FileEntry)>, StorageError> {
        let row = sqlx::query(
            "SELECT f.commit_id, f.path, f.size, f.sha256, f.git_oid, f.lfs, f.object_key \
             FROM commit_files f JOIN commits c ON c.id = f.commit_id \
             JOIN repos r ON r.name = c.repo \
             WHERE f.sha256 = $1 AND f.precision <> 'int8' AND (c.repo = $2 OR r.private = 0) \
             LIMIT 1",
        )
        .bind(sha256)
        .bind(repo)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let commit_id: String = row.try_get(0)?;
        let entry = FileEntry {
            path: row.try_get(1)?,
            size: size(&row, 2)?,
            sha256: row.try_get(3)?,
            git_oid: row.try_get(4)?,
            lfs: row.try_get::<i64, _>(5)? != 0,
            object_key: row.try_get(6)?,
        };
        let row = sqlx::query(&format!("{} WHERE c.id = $1", commit_select()))
            .bind(&commit_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .as_ref()
            .map(commit_from_row)
            .transpose()?
            .map(|c| (c, entry)))
    }

    /// Records that `oid` was uploaded (and verified) for `repo`.
    pub async fn add_lfs_object(&self, oid: &str, repo: &str) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO lfs_objects (oid, repo, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (oid, repo) DO NOTHING",
        )
        .bind(oid)
        .bind(repo)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// True when `oid` was uploaded for `repo`.
    pub async fn lfs_object_in(&self, oid: &str, repo: &str) -> Result<bool, StorageError> {
        Ok(
            sqlx::query("SELECT oid FROM lfs_objects WHERE oid = $1 AND repo = $2")
                .bind(oid)
                .bind(repo)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// A blob that reproduces exactly these weights, if one is stored.
    pub async fn blob_by_weights(&self, weights: &str) -> Result<Option<BlobRecord>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {BLOB_COLUMNS} FROM blobs b WHERE b.weights = $1 ORDER BY b.created_at LIMIT 1"
        ))
        .bind(weights)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(|r| blob_from_row(r, 0)).transpose()
    }

    /// The files a blob reproduces, (high, int8), as the catalog lists them for a commit that
    /// uses it.
    pub async fn blob_files(
        &self,
        blob: &str,
    ) -> Result<(Vec<FileEntry>, Vec<FileEntry>), StorageError> {
        let Some(row) = sqlx::query("SELECT id FROM commits WHERE blob = $1 LIMIT 1")
            .bind(blob)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok((Vec::new(), Vec::new()));
        };
        let commit: String = row.try_get(0)?;
        let in_blob = |files: Vec<FileEntry>| -> Vec<FileEntry> {
            files
                .into_iter()
                .filter(|f| f.object_key.is_none())
                .collect()
        };
        Ok((
            in_blob(self.files(&commit, FileSet::High).await?),
            in_blob(self.files(&commit, FileSet::Int8).await?),
        ))
    }

    /// Blobs at least one commit of `repo` uses.
    pub async fn repo_blobs(&self, repo: &str) -> Result<Vec<BlobRecord>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {BLOB_COLUMNS} FROM blobs b WHERE b.id IN \
             (SELECT c.blob FROM commits c WHERE c.repo = $1) ORDER BY b.created_at"
        ))
        .bind(repo)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| blob_from_row(r, 0)).collect()
    }

    /// Distinct plain objects (key, size) the commits of `repo` name.
    pub async fn repo_objects(&self, repo: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let rows = sqlx::query(
            "SELECT DISTINCT f.object_key, f.size FROM commit_files f \
             JOIN commits c ON c.id = f.commit_id \
             WHERE c.repo = $1 AND f.object_key IS NOT NULL ORDER BY f.object_key",
        )
        .bind(repo)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, size(r, 1)?)))
            .collect()
    }

    /// Every object key a blob row or a commit's file names: what garbage collection keeps.
    pub async fn referenced_keys(&self) -> Result<HashSet<String>, StorageError> {
        let rows = sqlx::query(
            "SELECT object_key FROM blobs UNION \
             SELECT object_key FROM commit_files WHERE object_key IS NOT NULL UNION \
             SELECT 'xet/xorbs/' || hash FROM xet_xorbs", // Objects::xorb_key
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(Into::into))
            .collect()
    }

    /// Blobs no commit uses any more (their repo was deleted): their rows go, their objects
    /// become garbage.
    pub async fn delete_unused_blobs(&self) -> Result<Vec<String>, StorageError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "DELETE FROM blobs WHERE id NOT IN \
             (SELECT blob FROM commits WHERE blob IS NOT NULL) RETURNING object_key",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(Into::into))
            .collect()
    }

    /// Deletes one commit: its children get its parent; refs pointing at it move to its
    /// parent with `force`, else the deletion is refused with their names.
    pub async fn delete_commit(
        &self,
        repo: &str,
        id: &str,
        force: bool,
    ) -> Result<DeleteCommit, StorageError> {
        let mut tx = self.pool.begin().await?;
        // Write first (see delete_repo): a no-op update that takes the lock.
        let found = sqlx::query("UPDATE commits SET parent = parent WHERE repo = $1 AND id = $2")
            .bind(repo)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if found.rows_affected() == 0 {
            return Ok(DeleteCommit::NotFound);
        }
        let parent: Option<String> = sqlx::query("SELECT parent FROM commits WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let refs: Vec<String> =
            sqlx::query("SELECT name FROM refs WHERE repo = $1 AND commit_id = $2 ORDER BY name")
                .bind(repo)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
        if !refs.is_empty() && (!force || parent.is_none()) {
            return Ok(DeleteCommit::Referenced(refs));
        }
        sqlx::query("UPDATE refs SET commit_id = $2 WHERE repo = $3 AND commit_id = $1")
            .bind(id)
            .bind(parent.clone())
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE commits SET parent = $2 WHERE parent = $1")
            .bind(id)
            .bind(parent)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM commit_files WHERE commit_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM commits WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DeleteCommit::Deleted(refs))
    }

    // ----- refs

    /// Branches and tags of a repo: (kind, name, commit), sorted.
    pub async fn refs(&self, repo: &str) -> Result<Vec<(RefKind, String, String)>, StorageError> {
        let rows = sqlx::query(
            "SELECT kind, name, commit_id FROM refs WHERE repo = $1 ORDER BY kind, name",
        )
        .bind(repo)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let kind = match r.try_get::<String, _>(0)?.as_str() {
                    "tag" => RefKind::Tag,
                    _ => RefKind::Branch,
                };
                Ok((kind, r.try_get(1)?, r.try_get(2)?))
            })
            .collect()
    }

    /// Creates a branch or tag; false when one of that name exists.
    pub async fn create_ref(
        &self,
        repo: &str,
        kind: RefKind,
        name: &str,
        commit: &str,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "INSERT INTO refs (repo, kind, name, commit_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repo, kind, name) DO NOTHING",
        )
        .bind(repo)
        .bind(kind.as_str())
        .bind(name)
        .bind(commit)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a branch or tag; false when there was none.
    pub async fn delete_ref(
        &self,
        repo: &str,
        kind: RefKind,
        name: &str,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query("DELETE FROM refs WHERE repo = $1 AND kind = $2 AND name = $3")
            .bind(repo)
            .bind(kind.as_str())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    // ----- LFS uploads

    /// Remembers an offered upload, so any replica can take its parts.
    pub async fn add_lfs_upload(&self, u: &LfsUpload) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO lfs_uploads (id, repo, oid, size, part_size, parts, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&u.id)
        .bind(&u.repo)
        .bind(&u.oid)
        .bind(u.size as i64)
        .bind(u.part_size as i64)
        .bind(u.parts as i64)
        .bind(u.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An offered upload by its id (the capability in its URLs).
    pub async fn lfs_upload(&self, id: &str) -> Result<Option<LfsUpload>, StorageError> {
        let row = sqlx::query(
            "SELECT id, repo, oid, size, part_size, parts, created_at FROM lfs_uploads WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(LfsUpload {
                id: r.try_get(0)?,
                repo: r.try_get(1)?,
                oid: r.try_get(2)?,
                size: size(&r, 3)?,
                part_size: size(&r, 4)?,
                parts: size(&r, 5)?,
                created_at: r.try_get(6)?,
            })
        })
        .transpose()
    }

    /// Forgets a finished or refused upload.
    pub async fn delete_lfs_upload(&self, id: &str) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM lfs_uploads WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets uploads offered, and uploaded objects recorded, before `before_ms`: parts are
    /// garbage by then, and an object committed since is found through its commit.
    pub async fn delete_lfs_records_before(&self, before_ms: i64) -> Result<u64, StorageError> {
        let uploads = sqlx::query("DELETE FROM lfs_uploads WHERE created_at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        let objects = sqlx::query("DELETE FROM lfs_objects WHERE created_at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(uploads.rows_affected() + objects.rows_affected())
    }

    // ----- Xet

    /// Records that the xorb `hash` (stored at `Objects::xorb_key`) was uploaded, verified, for
    /// `repo`; an existing row is renewed. True when the row is new.
    pub async fn add_xet_xorb(
        &self,
        hash: &str,
        repo: &str,
        size: u64,
    ) -> Result<bool, StorageError> {
        let mut tx = self.pool.begin().await?;
        let renewed =
            sqlx::query("UPDATE xet_xorbs SET created_at = $1 WHERE hash = $2 AND repo = $3")
                .bind(now_millis())
                .bind(hash)
                .bind(repo)
                .execute(&mut *tx)
                .await?;
        if renewed.rows_affected() > 0 {
            tx.commit().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO xet_xorbs (hash, repo, size, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (hash, repo) DO NOTHING",
        )
        .bind(hash)
        .bind(repo)
        .bind(size as i64)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The stored size of xorb `hash` if it was uploaded for `repo`.
    pub async fn xet_xorb_in(&self, hash: &str, repo: &str) -> Result<Option<u64>, StorageError> {
        let row = sqlx::query("SELECT size FROM xet_xorbs WHERE hash = $1 AND repo = $2")
            .bind(hash)
            .bind(repo)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<i64, _>(0)? as u64),
            None => None,
        })
    }

    /// Stores a CAS token's hash, the repo it may write and the API token it came from.
    pub async fn add_xet_token(&self, token: &XetToken, hash: &str) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO xet_tokens (hash, repo, parent, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(hash)
        .bind(&token.repo)
        .bind(&token.parent)
        .bind(token.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The CAS token with this hash, expired or not.
    pub async fn xet_token(&self, hash: &str) -> Result<Option<XetToken>, StorageError> {
        let row = sqlx::query("SELECT repo, parent, expires_at FROM xet_tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(XetToken {
                repo: r.try_get(0)?,
                parent: r.try_get(1)?,
                expires_at: r.try_get(2)?,
            }),
            None => None,
        })
    }

    /// The current generation of the CAS (see migrations/0003_xet.sql).
    pub async fn xet_generation(&self) -> Result<i64, StorageError> {
        let row = sqlx::query("SELECT generation FROM xet_state WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Drops xorb rows written before `before_ms` (their objects become garbage) and expired
    /// CAS tokens; bumps the generation when any xorb row went. Returns the xorb rows dropped.
    pub async fn delete_xet_records_before(&self, before_ms: i64) -> Result<u64, StorageError> {
        let mut tx = self.pool.begin().await?;
        let xorbs = sqlx::query("DELETE FROM xet_xorbs WHERE created_at < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if xorbs > 0 {
            sqlx::query("UPDATE xet_state SET generation = generation + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM xet_tokens WHERE expires_at < $1")
            .bind(now_millis() / 1000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(xorbs)
    }

    // ----- tokens

    /// Stores a new API token's hash.
    pub async fn add_token(&self, token: &TokenRecord, hash: &str) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO tokens (id, name, hash, created_at, scopes, read_only) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(hash)
        .bind(token.created_at)
        .bind(token.scopes.join(","))
        .bind(i64::from(token.read_only))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn token_count(&self) -> Result<u64, StorageError> {
        let row = sqlx::query("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<i64, _>(0) as u64)
    }

    /// The token with this hash, if it exists (revoked tokens do not).
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StorageError> {
        let row = sqlx::query(
            "SELECT id, name, scopes, read_only, created_at FROM tokens WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Every token, oldest first, for `qstore token list`.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, name, scopes, read_only, created_at FROM tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes the token with this id (or, if unique, this name); how many went.
    pub async fn revoke_token(&self, id_or_name: &str) -> Result<u64, StorageError> {
        let by_id = sqlx::query("DELETE FROM tokens WHERE id = $1")
            .bind(id_or_name)
            .execute(&self.pool)
            .await?;
        if by_id.rows_affected() > 0 {
            return Ok(by_id.rows_affected());
        }
        let named = sqlx::query("SELECT COUNT(*) FROM tokens WHERE name = $1")
            .bind(id_or_name)
            .fetch_one(&self.pool)
            .await?
            .get::<i64, _>(0);
        if named != 1 {
            return Ok(0);
        }
        let done = sqlx::query("DELETE FROM tokens WHERE name = $1")
            .bind(id_or_name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

fn size(r: &AnyRow, i: usize) -> Result<u64, StorageError> {
    Ok(u64::try_from(r.try_get::<i64, _>(i)?).unwrap_or(0))
}

fn repo_from_row(r: &AnyRow) -> Result<RepoRecord, StorageError> {
    Ok(RepoRecord {
        name: r.try_get(0)?,
        private: r.try_get::<i64, _>(1)? != 0,
        created_at: r.try_get(2)?,
    })
}

fn blob_from_row(r: &AnyRow, at: usize) -> Result<BlobRecord, StorageError> {
    Ok(BlobRecord {
        id: r.try_get(at)?,
        weights: r.try_get(at + 1)?,
        object_key: r.try_get(at + 2)?,
        size: size(r, at + 3)?,
        high_dtype: r.try_get(at + 4)?,
        high_size: size(r, at + 5)?,
        int8_size: size(r, at + 6)?,
        tensors: size(r, at + 7)?,
        quantized: size(r, at + 8)?,
        created_at: r.try_get(at + 9)?,
    })
}

fn commit_from_row(r: &AnyRow) -> Result<CommitRecord, StorageError> {
    let blob_id: Option<String> = r.try_get(8)?;
    Ok(CommitRecord {
        id: r.try_get(0)?,
        int8_id: r.try_get(1)?,
        repo: r.try_get(2)?,
        parent: r.try_get(3)?,
        title: r.try_get(4)?,
        message: r.try_get(5)?,
        author: r.try_get(6)?,
        created_at: r.try_get(7)?,
        blob: blob_id.map(|_| blob_from_row(r, 8)).transpose()?,
    })
}

fn file_from_row(r: &AnyRow) -> Result<FileEntry, StorageError> {
    Ok(FileEntry {
        path: r.try_get(0)?,
        size: size(r, 1)?,
        sha256: r.try_get(2)?,
        git_oid: r.try_get(3)?,
        lfs: r.try_get::<i64, _>(4)? != 0,
        object_key: r.try_get(5)?,
    })
}

fn token_from_row(r: &AnyRow) -> Result<TokenRecord, StorageError> {
    let scopes: String = r.try_get(2)?;
    Ok(TokenRecord {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        read_only: r.try_get::<i64, _>(3)? != 0,
        created_at: r.try_get(4)?,
    })
}

/// `LIKE` pattern text matching `s` literally (escape character `\`).
fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite://")?;
    Some(rest.split('?').next().unwrap_or(rest))
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let c = Catalog::connect(&url, None).await.unwrap();
        c.migrate().await.unwrap();
        c.migrate().await.unwrap();
        (dir, c)
    }

    fn blob(id: &str) -> BlobRecord {
        BlobRecord {
            id: id.into(),
            weights: format!("w-{id}"),
            object_key: format!("blobs/{id}.qstore"),
            size: 10,
            high_dtype: "bf16".into(),
            high_size: 20,
            int8_size: 12,
            tensors: 3,
            quantized: 2,
            created_at: 1,
        }
    }

    fn commit(id: &str, parent: Option<&str>, blob: Option<BlobRecord>) -> CommitRecord {
        CommitRecord {
            id: id.into(),
            int8_id: format!("{id}-8"),
            repo: "org/m".into(),
            parent: parent.map(str::to_string),
            title: format!("commit {id}"),
            message: String::new(),
            author: "me".into(),
            created_at: 5,
            blob,
        }
    }

    fn entry(path: &str, key: Option<&str>) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: 5,
            sha256: format!("sha-{path}"),
            git_oid: None,
            lfs: key.is_none(),
            object_key: key.map(str::to_string),
        }
    }

    fn new(c: CommitRecord, expected: Option<&str>) -> NewCommit {
        NewCommit {
            commit: c,
            files: vec![
                (FileSet::High, entry("model.safetensors", None)),
                (FileSet::Int8, entry("model.safetensors", None)),
                (FileSet::Both, entry("tokenizer.json", Some("objects/t"))),
            ],
            branch: "main".into(),
            expected_head: expected.map(str::to_string),
            create_repo: true,
        }
    }

    #[tokio::test]
    async fn commits_move_branches_only_from_the_expected_head() {
        let (_dir, c) = fresh().await;
        let a = commit("a", None, Some(blob("b1")));
        assert_eq!(
            c.commit(&new(a, None)).await.unwrap(),
            CommitOutcome::Committed
        );
        // A second first commit: the branch exists now.
        let stale = commit("x", None, None);
        assert_eq!(
            c.commit(&new(stale, None)).await.unwrap(),
            CommitOutcome::StaleHead
        );
        assert!(
            c.commit_by_id("org/m", "x").await.unwrap().is_none(),
            "rolled back"
        );
        let b = commit("b", Some("a"), Some(blob("b1")));
        assert_eq!(
            c.commit(&new(b, Some("a"))).await.unwrap(),
            CommitOutcome::Committed
        );
        let late = commit("y", Some("a"), None);
        assert_eq!(
            c.commit(&new(late, Some("a"))).await.unwrap(),
            CommitOutcome::StaleHead
        );
        let head = c
            .ref_target("org/m", RefKind::Branch, "main")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(head.id, "b");
        assert_eq!(head.blob.unwrap().id, "b1");
        let ids: Vec<_> = c
            .history("b", 10, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(c.history("b", 1, 1).await.unwrap()[0].id, "a");
        assert_eq!(
            c.commit_by_id("org/m", "a-8").await.unwrap().unwrap().id,
            "a"
        );
        assert_eq!(c.files("a", FileSet::Int8).await.unwrap().len(), 2);
        assert_eq!(c.blob_by_weights("w-b1").await.unwrap().unwrap().id, "b1");
        let (high, int8) = c.blob_files("b1").await.unwrap();
        assert_eq!((high.len(), int8.len()), (1, 1));
        let keys = c.referenced_keys().await.unwrap();
        assert!(keys.contains("objects/t") && keys.contains("blobs/b1.qstore"));
        let found = c
            .file_by_sha256("sha-model.safetensors", "org/m")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.1.object_key, None);
        assert!(
            c.file_by_sha256("sha-model.safetensors", "other/x")
                .await
                .unwrap()
                .is_some()
        );
        assert!(c.set_private("org/m", true).await.unwrap());
        assert!(
            c.file_by_sha256("sha-model.safetensors", "other/x")
                .await
                .unwrap()
                .is_none(),
            "a private repo's files are found only from inside it"
        );
        assert!(
            c.file_by_sha256("sha-model.safetensors", "org/m")
                .await
                .unwrap()
                .is_some()
        );
        c.add_lfs_object("oid1", "org/m").await.unwrap();
        c.add_lfs_object("oid1", "org/m").await.unwrap();
        assert!(c.lfs_object_in("oid1", "org/m").await.unwrap());
        assert!(!c.lfs_object_in("oid1", "other/x").await.unwrap());

        // No repo, no commit (unless asked to create it).
        let mut orphan = new(commit("z", None, None), None);
        orphan.commit.repo = "org/none".into();
        orphan.create_repo = false;
        assert_eq!(c.commit(&orphan).await.unwrap(), CommitOutcome::NoRepo);

        assert!(
            c.create_ref("org/m", RefKind::Tag, "v1", "a")
                .await
                .unwrap()
        );
        assert!(
            !c.create_ref("org/m", RefKind::Tag, "v1", "b")
                .await
                .unwrap()
        );
        assert_eq!(c.refs("org/m").await.unwrap().len(), 2);
        assert!(c.delete_ref("org/m", RefKind::Tag, "v1").await.unwrap());

        assert_eq!(
            c.delete_commit("org/m", "b", false).await.unwrap(),
            DeleteCommit::Referenced(vec!["main".into()])
        );
        assert_eq!(
            c.delete_commit("org/m", "b", true).await.unwrap(),
            DeleteCommit::Deleted(vec!["main".into()])
        );
        assert_eq!(
            c.ref_target("org/m", RefKind::Branch, "main")
                .await
                .unwrap()
                .unwrap()
                .id,
            "a"
        );
        assert_eq!(
            c.delete_commit("org/m", "a", true).await.unwrap(),
            DeleteCommit::Referenced(vec!["main".into()])
        );

        assert!(c.delete_repo("org/m").await.unwrap());
        assert!(!c.delete_repo("org/m").await.unwrap());
        assert_eq!(c.delete_unused_blobs().await.unwrap(), ["blobs/b1.qstore"]);
        assert!(c.referenced_keys().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn repos_are_listed_searched_and_sorted() {
        let (_dir, c) = fresh().await;
        for name in ["a/zeta", "b/alpha", "a/Alpha_2"] {
            assert!(c.create_repo(name, name == "b/alpha").await.unwrap());
        }
        assert!(!c.create_repo("a/zeta", false).await.unwrap());
        let names = |v: Vec<RepoRecord>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
        let all = c.list_repos("", None, RepoSort::Name, 10, 0).await.unwrap();
        assert_eq!(names(all), ["a/Alpha_2", "a/zeta", "b/alpha"]);
        let found = c
            .list_repos("alpha", None, RepoSort::Name, 10, 0)
            .await
            .unwrap();
        assert_eq!(names(found), ["a/Alpha_2", "b/alpha"]);
        let by_a = c
            .list_repos("", Some("a"), RepoSort::Name, 10, 0)
            .await
            .unwrap();
        assert_eq!(names(by_a), ["a/Alpha_2", "a/zeta"]);
        // `_` and `%` are literal in searches.
        assert_eq!(
            names(
                c.list_repos("a_2", None, RepoSort::Name, 10, 0)
                    .await
                    .unwrap()
            ),
            ["a/Alpha_2"]
        );
        assert!(
            c.list_repos("%", None, RepoSort::Name, 10, 0)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            c.list_repos("", None, RepoSort::Name, 1, 1)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(c.repo("b/alpha").await.unwrap().unwrap().private);
    }

    #[tokio::test]
    async fn tokens_are_found_listed_and_revoked() {
        let (_dir, c) = fresh().await;
        assert_eq!(c.token_count().await.unwrap(), 0);
        let t = TokenRecord {
            id: "t1".into(),
            name: "ci".into(),
            scopes: vec!["org".into(), "me".into()],
            read_only: true,
            created_at: 1,
        };
        c.add_token(&t, "deadbeef").await.unwrap();
        assert_eq!(c.token_by_hash("deadbeef").await.unwrap().unwrap(), t);
        assert!(c.token_by_hash("beef").await.unwrap().is_none());
        assert_eq!(c.tokens().await.unwrap(), std::slice::from_ref(&t));
        assert_eq!(c.revoke_token("nope").await.unwrap(), 0);
        assert_eq!(c.revoke_token("ci").await.unwrap(), 1);
        assert!(c.token_by_hash("deadbeef").await.unwrap().is_none());
    }

    /// A catalog written by the first schema keeps every upload, as a commit on `main`.
    #[tokio::test]
    async fn legacy_revisions_become_commits() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let first = dir.path().join("first");
        std::fs::create_dir(&first).unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/0001_catalog.sql"),
            first.join("0001_catalog.sql"),
        )
        .unwrap();
        let c = Catalog::connect(&url, None).await.unwrap();
        sqlx::migrate::Migrator::new(first.as_path())
            .await
            .unwrap()
            .run(&c.pool)
            .await
            .unwrap();
        for (id, at) in [("r1", 1), ("r2", 2)] {
            sqlx::query(
                "INSERT INTO repos (name, created_at) VALUES ('m', 0) ON CONFLICT (name) DO NOTHING",
            )
            .execute(&c.pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO revisions VALUES ($1, $2, 'm', $3, 10, 'bf16', 20, 12, 3, 4, 2, $4)",
            )
            .bind(id)
            .bind(format!("{id}-8"))
            .bind(format!("revisions/{id}/model.qstore"))
            .bind(at)
            .execute(&c.pool)
            .await
            .unwrap();
            for (set, key) in [
                ("high", None),
                ("int8", None),
                ("both", Some(format!("revisions/{id}/files/vocab.txt"))),
            ] {
                sqlx::query("INSERT INTO files VALUES ($1, $2, $3, 5, 'ab', $4)")
                    .bind(id)
                    .bind(set)
                    .bind(if key.is_some() {
                        "vocab.txt"
                    } else {
                        "model.safetensors"
                    })
                    .bind(key)
                    .execute(&c.pool)
                    .await
                    .unwrap();
            }
        }
        for branch in ["main", "bf16", "int8"] {
            sqlx::query("INSERT INTO branches VALUES ('m', $1, 'r2')")
                .bind(branch)
                .execute(&c.pool)
                .await
                .unwrap();
        }
        c.migrate().await.unwrap();
        let head = c
            .ref_target("m", RefKind::Branch, "main")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.id.as_str(), head.parent.as_deref()),
            ("r2", Some("r1"))
        );
        assert_eq!(head.blob.unwrap().object_key, "revisions/r2/model.qstore");
        assert_eq!(
            c.refs("m").await.unwrap().len(),
            1,
            "bf16/int8 are views now"
        );
        let files = c.files("r1", FileSet::High).await.unwrap();
        assert_eq!(files.len(), 2);
        assert!(
            files
                .iter()
                .any(|f| f.object_key.as_deref() == Some("revisions/r1/files/vocab.txt"))
        );
        assert_eq!(c.commit_by_id("m", "r1-8").await.unwrap().unwrap().id, "r1");
    }

    #[tokio::test]
    async fn an_unreachable_catalog_fails_at_once_with_its_error() {
        let started = std::time::Instant::now();
        let err = Catalog::connect("postgres://qstore@127.0.0.1:1/qstore", None)
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{err}"
        );
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    }
}
