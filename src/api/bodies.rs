//! The JSON bodies of the Hub-compatible API, as `huggingface_hub` and git-lfs read them. Typed,
//! so that a handler and `/openapi.json` (which derives its schemas from these) cannot disagree
//! about a field. Field names follow the Hub's wire names, not Rust's.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// `GET /api/models/{repo}[/revision/{rev}]`: `huggingface_hub.ModelInfo`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// The commit id (the Hub's `_id` is an object id; clients do not read it).
    #[serde(rename = "_id")]
    pub object_id: String,
    pub id: String,
    pub model_id: String,
    /// The namespace of `namespace/name`; null for a one-segment name.
    pub author: Option<String>,
    /// The commit the answer describes: the INT8 twin's id for an INT8 revision.
    pub sha: String,
    pub last_modified: String,
    pub created_at: String,
    pub private: bool,
    pub gated: bool,
    pub disabled: bool,
    pub downloads: u64,
    pub likes: u64,
    #[serde(rename = "library_name")]
    pub library_name: &'static str,
    /// `safetensors` and the precision served (`bf16`, `fp16`, `int8`, or `no-weights`).
    pub tags: Vec<String>,
    pub siblings: Vec<Sibling>,
    /// Bytes the repo's commits hold in the store, each blob and object once.
    pub used_storage: u64,
    pub xet_enabled: bool,
    /// The model card's YAML front matter, when README.md has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_data: Option<Value>,
}

/// A file of a revision; sizes and LFS details only with `?blobs=true`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sibling {
    pub rfilename: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The git blob id a git client would compute (of the pointer, for an LFS file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lfs: Option<SiblingLfs>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiblingLfs {
    pub sha256: String,
    pub size: u64,
    pub pointer_size: u64,
}

/// An entry of `GET /api/models`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelListing {
    #[serde(rename = "_id")]
    pub object_id: String,
    pub id: String,
    pub model_id: String,
    pub author: Option<String>,
    pub private: bool,
    /// The head of `main`; null while the repo has no commit.
    pub sha: Option<String>,
    pub last_modified: String,
    pub created_at: String,
    pub downloads: u64,
    pub likes: u64,
    pub tags: Vec<String>,
    #[serde(rename = "library_name")]
    pub library_name: &'static str,
}

/// An entry of `tree` and `paths-info`.
#[derive(Serialize, ToSchema)]
pub struct TreeEntry {
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// The git object id: blob id of a file, tree id of a directory.
    pub oid: String,
    /// File size in bytes; 0 for a directory.
    pub size: u64,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lfs: Option<TreeLfs>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Directory,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TreeLfs {
    /// The file's sha256.
    pub oid: String,
    pub size: u64,
    pub pointer_size: u64,
}

/// `GET /api/models/{repo}/refs`: `huggingface_hub.GitRefs`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitRefs {
    pub branches: Vec<GitRef>,
    pub tags: Vec<GitRef>,
    /// Always empty: qstore has no converted branches.
    pub converts: Vec<GitRef>,
    /// Always empty: qstore has no pull requests.
    pub pull_requests: Vec<GitRef>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitRef {
    pub name: String,
    /// `refs/heads/NAME` or `refs/tags/NAME`.
    #[serde(rename = "ref")]
    pub reference: String,
    pub target_commit: String,
}

/// An entry of `GET /api/models/{repo}/commits/{rev}`, newest first.
#[derive(Serialize, ToSchema)]
pub struct CommitEntry {
    pub id: String,
    pub authors: Vec<CommitAuthor>,
    pub date: String,
    pub title: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct CommitAuthor {
    pub user: String,
}

/// `GET /api/whoami-v2`: who the token belongs to.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub name: String,
    pub fullname: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub is_pro: bool,
    pub can_pay: bool,
    /// One per namespace the token may write besides the user's own.
    pub orgs: Vec<Org>,
    pub auth: TokenAuth,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Org {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub role_in_org: &'static str,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenAuth {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub access_token: AccessToken,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessToken {
    pub display_name: String,
    /// `read` or `write`.
    pub role: &'static str,
    pub created_at: String,
}

/// `POST /api/repos/create`.
#[derive(Serialize, ToSchema)]
pub struct RepoCreated {
    pub url: String,
    pub name: String,
    pub id: String,
}

/// `POST /api/validate-yaml`: the 200 (a 400 is the error body with these lists beside it).
#[derive(Serialize, ToSchema)]
pub struct YamlReport {
    pub errors: Vec<YamlProblem>,
    pub warnings: Vec<YamlProblem>,
}

#[derive(Serialize, ToSchema, Clone)]
pub struct YamlProblem {
    pub message: String,
}

/// `POST /api/models/{repo}/preupload/{rev}`: how each file must be sent.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preupload {
    pub files: Vec<PreuploadFile>,
    /// Always null (no pull requests).
    pub commit_oid: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreuploadFile {
    pub path: String,
    /// `lfs` (through the LFS or Xet path) or `regular` (inline in the commit).
    pub upload_mode: &'static str,
    pub should_ignore: bool,
    /// The id of the file at that path now (sha256 for LFS, git blob id otherwise), if any.
    pub oid: Option<String>,
}

/// `POST /api/models/{repo}/commit/{rev}`: `huggingface_hub.CommitInfo`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommitDone {
    pub success: bool,
    pub commit_oid: String,
    pub commit_url: String,
    /// Always null (no pull requests).
    pub pull_request_url: Option<String>,
    /// The id under which the commit's INT8 view is served.
    pub int8_commit_oid: String,
}

/// `POST /api/models/{repo}/branch/{name}` and `/tag/{rev}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefCreated {
    pub name: String,
    pub target_commit: String,
}

