//! One broker session: everything that lives as long as its two AMQP connections (the first for
//! the default lane and the answers, the second for the named lanes and the dead letters).
//!
//! Its lifecycle, in order: `Session::open` connects, declares the topology and starts the
//! outbox; `start` wires the pipeline (committer, registry, sweeper, load sampler) and the
//! ownership task that consumes partitions; the session then runs until shutdown or a fault;
//! `stop` drains (graceful) or halts (fault) and tears everything down in the reverse order,
//! every wait bounded.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::WorkerConfig;
use super::committer::Committer;
use super::fault::Fault;
use super::health::Health;
use super::intake::Intake;
use super::ownership::{Ownership, Stopped, finish_handovers};
use super::registry_watch::RegistryWatch;
use super::shutdown::{
    CLOSE_HALTED_WITHIN, Halt, Left, STORE_CALL_WITHIN, Shutdown, finish_within, until_halted,
};
use crate::amqp::{Broker, Lanes, Outbox, RoutedAnswers};
use crate::course::{ActorContext, Catalog, Close, Registry, RegistryConfig};
use crate::domain::Partition;
use crate::pipeline::{CommitQueue, InFlight};
use crate::store::{Lease, Store};

/// How long opening a session may take: connecting, declaring the topology, opening the answer
/// channel. Milliseconds on a healthy broker; far above that for one busy declaring its queues.
const OPEN_WITHIN: Duration = Duration::from_secs(15);
/// How long the outbox may take to hand what it holds to the connection at the end.
const OUTBOX_WITHIN: Duration = Duration::from_secs(10);
/// Dead letters and answers to invalid deliveries queued for their outbox at most; each
/// partition's lanes hold at most `SETTLING_AT_ONCE` of them each in any case.
const REJECTS_QUEUED: usize = 1024;

/// How long a stage may take to stop once the session is halted: every stage watches the
/// halt, so this only bounds one that somehow does not.
const HALTED_WITHIN: Duration = Duration::from_secs(1);

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

/// How a session ended: what it left behind, and the fault that ended it, if one did.
#[derive(Default)]
pub(super) struct Ended {
    pub left: Left,
    pub fault: Option<anyhow::Error>,
}

/// Runs until shutdown (then drains: stop consuming, commit and ack what is in flight, release
/// the partitions, giving up on what is left when the drain expires) or until a fault (then
/// returns the error; unacked messages are redelivered).
pub(super) async fn run(
    config: &WorkerConfig,
    store: &Store,
    health: &Health,
    shutdown: &Shutdown,
) -> Ended {
    // Connecting to a broker that is stalled may never finish; nothing is held yet, so a stop
    // simply ends the attempt.
    let session = match shutdown.unless_requested(Session::open(config)).await {
        Some(Ok(session)) => session,
        Some(Err(e)) => {
            return Ended {
                fault: Some(e),
                ..Ended::default()
            };
        }
        None => return Ended::default(),
    };
    health.set_broker(true);
    let running = session.start(config, store, shutdown.halt_token());
    tokio::select! {
        () = shutdown.requested() => tracing::info!(drain_timeout = ?config.drain_timeout, "shutting down: draining in-flight requests"),
        // Not ready from this moment: the teardown below may take a while.
        _ = running.fault.raised() => health.set_broker(false),
    }
    running.stop(config, store).await
}

/// A connected session, before its pipeline starts.
struct Session {
    broker: Arc<Broker>,
    /// A second connection for what a flood fills: the answers to invalid deliveries and
    /// their dead letters, and the consumers of the named lanes. A connection is one TCP
    /// stream, read in order by one process in the broker and one I/O thread here, so on the
    /// first connection the valid requests' deliveries and answers never queue behind a
    /// flood's.
    bulk: Arc<Broker>,
    outbox: Outbox,
    outbox_task: JoinHandle<()>,
    /// Dead letters of invalid deliveries, on a channel of their own: a flood of them does not
    /// queue ahead of the valid requests' answers, in this worker or in the broker's channel
    /// process.
    rejects: Outbox,
    rejects_task: JoinHandle<()>,
    /// The answers to invalid deliveries, on channels of their own for the same reason; closed
    /// before the connections, with the consumers' channels.
    routed: RoutedAnswers,
}

