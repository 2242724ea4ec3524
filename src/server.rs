//! Wiring and lifecycle: recover the data directory, start the storage thread, serve HTTP, and on
//! SIGTERM/SIGINT drain in-flight requests, checkpoint and exit.

use crate::config::Config;
use crate::engine::{self, EngineConfig, Shared, Waiters};
use crate::error::Error;
use crate::events::EventLog;
use crate::http::handlers::AppState;
use crate::limits::EVENT_RING_COUNT_MAX;
use crate::limits::{COMMAND_QUEUE_DEPTH, HEADER_READ_TIMEOUT_MS};
use crate::store::recovery;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Runs the server until a shutdown signal; returns after a clean shutdown.
pub fn run(config: Config) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outboxd-http")
        .build()
        .map_err(|source| Error::Io { context: "starting the runtime".into(), source })?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), Error> {
    let now_ms = crate::clock::now_ms();
    let seed = now_ms ^ (u64::from(std::process::id()) << 32);
    let started = std::time::Instant::now();
    let recovered = recovery::recover(
        &config.data_dir,
        config.broker,
        now_ms,
        seed,
        recovery::RecoveryOptions {
            quarantine: config.quarantine_corrupt,
            segment_bytes: config.log_segment_bytes,
        },
    )?;
    let summary = &recovered.summary;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        replayed_frames = summary.frame_count,
        replayed_ops = summary.op_count,
        queues = summary.queue_count,
        active = summary.active_count,
        pages = summary.page_count,
        quarantined_pages = summary.quarantined_count,
        dropped_items = summary.dropped_count,
        removed_segments = summary.removed_segment_count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered"
    );
    if let Some((segment, offset, dropped_bytes)) = &summary.truncated {
        tracing::warn!(%segment, offset, dropped_bytes, "cut a torn write-ahead log tail");
    }
    let catalog = Arc::new(recovered.catalog);
    let segments = Arc::new(recovered.segments);
    let waiters = Arc::new(Waiters::default());
    let first_event_id = crate::clock::now_ms().saturating_mul(1000).max(1);
    let events = Arc::new(EventLog::new(EVENT_RING_COUNT_MAX, first_event_id));
    let gauges = Arc::new(engine::Gauges::default());
    gauges.log_bytes.store(recovered.wal.disk_bytes(), std::sync::atomic::Ordering::Relaxed);
    let queue_names = Arc::new(parking_lot::RwLock::new(Vec::new()));
    let shared = Shared {
        catalog: catalog.clone(),
        segments: segments.clone(),
        waiters: waiters.clone(),
        events: events.clone(),
        gauges: gauges.clone(),
        queue_names: queue_names.clone(),
    };
    let engine_config = EngineConfig {
        data_dir: config.data_dir.clone(),
        disk_free_min_bytes: config.disk_free_min_bytes,
        checkpoint_wal_bytes: config.checkpoint_wal_bytes,
        depth: COMMAND_QUEUE_DEPTH,
    };
    let (engine, storage_thread) =
        engine::spawn(recovered.broker, recovered.wal, shared, crate::clock::now_ms, engine_config)
            .map_err(|source| Error::Io {
                context: "starting the storage thread".into(),
                source,
            })?;
    let listener = TcpListener::bind(config.listen).await.map_err(|source| Error::Io {
        context: format!("listening on {}", config.listen),
        source,
    })?;
    let address = listener
        .local_addr()
        .map_err(|source| Error::Io { context: "reading the listen address".into(), source })?;
    // Before the announcement, so that whoever waits for it finds the file.
    if let Err(error) = crate::admin::write_address_file(&config.data_dir, address) {
        tracing::warn!(%error, "could not write the address file; `outboxd backup` needs --url");
    }
    announce(address);
    let (shutdown_sender, shutdown) = tokio::sync::watch::channel(false);
    let rates = Arc::new(crate::rates::Rates::default());
    tokio::spawn(crate::rates::follow(events.clone(), rates.clone(), shutdown.clone()));
    let state = Arc::new(AppState {
        engine: engine.clone(),
        catalog,
        segments,
        log_dir: config.data_dir.join(crate::store::LOG_DIR),
        queue_names,
        history_keep_count: config.broker.history_keep_count,
        waiters,
        events,
        limits: config.limits,
        clock: crate::clock::now_ms,
        shutdown,
        metrics: crate::metrics::install(),
        gauges,
        data_dir: config.data_dir.clone(),
        tokens: config.tokens.clone(),
        backup_running: Arc::default(),
        rates,
        ui_enabled: config.ui_enabled,
    });
    accept_until_signal(listener, state, &config, shutdown_sender).await;
    let state_failure = engine.failure();
    let stopped = tokio::task::spawn_blocking(move || {
        engine.stop();
        let _ = storage_thread.join();
    })
    .await;
    // Whatever the outcome, nothing listens at the address any more.
    crate::admin::remove_address_file(&config.data_dir);
    stopped.map_err(|error| Error::Io {
        context: "stopping".into(),
        source: std::io::Error::other(error),
    })?;
    if let Some(reason) = state_failure {
        return Err(Error::Io {
            context: "stopped after a storage failure; restart to recover from the log".into(),
            source: std::io::Error::other(reason.to_string()),
        });
    }
    tracing::info!("stopped");
    Ok(())
}

/// Prints the one line that tells scripts and tests where the server listens.
fn announce(address: std::net::SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "outboxd listening on {address}");
    let _ = stdout.flush();
    tracing::info!(%address, "listening");
}

/// Accepts connections until SIGTERM or SIGINT, then lets open requests finish (bounded).
async fn accept_until_signal(
    listener: TcpListener,
    state: Arc<AppState>,
    config: &Config,
    shutdown_sender: tokio::sync::watch::Sender<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(config.connection_count_max));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit,
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permit else { break };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |request| crate::http::serve(state.clone(), request));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = shutdown_sender.send(true);
    tracing::info!("shutting down: finishing open requests");
    let timeout = Duration::from_millis(config.shutdown_timeout_ms);
    if tokio::time::timeout(timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("shutdown timeout passed with requests still open");
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
