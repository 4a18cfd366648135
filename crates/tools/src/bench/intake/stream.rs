//! Streams as partition queues: declared behind the same consistent-hash exchange, consumed over
//! AMQP 0-9-1, and each batch's last offset committed to PostgreSQL in one transaction with a
//! row for the batch (the stand-in for a batch of decisions), the way a Kafka consumer commits
//! its offsets together with its output.
//!
//! What an AMQP 0-9-1 consumer of a stream must do (RabbitMQ 3.10, checked against the broker):
//! - set a prefetch (`basic.qos`, per consumer): without one the broker refuses the consumer;
//! - ack: an ack removes nothing from a stream, it is the credit that lets the broker deliver
//!   more, so one `multiple` ack per batch is enough;
//! - never nack or reject: the broker answers either by closing the whole connection
//!   (`540 NOT_IMPLEMENTED`). seatrush's `AckHandle` nacks a delivery dropped unsettled, so this
//!   consumer speaks lapin itself rather than going through seatrush-core's.
//!
//! Where to start is the consumer argument `x-stream-offset`; each delivery carries its own
//! offset in the `x-stream-offset` header.

use std::collections::HashMap;

use anyhow::Context;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::offsets::Offsets;
use super::{BATCH_MAX, Consumed, STEP_WITHIN, Tally, count_settled};
use seatrush_core::amqp::Topology;
use seatrush_core::domain::Partition;

/// The header (and consumer argument) that carries a stream offset.
const OFFSET: &str = "x-stream-offset";

/// The streams of one run, the connection they are consumed on, and their committed offsets.
pub(super) struct Streams {
    connection: Connection,
    topology: Topology,
    offsets: Offsets,
}

impl Streams {
    /// Creates the offsets' schema and declares the exchange and one stream per partition. On
    /// failure, what was created is removed again.
    pub(super) async fn open(
        amqp_url: &str,
        database_url: &str,
        topology: &Topology,
    ) -> anyhow::Result<Self> {
        let queues = queue_names(topology);
        let offsets = Offsets::create(database_url, &queues)
            .await
            .context("creating the offsets' schema in PostgreSQL")?;
        let properties =
            ConnectionProperties::default().with_connection_name("seatrush-bench-intake".into());
        let connection = match Connection::connect(amqp_url, properties).await {
            Ok(connection) => connection,
            Err(e) => {
                let _ = offsets.remove().await;
                return Err(anyhow::Error::new(e).context("connecting to RabbitMQ"));
            }
        };
        let streams = Self {
            connection,
            topology: topology.clone(),
            offsets,
        };
        if let Err(e) = streams.declare().await {
            let _ = streams.tear_down().await;
            return Err(e.context("declaring the streams"));
        }
        Ok(streams)
    }

    async fn declare(&self) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.topology.requests_exchange().into(),
                ExchangeKind::Custom("x-consistent-hash".into()),
                durable,
                FieldTable::default(),
            )
            .await?;
        // Streams are durable, never exclusive nor auto-deleted: the broker refuses anything
        // else for them.
        let options = QueueDeclareOptions {
            durable: true,
            exclusive: false,
            auto_delete: false,
            ..QueueDeclareOptions::default()
        };
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), text("stream"));
        for queue in queue_names(&self.topology) {
            channel
                .queue_declare(queue.clone().into(), options, arguments.clone())
                .await
                .with_context(|| format!("declaring {queue}"))?;
            // The binding key is the weight on the hash ring, as for seatrush's queues.
            channel
                .queue_bind(
                    queue.into(),
                    self.topology.requests_exchange().into(),
                    "1".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        close(&channel).await;
        Ok(())
    }

    /// Starts one consumer per stream, each from the offset after the one committed.
    pub(super) async fn start(
        &self,
        prefetch: u16,
        tally: &Tally,
        stop: &CancellationToken,
    ) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<Consumed>>>> {
        let committed = self.offsets.committed().await?;
        let mut consumers = Vec::with_capacity(usize::from(self.topology.partitions));
        for queue in queue_names(&self.topology) {
            let from = committed.get(&queue).map_or(0, |last| last + 1);
            let (channel, consumer) = self
                .subscribe(&queue, prefetch, from)
                .await
                .with_context(|| format!("consuming {queue}"))?;
            consumers.push(tokio::spawn(consume(
                Taking {
                    queue,
                    channel,
                    consumer,
                    offsets: self.offsets.clone(),
                },
                tally.clone(),
                stop.clone(),
            )));
        }
        Ok(consumers)
    }

    async fn subscribe(
        &self,
        queue: &str,
        prefetch: u16,
        from: i64,
    ) -> lapin::Result<(Channel, Consumer)> {
        let channel = self.connection.create_channel().await?;
        // Per consumer (not global): streams refuse a global prefetch.
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(OFFSET.into(), AMQPValue::LongLongInt(from));
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await?;
        Ok((channel, consumer))
    }

    /// Reads the committed offsets, drops their schema, deletes the streams and the exchange,
    /// and closes the connection; returns the offsets committed per stream.
    pub(super) async fn tear_down(self) -> anyhow::Result<HashMap<String, i64>> {
        let committed = tokio::time::timeout(STEP_WITHIN, self.offsets.committed()).await;
        let removed = self.offsets.remove().await;
        let deleted =
            tokio::time::timeout(STEP_WITHIN, delete(&self.connection, &self.topology)).await;
        let closing = self.connection.close(200, "intake done".into());
        if tokio::time::timeout(STEP_WITHIN, closing).await.is_err() {
            tracing::warn!("closing the intake's connection was not confirmed in time");
        }
        deleted
            .context("deleting the streams took too long")?
            .context("deleting the streams")?;
        removed.context("dropping the offsets' schema")?;
        committed
            .context("reading the committed offsets took too long")?
            .context("reading the committed offsets")
    }
}

