//! Quorum queues as partition queues, exactly as seatrush declares them, consumed with
//! seatrush's own consumer: a batch's acks are issued together, and the consumer coalesces them
//! into about one `multiple` ack.

use anyhow::Context;
use futures::FutureExt;
use futures::future::join_all;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BATCH_MAX, Consumed, Tally, count_settled};
use seatrush_core::amqp::{Broker, Deliveries, Incoming, Topology};
use seatrush_core::domain::Partition;

/// Declares seatrush's topology and starts one consumer per partition queue.
pub(super) async fn start(
    broker: &Broker,
    topology: &Topology,
    prefetch: u16,
    tally: &Tally,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<Consumed>>>> {
    broker
        .declare(topology)
        .await
        .context("declaring the quorum topology")?;
    let mut consumers = Vec::with_capacity(usize::from(topology.partitions));
    for p in 0..topology.partitions {
        let queue = topology.partition_queue(Partition(p));
        let deliveries = broker
            .consume(&queue, "intake", prefetch)
            .await
            .with_context(|| format!("consuming {queue}"))?;
        consumers.push(tokio::spawn(consume_quorum(
            queue,
            deliveries,
            tally.clone(),
            stop.clone(),
        )));
    }
    Ok(consumers)
}

/// Acks every delivery of a quorum queue, a batch at a time: the acks of a batch are issued
/// together, so seatrush's consumer coalesces them into about one `multiple` ack.
async fn consume_quorum(
    queue: String,
    mut deliveries: Deliveries,
    tally: Tally,
    stop: CancellationToken,
) -> anyhow::Result<Consumed> {
    let mut consumed = Consumed {
        queue,
        ..Consumed::default()
    };
    let taken = take_quorum(&mut deliveries, &mut consumed, &tally, &stop).await;
    deliveries.close().await;
    taken.map(|()| consumed)
}

async fn take_quorum(
    deliveries: &mut Deliveries,
    consumed: &mut Consumed,
    tally: &Tally,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    while let Some(batch) = next_batch(deliveries, stop, &consumed.queue).await? {
        let n = batch.len();
        let mut acks = Vec::with_capacity(n);
        for incoming in batch {
            consumed.ids.extend(incoming.message_id);
            acks.push(incoming.ack.ack());
        }
        for acked in join_all(acks).await {
            acked.with_context(|| format!("acking a delivery of {}", consumed.queue))?;
        }
        consumed.batches += 1;
        count_settled(tally, n);
    }
    Ok(())
}

/// The next batch: waits for one delivery, then takes whatever else has already arrived, up to
/// [`BATCH_MAX`]. `None` once `stop` is cancelled; an error if the consumer ends before that
/// (its channel closed, or the broker cancelled it).
pub(in crate::bench) async fn next_batch(
    deliveries: &mut Deliveries,
    stop: &CancellationToken,
    queue: &str,
) -> anyhow::Result<Option<Vec<Incoming>>> {
    let first = tokio::select! {
        _ = stop.cancelled() => return Ok(None),
        first = deliveries.next() => first,
    };
    let Some(first) = first else {
        anyhow::bail!("the consumer of {queue} ended before the run did");
    };
    let mut batch = vec![first.with_context(|| format!("consuming {queue}"))?];
    // Polled once each: a delivery not there yet belongs to the next batch.
    while batch.len() < BATCH_MAX {
        match deliveries.next().now_or_never() {
            Some(Some(next)) => batch.push(next.with_context(|| format!("consuming {queue}"))?),
            Some(None) | None => break,
        }
    }
    Ok(Some(batch))
}
