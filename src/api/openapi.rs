//! The OpenAPI description of the HTTP API, served at `/openapi.json`. Generated from the code:
//! the response bodies are the same types the handlers serialise (`ToSchema` derives on them),
//! and each route's statuses are declared next to its schema here, where the dispatcher's
//! routes are listed once. The Xet CAS routes (`/xet/...`) are described by the Xet protocol, not here.

use utoipa::OpenApi;

use super::bodies::{
    CommitDone, CommitEntry, GitRefs, Gone, LfsBatch, LfsObject, ModelInfo, ModelListing,
    Preupload, RefCreated, RepoCreated, RepoSettings, TreeEntry, UploadReport, WhoAmI, XetToken,
    YamlReport,
};
use super::hub::{
    BranchRequest, PreuploadRequest, RepoRef, SettingsRequest, TagRequest, YamlRequest,
};
use super::lfs::{BatchBody, BatchObject};
use super::models::{Deleted, FileInfo, ModelDetails, ModelList, ModelSummary, RevisionDetails};

/// The error body every 4xx/5xx carries (`api::error`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code (`BadRequest`, `RepoNotFound`, `InsufficientStorage`, ...).
    pub code: String,
    /// What went wrong, in words, naming the problem.
    pub message: String,
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "the process answers", body = String)))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn healthz() {}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "catalog and object store answer; a second line reports low space", body = String),
    (status = 503, description = "a dependency is unreachable", body = ErrorBody),
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn readyz() {}

#[utoipa::path(get, path = "/models", responses(
    (status = 200, description = "every model the caller may see", body = ModelList),
    (status = 401, description = "a token was sent and is unknown", body = ErrorBody),
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn list_models() {}

#[utoipa::path(get, path = "/models/{name}", params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm", description = "model name, `name` or `namespace/name`")), responses(
    (status = 200, description = "commits (newest first), branches, tags, files and sizes", body = ModelDetails),
    (status = 400, description = "not a valid model name", body = ErrorBody),
    (status = 404, description = "no such model (or not visible to the caller)", body = ErrorBody),
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn model_details() {}

#[utoipa::path(delete, path = "/models/{name}", params(
    ("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", description = "model name"),
    ("revision" = Option<String>, Query, description = "delete only this commit"),
    ("force" = Option<bool>, Query, description = "move refs pointing at the commit to its parent"),
), responses(
    (status = 200, description = "deleted", body = Deleted),
    (status = 400, description = "bad name or query", body = ErrorBody),
    (status = 401, description = "writes need a token", body = ErrorBody),
    (status = 404, description = "no such model or revision", body = ErrorBody),
    (status = 409, description = "a branch or tag points at the commit", body = ErrorBody),
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn delete_model() {}

#[utoipa::path(get, path = "/models/{name}/{precision}", params(
    ("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm", description = "model name"),
    ("precision" = String, Path, example = "int8", description = "`int8`, or the model's own `bf16`/`fp16`"),
    ("revision" = Option<String>, Query, description = "branch, tag or commit id (default main)"),
    ("file" = Option<String>, Query, description = "which file of a sharded model"),
), responses(
    // The path is shared with GET /models/{namespace}/{name}: a last segment that is not a
    // precision makes the two segments a repo id, answered with the repo's details (JSON).
    (status = 200, description = "the file, byte-exact, with ETag and Repr-Digest; or, when `{precision}` is not a precision, the details of the repo `{name}/{precision}`", content(
        ("application/octet-stream"),
        (ModelDetails = "application/json"),
    )),
    (status = 206, description = "the requested byte range", content_type = "application/octet-stream"),
    (status = 304, description = "If-None-Match matched"),
    (status = 400, description = "bad name, query or several files and none named", body = ErrorBody),
    (status = 404, description = "no such model, revision, precision or file", body = ErrorBody),
    (status = 416, description = "the range is outside the file", body = ErrorBody),
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn download() {}

// Repo ids in paths are `namespace/name` (a one-segment `name` is served too, under the same
// routes without `{namespace}/`); each part matches `names::check_repo_name`'s pattern. The
// examples name the repo the README quickstart uploads, so a schema-driven client reaches data.

/// Errors any read can answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only the schema is used.
enum ReadErrors {
    #[response(status = 400, description = "a malformed name, revision or query")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "a token was sent and is unknown")]
    Unauthorized(ErrorBody),
    #[response(
        status = 404,
        description = "no such repo, revision or file, or not visible to the caller"
    )]
    NotFound(ErrorBody),
}

