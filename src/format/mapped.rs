//! A local blob file mapped into memory, so a decode reads its chunks where they lie.
//!
//! Read with `pread`, every chunk was first copied out of the page cache: 12% of a one-thread
//! BF16 decode. A map has one risk a read does not: if another process truncates the file, the
//! next read of a page past its new end raises SIGBUS, which kills the process. The first map
//! installs a handler that turns such a fault into a page of zeros (a fresh anonymous page
//! mapped over the one that faulted), so the read returns and the chunk fails its stored
//! checksum: an ordinary error. Faults outside the maps go to the handler there was before.
//!
//! Memory: the pages a decode reads stay mapped until the file is dropped, so its RSS grows by
//! up to the blob's size. They are the page cache's pages (a read would have brought them in
//! too), clean and shared, not memory the decode allocates. Letting go of them as chunks were
//! done cost more than the copies it saved (MiniLM INT8 through the CLI: 19.1 ms keeping them,
//! 22.8 ms dropping them every 16 MiB, 21.9 ms reading with `pread`).

use std::fs::File;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::reader::BlobSource;

/// Maps guarded at once; a file opened beyond them is read with `pread` instead.
const SLOTS: usize = 64;

/// Start and length of each live map (length 0: free), for the SIGBUS handler.
static MAPS: [(AtomicUsize, AtomicUsize); SLOTS] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; SLOTS];

/// The handler installed before ours, and the page size; set once, with the handler.
static GUARD: OnceLock<Option<(libc::sigaction, usize)>> = OnceLock::new();

/// A blob file, mapped when it can be (else read with `pread`, as a plain [`File`] is).
pub struct MappedFile {
    file: File,
    map: Option<Map>,
}

struct Map {
    ptr: *mut libc::c_void,
    len: usize,
    slot: usize,
}

// SAFETY: the map is read-only and lives as long as the `MappedFile`; reads from many threads
// are plain loads.
unsafe impl Send for MappedFile {}
// SAFETY: as above.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps `file` whole. An empty file, a failed map, a full table of guarded maps or
    /// `QSTORE_NO_MAP=1` in the environment leave it read with `pread`: slower, but a decode's
    /// RSS then holds none of the blob's pages.
    pub fn new(file: File) -> MappedFile {
        let map = file
            .metadata()
            .ok()
            .filter(|_| std::env::var_os("QSTORE_NO_MAP").is_none_or(|v| v != "1"))
            .and_then(|m| usize::try_from(m.len()).ok())
            .filter(|&len| len > 0)
            .and_then(|len| map_guarded(&file, len));
        MappedFile { file, map }
    }

    /// Whether reads come from a map; a file that could not be mapped is read with `pread`
    /// (tests check which they got).
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    fn bytes(&self) -> Option<&[u8]> {
        let map = self.map.as_ref()?;
        // SAFETY: the map covers `len` readable bytes for as long as `self` lives. Pages past
        // a truncation read as zeros (see the module notes); bytes another process changes
        // are caught by the chunks' checksums.
        Some(unsafe { std::slice::from_raw_parts(map.ptr.cast::<u8>(), map.len) })
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if let Some(map) = self.map.take() {
            MAPS[map.slot].1.store(0, Ordering::Release);
            // SAFETY: `ptr..ptr + len` is the map made in `map_guarded`, no longer borrowed.
            unsafe { libc::munmap(map.ptr, map.len) };
        }
    }
}

impl BlobSource for MappedFile {
    fn len(&self) -> u64 {
        match self.bytes() {
            Some(bytes) => bytes.len() as u64,
            None => BlobSource::len(&self.file),
        }
    }

    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_at_into(offset, len, &mut buf)?;
        Ok(buf)
    }

    fn read_at_into(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
        match self.bytes() {
            Some(bytes) => {
                buf.clear();
                buf.extend_from_slice(super::reader::in_place(bytes, offset, len)?);
                Ok(())
            }
            None => self.file.read_at_into(offset, len, buf),
        }
    }

    fn in_memory(&self) -> Option<&[u8]> {
        self.bytes()
    }
}

