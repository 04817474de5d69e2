//! The Git LFS endpoints Hub clients upload large files through: the batch call (with `basic`
//! and `multipart` transfers), the upload URLs it hands out, multipart completion and verify.
//! Upload URLs carry an unguessable upload id instead of credentials (LFS clients send none
//! there); the batch and verify calls need a token that may write in the repo.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::BTreeMap;

use super::AppState;
use super::bodies::{
    Href, LfsActions, LfsBatch, LfsBatchObject, LfsObject, LfsObjectError, LfsUploadAction,
};
use super::error::{ApiError, ApiResult, ErrorKind};
use super::hf::check_hub_repo;
use crate::repo::lfs::{self, Offer};

const LFS_JSON: &str = "application/vnd.git-lfs+json";
/// Largest batch or completion request.
const MAX_LFS_JSON: usize = 8 << 20;

/// `/{repo}.git/info/lfs/objects/{batch|verify}` with a one- or two-segment repo id.
pub(super) fn is_batch_route(segments: &[&str]) -> bool {
    batch_route(segments).is_some()
}

fn batch_route(segments: &[&str]) -> Option<(String, String)> {
    let n = segments.len();
    if !(5..=6).contains(&n) || segments[n - 4..n - 1] != ["info", "lfs", "objects"] {
        return None;
    }
    let repo_segments = &segments[..n - 4];
    let last = repo_segments.last()?.strip_suffix(".git")?;
    let mut parts: Vec<&str> = repo_segments[..repo_segments.len() - 1].to_vec();
    parts.push(last);
    Some((parts.join("/"), segments[n - 1].to_string()))
}

pub(super) async fn dispatch(
    state: AppState,
    segments: &[&str],
    request: Request,
) -> ApiResult<Response> {
    let (repo, action) = batch_route(segments).expect("checked by is_batch_route");
    check_hub_repo(&repo)?;
    match (action.as_str(), request.method()) {
        ("batch", &Method::POST) => batch(state, &repo, request).await,
        ("verify", &Method::POST) => verify(state, &repo, request).await,
        _ => Err(ApiError::new(
            ErrorKind::EntryNotFound,
            format!("no LFS route {action:?}"),
        )),
    }
}

async fn lfs_json<T: for<'de> Deserialize<'de>>(request: Request) -> ApiResult<T> {
    let raw = axum::body::to_bytes(request.into_body(), MAX_LFS_JSON)
        .await
        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
    serde_json::from_slice(&raw).map_err(|e| ApiError::bad_request(format!("LFS request: {e}")))
}

fn lfs_answer<T: serde::Serialize>(status: StatusCode, body: T) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(LFS_JSON));
    r
}

/// An LFS object a batch or verify request names.
#[derive(Deserialize, Debug, utoipa::ToSchema)]
pub struct BatchObject {
    /// The sha256, lowercase hex.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub oid: String,
    pub size: u64,
}

/// What an LFS batch request asks, checked: an upload of sha256 objects over a transfer qstore
/// offers (`multipart` when the client accepts it, else `basic`).
#[derive(Debug)]
pub struct BatchRequest {
    pub objects: Vec<BatchObject>,
    pub multipart: bool,
}

/// The body of `POST …/info/lfs/objects/batch`, as git-lfs and `huggingface_hub` send it.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct BatchBody {
    /// `upload` (downloads go through `resolve`).
    operation: String,
    /// `basic`, `multipart`: what the client can do.
    #[serde(default)]
    transfers: Vec<String>,
    objects: Vec<BatchObject>,
    /// `sha256` if given.
    hash_algo: Option<String>,
}

/// Parses the body of `POST …/info/lfs/objects/batch`.
pub fn parse_batch_request(raw: &[u8]) -> ApiResult<BatchRequest> {
    let body: BatchBody = serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(format!("LFS request: {e}")))?;
    if body.operation != "upload" {
        return Err(ApiError::bad_request(
            "only LFS uploads go through the batch API; download through /resolve",
        ));
    }
    if body.hash_algo.as_deref().is_some_and(|a| a != "sha256") {
        return Err(ApiError::bad_request(
            "only sha256 LFS objects are supported",
        ));
    }
    let multipart = body.transfers.iter().any(|t| t == "multipart");
    if !multipart && !body.transfers.is_empty() && !body.transfers.iter().any(|t| t == "basic") {
        return Err(ApiError::bad_request(
            "qstore offers the basic and multipart LFS transfers",
        ));
    }
    Ok(BatchRequest {
        objects: body.objects,
        multipart,
    })
}

