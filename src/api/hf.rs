//! The read side of the Hugging Face-compatible API (see shared/docs/hub-protocol.md):
//! `resolve` for files, and under `/api/models` repo info, trees, paths-info, refs, history and
//! the model list, so `huggingface_hub` and `transformers` work unmodified with `HF_ENDPOINT`
//! pointing here. Every commit has two views: its uploaded precision (its id, branches, tags)
//! and INT8 (its twin id, `int8`, `int8-REF`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::Value;

use super::AppState;
use super::bodies::{
    CommitAuthor, CommitEntry, EntryKind, GitRef, GitRefs, ModelInfo, ModelListing, Sibling,
    SiblingLfs, TreeEntry, TreeLfs,
};
use super::error::{ApiError, ApiResult, ErrorKind};
use super::names;
use super::revisions::{self, visible_repo};
use super::serve::{ServedFile, cache_control, respond};
use crate::format::{BlobSource, Precision};
use crate::repo::Resolved;
use crate::repo::refs::commit_id_of;
use crate::repo::tree::{self, Listed};
use crate::storage::{CommitRecord, FileEntry, RefKind, RepoSort};

/// Largest page of a listing.
const MAX_PAGE: usize = 1000;

/// `/{repo_id}/resolve/{revision}/{path}`, decoded segment by segment.
pub(super) struct ResolveRoute {
    repo: String,
    revision: String,
    path: String,
}

/// Recognises a resolve URL; the repo id is one segment or two.
pub(super) fn resolve_route(segments: &[&str]) -> Option<ResolveRoute> {
    let at = segments.iter().position(|s| *s == "resolve")?;
    if !(1..=2).contains(&at) || segments.len() < at + 3 {
        return None;
    }
    let repo = decode_all(&segments[..at])?.join("/");
    let path = decode_all(&segments[at + 2..])?.join("/");
    Some(ResolveRoute {
        repo,
        revision: decode(segments[at + 1])?,
        path,
    })
}

fn decode(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn decode_all(segments: &[&str]) -> Option<Vec<String>> {
    segments.iter().map(|s| decode(s)).collect()
}

/// `HEAD|GET /{repo_id}/resolve/{revision}/{path}`.
pub(super) async fn resolve(
    state: AppState,
    route: ResolveRoute,
    method: &Method,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    check_hub_repo(&route.repo)?;
    let resolved = revisions::resolve(&state, headers, &route.repo, &route.revision).await?;
    let commit = resolved.commit_id().to_string();
    let files = view_files(&state, &resolved).await?;
    let Some(entry) = files.iter().find(|f| f.path == route.path) else {
        return Err(ApiError::new(
            ErrorKind::EntryNotFound,
            format!(
                "{} has no file {:?} at {}",
                route.repo, route.path, route.revision
            ),
        )
        .with_commit(&commit));
    };
    let blob = match (&entry.object_key, &resolved.commit.blob) {
        (Some(_), _) => None,
        (None, Some(b)) => Some((state.blob(b).await?, resolved.precision)),
        (None, None) => {
            return Err(ApiError::internal(
                "a blob file without a blob",
                &entry.path,
            ));
        }
    };
    let served = ServedFile::from_entry(
        entry,
        blob,
        Some(commit),
        cache_control(resolved.pinned, state.config.server.branch_max_age_secs),
    )?;
    respond(&state, served, method, headers).await
}

/// `GET|HEAD /api/models/{repo}/qstore/{rev}`: the blob behind a revision's weights as stored,
/// with ranges, under the same read rules as the revision's files. A qstore client fetches the
/// sections one precision needs and decodes itself: fewer bytes than the files it rebuilds.
pub(super) async fn stored_blob(
    state: AppState,
    repo: &str,
    rev: &str,
    method: &Method,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    check_hub_repo(repo)?;
    let resolved = revisions::resolve(&state, headers, repo, rev).await?;
    let commit = resolved.commit_id().to_string();
    let Some(record) = &resolved.commit.blob else {
        return Err(ApiError::new(
            ErrorKind::EntryNotFound,
            format!("{repo} has no weights at {rev}, so no blob"),
        )
        .with_commit(&commit));
    };
    let opened = state.blob(record).await?;
    if opened.blob.source().len() != record.size {
        return Err(ApiError::internal(
            "blob size disagrees with the catalog",
            &record.id,
        ));
    }
    let name = format!("{}.qstore", repo.replace('/', "--"));
    let cache = cache_control(resolved.pinned, state.config.server.branch_max_age_secs);
    let served = super::serve::stored_blob(opened, record.id.clone(), name, commit, cache);
    respond(&state, served, method, headers).await
}

/// A repo id that cannot exist is, to a Hub client, a repo that does not exist.
pub(super) fn check_hub_repo(repo: &str) -> ApiResult<()> {
    names::check_repo_name(repo).map_err(|e| ApiError::new(ErrorKind::RepoNotFound, e.message))
}

pub(super) async fn view_files(state: &AppState, resolved: &Resolved) -> ApiResult<Vec<FileEntry>> {
    Ok(state
        .catalog
        .files(&resolved.commit.id, resolved.file_set())
        .await?)
}

/// The query string as a multimap (`expand[]=a&expand[]=b`).
pub(super) fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| url_pairs(q.as_bytes()))
        .unwrap_or_default()
}

