//! Consuming: deliveries become [`Incoming`] messages whose ack can happen once, later, from any
//! task.

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Consumer};

use super::{AmqpError, Result};

/// A message taken from a queue, with its AMQP properties read once.
#[derive(Debug)]
pub struct Incoming {
    pub message_id: Option<String>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    pub routing_key: String,
    pub redelivered: bool,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub ack: AckHandle,
}

/// Settles one delivery exactly once: the acker is taken out on first use, so a second ack is
/// impossible rather than an error at the broker.
#[derive(Debug)]
pub struct AckHandle {
    acker: Option<Acker>,
}

impl AckHandle {
    /// A handle that settles nothing (for a message already settled).
    pub fn detached() -> Self {
        Self { acker: None }
    }

    /// The message is done with: its effect is committed (I1).
    pub async fn ack(mut self) -> Result<()> {
        if let Some(acker) = self.acker.take()
            && !acker.ack(BasicAckOptions::default()).await?
        {
            return Err(AmqpError::NotSettled);
        }
        Ok(())
    }

    /// The message goes back to its queue to be delivered again (counts toward the delivery
    /// limit).
    pub async fn requeue(mut self) -> Result<()> {
        if let Some(acker) = self.acker.take()
            && !acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?
        {
            return Err(AmqpError::NotSettled);
        }
        Ok(())
    }
}

/// The deliveries of one consumer, on a channel of their own. Dropping it closes the channel,
/// which returns every unacked delivery to its queue: keep it until they are settled.
pub struct Deliveries {
    channel: Channel,
    consumer: Consumer,
}

impl Deliveries {
    pub(super) async fn start(
        channel: Channel,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<Self> {
        // The prefetch bounds how many unacked deliveries this consumer holds in memory.
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                consumer_tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self { channel, consumer })
    }

    /// An exclusive, auto-deleted, server-named queue, optionally bound to an exchange.
    pub(super) async fn exclusive(
        channel: Channel,
        bind: Option<(&str, &str)>,
    ) -> Result<(String, Self)> {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let name = queue.name().to_string();
        if let Some((exchange, pattern)) = bind {
            channel
                .queue_bind(
                    name.clone().into(),
                    exchange.into(),
                    pattern.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let consumer = channel
            .basic_consume(
                name.clone().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok((name, Self { channel, consumer }))
    }

    /// The next delivery; `None` once the consumer was cancelled or the channel closed.
    pub async fn next(&mut self) -> Option<Result<Incoming>> {
        let delivery = match self.consumer.next().await? {
            Ok(delivery) => delivery,
            Err(e) => return Some(Err(AmqpError::Broker(e))),
        };
        let props = &delivery.properties;
        let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.to_string());
        let headers = props
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter_map(|(k, v)| match v {
                        lapin::types::AMQPValue::LongString(s) => Some((
                            k.to_string(),
                            String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        )),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Ok(Incoming {
            message_id: text(props.message_id()),
            reply_to: text(props.reply_to()),
            correlation_id: text(props.correlation_id()),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
            headers,
            body: delivery.data,
            ack: AckHandle {
                acker: Some(delivery.acker),
            },
        }))
    }

    /// Closes the channel: deliveries not acked return to the queue.
    pub async fn close(self) {
        if let Err(e) = self.channel.close(200, "consumer done".into()).await {
            tracing::debug!(error = %e, "closing a consumer channel failed");
        }
    }

    /// Stops the flow of new deliveries. The channel stays open as long as `self` lives, so
    /// deliveries already taken can still be acked on it; whatever was buffered and not taken
    /// returns to the queue when it closes.
    pub async fn cancel(&self) {
        let tag = self.consumer.tag();
        if let Err(e) = self
            .channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
        {
            tracing::debug!(error = %e, "consumer cancel failed");
        }
    }
}