/// `POST /{repo}.git/info/lfs/objects/batch`: for each object, nothing (stored already) or where
/// to send it.
async fn batch(state: AppState, repo: &str, request: Request) -> ApiResult<Response> {
    let headers = request.headers().clone();
    let caller = state
        .writes
        .writer(&state.catalog, &headers, Some(repo))
        .await?;
    super::revisions::visible_repo(&state, Some(&caller), repo).await?;
    let base = state.base_url(&headers);
    let raw = axum::body::to_bytes(request.into_body(), MAX_LFS_JSON)
        .await
        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
    let body = parse_batch_request(&raw)?;
    let multipart_ok = body.multipart;
    let verify = format!("{base}/{repo}.git/info/lfs/objects/verify");
    let mut any_multipart = false;
    let mut objects = Vec::new();
    for o in body.objects {
        let offer = lfs::offer(
            &state.catalog,
            &state.objects,
            repo,
            &o.oid,
            o.size,
            multipart_ok,
            state.config.limits.max_upload_bytes,
        )
        .await;
        let href = |id: &str| format!("{base}/lfs/uploads/{id}");
        let upload = match offer {
            Ok(Offer::Present) => None,
            Ok(Offer::Basic(u)) => Some(LfsUploadAction {
                href: href(&u.id),
                header: None,
            }),
            Ok(Offer::Multipart(u)) => {
                any_multipart = true;
                let mut header = BTreeMap::new();
                header.insert("chunk_size".to_string(), u.part_size.to_string());
                for n in 1..=u.parts {
                    header.insert(n.to_string(), format!("{}/{n}", href(&u.id)));
                }
                Some(LfsUploadAction {
                    href: href(&u.id),
                    header: Some(header),
                })
            }
            Err(crate::repo::RepoError::BadInput(message)) => {
                objects.push(LfsBatchObject {
                    oid: o.oid,
                    size: o.size,
                    authenticated: None,
                    actions: None,
                    error: Some(LfsObjectError { code: 422, message }),
                });
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        objects.push(LfsBatchObject {
            oid: o.oid,
            size: o.size,
            authenticated: upload.is_some().then_some(true),
            actions: upload.map(|upload| LfsActions {
                upload,
                verify: Href {
                    href: verify.clone(),
                },
            }),
            error: None,
        });
    }
    let transfer = if any_multipart { "multipart" } else { "basic" };
    Ok(lfs_answer(
        StatusCode::OK,
        LfsBatch {
            transfer,
            objects,
            hash_algo: "sha256",
        },
    ))
}

/// `POST /{repo}.git/info/lfs/objects/verify` `{"oid", "size"}`: 200 once the object is stored
/// (its sha256 was checked when it arrived).
async fn verify(state: AppState, repo: &str, request: Request) -> ApiResult<Response> {
    let headers = request.headers().clone();
    state
        .writes
        .writer(&state.catalog, &headers, Some(repo))
        .await?;
    let body: BatchObject = lfs_json(request).await?;
    lfs::check_oid(&body.oid)?;
    match lfs::locate(&state.catalog, &state.objects, repo, &body.oid, body.size).await? {
        Some(_) => Ok(lfs_answer(
            StatusCode::OK,
            LfsObject {
                oid: body.oid,
                size: body.size,
            },
        )),
        None => Err(ApiError::new(
            ErrorKind::EntryNotFound,
            format!(
                "LFS object {} ({} bytes) is not stored",
                body.oid, body.size
            ),
        )),
    }
}

/// The POST that completes a multipart upload names the object it is for.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CompleteRequest {
    oid: String,
}

/// `/lfs/uploads/{id}` (PUT: the whole body; POST: complete a multipart upload) and
/// `/lfs/uploads/{id}/{part}` (PUT: one part).
pub(super) async fn upload(
    state: AppState,
    rest: &[&str],
    request: Request,
) -> ApiResult<Response> {
    let unknown = || {
        ApiError::new(
            ErrorKind::EntryNotFound,
            "no such upload (finished, expired or never offered)",
        )
    };
    let id = match rest.first() {
        Some(id) if lfs::is_upload_id(id) => *id,
        _ => return Err(unknown()),
    };
    let part = match rest.get(1) {
        None => 0,
        Some(n) => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1 && rest.len() == 2)
            .ok_or_else(unknown)?,
    };
    // The upload id is the credential: checked before the body is read (no 100 Continue).
    let Some(upload) = state.catalog.lfs_upload(id).await? else {
        return Err(super::upload::refuse(request, unknown()).await);
    };
    let _turn = state.transfer_slot("LFS").await?;
    match (request.method(), part) {
        (&Method::PUT, n) => {
            let body = request.into_body().into_data_stream();
            let etag = lfs::receive(&state.catalog, &state.objects, &upload, n, body).await?;
            let mut r = StatusCode::OK.into_response();
            r.headers_mut().insert(
                header::ETAG,
                HeaderValue::from_str(&format!("\"{etag}\"")).expect("hex"),
            );
            Ok(r)
        }
        (&Method::POST, 0) => {
            let body: CompleteRequest = lfs_json(request).await?;
            if body.oid != upload.oid {
                return Err(ApiError::bad_request(format!(
                    "this upload is for {}, not {}",
                    upload.oid, body.oid
                )));
            }
            lfs::complete(&state.catalog, &state.objects, &upload).await?;
            Ok(lfs_answer(
                StatusCode::OK,
                LfsObject {
                    oid: upload.oid,
                    size: upload.size,
                },
            ))
        }
        _ => Err(ApiError::bad_request(
            "PUT the body or a part; POST completes a multipart upload",
        )),
    }
}
