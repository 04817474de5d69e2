//! The write side of the Hugging Face-compatible API (shared/docs/hub-upload-protocol.md): who
//! am I, repo create/delete/settings, README metadata validation, preupload, commits, branches
//! and tags. Large files arrive through LFS (api/lfs.rs); what a commit does with them is the
//! repository model's business (crate::repo).

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::bodies::{
    AccessToken, CommitDone, Gone, Org, Preupload, PreuploadFile, RefCreated, RepoCreated,
    RepoSettings, TokenAuth, WhoAmI, YamlProblem, YamlReport,
};
use super::error::{ApiError, ApiResult, ErrorKind};
use super::hf::{self, api_models_read, iso_date, split_repo};
use super::{names, revisions};
use crate::repo::commit::Source;
use crate::repo::refs::{MAIN, check_ref_name};
use crate::repo::tree::{self, check_path, git_blob_oid, is_weight_path, sha256_hex};
use crate::repo::{Change, CommitRequest, NewFile, lfs, make_commit, pushed};
use crate::storage::RefKind;

/// Largest JSON body of the small endpoints (repo create, branch, tag, preupload...).
const MAX_JSON_BYTES: usize = 4 << 20;
/// Largest line of a commit body (an inline file, base64): regular files are at most 5 MiB.
const MAX_COMMIT_LINE: usize = 8 << 20;
/// Largest README whose metadata is read.
pub const MAX_README_BYTES: u64 = 1 << 20;
/// Most files in one preupload request.
const MAX_PREUPLOAD_FILES: usize = 1000;

/// What `create_repo` stores in every new repo's first commit, as the Hub does.
const GITATTRIBUTES: &str = "*.7z filter=lfs diff=lfs merge=lfs -text\n\
*.arrow filter=lfs diff=lfs merge=lfs -text\n\
*.bin filter=lfs diff=lfs merge=lfs -text\n\
*.ckpt filter=lfs diff=lfs merge=lfs -text\n\
*.gz filter=lfs diff=lfs merge=lfs -text\n\
*.h5 filter=lfs diff=lfs merge=lfs -text\n\
*.model filter=lfs diff=lfs merge=lfs -text\n\
*.msgpack filter=lfs diff=lfs merge=lfs -text\n\
*.npy filter=lfs diff=lfs merge=lfs -text\n\
*.onnx filter=lfs diff=lfs merge=lfs -text\n\
*.parquet filter=lfs diff=lfs merge=lfs -text\n\
*.pkl filter=lfs diff=lfs merge=lfs -text\n\
*.pt filter=lfs diff=lfs merge=lfs -text\n\
*.pth filter=lfs diff=lfs merge=lfs -text\n\
*.safetensors filter=lfs diff=lfs merge=lfs -text\n\
*.tar filter=lfs diff=lfs merge=lfs -text\n\
*.zip filter=lfs diff=lfs merge=lfs -text\n";

/// Reads a small JSON body (empty reads as `{}`).
async fn json_body<T: for<'de> Deserialize<'de>>(request: Request) -> ApiResult<T> {
    let raw = axum::body::to_bytes(request.into_body(), MAX_JSON_BYTES)
        .await
        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
    let raw: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &raw
    };
    serde_json::from_slice(raw).map_err(|e| ApiError::bad_request(format!("JSON body: {e}")))
}

/// `GET /api/whoami-v2`.
pub(super) async fn whoami(state: AppState, headers: &HeaderMap) -> ApiResult<Response> {
    let Some(caller) = state.writes.caller(&state.catalog, headers).await? else {
        return Err(ApiError::new(
            ErrorKind::Unauthorized,
            "this needs an `Authorization: Bearer TOKEN` header",
        ));
    };
    let role = caller.role();
    let orgs = caller
        .scopes
        .iter()
        .map(|s| Org {
            kind: "org",
            name: s.clone(),
            role_in_org: role,
        })
        .collect();
    Ok(Json(WhoAmI {
        kind: "user",
        id: caller.name.clone(),
        name: caller.name.clone(),
        fullname: caller.name.clone(),
        email: None,
        email_verified: false,
        is_pro: false,
        can_pay: false,
        orgs,
        auth: TokenAuth {
            kind: "access_token",
            access_token: AccessToken {
                display_name: caller.name,
                role,
                created_at: iso_date(0),
            },
        },
    })
    .into_response())
}

