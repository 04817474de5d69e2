//! The OpenAPI description of the HTTP API, served at `/openapi.json`. Generated from the code:
//! the response bodies are the same types the handlers serialise (`ToSchema` derives on them),
//! and each route's statuses are declared next to its schema here, where the dispatcher's
//! routes are listed once. (Work in progress: the native API and operations endpoints so far.)

use utoipa::OpenApi;

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

#[utoipa::path(get, path = "/models/{name}", params(("name" = String, Path, description = "model name, `name` or `namespace/name`")), responses(
    (status = 200, description = "commits (newest first), branches, tags, files and sizes", body = ModelDetails),
    (status = 400, description = "not a valid model name", body = ErrorBody),
    (status = 404, description = "no such model (or not visible to the caller)", body = ErrorBody),
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn model_details() {}

#[utoipa::path(delete, path = "/models/{name}", params(
    ("name" = String, Path, description = "model name"),
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
    ("name" = String, Path, description = "model name"),
    ("precision" = String, Path, description = "`int8`, or the model's own `bf16`/`fp16`"),
    ("revision" = Option<String>, Query, description = "branch, tag or commit id (default main)"),
    ("file" = Option<String>, Query, description = "which file of a sharded model"),
), responses(
    (status = 200, description = "the file, byte-exact, with ETag and Repr-Digest", content_type = "application/octet-stream"),
    (status = 206, description = "the requested byte range", content_type = "application/octet-stream"),
    (status = 304, description = "If-None-Match matched"),
    (status = 400, description = "bad name, query or several files and none named", body = ErrorBody),
    (status = 404, description = "no such model, revision, precision or file", body = ErrorBody),
    (status = 416, description = "the range is outside the file", body = ErrorBody),
))]
#[allow(dead_code)] // Described here; served by the dispatcher (api/mod.rs).
fn download() {}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "qstore",
        description = "One compact blob per model, served as INT8 and as its original precision."
    ),
    paths(healthz, readyz, list_models, model_details, delete_model, download),
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
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }
}
