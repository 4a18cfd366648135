//! The worker: owns partitions, runs course actors, group-commits their decisions, and answers.
//!
//! `run` is the whole lifecycle. It prepares the database once, then runs broker sessions: a
//! session connects, declares the topology, acquires partitions and consumes them until shutdown
//! (or until the broker connection fails, after which a new session starts with backoff).

mod committer;
mod draw_clock;
mod fault;
pub mod health;
mod intake;
mod judge;
mod ownership;
mod registry_watch;
mod session;
mod shutdown;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use self::health::Health;
pub use self::shutdown::Left;
use self::shutdown::{STORE_CALL_WITHIN, Shutdown, TEARDOWN_WITHIN};
use crate::amqp::Topology;
use crate::course::RestartPolicy;
use crate::store::Store;

/// Everything a worker is configured with; built by the CLI from flags and environment.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub database_url: String,
    pub topology: Topology,
    /// This worker's identity in the ownership table and in the broker's connection list.
    pub worker_id: String,
    /// Unacked deliveries per partition consumer.
    pub prefetch: u16,
    pub mailbox: usize,
    pub max_actors: usize,
    pub idle_timeout: Duration,
    /// Most decisions in one transaction.
    pub batch_max: usize,
    /// How long the committer waits for more decisions before committing a batch that is not
    /// full; under load, batches fill while the previous one commits and this never applies.
    pub batch_linger: Duration,
    /// How long a partition lease lasts without renewal (the failover time after a crash).
    pub lease: Duration,
    /// How long a graceful shutdown waits for in-flight requests to be committed and acked.
    pub drain_timeout: Duration,
    /// Pause between a partition's last ack and closing its channel when it is handed over, so
    /// the broker applies the acks before it sees the channel close. RabbitMQ applies
    /// quorum-queue acks asynchronously: a channel closed right after its last acks can return
    /// some just-acked messages to the queue. Observed on 3.10 in 4 of 10 shutdowns mid-burst;
    /// with this pause, in none of 10. Such a message is acked without a second answer anyway
    /// (see the finalizer).
    pub settle_grace: Duration,
    pub db_connections: u32,
    pub restarts: RestartPolicy,
    /// How often at most the catalog of course ids is re-read on a miss.
    pub catalog_refresh: Duration,
    /// Broker users whose `configure` requests are applied; anyone else's are answered
    /// `forbidden`. Defaults to the worker's own broker user.
    pub admin_users: Vec<String>,
    /// Where to serve `/livez` and `/readyz`; none by default.
    pub http_addr: Option<std::net::SocketAddr>,
    /// How final answers are published on the events exchange.
    pub final_events: crate::protocol::FinalEvents,
    /// Entries a draw course takes at most before answering `entries_full`: the bound on what
    /// one course actor holds for its draw.
    pub draw_entries: usize,
}

impl WorkerConfig {
    // The defaults, in one place: `new` uses them and the command line shows them.
    /// A delivery stays unacked from its arrival until its batch is committed and answered,
    /// so a partition moves at most a prefetch's worth per commit cycle. A hot course has one
    /// partition: with 250 the worker took a 10,000-student rush on one course at 12,800-13,500
    /// requests/s while the broker offered 21,000-23,000; with 1,000, at 15,900-16,600
    /// (alternating rushes). On the burst over 300 courses the two measured the same.
    pub const DEFAULT_PREFETCH: u16 = 1000;
    pub const DEFAULT_MAILBOX: usize = 512;
    pub const DEFAULT_MAX_ACTORS: usize = 5000;
    pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
    pub const DEFAULT_BATCH_MAX: usize = 1000;
    pub const DEFAULT_BATCH_LINGER_MS: u64 = 5;
    pub const DEFAULT_LEASE_MS: u64 = 6000;
    /// A shorter lease would expire between two heartbeats of a busy worker.
    pub const MIN_LEASE_MS: u64 = 300;
    pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
    pub const DEFAULT_SETTLE_GRACE_MS: u64 = 1000;
    pub const DEFAULT_DB_CONNECTIONS: u32 = 8;
    /// One connection commits while another serves heartbeats and actor loads.
    pub const MIN_DB_CONNECTIONS: u32 = 2;
    pub const DEFAULT_RESTARTS: RestartPolicy = RestartPolicy {
        max_restarts: 5,
        window: Duration::from_secs(30),
    };
    pub const DEFAULT_CATALOG_REFRESH: Duration = Duration::from_secs(1);

