//! The AMQP edge: the only module that knows lapin (invariant I7).
//!
//! It declares the topology, turns deliveries into [`Incoming`] messages with an [`AckHandle`],
//! and publishes answers, events and dead letters with publisher confirms. Everything else in
//! seatrush speaks in these types.

mod consumer;
mod dead;
mod nodes;
mod outbox;
mod publisher;
mod routed;
mod topology;

use lapin::{Connection, ConnectionProperties};

pub use consumer::{AckHandle, Deliveries, Incoming, Lanes};
pub use dead::DeadLetter;
pub use nodes::node_urls;
pub use outbox::{Outbox, Posted};
pub use publisher::{Batch, DeadCopy, Kind, Outgoing, PendingConfirm, Publisher, ReplyTo};
pub use routed::RoutedAnswers;
pub use topology::{Topology, lane_list, lane_name};

/// Errors at the broker's edge.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker error")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused message for {0} (publisher confirm nack)")]
    Nacked(String),
    #[error(
        "the delivery could not be settled: its channel is closed, so the broker redelivers it"
    )]
    NotSettled,
    #[error("the outbox is closed: the worker is stopping")]
    OutboxClosed,
    #[error("no broker URL given")]
    NoNode,
    #[error("no broker node could be reached ({0})")]
    NoLiveNode(String),
}

pub type Result<T, E = AmqpError> = std::result::Result<T, E>;

/// The user an AMQP URL authenticates as (`guest` when it names none); `None` if the URL does
/// not parse. Of a list of nodes, the first names the user: every node of a cluster shares its
/// users.
pub fn url_user(url: &str) -> Option<String> {
    node_urls(url)
        .first()?
        .parse::<lapin::uri::AMQPUri>()
        .ok()
        .map(|uri| uri.authority.userinfo.username)
}

/// Closes a channel and waits for the broker to confirm, at most 5 s: a channel of a connection
/// that failed meanwhile may never see its close confirmed, and dropping it is then all that is
/// left to do. Closing explicitly, rather than leaving it to the drop, also keeps the client
/// library from closing it a second time when the connection closes (which it reports as a
/// connection error).
async fn close_channel(channel: &lapin::Channel, why: &str) {
    if !channel.status().connected() {
        return;
    }
    let closing = channel.close(200, why.into());
    match tokio::time::timeout(std::time::Duration::from_secs(5), closing).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %crate::telemetry::chain(&e), why, "closing a channel failed")
        }
        Err(_) => tracing::debug!(why, "closing a channel was not confirmed within 5 s"),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p)
        if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// What the broker says of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// Messages waiting to be delivered (not counting those delivered and unacked).
    pub ready: u32,
    pub consumers: u32,
}

/// One connection to the broker. Channels are created from it per purpose.
pub struct Broker {
    connection: Connection,
}