/// Errors any write can answer, on top of a read's.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only the schema is used.
enum WriteErrors {
    #[response(status = 400, description = "a malformed name, body or query")]
    BadRequest(ErrorBody),
    #[response(
        status = 401,
        description = "writes need a known token (unless the server allows anonymous writes)"
    )]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "the token may not write this namespace")]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "no such repo or revision")]
    NotFound(ErrorBody),
    #[response(
        status = 409,
        description = "it exists already, or a concurrent write won"
    )]
    Conflict(ErrorBody),
    #[response(status = 413, description = "over a size limit")]
    TooLarge(ErrorBody),
    #[response(
        status = 507,
        description = "the data volume is below `storage.min_free_mib`"
    )]
    InsufficientStorage(ErrorBody),
}

#[utoipa::path(get, path = "/api/whoami-v2", responses(
    (status = 200, description = "the token's user and namespaces", body = WhoAmI),
    (status = 401, description = "no token, or an unknown one", body = ErrorBody),
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn whoami() {}

#[utoipa::path(post, path = "/api/repos/create", request_body = RepoRef, responses(
    (status = 200, description = "created, with a first commit holding `.gitattributes`", body = RepoCreated),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn create_repo() {}

#[utoipa::path(delete, path = "/api/repos/delete", request_body = RepoRef, responses(
    (status = 200, description = "the repo is gone from the catalog (its bytes go at `qstore gc`)", body = Gone),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn delete_repo() {}

#[utoipa::path(post, path = "/api/validate-yaml", request_body = YamlRequest, responses(
    (status = 200, description = "the card's front matter parses", body = YamlReport),
    (status = 400, description = "it does not (`errors` lists why), or the body is malformed", body = ErrorBody),
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn validate_yaml() {}