/// A session whose pipeline and consumers run.
struct Running {
    broker: Arc<Broker>,
    bulk: Arc<Broker>,
    outbox_task: JoinHandle<()>,
    rejects_task: JoinHandle<()>,
    /// Closed with the consumers' channels, before the connections.
    routed: RoutedAnswers,
    fault: Fault,
    tasks: TaskTracker,
    in_flight: InFlight,
    registry: Registry,
    /// Comes when the drain expires, or at once after a fault: every stage gives up what it
    /// holds (unacked, so it returns to the broker) instead of waiting any longer.
    halt: Halt,
    /// Stops the consumers; cancelled first on shutdown so in-flight work can finish.
    stop_intake: CancellationToken,
    /// Stops the committer and the sweeper, once nothing is in flight any more.
    stop_pipeline: CancellationToken,
    owner: JoinHandle<Stopped>,
}

impl Session {
    /// Connects, declares and opens the answer channel, within [`OPEN_WITHIN`]: a broker (or a
    /// link to it) that accepts the connection and then says nothing must not hold the worker,
    /// which reconnects with backoff instead.
    async fn open(config: &WorkerConfig) -> anyhow::Result<Self> {
        tokio::time::timeout(OPEN_WITHIN, Self::open_unbounded(config))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the broker did not complete the session's opening within {OPEN_WITHIN:?}"
                )
            })?
    }

    async fn open_unbounded(config: &WorkerConfig) -> anyhow::Result<Self> {
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
        let bulk = Arc::new(
            Broker::connect(&config.amqp_url, &format!("{} (bulk)", config.worker_id))
                .await
                .context("connecting to RabbitMQ a second time")?,
        );
        let rejects = bulk
            .confirmed_publisher()
            .await
            .context("opening the dead-letter channel")?;
        let (rejects, rejects_task) = Outbox::start(rejects, REJECTS_QUEUED);
        let routed = RoutedAnswers::open(&bulk)
            .await
            .context("opening the channels answering invalid requests")?;
        Ok(Self {
            broker,
            bulk,
            outbox,
            outbox_task,
            rejects,
            rejects_task,
            routed,
        })
    }

    /// Wires the pipeline front to back (committer, then the actors' registry, then the
    /// intake that feeds it) and starts consuming the partitions this worker owns.
    fn start(self, config: &WorkerConfig, store: &Store, expiry: CancellationToken) -> Running {
        let fault = Fault::default();
        let tasks = TaskTracker::new();
        let in_flight = InFlight::default();
        let halt = Halt::follow(expiry, in_flight.clone());
        let (to_committer, from_actors) = mpsc::channel(config.batch_max * 4);
        let commit = CommitQueue::new(self.outbox.clone(), to_committer);
        let fenced = Arc::new(tokio::sync::Notify::new());
        let committer = Committer {
            store: store.clone(),
            outbox: self.outbox.clone(),
            topology: config.topology.clone(),
            final_events: config.final_events,
            broker_user: crate::amqp::url_user(&config.amqp_url),
            worker_id: config.worker_id.clone(),
            batch_max: config.batch_max,
            batch_linger: config.batch_linger,
            fault: fault.clone(),
            halt: halt.token().clone(),
            fenced: fenced.clone(),
        };
        let stop_pipeline = CancellationToken::new();
        tasks.spawn(committer.run(from_actors, stop_pipeline.clone()));
        let registry = Registry::new(
            Catalog::new(store.clone(), config.catalog_refresh),
            Arc::new(ActorContext {
                store: store.clone(),
                loads: crate::course::Loads::start(store.clone()),
                outbox: self.outbox.clone(),
                topology: config.topology.clone(),
                commit: commit.clone(),
                restarts: config.restarts,
                draw_entries: config.draw_entries,
            }),
            RegistryConfig {
                mailbox: config.mailbox,
                max_actors: config.max_actors,
                idle_timeout: config.idle_timeout,
            },
            halt.token().clone(),
        );
        tasks.spawn({
            let registry = registry.clone();
            let stop = stop_pipeline.clone();
            async move { registry.sweep_idle(stop).await }
        });
        // Without a broker user to sign wake-ups with, draws still happen, at the first
        // request at or after each opening.
        match crate::amqp::url_user(&config.amqp_url) {
            Some(user) => {
                let clock = super::draw_clock::DrawClock {
                    store: store.clone(),
                    outbox: self.outbox.clone(),
                    topology: config.topology.clone(),
                    user,
                };
                tasks.spawn(clock.run(stop_pipeline.clone()));
            }
            None => tracing::warn!(
                "the AMQP URL names no user: draw courses are not woken at their opening"
            ),
        }
        tasks.spawn(sample_load(
            registry.clone(),
            in_flight.clone(),
            stop_pipeline.clone(),
        ));
        let registry_watch = RegistryWatch::default();
        tasks.spawn(
            registry_watch
                .clone()
                .run(store.clone(), stop_pipeline.clone()),
        );
        let (judge, judging) = super::judge::Judge::start(store.clone(), stop_pipeline.clone());
        tasks.spawn(judging);
        let intake = Intake {
            broker: self.broker.clone(),
            bulk: self.bulk.clone(),
            courses: registry.clone(),
            registry: registry_watch,
            judge,
            commit,
            outbox: self.rejects,
            routed: self.routed.clone(),
            topology: config.topology.clone(),
            prefetch: config.prefetch,
            fault: fault.clone(),
            admin_users: Arc::new(config.admin_users.clone()),
            halt: halt.token().clone(),
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
            fenced,
        };
        let stop_intake = CancellationToken::new();
        let owner = tokio::spawn(ownership.run(stop_intake.clone(), fault.token()));
        Running {
            broker: self.broker,
            bulk: self.bulk,
            outbox_task: self.outbox_task,
            rejects_task: self.rejects_task,
            routed: self.routed,
            fault,
            tasks,
            in_flight,
            registry,
            halt,
            stop_intake,
            stop_pipeline,
            owner,
        }
    }
}

