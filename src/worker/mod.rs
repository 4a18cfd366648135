//! The worker: owns partitions, runs course actors, group-commits their decisions, and answers.
//!
//! `run` is the whole lifecycle. It prepares the database once, then runs broker sessions: a
//! session connects, declares the topology, acquires partitions and consumes them until shutdown
//! (or until the broker connection fails, after which a new session starts with backoff).

mod committer;
pub mod health;
mod intake;
mod ownership;
mod session;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use self::health::Health;
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
}

impl WorkerConfig {
    /// Defaults for everything but the URLs.
    pub fn new(amqp_url: String, database_url: String) -> Self {
        let admin_users = crate::amqp::url_user(&amqp_url).into_iter().collect();
        Self {
            amqp_url,
            database_url,
            topology: Topology {
                prefix: "seatrush".into(),
                partitions: 16,
                delivery_limit: 20,
                max_queue_length: 1_000_000,
            },
            worker_id: format!("worker-{}", uuid::Uuid::new_v4().simple()),
            prefetch: 250,
            mailbox: 512,
            max_actors: 5000,
            idle_timeout: Duration::from_secs(60),
            batch_max: 1000,
            batch_linger: Duration::from_millis(5),
            lease: Duration::from_secs(6),
            drain_timeout: Duration::from_secs(30),
            settle_grace: Duration::from_secs(1),
            db_connections: 8,
            restarts: RestartPolicy {
                max_restarts: 5,
                window: Duration::from_secs(30),
            },
            catalog_refresh: Duration::from_secs(1),
            admin_users,
            http_addr: None,
        }
    }
}

/// Runs a worker until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
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
    // The URLs are logged without their passwords, like every URL this worker logs.
    tracing::info!(
        worker_id = %config.worker_id,
        partitions = config.topology.partitions,
        amqp_url = %crate::telemetry::redact(&config.amqp_url),
        database_url = %crate::telemetry::redact(&config.database_url),
        http_addr = ?config.http_addr,
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
    let server = config.http_addr.map(|addr| {
        tokio::spawn(health::serve(
            addr,
            health.clone(),
            recorder.clone(),
            background.clone(),
        ))
    });

    // Capped at 3 s: after a broker restart, students wait for the next attempt.
    let mut delays = crate::retry::delays(Duration::from_millis(200), Duration::from_secs(3));
    let outcome = loop {
        let ended = session::run(&config, &store, &health, shutdown.clone()).await;
        health.set_broker(false);
        match ended {
            Ok(()) => break Ok(()),
            Err(e) if shutdown.is_cancelled() => break Err(e),
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(3));
                tracing::warn!(
                    error = format!("{e:#}"),
                    ?delay,
                    "broker session ended; reconnecting"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    background.cancel();
    let _ = watcher.await;
    if let Some(server) = server
        && let Ok(Err(e)) = server.await
    {
        tracing::warn!(error = format!("{e:#}"), "health endpoint failed");
    }
    if let Err(e) = store.deregister_worker(&config.worker_id).await {
        tracing::warn!(error = %crate::telemetry::chain(&e), "could not deregister the worker");
    }
    store.close().await;
    tracing::info!(worker_id = %config.worker_id, "worker stopped");
    outcome
}
