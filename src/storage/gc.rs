//! Garbage collection: removes what no revision refers to. An upload writes its objects under a
//! fresh `revisions/{id}/` before the catalog row that makes it visible, so a server killed in
//! between (or a failed cleanup) leaves a folder nobody references; likewise its local spool.
//! Anything younger than the grace period is kept, since it may belong to an upload still
//! running on some replica; anything the catalog names is always kept.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{Catalog, Objects, StorageError};

/// What one collection found and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Revision folders the catalog names.
    pub referenced: usize,
    /// Unreferenced folders kept because they are younger than the grace period.
    pub young: usize,
    /// Unreferenced folders removed (or that would be, on a dry run).
    pub removed: Vec<String>,
    /// Upload spools removed from the local spool directory.
    pub spools_removed: usize,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} revision folders in use, {} unreferenced removed, {} unreferenced kept (younger than the grace period), {} upload spools removed",
            self.referenced,
            self.removed.len(),
            self.young,
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
    let cutoff = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    // List the store before reading the catalog: a revision committed in between has fresh
    // objects, so it falls under the grace period rather than looking unreferenced.
    let folders = objects.revision_folders().await?;
    let referenced = catalog.all_revision_ids().await?;
    let mut report = GcReport::default();
    for folder in folders {
        if referenced.contains(&folder.id) {
            report.referenced += 1;
        } else if folder.newest > cutoff {
            report.young += 1;
        } else {
            if !dry_run {
                objects.delete_revision_folder(&folder.id).await?;
                tracing::info!(revision = %folder.id, "gc: removed an unreferenced revision folder");
            }
            report.removed.push(folder.id);
        }
    }
    report.spools_removed = remove_old_spools(spool_dir, cutoff, dry_run);
    Ok(report)
}

/// Removes upload spools (`upload-*` under the spool directory) last written before `cutoff`;
/// a live upload writes its spool continuously, and its encode follows right after.
pub fn remove_old_spools(spool_dir: &Path, cutoff: SystemTime, dry_run: bool) -> usize {
    let Ok(entries) = std::fs::read_dir(spool_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let is_spool = entry.file_name().to_string_lossy().starts_with("upload-");
        let old = super::newest_modification(&entry.path()).is_ok_and(|t| t < cutoff);
        if !(is_spool && old) {
            continue;
        }
        if dry_run {
            removed += 1;
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
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
