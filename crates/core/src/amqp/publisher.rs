//! Publishing answers, final events, requests and dead letters.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

use super::{AmqpError, Incoming, Result, Topology};
pub use crate::domain::ReplyTo;
use crate::protocol::{Answer, BATCH_HEADER, COUNT_HEADER, DecidedAnswer};

/// What a message is, for the count of what a worker publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reply,
    Event,
    Request,
    DeadLetter,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Reply => "reply",
            Self::Event => "event",
            Self::Request => "request",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// A message ready to be published.
#[derive(Debug, Clone)]
pub struct Outgoing {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
    kind: Kind,
    /// An answer for a reply queue that takes batches: the outbox packs it with the other
    /// answers for that queue it sends at the same moment.
    packable: bool,
    /// The broker returns it if no queue takes it (see [`super::RoutedAnswers`]).
    mandatory: bool,
}

const PERSISTENT: u8 = 2;

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

impl Outgoing {
    /// An answer to the client's `reply_to` queue (default exchange). Transient: a reply queue
    /// belongs to a live client.
    pub fn reply(to: &ReplyTo, body: Vec<u8>) -> Self {
        Self::to_queue(&to.queue, to.correlation_id.as_deref(), body)
    }

    fn to_queue(queue: &str, correlation_id: Option<&str>, body: Vec<u8>) -> Self {
        let mut properties = json_properties();
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(id.into());
        }
        Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            body,
            properties,
            kind: Kind::Reply,
            packable: false,
            mandatory: false,
        }
    }

    /// An answer for `to`: alone, or, if `to` takes batches, marked for the outbox to pack with
    /// the other answers it sends that queue at the same moment (the answer then carries the
    /// request's correlation id in its body).
    pub fn answer(to: &ReplyTo, answer: &mut Answer) -> Self {
        if !to.batch {
            return Self::reply(to, answer.to_json());
        }
        answer.correlation_id.clone_from(&to.correlation_id);
        Self::packed_answer(&to.queue, answer.to_json())
    }

    /// The answer to a decided request for `to`, as [`Outgoing::answer`] sends it.
    pub fn decided<'a>(to: &'a ReplyTo, mut answer: DecidedAnswer<'a>) -> Self {
        if !to.batch {
            return Self::reply(to, answer.to_json());
        }
        answer.correlation_id = to.correlation_id.as_deref();
        Self::packed_answer(&to.queue, answer.to_json())
    }

    /// An answer the outbox packs with the others for `queue` (its body carries the
    /// correlation id, so the message has none).
    fn packed_answer(queue: &str, body: Vec<u8>) -> Self {
        let mut message = Self::to_queue(queue, None, body);
        message.packable = true;
        message
    }

    /// One message holding a batch of answers, already packed, to a reply queue (transient).
    pub fn reply_batch(queue: &str, batch: Batch) -> Self {
        Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            properties: batch.properties(json_properties()),
            body: batch.into_body(),
            kind: Kind::Reply,
            packable: false,
            mandatory: false,
        }
    }

    /// A final event on the events exchange, persistent.
    pub fn event(topology: &Topology, course_id: &str, student_id: &str, body: Vec<u8>) -> Self {
        Self {
            exchange: topology.events_exchange(),
            routing_key: Topology::event_key(course_id, student_id),
            body,
            properties: json_properties().with_delivery_mode(PERSISTENT),
            kind: Kind::Event,
            packable: false,
            mandatory: false,
        }
    }

    /// The final answers of one group commit as one event, routing key
    /// [`Topology::FINALS_KEY`], persistent.
    pub fn finals(topology: &Topology, batch: Batch) -> Self {
        Self {
            exchange: topology.events_exchange(),
            routing_key: Topology::FINALS_KEY.to_owned(),
            properties: batch.properties(json_properties().with_delivery_mode(PERSISTENT)),
            body: batch.into_body(),
            kind: Kind::Event,
            packable: false,
            mandatory: false,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Asks the broker to return the message if no queue takes it, so that the sender learns
    /// whether it arrived anywhere ([`super::RoutedAnswers`]).
    pub fn mandatory(mut self) -> Self {
        self.mandatory = true;
        self
    }

    /// The message as it travels when no outbox packs it: an answer marked for packing goes
    /// as a batch of one, in the form its batching reply queue expects.
    pub fn unpacked(self) -> Self {
        if !self.packable {
            return self;
        }
        let mut batch = Batch::new();
        batch.push(&self.body);
        Self {
            mandatory: self.mandatory,
            ..Self::reply_batch(&self.routing_key, batch)
        }
    }

    /// Whether the outbox may pack this message into a batch for its queue.
    pub(super) fn packable(&self) -> bool {
        self.packable
    }

    pub(super) fn routing_key(&self) -> &str {
        &self.routing_key
    }

    pub(super) fn body(&self) -> &[u8] {
        &self.body
    }

    pub(super) fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Names the publishing connection's user in the `user_id` property; the broker refuses the
    /// message if it is not that user, which is what lets a worker trust it on a course change.
    pub fn with_user_id(mut self, user: &str) -> Self {
        self.properties = self.properties.with_user_id(user.into());
        self
    }

    /// Replaces the message's headers, as a tool sending hostile input does.
    pub fn with_headers(mut self, headers: FieldTable) -> Self {
        self.properties = self.properties.with_headers(headers);
        self
    }

    /// A request, as any producer publishes it: persistent, to the consistent-hash exchange,
    /// routed by course id, with the request id as `message_id`.
    pub fn request(
        topology: &Topology,
        course_id: &str,
        request_id: &str,
        reply_to: Option<&ReplyTo>,
        body: Vec<u8>,
    ) -> Self {
        let mut properties = json_properties()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(request_id.into());
        if let Some(to) = reply_to {
            properties = properties.with_reply_to(to.queue.as_str().into());
            if let Some(id) = &to.correlation_id {
                properties = properties.with_correlation_id(id.as_str().into());
            }
            if to.batch {
                let mut headers = FieldTable::default();
                headers.insert(BATCH_HEADER.into(), AMQPValue::Boolean(true));
                properties = properties.with_headers(headers);
            }
        }
        Self {
            exchange: topology.requests_exchange(),
            routing_key: course_id.to_owned(),
            body,
            properties,
            kind: Kind::Request,
            packable: false,
            mandatory: false,
        }
    }

    /// The same request on `lane` of `topology` (see [`Topology::lanes`]): a named lane's
    /// exchange instead of the default one; unchanged for `None`, the default lane.
    #[must_use]
    pub fn on_lane(mut self, topology: &Topology, lane: Option<&str>) -> Self {
        if lane.is_some() {
            self.exchange = topology.lane_exchange(lane);
        }
        self
    }

    /// A raw message to the request exchange, for tests and tools that must send malformed
    /// input exactly as a broken producer would.
    pub fn raw_request(
        topology: &Topology,
        routing_key: &str,
        message_id: Option<&str>,
        reply_to: Option<&ReplyTo>,
        body: Vec<u8>,
    ) -> Self {
        let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        if let Some(to) = reply_to {
            properties = properties.with_reply_to(to.queue.as_str().into());
        }
        Self {
            exchange: topology.requests_exchange(),
            routing_key: routing_key.to_owned(),
            body,
            properties,
            kind: Kind::Request,
            packable: false,
            mandatory: false,
        }
    }

    /// A copy of a message for the dead-letter exchange, with the reason in a header.
    pub fn dead_letter(topology: &Topology, original: &DeadCopy<'_>, reason: &str) -> Self {
        let mut headers = FieldTable::default();
        let mut put = |k: &str, v: &str| {
            headers.insert(
                k.into(),
                AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
            );
        };
        put(crate::protocol::REASON_HEADER, reason);
        put(super::dead::ROUTING_KEY_HEADER, original.routing_key);
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        if let Some(id) = original.message_id {
            properties = properties.with_message_id(id.into());
        }
        if let Some(to) = original.reply_to {
            properties = properties.with_reply_to(to.into());
        }
        Self {
            exchange: topology.dead_exchange(),
            routing_key: String::new(),
            body: original.body.to_vec(),
            properties,
            kind: Kind::DeadLetter,
            packable: false,
            mandatory: false,
        }
    }
}

/// Answers packed into one message: a JSON array of answer objects, each exactly as it would
/// travel alone, with their number in the [`COUNT_HEADER`] header.
#[derive(Debug, Clone)]
pub struct Batch {
    body: Vec<u8>,
    count: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        Self {
            body: b"[".to_vec(),
            count: 0,
        }
    }

    /// Appends one answer, given as its JSON object.
    pub fn push(&mut self, answer: &[u8]) {
        self.push_with(|body| body.extend_from_slice(answer));
    }

    /// Appends one answer that `write` serializes straight into the batch's buffer.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.count > 0 {
            self.body.push(b',');
        }
        write(&mut self.body);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn properties(&self, properties: BasicProperties) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            COUNT_HEADER.into(),
            AMQPValue::LongLongInt(i64::try_from(self.count).unwrap_or(i64::MAX)),
        );
        properties.with_headers(headers)
    }

    fn into_body(mut self) -> Vec<u8> {
        self.body.push(b']');
        self.body
    }
}