#[utoipa::path(get, path = "/api/models", params(
    ("search" = Option<String>, Query, description = "part of the repo id"),
    ("author" = Option<String>, Query, description = "namespace"),
    ("sort" = Option<String>, Query, description = "`id`, `lastModified` (newest first) or `usedStorage`"),
    ("limit" = Option<u32>, Query, description = "page size, at most 1000"),
    ("offset" = Option<u64>, Query, description = "where the page starts; the next page is in `Link`"),
), responses(
    (status = 200, description = "repos the caller may see", body = Vec<ModelListing>),
    ReadErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn hub_list_models() {}

#[utoipa::path(get, path = "/api/models/{namespace}/{repo}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("blobs" = Option<bool>, Query, description = "add sizes and LFS details to `siblings`"),
), responses(
    (status = 200, description = "the repo at `main`", body = ModelInfo),
    ReadErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn model_info() {}

#[utoipa::path(get, path = "/api/models/{namespace}/{repo}/revision/{revision}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("revision" = String, Path, description = "branch, tag, commit id, `int8` or `int8-REF`", example = "int8"),
    ("blobs" = Option<bool>, Query, description = "add sizes and LFS details to `siblings`"),
), responses(
    (status = 200, description = "the repo at that revision; an INT8 revision lists the INT8 files", body = ModelInfo),
    ReadErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn model_info_at() {}

#[utoipa::path(get, path = "/api/models/{namespace}/{repo}/tree/{revision}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("revision" = String, Path, example = "main"),
    ("recursive" = Option<bool>, Query, description = "list subfolders' entries too"),
    ("expand" = Option<bool>, Query, description = "accepted; entries carry what qstore knows"),
    ("limit" = Option<u32>, Query, description = "page size, at most 1000"),
    ("cursor" = Option<u64>, Query, description = "where the page starts; the next page is in `Link`"),
), responses(
    (status = 200, description = "the root folder's entries", body = Vec<TreeEntry>),
    ReadErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn tree() {}

#[utoipa::path(get, path = "/api/models/{namespace}/{repo}/refs", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
), responses(
    (status = 200, description = "branches and tags", body = GitRefs),
    ReadErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn refs() {}

#[utoipa::path(get, path = "/api/models/{namespace}/{repo}/commits/{revision}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("revision" = String, Path, example = "main"),
    ("p" = Option<u64>, Query, description = "page number, from 0"),
    ("limit" = Option<u32>, Query, description = "page size (50), at most 1000"),
), responses(
    (status = 200, description = "the history ending at the revision, newest first", body = Vec<CommitEntry>),
    ReadErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn commits() {}

/// The form `huggingface_hub` posts to paths-info.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only the schema is used.
struct PathsInfoForm {
    /// Repeated: each path asked about.
    paths: Vec<String>,
    expand: Option<bool>,
}

#[utoipa::path(post, path = "/api/models/{namespace}/{repo}/paths-info/{revision}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("revision" = String, Path, example = "main"),
), request_body(content = PathsInfoForm, content_type = "application/x-www-form-urlencoded"), responses(
    (status = 200, description = "the entries of the paths that exist", body = Vec<TreeEntry>),
    ReadErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn paths_info() {}

#[utoipa::path(post, path = "/api/models/{namespace}/{repo}/preupload/{revision}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("revision" = String, Path, example = "main"),
), request_body = PreuploadRequest, responses(
    (status = 200, description = "how each file is to be sent", body = Preupload),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn preupload() {}

#[utoipa::path(post, path = "/api/models/{namespace}/{repo}/commit/{revision}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("revision" = String, Path, description = "the branch to commit to", example = "main"),
), request_body(content = String, content_type = "application/x-ndjson",
    description = "a `header` line (summary, description, parentCommit), then `file`, `lfsFile`, `deletedFile` and `deletedFolder` lines, and at most one `qstoreBlob` (a blob built by `qstore push`, checked whole before the commit)"),
