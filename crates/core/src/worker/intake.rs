//! The intake: consumes one partition, parses each delivery once, and hands it forward: to the
//! registry (which finds its course actor), or, for a course change from a user who may not
//! make one, straight to the commit as `forbidden`. What cannot be parsed is dead-lettered with
//! its reason and answered where possible.

use std::sync::Arc;

use anyhow::anyhow;
use tokio_util::sync::CancellationToken;

use super::fault::Fault;
use crate::amqp::{Broker, DeadCopy, Deliveries, Incoming, Outbox, Outgoing, ReplyTo, Topology};
use crate::course::Registry;
use crate::domain::{Action, Reason};
use crate::pipeline::{CommitQueue, Envelope, InFlight, InFlightGuard};
use crate::protocol::{Answer, Invalid, parse_request};
use crate::store::Lease;
use crate::telemetry::metrics::{self, Stage};

#[derive(Clone)]
pub(super) struct Intake {
    pub broker: Arc<Broker>,
    pub registry: Registry,
    pub commit: CommitQueue,
    /// Dead letters of invalid messages, and answers to them.
    pub outbox: Outbox,
    pub topology: Topology,
    pub prefetch: u16,
    pub fault: Fault,
    pub admin_users: Arc<Vec<String>>,
    /// The session's halt: a delivery still being routed or dead-lettered then is given up
    /// (unacked, it returns to the broker) instead of waiting on a database or broker that
    /// does not answer.
    pub halt: CancellationToken,
}

impl Intake {
    /// Consumes the partition held by `lease` until `stop`, counting each delivery in
    /// `in_flight` until it is settled. Deliveries are handled one at a time, which keeps each
    /// course's requests in arrival order. Returns the cancelled consumer, whose channel must
    /// stay open until what it delivered is settled.
    pub(super) async fn consume(
        self,
        lease: Lease,
        stop: CancellationToken,
        in_flight: InFlight,
    ) -> Option<Deliveries> {
        let queue = self.topology.partition_queue(lease.partition);
        let tag = format!("p{}-e{}", lease.partition, lease.epoch);
        let mut deliveries = match self.broker.consume(&queue, &tag, self.prefetch).await {
            Ok(deliveries) => deliveries,
            Err(e) => {
                self.fault
                    .raise(anyhow::Error::new(e).context(format!("consuming {queue}")));
                return None;
            }
        };
        tracing::info!(partition = %lease.partition, epoch = lease.epoch, "consuming partition");
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = deliveries.next() => next,
            };
            match next {
                Some(Ok(incoming)) => {
                    let guard = in_flight.enter();
                    tokio::select! {
                        // The delivery first: on the usual path it is routed at once, and the
                        // halt's token is then never polled (polling it registers a waiter).
                        biased;
                        () = self.handle(incoming, lease, guard) => {}
                        // Routing waits while the catalog cannot be read or a mailbox is
                        // full, dead-lettering while the broker does not confirm; past the
                        // halt, the delivery is dropped unacked and returns to the broker.
                        _ = self.halt.cancelled() => break,
                    }
                }
                Some(Err(e)) => {
                    self.fault
                        .raise(anyhow::Error::new(e).context(format!("consuming {queue}")));
                    break;
                }
                None => {
                    if !stop.is_cancelled() {
                        self.fault
                            .raise(anyhow!("the broker cancelled the consumer of {queue}"));
                    }
                    break;
                }
            }
        }
        // Stop the flow but keep the channel: what is in flight is still acked on it. A broker
        // that stalls never confirms the cancel; the channel's close then stops the flow.
        tokio::select! {
            () = deliveries.cancel() => {}
            _ = self.halt.cancelled() => {}
        }
        tracing::info!(partition = %lease.partition, "stopped consuming partition");
        Some(deliveries)
    }

    async fn handle(&self, incoming: Incoming, lease: Lease, guard: InFlightGuard) {
        if incoming.redelivered {
            metrics::redelivered();
        }
        let parsed = metrics::busy_in(Stage::Parse, || {
            parse_request(
                incoming.message_id.as_deref(),
                incoming.user_id.as_deref(),
                &incoming.body,
            )
        });
        match parsed {
            Ok(request) => {
                let batch = takes_batches(&incoming);
                let reply_to = incoming.reply_to.map(|queue| ReplyTo {
                    queue,
                    correlation_id: incoming.correlation_id,
                    batch,
                });
                let envelope = Envelope {
                    request,
                    reply_to,
                    ack: incoming.ack,
                    partition: lease.partition,
                    epoch: lease.epoch,
                    redelivered: incoming.redelivered,
                    guard,
                };
                // An error means the committer is gone (shutting down): the delivery returns
                // to its queue with the channel.
                let _ = if self.may_not_change(&envelope) {
                    tracing::warn!(user = %envelope.request.student_id, course_id = %envelope.request.course_id, action = envelope.request.action.as_str(), "course change refused: not an admin user");
                    self.commit.reject(envelope, Reason::Forbidden).await
                } else {
                    metrics::busy_while(Stage::Route, self.registry.route(envelope)).await
                };
            }
            Err(invalid) => self.reject(incoming, invalid, guard).await,
        }
    }

    /// A course change, or a draw wake-up, from a broker user not listed as an admin.
    fn may_not_change(&self, envelope: &Envelope) -> bool {
        matches!(envelope.request.action, Action::Configure(_) | Action::Draw)
            && !self
                .admin_users
                .iter()
                .any(|u| u == envelope.request.student_id.as_str())
    }

    /// Dead-letters a message that is not a valid request, with the reason in a header, answers
    /// it if it can be answered, and only then acks it.
    async fn reject(&self, incoming: Incoming, invalid: Box<Invalid>, guard: InFlightGuard) {
        tracing::debug!(why = %invalid.why, message_id = ?incoming.message_id, "invalid request");
        metrics::dead_lettered(metrics::DeadReason::Invalid);
        let dead = Outgoing::dead_letter(&self.topology, &DeadCopy::of(&incoming), &invalid.why);
        let confirmed = match self.outbox.post_confirmed(dead).await {
            Ok(posted) => posted.confirmed().await,
            Err(e) => Err(e),
        };
        if let Err(e) = confirmed {
            self.fault
                .raise(anyhow::Error::new(e).context("dead-lettering an invalid request"));
            return;
        }
        if let (true, Some(queue)) = (invalid.answerable, &incoming.reply_to) {
            let to = ReplyTo {
                queue: queue.clone(),
                correlation_id: incoming.correlation_id.clone(),
                batch: takes_batches(&incoming),
            };
            let mut answer = Answer::invalid(&invalid);
            if let Err(e) = self.outbox.post(Outgoing::answer(&to, &mut answer)).await {
                tracing::debug!(error = %crate::telemetry::chain(&e), "answer to an invalid request not sent");
            }
        }
        if let Err(e) = incoming.ack.ack().await {
            self.fault
                .raise(anyhow::Error::new(e).context("acking an invalid request"));
        }
        drop(guard);
    }
}

/// Whether the producer asked for its answers in batches (`x-seatrush-batch: true`, as a
/// boolean or a string).
fn takes_batches(incoming: &Incoming) -> bool {
    incoming
        .header(crate::protocol::BATCH_HEADER)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}
