//! Pages for people, served by the same binary: `/` lists models (search, sort, pages, registry
//! totals), `/{repo}` shows one (card, files in both precisions, what the blob saves, bits per
//! parameter per tensor, branches, tags, history, download snippets, upload and delete).
//! Rendered on the server with maud (every string escaped unless it is the sanitised card), so
//! pages read without JavaScript; the small self-hosted script only copies snippets, uploads
//! and deletes, through the same HTTP API as every client, with a token typed into the page and
//! kept in memory only. A Content-Security-Policy forbids inline scripts and foreign origins.
//! Pages show what the API shows the same caller: a browser sends no token, so public repos.

mod charts;
mod markdown;
mod pages;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::Markup;

use super::AppState;
use super::auth::can_read;
use super::error::{ApiError, ApiResult, ErrorKind};
use super::hf::{query_pairs, stored_bytes};
use super::models::savings;
use crate::format::{Precision, Report};
use crate::storage::{BlobRecord, CommitRecord, FileEntry, FileSet, RefKind, RepoSort};

/// What the page routes are: `/`, `/static/{asset}`, and `/{repo}` (one or two segments).
pub(super) enum Page {
    Home,
    Asset(String),
    Model(String),
}

/// The page a GET path names, if any; API routes are matched before this.
pub(super) fn route(path: &str) -> Option<Page> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    match segments.as_slice() {
        [""] => Some(Page::Home),
        ["static", asset] => Some(Page::Asset(asset.to_string())),
        [_] | [_, _] => {
            let name = segments.join("/");
            super::names::check_repo_name(&name).ok()?;
            Some(Page::Model(name))
        }
        _ => None,
    }
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Answers a page route.
pub(super) async fn serve(
    state: AppState,
    page: Page,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let query = query_pairs(uri);
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let markup = match page {
        Page::Asset(name) => return asset(&name),
        Page::Home => {
            home(
                &state,
                headers,
                get("q").unwrap_or(""),
                get("sort"),
                get("page"),
            )
            .await?
        }
        Page::Model(name) => {
            match model(&state, headers, &name, get("rev").unwrap_or("main")).await {
                Ok(m) => m,
                Err(e)
                    if matches!(
                        e.kind,
                        ErrorKind::RepoNotFound
                            | ErrorKind::RevisionNotFound
                            | ErrorKind::EntryNotFound
                    ) =>
                {
                    return Ok(html_response(
                        StatusCode::NOT_FOUND,
                        pages::not_found(&name, &e.message),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    };
    Ok(html_response(StatusCode::OK, markup))
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, markup.into_string()).into_response();
    with_headers(&mut r, "text/html; charset=utf-8", "no-cache");
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn with_headers(r: &mut Response, kind: &'static str, cache: &'static str) {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
}

/// The embedded stylesheet and script.
fn asset(name: &str) -> ApiResult<Response> {
    let (body, kind) = match name {
        "style.css" => (include_str!("static/style.css"), "text/css; charset=utf-8"),
        "app.js" => (
            include_str!("static/app.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => {
            return Err(ApiError::new(
                ErrorKind::EntryNotFound,
                format!("no asset {name:?}"),
            ));
        }
    };
    let mut r = body.into_response();
    with_headers(&mut r, kind, "public, max-age=300");
    Ok(r)
}

/// Sizes as people read them (powers of 1000, like the Hub).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// One model in the list.
pub struct ModelRow {
    pub name: String,
    pub dtype: Option<String>,
    pub stored: u64,
    /// Weights of `main` as separate BF16 and INT8 files, if it has weights.
    pub separate: u64,
    pub blob: u64,
    pub savings: f64,
    pub updated_ms: i64,
}

/// Models per list page.
const PER_PAGE: usize = 20;

async fn home(
    state: &AppState,
    headers: &HeaderMap,
    q: &str,
    sort: Option<&str>,
    page: Option<&str>,
) -> ApiResult<Markup> {
    let caller = state.writes.caller(&state.catalog, headers).await?;
    let repos = state
        .catalog
        .list_repos(q, None, RepoSort::Name, u32::MAX as u64, 0)
        .await?;
    let mut rows = Vec::new();
    for repo in repos.iter().filter(|r| can_read(caller.as_ref(), r)) {
        let head = state
            .catalog
            .ref_target(&repo.name, RefKind::Branch, "main")
            .await?;
        let blob = head.as_ref().and_then(|h| h.blob.as_ref());
        rows.push(ModelRow {
            name: repo.name.clone(),
            dtype: blob.map(|b| b.high_dtype.clone()),
            stored: stored_bytes(state, &repo.name).await?,
            separate: blob.map_or(0, |b| b.high_size + b.int8_size),
            blob: blob.map_or(0, |b| b.size),
            savings: blob.map_or(0.0, savings),
            updated_ms: head.as_ref().map_or(repo.created_at, |h| h.created_at),
        });
    }
    let sort = ["size", "savings", "name"]
        .into_iter()
        .find(|k| sort == Some(*k))
        .unwrap_or("recent");
    use std::cmp::Reverse;
    match sort {
        "size" => rows.sort_by_key(|r| Reverse(r.stored)),
        "savings" => rows.sort_by(|a, b| b.savings.total_cmp(&a.savings)),
        "name" => rows.sort_by(|a, b| a.name.cmp(&b.name)),
        _ => rows.sort_by_key(|r| Reverse(r.updated_ms)),
    }
    let totals = pages::Totals {
        models: rows.len(),
        stored: rows.iter().map(|r| r.stored).sum(),
        separate: rows.iter().map(|r| r.separate).sum(),
        blobs: rows.iter().map(|r| r.blob).sum(),
    };
    let pages_n = rows.len().div_ceil(PER_PAGE).max(1);
    let page = page
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages_n);
    let shown: Vec<ModelRow> = rows
        .into_iter()
        .skip((page - 1) * PER_PAGE)
        .take(PER_PAGE)
        .collect();
    Ok(pages::home(&pages::HomeView {
        q,
        sort,
        page,
        pages: pages_n,
        rows: &shown,
        totals,
        base: &state.base_url(headers),
    }))
}

/// Everything the model page shows.
pub struct ModelView {
    pub name: String,
    pub rev: String,
    pub commit: CommitRecord,
    pub precision: Precision,
    /// Every file of the revision, with its size in the high precision and in INT8.
    pub files: Vec<FileSizes>,
    pub card: Option<String>,
    pub tags: Vec<(String, String)>,
    pub branches: Vec<(String, String)>,
    pub tags_refs: Vec<(String, String)>,
    pub history: Vec<CommitRecord>,
    pub tensors: Vec<(String, f64)>,
    pub base: String,
}

/// One file as both views serve it (`None`: not in that view).
pub struct FileSizes {
    pub path: String,
    pub high: Option<u64>,
    pub int8: Option<u64>,
}

/// Largest README rendered.
const MAX_CARD_BYTES: u64 = 1 << 20;

async fn model(state: &AppState, headers: &HeaderMap, name: &str, rev: &str) -> ApiResult<Markup> {
    let resolved = super::revisions::resolve(state, headers, name, rev).await?;
    let commit = resolved.commit.clone();
    let high = state.catalog.files(&commit.id, FileSet::High).await?;
    let int8 = state.catalog.files(&commit.id, FileSet::Int8).await?;
    let served = match resolved.precision {
        Precision::High => &high,
        Precision::Int8 => &int8,
    };
    let (card, tags) = card(state, served).await?;
    let mut branches = Vec::new();
    let mut tags_refs = Vec::new();
    for (kind, ref_name, target) in state.catalog.refs(name).await? {
        match kind {
            RefKind::Branch => branches.push((ref_name, target)),
            RefKind::Tag => tags_refs.push((ref_name, target)),
        }
    }
    let mut history = state.catalog.commits(name).await?;
    history.truncate(100);
    let tensors = match &commit.blob {
        Some(blob) => tensor_bits(state, blob).await?,
        None => Vec::new(),
    };
    Ok(pages::model(&ModelView {
        name: name.to_string(),
        rev: rev.to_string(),
        files: file_sizes(&high, &int8),
        precision: resolved.precision,
        commit,
        card,
        tags,
        branches,
        tags_refs,
        history,
        tensors,
        base: state.base_url(headers),
    }))
}

fn file_sizes(high: &[FileEntry], int8: &[FileEntry]) -> Vec<FileSizes> {
    let mut out: Vec<FileSizes> = high
        .iter()
        .map(|f| FileSizes {
            path: f.path.clone(),
            high: Some(f.size),
            int8: int8.iter().find(|g| g.path == f.path).map(|g| g.size),
        })
        .collect();
    for g in int8
        .iter()
        .filter(|g| !high.iter().any(|f| f.path == g.path))
    {
        out.push(FileSizes {
            path: g.path.clone(),
            high: None,
            int8: Some(g.size),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The README as sanitised HTML and its YAML metadata as (key, value) tags.
async fn card(
    state: &AppState,
    files: &[FileEntry],
) -> ApiResult<(Option<String>, Vec<(String, String)>)> {
    let Some(key) = files
        .iter()
        .find(|f| f.path == "README.md")
        .and_then(|f| f.object_key.clone())
    else {
        return Ok((None, Vec::new()));
    };
    let bytes = state.objects.read_prefix(&key, MAX_CARD_BYTES).await?;
    let text = String::from_utf8_lossy(&bytes);
    let mut tags = Vec::new();
    if let Ok(Some(serde_json::Value::Object(meta))) = super::hub::front_matter(&text) {
        for (k, v) in meta {
            match v {
                serde_json::Value::Array(items) => {
                    tags.extend(items.iter().map(|i| (k.clone(), plain(i))));
                }
                serde_json::Value::Object(_) => {}
                v => tags.push((k, plain(&v))),
            }
        }
    }
    Ok((Some(markdown::card_html(&text)), tags))
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Bits per parameter of each quantized tensor, from the blob's index.
async fn tensor_bits(state: &AppState, blob: &BlobRecord) -> ApiResult<Vec<(String, f64)>> {
    let opened = state.blob(blob).await?;
    let report = Report::new(opened.blob.index(), blob.size);
    Ok(report
        .tensors
        .into_iter()
        .filter(|t| t.kind == "quantized")
        .map(|t| (t.name, t.bits_per_param))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route("/"), Some(Page::Home)));
        assert!(matches!(route("/static/app.js"), Some(Page::Asset(_))));
        assert!(matches!(route("/org/m"), Some(Page::Model(n)) if n == "org/m"));
        for not_a_page in ["//", "/org/m/x", "/int8", "/org//m", "/org/m/"] {
            assert!(route(not_a_page).is_none(), "{not_a_page}");
        }
    }

    #[test]
    fn sizes_read_like_the_hub() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(45_442_040), "45.44 MB");
    }
}
