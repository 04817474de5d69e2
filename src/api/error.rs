//! The one API error type: a kind that fixes the HTTP status, the stable `code` string and (for
//! Hugging Face clients) the `X-Error-Code` header. Mapped to a response in exactly one place.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::format::FormatError;
use crate::repo::RepoError;
use crate::storage::StorageError;

/// What went wrong, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request or upload (bad model file, bad name, bad form).
    BadRequest,
    /// The named model does not exist.
    RepoNotFound,
    /// The model exists but not this revision or precision.
    RevisionNotFound,
    /// The revision exists but has no such file.
    EntryNotFound,
    Unauthorized,
    Forbidden,
    PayloadTooLarge,
    RangeNotSatisfiable,
    /// It exists already (repo, branch, tag), or a concurrent write won.
    Conflict,
    /// The client's `parentCommit` is not the branch head any more.
    PreconditionFailed,
    /// Server-side failure; the message is logged, never sent.
    Internal,
    /// A dependency (catalog, object store) is unreachable.
    Unavailable,
    /// The data volume is full (or below `storage.min_free_mib`): writes wait for space.
    InsufficientStorage,
}

impl ErrorKind {
    fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::RepoNotFound | ErrorKind::RevisionNotFound | ErrorKind::EntryNotFound => {
                StatusCode::NOT_FOUND
            }
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// Stable code in the JSON body; the not-found ones are the names Hugging Face clients read.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "BadRequest",
            ErrorKind::RepoNotFound => "RepoNotFound",
            ErrorKind::RevisionNotFound => "RevisionNotFound",
            ErrorKind::EntryNotFound => "EntryNotFound",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::PayloadTooLarge => "PayloadTooLarge",
            ErrorKind::RangeNotSatisfiable => "RangeNotSatisfiable",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::PreconditionFailed => "PreconditionFailed",
            ErrorKind::Internal => "Internal",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::InsufficientStorage => "InsufficientStorage",
        }
    }
}

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Commit to send with `EntryNotFound`, so Hugging Face clients cache the absence.
    pub commit: Option<String>,
    /// Total size for a 416's `Content-Range: bytes */TOTAL`.
    pub total: Option<u64>,
    /// Fields added next to `error` in the body (a 409 on create names the existing `url`).
    pub fields: Vec<(&'static str, serde_json::Value)>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            commit: None,
            total: None,
            fields: Vec::new(),
        }
    }

    /// Adds a field next to `error` (clients read some answers' extra keys).
    pub fn with_field(mut self, key: &'static str, value: serde_json::Value) -> ApiError {
        self.fields.push((key, value));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::BadRequest, message)
    }

    pub fn with_commit(mut self, commit: &str) -> ApiError {
        self.commit = Some(commit.to_string());
        self
    }

    /// The disk filled up during a write: said as such (507), nothing of the write is kept.
    pub fn store_full(context: &str, detail: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %detail, "{context}: the data volume is full");
        ApiError::new(
            ErrorKind::InsufficientStorage,
            "the store is full: no space left on the server's data volume for this upload; \
             nothing of it was kept (downloads still work)",
        )
    }

    /// An I/O failure of a write: 507 when the disk is full, else a 500.
    pub fn io(context: &str, e: std::io::Error) -> ApiError {
        if crate::storage::space::is_full(&e) {
            return ApiError::store_full(context, e);
        }
        ApiError::internal(context, e)
    }

    /// A server-side failure: logged here with its detail, answered as a bare 500.
    pub fn internal(context: &str, detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "{context}");
        ApiError::new(ErrorKind::Internal, "internal server error")
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        if e.is_not_found() {
            tracing::error!(error = %e, "an object the catalog refers to is missing");
        }
        if e.is_full() {
            return ApiError::store_full("storage", e);
        }
        ApiError::internal("storage", e)
    }
}

impl From<FormatError> for ApiError {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::Input(_) | FormatError::Safetensors(_) => {
                ApiError::bad_request(e.to_string())
            }
            FormatError::NotFound(m) => ApiError::new(ErrorKind::EntryNotFound, m),
            FormatError::Io(io) => ApiError::io("blob", io),
            FormatError::Corrupt(_) => ApiError::internal("blob", e),
        }
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::RepoNotFound(m) => ApiError::new(ErrorKind::RepoNotFound, m),
            RepoError::RevisionNotFound(m) => ApiError::new(ErrorKind::RevisionNotFound, m),
            RepoError::EntryNotFound(m) => ApiError::new(ErrorKind::EntryNotFound, m),
            RepoError::BadInput(m) => ApiError::bad_request(m),
            RepoError::Conflict(m) => ApiError::new(ErrorKind::Conflict, m),
            RepoError::Unauthorized(m) => ApiError::new(ErrorKind::Unauthorized, m),
            RepoError::TooLarge(m) => ApiError::new(ErrorKind::PayloadTooLarge, m),
            RepoError::StaleParent(m) => ApiError::new(ErrorKind::PreconditionFailed, m),
            RepoError::Storage(e) => e.into(),
            RepoError::Format(e) => e.into(),
            RepoError::StoreFull(m) => ApiError::store_full("repository", m),
            RepoError::Internal(m) => ApiError::internal("repository", m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let mut body = json!({"error": {"code": self.kind.code(), "message": self.message}});
        for (key, value) in self.fields {
            body[key] = value;
        }
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert("x-error-code", HeaderValue::from_static(self.kind.code()));
        if let Ok(msg) = HeaderValue::from_str(&self.message.replace(['\r', '\n'], " ")) {
            headers.insert("x-error-message", msg);
        }
        if let Some(commit) = self.commit.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert("x-repo-commit", commit);
        }
        if let Some(total) = self.total {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{total}")).expect("ascii"),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
