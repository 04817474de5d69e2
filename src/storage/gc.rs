//! Garbage collection: removes objects no catalog row names. A write puts its objects before the
//! catalog row that makes them visible (an LFS upload waits for its commit; a commit's blob is put
//! before the commit lands), so a crash in between, an upload never committed, or a deleted repo
//! leaves objects nobody references. Anything younger than the grace period is kept, since it may
//! belong to an upload or commit still running on some replica; anything the catalog names is
//! always kept.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{Catalog, Objects, StorageError};

/// What one collection found and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Objects the catalog names.
    pub referenced: usize,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub young: usize,
    /// Unreferenced objects removed (or that would be, on a dry run), by key.
    pub removed: Vec<String>,
    /// Bytes those held.
    pub removed_bytes: u64,
    /// Blob rows no commit used any more, dropped from the catalog.
    pub blobs_released: usize,
    /// Xet xorb rows past the grace period, dropped (their objects go with the other garbage).
    pub xorbs_released: usize,
    /// Upload spools removed from the local spool directory.
    pub spools_removed: usize,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} objects in use, {} unreferenced removed ({} bytes), {} unreferenced kept (younger than the grace period), {} unused blobs released, {} xorbs released, {} upload spools removed",
            self.referenced,
            self.removed.len(),
            self.removed_bytes,
            self.young,
            self.blobs_released,
            self.xorbs_released,
            self.spools_removed
        )
    }
}

/// One collection over the object store and this machine's spool directory.
pub async fn collect(
    catalog: &Catalog,
    objects: &Objects,
    spool_dir: &Path,
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport, StorageError> {
    let now = SystemTime::now();
    let cutoff = now.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport::default();
    if !dry_run {
        report.blobs_released = catalog.delete_unused_blobs().await?.len();
        let cutoff_ms = cutoff
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        catalog.delete_lfs_records_before(cutoff_ms).await?;
        report.xorbs_released = catalog.delete_xet_records_before(cutoff_ms).await? as usize;
    }
    // List the store before reading the catalog: an object committed in between is fresh, so it
    // falls under the grace period rather than looking unreferenced.
    let stored = objects.list_all().await?;
    let referenced = catalog.referenced_keys().await?;
    for object in stored {
        if referenced.contains(&object.key) {
            report.referenced += 1;
        } else if object.modified > cutoff {
            report.young += 1;
        } else {
            if !dry_run {
                objects.delete(&object.key).await?;
                tracing::info!(key = %object.key, bytes = object.size, "gc: removed an unreferenced object");
            }
            report.removed_bytes += object.size;
            report.removed.push(object.key);
        }
    }
    if !dry_run {
        report.spools_removed = super::spool::remove_dead(spool_dir).dirs;
    }
    report.spools_removed += remove_old_spools(spool_dir, cutoff, dry_run);
    Ok(report)
}

/// Removes upload spools (`upload-*` directories and files under the spool directory) last
/// written before `cutoff`;
/// a live upload writes its spool continuously, and its encode follows right after.
pub fn remove_old_spools(spool_dir: &Path, cutoff: SystemTime, dry_run: bool) -> usize {
    let Ok(entries) = std::fs::read_dir(spool_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        // A live process's own spool directory (storage::spool): look inside.
        if entry.file_name().to_string_lossy().starts_with("proc-") && entry.path().is_dir() {
            removed += remove_old_spools(&entry.path(), cutoff, dry_run);
            continue;
        }
        let is_spool = entry.file_name().to_string_lossy().starts_with("upload-");
        let old = super::newest_modification(&entry.path()).is_ok_and(|t| t < cutoff);
        if !(is_spool && old) {
            continue;
        }
        if dry_run {
            removed += 1;
            continue;
        }
        let removal = if entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path()) // A Xet xorb or shard spool.
        };
        match removal {
            Ok(()) => {
                removed += 1;
                tracing::info!(path = %entry.path().display(), "gc: removed an old upload spool");
            }
            Err(e) => {
                tracing::warn!(path = %entry.path().display(), error = %e, "gc: cannot remove an upload spool")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_spools_go_whether_directories_or_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("upload-commit")).unwrap();
        std::fs::write(dir.path().join("upload-commit/weights"), b"w").unwrap();
        std::fs::write(dir.path().join("upload-xorb-1"), b"x").unwrap();
        std::fs::write(dir.path().join("cache-keep"), b"k").unwrap();
        let past = SystemTime::now() - Duration::from_secs(60);
        assert_eq!(remove_old_spools(dir.path(), past, false), 0, "young: kept");
        let future = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(
            remove_old_spools(dir.path(), future, true),
            2,
            "dry run counts"
        );
        assert_eq!(remove_old_spools(dir.path(), future, false), 2);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec!["cache-keep"]);
    }
}