    /// Defaults for everything but the URLs.
    pub fn new(amqp_url: String, database_url: String) -> Self {
        let admin_users = crate::amqp::url_user(&amqp_url).into_iter().collect();
        Self {
            amqp_url,
            database_url,
            topology: Topology::new(Topology::DEFAULT_PREFIX, Topology::DEFAULT_PARTITIONS),
            worker_id: format!("worker-{}", uuid::Uuid::new_v4().simple()),
            prefetch: Self::DEFAULT_PREFETCH,
            mailbox: Self::DEFAULT_MAILBOX,
            max_actors: Self::DEFAULT_MAX_ACTORS,
            idle_timeout: Duration::from_secs(Self::DEFAULT_IDLE_TIMEOUT_SECS),
            batch_max: Self::DEFAULT_BATCH_MAX,
            batch_linger: Duration::from_millis(Self::DEFAULT_BATCH_LINGER_MS),
            lease: Duration::from_millis(Self::DEFAULT_LEASE_MS),
            drain_timeout: Duration::from_secs(Self::DEFAULT_DRAIN_TIMEOUT_SECS),
            settle_grace: Duration::from_millis(Self::DEFAULT_SETTLE_GRACE_MS),
            db_connections: Self::DEFAULT_DB_CONNECTIONS,
            restarts: Self::DEFAULT_RESTARTS,
            catalog_refresh: Self::DEFAULT_CATALOG_REFRESH,
            admin_users,
            http_addr: None,
            final_events: crate::protocol::FinalEvents::default(),
            draw_entries: crate::course::DEFAULT_ENTRIES_LIMIT,
        }
    }
}

/// Runs a worker until `shutdown` is cancelled, then drains and returns; what the drain could
/// not finish is logged (see [`run_reporting`]) but not an error.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_reporting(config, shutdown).await.map(drop)
}

/// Runs a worker until `shutdown` is cancelled, then drains it and returns what the drain left
/// to the broker; an error only if the worker could not start.
///
/// The stop ends within the drain timeout plus a few seconds whatever the state of the broker
/// and the database: the drain gives up at its timeout, each teardown step is bounded, and a
/// session whose teardown still does not end is abandoned (its connection closes when the
/// process exits, which returns its deliveries). Cancelled before the worker started, it
/// returns at once: nothing was taken yet.
pub async fn run_reporting(
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Left> {
    // Bound before anything else: a port already taken is a start-up error the operator sees at
    // once, not an endpoint missing while the worker runs (and its probes fail unexplained).
    let endpoint = match config.http_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the health endpoint to {addr}"))?,
        ),
        None => None,
    };
    let (shutdown, timer) = Shutdown::new(shutdown, config.drain_timeout);
    let ended = match shutdown.unless_requested(prepare(&config)).await {
        Some(Ok(store)) => Ok(serve(&config, store, endpoint, &shutdown).await),
        Some(Err(e)) => Err(e),
        None => {
            tracing::info!(worker_id = %config.worker_id, "stopped before starting: nothing was taken from the broker");
            Ok(Left::default())
        }
    };
    timer.abort();
    ended
}

/// Connects the store, applies the migrations, checks the partition count and registers the
/// worker. Each of these may wait long on a database that is down (the pool's acquire
/// timeout) or forever on one that is stalled; the caller stops waiting on shutdown.
async fn prepare(config: &WorkerConfig) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url, config.db_connections)
        .await
        .context("connecting to PostgreSQL")?;
    store.migrate().await.context("running migrations")?;
    store
        .ensure_partitions(config.topology.partitions)
        .await
        .context("checking the partition count")?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    store
        .register_worker(&config.worker_id, &host, std::process::id())
        .await
        .context("registering the worker")?;
    Ok(store)
}

/// How long the health endpoint may take to stop once the worker is stopping.
const HEALTH_ENDPOINT_WITHIN: Duration = Duration::from_secs(1);

