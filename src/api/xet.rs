//! The Xet write path over HTTP: `xet-write-token` on the Hub API, and the CAS that current
//! clients upload xorbs and shards to, served by this process under `/xet/{scope}/`. Every CAS
//! call needs a token from `xet-write-token`, which may write one repo for a short time.
//! Downloads stay plain HTTP (`/resolve`), so the read-side CAS calls are not served.

use super::AppState;
use super::auth::{bearer, hash_token};
use super::bodies::{ShardStored, XetToken, XorbStored};
use super::error::{ApiError, ApiResult, ErrorKind};
use crate::repo::xet;
use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// `GET /api/models/{repo}/xet-write-token/{rev}`: a CAS token for a caller who may write the
/// repo, in the JSON body and in the `X-Xet-*` headers older clients read.
pub(super) async fn write_token(
    state: AppState,
    repo: &str,
    request: Request,
) -> ApiResult<Response> {
    let headers = request.headers().clone();
    super::hub::repo_writer(&state, &headers, repo).await?;
    // A token from the catalog can be revoked: the CAS token remembers it, and dies with it.
    let parent = match bearer(&headers).map(hash_token) {
        Some(hash) if state.catalog.token_by_hash(&hash).await?.is_some() => hash,
        _ => String::new(),
    };
    let grant = xet::issue_token(
        &state.catalog,
        repo,
        &parent,
        state.config.limits.xet_token_secs,
    )
    .await?;
    let cas_url = format!("{}/xet/{}", state.base_url(&headers), grant.scope);
    let mut response = Json(XetToken {
        access_token: grant.token.clone(),
        exp: grant.expires_at,
        cas_url: cas_url.clone(),
    })
    .into_response();
    for (name, value) in [
        ("x-xet-cas-url", cas_url),
        ("x-xet-access-token", grant.token),
        ("x-xet-token-expiration", grant.expires_at.to_string()),
    ] {
        let value =
            HeaderValue::from_str(&value).map_err(|e| ApiError::internal("xet token header", e))?;
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// `/xet/{scope}/v1/...` and `/xet/{scope}/v2/...`.
pub(super) fn is_cas_route(segments: &[&str]) -> bool {
    matches!(segments, ["xet", scope, "v1" | "v2", ..] if is_scope(scope))
}

fn is_scope(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One CAS call. The scope segment only keeps clients' dedup caches apart (see repo::xet); what
/// a call may touch is the repo its token was issued for.
pub(super) async fn cas(
    state: AppState,
    segments: &[&str],
    request: Request,
) -> ApiResult<Response> {
    let token = bearer(request.headers())
        .ok_or_else(|| ApiError::new(ErrorKind::Unauthorized, "a Xet token is required"))?;
    let repo = xet::token_record(&state.catalog, token).await?.repo;
    let method = request.method().clone();
    match (&segments[2..], &method) {
        (["v1", "xorbs", "default", hash], &Method::POST) => {
            let hash = xet::parse_hash(hash)?;
            let _permit = state.transfer_slot("Xet xorb").await?;
            let body = request.into_body().into_data_stream();
            let (inserted, size) = xet::receive_xorb(
                &state.catalog,
                &state.objects,
                state.spool.path(),
                &repo,
                hash,
                body,
            )
            .await?;
            state.metrics.add_xet_xorb(size);
            tracing::info!(repo, xorb = %hash.hex(), inserted, size, "xet: xorb stored");
            Ok(Json(XorbStored {
                was_inserted: inserted,
            })
            .into_response())
        }
        (["v1", "xorbs", "default", hash], &Method::HEAD | &Method::GET) => {
            let hash = xet::parse_hash(hash)?;
            if xet::has_xorb(&state.catalog, &repo, &hash).await? {
                Ok(StatusCode::OK.into_response())
            } else {
                Err(ApiError::new(
                    ErrorKind::EntryNotFound,
                    format!("xorb {} is not held for {repo}", hash.hex()),
                ))
            }
        }
        (["v1", "shards"], &Method::POST) => {
            let _permit = state.transfer_slot("Xet shard").await?;
            let body = request.into_body().into_data_stream();
            let outcome = xet::receive_shard(
                &state.catalog,
                &state.objects,
                state.spool.path(),
                &repo,
                state.config.limits.max_upload_bytes,
                body,
            )
            .await?;
            state.metrics.add_xet_files(outcome.files as u64);
            tracing::info!(
                repo,
                files = outcome.files,
                added = outcome.added,
                "xet: shard accepted"
            );
            // 1: the shard was taken in (0 would say it was known already).
            Ok(Json(ShardStored { result: 1 }).into_response())
        }
        // Global dedup, presigned xorb uploads and the streaming shard API are not offered; a
        // 404 makes the client upload directly and use `/v1/shards`.
        (["v1", "chunks", ..] | ["v1", "xorb-grants", ..] | ["v2", "shards"], _) => Err(
            ApiError::new(ErrorKind::EntryNotFound, "not offered by this CAS"),
        ),
        _ => Err(ApiError::new(
            ErrorKind::EntryNotFound,
            format!("no CAS route for {method} {}", request.uri().path()),
        )),
    }
}
