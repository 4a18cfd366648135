//! The intake ceiling: the request stream published persistent and confirmed into the partition
//! queues, delivered and acked, and nothing else: no answer, no decision, no course. No design
//! that takes its requests through RabbitMQ can beat it, since every such design does at least
//! this much with each request.
//!
//! Two kinds of partition queue are measured:
//! - [`IntakeQueues::Quorum`] (`quorum.rs`): the quorum queues exactly as seatrush declares
//!   them, consumed with seatrush's own consumer (its acks coalesced with `multiple`);
//! - [`IntakeQueues::Stream`] (`stream.rs`): RabbitMQ streams behind the same consistent-hash
//!   exchange, consumed over AMQP 0-9-1, each batch's last offset committed to PostgreSQL in the
//!   same transaction as a per-batch write (`offsets.rs`), as a Kafka consumer commits its
//!   offsets with its output.
//!
//! Throughput counts from the first publish until the consumers have acked the last delivery.

mod offsets;
mod quorum;
mod stream;

pub(super) use quorum::next_batch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cpu::{CpuShare, Servers};
use seatrush_core::amqp::{Broker, Outbox, Outgoing, Topology};
use seatrush_core::domain::Request;
use seatrush_core::protocol::request_body;

/// Most deliveries taken as one batch: whatever the broker has delivered at once, up to this.
/// The prefetch bounds a batch too, since a consumer holds at most that many unacked.
pub(super) const BATCH_MAX: usize = 500;

/// Publishes not yet confirmed at most, as the crowd's publisher keeps them: bounds the
/// publisher's memory and keeps the broker's flow control out of the way.
const CONFIRM_WINDOW: usize = 2000;

/// How many messages the outbox queues before a post waits.
const OUTBOX_CAPACITY: usize = 4000;

/// How long a stopped consumer may take to finish the batch it holds, and each step of the
/// teardown: far above a healthy wait, bounded so that a broken broker cannot hold the bench.
pub(super) const STEP_WITHIN: Duration = Duration::from_secs(10);

/// Which kind of partition queue the requests go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntakeQueues {
    /// Quorum queues with seatrush's arguments (single active consumer, delivery limit,
    /// dead-letter exchange, length limit).
    Quorum,
    /// RabbitMQ streams, with the consumers' offsets committed to PostgreSQL.
    Stream,
}

/// What one intake run measured.
#[derive(Debug, Clone, Serialize)]
pub struct IntakeFigures {
    pub queues: IntakeQueues,
    /// Requests per second, from the first publish until the last delivery was acked.
    pub throughput_rps: f64,
    pub elapsed_s: f64,
    /// From the first publish until the broker confirmed the last one.
    pub publish_s: f64,
    /// Requests confirmed by the broker.
    pub published: usize,
    /// Deliveries acked by the consumers.
    pub delivered: usize,
    /// Deliveries beyond the publishes of their request id (a request delivered twice).
    pub duplicates: usize,
    /// Publishes of a request id that were never delivered.
    pub missing: usize,
    /// Whether every published request was delivered and acked within the timeout.
    pub complete: bool,
    /// Batches of deliveries the consumers settled (one ack each, or one ack per run of tags).
    pub batches: usize,
    /// Transactions that committed a stream offset (0 for quorum queues).
    pub offset_commits: usize,
    /// Per stream, the last offset delivered and the offset committed (empty for quorum
    /// queues).
    pub streams: Vec<StreamOffsets>,
    /// The CPU each process spent per request from the first publish until the last delivery
    /// was acked, when the run was given the servers to sample (the bench keeps it with the
    /// other designs').
    #[serde(skip)]
    pub cpu_us_per_request: Option<CpuShare>,
}

/// One stream's offsets at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamOffsets {
    pub queue: String,
    pub delivered: usize,
    /// The offset of the last delivery acked, from its `x-stream-offset` header.
    pub last_offset: Option<i64>,
    /// The offset committed in PostgreSQL, read back after the consumers stopped.
    pub committed: Option<i64>,
}

