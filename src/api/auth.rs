//! Who is calling and what they may do. Public repos are readable by anyone; private repos and
//! every write need a bearer token whose scopes cover the repo's namespace (a token with no scope
//! covers all), and writes need one that is not read-only. A server with no token at all accepts
//! writes only while it listens on loopback (a developer's machine).

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ApiResult, ErrorKind};
use crate::storage::{Catalog, RepoRecord};

/// Tokens from the configuration (hashed at start) and whether the listener is loopback.
pub struct WritePolicy {
    config_hashes: Vec<String>,
    loopback: bool,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The token's name (the author of its commits, its namespace for `create_repo`).
    pub name: String,
    /// Namespaces it may write in; empty: all.
    pub scopes: Vec<String>,
    pub read_only: bool,
}

impl Caller {
    /// The owner of a repo name: its namespace (`org` of `org/name`), or none.
    fn covers(&self, repo: &str) -> bool {
        if self.scopes.is_empty() {
            return true;
        }
        match repo.split_once('/') {
            Some((ns, _)) => self.scopes.iter().any(|s| s == ns),
            None => false,
        }
    }

    /// `write` or `read`, as Hub clients read the role.
    pub fn role(&self) -> &'static str {
        if self.read_only { "read" } else { "write" }
    }
}

impl WritePolicy {
    pub fn new(config_tokens: &[String], loopback: bool) -> WritePolicy {
        WritePolicy {
            config_hashes: config_tokens.iter().map(|t| hash_token(t)).collect(),
            loopback,
        }
    }

    /// The caller the headers name: None without a token; 401 for a token that is not valid
    /// (revoked or unknown), whatever is asked.
    pub async fn caller(
        &self,
        catalog: &Catalog,
        headers: &HeaderMap,
    ) -> ApiResult<Option<Caller>> {
        let Some(token) = bearer(headers) else {
            return Ok(None);
        };
        let hash = hash_token(token);
        if self.config_hashes.contains(&hash) {
            return Ok(Some(Caller {
                name: "admin".into(),
                scopes: Vec::new(),
                read_only: false,
            }));
        }
        match catalog.token_by_hash(&hash).await? {
            Some(t) => Ok(Some(Caller {
                name: t.name,
                scopes: t.scopes,
                read_only: t.read_only,
            })),
            None if self.open_for_loopback(catalog).await? => Ok(Some(local_caller())),
            None => Err(ApiError::new(
                ErrorKind::Unauthorized,
                "invalid or revoked API token",
            )),
        }
    }

    /// True when no token exists at all and the server is on loopback: anyone local writes.
    async fn open_for_loopback(&self, catalog: &Catalog) -> ApiResult<bool> {
        Ok(self.loopback && self.config_hashes.is_empty() && catalog.token_count().await? == 0)
    }

    /// The caller, who must be allowed to write in `repo` (or, with `repo` None, somewhere).
    pub async fn writer(
        &self,
        catalog: &Catalog,
        headers: &HeaderMap,
        repo: Option<&str>,
    ) -> ApiResult<Caller> {
        let caller = match self.caller(catalog, headers).await? {
            Some(c) => c,
            None if self.open_for_loopback(catalog).await? => local_caller(),
            None if self.config_hashes.is_empty()
                && !self.loopback
                && catalog.token_count().await? == 0 =>
            {
                return Err(ApiError::new(
                    ErrorKind::Forbidden,
                    "writes are disabled: no API token is configured and the server is not on loopback",
                ));
            }
            None => {
                return Err(ApiError::new(
                    ErrorKind::Unauthorized,
                    "this needs an `Authorization: Bearer TOKEN` header",
                ));
            }
        };
        if caller.read_only {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("token {:?} is read-only", caller.name),
            ));
        }
        if let Some(repo) = repo.filter(|r| !caller.covers(r)) {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!(
                    "token {:?} may write only in {}, not in {repo:?}",
                    caller.name,
                    scope_list(&caller.scopes)
                ),
            ));
        }
        Ok(caller)
    }

    /// Allows the write or says why not (the native API's check, any namespace).
    pub async fn check(&self, catalog: &Catalog, headers: &HeaderMap, repo: &str) -> ApiResult<()> {
        self.writer(catalog, headers, Some(repo)).await.map(|_| ())
    }

    /// True when writes can never succeed (said once at start).
    pub fn writes_refused(&self, db_tokens: u64) -> bool {
        self.config_hashes.is_empty() && db_tokens == 0 && !self.loopback
    }
}

/// Whether `caller` may see `repo`: public repos to all; private ones to callers whose scopes
/// cover them (read-only tokens included).
pub fn can_read(caller: Option<&Caller>, repo: &RepoRecord) -> bool {
    !repo.private || caller.is_some_and(|c| c.covers(&repo.name))
}

fn local_caller() -> Caller {
    Caller {
        name: "local".into(),
        scopes: Vec::new(),
        read_only: false,
    }
}

fn scope_list(scopes: &[String]) -> String {
    scopes
        .iter()
        .map(|s| format!("{s}/"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Tokens are stored and compared as sha256 hex, never in the clear.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token, `qst_` + 64 hex digits.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("qst_{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 68);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }

    #[test]
    fn scopes_cover_namespaces() {
        let scoped = Caller {
            name: "ci".into(),
            scopes: vec!["org".into()],
            read_only: false,
        };
        assert!(scoped.covers("org/m"));
        assert!(!scoped.covers("other/m"));
        assert!(!scoped.covers("m"));
        assert!(!scoped.covers("organisation/m"));
        let all = Caller {
            scopes: Vec::new(),
            ..scoped
        };
        assert!(all.covers("m") && all.covers("x/y"));
        let private = RepoRecord {
            name: "org/m".into(),
            private: true,
            created_at: 0,
        };
        assert!(!can_read(None, &private));
        assert!(can_read(Some(&all), &private));
    }
}
