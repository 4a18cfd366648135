//! The broker's ceiling: the same requests through the same RabbitMQ with the same queue types,
//! doing only what seatrush's path needs from the broker (persistent confirmed publish into the
//! partition queues, delivery with manual ack, one answer published with a confirm and received)
//! and nothing else: no database, no actors.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::load::{self, Pace, Progress};
use seatrush_core::amqp::{Broker, Outgoing, Publisher, ReplyTo, Topology};
use seatrush_core::domain::{Outcome, Partition, Request, Verdict};
use seatrush_core::protocol::{Answer, Stage, parse_request};

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
/// topology down.
pub async fn run(
    amqp_url: &str,
    topology: Topology,
    prefetch: u16,
    echo_kind: Echo,
    requests: Vec<Request>,
    timeout: Duration,
) -> anyhow::Result<load::Report> {
    let broker = Arc::new(
        Broker::connect(amqp_url, "seatrush-bench-ceiling")
            .await
            .context("connecting to RabbitMQ")?,
    );
    broker.declare(&topology).await?;
    let publisher = broker.confirmed_publisher().await?;
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    for p in 0..topology.partitions {
        let queue = topology.partition_queue(Partition(p));
        let deliveries = broker.consume(&queue, "ceiling", prefetch).await?;
        tasks.spawn(echo(
            deliveries,
            publisher.clone(),
            topology.clone(),
            echo_kind,
            stop.clone(),
        ));
    }
    let fired = load::fire_with(
        amqp_url,
        &topology,
        requests,
        timeout,
        Pace::Burst,
        Arc::new(Progress::default()),
    )
    .await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    broker.delete_topology(&topology).await?;
    broker.close().await;
    fired?.fully_published()
}

/// Answers every delivery once, confirmed, then acks it.
async fn echo(
    mut deliveries: seatrush_core::amqp::Deliveries,
    publisher: Publisher,
    topology: Topology,
    echo_kind: Echo,
    stop: CancellationToken,
) {
    let verdict = Verdict::new(Outcome::Enrolled, None, 0);
    let inflight = TaskTracker::new();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = deliveries.next() => next,
        };
        let Some(Ok(incoming)) = next else { break };
        let Ok(request) = parse_request(
            incoming.message_id.as_deref(),
            incoming.user_id.as_deref(),
            &incoming.body,
        ) else {
            let _ = incoming.ack.ack().await;
            continue;
        };
        let Some(queue) = incoming.reply_to else {
            let _ = incoming.ack.ack().await;
            continue;
        };
        let to = ReplyTo {
            queue,
            correlation_id: incoming.correlation_id,
            batch: false,
        };
        let body = Answer::decided(&request, &verdict, Stage::Final).to_json();
        let mut messages = Vec::with_capacity(3);
        if echo_kind == Echo::SameAsSeatrush {
            let provisional = Answer::decided(&request, &verdict, Stage::Provisional).to_json();
            messages.push((Outgoing::reply(&to, provisional), false));
            messages.push((
                Outgoing::event(
                    &topology,
                    request.course_id.as_str(),
                    request.student_id.as_str(),
                    body.clone(),
                ),
                true,
            ));
        }
        messages.push((Outgoing::reply(&to, body), true));
        let mut confirms = Vec::with_capacity(2);
        for (message, confirmed) in messages {
            match publisher.send(message).await {
                Ok(confirm) if confirmed => confirms.push(confirm),
                Ok(_) => {}
                Err(_) => return,
            }
        }
        let ack = incoming.ack;
        // Confirms and acks overlap across messages, as seatrush's finalizer overlaps a batch.
        inflight.spawn(async move {
            for confirm in confirms {
                if confirm.confirmed().await.is_err() {
                    return;
                }
            }
            let _ = ack.ack().await;
        });
    }
    inflight.close();
    // Bounded: a confirm on a connection that died meanwhile may never resolve, and the bench
    // must end anyway (the unacked deliveries return to the queue, which is deleted next).
    if tokio::time::timeout(Duration::from_secs(10), inflight.wait())
        .await
        .is_err()
    {
        tracing::warn!("the echo's last confirms did not arrive within 10 s");
    }
    deliveries.close().await;
}