/// The body of repo create and delete.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RepoRef {
    /// `name`, or `namespace/name` without `organization`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")]
    name: String,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")]
    organization: Option<String>,
    #[serde(rename = "type")]
    repo_type: Option<String>,
    private: Option<bool>,
    visibility: Option<String>,
}

impl RepoRef {
    /// `org/name`, or `name` without an organization.
    fn full_name(&self) -> ApiResult<String> {
        if let Some(t) = self.repo_type.as_deref().filter(|t| *t != "model") {
            return Err(ApiError::bad_request(format!(
                "qstore hosts model repos only, not {t:?} repos"
            )));
        }
        let full = match &self.organization {
            Some(org) if !org.is_empty() => format!("{org}/{}", self.name),
            _ => self.name.clone(),
        };
        names::check_repo_name(&full)?;
        Ok(full)
    }
}

/// `POST /api/repos/create`: the repo and its first commit (`.gitattributes`), as on the Hub.
pub(super) async fn create_repo(state: AppState, request: Request) -> ApiResult<Response> {
    let headers = request.headers().clone();
    let base = state.base_url(&headers);
    let body: RepoRef = json_body(request).await?;
    let name = body.full_name()?;
    let caller = state
        .writes
        .writer(&state.catalog, &headers, Some(&name))
        .await?;
    let private = match body.visibility.as_deref() {
        Some("private") => true,
        Some("public") | None => body.private.unwrap_or(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "visibility {other:?}: use \"public\" or \"private\""
            )));
        }
    };
    let url = format!("{base}/{name}");
    if !state.catalog.create_repo(&name, private).await? {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("You already created this model repo: {name}"),
        )
        .with_field("url", json!(url)));
    }
    let bytes = Bytes::from_static(GITATTRIBUTES.as_bytes());
    let file = stored_inline_file(&state, ".gitattributes", bytes).await?;
    make_commit(
        &state.repo_store(),
        CommitRequest {
            repo: name.clone(),
            branch: MAIN.into(),
            parent: None,
            author: caller.name,
            title: "initial commit".into(),
            message: String::new(),
            changes: vec![Change::Add(file)],
            replace_all: false,
            create_repo: false,
            prepared: None,
            pushed: None,
        },
    )
    .await?;
    tracing::info!(repo = %name, private, "repo created");
    Ok(Json(RepoCreated {
        url,
        id: name.clone(),
        name,
    })
    .into_response())
}

/// `DELETE /api/repos/delete`.
pub(super) async fn delete_repo(state: AppState, request: Request) -> ApiResult<Response> {
    let headers = request.headers().clone();
    let body: RepoRef = json_body(request).await?;
    let name = body.full_name()?;
    state
        .writes
        .writer(&state.catalog, &headers, Some(&name))
        .await?;
    remove_repo(&state, &name).await?;
    Ok(Json(Gone { deleted: name }).into_response())
}

/// Removes a repo from the catalog; its blobs and objects become garbage unless other repos
/// use them (`qstore gc`).
pub(super) async fn remove_repo(state: &AppState, name: &str) -> ApiResult<()> {
    if !state.catalog.delete_repo(name).await? {
        return Err(ApiError::new(
            ErrorKind::RepoNotFound,
            format!("model {name:?} not found"),
        ));
    }
    tracing::info!(repo = name, "repo deleted");
    Ok(())
}

/// The YAML block at the top of a model card, as JSON; Ok(None) when there is none.
pub fn front_matter(readme: &str) -> Result<Option<Value>, String> {
    let text = readme.trim_start_matches('\u{feff}');
    let Some(rest) = text
        .strip_prefix("---")
        .filter(|r| r.starts_with(['\n', '\r']))
    else {
        return Ok(None);
    };
    let end = rest
        .match_indices("\n---")
        .map(|(i, _)| i)
        .find(|&i| {
            rest[i + 4..]
                .chars()
                .next()
                .is_none_or(|c| c == '\n' || c == '\r')
        })
        .ok_or("the metadata block starting with `---` is not closed by a `---` line")?;
    let yaml = &rest[..end];
    if yaml.trim().is_empty() {
        return Ok(Some(json!({})));
    }
    let value: Value = serde_norway::from_str(yaml).map_err(|e| format!("invalid YAML: {e}"))?;
    match value {
        Value::Object(_) => Ok(Some(value)),
        Value::Null => Ok(Some(json!({}))),
        _ => Err("the metadata must be a YAML mapping (key: value lines)".into()),
    }
}