/// Measures the intake ceiling: declares `topology` (which must be a topology of its own: it is
/// deleted at the end) with `queues`, consumes every partition with `prefetch`, publishes
/// `requests`, waits until every one is delivered and acked, and tears everything down. The
/// whole run, teardown aside, is bounded by `timeout`. With `servers`, the CPU of each is
/// sampled around the traffic alone: declaring and deleting the queues is not its cost.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    amqp_url: &str,
    database_url: &str,
    topology: Topology,
    prefetch: u16,
    queues: IntakeQueues,
    requests: Vec<Request>,
    timeout: Duration,
    servers: Option<&Servers>,
) -> anyhow::Result<IntakeFigures> {
    let deadline = tokio::time::Instant::now() + timeout;
    let consuming = tokio::time::timeout_at(
        deadline,
        Consuming::start(amqp_url, database_url, &topology, prefetch, queues),
    )
    .await
    .with_context(|| format!("setting the intake up took longer than {timeout:?}"))??;
    let measured = measure(
        amqp_url,
        &topology,
        &requests,
        &consuming.tally,
        deadline,
        servers,
    )
    .await;
    let tally = consuming.tally.clone();
    let ended = consuming.stop().await;
    let published = measured?;
    let ended = ended?;
    let last_ack = tally.borrow().last;
    Ok(figures(queues, &requests, published, last_ack, ended))
}

/// Partition queues that only take traffic in: declared under `topology` (a topology of its
/// own, deleted by [`Sink::stop`]) and consumed by the intake's consumers, which ack every
/// delivery and do nothing else. What a stream of messages costs the broker and the machine
/// before any design does anything with it.
pub(super) struct Sink {
    consuming: Consuming,
}

impl Sink {
    pub async fn start(amqp_url: &str, topology: &Topology, prefetch: u16) -> anyhow::Result<Self> {
        // The database is only for streams' offsets; quorum queues need none.
        let consuming = Consuming::start(amqp_url, "", topology, prefetch, IntakeQueues::Quorum)
            .await
            .context("starting the sink's consumers")?;
        Ok(Self { consuming })
    }

    /// Waits until `n` deliveries in all were acked, or `deadline`; the count acked.
    pub async fn drained(&self, n: usize, deadline: tokio::time::Instant) -> usize {
        let mut settled = self.consuming.tally.subscribe();
        let _ = tokio::time::timeout_at(deadline, settled.wait_for(|s| s.deliveries >= n)).await;
        self.consuming.tally.borrow().deliveries
    }

    /// Stops the consumers and deletes the topology.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.consuming.stop().await.map(|_| ())
    }
}

/// When the first request was published, and how long until the broker confirmed the last.
#[derive(Debug, Clone, Copy)]
struct Published {
    start: Instant,
    publish_time: Duration,
    cpu: Option<CpuShare>,
}

/// Publishes every request, then waits until the consumers have acked as many deliveries (or
/// the deadline passes). An error if a publish is refused or publishing outlasts the deadline.
async fn measure(
    amqp_url: &str,
    topology: &Topology,
    requests: &[Request],
    tally: &Tally,
    deadline: tokio::time::Instant,
    servers: Option<&Servers>,
) -> anyhow::Result<Published> {
    let broker = Broker::connect(amqp_url, "seatrush-bench-intake-publisher")
        .await
        .context("connecting the publisher to RabbitMQ")?;
    let (outbox, outbox_task) = Outbox::start(broker.confirmed_publisher().await?, OUTBOX_CAPACITY);
    let before = servers.map(Servers::before);
    let start = Instant::now();
    let published = tokio::time::timeout_at(deadline, publish(&outbox, topology, requests)).await;
    let publish_time = start.elapsed();
    drop(outbox);
    // The outbox ends once its last clone is gone; bounded in case its confirms never come.
    let _ = tokio::time::timeout(STEP_WITHIN, outbox_task).await;
    broker.close().await;
    published
        .context("publishing the requests took longer than the timeout")?
        .context("publishing the requests")?;
    let mut settled = tally.subscribe();
    // On timeout the figures say what was delivered until then; `complete` is false.
    let _ = tokio::time::timeout_at(
        deadline,
        settled.wait_for(|s| s.deliveries >= requests.len()),
    )
    .await;
    Ok(Published {
        start,
        publish_time,
        cpu: before.map(|b| b.per_request(requests.len(), None)),
    })
}

