//! A line of a Hub commit body (`POST /api/models/{repo}/commit/{rev}`): parsed into an
//! operation with safe paths and a sha256 oid, or refused with a 400, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qstore::api::{CommitOp, parse_commit_line};

fuzz_target!(|data: &[u8]| {
    let path_ok =
        |p: &str| !p.is_empty() && !p.starts_with('/') && !p.split('/').any(|s| s == "..");
    match parse_commit_line(data, 1) {
        Ok(Some(CommitOp::File { path, .. })) => assert!(path_ok(&path), "{path:?}"),
        Ok(Some(CommitOp::LfsFile { path, oid, .. })) => {
            assert!(path_ok(&path), "{path:?}");
            assert!(
                oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_hexdigit()),
                "{oid:?}"
            );
        }
        Ok(Some(CommitOp::Delete(path) | CommitOp::DeleteFolder(path))) => {
            assert!(!path.split('/').any(|s| s == ".."), "{path:?}")
        }
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind, qstore::api::error::ErrorKind::BadRequest),
    }
});