/// A model card to check.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct YamlRequest {
    /// README.md, front matter and text.
    content: String,
}

/// `POST /api/validate-yaml` `{"content", "repoType"}`: the model card's metadata parses.
pub(super) async fn validate_yaml(request: Request) -> ApiResult<Response> {
    let body: YamlRequest = json_body(request).await?;
    match front_matter(&body.content) {
        Ok(_) => Ok(Json(YamlReport {
            errors: Vec::new(),
            warnings: Vec::new(),
        })
        .into_response()),
        // The error body, with the Hub's `errors` list beside it.
        Err(message) => Err(ApiError::bad_request(message.clone())
            .with_field("errors", json!([YamlProblem { message }]))
            .with_field("warnings", json!([]))),
    }
}

/// Everything under `/api/models/{repo_id}`.
pub(super) async fn api_models(
    state: AppState,
    segments: &[&str],
    request: Request,
) -> ApiResult<Response> {
    let (repo, verb, rest) = split_repo(segments)?;
    let method = request.method().clone();
    let arg = rest.first().map(|s| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    });
    match (verb, &method, arg) {
        (None | Some("revision" | "tree" | "refs" | "commits"), &Method::GET, _) => {
            api_models_read(state, &repo, verb, rest, request).await
        }
        (Some("qstore"), &Method::GET | &Method::HEAD, Some(rev)) => {
            hf::stored_blob(state, &repo, &rev, &method, request.headers()).await
        }
        (Some("paths-info"), &Method::POST, Some(rev)) => {
            let headers = request.headers().clone();
            let form = axum::body::to_bytes(request.into_body(), MAX_JSON_BYTES)
                .await
                .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
            hf::paths_info(&state, &repo, &rev, &headers, &form).await
        }
        (Some("preupload"), &Method::POST, Some(rev)) => {
            preupload(state, &repo, &rev, request).await
        }
        (Some("commit"), &Method::POST, Some(rev)) => commit(state, &repo, &rev, request).await,
        (Some("branch"), &Method::POST, Some(_)) => {
            create_branch(state, &repo, rest, request).await
        }
        (Some("branch"), &Method::DELETE, Some(_)) => {
            delete_ref(state, &repo, RefKind::Branch, rest, request).await
        }
        (Some("tag"), &Method::POST, Some(_)) => create_tag(state, &repo, rest, request).await,
        (Some("tag"), &Method::DELETE, Some(_)) => {
            delete_ref(state, &repo, RefKind::Tag, rest, request).await
        }
        (Some("settings"), &Method::PUT, None) => settings(state, &repo, request).await,
        (Some("xet-write-token"), &Method::GET, Some(_)) => {
            super::xet::write_token(state, &repo, request).await
        }
        _ => Err(ApiError::new(
            ErrorKind::EntryNotFound,
            format!("no route for {method} {}", request.uri().path()),
        )),
    }
}

