//! Server configuration: one typed struct, layered defaults < TOML file < environment
//! (`QSTORE__SECTION__KEY`) < command-line flags. Unknown keys are an error at every layer, so a
//! typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `qstore serve` (and `migrate`, `token`) reads at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub catalog: CatalogConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub cache: CacheConfig,
    pub gc: GcConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long downloads in flight may continue after SIGINT/SIGTERM.
    pub shutdown_timeout_secs: u64,
    /// Run catalog migrations at start (turn off when `qstore migrate` runs as its own step).
    pub run_migrations: bool,
    /// `Cache-Control: max-age` for branch URLs, whose content moves when a new upload lands.
    pub branch_max_age_secs: u64,
    /// Half the chunks one download may keep in flight (each ~1 MiB). Beyond its first two, a
    /// download's chunks come from a pool all downloads share, 2 x max(this, cores + 1), so a
    /// larger window helps a lone client (more reads overlapped on S3) and costs many
    /// concurrent downloads only that pool.
    pub decode_window_chunks: usize,
    /// The URL clients reach this server at (behind a proxy or CDN), for the links it hands out
    /// (LFS upload URLs, commit URLs); empty: taken from each request's `Host` header.
    pub public_url: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_timeout_secs: 30,
            run_migrations: true,
            branch_max_age_secs: 60,
            decode_window_chunks: 4,
            public_url: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Holds the local object store (`objects/`), the SQLite catalog and upload spool (`tmp/`).
    pub data_dir: PathBuf,
    /// Object store backend; `local` keeps objects under `data_dir/objects`.
    pub backend: StorageBackend,
    /// Used when `backend = "s3"`.
    pub s3: S3Config,
    /// MiB of stored chunks all downloads together may read ahead from a remote store, where
    /// each ranged GET costs a round trip: enough keeps many GETs in flight, the cap bounds
    /// memory. Unused by the local backend.
    pub read_ahead_mib: usize,
    /// Writes (uploads, commits, LFS and Xet bodies) are refused with 507 while the data
    /// volume (spool, local objects, SQLite catalog) has less free space than this, so a disk
    /// never fills to the last byte mid-upload; reads go on. 0 turns the check off.
    pub min_free_mib: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            backend: StorageBackend::Local,
            s3: S3Config::default(),
            read_ahead_mib: 32,
            min_free_mib: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Files under `data_dir/objects`: one machine, nothing to install.
    Local,
    /// An S3-compatible bucket shared by every replica.
    S3,
}

/// Where the S3 bucket is. Credentials are never configuration: they come from the standard
/// AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web
/// identity, instance metadata), so secrets stay out of files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub bucket: String,
    /// Empty: AWS itself (or `AWS_ENDPOINT_URL`). An `http://` endpoint allows plain HTTP.
    pub endpoint: String,
    /// Empty: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: String,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`; most self-hosted
    /// S3-compatible servers need this.
    pub path_style: bool,
    /// Key prefix inside the bucket, so several deployments can share one bucket.
    pub prefix: String,
}

/// The local cache of decoded files (`data_dir/cache`), each replica's own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Disk the cache may use; 0 turns it off (every download decodes, the store holds the only
    /// copy). With it on, a file downloaded whole is kept decoded (once its sha256 matched) and
    /// later whole downloads are read from disk, CRC-32-checked, at file-server speed.
    pub max_bytes: u64,
}

/// Garbage collection of objects no revision refers to (`qstore gc`, or periodically).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Leftovers younger than this are kept: they may belong to an upload still in progress.
    pub grace_secs: u64,
    /// Run a collection this often inside `serve`; 0 turns the periodic task off.
    pub interval_secs: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            grace_secs: 24 * 3600,
            interval_secs: 0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// sqlx URL; empty means a SQLite file at `data_dir/catalog.db`.
    pub database_url: String,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer tokens allowed to write, in addition to those made by `qstore token create`.
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest upload body (all files together), in bytes.
    pub max_upload_bytes: u64,
    /// Largest non-safetensors file in an upload (config, tokenizer...), in bytes.
    pub max_plain_file_bytes: u64,
    /// Most files in one upload.
    pub max_files: usize,
    /// Uploads encoding at once (each holds ~90 MiB; more would only share the same cores).
    /// Further uploads are received to the spool and wait for their turn to encode.
    pub max_concurrent_encodes: usize,
    /// Downloads decoding at once (each holds ~2-3 MiB, plus its share of the in-flight pool
    /// of `decode_window_chunks`); further requests wait before their first byte.
    pub max_concurrent_decodes: usize,
    /// LFS bodies and parts being received (or joined) at once, each holding up to ~24 MiB of
    /// parts in flight to the object store; further ones wait before their body is read.
    pub max_concurrent_lfs_transfers: usize,
    /// Memory the blob indexes of downloads in flight may take together, in MiB: a model of
    /// 2^17 tensors has an index that takes ~200 MiB while served, a MiniLM one 0.1 MiB.
    /// Downloads past it wait before their first byte; one index alone always fits.
    pub max_index_memory_mib: u64,
    /// How long a Xet CAS token from `xet-write-token` lives, in seconds (clients ask for a new
    /// one 30 s before it ends).
    pub xet_token_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_upload_bytes: 256 << 30,
            max_plain_file_bytes: 256 << 20,
            max_files: 1000,
            max_concurrent_encodes: 2,
            max_concurrent_decodes: 32,
            max_concurrent_lfs_transfers: 8,
            max_index_memory_mib: 512,
            xet_token_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `qstore=debug,tower_http=info`.
    pub level: String,
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            json: false,
        }
    }
}

