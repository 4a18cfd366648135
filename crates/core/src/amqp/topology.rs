//! Names and declaration of every exchange and queue.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::domain::Partition;

/// The broker-side layout, derived from a name prefix (default `seatrush`) so that tests and
/// separate environments can share one broker.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    pub partitions: u16,
    /// Deliveries after which the broker dead-letters a message that keeps failing.
    pub delivery_limit: u32,
    /// Messages a partition queue holds before it refuses publishes (producers get a nack).
    pub max_queue_length: u32,
}

impl Topology {
    pub const DEFAULT_PREFIX: &str = "seatrush";
    pub const DEFAULT_PARTITIONS: u16 = 16;
    pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;
    pub const DEFAULT_MAX_QUEUE_LENGTH: u32 = 1_000_000;

    /// The layout under `prefix` with `partitions` queues and the default limits (which only
    /// matter to whoever declares the queues: a worker, or a test standing in for one).
    pub fn new(prefix: impl Into<String>, partitions: u16) -> Self {
        Self {
            prefix: prefix.into(),
            partitions,
            delivery_limit: Self::DEFAULT_DELIVERY_LIMIT,
            max_queue_length: Self::DEFAULT_MAX_QUEUE_LENGTH,
        }
    }

    /// The consistent-hash exchange producers publish requests to.
    pub fn requests_exchange(&self) -> String {
        format!("{}.requests", self.prefix)
    }

    pub fn partition_queue(&self, partition: Partition) -> String {
        format!("{}.requests.{}", self.prefix, partition.0)
    }

    /// The topic exchange for final events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Where rejected and poisoned messages go, and the queue that keeps them.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The routing key of a final event.
    /// Routing key of the batched final events: every final answer of one group commit.
    pub const FINALS_KEY: &'static str = "finals";

    /// The durable queue the web gateways share to record students' final events: every
    /// final answer and promotion, whatever the workers' event mode.
    pub fn gateway_events_queue(&self) -> String {
        format!("{}.gateway.events", self.prefix)
    }

    pub fn event_key(course_id: &str, student_id: &str) -> String {
        format!("final.{course_id}.{student_id}")
    }

    pub(super) async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.requests_exchange().into(),
                ExchangeKind::Custom("x-consistent-hash".into()),
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;

        let queue_options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), text("quorum"));
        channel
            .queue_declare(self.dead_queue().into(), queue_options, dead_args)
            .await?;
        channel
            .queue_bind(
                self.dead_queue().into(),
                self.dead_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        for p in 0..self.partitions {
            let queue = self.partition_queue(Partition(p));
            channel
                .queue_declare(queue.clone().into(), queue_options, self.partition_args())
                .await?;
            // With the consistent-hash exchange the binding key is the weight: every partition
            // gets an equal share of the hash ring.
            channel
                .queue_bind(
                    queue.into(),
                    self.requests_exchange().into(),
                    "1".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Declares the gateways' event queue (quorum, durable) and binds it to every final event.
    /// Bounded: if no gateway consumes it for long, the oldest events go first rather than the
    /// workers' event publishes being refused.
    pub(super) async fn declare_gateway_events(&self, channel: &Channel) -> lapin::Result<()> {
        // The exchange too, as a worker declares it: a gateway may start before any worker.
        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(5_000_000));
        args.insert("x-overflow".into(), text("drop-head"));
        let queue = self.gateway_events_queue();
        channel
            .queue_declare(
                queue.clone().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await?;
        for pattern in [Self::FINALS_KEY, "final.#"] {
            channel
                .queue_bind(
                    queue.clone().into(),
                    self.events_exchange().into(),
                    pattern.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    pub(super) async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        for p in 0..self.partitions {
            channel
                .queue_delete(
                    self.partition_queue(Partition(p)).into(),
                    QueueDeleteOptions::default(),
                )
                .await?;
        }
        // Deleting a queue that does not exist succeeds, so the gateways' queue goes too.
        for queue in [self.dead_queue(), self.gateway_events_queue()] {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            self.requests_exchange(),
            self.events_exchange(),
            self.dead_exchange(),
        ] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    fn partition_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        // One consumer at a time per partition, across every worker: the broker's own guard
        // beside the ownership leases in Postgres.
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        args.insert("x-dead-letter-exchange".into(), text(&self.dead_exchange()));
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(self.max_queue_length)),
        );
        args.insert("x-overflow".into(), text("reject-publish"));
        args
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}
