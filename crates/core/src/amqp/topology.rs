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
    /// Named lanes beside the default one: each has its own exchange and its own queue per
    /// partition, so that a producer that floods its lane delays only the requests queued
    /// behind it there. The worker that owns a partition consumes every lane's queue of it.
    pub lanes: Vec<String>,
}

/// Most named lanes a topology takes: each adds a queue per partition.
pub const MAX_LANES: usize = 8;
/// Longest lane name.
pub const MAX_LANE_LEN: usize = 32;

/// Checks a lane name: 1 to 32 of `a-z`, `0-9`, `-` and `_`, starting with a letter or digit.
pub fn lane_name(name: &str) -> Result<String, String> {
    let well_formed = name.len() <= MAX_LANE_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if well_formed {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "lane {name:?}: 1 to {MAX_LANE_LEN} characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ))
    }
}

/// The named lanes of a comma-separated list (`"web,batch"`; blanks around names and empty
/// entries ignored): each must pass [`lane_name`], a repeated name counts once, at most
/// [`MAX_LANES`].
pub fn lane_list(list: &str) -> Result<Vec<String>, String> {
    checked_lanes(list.split(',').map(str::trim).filter(|n| !n.is_empty()))
}

fn checked_lanes<'a>(names: impl Iterator<Item = &'a str>) -> Result<Vec<String>, String> {
    let mut kept: Vec<String> = Vec::new();
    for name in names {
        let lane = lane_name(name)?;
        if !kept.contains(&lane) {
            kept.push(lane);
        }
    }
    if kept.len() > MAX_LANES {
        return Err(format!(
            "{} lanes: at most {MAX_LANES} beside the default one",
            kept.len()
        ));
    }
    Ok(kept)
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
            lanes: Vec::new(),
        }
    }

    /// The same layout with these named lanes beside the default one (see [`lane_list`]).
    pub fn with_lanes(mut self, lanes: &[String]) -> Result<Self, String> {
        self.lanes = checked_lanes(lanes.iter().map(String::as_str))?;
        Ok(self)
    }

    /// Every lane, the default one (`None`) first.
    pub fn every_lane(&self) -> impl Iterator<Item = Option<&str>> {
        std::iter::once(None).chain(self.lanes.iter().map(|l| Some(l.as_str())))
    }

    /// The exchange the producers of `lane` publish to; the default lane's is
    /// [`Self::requests_exchange`].
    pub fn lane_exchange(&self, lane: Option<&str>) -> String {
        match lane {
            None => self.requests_exchange(),
            Some(lane) => format!("{}.lanes.{lane}", self.prefix),
        }
    }

    /// The queue of `partition` in `lane`; the default lane's is [`Self::partition_queue`].
    pub fn lane_queue(&self, lane: Option<&str>, partition: Partition) -> String {
        match lane {
            None => self.partition_queue(partition),
            Some(lane) => format!("{}.lanes.{lane}.{}", self.prefix, partition.0),
        }
    }

    /// Every queue of `partition`, the default lane's first.
    pub fn partition_queues(&self, partition: Partition) -> Vec<String> {
        self.every_lane()
            .map(|lane| self.lane_queue(lane, partition))
            .collect()
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

    /// A quorum queue that only the benchmark writes to, and nothing consumes: how long the
    /// broker takes to confirm a write into it says what the traffic on the other queues
    /// costs every queue of the node.
    pub fn probe_queue(&self) -> String {
        format!("{}.probe", self.prefix)
    }

    pub fn event_key(course_id: &str, student_id: &str) -> String {
        format!("final.{course_id}.{student_id}")
    }

    pub(super) async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for lane in self.every_lane() {
            channel
                .exchange_declare(
                    self.lane_exchange(lane).into(),
                    ExchangeKind::Custom("x-consistent-hash".into()),
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
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

        for lane in self.every_lane() {
            for p in 0..self.partitions {
                let queue = self.lane_queue(lane, Partition(p));
                channel
                    .queue_declare(queue.clone().into(), queue_options, self.partition_args())
                    .await?;
                // With the consistent-hash exchange the binding key is the weight: every
                // partition gets an equal share of the hash ring, and the same course hashes
                // to the same partition in every lane.
                channel
                    .queue_bind(
                        queue.into(),
                        self.lane_exchange(lane).into(),
                        "1".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
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
        let queue = self.gateway_events_queue();
        declare_bounded(channel, &queue, 5_000_000).await?;
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

    /// Declares the probe queue (see [`Self::probe_queue`]), bounded to its last 10,000 writes.
    pub(super) async fn declare_probe(&self, channel: &Channel) -> lapin::Result<()> {
        declare_bounded(channel, &self.probe_queue(), 10_000).await
    }

    pub(super) async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        for p in 0..self.partitions {
            for queue in self.partition_queues(Partition(p)) {
                channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await?;
            }
        }
        // Deleting a queue that does not exist succeeds, so the gateways' queue goes too.
        for queue in [
            self.dead_queue(),
            self.gateway_events_queue(),
            self.probe_queue(),
        ] {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        let lanes = self.every_lane().map(|lane| self.lane_exchange(lane));
        for exchange in lanes.chain([self.events_exchange(), self.dead_exchange()]) {
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

/// Declares a durable quorum queue that keeps its last `max_length` messages, dropping the
/// oldest beyond them.
async fn declare_bounded(channel: &Channel, queue: &str, max_length: i64) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(max_length));
    args.insert("x-overflow".into(), text("drop-head"));
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    Ok(())
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::{MAX_LANE_LEN, MAX_LANES, Topology, lane_list, lane_name};
    use crate::domain::Partition;

    #[test]
    fn a_lane_name_is_short_lowercase_and_safe_in_a_queue_name() {
        for good in [
            "web",
            "batch-import",
            "a",
            "2nd_office",
            &"x".repeat(MAX_LANE_LEN),
        ] {
            assert_eq!(lane_name(good).as_deref(), Ok(good));
        }
        let too_long = "x".repeat(MAX_LANE_LEN + 1);
        for bad in [
            "",
            "Web",
            "-web",
            "_x",
            "a.b",
            "a b",
            "é",
            "a*",
            too_long.as_str(),
        ] {
            assert!(lane_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_lane_list_ignores_blanks_and_repeats_and_is_bounded() {
        assert_eq!(lane_list(""), Ok(Vec::new()));
        assert_eq!(
            lane_list(" web, batch,,web "),
            Ok(vec!["web".to_owned(), "batch".to_owned()])
        );
        assert!(lane_list("web,Batch").is_err());
        let most: Vec<String> = (0..MAX_LANES).map(|i| format!("l{i}")).collect();
        assert_eq!(lane_list(&most.join(",")), Ok(most.clone()));
        assert!(lane_list(&format!("{},extra", most.join(","))).is_err());
    }

    #[test]
    fn every_lane_has_its_own_exchange_and_queues_the_default_first() {
        let lanes = ["web".to_owned(), "batch".to_owned()];
        let topology = Topology::new("t", 3)
            .with_lanes(&lanes)
            .expect("valid lanes");
        assert_eq!(
            topology.every_lane().collect::<Vec<_>>(),
            [None, Some("web"), Some("batch")]
        );
        assert_eq!(topology.lane_exchange(None), topology.requests_exchange());
        assert_eq!(topology.lane_exchange(Some("web")), "t.lanes.web");
        assert_eq!(
            topology.partition_queues(Partition(2)),
            ["t.requests.2", "t.lanes.web.2", "t.lanes.batch.2"]
        );
        assert!(Topology::new("t", 3).with_lanes(&["B".into()]).is_err());
    }
}