/// Runs broker sessions until shutdown, then deregisters and reports what was left.
async fn serve(
    config: &WorkerConfig,
    store: Store,
    endpoint: Option<tokio::net::TcpListener>,
    shutdown: &Shutdown,
) -> Left {
    // The URLs are logged without their passwords, like every URL this worker logs.
    tracing::info!(
        worker_id = %config.worker_id,
        partitions = config.topology.partitions,
        amqp_url = %crate::telemetry::redact(&config.amqp_url),
        database_url = %crate::telemetry::redact(&config.database_url),
        http_addr = ?config.http_addr,
        final_events = config.final_events.as_str(),
        lease_ms = config.lease.as_millis(),
        "worker started"
    );

    let health = Arc::new(Health::default());
    let background = CancellationToken::new();
    let watcher = tokio::spawn(health::watch_database(
        store.clone(),
        health.clone(),
        background.clone(),
    ));
    let recorder = crate::telemetry::metrics::install();
    let server = endpoint.map(|listener| {
        tokio::spawn(health::serve(
            listener,
            health.clone(),
            recorder.clone(),
            background.clone(),
        ))
    });

    let left = sessions(config, &store, &health, shutdown).await;
    background.cancel();
    let _ = watcher.await;
    // The endpoint stops on `background` once its open requests are answered; a client that
    // holds one open is not waited for.
    if let Some(mut server) = server {
        match tokio::time::timeout(HEALTH_ENDPOINT_WITHIN, &mut server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = format!("{e:#}"), "health endpoint failed"),
            Ok(_) => {}
            Err(_) => server.abort(),
        }
    }
    match tokio::time::timeout(
        STORE_CALL_WITHIN,
        store.deregister_worker(&config.worker_id),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::telemetry::chain(&e), "could not deregister the worker; it drops out of the fair share when its heartbeat is a lease old")
        }
        Err(_) => {
            tracing::warn!(within = ?STORE_CALL_WITHIN, "could not deregister the worker in time; it drops out of the fair share when its heartbeat is a lease old")
        }
    }
    // Closing waits for connections in use; one stuck on a stalled server is dropped with the
    // process instead.
    if tokio::time::timeout(STORE_CALL_WITHIN, store.close())
        .await
        .is_err()
    {
        tracing::debug!("database connections not closed in time; dropping them");
    }
    report(&config.worker_id, &left);
    left
}

/// Runs one broker session after the other (with backoff between them) until shutdown; returns
/// what the last one left.
async fn sessions(
    config: &WorkerConfig,
    store: &Store,
    health: &Health,
    shutdown: &Shutdown,
) -> Left {
    // Capped at 3 s: after a broker restart, students wait for the next attempt.
    let mut delays = crate::retry::delays(Duration::from_millis(200), Duration::from_secs(3));
    loop {
        // The backstop of the guarantee that a stop ends in time: each step of a teardown is
        // bounded, but should one still hang, the session is dropped TEARDOWN_WITHIN after the
        // drain expired. Its connection then closes when the process exits, so the broker
        // still gets back every delivery it held.
        let abandoned = async {
            shutdown.expired().await;
            tokio::time::sleep(TEARDOWN_WITHIN).await;
        };
        let ended = tokio::select! {
            ended = session::run(config, store, health, shutdown) => ended,
            () = abandoned => {
                tracing::warn!(within = ?TEARDOWN_WITHIN, "the session's teardown did not end in time after the drain expired; abandoning it");
                session::Ended { left: Left { abandoned: true, ..Left::default() }, fault: None }
            }
        };
        health.set_broker(false);
        let Some(e) = ended.fault else {
            return ended.left;
        };
        if shutdown.is_requested() {
            tracing::warn!(
                error = format!("{e:#}"),
                "the broker session failed while stopping"
            );
            return ended.left;
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(3));
        tracing::warn!(
            error = format!("{e:#}"),
            ?delay,
            "broker session ended; reconnecting"
        );
        tokio::select! {
            // What that session held went back with its connection; only partitions it could
            // not release are still left, to lapse.
            () = shutdown.requested() => return Left { unreleased: ended.left.unreleased, ..Left::default() },
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The last line a worker logs: whether its stop was clean, and if not, what it left to whom.
fn report(worker_id: &str, left: &Left) {
    if left.is_empty() {
        tracing::info!(%worker_id, "worker stopped: every delivery taken was committed and acked, every partition released");
        return;
    }
    let unreleased: Vec<String> = left.unreleased.iter().map(ToString::to_string).collect();
    tracing::warn!(
        %worker_id,
        returned = left.returned,
        unreleased = %unreleased.join(","),
        abandoned = left.abandoned,
        "worker stopped without finishing its drain: {} deliveries returned to the broker unacked (redelivered, committed ones replay their outcome), {} partitions left to lapse with their lease",
        left.returned,
        left.unreleased.len()
    );
}
