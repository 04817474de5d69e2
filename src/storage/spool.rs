//! Working space for uploads. Each server process spools under its own directory of
//! `data_dir/tmp`, `proc-*`, and holds an exclusive `flock` on a file inside for as long as it
//! lives. The kernel drops the lock when the process dies however it dies (kill -9 included),
//! so a `proc-*` directory whose lock can be taken provably belongs to no live process: its
//! leftovers go at the next start (or `qstore gc`), not after the gc grace period.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "owner.lock";
const PREFIX: &str = "proc-";
/// A directory being claimed (its lock may not exist yet).
const CLAIMING: &str = ".new";

/// This process's spool directory, locked while the value lives.
#[derive(Debug)]
pub struct ProcessSpool {
    dir: PathBuf,
    _lock: File,
}

impl ProcessSpool {
    /// Creates and locks a fresh `proc-*` directory under `tmp`. The lock is taken before the
    /// directory gets its final name, so every `proc-*` directory without the claiming suffix
    /// has had a locked owner.
    pub fn claim(tmp: &Path) -> std::io::Result<ProcessSpool> {
        std::fs::create_dir_all(tmp)?;
        let claiming = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .suffix(CLAIMING)
            .tempdir_in(tmp)?
            .keep();
        let lock = File::create(claiming.join(LOCK_FILE))?;
        if !try_lock(&lock)? {
            return Err(std::io::Error::other(
                "a fresh spool lock is held elsewhere",
            ));
        }
        let name = claiming.file_name().expect("a temp dir has a name");
        let name = name.to_string_lossy();
        let dir = tmp.join(name.strip_suffix(CLAIMING).expect("named with the suffix"));
        std::fs::rename(&claiming, &dir)?;
        Ok(ProcessSpool { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// An exclusive, non-blocking flock: Ok(false) when another open file holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor this `File` owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// What [`remove_dead`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub dirs: usize,
    pub bytes: u64,
}

/// Removes the `proc-*` directories under `tmp` whose owner is gone (their lock can be taken).
/// A directory still being claimed is left alone unless it is older than a minute (its owner
/// died between creating and locking it).
pub fn remove_dead(tmp: &Path) -> Removed {
    let mut removed = Removed::default();
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !name.starts_with(PREFIX) || !path.is_dir() {
            continue;
        }
        if !owner_is_gone(&path, name.ends_with(CLAIMING)) {
            continue;
        }
        let bytes = size_of(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), bytes, "removed the spool of a process that is gone");
                removed.dirs += 1;
                removed.bytes += bytes;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a dead process's spool")
            }
        }
    }
    removed
}

fn owner_is_gone(dir: &Path, claiming: bool) -> bool {
    match File::open(dir.join(LOCK_FILE)) {
        Ok(lock) => try_lock(&lock).unwrap_or(false),
        Err(_) if claiming => super::newest_modification(dir)
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 60),
        // A claimed directory always had its lock file: someone else's, leave it.
        Err(_) => false,
    }
}

fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_spools_whose_owner_is_gone_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let live = ProcessSpool::claim(tmp.path()).unwrap();
        std::fs::write(live.path().join("upload-a"), b"live").unwrap();
        // A dead owner: the lock file exists, nobody holds it.
        let dead = tmp.path().join("proc-1-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK_FILE), b"").unwrap();
        std::fs::write(dead.join("upload-b"), vec![0u8; 1000]).unwrap();
        // Being claimed right now, and a directory that is not a process spool.
        let claiming = tmp.path().join("proc-2-x.new");
        std::fs::create_dir(&claiming).unwrap();
        std::fs::create_dir(tmp.path().join("upload-legacy")).unwrap();

        let removed = remove_dead(tmp.path());
        assert_eq!(removed.dirs, 1);
        assert!(removed.bytes >= 1000);
        assert!(!dead.exists());
        assert!(live.path().join("upload-a").exists());
        assert!(claiming.exists() && tmp.path().join("upload-legacy").exists());
        // A second claim in the same process is another owner, and sees the first as alive.
        let other = ProcessSpool::claim(tmp.path()).unwrap();
        assert_ne!(other.path(), live.path());
        assert_eq!(remove_dead(tmp.path()).dirs, 0);
        drop(live);
        assert_eq!(
            remove_dead(tmp.path()).dirs,
            1,
            "an owner that ended is gone"
        );
        assert!(other.path().exists());
    }
}
