//! A blob's footer, index and chunks: opening any bytes gives a blob or an error, and decoding
//! every file of an opened blob gives its bytes or an error, never a panic, never more bytes
//! than the index says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qstore::format::{Blob, Precision};

/// Files larger than this are not decoded (the index may claim anything).
const MAX_DECODED: u64 = 4 << 20;

struct Counted(u64);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(blob) = Blob::open(data.to_vec()) else {
        return;
    };
    for p in [Precision::Int8, Precision::High] {
        for f in blob.files(p) {
            if f.size > MAX_DECODED {
                continue;
            }
            let mut out = Counted(0);
            if blob.write_range(f, 0..f.size, &mut out).is_ok() {
                assert_eq!(
                    out.0, f.size,
                    "a decode that succeeds gives exactly the file"
                );
            }
            let mid = f.size / 2;
            let _ = blob.write_range(f, mid..f.size.min(mid + 100), &mut Counted(0));
        }
    }
});