/// What is kept of a message that is dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct DeadCopy<'a> {
    pub message_id: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    pub routing_key: &'a str,
    pub body: &'a [u8],
}

impl<'a> DeadCopy<'a> {
    pub fn of(incoming: &'a Incoming) -> Self {
        Self {
            message_id: incoming.message_id.as_deref(),
            reply_to: incoming.reply_to.as_deref(),
            routing_key: &incoming.routing_key,
            body: &incoming.body,
        }
    }
}

/// A published message whose broker confirmation has not been awaited yet.
pub struct PendingConfirm {
    target: String,
    confirm: PublisherConfirm,
}

impl PendingConfirm {
    /// Waits for the broker's confirm; a nack is an error.
    pub async fn confirmed(self) -> Result<()> {
        self.confirmation().await?.0
    }

    /// Waits for the broker's confirm of a [mandatory](Outgoing::mandatory) message, as the
    /// client reports it: an ack or a nack, either carrying a message the broker returned.
    /// A return names no delivery tag, and the client hands a waiting return to whichever
    /// confirm it resolves next, so the message it carries may be another one of the channel
    /// (see [`super::RoutedAnswers`]).
    pub(super) async fn confirmation(self) -> Result<Confirmed> {
        let (acked, returned) = match self.confirm.await? {
            Confirmation::Ack(returned) => (Ok(()), returned),
            Confirmation::Nack(returned) => (Err(AmqpError::Nacked(self.target)), returned),
            Confirmation::NotRequested => (Ok(()), None),
        };
        Ok((acked, returned.map(Returned::of)))
    }
}

