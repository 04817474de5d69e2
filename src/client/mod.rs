//! qstore as a client of a qstore server: where the server is and who the user is (the login
//! file and the environment), and the Hub API calls the `login`, `ls` and `rm` commands make.
//! Errors carry the server's own message, so the CLI prints one line that names the problem.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod blob;
pub mod pull;
pub mod push;

pub use pull::{Pulled, pull};
pub use push::{PushRequest, Pushed, push};

/// The async runtime the API calls run on (the blob's chunks are fetched by blocking threads).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Where `qstore login` keeps the endpoint and token (mode 0600).
pub const LOGIN_FILE: &str = "login.json";
const DEFAULT_ENDPOINT: &str = "http://localhost:8080";

/// A server and, if known, the token to send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remote {
    pub endpoint: String,
    pub token: Option<String>,
}

/// `$XDG_CONFIG_HOME/qstore`, else `~/.config/qstore`.
pub fn config_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").context("neither XDG_CONFIG_HOME nor HOME is set")?,
        )
        .join(".config"),
    };
    Ok(base.join("qstore"))
}

impl Remote {
    /// The server to talk to: `QSTORE_ENDPOINT`/`QSTORE_TOKEN`, then `HF_ENDPOINT`/`HF_TOKEN`,
    /// then what `qstore login` stored, then `http://localhost:8080` without a token. Each of
    /// endpoint and token is taken from the first place that sets it.
    pub fn resolve() -> Result<Remote> {
        let env = |names: [&str; 2]| {
            names
                .iter()
                .filter_map(|n| std::env::var(n).ok())
                .find(|v| !v.is_empty())
        };
        let stored = Remote::load()?;
        let endpoint = env(["QSTORE_ENDPOINT", "HF_ENDPOINT"])
            .or_else(|| stored.as_ref().map(|s| s.endpoint.clone()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let token = env(["QSTORE_TOKEN", "HF_TOKEN"]).or_else(|| stored.and_then(|s| s.token));
        Ok(Remote {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// What `qstore login` stored, if anything.
    pub fn load() -> Result<Option<Remote>> {
        let path = config_dir()?.join(LOGIN_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is not a qstore login file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the login file readable by its owner only, replacing any older one whole.
    pub fn store(&self) -> Result<PathBuf> {
        let dir = config_dir()?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOGIN_FILE);
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .with_context(|| format!("writing in {}", dir.display()))?;
        set_owner_only(tmp.path())?;
        tmp.write_all(&serde_json::to_vec_pretty(self)?)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    fn client(&self) -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .user_agent(concat!("qstore/", env!("CARGO_PKG_VERSION")))
            .build()?)
    }

    /// Sends `request` with the token, if any.
    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        request
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.endpoint))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let response = self.answer(request).await?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = body["error"]["message"]
                .as_str()
                .or(body["error"].as_str())
                .or(body.as_str())
                .unwrap_or("no message");
            bail!("{} answered {status}: {message}", self.endpoint);
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.endpoint);
        self.send(self.client()?.get(url)).await
    }

    /// A file of a pinned commit as the server serves it (`GET /{repo}/resolve/{commit}/{path}`).
    pub async fn download(&self, repo: &str, commit: &str, path: &str) -> Result<Vec<u8>> {
        let path_enc: Vec<String> = path
            .split('/')
            .map(|s| {
                percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            })
            .collect();
        let url = format!(
            "{}/{repo}/resolve/{commit}/{}",
            self.endpoint,
            path_enc.join("/")
        );
        let response = self.answer(self.client()?.get(&url)).await?;
        if !response.status().is_success() {
            bail!("{url} answered {}", response.status());
        }
        Ok(response
            .bytes()
            .await
            .with_context(|| url.clone())?
            .to_vec())
    }

    /// The token's user (`GET /api/whoami-v2`).
    pub async fn whoami(&self) -> Result<String> {
        if self.token.is_none() {
            bail!("no token: pass --token, or set QSTORE_TOKEN");
        }
        let me = self.get("/api/whoami-v2").await?;
        Ok(me["name"].as_str().unwrap_or("?").to_string())
    }

    /// Every repo the caller may see, newest first.
    pub async fn list_repos(&self) -> Result<Vec<Value>> {
        let mut repos = Vec::new();
        let mut offset = 0;
        loop {
            let page = self
                .get(&format!(
                    "/api/models?sort=lastModified&limit=1000&offset={offset}"
                ))
                .await?;
            let page = page.as_array().cloned().unwrap_or_default();
            let n = page.len();
            repos.extend(page);
            if n < 1000 {
                return Ok(repos);
            }
            offset += n;
        }
    }

    /// A repo's branches, tags and the files of `revision`, with sizes.
    pub async fn repo(&self, repo: &str, revision: &str) -> Result<(Value, Value)> {
        check_repo(repo)?;
        let rev =
            percent_encoding::utf8_percent_encode(revision, percent_encoding::NON_ALPHANUMERIC);
        let refs = self.get(&format!("/api/models/{repo}/refs")).await?;
        let info = self
            .get(&format!("/api/models/{repo}/revision/{rev}?blobs=true"))
            .await?;
        Ok((refs, info))
    }

    /// Deletes a whole repo (`DELETE /api/repos/delete`).
    pub async fn delete_repo(&self, repo: &str) -> Result<()> {
        check_repo(repo)?;
        let (organization, name) = match repo.split_once('/') {
            Some((org, name)) => (Some(org), name),
            None => (None, repo),
        };
        let body = serde_json::json!({"name": name, "organization": organization, "type": "model"});
        let url = format!("{}/api/repos/delete", self.endpoint);
        self.send(self.client()?.delete(url).json(&body)).await?;
        Ok(())
    }

    /// Deletes one commit (`DELETE /models/{repo}?revision=`): refused while a branch or tag
    /// points at it.
    pub async fn delete_revision(&self, repo: &str, revision: &str) -> Result<()> {
        check_repo(repo)?;
        let rev =
            percent_encoding::utf8_percent_encode(revision, percent_encoding::NON_ALPHANUMERIC);
        let url = format!("{}/models/{repo}?revision={rev}", self.endpoint);
        self.send(self.client()?.delete(url)).await?;
        Ok(())
    }
}

/// A repo id goes into URL paths as it is: only the names a server accepts.
fn check_repo(repo: &str) -> Result<()> {
    crate::api::names::check_repo_name(repo).map_err(|e| anyhow::anyhow!("{}", e.message))
}

#[cfg(unix)]
fn set_owner_only(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))
}

#[cfg(not(unix))]
fn set_owner_only(_: &Path) -> Result<()> {
    Ok(())
}
