//! Running the registry: open storage, migrate, bind, serve until told to stop, then let
//! downloads in flight finish for a bounded time.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::{AppState, BlobCache, WritePolicy, app, metrics::Metrics};
use crate::config::Config;
use crate::format::DecodeBudget;
use crate::storage::cache::FileCache;
use crate::storage::spool::{self, ProcessSpool};
use crate::storage::{Catalog, Objects, gc};

/// Opens the catalog (migrating it if configured to) and the object store.
pub async fn state(config: Config) -> Result<AppState> {
    let catalog = open_catalog(&config).await?;
    if config.server.run_migrations {
        catalog
            .migrate()
            .await
            .context("running catalog migrations")?;
    }
    let objects = Objects::open(&config).context("opening the object store")?;
    let tmp = config.storage.data_dir.join("tmp");
    spool::remove_dead(&tmp);
    remove_abandoned_spools(&config);
    let spool =
        ProcessSpool::claim(&tmp).context("claiming a spool directory under data_dir/tmp")?;
    let writes = WritePolicy::new(&config.auth.tokens, config.server.listen.ip().is_loopback());
    let encodes = Arc::new(Semaphore::new(config.limits.max_concurrent_encodes.max(1)));
    let decodes = Arc::new(Semaphore::new(config.limits.max_concurrent_decodes.max(1)));
    let decode_budget = Arc::new(decode_budget(&config));
    let index_memory = Arc::new(Semaphore::new(crate::api::index_memory_units(&config)));
    let lfs_transfers = Arc::new(Semaphore::new(
        config.limits.max_concurrent_lfs_transfers.max(1),
    ));
    let cache = FileCache::open(
        &config.storage.data_dir.join("cache"),
        config.cache.max_bytes,
    )
    .context("opening the file cache")?;
    Ok(AppState {
        config: Arc::new(config),
        catalog,
        objects,
        metrics: Arc::new(Metrics::default()),
        blobs: Arc::new(BlobCache::default()),
        writes: Arc::new(writes),
        encodes,
        decodes,
        decode_budget,
        index_memory,
        first_opens: Default::default(),
        lfs_transfers,
        cache,
        spool: Arc::new(spool),
    })
}

/// The chunks downloads keep in flight beyond two each: a window's worth, or enough to keep
/// every core busy, whichever is more. Past that many downloads, each added one costs about
/// two decoded chunks (~1 MiB each) rather than a window.
fn decode_budget(config: &Config) -> DecodeBudget {
    let window = config.server.decode_window_chunks.max(1);
    let shares = 2 * window.max(rayon::current_num_threads() + 1);
    DecodeBudget::shared(window, shares)
}

/// Spools older than the gc grace period belong to an upload that is stuck or to a process that
/// died mid-upload (a spool is written for as long as its upload runs); this process has none
/// yet. Spools of processes known to be gone went already, whatever their age.
fn remove_abandoned_spools(config: &Config) {
    let grace = Duration::from_secs(config.gc.grace_secs);
    if let Some(cutoff) = SystemTime::now().checked_sub(grace) {
        gc::remove_old_spools(&config.storage.data_dir.join("tmp"), cutoff, false);
    }
}

/// Collects garbage every `gc.interval_secs`, for deployments without a cron job running
/// `qstore gc`. Failures are logged and retried at the next tick.
async fn collect_periodically(state: AppState) {
    let interval = Duration::from_secs(state.config.gc.interval_secs);
    let grace = Duration::from_secs(state.config.gc.grace_secs);
    let spools = state.config.storage.data_dir.join("tmp");
    loop {
        tokio::time::sleep(interval).await;
        match gc::collect(&state.catalog, &state.objects, &spools, grace, false).await {
            Ok(report) => tracing::info!(%report, "gc: periodic collection"),
            Err(e) => tracing::warn!(error = %e, "gc: periodic collection failed"),
        }
    }
}

/// Connects to the configured catalog.
pub async fn open_catalog(config: &Config) -> Result<Catalog> {
    Catalog::connect(&config.database_url(), config.catalog.max_connections)
        .await
        .context("connecting to the catalog")
}

/// A server bound to its port, not yet serving.
pub struct Bound {
    listener: TcpListener,
    state: AppState,
}

impl Bound {
    /// Binds the configured address (port 0 picks a free one).
    pub async fn new(config: Config) -> Result<Bound> {
        let listen = config.server.listen;
        let state = state(config).await?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        Ok(Bound { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// Serves until `shutdown` resolves, then waits for requests in flight for at most the
    /// configured shutdown timeout.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let addr = self.local_addr();
        let timeout = Duration::from_secs(self.state.config.server.shutdown_timeout_secs);
        let db_tokens = self.state.catalog.token_count().await.unwrap_or(0);
        if self.state.writes.writes_refused(db_tokens) {
            tracing::warn!(
                "no API token is configured and {addr} is not loopback: uploads and deletes are refused \
                 (set auth.tokens or run `qstore token create`)"
            );
        }
        tracing::info!(%addr, data_dir = %self.state.config.storage.data_dir.display(), "qstore listening");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Without TCP_NODELAY a small answer's body waits behind its headers for the client's
        // delayed ACK (~40 ms on Linux) under Nagle's algorithm.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        let server =
            axum::serve(listener, app(self.state.clone())).with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            });
        let periodic_gc = (self.state.config.gc.interval_secs > 0)
            .then(|| tokio::spawn(collect_periodically(self.state.clone())));
        let mut serving = tokio::spawn(server.into_future());
        tokio::select! {
            joined = &mut serving => return joined.context("server task")?.context("serving"),
            () = shutdown => {}
        }
        if let Some(task) = periodic_gc {
            task.abort();
        }
        tracing::info!(
            timeout_secs = timeout.as_secs(),
            "shutting down: finishing requests in flight"
        );
        let _ = stop_tx.send(());
        match tokio::time::timeout(timeout, serving).await {
            Ok(joined) => joined.context("server task")?.context("serving")?,
            Err(_) => tracing::warn!("shutdown timeout reached; dropping remaining connections"),
        }
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
