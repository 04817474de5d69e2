//! Encoding a file while it is still being written: an upload lands in a spool file while the
//! encoder reads it, waiting for bytes that have not arrived yet. The writer reports progress
//! through an [`Arrival`]; the encoder reads through an [`ArrivingFile`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

/// How much of a file has been written, and whether writing has ended (and how).
#[derive(Default)]
pub struct Arrival {
    state: Mutex<ArrivalState>,
    changed: Condvar,
}

#[derive(Default)]
struct ArrivalState {
    written: u64,
    /// `Some(Ok)`: complete at `written` bytes; `Some(Err)`: the writer gave up, with why.
    end: Option<Result<(), String>>,
}

impl Arrival {
    pub fn new() -> Arc<Arrival> {
        Arc::new(Arrival::default())
    }

    /// The first `written` bytes are on disk (flushed) and may be read.
    pub fn advance(&self, written: u64) {
        let mut s = self.lock();
        s.written = s.written.max(written);
        self.changed.notify_all();
    }

    /// Writing ended: the file is complete, or it never will be (`Err` says why).
    pub fn finish(&self, result: Result<(), String>) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(result);
        }
        self.changed.notify_all();
    }

    /// Waits until the file is complete and returns its length.
    pub fn wait_complete(&self) -> std::io::Result<u64> {
        let mut s = self.lock();
        loop {
            match &s.end {
                Some(Ok(())) => return Ok(s.written),
                Some(Err(why)) => return Err(std::io::Error::other(why.clone())),
                None => s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// Waits until byte `pos` is readable or writing has ended; returns how many bytes are
    /// readable in all (0 past `pos` means the file ended before it).
    fn wait_past(&self, pos: u64) -> std::io::Result<u64> {
        let mut s = self.lock();
        loop {
            if s.written > pos {
                return Ok(s.written);
            }
            match &s.end {
                Some(Ok(())) => return Ok(s.written),
                Some(Err(why)) => return Err(std::io::Error::other(why.clone())),
                None => s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ArrivalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A reader over a file that is still arriving: reads block until their bytes are written,
/// end where the file ends, and fail if the writer gives up.
pub struct ArrivingFile {
    file: File,
    arrival: Arc<Arrival>,
    pos: u64,
}

impl ArrivingFile {
    pub fn new(file: File, arrival: Arc<Arrival>) -> ArrivingFile {
        ArrivingFile {
            file,
            arrival,
            pos: 0,
        }
    }
}

impl Read for ArrivingFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let available = self.arrival.wait_past(self.pos)?;
        if available <= self.pos {
            return Ok(0);
        }
        let n = buf.len().min((available - self.pos) as usize);
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ArrivingFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before start")
            })?,
            SeekFrom::End(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "an arriving file has no end yet",
                ));
            }
        };
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_wait_for_bytes_and_end_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = File::create(&path).unwrap();
        let arrival = Arrival::new();
        let mut r = ArrivingFile::new(File::open(&path).unwrap(), arrival.clone());
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            r.read_to_end(&mut all).map(|_| all)
        });
        for i in 0..50u8 {
            w.write_all(&[i; 1000]).unwrap();
            arrival.advance(u64::from(i + 1) * 1000);
        }
        arrival.finish(Ok(()));
        let all = reader.join().unwrap().unwrap();
        assert_eq!(all.len(), 50_000);
        assert!(
            all.chunks(1000)
                .enumerate()
                .all(|(i, c)| c.iter().all(|&b| b == i as u8))
        );
        assert_eq!(arrival.wait_complete().unwrap(), 50_000);
    }

    #[test]
    fn a_writer_that_gives_up_fails_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 10]).unwrap();
        let arrival = Arrival::new();
        arrival.advance(10);
        let mut r = ArrivingFile::new(File::open(&path).unwrap(), arrival.clone());
        let mut buf = [0u8; 10];
        r.read_exact(&mut buf).unwrap();
        arrival.finish(Err("client went away".into()));
        let err = r.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("client went away"));
        assert!(arrival.wait_complete().is_err());
    }
}
