//! Who may write. Reads are public; POST and DELETE need a bearer token, except on a server that
//! has no token at all and listens on loopback only (a developer's machine).

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ApiResult, ErrorKind};
use crate::storage::Catalog;

/// Tokens from the configuration (hashed at start) and whether the listener is loopback.
pub struct WritePolicy {
    config_hashes: Vec<String>,
    loopback: bool,
}

impl WritePolicy {
    pub fn new(config_tokens: &[String], loopback: bool) -> WritePolicy {
        WritePolicy {
            config_hashes: config_tokens.iter().map(|t| hash_token(t)).collect(),
            loopback,
        }
    }

    /// Allows the write or says why not.
    pub async fn check(&self, catalog: &Catalog, headers: &HeaderMap) -> ApiResult<()> {
        let any_token = !self.config_hashes.is_empty() || catalog.token_count().await? > 0;
        if !any_token {
            return if self.loopback {
                Ok(())
            } else {
                Err(ApiError::new(
                    ErrorKind::Forbidden,
                    "writes are disabled: no API token is configured and the server is not on loopback",
                ))
            };
        }
        let Some(token) = bearer(headers) else {
            return Err(ApiError::new(
                ErrorKind::Unauthorized,
                "this needs an `Authorization: Bearer TOKEN` header",
            ));
        };
        let hash = hash_token(token);
        if self.config_hashes.contains(&hash) || catalog.token_exists(&hash).await? {
            Ok(())
        } else {
            Err(ApiError::new(ErrorKind::Unauthorized, "unknown API token"))
        }
    }

    /// True when writes can never succeed (said once at start).
    pub fn writes_refused(&self, db_tokens: u64) -> bool {
        self.config_hashes.is_empty() && db_tokens == 0 && !self.loopback
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
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
}
