//! `qstore serve`, `migrate`, `gc`, `token create`: the commands that need the
//! configuration and an async runtime.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::config::{Config, Overrides};
use crate::storage::{Objects, gc};

/// Where the configuration comes from; shared by every server-side command.
#[derive(Args, Clone)]
pub struct ConfigArgs {
    /// TOML configuration file (see config/default.toml for every key).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory for the local object store and SQLite catalog.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a new API token; prints it once (only its hash is stored).
    Create {
        /// Who or what uses the token: the author of its commits, its namespace in `whoami`.
        #[arg(long, default_value = "default")]
        name: String,
        /// A namespace (user or org) it may write in; repeat for several. None: all.
        #[arg(long = "scope", value_name = "ORG_OR_USER")]
        scopes: Vec<String>,
        /// Reads only (private repos in its scopes), never writes.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List tokens (id, name, scopes, role, creation date); never the tokens themselves.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Revoke a token by id (or by name, when only one token has it).
    Revoke {
        id_or_name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn load(args: &ConfigArgs, listen: Option<SocketAddr>) -> Result<Config> {
    let overrides = Overrides {
        listen,
        data_dir: args.data_dir.clone(),
    };
    Config::load(args.config.as_deref(), std::env::vars(), &overrides)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = if config.log.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Runs the server until SIGINT/SIGTERM.
pub fn serve(args: &ConfigArgs, listen: Option<SocketAddr>) -> Result<()> {
    let config = load(args, listen)?;
    init_logging(&config);
    runtime()?.block_on(async move {
        let bound = crate::server::Bound::new(config).await?;
        bound.serve(crate::server::signal()).await
    })
}

/// Applies catalog migrations and exits.
pub fn migrate(args: &ConfigArgs) -> Result<()> {
    let config = load(args, None)?;
    runtime()?.block_on(async move {
        migrated_catalog(&config).await?;
        println!("catalog is up to date");
        Ok(())
    })
}

/// One garbage collection; prints what it did. Needs the catalog already migrated (a fresh,
/// empty deployment has nothing to collect, and gc must never be the one to create a schema).
pub fn gc(args: &ConfigArgs, grace_secs: Option<u64>, dry_run: bool) -> Result<()> {
    let config = load(args, None)?;
    let grace = Duration::from_secs(grace_secs.unwrap_or(config.gc.grace_secs));
    runtime()?.block_on(async move {
        let catalog = crate::server::open_catalog(&config).await?;
        let objects = Objects::open(&config).context("opening the object store")?;
        let spools = config.storage.data_dir.join("tmp");
        let report = gc::collect(&catalog, &objects, &spools, grace, dry_run)
            .await
            .context("collecting garbage")?;
        for key in &report.removed {
            let verb = if dry_run { "would remove" } else { "removed" };
            println!("{verb} {key}");
        }
        println!("{report}");
        Ok(())
    })
}

/// Creates, lists or revokes API tokens.
pub fn token(command: TokenCommand) -> Result<()> {
    let config = match &command {
        TokenCommand::Create { config, .. }
        | TokenCommand::List { config }
        | TokenCommand::Revoke { config, .. } => load(config, None)?,
    };
    runtime()?.block_on(async move {
        let catalog = migrated_catalog(&config).await?;
        match command {
            TokenCommand::Create {
                name,
                scopes,
                read_only,
                ..
            } => {
                for s in &scopes {
                    crate::api::names::check_repo_name(s)
                        .ok()
                        .filter(|()| !s.contains('/'))
                        .with_context(|| format!("scope {s:?} is not a user or org name"))?;
                }
                let token = crate::api::auth::new_token().context("generating a token")?;
                let hash = crate::api::auth::hash_token(&token);
                let record = crate::storage::TokenRecord {
                    id: hash[..16].to_string(),
                    name,
                    scopes,
                    read_only,
                    created_at: crate::storage::catalog::now_millis(),
                };
                catalog.add_token(&record, &hash).await?;
                println!("{token}");
            }
            TokenCommand::List { .. } => {
                println!("{:<16}  {:<20}  {:<5}  {:<24}  scopes", "id", "name", "role", "created");
                for t in catalog.tokens().await? {
                    let created = chrono::DateTime::from_timestamp_millis(t.created_at)
                        .unwrap_or_default()
                        .format("%Y-%m-%d %H:%M:%S UTC");
                    let scopes = if t.scopes.is_empty() {
                        "(all)".to_string()
                    } else {
                        t.scopes.join(",")
                    };
                    let role = if t.read_only { "read" } else { "write" };
                    println!("{:<16}  {:<20}  {role:<5}  {created:<24}  {scopes}", t.id, t.name);
                }
            }
            TokenCommand::Revoke { id_or_name, .. } => {
                if catalog.revoke_token(&id_or_name).await? == 0 {
                    anyhow::bail!(
                        "no token with id {id_or_name:?} (or exactly one token named so): see `qstore token list`"
                    );
                }
                println!("revoked {id_or_name}");
            }
        }
        Ok(())
    })
}

async fn migrated_catalog(config: &Config) -> Result<crate::storage::Catalog> {
    let catalog = crate::server::open_catalog(config).await?;
    catalog
        .migrate()
        .await
        .context("running catalog migrations")?;
    Ok(catalog)
}