impl Broker {
    /// Connects to a live node of `url` (one URL, or a cluster's nodes separated by commas);
    /// `name` shows up in the broker's connection list.
    pub async fn connect(url: &str, name: &str) -> Result<Self> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = nodes::connect_any(url, properties).await?;
        Ok(Self { connection })
    }

    /// A publisher in confirm mode: every message is confirmed by the broker before its
    /// [`PendingConfirm`] resolves.
    pub async fn confirmed_publisher(&self) -> Result<Publisher> {
        Publisher::confirmed(self.connection.create_channel().await?).await
    }

    /// Declares the whole topology (idempotent).
    pub async fn declare(&self, topology: &Topology) -> Result<()> {
        let channel = self.connection.create_channel().await?;
        topology.declare(&channel).await?;
        channel.close(200, "topology declared".into()).await?;
        Ok(())
    }

    /// Consumes a queue on its own channel with the given prefetch.
    pub async fn consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<Deliveries> {
        Deliveries::start(
            self.connection.create_channel().await?,
            queue,
            consumer_tag,
            prefetch,
        )
        .await
    }

    /// Declares an exclusive, server-named queue for answers and consumes it (client side).
    pub async fn reply_queue(&self) -> Result<(String, Deliveries)> {
        let channel = self.connection.create_channel().await?;
        Deliveries::exclusive(channel, None).await
    }

    /// Declares an exclusive queue bound to `exchange` with each of `patterns` and consumes it.
    pub async fn subscribe(&self, exchange: &str, patterns: &[&str]) -> Result<Deliveries> {
        let channel = self.connection.create_channel().await?;
        let (_, deliveries) = Deliveries::exclusive(channel, Some((exchange, patterns))).await?;
        Ok(deliveries)
    }

    /// Declares the web gateways' shared event queue (idempotent).
    pub async fn declare_gateway_events(&self, topology: &Topology) -> Result<()> {
        let channel = self.connection.create_channel().await?;
        topology.declare_gateway_events(&channel).await?;
        close_channel(&channel, "gateway events declared").await;
        Ok(())
    }

    /// Declares the benchmark's probe queue (see [`Topology::probe_queue`]).
    pub async fn declare_probe(&self, topology: &Topology) -> Result<()> {
        let channel = self.connection.create_channel().await?;
        topology.declare_probe(&channel).await?;
        close_channel(&channel, "probe declared").await;
        Ok(())
    }

    /// Declares the web gateways' shared event queue and consumes it with manual acks: an event
    /// is acked once recorded, so none is lost to a gateway that stops.
    pub async fn gateway_events(&self, topology: &Topology, prefetch: u16) -> Result<Deliveries> {
        let channel = self.connection.create_channel().await?;
        topology.declare_gateway_events(&channel).await?;
        Deliveries::start(channel, &topology.gateway_events_queue(), "", prefetch).await
    }

    /// Whether the connection is still usable.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the connection; unacked deliveries go back to their queues. Bounded: if the
    /// connection fails while closing (the client library can then leave the close unanswered),
    /// it is given up on after a few seconds, which drops it all the same.
    pub async fn close(&self) {
        if self.is_connected() {
            let closing = self.connection.close(200, "bye".into());
            if tokio::time::timeout(std::time::Duration::from_secs(5), closing)
                .await
                .is_err()
            {
                tracing::warn!(
                    "the broker did not confirm closing the connection within 5 s; dropping it"
                );
            }
        }
    }
}

impl Broker {
    /// Deletes every queue and exchange of a topology (for tests and decommissioning); messages
    /// in them are lost.
    pub async fn delete_topology(&self, topology: &Topology) -> Result<()> {
        let channel = self.connection.create_channel().await?;
        topology.delete(&channel).await?;
        let _ = channel.close(200, "topology deleted".into()).await;
        Ok(())
    }

    /// Messages ready and consumers attached on a queue, read with a passive declare; `None` if
    /// the queue does not exist (yet).
    pub async fn queue_depth(&self, queue: &str) -> Result<Option<QueueDepth>> {
        let channel = self.connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await;
        match declared {
            Ok(q) => {
                let _ = channel.close(200, "depth read".into()).await;
                Ok(Some(QueueDepth {
                    ready: q.message_count(),
                    consumers: q.consumer_count(),
                }))
            }
            // A passive declare of a missing queue fails with 404 and closes the channel.
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes up to `max` messages from the topology's dead-letter queue (acking them), waiting up
    /// to `wait` for the first.
    pub async fn drain_dead_letters(
        &self,
        topology: &Topology,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<Incoming>> {
        let mut deliveries = self
            .consume(&topology.dead_queue(), "dead-letter-reader", 100)
            .await?;
        let mut taken = Vec::new();
        while taken.len() < max {
            match tokio::time::timeout(wait, deliveries.next()).await {
                Ok(Some(Ok(message))) => taken.push(message),
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) | Err(_) => break,
            }
        }
        let mut kept = Vec::with_capacity(taken.len());
        for mut message in taken {
            let ack = std::mem::replace(&mut message.ack, AckHandle::detached());
            ack.ack().await?;
            kept.push(message);
        }
        deliveries.cancel().await;
        drop(deliveries);
        Ok(kept)
    }
}
