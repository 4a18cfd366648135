//! Consuming: deliveries become [`Incoming`] messages whose ack can happen once, later, from any
//! task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};

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
    /// The publishing connection's user, if the publisher set it: the broker refuses a message
    /// whose `user_id` is not that user, so it can be trusted.
    pub user_id: Option<String>,
    pub routing_key: String,
    pub redelivered: bool,
    pub body: Vec<u8>,
    /// The headers seatrush reads (see [`is_read`]), as text.
    pub headers: Vec<(String, String)>,
    pub ack: AckHandle,
}

impl Incoming {
    /// A header's value as text, if the message has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether seatrush reads a header: its own (`x-seatrush-*`) and the broker's reason for a
/// dead letter. Others are not copied: a message held in flight costs its body and these, not
/// whatever a producer piled into its headers.
fn is_read(name: &str) -> bool {
    name.starts_with("x-seatrush-") || name == "x-first-death-reason"
}

/// A header value as text: strings as they are, booleans and integers as they print (clients
/// send `x-seatrush-batch` as a boolean or as a string), other types not at all.
fn header_text(value: &lapin::types::AMQPValue) -> Option<String> {
    use lapin::types::AMQPValue as V;
    Some(match value {
        V::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        V::ShortString(s) => s.as_str().to_owned(),
        // Without the formatting machinery: every request of a batching producer carries one.
        V::Boolean(b) => (if *b { "true" } else { "false" }).to_owned(),
        V::ShortShortInt(i) => i.to_string(),
        V::ShortShortUInt(i) => i.to_string(),
        V::ShortInt(i) => i.to_string(),
        V::ShortUInt(i) => i.to_string(),
        V::LongInt(i) => i.to_string(),
        V::LongUInt(i) => i.to_string(),
        V::LongLongInt(i) => i.to_string(),
        _ => return None,
    })
}

/// Settles one delivery exactly once: the acker is taken out on first use, so a second ack is
/// impossible rather than an error at the broker.
#[derive(Debug)]
pub struct AckHandle {
    acker: Option<(Acker, u64, Arc<Settler>)>,
}

impl AckHandle {
    /// A handle that settles nothing (for a message already settled).
    pub fn detached() -> Self {
        Self { acker: None }
    }

    /// The message is done with: its effect is committed (I1).
    pub async fn ack(mut self) -> Result<()> {
        match self.acker.take() {
            Some((acker, tag, settler)) => settler.ack(tag, acker).await,
            None => Ok(()),
        }
    }

    /// The message goes back to its queue to be delivered again (counts toward the delivery
    /// limit).
    pub async fn requeue(mut self) -> Result<()> {
        match self.acker.take() {
            Some((acker, tag, settler)) => settler.requeue(tag, acker).await,
            None => Ok(()),
        }
    }
}

impl Drop for AckHandle {
    /// A delivery dropped unsettled (its work was abandoned) goes back to its queue, and its
    /// tag stops holding back the acks of later deliveries on the channel.
    fn drop(&mut self) {
        if let Some((acker, tag, settler)) = self.acker.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = settler.requeue(tag, acker).await;
            });
        }
    }
}

/// Coalesces the acks of one channel. Delivery tags on a channel count up from 1; an ack with
/// `multiple` settles every delivery up to its tag. So a settled delivery's ack is held until
/// every earlier delivery of the channel is settled too, and then one frame acks them all:
/// about one ack per commit instead of one per request, which matters because each ack is a
/// round trip through the client's I/O thread.
///
/// At most one ack is in flight per channel: two `multiple` acks overtaking each other inside the
/// client would ack a tag twice, which the broker answers by closing the channel. A caller that
/// finds an ack in flight leaves its own as the pending one (a later one replaces an earlier,
/// since it covers it) and the caller already sending sends it next.
#[derive(Debug, Default)]
pub(super) struct Settler {
    state: std::sync::Mutex<Pump>,
}

#[derive(Debug, Default)]
struct Pump {
    settled: Settled<Acker>,
    pending: Option<Acker>,
    sending: bool,
}

/// The bookkeeping of a [`Settler`], generic over the acker so it can be tested without a
/// broker.
#[derive(Debug)]
struct Settled<A> {
    /// Every tag below this one is settled (acked, or covered by a `multiple` ack to come).
    below: u64,
    /// Tags settled out of order, above `below`, with the acker of those that want an ack.
    ahead: BTreeMap<u64, Option<A>>,
}

impl<A> Default for Settled<A> {
    fn default() -> Self {
        Self {
            below: 1,
            ahead: BTreeMap::new(),
        }
    }
}

