//! `seatrush worker`: its flags, mapped onto the library's `WorkerConfig`, whose constants are
//! the one source of every default shown here.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::common::Common;
use super::parse::at_least;
use seatrush_core::amqp::Topology;
use seatrush_core::protocol::FinalEvents;
use seatrush_core::worker::{self, WorkerConfig};

#[derive(Args)]
pub struct WorkerArgs {
    /// This worker's id (default: random).
    #[arg(long, env = "SEATRUSH_WORKER_ID")]
    worker_id: Option<String>,
    /// Threads of the worker's async runtime (default: one per core). The broker client
    /// reads and writes on a thread of its own besides these.
    #[arg(long, env = "SEATRUSH_RUNTIME_THREADS", value_parser = at_least::<usize>(1))]
    pub runtime_threads: Option<usize>,
    /// Unacked deliveries per partition.
    #[arg(long, env = "SEATRUSH_PREFETCH", default_value_t = WorkerConfig::DEFAULT_PREFETCH,
          value_parser = at_least::<u16>(1))]
    prefetch: u16,
    /// Requests a course actor's mailbox holds.
    #[arg(long, env = "SEATRUSH_MAILBOX", default_value_t = WorkerConfig::DEFAULT_MAILBOX,
          value_parser = at_least::<usize>(1))]
    mailbox: usize,
    /// Live course actors at most.
    #[arg(long, env = "SEATRUSH_MAX_ACTORS", default_value_t = WorkerConfig::DEFAULT_MAX_ACTORS,
          value_parser = at_least::<usize>(1))]
    max_actors: usize,
    /// Seconds a course actor may sit idle before it stops.
    #[arg(long, env = "SEATRUSH_IDLE_TIMEOUT_SECS",
          default_value_t = WorkerConfig::DEFAULT_IDLE_TIMEOUT_SECS)]
    idle_timeout_secs: u64,
    /// Most decisions per transaction.
    #[arg(long, env = "SEATRUSH_BATCH_MAX", default_value_t = WorkerConfig::DEFAULT_BATCH_MAX,
          value_parser = at_least::<usize>(1))]
    batch_max: usize,
    /// Milliseconds to wait for more decisions before committing a batch that is not full.
    #[arg(long, env = "SEATRUSH_BATCH_LINGER_MS",
          default_value_t = WorkerConfig::DEFAULT_BATCH_LINGER_MS)]
    batch_linger_ms: u64,
    /// Milliseconds a partition lease lasts without renewal (at least 300).
    #[arg(long, env = "SEATRUSH_LEASE_MS", default_value_t = WorkerConfig::DEFAULT_LEASE_MS,
          value_parser = at_least(WorkerConfig::MIN_LEASE_MS))]
    lease_ms: u64,
    /// Seconds a graceful shutdown waits for in-flight requests; what is left then returns to
    /// the broker unacked, and the worker exits 3 instead of 0.
    #[arg(long, env = "SEATRUSH_DRAIN_TIMEOUT_SECS",
          default_value_t = WorkerConfig::DEFAULT_DRAIN_TIMEOUT_SECS)]
    drain_timeout_secs: u64,
    /// Milliseconds between the last ack and closing the channels on shutdown, so the broker
    /// applies the acks first.
    #[arg(long, env = "SEATRUSH_SETTLE_GRACE_MS",
          default_value_t = WorkerConfig::DEFAULT_SETTLE_GRACE_MS)]
    settle_grace_ms: u64,
    /// Deliveries of one message before the broker dead-letters it.
    #[arg(long, env = "SEATRUSH_DELIVERY_LIMIT", default_value_t = Topology::DEFAULT_DELIVERY_LIMIT,
          value_parser = at_least::<u32>(1))]
    delivery_limit: u32,
    /// Messages a partition queue holds before publishes are refused.
    #[arg(long, env = "SEATRUSH_MAX_QUEUE_LENGTH",
          default_value_t = Topology::DEFAULT_MAX_QUEUE_LENGTH, value_parser = at_least::<u32>(1))]
    max_queue_length: u32,
    /// Database connections of this worker for loading courses, ownership and health (at
    /// least 2); the group commit has 2 more of its own.
    #[arg(long, env = "SEATRUSH_DB_CONNECTIONS",
          default_value_t = WorkerConfig::DEFAULT_DB_CONNECTIONS,
          value_parser = at_least(WorkerConfig::MIN_DB_CONNECTIONS))]
    db_connections: u32,
    /// Broker users whose course changes (`configure` requests) are applied, comma-separated
    /// (default: the user of the worker's AMQP URL).
    #[arg(long, env = "SEATRUSH_ADMIN_USERS", value_delimiter = ',')]
    admin_users: Vec<String>,
    /// Serve `/livez`, `/readyz` and `/metrics` on this address (for example 127.0.0.1:9090).
    #[arg(long, env = "SEATRUSH_HTTP_ADDR")]
    http_addr: Option<std::net::SocketAddr>,
    /// How final answers go to the events exchange: `batched` (one message per group commit,
    /// routing key `finals`) or `per-request` (one message per answer, routing key
    /// `final.<course>.<student>`, so a subscriber can bind to one student; one broker message
    /// more per request).
    #[arg(long, env = "SEATRUSH_FINAL_EVENTS", default_value_t = FinalEvents::Batched)]
    final_events: FinalEvents,
    /// Entries a draw course takes at most before answering `entries_full` (what one course
    /// actor holds for its draw).
    #[arg(long, env = "SEATRUSH_DRAW_ENTRIES",
          default_value_t = seatrush_core::course::DEFAULT_ENTRIES_LIMIT,
          value_parser = at_least::<usize>(1))]
    draw_entries: usize,
}

