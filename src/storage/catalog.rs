//! The catalog: repos, immutable revisions, their files, branches and API tokens, in SQL that
//! SQLite and PostgreSQL both run (through sqlx's `Any` driver, so the backend is the URL).

use std::collections::HashSet;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

use super::StorageError;

/// Which of a revision's file lists a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSet {
    High,
    Int8,
    /// Shared by both precisions (config-free plain files such as the tokenizer).
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

/// One immutable upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub id: String,
    pub int8_id: String,
    pub repo: String,
    pub blob_key: String,
    pub blob_size: u64,
    /// `bf16` or `fp16`: also the name of the high-precision branch.
    pub high_dtype: String,
    pub high_size: u64,
    pub int8_size: u64,
    pub plain_size: u64,
    pub tensors: u64,
    pub quantized: u64,
    pub created_at: i64,
}

/// A file served for a revision: from the blob (`object_key` None) or a plain object.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub object_key: Option<String>,
}

/// A new revision and everything that becomes visible with it.
pub struct NewRevision {
    pub revision: Revision,
    pub files: Vec<(FileSet, FileEntry)>,
    pub branches: Vec<String>,
}

/// The SQL catalog.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
}

const REVISION_COLUMNS: &str = "id, int8_id, repo, blob_key, blob_size, high_dtype, high_size, \
     int8_size, plain_size, tensors, quantized, created_at";