impl<A> Settled<A> {
    /// Records `tag` as settled; returns the acker to send a `multiple` ack with, if the run of
    /// settled tags from `below` grew and holds an acked delivery.
    fn settle(&mut self, tag: u64, acker: Option<A>) -> Option<A> {
        self.ahead.insert(tag, acker);
        let held = self.ahead.len();
        if held >= 1024 && held.is_power_of_two() {
            // A delivery that is never settled holds back every ack after it on its channel.
            tracing::warn!(
                held,
                below = self.below,
                "acks held back behind an unsettled delivery"
            );
        }
        // A `multiple` ack at the highest acked tag of the run covers every acked tag below
        // it; requeued tags in the run were settled by their own nack already.
        let mut last = None;
        while let Some(entry) = self.ahead.remove(&self.below) {
            if entry.is_some() {
                last = entry;
            }
            self.below += 1;
        }
        last
    }
}

impl Settler {
    fn pump(&self) -> std::sync::MutexGuard<'_, Pump> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn ack(&self, tag: u64, acker: Acker) -> Result<()> {
        self.settle(tag, Some(acker)).await
    }

    /// Returns a delivery to its queue by itself (a nack), then records it settled and sends
    /// the acks it was holding back.
    async fn requeue(&self, tag: u64, acker: Acker) -> Result<()> {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        if !acker.nack(options).await? {
            return Err(AmqpError::NotSettled);
        }
        self.settle(tag, None).await
    }

    async fn settle(&self, tag: u64, acker: Option<Acker>) -> Result<()> {
        {
            let mut pump = self.pump();
            if let Some(ready) = pump.settled.settle(tag, acker) {
                pump.pending = Some(ready);
            }
            if pump.sending || pump.pending.is_none() {
                return Ok(());
            }
            pump.sending = true;
        }
        loop {
            let next = {
                let mut pump = self.pump();
                match pump.pending.take() {
                    Some(next) => next,
                    None => {
                        pump.sending = false;
                        return Ok(());
                    }
                }
            };
            let sent = next.ack(BasicAckOptions { multiple: true }).await;
            if !matches!(sent, Ok(true)) {
                self.pump().sending = false;
                return match sent {
                    Err(e) => Err(e.into()),
                    Ok(_) => Err(AmqpError::NotSettled),
                };
            }
        }
    }
}

/// The deliveries of one consumer, on a channel of their own. Dropping it closes the channel,
/// which returns every unacked delivery to its queue: keep it until they are settled.
pub struct Deliveries {
    channel: Channel,
    consumer: Consumer,
    /// Coalesces acks; `None` for consumers the broker does not expect acks from (no-ack).
    settler: Option<Arc<Settler>>,
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
        Ok(Self {
            channel,
            consumer,
            settler: Some(Arc::default()),
        })
    }

    /// An exclusive, auto-deleted, server-named queue, optionally bound to an exchange.
    pub(super) async fn exclusive(
        channel: Channel,
        bind: Option<(&str, &[&str])>,
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
        let (exchange, patterns) = bind.unwrap_or_default();
        for pattern in patterns {
            channel
                .queue_bind(
                    name.clone().into(),
                    exchange.into(),
                    (*pattern).into(),
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
        Ok((
            name,
            Self {
                channel,
                consumer,
                settler: None,
            },
        ))
    }

    /// The next delivery; `None` once the consumer was cancelled or the channel closed.
    pub async fn next(&mut self) -> Option<Result<Incoming>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`Self::next`] as a poll, so several consumers can be polled in turn without a future
    /// (and an allocation) per delivery.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming>>> {
        let delivery = match std::task::ready!(self.consumer.poll_next_unpin(cx)) {
            None => return Poll::Ready(None),
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Poll::Ready(Some(Err(AmqpError::Broker(e)))),
        };
        Poll::Ready(Some(self.incoming(delivery)))
    }

    fn incoming(&self, delivery: lapin::message::Delivery) -> Result<Incoming> {
        let props = &delivery.properties;
        let text =
            |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
        let headers = props
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter(|(k, _)| is_read(k.as_str()))
                    .filter_map(|(k, v)| header_text(v).map(|text| (k.as_str().to_owned(), text)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Incoming {
            message_id: text(props.message_id()),
            reply_to: text(props.reply_to()),
            correlation_id: text(props.correlation_id()),
            user_id: text(props.user_id()),
            routing_key: delivery.routing_key.into(),
            redelivered: delivery.redelivered,
            headers,
            body: delivery.data,
            ack: AckHandle {
                acker: self
                    .settler
                    .clone()
                    .map(|settler| (delivery.acker, delivery.delivery_tag, settler)),
            },
        })
    }

    /// Closes the channel: deliveries not acked return to the queue.
    pub async fn close(self) {
        super::close_channel(&self.channel, "consumer done").await;
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
            tracing::debug!(error = %crate::telemetry::chain(&e), "consumer cancel failed");
        }
    }
}