/// Maps `len` bytes of `file` read-only, registered with the SIGBUS handler; `None` if the
/// handler or the map cannot be had, or every slot is taken.
fn map_guarded(file: &File, len: usize) -> Option<Map> {
    use std::os::fd::AsRawFd;
    GUARD.get_or_init(install_handler).as_ref()?;
    let slot = MAPS.iter().position(|(_, l)| {
        l.compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    })?;
    // SAFETY: a new shared read-only map of an open file; the kernel picks the address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        MAPS[slot].1.store(0, Ordering::Release);
        return None;
    }
    MAPS[slot].0.store(ptr as usize, Ordering::Release);
    MAPS[slot].1.store(len, Ordering::Release);
    Some(Map { ptr, len, slot })
}

/// Installs [`on_sigbus`], keeping the handler it replaces.
fn install_handler() -> Option<(libc::sigaction, usize)> {
    // SAFETY: plain libc calls on zeroed, then filled, structures.
    unsafe {
        let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).ok()?;
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, &action, &mut previous) != 0 {
            return None;
        }
        Some((previous, page))
    }
}

/// A fault inside a live map gets a page of zeros mapped over it, and the read is retried.
/// Any other fault restores the previous handler and returns: the faulting instruction runs
/// again and faults into it. Only async-signal-safe work: atomic loads and system calls.
extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let Some(Some((previous, page))) = GUARD.get() else {
        return;
    };
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO.
    let addr = unsafe { (*info).si_addr() } as usize;
    for (start, len) in &MAPS {
        let (start, len) = (start.load(Ordering::Acquire), len.load(Ordering::Acquire));
        if len == 0 || len == usize::MAX || addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: the page lies inside a live map of ours, which only this module reads and
        // unmaps; it becomes a private zero page.
        let zero = unsafe {
            libc::mmap(
                (addr & !(page - 1)) as *mut libc::c_void,
                *page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if zero != libc::MAP_FAILED {
            return;
        }
    }
    // SAFETY: restores the action saved when ours was installed.
    unsafe { libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Blob, EncodeInput, EncodeOptions, FormatError, Precision};
    use std::io::Write;

    #[test]
    fn a_mapped_file_reads_what_it_holds() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31) as u8).collect();
        f.write_all(&data).unwrap();
        let m = MappedFile::new(f);
        assert!(m.is_mapped());
        assert_eq!(m.len(), data.len() as u64);
        assert!(m.in_memory() == Some(&data[..]));
        assert_eq!(m.read_at(99_990, 10).unwrap(), &data[99_990..]);
        assert!(m.read_at(99_995, 10).is_err(), "past the end");
        let empty = MappedFile::new(tempfile::tempfile().unwrap());
        assert!(!empty.is_mapped());
        assert_eq!(empty.len(), 0);
    }

    #[test]
    fn pages_cut_off_by_a_truncation_read_as_zeros_instead_of_killing_the_process() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![0xAB; 3 << 16]).unwrap();
        let m = MappedFile::new(File::open(f.path()).unwrap());
        assert!(m.is_mapped());
        std::fs::OpenOptions::new()
            .write(true)
            .open(f.path())
            .unwrap()
            .set_len(1 << 16)
            .unwrap();
        let bytes = m.in_memory().unwrap();
        assert_eq!(
            bytes[(1 << 16) - 1],
            0xAB,
            "below the new end: the file's bytes"
        );
        assert!(bytes[1 << 16..].iter().all(|&b| b == 0), "past it: zeros");
    }

    #[test]
    fn a_blob_truncated_while_mapped_fails_its_decode_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.safetensors");
        crate::synth::write_llm_like(&model, 2, 512, 1024, 3).unwrap();
        let path = dir.path().join("m.qstore");
        let input = EncodeInput {
            high: vec![model],
            ..EncodeInput::default()
        };
        crate::format::encode_to_path(&input, &EncodeOptions::default(), &path, &|_| {}).unwrap();
        let blob = Blob::open(MappedFile::new(File::open(&path).unwrap())).unwrap();
        let file = blob.file(Precision::High, None).unwrap().clone();
        let mut whole = Vec::new();
        blob.write_file(&file, &mut whole).unwrap();
        // Cut the file down to its first few chunks: the index stays mapped, the chunks past
        // the cut read as zeros.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(64 << 10)
            .unwrap();
        let err = blob.write_file(&file, &mut std::io::sink()).unwrap_err();
        assert!(matches!(err, FormatError::Corrupt(_)), "{err}");
    }
}