impl Catalog {
    /// Connects; a SQLite file is created if missing and switched to WAL.
    pub async fn connect(url: &str, max_connections: Option<u32>) -> Result<Catalog, StorageError> {
        sqlx::any::install_default_drivers();
        if let Some(parent) = sqlite_path(url).and_then(|p| std::path::Path::new(p).parent()) {
            std::fs::create_dir_all(parent)?;
        }
        let options = AnyConnectOptions::from_str(url)?;
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

    /// Makes a revision, its files and its branch moves visible at once.
    pub async fn commit_revision(&self, new: &NewRevision) -> Result<(), StorageError> {
        let r = &new.revision;
        let mut tx = self.pool.begin().await?;
        // Write first: a transaction that reads before its first write cannot wait for SQLite's
        // write lock (it fails with "database is locked" instead).
        sqlx::query(
            "INSERT INTO repos (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&r.repo)
        .bind(r.created_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO revisions ({REVISION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&r.id)
        .bind(&r.int8_id)
        .bind(&r.repo)
        .bind(&r.blob_key)
        .bind(r.blob_size as i64)
        .bind(&r.high_dtype)
        .bind(r.high_size as i64)
        .bind(r.int8_size as i64)
        .bind(r.plain_size as i64)
        .bind(r.tensors as i64)
        .bind(r.quantized as i64)
        .bind(r.created_at)
        .execute(&mut *tx)
        .await?;
        for (set, f) in &new.files {
            sqlx::query(
                "INSERT INTO files (revision, precision, path, size, sha256, object_key) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&r.id)
            .bind(set.as_str())
            .bind(&f.path)
            .bind(f.size as i64)
            .bind(&f.sha256)
            .bind(f.object_key.clone())
            .execute(&mut *tx)
            .await?;
        }
        for branch in &new.branches {
            // Portable upsert: both dialects accept ON CONFLICT ... DO UPDATE.
            sqlx::query(
                "INSERT INTO branches (repo, name, revision) VALUES ($1, $2, $3) \
                 ON CONFLICT (repo, name) DO UPDATE SET revision = excluded.revision",
            )
            .bind(&r.repo)
            .bind(branch)
            .bind(&r.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// All repo names, sorted.
    pub async fn repos(&self) -> Result<Vec<String>, StorageError> {
        let rows = sqlx::query("SELECT name FROM repos ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    pub async fn repo_exists(&self, repo: &str) -> Result<bool, StorageError> {
        Ok(sqlx::query("SELECT name FROM repos WHERE name = $1")
            .bind(repo)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// A repo's revisions, newest first.
    pub async fn revisions(&self, repo: &str) -> Result<Vec<Revision>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {REVISION_COLUMNS} FROM revisions WHERE repo = $1 \
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(repo)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(revision_from_row).collect()
    }

    /// Every revision id, across all repos: what garbage collection must keep.
    pub async fn all_revision_ids(&self) -> Result<HashSet<String>, StorageError> {
        let rows = sqlx::query("SELECT id FROM revisions")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| row.try_get::<String, _>("id").map_err(Into::into))
            .collect()
    }

    /// The revision a branch points at.
    pub async fn branch(&self, repo: &str, branch: &str) -> Result<Option<Revision>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM revisions r JOIN branches b ON b.revision = r.id \
             WHERE b.repo = $1 AND b.name = $2",
            qualified_revision_columns()
        ))
        .bind(repo)
        .bind(branch)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(revision_from_row).transpose()
    }

    /// Branch names and the revision each points at.
    pub async fn branches(&self, repo: &str) -> Result<Vec<(String, String)>, StorageError> {
        let rows = sqlx::query("SELECT name, revision FROM branches WHERE repo = $1 ORDER BY name")
            .bind(repo)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect())
    }

    /// The revision of `repo` whose high or int8 commit id is `commit`.
    pub async fn revision_by_commit(
        &self,
        repo: &str,
        commit: &str,
    ) -> Result<Option<Revision>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {REVISION_COLUMNS} FROM revisions \
             WHERE repo = $1 AND (id = $2 OR int8_id = $2)"
        ))
        .bind(repo)
        .bind(commit)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(revision_from_row).transpose()
    }

    /// The files served for one precision of a revision, sorted by path.
    pub async fn files(
        &self,
        revision: &str,
        set: FileSet,
    ) -> Result<Vec<FileEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT path, size, sha256, object_key FROM files \
             WHERE revision = $1 AND (precision = $2 OR precision = 'both') ORDER BY path",
        )
        .bind(revision)
        .bind(set.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| FileEntry {
                path: r.get(0),
                size: r.get::<i64, _>(1) as u64,
                sha256: r.get(2),
                object_key: r.get(3),
            })
            .collect())
    }

    /// Removes a repo from the catalog and returns its revisions, whose objects the caller
    /// deletes afterwards (a crash in between leaves unreferenced objects, never dangling rows).
    pub async fn delete_repo(&self, repo: &str) -> Result<Option<Vec<Revision>>, StorageError> {
        let mut tx = self.pool.begin().await?;
        // Write first (see commit_revision), then collect what is being removed.
        sqlx::query("DELETE FROM branches WHERE repo = $1")
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT {REVISION_COLUMNS} FROM revisions WHERE repo = $1"
        ))
        .bind(repo)
        .fetch_all(&mut *tx)
        .await?;
        let revisions = rows
            .iter()
            .map(revision_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "DELETE FROM files WHERE revision IN (SELECT id FROM revisions WHERE repo = $1)",
        )
        .bind(repo)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM revisions WHERE repo = $1")
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM repos WHERE name = $1")
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(revisions))
    }

    /// Stores a new API token's hash.
    pub async fn add_token(&self, id: &str, name: &str, hash: &str) -> Result<(), StorageError> {
        sqlx::query("INSERT INTO tokens (id, name, hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(name)
            .bind(hash)
            .bind(now_millis())
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

    pub async fn token_exists(&self, hash: &str) -> Result<bool, StorageError> {
        Ok(sqlx::query("SELECT id FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}

fn qualified_revision_columns() -> String {
    REVISION_COLUMNS
        .split(", ")
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn revision_from_row(r: &sqlx::any::AnyRow) -> Result<Revision, StorageError> {
    let size = |i: usize| -> Result<u64, StorageError> {
        Ok(u64::try_from(r.try_get::<i64, _>(i)?).unwrap_or(0))
    };
    Ok(Revision {
        id: r.try_get(0)?,
        int8_id: r.try_get(1)?,
        repo: r.try_get(2)?,
        blob_key: r.try_get(3)?,
        blob_size: size(4)?,
        high_dtype: r.try_get(5)?,
        high_size: size(6)?,
        int8_size: size(7)?,
        plain_size: size(8)?,
        tensors: size(9)?,
        quantized: size(10)?,
        created_at: r.try_get(11)?,
    })
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

    fn revision(id: &str, repo: &str, at: i64) -> Revision {
        Revision {
            id: id.into(),
            int8_id: format!("{id}-8"),
            repo: repo.into(),
            blob_key: format!("revisions/{id}/model.qstore"),
            blob_size: 10,
            high_dtype: "bf16".into(),
            high_size: 20,
            int8_size: 12,
            plain_size: 1,
            tensors: 3,
            quantized: 2,
            created_at: at,
        }
    }

    fn entry(path: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: 5,
            sha256: "ab".into(),
            object_key: None,
        }
    }

    #[tokio::test]
    async fn revisions_branches_files_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let c = Catalog::connect(&url, None).await.unwrap();
        c.migrate().await.unwrap();
        c.migrate().await.unwrap();
        for (id, at) in [("a1", 1), ("a2", 2)] {
            c.commit_revision(&NewRevision {
                revision: revision(id, "org/m", at),
                files: vec![
                    (FileSet::High, entry("model.safetensors")),
                    (FileSet::Int8, entry("model.safetensors")),
                    (FileSet::Both, entry("tokenizer.json")),
                ],
                branches: vec!["main".into(), "int8".into()],
            })
            .await
            .unwrap();
        }
        assert_eq!(c.repos().await.unwrap(), ["org/m"]);
        assert_eq!(c.branch("org/m", "main").await.unwrap().unwrap().id, "a2");
        assert_eq!(
            c.revision_by_commit("org/m", "a1-8")
                .await
                .unwrap()
                .unwrap(),
            revision("a1", "org/m", 1)
        );
        assert!(c.revision_by_commit("other", "a1").await.unwrap().is_none());
        let ids: Vec<_> = c
            .revisions("org/m")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a2", "a1"]);
        let files = c.files("a1", FileSet::Int8).await.unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(c.delete_repo("org/m").await.unwrap().unwrap().len(), 2);
        assert!(c.delete_repo("org/m").await.unwrap().is_none());
        assert!(c.repos().await.unwrap().is_empty());
        assert!(c.files("a1", FileSet::High).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn tokens_are_found_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let c = Catalog::connect(&url, None).await.unwrap();
        c.migrate().await.unwrap();
        assert_eq!(c.token_count().await.unwrap(), 0);
        c.add_token("t1", "ci", "deadbeef").await.unwrap();
        assert!(c.token_exists("deadbeef").await.unwrap());
        assert!(!c.token_exists("beef").await.unwrap());
    }
}