/// A ref name from the rest of the path (a branch may contain `/`).
fn ref_name(rest: &[&str]) -> String {
    rest.iter()
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The caller, allowed to write in `repo`, which must exist and be visible to them.
pub(super) async fn repo_writer(
    state: &AppState,
    headers: &HeaderMap,
    repo: &str,
) -> ApiResult<Caller> {
    let caller = state
        .writes
        .writer(&state.catalog, headers, Some(repo))
        .await?;
    revisions::visible_repo(state, Some(&caller), repo).await?;
    Ok(caller)
}

/// The files a client is about to commit.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct PreuploadRequest {
    files: Vec<PreuploadRequestFile>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct PreuploadRequestFile {
    path: String,
    /// The first 512 bytes, base64: how a text file is told from a binary one.
    sample: Option<String>,
    size: u64,
}

/// `POST /api/models/{repo}/preupload/{rev}`: which files go through LFS, and the oid of what
/// the revision holds at each path (so the client skips files that did not change).
async fn preupload(
    state: AppState,
    repo: &str,
    rev: &str,
    request: Request,
) -> ApiResult<Response> {
    let headers = request.headers().clone();
    repo_writer(&state, &headers, repo).await?;
    reject_pull_requests(&request)?;
    let body: PreuploadRequest = json_body(request).await?;
    if body.files.len() > MAX_PREUPLOAD_FILES {
        return Err(ApiError::bad_request(format!(
            "more than {MAX_PREUPLOAD_FILES} files in one preupload request"
        )));
    }
    let existing = match crate::repo::resolve(&state.catalog, repo, rev).await {
        Ok(resolved) => hf::view_files(&state, &resolved).await?,
        Err(crate::repo::RepoError::RevisionNotFound(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for f in body.files {
        check_path(&f.path)?;
        let sample = base64::engine::general_purpose::STANDARD
            .decode(f.sample.unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("{}: sample is not base64: {e}", f.path)))?;
        let lfs = f.size > 0 && tree::is_lfs(&f.path, f.size, &sample);
        let oid = existing.iter().find(|e| e.path == f.path).and_then(|e| {
            if lfs {
                Some(e.sha256.clone())
            } else {
                e.git_oid.clone()
            }
        });
        out.push(PreuploadFile {
            path: f.path,
            upload_mode: if lfs { "lfs" } else { "regular" },
            should_ignore: false,
            oid,
        });
    }
    Ok(Json(Preupload {
        files: out,
        commit_oid: None,
    })
    .into_response())
}

fn reject_pull_requests(request: &Request) -> ApiResult<()> {
    let pr = hf::query_pairs(request.uri())
        .iter()
        .any(|(k, v)| k == "create_pr" && v != "0" && !v.eq_ignore_ascii_case("false"));
    if pr {
        return Err(ApiError::bad_request(
            "qstore has no pull requests: commit to a branch",
        ));
    }
    Ok(())
}

/// An inline file's bytes, stored once under their sha256.
async fn stored_inline_file(state: &AppState, path: &str, bytes: Bytes) -> ApiResult<NewFile> {
    check_path(path)?;
    let sha256 = sha256_hex(&bytes);
    let git_oid = git_blob_oid(&bytes);
    let size = bytes.len() as u64;
    let lfs = tree::is_lfs(path, size, &bytes[..bytes.len().min(512)]);
    let key = state.objects.put_content_bytes(&sha256, bytes).await?;
    Ok(NewFile {
        path: path.to_string(),
        size,
        sha256,
        git_oid: (!lfs).then_some(git_oid),
        lfs,
        source: Source::Object(key),
    })
}

/// One line of a commit body.
#[derive(Deserialize)]
struct CommitLine {
    key: String,
    value: Value,
}

/// The `header` line of a commit body.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct CommitHeader {
    pub summary: Option<String>,
    pub description: Option<String>,
    pub parent_commit: Option<String>,
}

/// One line of a commit body, parsed and checked (paths, encodings, oids) before anything is
/// looked up or stored: the part of a commit that is pure parsing of what the client sent.
#[derive(Debug)]
pub enum CommitOp {
    Header(CommitHeader),
    /// An inline file and its decoded bytes.
    File {
        path: String,
        bytes: Vec<u8>,
    },
    /// A file uploaded before (LFS or Xet), named by sha256 and size.
    LfsFile {
        path: String,
        oid: String,
        size: u64,
    },
    Delete(String),
    DeleteFolder(String),
    /// qstore's own line: a blob the client encoded and uploaded through LFS, whose files
    /// become the commit's weights (`qstore push`).
    QstoreBlob {
        oid: String,
        size: u64,
    },
}

/// Parses line `n` (1-based, for messages) of a commit body; `Ok(None)` for a blank line.
pub fn parse_commit_line(line: &[u8], n: usize) -> ApiResult<Option<CommitOp>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let line: CommitLine = serde_json::from_slice(line)
        .map_err(|e| ApiError::bad_request(format!("commit line {n}: {e}")))?;
    Ok(Some(match line.key.as_str() {
        "header" => CommitOp::Header(from_value(line.value, "header")?),
        "file" => inline_file(line.value)?,
        "lfsFile" => lfs_file(line.value)?,
        "deletedFile" => CommitOp::Delete(path_of(line.value)?),
        "deletedFolder" => CommitOp::DeleteFolder(path_of(line.value)?),
        "qstoreBlob" => qstore_blob(line.value)?,
        other => {
            return Err(ApiError::bad_request(format!(
                "commit line {n}: unknown key {other:?}"
            )));
        }
    }))
}

/// `POST /api/models/{repo}/commit/{branch}`, `application/x-ndjson`: a header line, then
/// `file` (inline, base64), `lfsFile` (uploaded before), `deletedFile` and `deletedFolder` lines,
/// and at most one `qstoreBlob` (weights as a pushed blob, checked whole before the commit).
/// Read line by line: memory holds one line at most.
async fn commit(
    state: AppState,
    repo: &str,
    branch: &str,
    request: Request,
) -> ApiResult<Response> {
    let headers = request.headers().clone();
    let caller = repo_writer(&state, &headers, repo).await?;
    reject_pull_requests(&request)?;
    let base = state.base_url(&headers);
    let mut header = CommitHeader::default();
    let mut changes = Vec::new();
    let mut pushed_blob = None;
    // A commit body holds one line (up to 8 MiB, and its decoded bytes) in memory: admitted
    // with the LFS transfers.
    let turn = state.transfer_slot("commit").await?;
    let mut lines = LineReader::new(request.into_body());
    while let Some(line) = lines.next().await? {
        match parse_commit_line(&line, lines.count)? {
            None => {}
            Some(CommitOp::Header(h)) => header = h,
            Some(CommitOp::File { path, bytes }) => changes.push(Change::Add(
                stored_inline_file(&state, &path, Bytes::from(bytes)).await?,
            )),
            Some(CommitOp::LfsFile { path, oid, size }) => changes.push(Change::Add(
                uploaded_file(&state, repo, path, oid, size).await?,
            )),
            Some(CommitOp::Delete(path)) => changes.push(Change::Delete(path)),
            Some(CommitOp::DeleteFolder(path)) => changes.push(Change::DeleteFolder(path)),
            Some(CommitOp::QstoreBlob { .. }) if pushed_blob.is_some() => {
                return Err(ApiError::bad_request(
                    "a commit takes at most one qstoreBlob: a commit's weights are one blob",
                ));
            }
            Some(CommitOp::QstoreBlob { oid, size }) => pushed_blob = Some((oid, size)),
        }
    }
    drop(turn);
    let store = state.repo_store();
    let pushed = match pushed_blob {
        Some((oid, size)) => {
            if let Some(path) = changes.iter().find_map(|c| match c {
                Change::Add(f) if is_weight_path(&f.path) => Some(&f.path),
                _ => None,
            }) {
                return Err(ApiError::bad_request(format!(
                    "{path}: a commit with a qstoreBlob takes its weights from the blob only"
                )));
            }
            Some(pushed::verify(&store, repo, &oid, size).await?)
        }
        None => None,
    };
    let summary = header.summary.unwrap_or_default();
    let committed = make_commit(
        &store,
        CommitRequest {
            repo: repo.to_string(),
            branch: branch.to_string(),
            parent: header.parent_commit.filter(|p| !p.is_empty()),
            author: caller.name,
            title: if summary.is_empty() {
                "Upload files".into()
            } else {
                summary
            },
            message: header.description.unwrap_or_default(),
            changes,
            replace_all: false,
            create_repo: false,
            prepared: None,
            pushed,
        },
    )
    .await?;
    let id = &committed.commit.id;
    tracing::info!(repo, branch, commit = %id, new_blob = committed.new_blob, "commit");
    Ok(Json(CommitDone {
        success: true,
        commit_oid: id.clone(),
        commit_url: format!("{base}/{repo}/commit/{id}"),
        pull_request_url: None,
        int8_commit_oid: committed.commit.int8_id.clone(),
    })
    .into_response())
}

fn from_value<T: for<'de> Deserialize<'de>>(v: Value, what: &str) -> ApiResult<T> {
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("commit {what}: {e}")))
}

