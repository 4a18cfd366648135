//! One broker session: everything that lives as long as one AMQP connection.
//!
//! Its lifecycle, in order: `Session::open` connects, declares the topology and starts the
//! outbox; `start` wires the pipeline (committer, registry, sweeper, load sampler) and the
//! ownership task that consumes partitions; the session then runs until shutdown or a fault;
//! `stop` drains (graceful) or halts (fault) and tears everything down in the reverse order,
//! every wait bounded.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::WorkerConfig;
use super::committer::Committer;
use super::fault::Fault;
use super::health::Health;
use super::intake::Intake;
use super::ownership::{Ownership, Stopped};
use crate::amqp::{Broker, Outbox};
use crate::course::{ActorContext, Catalog, Close, Registry, RegistryConfig};
use crate::pipeline::{CommitQueue, InFlight};
use crate::store::Store;

/// How long the outbox may take to hand what it holds to the connection at the end.
const OUTBOX_WITHIN: Duration = Duration::from_secs(10);

/// Samples the load gauges (live actors, mailbox depths, in flight) once a second until `stop`.
async fn sample_load(registry: Registry, in_flight: InFlight, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (total, deepest) = registry.mailbox_depths();
        crate::telemetry::metrics::load(registry.live(), total, deepest, in_flight.count());
    }
}

/// Runs until `shutdown` (then drains: stop consuming, commit and ack what is in flight, release
/// the partitions) or until a fault (then returns the error; unacked messages are redelivered).
pub(super) async fn run(
    config: &WorkerConfig,
    store: &Store,
    health: &Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let session = Session::open(config).await?;
    health.set_broker(true);
    let running = session.start(config, store);
    tokio::select! {
        _ = shutdown.cancelled() => tracing::info!("shutting down: draining in-flight requests"),
        // Not ready from this moment: the teardown below may take a while.
        _ = running.fault.raised() => health.set_broker(false),
    }
    running.stop(config, store).await
}

/// A connected session, before its pipeline starts.
struct Session {
    broker: Arc<Broker>,
    outbox: Outbox,
    outbox_task: JoinHandle<()>,
}

/// A session whose pipeline and consumers run.
struct Running {
    broker: Arc<Broker>,
    outbox_task: JoinHandle<()>,
    fault: Fault,
    tasks: TaskTracker,
    in_flight: InFlight,
    registry: Registry,
    /// Stops the consumers; cancelled first on shutdown so in-flight work can finish.
    stop_intake: CancellationToken,
    /// Stops the committer and the sweeper, once nothing is in flight any more.
    stop_pipeline: CancellationToken,
    owner: JoinHandle<Stopped>,
}

impl Session {
    async fn open(config: &WorkerConfig) -> anyhow::Result<Self> {
        let broker = Arc::new(
            Broker::connect(&config.amqp_url, &config.worker_id)
                .await
                .context("connecting to RabbitMQ")?,
        );
        broker
            .declare(&config.topology)
            .await
            .context("declaring the topology (is the consistent-hash exchange plugin enabled?)")?;
        let publisher = broker
            .confirmed_publisher()
            .await
            .context("opening the answer channel")?;
        // Provisional and final answers share one outbox and one channel, so a client's queue
        // receives them in that order.
        let (outbox, outbox_task) = Outbox::start(publisher, config.batch_max * 4);
        Ok(Self {
            broker,
            outbox,
            outbox_task,
        })
    }