/// Deletes the streams and the exchange (deleting what does not exist is no error).
async fn delete(connection: &Connection, topology: &Topology) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    for queue in queue_names(topology) {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(
            topology.requests_exchange().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    close(&channel).await;
    Ok(())
}

/// What one stream's consumer works with.
struct Taking {
    queue: String,
    channel: Channel,
    consumer: Consumer,
    offsets: Offsets,
}

/// Takes a stream's deliveries a batch at a time until `stop`: commits the batch's last offset,
/// then acks the batch with one `multiple` ack.
async fn consume(
    mut taking: Taking,
    tally: Tally,
    stop: CancellationToken,
) -> anyhow::Result<Consumed> {
    let mut consumed = Consumed {
        queue: taking.queue.clone(),
        ..Consumed::default()
    };
    let taken = take(&mut taking, &mut consumed, &tally, &stop).await;
    close(&taking.channel).await;
    taken.map(|()| consumed)
}

async fn take(
    taking: &mut Taking,
    consumed: &mut Consumed,
    tally: &Tally,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    while let Some(batch) = next_batch(&mut taking.consumer, stop, &taking.queue).await? {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            continue;
        };
        let span = (offset_of(first)?, offset_of(last)?);
        // Bounded: a database that stops answering must not hold the run past its teardown.
        tokio::time::timeout(
            STEP_WITHIN,
            taking.offsets.commit(&taking.queue, span, batch.len()),
        )
        .await
        .with_context(|| format!("committing an offset of {} took too long", taking.queue))??;
        // On a stream an ack only hands credit back; one for the batch is enough.
        let acked = last
            .acker
            .ack(BasicAckOptions { multiple: true })
            .await
            .with_context(|| format!("acking a batch of {}", taking.queue))?;
        anyhow::ensure!(
            acked,
            "the channel of {} closed before its ack",
            taking.queue
        );
        consumed.ids.extend(batch.iter().filter_map(message_id));
        consumed.batches += 1;
        consumed.offset_commits += 1;
        consumed.last_offset = Some(span.1);
        count_settled(tally, batch.len());
    }
    Ok(())
}

/// The next batch: waits for one delivery, then takes whatever else has already arrived, up to
/// [`BATCH_MAX`]. `None` once `stop` is cancelled; an error if the consumer ends before that.
async fn next_batch(
    consumer: &mut Consumer,
    stop: &CancellationToken,
    queue: &str,
) -> anyhow::Result<Option<Vec<Delivery>>> {
    let first = tokio::select! {
        _ = stop.cancelled() => return Ok(None),
        first = consumer.next() => first,
    };
    let Some(first) = first else {
        anyhow::bail!("the consumer of {queue} ended before the run did");
    };
    let mut batch = vec![first.with_context(|| format!("consuming {queue}"))?];
    // Polled once each: a delivery not there yet belongs to the next batch.
    while batch.len() < BATCH_MAX {
        match consumer.next().now_or_never() {
            Some(Some(next)) => batch.push(next.with_context(|| format!("consuming {queue}"))?),
            Some(None) | None => break,
        }
    }
    Ok(Some(batch))
}

/// A delivery's offset in its stream, from the header the broker adds.
fn offset_of(delivery: &Delivery) -> anyhow::Result<i64> {
    let value = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(OFFSET));
    match value {
        Some(AMQPValue::LongLongInt(n)) => Ok(*n),
        Some(AMQPValue::LongInt(n)) => Ok(i64::from(*n)),
        Some(AMQPValue::LongUInt(n)) => Ok(i64::from(*n)),
        other => anyhow::bail!("a stream delivery without an {OFFSET} header (found {other:?})"),
    }
}

fn message_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
}

fn queue_names(topology: &Topology) -> Vec<String> {
    (0..topology.partitions)
        .map(|p| topology.partition_queue(Partition(p)))
        .collect()
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Closes a channel, bounded: one whose connection failed may never see its close confirmed.
async fn close(channel: &Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(STEP_WITHIN, channel.close(200, "done".into())).await;
    }
}