fn path_of(v: Value) -> ApiResult<String> {
    #[derive(Deserialize)]
    struct P {
        path: String,
    }
    let p: P = from_value(v, "deletion")?;
    let path = p.path.trim_end_matches('/').to_string();
    check_path(&path)?;
    Ok(path)
}

fn inline_file(v: Value) -> ApiResult<CommitOp> {
    #[derive(Deserialize)]
    struct F {
        path: String,
        content: String,
        encoding: Option<String>,
    }
    let f: F = from_value(v, "file")?;
    check_path(&f.path)?;
    let bytes = match f.encoding.as_deref() {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(f.content.as_bytes())
            .map_err(|e| {
                ApiError::bad_request(format!("{}: content is not base64: {e}", f.path))
            })?,
        None | Some("utf-8") => f.content.into_bytes(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "{}: unknown encoding {other:?}",
                f.path
            )));
        }
    };
    Ok(CommitOp::File {
        path: f.path,
        bytes,
    })
}

fn lfs_file(v: Value) -> ApiResult<CommitOp> {
    #[derive(Deserialize)]
    struct F {
        path: String,
        algo: Option<String>,
        oid: String,
        size: u64,
    }
    let f: F = from_value(v, "lfsFile")?;
    check_path(&f.path)?;
    if f.algo.as_deref().is_some_and(|a| a != "sha256") {
        return Err(ApiError::bad_request(format!(
            "{}: only sha256 LFS oids are supported",
            f.path
        )));
    }
    lfs::check_oid(&f.oid)?;
    Ok(CommitOp::LfsFile {
        path: f.path,
        oid: f.oid,
        size: f.size,
    })
}

