//! The HTTP `Range` parser: any header against any size gives a range inside the file, "ignore
//! it", or "unsatisfiable", never a panic or a range past the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qstore::api::parse_range;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    let Ok(spec) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    if let Ok(Some(r)) = parse_range(spec, size) {
        assert!(
            r.start < r.end && r.end <= size,
            "{spec:?} on {size}: {r:?}"
        );
    }
});