responses(
    (status = 200, description = "committed; the weights were encoded into one blob", body = CommitDone),
    (status = 412, description = "`parentCommit` is not the branch head", body = ErrorBody),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn commit() {}

#[utoipa::path(post, path = "/api/models/{namespace}/{repo}/branch/{branch}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("branch" = String, Path),
), request_body = BranchRequest, responses(
    (status = 200, description = "the branch, at its starting point", body = RefCreated),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn create_branch() {}

#[utoipa::path(delete, path = "/api/models/{namespace}/{repo}/branch/{branch}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("branch" = String, Path, description = "any branch but `main`"),
), responses(
    (status = 200, description = "deleted", body = Gone),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn delete_branch() {}

#[utoipa::path(post, path = "/api/models/{namespace}/{repo}/tag/{revision}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("revision" = String, Path, description = "what the tag points at", example = "main"),
), request_body = TagRequest, responses(
    (status = 200, description = "tagged", body = RefCreated),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn create_tag() {}

#[utoipa::path(delete, path = "/api/models/{namespace}/{repo}/tag/{tag}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("tag" = String, Path),
), responses(
    (status = 200, description = "deleted", body = Gone),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn delete_tag() {}

#[utoipa::path(put, path = "/api/models/{namespace}/{repo}/settings", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
), request_body = SettingsRequest, responses(
    (status = 200, description = "the visibility now", body = RepoSettings),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn settings() {}

#[utoipa::path(get, path = "/api/models/{namespace}/{repo}/xet-write-token/{revision}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("revision" = String, Path, example = "main"),
), responses(
    (status = 200, description = "a CAS token scoped to the repo, also in `X-Xet-*` headers", body = XetToken),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn xet_write_token() {}

#[utoipa::path(post, path = "/{namespace}/{repo}.git/info/lfs/objects/batch", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
), request_body(content = BatchBody, content_type = "application/vnd.git-lfs+json"), responses(
    (status = 200, description = "per object: nothing (stored), where to upload it, or why not", body = LfsBatch,
        content_type = "application/vnd.git-lfs+json"),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn lfs_batch() {}

#[utoipa::path(post, path = "/{namespace}/{repo}.git/info/lfs/objects/verify", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
), request_body(content = BatchObject, content_type = "application/vnd.git-lfs+json"), responses(
    (status = 200, description = "stored, its sha256 checked", body = LfsObject, content_type = "application/vnd.git-lfs+json"),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn lfs_verify() {}

#[utoipa::path(put, path = "/lfs/uploads/{upload}", params(
    ("upload" = String, Path, description = "the id a batch answer offered: the credential"),
), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses(
    (status = 200, description = "received; its sha256 matched the oid"),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn lfs_upload() {}

#[utoipa::path(get, path = "/{namespace}/{repo}/resolve/{revision}/{file}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("revision" = String, Path, description = "branch, tag, commit id, `int8` or `int8-REF`", example = "int8"),
    ("file" = String, Path, description = "the file's path (slashes allowed)", example = "config.json"),
), responses(
    (status = 200, description = "the file, byte-exact, with `X-Repo-Commit`, `ETag` and `X-Linked-Size`", content_type = "application/octet-stream"),
    (status = 206, description = "the requested byte range", content_type = "application/octet-stream"),
    (status = 304, description = "If-None-Match matched"),
    (status = 416, description = "the range is outside the file", body = ErrorBody),
    ReadErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn resolve() {}

#[utoipa::path(get, path = "/api/models/{namespace}/{repo}/qstore/{revision}", params(
    ("namespace" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "me"),
    ("repo" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", example = "minilm"),
    ("revision" = String, Path, description = "branch, tag, commit id, `int8` or `int8-REF` (all views of a commit share its blob)", example = "main"),
), responses(
    (status = 200, description = "the blob behind the revision's weights as stored (docs/FORMAT.md), every region checked before it is sent; `x-qstore-base`, `x-qstore-residual` and `x-qstore-index` give the sections as `bytes=A-B` ranges; `ETag` is the blob id", content_type = "application/octet-stream"),
    (status = 206, description = "the requested byte range", content_type = "application/octet-stream"),
    (status = 304, description = "If-None-Match matched"),
    (status = 416, description = "the range is outside the blob", body = ErrorBody),
    ReadErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn stored_blob() {}

#[utoipa::path(post, path = "/models/{name}", params(
    ("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", description = "model name (`namespace/name` also works)"),
), request_body(content = Vec<u8>, content_type = "application/octet-stream",
    description = "a BF16 or FP16 safetensors file (or a multipart form of a whole repo folder)"),
responses(
    (status = 201, description = "encoded into one blob and committed to `main`", body = UploadReport),
    WriteErrors,
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn upload() {}

#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text: requests, bytes, decode and cache figures, free space", body = String, content_type = "text/plain"),
))]
#[allow(dead_code)] // Described here; served by the router (api/mod.rs).
fn metrics() {}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "qstore",
        description = "One compact blob per model, served as INT8 and as its original precision."
    ),
    paths(
        healthz,
        readyz,
        metrics,
        list_models,
        model_details,
        delete_model,
        download,
        upload,
        whoami,
        create_repo,
        delete_repo,
        validate_yaml,
        hub_list_models,
        model_info,
        model_info_at,
        tree,
        refs,
        commits,
        paths_info,
        preupload,
        commit,
        create_branch,
        delete_branch,
        create_tag,
        delete_tag,
        settings,
        xet_write_token,
        lfs_batch,
        lfs_verify,
        lfs_upload,
        resolve,
        stored_blob
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        ModelList,
        ModelSummary,
        ModelDetails,
        RevisionDetails,
        FileInfo,
        Deleted
    ))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_described_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for path in [
            "/models",
            "/models/{name}",
            "/models/{name}/{precision}",
            "/readyz",
            "/api/models/{namespace}/{repo}/commit/{revision}",
            "/{namespace}/{repo}.git/info/lfs/objects/batch",
            "/{namespace}/{repo}/resolve/{revision}/{file}",
            "/api/models/{namespace}/{repo}/qstore/{revision}",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }
}
