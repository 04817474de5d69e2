//! Disk space of the data volume: how full it is, and whether a failure was the disk being full.
//! A full disk must answer writes with 507 and keep serving reads, so it is told apart from
//! other I/O failures here, once, for every layer's errors.

use std::path::Path;

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is written by statvfs before use.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // Both are u64 on Linux x86-64 and aarch64, narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Whether `err`, or any error it wraps, says the disk (or the user's quota) is full: an I/O
/// error ENOSPC/EDQUOT, SQLite's SQLITE_FULL, PostgreSQL's disk_full.
pub fn is_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
                || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            {
                return true;
            }
            // An io::Error wrapping another error reports the wrapped one's source, not it.
            if let Some(inner) = io.get_ref()
                && is_full(inner)
            {
                return true;
            }
        }
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>()
            && matches!(db.code().as_deref(), Some("13" | "53100"))
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_through_wrappers() {
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_full(&enospc));
        let wrapped = crate::storage::StorageError::Io(std::io::Error::other(enospc));
        assert!(is_full(&wrapped));
        let other = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(!is_full(&other));
    }

    #[test]
    fn free_bytes_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