/// The consumers of one partition's queues, one per lane, taken in turn: a lane with a backlog
/// yields one delivery, then each other lane with one ready gets its turn, so a producer that
/// floods its lane does not hold back the requests of the others.
pub struct Lanes {
    lanes: Vec<(String, Deliveries)>,
    /// The lane polled first next time.
    turn: usize,
}

impl Lanes {
    /// Consumes each of `queues`, each on a channel of its own: the first (the default lane)
    /// on the connection `default`, the others (the named lanes) on `named`. The tag of the
    /// consumer of the n-th is `tag` with `.n` appended past the first. Fails, closing what it
    /// opened, if any consumer cannot start.
    pub async fn start(
        default: &super::Broker,
        named: &super::Broker,
        queues: &[String],
        tag: &str,
        prefetch: u16,
    ) -> std::result::Result<Self, (String, AmqpError)> {
        let mut lanes = Vec::with_capacity(queues.len());
        for (n, queue) in queues.iter().enumerate() {
            let tag = if n == 0 {
                tag.to_owned()
            } else {
                format!("{tag}.{n}")
            };
            let broker = if n == 0 { default } else { named };
            match broker.consume(queue, &tag, prefetch).await {
                Ok(deliveries) => lanes.push((queue.clone(), deliveries)),
                Err(e) => {
                    Self { lanes, turn: 0 }.close().await;
                    return Err((queue.clone(), e));
                }
            }
        }
        Ok(Self { lanes, turn: 0 })
    }

    /// How many lanes there are; lanes are numbered from 0, the default lane first.
    pub fn count(&self) -> usize {
        self.lanes.len()
    }

    /// The next delivery of whichever lane has one, each in turn, with the lane it came from
    /// (see [`Self::queue`]); `None` as the item once that lane's consumer was cancelled or
    /// its channel closed. Only the lanes `open` admits are polled: a lane closed for now
    /// keeps its deliveries, in the client's buffer or the broker, and the others go on.
    pub async fn next(
        &mut self,
        open: impl Fn(usize) -> bool,
    ) -> (usize, Option<Result<Incoming>>) {
        let count = self.lanes.len();
        std::future::poll_fn(|cx| {
            for k in 0..count {
                let lane = (self.turn + k) % count;
                if !open(lane) {
                    continue;
                }
                if let Poll::Ready(item) = self.lanes[lane].1.poll_next(cx) {
                    self.turn = (lane + 1) % count;
                    return Poll::Ready((lane, item));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// The queue of a lane that [`Self::next`] named.
    pub fn queue(&self, lane: usize) -> &str {
        self.lanes.get(lane).map_or("", |(queue, _)| queue.as_str())
    }

    /// Stops the flow of every lane (see [`Deliveries::cancel`]).
    pub async fn cancel(&self) {
        futures::future::join_all(self.lanes.iter().map(|(_, d)| d.cancel())).await;
    }

    /// Closes every lane's channel: deliveries not acked return to their queues.
    pub async fn close(self) {
        futures::future::join_all(self.lanes.into_iter().map(|(_, d)| d.close())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Settled, is_read};

    #[test]
    fn only_the_headers_seatrush_reads_are_kept() {
        assert!(is_read(crate::protocol::BATCH_HEADER));
        assert!(is_read(crate::protocol::REASON_HEADER));
        assert!(is_read(crate::protocol::COUNT_HEADER));
        assert!(is_read("x-first-death-reason"));
        assert!(!is_read("x-junk-1"));
        assert!(!is_read("authorization"));
    }

    #[test]
    fn acks_wait_for_every_earlier_delivery_then_go_out_as_one() {
        let mut settled = Settled::default();
        assert_eq!(settled.settle(2, Some("ack2")), None, "1 is still open");
        assert_eq!(settled.settle(3, Some("ack3")), None);
        assert_eq!(
            settled.settle(1, Some("ack1")),
            Some("ack3"),
            "one ack covers 1 to 3"
        );
        assert_eq!(settled.settle(4, Some("ack4")), Some("ack4"));
    }

    #[test]
    fn a_requeued_delivery_does_not_hold_back_or_carry_the_acks_below_it() {
        let mut settled = Settled::default();
        assert_eq!(settled.settle(1, Some("ack1")), Some("ack1"));
        assert_eq!(settled.settle(3, None), None, "2 is still open");
        assert_eq!(
            settled.settle(2, Some("ack2")),
            Some("ack2"),
            "3 was nacked by itself"
        );
        assert_eq!(settled.settle(4, None), None, "nothing acked in this run");
        assert_eq!(settled.settle(5, Some("ack5")), Some("ack5"));
    }
}
