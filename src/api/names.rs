//! What a repo name and a file path inside a repo may be. Strict, so that names are safe as
//! URL segments, object keys and file names everywhere they end up.

use super::error::{ApiError, ApiResult};

/// Longest segment of a repo name (`name` or `org/name`).
pub const MAX_SEGMENT: usize = 96;

/// Words that route parsing gives a meaning; a repo segment may not be one of them.
const RESERVED: [&str; 21] = [
    "int8",
    "qstore",
    "bf16",
    "fp16",
    "resolve",
    "tree",
    "revision",
    "api",
    "models",
    "refs",
    "commits",
    "commit",
    "paths-info",
    "preupload",
    "branch",
    "tag",
    "settings",
    "lfs",
    "xet-write-token",
    "xet",
    "static",
];

/// Checks `org/name` or `name`.
pub fn check_repo_name(name: &str) -> ApiResult<()> {
    let segments: Vec<&str> = name.split('/').collect();
    if segments.len() > 2 {
        return Err(ApiError::bad_request(format!(
            "model name {name:?}: use `name` or `org/name`"
        )));
    }
    for s in segments {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        let first_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok_chars || !first_ok || s.len() > MAX_SEGMENT || s.contains("..") || s.ends_with('.') {
            return Err(ApiError::bad_request(format!(
                "model name {name:?}: each part must be 1-{MAX_SEGMENT} characters of \
                 A-Z a-z 0-9 - _ ., start with a letter or digit, and contain no `..`"
            )));
        }
        if RESERVED.contains(&s.to_ascii_lowercase().as_str()) {
            return Err(ApiError::bad_request(format!(
                "model name {name:?}: {s:?} is reserved"
            )));
        }
    }
    Ok(())
}

/// Checks a relative file path such as `config.json` or `1_Pooling/config.json` (the rules are
/// the repository model's, `crate::repo::tree::check_path`).
pub fn check_file_path(path: &str) -> ApiResult<()> {
    crate::repo::tree::check_path(path).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        for ok in ["llama", "org/llama-3.1_8B", "a", "A1/b2"] {
            assert!(check_repo_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(MAX_SEGMENT + 1);
        for bad in [
            "", "a/b/c", "../x", "a/..", "a..b", "-x", ".x", "x.", "a b", "a/", "/a", "é", "int8",
            "org/bf16", "api/x", &long,
        ] {
            assert!(check_repo_name(bad).is_err(), "{bad}");
        }
    }
}
