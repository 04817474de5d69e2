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
    /// Make a new API token for writes; prints it once (only its hash is stored).
    Create {
        /// A label saying who or what uses the token.
        #[arg(long, default_value = "default")]
        name: String,
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
        for id in &report.removed {
            let verb = if dry_run { "would remove" } else { "removed" };
            println!("{verb} revisions/{id}/");
        }
        println!("{report}");
        Ok(())
    })
}

/// Creates an API token.
pub fn token(command: TokenCommand) -> Result<()> {
    let TokenCommand::Create { name, config } = command;
    let config = load(&config, None)?;
    runtime()?.block_on(async move {
        let catalog = migrated_catalog(&config).await?;
        let token = crate::api::auth::new_token().context("generating a token")?;
        let id = crate::api::auth::hash_token(&token)[..16].to_string();
        catalog
            .add_token(&id, &name, &crate::api::auth::hash_token(&token))
            .await?;
        println!("{token}");
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
