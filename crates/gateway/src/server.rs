//! The gateway's lifecycle: start every part, serve until shutdown, then stop accepting, let
//! requests in progress finish (event streams end at once; browsers reconnect elsewhere), and
//! return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use seatrush_core::amqp::Topology;
use seatrush_core::store::Store;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{AppState, router};
use crate::auth::Verifier;
use crate::config::GatewayConfig;
use crate::courier::{Courier, keep_connected};
use crate::courses::Courses;
use crate::events::{Hub, record};
use crate::keys::KeyBook;
use crate::limits::Guard;

/// Database connections of one gateway: key batches, stream catch-ups, the pollers.
const DB_CONNECTIONS: u32 = 16;
/// Request headers larger than this are refused (431).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long requests in progress get to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);
/// How long the background tasks get to stop once the requests are done.
const BACKGROUND_WITHIN: Duration = Duration::from_secs(5);

/// A running gateway.
///
/// Two lifetimes: the listener and the event streams stop when `shutdown` is cancelled; the
/// background tasks the requests in progress depend on (the broker link that receives their
/// answers, the event recorder, the key recorder, the course list, the housekeeping) run on
/// until those requests are done, then stop on `background` and are awaited.
pub struct Gateway {
    local_addr: SocketAddr,
    serving: JoinHandle<()>,
    shutdown: CancellationToken,
    background: CancellationToken,
    tasks: TaskTracker,
}

impl Gateway {
    /// Connects, starts every part and listens; returns once the listener is bound.
    pub async fn start(config: GatewayConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        raise_open_files();
        let verifier = Arc::new(Verifier::new(&config.auth).await?);
        let store = Store::connect(&config.database_url, DB_CONNECTIONS)
            .await
            .context("connecting to PostgreSQL")?;
        store.migrate().await.context("migrating the database")?;
        let topology = Topology::new(config.prefix.clone(), 0);
        let metrics = seatrush_core::telemetry::metrics::install();

        // The event queue exists before the first request is taken, so that no student's event
        // is published to no queue; a broker that is down now gets it declared by the recorder.
        match seatrush_core::amqp::Broker::connect(&config.amqp_url, "seatrush-gateway-setup").await
        {
            Ok(broker) => {
                if let Err(e) = broker.declare_gateway_events(&topology).await {
                    tracing::warn!(error = %seatrush_core::telemetry::chain(&e), "declaring the event queue failed; the recorder will");
                }
                broker.close().await;
            }
            Err(e) => {
                tracing::warn!(error = %seatrush_core::telemetry::chain(&e), "the broker is not reachable yet")
            }
        }
        let background = CancellationToken::new();
        let tasks = TaskTracker::new();
        let courier = Courier::start(
            config.amqp_url.clone(),
            topology.clone(),
            background.clone(),
            &tasks,
        );
        let hub = Hub::new(store.clone())
            .await
            .context("reading the events recorded")?;
        tasks.spawn(Arc::clone(&hub).poll(background.clone()));
        let recording = Arc::new(AtomicBool::new(false));
        let (recorder_store, recorder_topology, recorder_flag) =
            (store.clone(), topology.clone(), Arc::clone(&recording));
        tasks.spawn(keep_connected(
            config.amqp_url.clone(),
            "seatrush-gateway-events",
            background.clone(),
            move |broker| {
                record(
                    broker,
                    recorder_topology.clone(),
                    recorder_store.clone(),
                    Arc::clone(&recorder_flag),
                )
            },
        ));
        let courses = Courses::start(store.clone(), background.clone(), &tasks).await;
        let guard = Arc::new(Guard::new(&config.limits));
        tasks.spawn(upkeep(
            Arc::clone(&guard),
            Arc::clone(&verifier),
            store.clone(),
            config.limits.retention_days,
            background.clone(),
        ));

        let state = AppState {
            verifier,
            keys: KeyBook::start(store.clone(), &tasks),
            courier,
            hub,
            courses,
            store,
            guard,
            limits: config.limits.clone(),
            metrics,
            recording,
            shutdown: shutdown.clone(),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        tracing::info!(%local_addr, "the gateway is listening");
        let serving = tokio::spawn(serve(listener, state, config, shutdown.clone()));
        Ok(Self {
            local_addr,
            serving,
            shutdown,
            background,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the gateway has stopped (after its shutdown signal): the requests in
    /// progress answered or the drain over, then the background tasks stopped.
    pub async fn stopped(self) -> anyhow::Result<()> {
        let served = self
            .serving
            .await
            .context("the gateway's server task failed");
        self.background.cancel();
        self.tasks.close();
        if tokio::time::timeout(BACKGROUND_WITHIN, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(within = ?BACKGROUND_WITHIN, "background tasks still running; leaving them to the process's exit");
        }
        served
    }

    /// Stops it and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.stopped().await
    }
}

/// Runs a gateway until `shutdown`.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    Gateway::start(config, shutdown).await?.stopped().await
}

async fn serve(
    listener: TcpListener,
    state: AppState,
    config: GatewayConfig,
    shutdown: CancellationToken,
) {
    let app = router(state);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(config.limits.max_connections));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&connections).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait for connections to close.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(config.limits.header_timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away mid-request is not the gateway's failure.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("every connection closed"),
        () = tokio::time::sleep(DRAIN) => tracing::warn!("connections still open after {DRAIN:?}; closing them"),
    }
}

/// Periodic housekeeping: the rate limiter's memory, the JWKS, and old keys and events.
async fn upkeep(
    guard: Arc<Guard>,
    verifier: Arc<Verifier>,
    store: Store,
    retention_days: u32,
    shutdown: CancellationToken,
) {
    let mut minute = tokio::time::interval(Duration::from_secs(60));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = minute.tick() => {}
            () = shutdown.cancelled() => return,
        }
        ticks += 1;
        guard.tidy();
        if verifier.refreshes()
            && ticks.is_multiple_of(5)
            && let Err(e) = verifier.refresh().await
        {
            tracing::warn!(error = %format!("{e:#}"), "refreshing the JWKS failed; keeping the keys held");
        }
        if ticks % 60 == 1 {
            match store.prune_gateway(retention_days).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "old keys and events pruned"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %seatrush_core::telemetry::chain(&e), "pruning old keys and events failed")
                }
            }
        }
    }
}

/// Each open event stream is a connection: take as many descriptors as the system allows.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
}