/// `application/x-www-form-urlencoded` pairs.
pub(super) fn url_pairs(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let text = String::from_utf8_lossy(p).replace('+', " ");
            let (k, v) = text.split_once('=').unwrap_or((&text, ""));
            (
                percent_decode_str(k).decode_utf8_lossy().into_owned(),
                percent_decode_str(v).decode_utf8_lossy().into_owned(),
            )
        })
        .collect()
}

fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn flag(pairs: &[(String, String)], key: &str) -> bool {
    first(pairs, key).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"))
}

/// A number from the query, bounded.
fn number(pairs: &[(String, String)], key: &str, default: usize, max: usize) -> ApiResult<usize> {
    match first(pairs, key) {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map(|n| n.min(max))
            .map_err(|_| ApiError::bad_request(format!("{key}={v:?} is not a number"))),
    }
}

pub(super) fn iso_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A JSON answer with a `Link: <next>; rel="next"` header when there is a next page.
fn paged<T: serde::Serialize>(body: Vec<T>, next: Option<String>) -> Response {
    let mut response = Json(body).into_response();
    if let Some(next) =
        next.and_then(|n| HeaderValue::from_str(&format!("<{n}>; rel=\"next\"")).ok())
    {
        response.headers_mut().insert("link", next);
    }
    response
}

/// The URL of the next page: this request's with `key` set to `value`.
fn next_url(state: &AppState, request: &Parts, key: &str, value: usize) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(&request.uri)
        .into_iter()
        .filter(|(k, _)| k != key)
        .collect();
    pairs.push((key.to_string(), value.to_string()));
    let query = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{}{}?{query}",
        state.base_url(&request.headers),
        request.uri.path()
    )
}