/// Publishes every request, persistent and confirmed, through the outbox (which hands bursts of
/// publishes to the client's I/O thread at once), keeping at most [`CONFIRM_WINDOW`]
/// unconfirmed.
async fn publish(outbox: &Outbox, topology: &Topology, requests: &[Request]) -> anyhow::Result<()> {
    let mut confirms = FuturesUnordered::new();
    for request in requests {
        let message = Outgoing::request(
            topology,
            request.course_id.as_str(),
            request.request_id.as_str(),
            None,
            request_body(request),
        );
        confirms.push(outbox.post_confirmed(message).await?.confirmed());
        while confirms.len() >= CONFIRM_WINDOW {
            if let Some(confirmed) = confirms.next().await {
                confirmed.context("a request was not confirmed")?;
            }
        }
    }
    while let Some(confirmed) = confirms.next().await {
        confirmed.context("a request was not confirmed")?;
    }
    Ok(())
}

/// The consumers' progress, shared with the task that waits for the end of the run.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Settled {
    pub deliveries: usize,
    /// When the last batch was acked.
    pub last: Option<Instant>,
}

pub(super) type Tally = Arc<watch::Sender<Settled>>;

/// Counts `n` deliveries as acked now.
pub(super) fn count_settled(tally: &Tally, n: usize) {
    tally.send_modify(|s| {
        s.deliveries += n;
        s.last = Some(Instant::now());
    });
}

/// What one partition's consumer took.
#[derive(Debug, Default)]
pub(super) struct Consumed {
    pub queue: String,
    /// The request id (`message_id`) of every delivery acked, in order.
    pub ids: Vec<String>,
    pub batches: usize,
    pub offset_commits: usize,
    pub last_offset: Option<i64>,
}

/// Everything that consumes the partitions of one run, and what must be torn down after it.
struct Consuming {
    tally: Tally,
    stop: CancellationToken,
    consumers: Vec<JoinHandle<anyhow::Result<Consumed>>>,
    kind: Kind,
}

/// The broker side of each queue kind.
enum Kind {
    Quorum { broker: Broker, topology: Topology },
    Stream(stream::Streams),
}

/// What the consumers reported, and (for streams) the offsets committed.
struct Ended {
    consumed: Vec<Consumed>,
    committed: HashMap<String, i64>,
}

impl Consuming {
    async fn start(
        amqp_url: &str,
        database_url: &str,
        topology: &Topology,
        prefetch: u16,
        queues: IntakeQueues,
    ) -> anyhow::Result<Self> {
        let tally: Tally = Arc::new(watch::Sender::new(Settled::default()));
        let stop = CancellationToken::new();
        let (kind, consumers) = match queues {
            IntakeQueues::Quorum => {
                let broker = Broker::connect(amqp_url, "seatrush-bench-intake")
                    .await
                    .context("connecting to RabbitMQ")?;
                let consumers = quorum::start(&broker, topology, prefetch, &tally, &stop).await;
                let kind = Kind::Quorum {
                    broker,
                    topology: topology.clone(),
                };
                (kind, consumers)
            }
            IntakeQueues::Stream => {
                let streams = stream::Streams::open(amqp_url, database_url, topology).await?;
                let consumers = streams.start(prefetch, &tally, &stop).await;
                (Kind::Stream(streams), consumers)
            }
        };
        let mut consuming = Self {
            tally,
            stop,
            consumers: Vec::new(),
            kind,
        };
        match consumers {
            Ok(consumers) => {
                consuming.consumers = consumers;
                Ok(consuming)
            }
            Err(e) => {
                // What was declared goes even when the run cannot start.
                let _ = consuming.stop().await;
                Err(e)
            }
        }
    }