impl WorkerArgs {
    fn config(self, common: &Common) -> anyhow::Result<WorkerConfig> {
        let mut config = WorkerConfig::new(common.amqp_url()?, common.database_url()?);
        config.topology = Topology {
            delivery_limit: self.delivery_limit,
            max_queue_length: self.max_queue_length,
            ..common.topology()
        };
        if let Some(id) = self.worker_id {
            config.worker_id = id;
        }
        config.prefetch = self.prefetch;
        config.mailbox = self.mailbox;
        config.max_actors = self.max_actors;
        config.idle_timeout = Duration::from_secs(self.idle_timeout_secs);
        config.batch_max = self.batch_max;
        config.batch_linger = Duration::from_millis(self.batch_linger_ms);
        config.lease = Duration::from_millis(self.lease_ms);
        config.drain_timeout = Duration::from_secs(self.drain_timeout_secs);
        config.settle_grace = Duration::from_millis(self.settle_grace_ms);
        config.db_connections = self.db_connections;
        config.http_addr = self.http_addr;
        config.final_events = self.final_events;
        config.draw_entries = self.draw_entries;
        if !self.admin_users.is_empty() {
            config.admin_users = self.admin_users;
        }
        Ok(config)
    }
}

/// The exit status of a worker that stopped on SIGTERM or SIGINT but could not finish its
/// drain (the database or the broker did not answer in time): it returned deliveries to the
/// broker unacked, or left partitions to lapse with their lease. Nothing is lost (those
/// deliveries are redelivered to whichever worker owns their partition next), but the stop was
/// not clean, and the last log line says what was left. A clean drain exits 0; a worker that
/// could not start, or any other error, exits 2.
pub const EXIT_DRAIN_UNFINISHED: u8 = 3;

/// Runs a worker until SIGINT or SIGTERM, then drains it; the exit status says whether the
/// drain finished.
pub async fn run(common: &Common, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let config = args.config(common)?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(&shutdown)?;
    let left = worker::run_reporting(config, shutdown).await?;
    Ok(if left.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DRAIN_UNFINISHED)
    })
}

/// Cancels `shutdown` on SIGINT or SIGTERM. The SIGTERM handler is registered before this
/// returns, so a signal that comes early drains instead of killing the process.
pub fn cancel_on_signal(shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        shutdown.cancel();
    });
    Ok(())
}