/// Values given on the command line; they override every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Builds the configuration from its layers. `env` is the process environment (passed in so
    /// tests need not mutate the real one).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(format!("config file {} does not exist", file.display()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("QSTORE__"))
            .collect();
        figment = figment.merge(EnvLayer(env_tree(&vars)?));
        let mut config: Config = figment.extract().map_err(describe)?;
        if let Some(listen) = flags.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = &flags.data_dir {
            config.storage.data_dir = dir.clone();
        }
        Ok(config)
    }

    /// The catalog URL, defaulting to SQLite under the data directory.
    pub fn database_url(&self) -> String {
        if self.catalog.database_url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.storage.data_dir.join("catalog.db").display()
            )
        } else {
            self.catalog.database_url.clone()
        }
    }
}

/// The `QSTORE__*` variables as a configuration layer, named so errors can point at them.
struct EnvLayer(toml::Table);

const ENV_LAYER: &str = "environment variables QSTORE__*";

impl figment::Provider for EnvLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(ENV_LAYER)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::defaults(&self.0).data()
    }
}

/// Configuration errors as a user can act on them: the key, where it was set (the file, or the
/// environment variable by name), and what is wrong.
fn describe(errors: figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let key = e
                .path
                .iter()
                .skip_while(|p| *p == "default")
                .cloned()
                .collect::<Vec<_>>()
                .join(".");
            let from = match &e.metadata {
                Some(m) if m.name == ENV_LAYER => format!(
                    "environment variable QSTORE__{}",
                    key.replace('.', "__").to_ascii_uppercase()
                ),
                Some(m) => m
                    .source
                    .as_ref()
                    .map_or_else(|| m.name.to_string(), |s| s.to_string()),
                None => "the defaults".into(),
            };
            format!("{key} (set in {from}): {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Turns `QSTORE__SECTION__KEY=value` pairs into a nested TOML table. Values are parsed as TOML
/// (numbers, booleans, arrays) and fall back to plain strings.
fn env_tree(vars: &[(String, String)]) -> Result<toml::Table, String> {
    let mut root = toml::Table::new();
    for (key, raw) in vars {
        let parts: Vec<String> = key["QSTORE__".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!("environment variable {key}: empty key segment"));
        }
        let value = parse_env_value(raw);
        let (last, sections) = parts.split_last().expect("split yields one part at least");
        let mut table = &mut root;
        for section in sections {
            table = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| format!("environment variable {key}: {section} is not a section"))?;
        }
        table.insert(last.clone(), value);
    }
    Ok(root)
}

fn parse_env_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("the key was just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert!(c.database_url().starts_with("sqlite://./data/catalog.db"));
    }

    #[test]
    fn the_documented_default_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let c = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"0.0.0.0:9000\"\nshutdown_timeout_secs = 5\n[auth]\ntokens = [\"a\"]\n",
        )
        .unwrap();
        let vars = env(&[
            ("QSTORE__SERVER__SHUTDOWN_TIMEOUT_SECS", "7"),
            ("QSTORE__AUTH__TOKENS", "[\"b\", \"c\"]"),
            ("QSTORE__CATALOG__DATABASE_URL", "postgres://u@h/db"),
            ("QSTORE_SLOW_TESTS", "1"),
        ]);
        let flags = Overrides {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            data_dir: Some("/srv/q".into()),
        };
        let c = Config::load(Some(&file), vars, &flags).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.server.shutdown_timeout_secs, 7);
        assert_eq!(c.auth.tokens, ["b", "c"]);
        assert_eq!(c.database_url(), "postgres://u@h/db");
        assert_eq!(c.storage.data_dir, PathBuf::from("/srv/q"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nlisten_addr = \"0.0.0.0:9000\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.contains("listen_addr"), "{err}");
        let err = Config::load(
            None,
            env(&[("QSTORE__SERVR__LISTEN", "x")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.contains("servr"), "{err}");
        let err = Config::load(
            None,
            env(&[("QSTORE__SERVER__LISTEN", "nowhere")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn errors_name_the_key_and_where_it_was_set() {
        let e = Config::load(
            None,
            env(&[("QSTORE__SERVER__LISEN", "1")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.contains("QSTORE__SERVER__LISEN") && e.contains("unknown field"),
            "{e}"
        );
        assert!(!e.contains(".rs"), "{e}");
        let e = Config::load(
            None,
            env(&[("QSTORE__SERVER__LISTEN", "not-an-address")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.starts_with("server.listen (set in environment variable QSTORE__SERVER__LISTEN)"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[server]\nlisen = 1\n").unwrap();
        let e = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(e.contains("server.lisen") && e.contains("bad.toml"), "{e}");
    }
}