    /// Stops the consumers, reads what they did, and tears the queues (and, for streams, the
    /// offsets' schema) down.
    async fn stop(self) -> anyhow::Result<Ended> {
        self.stop.cancel();
        let mut consumed = Vec::with_capacity(self.consumers.len());
        let mut failure = None;
        for mut consumer in self.consumers {
            let joined = tokio::time::timeout(STEP_WITHIN, &mut consumer).await;
            let outcome = match joined {
                Ok(Ok(taken)) => taken,
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("a consumer task failed")),
                Err(_) => {
                    // Given up on: it must not go on holding a channel or a connection.
                    consumer.abort();
                    Err(anyhow::anyhow!(
                        "a consumer did not stop within {STEP_WITHIN:?}"
                    ))
                }
            };
            match outcome {
                Ok(c) => consumed.push(c),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        let committed = match self.kind {
            Kind::Quorum { broker, topology } => {
                let deleted =
                    tokio::time::timeout(STEP_WITHIN, broker.delete_topology(&topology)).await;
                broker.close().await;
                deleted
                    .context("deleting the intake's topology took too long")?
                    .context("deleting the intake's topology")?;
                HashMap::new()
            }
            Kind::Stream(streams) => streams.tear_down().await?,
        };
        match failure {
            Some(e) => Err(e.context("consuming the partitions")),
            None => Ok(Ended {
                consumed,
                committed,
            }),
        }
    }
}

/// The run's figures from what was published and what the consumers took.
fn figures(
    queues: IntakeQueues,
    published: &[Request],
    times: Published,
    last_ack: Option<Instant>,
    ended: Ended,
) -> IntakeFigures {
    let Ended {
        consumed,
        committed,
    } = ended;
    let delivered: usize = consumed.iter().map(|c| c.ids.len()).sum();
    let (duplicates, missing) = reconcile(
        published.iter().map(|r| r.request_id.as_str()),
        consumed
            .iter()
            .flat_map(|c| c.ids.iter().map(String::as_str)),
    );
    // The consumer side counts: the run ends when the last delivery was acked.
    let elapsed = last_ack.map_or(Duration::ZERO, |at| {
        at.saturating_duration_since(times.start)
    });
    let streams = match queues {
        IntakeQueues::Quorum => Vec::new(),
        IntakeQueues::Stream => consumed
            .iter()
            .map(|c| StreamOffsets {
                queue: c.queue.clone(),
                delivered: c.ids.len(),
                last_offset: c.last_offset,
                committed: committed.get(&c.queue).copied(),
            })
            .collect(),
    };
    IntakeFigures {
        queues,
        throughput_rps: delivered as f64 / elapsed.as_secs_f64().max(1e-9),
        elapsed_s: elapsed.as_secs_f64(),
        publish_s: times.publish_time.as_secs_f64(),
        published: published.len(),
        delivered,
        duplicates,
        missing,
        complete: missing == 0 && delivered >= published.len(),
        batches: consumed.iter().map(|c| c.batches).sum(),
        offset_commits: consumed.iter().map(|c| c.offset_commits).sum(),
        streams,
        cpu_us_per_request: times.cpu,
    }
}

/// Compares the request ids published with those delivered: the deliveries beyond the
/// publishes of their id (including ids never published), and the publishes never delivered.
fn reconcile<'a>(
    published: impl Iterator<Item = &'a str>,
    delivered: impl Iterator<Item = &'a str>,
) -> (usize, usize) {
    let mut owed: HashMap<&str, isize> = HashMap::new();
    for id in published {
        *owed.entry(id).or_default() += 1;
    }
    for id in delivered {
        *owed.entry(id).or_default() -= 1;
    }
    let duplicates = owed
        .values()
        .filter(|n| **n < 0)
        .map(|n| n.unsigned_abs())
        .sum();
    let missing = owed
        .values()
        .filter(|n| **n > 0)
        .map(|n| n.unsigned_abs())
        .sum();
    (duplicates, missing)
}

#[cfg(test)]
mod tests {
    use super::reconcile;

    #[test]
    fn every_publish_delivered_once_reconciles_to_nothing() {
        let ids = ["a", "b", "b", "c"];
        assert_eq!(
            reconcile(ids.into_iter(), ["b", "c", "a", "b"].into_iter()),
            (0, 0)
        );
    }

    #[test]
    fn a_second_delivery_is_a_duplicate_and_an_undelivered_publish_is_missing() {
        let published = ["a", "b", "c"];
        let delivered = ["a", "a", "b", "x"];
        assert_eq!(
            reconcile(published.into_iter(), delivered.into_iter()),
            (2, 1),
            "a twice and x never published; c never delivered"
        );
    }
}