fn qstore_blob(v: Value) -> ApiResult<CommitOp> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct B {
        oid: String,
        size: u64,
    }
    let b: B = from_value(v, "qstoreBlob")?;
    lfs::check_oid(&b.oid)?;
    Ok(CommitOp::QstoreBlob {
        oid: b.oid,
        size: b.size,
    })
}

/// A commit's `lfsFile`: the object must have been uploaded (and verified) for this repo.
async fn uploaded_file(
    state: &AppState,
    repo: &str,
    path: String,
    oid: String,
    size: u64,
) -> ApiResult<NewFile> {
    let Some(source) = lfs::locate(&state.catalog, &state.objects, repo, &oid, size).await? else {
        return Err(ApiError::bad_request(format!(
            "{path}: LFS object {oid} ({size} bytes) was never uploaded (upload it through the LFS batch endpoint first)"
        )));
    };
    Ok(NewFile {
        path,
        size,
        sha256: oid,
        git_oid: None,
        lfs: true,
        source,
    })
}

/// Splits a body into lines of at most [`MAX_COMMIT_LINE`] bytes.
struct LineReader {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    done: bool,
    count: usize,
}

impl LineReader {
    fn new(body: Body) -> LineReader {
        LineReader {
            body: body.into_data_stream(),
            buf: Vec::new(),
            done: false,
            count: 0,
        }
    }

    async fn next(&mut self) -> ApiResult<Option<Vec<u8>>> {
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let rest = self.buf.split_off(at + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                self.count += 1;
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_COMMIT_LINE {
                return Err(ApiError::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "commit line {} is longer than {MAX_COMMIT_LINE} bytes: send large files through LFS",
                        self.count + 1
                    ),
                ));
            }
            if self.done {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.count += 1;
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            match self.body.next().await {
                Some(Ok(piece)) => self.buf.extend_from_slice(&piece),
                Some(Err(e)) => return Err(ApiError::bad_request(format!("commit body: {e}"))),
                None => self.done = true,
            }
        }
    }
}

/// Where a new branch starts (default `main`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct BranchRequest {
    starting_point: Option<String>,
}