impl Running {
    /// Tears the session down in the reverse order of `start`; returns what it left behind
    /// and the fault, if any. Every wait ends by the halt (the drain's expiry, or at once after
    /// a fault) plus a bounded grace.
    async fn stop(self, config: &WorkerConfig, store: &Store) -> Ended {
        let faulted = self.fault.is_raised();
        if faulted {
            // Nothing can be drained: no ack can reach the broker any more.
            self.halt.now();
        }
        self.stop_intake.cancel();
        // On a graceful stop the ownership task hands every partition over, each once drained
        // or once the drain expires. After a fault it only stops the consumers and hands back
        // the partitions it held, with their channels, to be closed and released below.
        let stopped = self.owner.await.unwrap_or_default();
        tracing::debug!("session teardown: consumers stopped");
        // Counted when the halt came, before any stage gave up what it held on it.
        let returned = tokio::select! {
            biased;
            _ = self.halt.token().cancelled() => self.halt.in_flight_then(),
            () = self.in_flight.settled() => 0,
        };
        if returned > 0 {
            tracing::warn!(
                returned,
                faulted,
                "giving up on the deliveries still in flight; they return to the broker unacked"
            );
            self.halt.now();
        }
        self.stop_pipeline.cancel();
        stop_pipeline(
            self.registry,
            &self.tasks,
            [self.outbox_task, self.rejects_task],
            self.halt.token(),
        )
        .await;
        let mut left = Left {
            returned,
            ..Left::default()
        };
        let Stopped {
            partitions,
            channels,
            handovers,
            unreleased,
        } = stopped;
        left.unreleased = unreleased;
        left.unreleased
            .extend(finish_handovers(handovers, self.halt.token()).await);
        left.unreleased.extend(
            close_and_release(
                [&self.broker, &self.bulk],
                partitions,
                channels,
                &self.routed,
                self.halt.token(),
                config,
                store,
            )
            .await,
        );
        Ended {
            left,
            fault: self.fault.take(),
        }
    }
}

