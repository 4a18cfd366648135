//! The broker's ceiling: the same requests through the same RabbitMQ with the same queue types,
//! doing only what seatrush's path needs from the broker (persistent confirmed publish into the
//! partition queues, delivery with manual ack, one answer published with a confirm and received)
//! and nothing else: no database, no actors.
//!
//! The echo is as efficient as seatrush's own path, so that the ceiling is a real one and not a
//! straw man: each partition is consumed with the prefetch it is given (the bench gives the
//! worker's), deliveries are taken a batch at a time (whatever has arrived), every answer goes
//! through seatrush's outbox (which hands bursts of publishes to the client's I/O thread at once
//! instead of awaiting each), and a batch's acks are issued together once its confirms are in,
//! which seatrush's consumer coalesces into about one `multiple` ack.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::intake::next_batch;
use crate::cpu::{CpuShare, Servers};
use crate::load::{self, Pace, Progress};
use seatrush_core::amqp::{
    AckHandle, AmqpError, Broker, Deliveries, Incoming, Outbox, Outgoing, Posted, ReplyTo, Topology,
};
use seatrush_core::domain::{Outcome, Partition, Request, Verdict};
use seatrush_core::protocol::{Answer, Stage, parse_request};

/// How many messages the outbox queues before a post waits: a worker's, four times its largest
/// batch.
const OUTBOX_CAPACITY: usize = 4000;

/// How long a batch may wait for its confirms or its acks, and a stopped echo for its last
/// batches: far above a healthy wait, bounded so that a dead connection cannot hold the bench
/// (what is left unacked returns to its queue, which is deleted next).
const SETTLE_WITHIN: Duration = Duration::from_secs(10);

/// What the echo consumer publishes per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// One answer: the ceiling as the benchmark defines it.
    One,
    /// The messages seatrush itself publishes: a provisional answer, a final answer and a final
    /// event. The gap between this and seatrush is seatrush's own cost.
    SameAsSeatrush,
}

/// Runs the echo consumers on a topology of their own, fires `requests` at it, and tears the
/// topology down. `prefetch` is each partition consumer's, as a worker's `--prefetch`. With
/// `servers`, also the CPU each of them spent per request from the first publish until the
/// last answer came back: declaring and deleting the queues is not the traffic's cost.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    amqp_url: &str,
    topology: Topology,
    prefetch: u16,
    echo_kind: Echo,
    requests: Vec<Request>,
    timeout: Duration,
    servers: Option<&Servers>,
) -> anyhow::Result<(load::Report, Option<CpuShare>)> {
    let broker = Broker::connect(amqp_url, "seatrush-bench-ceiling")
        .await
        .context("connecting to RabbitMQ")?;
    broker.declare(&topology).await?;
    let fired = echo_and_fire(
        &broker, amqp_url, &topology, prefetch, echo_kind, requests, timeout, servers,
    )
    .await;
    // The topology goes even when the echoes could not start or the crowd failed.
    let deleted = broker.delete_topology(&topology).await;
    broker.close().await;
    let (report, cpu) = fired?;
    deleted.context("deleting the ceiling's topology")?;
    Ok((report.fully_published()?, cpu))
}

#[allow(clippy::too_many_arguments)]
async fn echo_and_fire(
    broker: &Broker,
    amqp_url: &str,
    topology: &Topology,
    prefetch: u16,
    echo_kind: Echo,
    requests: Vec<Request>,
    timeout: Duration,
    servers: Option<&Servers>,
) -> anyhow::Result<(load::Report, Option<CpuShare>)> {
    let echoes = Echoes::start(broker, topology, prefetch, echo_kind).await?;
    let n = requests.len();
    let before = servers.map(Servers::before);
    let fired = load::fire_with(
        amqp_url,
        topology,
        requests,
        timeout,
        Pace::Burst,
        Arc::new(Progress::default()),
    )
    .await;
    let cpu = before.map(|b| b.per_request(n, None));
    echoes.stop().await;
    Ok((fired?, cpu))
}

/// One echo task per partition queue, all posting through one outbox, as a worker's session.
struct Echoes {
    stop: CancellationToken,
    tasks: TaskTracker,
    outbox_task: JoinHandle<()>,
}

impl Echoes {
    async fn start(
        broker: &Broker,
        topology: &Topology,
        prefetch: u16,
        kind: Echo,
    ) -> anyhow::Result<Self> {
        let (outbox, outbox_task) =
            Outbox::start(broker.confirmed_publisher().await?, OUTBOX_CAPACITY);
        let echoes = Self {
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            outbox_task,
        };
        for p in 0..topology.partitions {
            let queue = topology.partition_queue(Partition(p));
            let deliveries = match broker.consume(&queue, "ceiling", prefetch).await {
                Ok(deliveries) => deliveries,
                Err(e) => {
                    drop(outbox);
                    echoes.stop().await;
                    return Err(anyhow::Error::new(e).context(format!("consuming {queue}")));
                }
            };
            let echoing = Echoing {
                queue,
                outbox: outbox.clone(),
                topology: topology.clone(),
                kind,
            };
            echoes
                .tasks
                .spawn(echo(echoing, deliveries, echoes.stop.clone()));
        }
        // From here only the echoes hold the outbox: it ends when the last of them does.
        Ok(echoes)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        // Each echo bounds its own wait.
        self.tasks.wait().await;
        if tokio::time::timeout(SETTLE_WITHIN, self.outbox_task)
            .await
            .is_err()
        {
            tracing::warn!("the ceiling's outbox did not end within {SETTLE_WITHIN:?}");
        }
    }
}