/// `/api/models/{repo_id}/...` after `models`: the repo id (one or two segments), the verb and
/// what follows it.
pub(super) fn split_repo<'a>(
    segments: &'a [&'a str],
) -> ApiResult<(String, Option<&'a str>, &'a [&'a str])> {
    const VERBS: [&str; 12] = [
        "qstore",
        "revision",
        "tree",
        "refs",
        "commits",
        "paths-info",
        "preupload",
        "commit",
        "branch",
        "tag",
        "settings",
        "xet-write-token",
    ];
    let at = segments
        .iter()
        .position(|s| VERBS.contains(s))
        .filter(|&i| (1..=2).contains(&i));
    let (repo_segments, verb, rest) = match at {
        Some(i) => (&segments[..i], Some(segments[i]), &segments[i + 1..]),
        None => (segments, None, &segments[segments.len()..]),
    };
    let repo = decode_all(repo_segments)
        .ok_or_else(|| ApiError::bad_request("repo id is not UTF-8"))?
        .join("/");
    check_hub_repo(&repo)?;
    Ok((repo, verb, rest))
}

/// The reads under `/api/models/{repo_id}`.
pub(super) async fn api_models_read(
    state: AppState,
    repo: &str,
    verb: Option<&str>,
    rest: &[&str],
    request: Request,
) -> ApiResult<Response> {
    let (request, _) = request.into_parts();
    let rev = rest
        .first()
        .and_then(|s| decode(s))
        .unwrap_or_else(|| "main".into());
    match verb {
        None | Some("revision") => model_info(&state, repo, &rev, &request).await,
        Some("tree") => {
            let path = decode_all(rest.get(1..).unwrap_or_default())
                .ok_or_else(|| ApiError::bad_request("path is not UTF-8"))?
                .join("/");
            tree_listing(&state, repo, &rev, &path, &request).await
        }
        Some("refs") => refs(&state, repo, &request.headers).await,
        Some("commits") => commits(&state, repo, &rev, &request).await,
        _ => Err(ApiError::new(
            ErrorKind::EntryNotFound,
            format!("no route for {} {}", request.method, request.uri.path()),
        )),
    }
}

/// Repo info as `huggingface_hub.ModelInfo` reads it; `?blobs=true` adds file sizes and LFS
/// details to `siblings`.
async fn model_info(
    state: &AppState,
    repo: &str,
    rev: &str,
    request: &Parts,
) -> ApiResult<Response> {
    let resolved = revisions::resolve(state, &request.headers, repo, rev).await?;
    let record = state.catalog.repo(repo).await?.ok_or_else(|| {
        ApiError::new(ErrorKind::RepoNotFound, format!("model {repo:?} not found"))
    })?;
    let files = view_files(state, &resolved).await?;
    let with_blobs = flag(&query_pairs(&request.uri), "blobs");
    let siblings = files.iter().map(|f| sibling(f, with_blobs)).collect();
    let c = &resolved.commit;
    let precision = match (resolved.precision, &c.blob) {
        (Precision::Int8, Some(_)) => "int8",
        (_, Some(b)) => b.high_dtype.as_str(),
        (_, None) => "no-weights",
    };
    let stored = stored_bytes(state, repo).await?;
    Ok(Json(ModelInfo {
        object_id: resolved.commit_id().to_string(),
        id: repo.to_string(),
        model_id: repo.to_string(),
        author: author_of(repo),
        sha: resolved.commit_id().to_string(),
        last_modified: iso_date(c.created_at),
        created_at: iso_date(record.created_at),
        private: record.private,
        gated: false,
        disabled: false,
        downloads: 0,
        likes: 0,
        library_name: "transformers",
        tags: vec!["safetensors".into(), precision.into()],
        siblings,
        used_storage: stored,
        xet_enabled: false,
        card_data: card_data(state, &files).await?,
    })
    .into_response())
}

fn sibling(f: &FileEntry, with_blobs: bool) -> Sibling {
    if !with_blobs {
        return Sibling {
            rfilename: f.path.clone(),
            size: None,
            blob_id: None,
            lfs: None,
        };
    }
    Sibling {
        rfilename: f.path.clone(),
        size: Some(f.size),
        blob_id: Some(tree::tree_oid(f)),
        lfs: f.lfs.then(|| SiblingLfs {
            sha256: f.sha256.clone(),
            size: f.size,
            pointer_size: tree::lfs_pointer(&f.sha256, f.size).1,
        }),
    }
}

/// The namespace of `namespace/name`.
fn author_of(repo: &str) -> Option<String> {
    repo.split_once('/').map(|(ns, _)| ns.to_string())
}

/// Bytes the repo's commits hold: each blob and plain object once.
pub(super) async fn stored_bytes(state: &AppState, repo: &str) -> ApiResult<u64> {
    let blobs: u64 = state
        .catalog
        .repo_blobs(repo)
        .await?
        .iter()
        .map(|b| b.size)
        .sum();
    let objects: u64 = state
        .catalog
        .repo_objects(repo)
        .await?
        .iter()
        .map(|(_, s)| *s)
        .sum();
    Ok(blobs + objects)
}

/// The README's YAML metadata as JSON, when there is a README with some.
async fn card_data(state: &AppState, files: &[FileEntry]) -> ApiResult<Option<Value>> {
    let Some(readme) = files.iter().find(|f| f.path == "README.md") else {
        return Ok(None);
    };
    let (Some(key), true) = (
        &readme.object_key,
        readme.size <= super::hub::MAX_README_BYTES,
    ) else {
        return Ok(None);
    };
    let raw = state.objects.read_prefix(key, readme.size).await?;
    Ok(super::hub::front_matter(&String::from_utf8_lossy(&raw))
        .ok()
        .flatten())
}

/// `GET /api/models/{repo}/tree/{rev}[/{path}]`: files and folders under `path`, `recursive`,
/// paginated (`limit`, `cursor`) with a `Link` header.
async fn tree_listing(
    state: &AppState,
    repo: &str,
    rev: &str,
    path: &str,
    request: &Parts,
) -> ApiResult<Response> {
    let resolved = revisions::resolve(state, &request.headers, repo, rev).await?;
    let files = view_files(state, &resolved).await?;
    let pairs = query_pairs(&request.uri);
    let recursive = flag(&pairs, "recursive");
    let entries = tree::list(&files, path, recursive);
    if entries.is_empty() && !path.is_empty() {
        return Err(ApiError::new(
            ErrorKind::EntryNotFound,
            format!("{repo} has no folder {path:?} at {rev}"),
        )
        .with_commit(resolved.commit_id()));
    }
    let limit = number(&pairs, "limit", MAX_PAGE, MAX_PAGE)?.max(1);
    let cursor = number(&pairs, "cursor", 0, usize::MAX)?;
    let page: Vec<TreeEntry> = entries
        .iter()
        .skip(cursor)
        .take(limit)
        .map(|e| tree_entry(&files, e))
        .collect();
    let next = (cursor + limit < entries.len())
        .then(|| next_url(state, request, "cursor", cursor + limit));
    Ok(paged(page, next))
}

/// One tree or paths-info entry.
fn tree_entry(files: &[FileEntry], e: &Listed) -> TreeEntry {
    match e {
        Listed::File(f) => TreeEntry {
            kind: EntryKind::File,
            oid: tree::tree_oid(f),
            size: f.size,
            path: f.path.clone(),
            lfs: f.lfs.then(|| TreeLfs {
                oid: f.sha256.clone(),
                size: f.size,
                pointer_size: tree::lfs_pointer(&f.sha256, f.size).1,
            }),
        },
        Listed::Folder(p) => TreeEntry {
            kind: EntryKind::Directory,
            oid: tree::folder_oid(files, p),
            size: 0,
            path: p.clone(),
            lfs: None,
        },
    }
}

/// `POST /api/models/{repo}/paths-info/{rev}` (form: `paths`, repeated, and `expand`).
pub(super) async fn paths_info(
    state: &AppState,
    repo: &str,
    rev: &str,
    headers: &HeaderMap,
    form: &[u8],
) -> ApiResult<Response> {
    let resolved = revisions::resolve(state, headers, repo, rev).await?;
    let files = view_files(state, &resolved).await?;
    let mut out = Vec::new();
    for (key, path) in url_pairs(form) {
        if key != "paths" {
            continue;
        }
        let path = path.trim_end_matches('/');
        if let Some(f) = files.iter().find(|f| f.path == path) {
            out.push(tree_entry(&files, &Listed::File(f)));
        } else if files
            .iter()
            .any(|f| f.path.starts_with(&format!("{path}/")))
        {
            out.push(tree_entry(&files, &Listed::Folder(path.to_string())));
        }
    }
    Ok(Json(out).into_response())
}

/// `GET /api/models/{repo}/refs`.
async fn refs(state: &AppState, repo: &str, headers: &HeaderMap) -> ApiResult<Response> {
    let caller = state.writes.caller(&state.catalog, headers).await?;
    visible_repo(state, caller.as_ref(), repo).await?;
    let (mut branches, mut tags) = (Vec::new(), Vec::new());
    for (kind, name, commit) in state.catalog.refs(repo).await? {
        let (list, prefix) = match kind {
            RefKind::Branch => (&mut branches, "refs/heads"),
            RefKind::Tag => (&mut tags, "refs/tags"),
        };
        list.push(GitRef {
            reference: format!("{prefix}/{name}"),
            name,
            target_commit: commit,
        });
    }
    Ok(Json(GitRefs {
        branches,
        tags,
        converts: Vec::new(),
        pull_requests: Vec::new(),
    })
    .into_response())
}

/// `GET /api/models/{repo}/commits/{rev}`: the history ending at `rev`, newest first, in
/// pages (`p`, `limit`) linked by `Link`. For an INT8 view, the INT8 twin ids.
async fn commits(state: &AppState, repo: &str, rev: &str, request: &Parts) -> ApiResult<Response> {
    let resolved = revisions::resolve(state, &request.headers, repo, rev).await?;
    let pairs = query_pairs(&request.uri);
    let limit = number(&pairs, "limit", 50, MAX_PAGE)?.max(1);
    let page = number(&pairs, "p", 0, usize::MAX / MAX_PAGE)?;
    let mut history = state
        .catalog
        .history(&resolved.commit.id, limit as u64 + 1, (page * limit) as u64)
        .await?;
    let more = history.len() > limit;
    history.truncate(limit);
    let items: Vec<CommitEntry> = history
        .iter()
        .map(|c| commit_entry(c, resolved.precision))
        .collect();
    let next = more.then(|| next_url(state, request, "p", page + 1));
    Ok(paged(items, next))
}

fn commit_entry(c: &CommitRecord, precision: Precision) -> CommitEntry {
    CommitEntry {
        id: commit_id_of(c, precision).to_string(),
        authors: vec![CommitAuthor {
            user: c.author.clone(),
        }],
        date: iso_date(c.created_at),
        title: c.title.clone(),
        message: c.message.clone(),
    }
}

/// `GET /api/models?search=&author=&sort=&limit=`: repos the caller may see, paginated by
/// `offset` with a `Link` header.
pub(super) async fn list_models(state: AppState, request: Request) -> ApiResult<Response> {
    let (request, _) = request.into_parts();
    let pairs = query_pairs(&request.uri);
    // What the Hub clients send; filters qstore cannot apply are refused, never ignored.
    let known: HashMap<&str, ()> = [
        "search",
        "author",
        "sort",
        "direction",
        "limit",
        "offset",
        "full",
        "cardData",
        "config",
        "expand[]",
        "expand",
    ]
    .into_iter()
    .map(|k| (k, ()))
    .collect();
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !known.contains_key(k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unsupported query parameter {k:?} (qstore lists by search, author, sort, limit)"
        )));
    }
    let caller = state
        .writes
        .caller(&state.catalog, &request.headers)
        .await?;
    let sort = match first(&pairs, "sort").unwrap_or("") {
        "" | "id" | "modelId" => RepoSort::Name,
        "lastModified" | "createdAt" | "trending_score" | "trendingScore" | "downloads"
        | "likes" => RepoSort::Recent,
        "usedStorage" | "size" => RepoSort::Size,
        other => return Err(ApiError::bad_request(format!("cannot sort by {other:?}"))),
    };
    let limit = number(&pairs, "limit", MAX_PAGE, MAX_PAGE)?.max(1);
    let offset = number(&pairs, "offset", 0, usize::MAX)?;
    let repos = state
        .catalog
        .list_repos(
            first(&pairs, "search").unwrap_or(""),
            first(&pairs, "author"),
            sort,
            u32::MAX as u64,
            0,
        )
        .await?;
    let visible: Vec<_> = repos
        .into_iter()
        .filter(|r| super::auth::can_read(caller.as_ref(), r))
        .collect();
    let mut items = Vec::new();
    for r in visible.iter().skip(offset).take(limit) {
        let head = state
            .catalog
            .ref_target(&r.name, RefKind::Branch, "main")
            .await?;
        items.push(ModelListing {
            object_id: r.name.clone(),
            id: r.name.clone(),
            model_id: r.name.clone(),
            author: author_of(&r.name),
            private: r.private,
            sha: head.as_ref().map(|c| c.id.clone()),
            last_modified: iso_date(head.as_ref().map_or(r.created_at, |c| c.created_at)),
            created_at: iso_date(r.created_at),
            downloads: 0,
            likes: 0,
            tags: Vec::new(),
            library_name: "transformers",
        });
    }
    let next = (offset + limit < visible.len())
        .then(|| next_url(&state, &request, "offset", offset + limit));
    Ok(paged(items, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Option<(String, String, String)> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        resolve_route(&segments).map(|r| (r.repo, r.revision, r.path))
    }

    #[test]
    fn resolve_urls() {
        let t = |a: &str, b: &str, c: &str| Some((a.into(), b.into(), c.into()));
        assert_eq!(
            route("/m/resolve/main/config.json"),
            t("m", "main", "config.json")
        );
        assert_eq!(
            route("/org/m/resolve/refs%2Fpr%2F1/1_Pooling/config.json"),
            t("org/m", "refs/pr/1", "1_Pooling/config.json")
        );
        assert_eq!(route("/resolve/main/x"), None);
        assert_eq!(route("/a/b/c/resolve/main/x"), None);
        assert_eq!(route("/m/resolve/main"), None);
    }

    #[test]
    fn form_pairs() {
        assert_eq!(
            url_pairs(b"paths=a%2Fb&paths=c+d&expand=False"),
            vec![
                ("paths".into(), "a/b".into()),
                ("paths".into(), "c d".into()),
                ("expand".into(), "False".into())
            ]
        );
    }
}