/// The deletes of the Hub API (repo, branch, tag): what is gone.
#[derive(Serialize, ToSchema)]
pub struct Gone {
    pub deleted: String,
}

/// `PUT /api/models/{repo}/settings`: the visibility now.
#[derive(Serialize, ToSchema)]
pub struct RepoSettings {
    pub private: bool,
}

/// `GET /api/models/{repo}/xet-write-token/{rev}` (also sent as `X-Xet-*` headers).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct XetToken {
    pub access_token: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// The CAS endpoint the token is good for (scoped to the repo).
    pub cas_url: String,
}

/// `POST /{repo}.git/info/lfs/objects/batch`.
#[derive(Serialize, ToSchema)]
pub struct LfsBatch {
    /// `basic`, or `multipart` when any object is to be sent in parts.
    pub transfer: &'static str,
    pub objects: Vec<LfsBatchObject>,
    pub hash_algo: &'static str,
}

/// One object of a batch answer: no `actions` when it is stored already, `error` when refused.
#[derive(Serialize, ToSchema)]
pub struct LfsBatchObject {
    pub oid: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<LfsActions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<LfsObjectError>,
}

#[derive(Serialize, ToSchema)]
pub struct LfsActions {
    pub upload: LfsUploadAction,
    pub verify: Href,
}

/// Where to PUT the object; for a multipart upload, `header` holds `chunk_size` and the URL of
/// each part by its number.
#[derive(Serialize, ToSchema)]
pub struct LfsUploadAction {
    pub href: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, ToSchema)]
pub struct Href {
    pub href: String,
}

#[derive(Serialize, ToSchema)]
pub struct LfsObjectError {
    pub code: u16,
    pub message: String,
}

/// An LFS object named by sha256 and size: the answer of verify and of a finished upload.
#[derive(Serialize, ToSchema)]
pub struct LfsObject {
    pub oid: String,
    pub size: u64,
}

/// `POST /models/{name}`: what was stored and what it saves.
#[derive(Serialize, ToSchema)]
pub struct UploadReport {
    pub name: String,
    /// The commit id of the uploaded precision.
    pub revision: String,
    /// Commit id by precision: the uploaded one (`bf16`, `fp16`) and `int8`.
    pub commits: BTreeMap<String, String>,
    /// Files by precision.
    pub files: BTreeMap<String, Vec<StoredFile>>,
    pub blob_bytes: u64,
    pub blob_key: Option<String>,
    /// False when an identical blob was stored already.
    pub new_blob: bool,
    pub stored_bytes: u64,
    /// What the two precisions take as separate files.
    pub separate_bytes: u64,
    /// `separate_bytes / blob_bytes`.
    pub ratio: f64,
}

#[derive(Serialize, ToSchema)]
pub struct StoredFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Answers of the Xet CAS writes: `was_inserted` for a xorb, `result` for a shard.
#[derive(Serialize, ToSchema)]
pub struct XorbStored {
    pub was_inserted: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ShardStored {
    /// 1: the shard's files are registered.
    pub result: u8,
}
