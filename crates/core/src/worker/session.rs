//! One broker session: everything that lives as long as one AMQP connection.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::WorkerConfig;
use super::committer::Committer;
use super::health::Health;
use super::intake::Intake;
use super::ownership::Ownership;
use crate::amqp::{Broker, Outbox};
use crate::course::{ActorContext, Catalog, Close, Registry, RegistryConfig};
use crate::pipeline::InFlight;
use crate::store::Store;

/// Lets any task of the session end it with an error (a lost connection, a refused publish).
#[derive(Clone, Default)]
pub(super) struct Fault {
    token: CancellationToken,
    error: Arc<Mutex<Option<anyhow::Error>>>,
}

impl Fault {
    pub(super) fn raise(&self, error: anyhow::Error) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(error);
        }
        self.token.cancel();
    }

    /// Resolves once a fault was raised.
    pub(super) async fn raised(&self) {
        self.token.cancelled().await;
    }

    pub(super) fn take(&self) -> Option<anyhow::Error> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

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
    health.set_broker(true);
    // Provisional and final answers share one outbox and one channel, so a client's queue
    // receives them in that order.
    let (outbox, outbox_task) = Outbox::start(publisher, config.batch_max * 4);

    let fault = Fault::default();
    let tasks = TaskTracker::new();
    let in_flight = InFlight::default();
    let (to_committer, from_actors) = mpsc::channel(config.batch_max * 4);
    let ctx = Arc::new(ActorContext {
        store: store.clone(),
        outbox: outbox.clone(),
        topology: config.topology.clone(),
        committer: to_committer,
        restarts: config.restarts,
    });
    let registry = Registry::new(
        Catalog::new(store.clone(), config.catalog_refresh),
        ctx.clone(),
        RegistryConfig {
            mailbox: config.mailbox,
            max_actors: config.max_actors,
            idle_timeout: config.idle_timeout,
        },
    );

    // Stops the consumers; cancelled first on shutdown so in-flight work can finish.
    let stop_intake = CancellationToken::new();
    // Stops the committer and the sweeper, once nothing is in flight any more.
    let stop_pipeline = CancellationToken::new();

    let committer = Committer {
        store: store.clone(),
        outbox,
        topology: config.topology.clone(),
        worker_id: config.worker_id.clone(),
        batch_max: config.batch_max,
        batch_linger: config.batch_linger,
        fault: fault.clone(),
    };
    tasks.spawn(committer.run(from_actors, stop_pipeline.clone()));
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
        broker: broker.clone(),
        registry: registry.clone(),
        ctx: ctx.clone(),
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
        grace: config
            .settle_grace
            .max(std::time::Duration::from_millis(500)),
        drain_timeout: config.drain_timeout,
        heartbeat_failing: Default::default(),
    };
    let owner = tokio::spawn(ownership.run(stop_intake.clone(), fault.token.clone()));

    tokio::select! {
        _ = shutdown.cancelled() => tracing::info!("shutting down: draining in-flight requests"),
        // Not ready from this moment: the teardown below may take a while.
        _ = fault.token.cancelled() => health.set_broker(false),
    }
    stop_intake.cancel();
    // On a graceful stop the ownership task hands every partition over, each once drained.
    // After a fault it only stops the consumers and hands back the partitions it held, with
    // their channels, to be closed and released below.
    let stopped = owner.await.unwrap_or_default();
    tracing::debug!("session teardown: consumers stopped");
    let mut faulted = fault.token.is_cancelled();
    if !faulted {
        let left = in_flight.drained(config.drain_timeout).await;
        if left > 0 {
            tracing::warn!(left, "drain timed out; the rest returns to the queues");
            faulted = true;
        }
    }
    stop_pipeline.cancel();
    tracing::debug!("session teardown: stopping the actors");
    registry
        .close(
            if faulted { Close::Halt } else { Close::Drain },
            config.drain_timeout,
        )
        .await;
    drop(ctx);
    tracing::debug!("session teardown: stopping the committer");
    tasks.close();
    if tokio::time::timeout(config.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        // Whatever they still hold returns to the queues when the connection closes below.
        tracing::warn!("the session's tasks did not stop in time; leaving them behind");
    }
    // Every sender of the outbox is gone with the registry and the intake: it ends once what
    // it holds is handed to the connection.
    drop(registry);
    if tokio::time::timeout(std::time::Duration::from_secs(10), outbox_task)
        .await
        .is_err()
    {
        tracing::warn!("the outbox did not finish within 10 s");
    }
    tracing::debug!("session teardown: closing the channels and the connection");
    for channel in stopped.channels {
        channel.close().await;
    }
    broker.close().await;
    // Released only after the connection is closed, so the next owner cannot get a delivery
    // this worker still holds unacked.
    if !stopped.partitions.is_empty()
        && let Err(e) = store
            .release_partitions(&config.worker_id, &stopped.partitions)
            .await
    {
        tracing::warn!(error = %crate::telemetry::chain(&e), "could not release partitions; their leases will expire");
    }
    match fault.take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