/// What one echo answers with, and where.
struct Echoing {
    queue: String,
    outbox: Outbox,
    topology: Topology,
    kind: Echo,
}

/// Answers a partition's deliveries a batch at a time until `stop`; each batch is acked, in
/// the background, once the broker has confirmed its answers, so the next batch is answered
/// meanwhile (as seatrush's finalizer overlaps its batches).
async fn echo(echoing: Echoing, mut deliveries: Deliveries, stop: CancellationToken) {
    let settling = TaskTracker::new();
    loop {
        let batch = match next_batch(&mut deliveries, &stop, &echoing.queue).await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "an echo stopped early");
                break;
            }
        };
        let (confirms, acks) = answer(&echoing, batch).await;
        settling.spawn(settle(confirms, acks));
    }
    settling.close();
    if tokio::time::timeout(SETTLE_WITHIN, settling.wait())
        .await
        .is_err()
    {
        tracing::warn!("the echo's last confirms did not arrive within {SETTLE_WITHIN:?}");
    }
    deliveries.close().await;
}

/// A message to post: one whose broker confirm the batch waits for, or one that may be lost
/// (a provisional answer, as seatrush posts it).
enum Post {
    Confirmed(Outgoing),
    Unconfirmed(Outgoing),
}

type Confirms = Vec<Result<Posted, AmqpError>>;

/// Posts the answers to every request of the batch; returns the confirms to wait for and the
/// batch's acks. A delivery that is no request, or names no reply queue, gets no answer and is
/// acked with the others.
async fn answer(echoing: &Echoing, batch: Vec<Incoming>) -> (Confirms, Vec<AckHandle>) {
    let mut confirms = Vec::with_capacity(batch.len() * 2);
    let mut acks = Vec::with_capacity(batch.len());
    for incoming in batch {
        let Incoming {
            message_id,
            user_id,
            body,
            reply_to,
            correlation_id,
            ack,
            ..
        } = incoming;
        acks.push(ack);
        let Ok(request) = parse_request(message_id.as_deref(), user_id.as_deref(), &body) else {
            continue;
        };
        let Some(queue) = reply_to else {
            continue;
        };
        let to = ReplyTo {
            queue,
            correlation_id,
            batch: false,
        };
        for post in posts(echoing, &request, &to) {
            match post {
                Post::Confirmed(message) => {
                    confirms.push(echoing.outbox.post_confirmed(message).await);
                }
                Post::Unconfirmed(message) => {
                    if let Err(e) = echoing.outbox.post(message).await {
                        confirms.push(Err(e));
                    }
                }
            }
        }
    }
    (confirms, acks)
}

/// The answers to one request, in the order seatrush sends them.
fn posts(echoing: &Echoing, request: &Request, to: &ReplyTo) -> Vec<Post> {
    let verdict = Verdict::new(Outcome::Enrolled, None, 0);
    let body = Answer::decided(request, &verdict, Stage::Final).to_json();
    match echoing.kind {
        Echo::One => vec![Post::Confirmed(Outgoing::reply(to, body))],
        Echo::SameAsSeatrush => {
            let provisional = Answer::decided(request, &verdict, Stage::Provisional).to_json();
            let event = Outgoing::event(
                &echoing.topology,
                request.course_id.as_str(),
                request.student_id.as_str(),
                body.clone(),
            );
            vec![
                Post::Unconfirmed(Outgoing::reply(to, provisional)),
                Post::Confirmed(Outgoing::reply(to, body)),
                Post::Confirmed(event),
            ]
        }
    }
}

/// Waits for a batch's confirms, then acks the batch: its acks issued together are coalesced by
/// seatrush's consumer. A batch not confirmed in time is not acked (its deliveries return to the
/// queue when their handles drop).
async fn settle(confirms: Confirms, acks: Vec<AckHandle>) {
    let confirming = join_all(
        confirms
            .into_iter()
            .map(|posted| async move { posted?.confirmed().await }),
    );
    match tokio::time::timeout(SETTLE_WITHIN, confirming).await {
        Ok(confirmed) if confirmed.iter().all(Result::is_ok) => {}
        Ok(_) => {
            tracing::warn!("the broker refused an answer of the ceiling's echo");
            return;
        }
        Err(_) => return,
    }
    let acking = join_all(acks.into_iter().map(AckHandle::ack));
    match tokio::time::timeout(SETTLE_WITHIN, acking).await {
        Ok(acked) if acked.iter().all(Result::is_ok) => {}
        _ => tracing::warn!("a batch of the ceiling's echo was not acked"),
    }
}