/// A confirm as the client reported it: acked, or nacked (an error naming the message's
/// target), and the message the broker returned that the client handed to this confirm, if any.
pub(super) type Confirmed = (Result<()>, Option<Returned>);

/// What identifies a message the broker returned: where it was sent and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Returned {
    pub routing_key: String,
    pub body: Vec<u8>,
}

impl Returned {
    fn of(message: lapin::message::BasicReturnMessage) -> Self {
        Self {
            routing_key: message.delivery.routing_key.to_string(),
            body: message.delivery.data,
        }
    }

    /// Whether `message` is the one returned.
    pub fn is(&self, message: &Outgoing) -> bool {
        self.routing_key == message.routing_key && self.body == message.body
    }
}

/// Publishes on one channel; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub(super) async fn confirmed(channel: Channel) -> Result<Self> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// Sends a message; the returned confirm resolves when the broker has it. Dropping it
    /// without awaiting is fine for messages that may be lost (provisional answers).
    pub async fn send(&self, message: Outgoing) -> Result<PendingConfirm> {
        crate::telemetry::metrics::published(message.kind.label());
        let target = format!("{}/{}", message.exchange, message.routing_key);
        let confirm = self
            .channel
            .basic_publish(
                message.exchange.into(),
                message.routing_key.into(),
                BasicPublishOptions {
                    mandatory: message.mandatory,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties,
            )
            .await?;
        Ok(PendingConfirm { target, confirm })
    }

    /// Sends and waits for the confirm.
    pub async fn send_confirmed(&self, message: Outgoing) -> Result<()> {
        self.send(message).await?.confirmed().await
    }

    /// Closes the channel (bounded).
    pub async fn close(self) {
        super::close_channel(&self.channel, "publisher done").await;
    }
}
