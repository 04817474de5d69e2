//! The body of an LFS batch request: an upload request of objects, or a 400, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qstore::api::parse_batch_request;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = parse_batch_request(data) {
        assert_eq!(e.kind, qstore::api::error::ErrorKind::BadRequest);
    }
});