/// Stops the actors, then the committer and the other tasks, then the outbox, each bounded by
/// the halt.
async fn stop_pipeline(
    registry: Registry,
    tasks: &TaskTracker,
    outbox_tasks: [JoinHandle<()>; 2],
    halt: &CancellationToken,
) {
    tracing::debug!("session teardown: stopping the actors");
    let how = if halt.is_cancelled() {
        Close::Halt
    } else {
        Close::Drain
    };
    registry.close(how).await;
    tracing::debug!("session teardown: stopping the committer");
    tasks.close();
    if until_halted(tasks.wait(), halt, HALTED_WITHIN)
        .await
        .is_none()
    {
        // Whatever they still hold returns to the queues when the connection closes below.
        tracing::warn!("the session's tasks did not stop in time; leaving them behind");
    }
    // Every sender of the outbox is gone with the registry and the intake: it ends once
    // what it holds is handed to the connection. Once halted, nothing it holds is worth
    // waiting for: final answers not confirmed are sent again after the redelivery.
    drop(registry);
    let outbox_within = if halt.is_cancelled() {
        HALTED_WITHIN
    } else {
        OUTBOX_WITHIN
    };
    // Both finish together, within one bound.
    let finished = join_all(outbox_tasks.map(|task| finish_within(task, outbox_within))).await;
    if finished.contains(&false) {
        tracing::warn!("an outbox did not finish within {outbox_within:?}; dropping what it holds");
    }
}

/// Closes the channels and the connections, then releases the partitions a fault left held:
/// only after the connections are closed, so the next owner cannot get a delivery this worker
/// still holds unacked. Returns the partitions it could not release.
async fn close_and_release(
    brokers: [&Broker; 2],
    partitions: Vec<Lease>,
    channels: Vec<Lanes>,
    routed: &RoutedAnswers,
    halt: &CancellationToken,
    config: &WorkerConfig,
    store: &Store,
) -> Vec<Partition> {
    tracing::debug!("session teardown: closing the channels and the connection");
    // Each close is bounded; closed together, they take one bound, not one per channel. Once
    // halted, a broker that does not confirm is not waited for: dropping the connection (at
    // the latest when the process exits) returns the deliveries all the same.
    let closing = futures::future::join(
        join_all(channels.into_iter().map(Lanes::close)),
        routed.close(),
    );
    until_halted(closing, halt, CLOSE_HALTED_WITHIN).await;
    let closing = join_all(brokers.map(Broker::close));
    if until_halted(closing, halt, CLOSE_HALTED_WITHIN)
        .await
        .is_none()
    {
        tracing::debug!("closing the broker connections was not confirmed in time");
    }
    if partitions.is_empty() {
        return Vec::new();
    }
    let unreleased = || partitions.iter().map(|l| l.partition).collect();
    match tokio::time::timeout(
        STORE_CALL_WITHIN,
        store.release_partitions(&config.worker_id, &partitions),
    )
    .await
    {
        Ok(Ok(())) => Vec::new(),
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::telemetry::chain(&e), "could not release partitions; their leases will lapse");
            unreleased()
        }
        Err(_) => {
            tracing::warn!(within = ?STORE_CALL_WITHIN, "could not release partitions in time; their leases will lapse");
            unreleased()
        }
    }
}