    /// Wires the pipeline front to back (committer, then the actors' registry, then the
    /// intake that feeds it) and starts consuming the partitions this worker owns.
    fn start(self, config: &WorkerConfig, store: &Store) -> Running {
        let fault = Fault::default();
        let tasks = TaskTracker::new();
        let in_flight = InFlight::default();
        let (to_committer, from_actors) = mpsc::channel(config.batch_max * 4);
        let commit = CommitQueue::new(self.outbox.clone(), to_committer);
        let committer = Committer {
            store: store.clone(),
            outbox: self.outbox.clone(),
            topology: config.topology.clone(),
            worker_id: config.worker_id.clone(),
            batch_max: config.batch_max,
            batch_linger: config.batch_linger,
            fault: fault.clone(),
        };
        let stop_pipeline = CancellationToken::new();
        tasks.spawn(committer.run(from_actors, stop_pipeline.clone()));
        let registry = Registry::new(
            Catalog::new(store.clone(), config.catalog_refresh),
            Arc::new(ActorContext {
                store: store.clone(),
                outbox: self.outbox.clone(),
                topology: config.topology.clone(),
                commit: commit.clone(),
                restarts: config.restarts,
            }),
            RegistryConfig {
                mailbox: config.mailbox,
                max_actors: config.max_actors,
                idle_timeout: config.idle_timeout,
            },
        );
        tasks.spawn({
            let registry = registry.clone();
            let stop = stop_pipeline.clone();
            async move { registry.sweep_idle(stop).await }
        });
        tasks.spawn(sample_load(
            registry.clone(),
            in_flight.clone(),
            stop_pipeline.clone(),
        ));
        let intake = Intake {
            broker: self.broker.clone(),
            registry: registry.clone(),
            commit,
            outbox: self.outbox,
            topology: config.topology.clone(),
            prefetch: config.prefetch,
            fault: fault.clone(),
            admin_users: Arc::new(config.admin_users.clone()),
        };
        let ownership = Ownership {
            store: store.clone(),
            worker_id: config.worker_id.clone(),
            lease: config.lease,
            partitions: config.topology.partitions,
            intake,
            in_flight: in_flight.clone(),
            grace: config.settle_grace.max(Duration::from_millis(500)),
            drain_timeout: config.drain_timeout,
            heartbeat_failing: Default::default(),
        };
        let stop_intake = CancellationToken::new();
        let owner = tokio::spawn(ownership.run(stop_intake.clone(), fault.token()));
        Running {
            broker: self.broker,
            outbox_task: self.outbox_task,
            fault,
            tasks,
            in_flight,
            registry,
            stop_intake,
            stop_pipeline,
            owner,
        }
    }
}

impl Running {
    /// Tears the session down in the reverse order of `start`; returns the fault, if any.
    async fn stop(self, config: &WorkerConfig, store: &Store) -> anyhow::Result<()> {
        self.stop_intake.cancel();
        // On a graceful stop the ownership task hands every partition over, each once drained.
        // After a fault it only stops the consumers and hands back the partitions it held, with
        // their channels, to be closed and released below.
        let stopped = self.owner.await.unwrap_or_default();
        tracing::debug!("session teardown: consumers stopped");
        let mut faulted = self.fault.is_raised();
        if !faulted {
            let left = self.in_flight.drained(config.drain_timeout).await;
            if left > 0 {
                tracing::warn!(left, "drain timed out; the rest returns to the queues");
                faulted = true;
            }
        }
        self.stop_pipeline.cancel();
        tracing::debug!("session teardown: stopping the actors");
        let how = if faulted { Close::Halt } else { Close::Drain };
        self.registry.close(how, config.drain_timeout).await;
        tracing::debug!("session teardown: stopping the committer");
        self.tasks.close();
        if tokio::time::timeout(config.drain_timeout, self.tasks.wait())
            .await
            .is_err()
        {
            // Whatever they still hold returns to the queues when the connection closes below.
            tracing::warn!("the session's tasks did not stop in time; leaving them behind");
        }
        // Every sender of the outbox is gone with the registry and the intake: it ends once
        // what it holds is handed to the connection.
        drop(self.registry);
        if tokio::time::timeout(OUTBOX_WITHIN, self.outbox_task)
            .await
            .is_err()
        {
            tracing::warn!("the outbox did not finish within {OUTBOX_WITHIN:?}");
        }
        close_and_release(&self.broker, stopped, config, store).await;
        match self.fault.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Closes the channels and the connection, then releases the partitions a fault left held:
/// only after the connection is closed, so the next owner cannot get a delivery this worker
/// still holds unacked.
async fn close_and_release(
    broker: &Broker,
    stopped: Stopped,
    config: &WorkerConfig,
    store: &Store,
) {
    tracing::debug!("session teardown: closing the channels and the connection");
    for channel in stopped.channels {
        channel.close().await;
    }
    broker.close().await;
    if !stopped.partitions.is_empty()
        && let Err(e) = store
            .release_partitions(&config.worker_id, &stopped.partitions)
            .await
    {
        tracing::warn!(error = %crate::telemetry::chain(&e), "could not release partitions; their leases will expire");
    }
}