/// `POST /api/models/{repo}/branch/{name}` `{"startingPoint"?}` (default: `main`).
async fn create_branch(
    state: AppState,
    repo: &str,
    rest: &[&str],
    request: Request,
) -> ApiResult<Response> {
    let name = ref_name(rest);
    let headers = request.headers().clone();
    repo_writer(&state, &headers, repo).await?;
    check_ref_name(&name)?;
    let body: BranchRequest = json_body(request).await?;
    let from = body.starting_point.unwrap_or_else(|| MAIN.into());
    let start = crate::repo::resolve(&state.catalog, repo, &from).await?;
    if !state
        .catalog
        .create_ref(repo, RefKind::Branch, &name, &start.commit.id)
        .await?
    {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("branch {name:?} already exists"),
        ));
    }
    Ok(Json(RefCreated {
        name,
        target_commit: start.commit.id,
    })
    .into_response())
}

/// A tag to put on a revision.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct TagRequest {
    tag: String,
    /// Accepted and not kept: qstore's tags are lightweight.
    #[allow(dead_code)]
    message: Option<String>,
}

/// `POST /api/models/{repo}/tag/{revision}` `{"tag", "message"?}`.
async fn create_tag(
    state: AppState,
    repo: &str,
    rest: &[&str],
    request: Request,
) -> ApiResult<Response> {
    let rev = ref_name(rest);
    let headers = request.headers().clone();
    repo_writer(&state, &headers, repo).await?;
    let body: TagRequest = json_body(request).await?;
    check_ref_name(&body.tag)?;
    let target = crate::repo::resolve(&state.catalog, repo, &rev).await?;
    if !state
        .catalog
        .create_ref(repo, RefKind::Tag, &body.tag, &target.commit.id)
        .await?
    {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("tag {:?} already exists", body.tag),
        ));
    }
    Ok(Json(RefCreated {
        name: body.tag,
        target_commit: target.commit.id,
    })
    .into_response())
}

/// `DELETE /api/models/{repo}/branch/{name}` or `/tag/{name}`; `main` stays.
async fn delete_ref(
    state: AppState,
    repo: &str,
    kind: RefKind,
    rest: &[&str],
    request: Request,
) -> ApiResult<Response> {
    let name = ref_name(rest);
    repo_writer(&state, request.headers(), repo).await?;
    if kind == RefKind::Branch && name == MAIN {
        return Err(ApiError::bad_request("the main branch cannot be deleted"));
    }
    if !state.catalog.delete_ref(repo, kind, &name).await? {
        return Err(ApiError::new(
            ErrorKind::RevisionNotFound,
            format!("model {repo:?} has no such ref {name:?}"),
        ));
    }
    Ok(Json(Gone { deleted: name }).into_response())
}

/// A visibility change: `visibility` (`public`/`private`) wins over `private`.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct SettingsRequest {
    private: Option<bool>,
    visibility: Option<String>,
}

/// `PUT /api/models/{repo}/settings` `{"private"?, "visibility"?}`.
async fn settings(state: AppState, repo: &str, request: Request) -> ApiResult<Response> {
    let headers = request.headers().clone();
    repo_writer(&state, &headers, repo).await?;
    let body: SettingsRequest = json_body(request).await?;
    let private = match body.visibility.as_deref() {
        Some("private") => Some(true),
        Some("public") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "visibility {other:?}: use \"public\" or \"private\""
            )));
        }
        None => body.private,
    };
    if let Some(p) = private {
        state.catalog.set_private(repo, p).await?;
    }
    let record = state.catalog.repo(repo).await?;
    Ok(Json(RepoSettings {
        private: record.is_some_and(|r| r.private),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_card_metadata() {
        assert_eq!(front_matter("# no metadata").unwrap(), None);
        assert_eq!(
            front_matter("---\nlicense: mit\ntags:\n- a\n---\n# Card").unwrap(),
            Some(json!({"license": "mit", "tags": ["a"]}))
        );
        assert_eq!(front_matter("---\n---\ntext").unwrap(), Some(json!({})));
        assert!(front_matter("---\nlicense: [unclosed\n---\n").is_err());
        assert!(front_matter("---\nlicense: mit\n").is_err());
        assert!(front_matter("---\n- a list\n---\n").is_err());
    }
}
