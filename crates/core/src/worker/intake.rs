//! The intake: consumes one partition, parses each delivery once, and hands it forward: to the
//! registry (which finds its course actor), or, for a course change from a user who may not
//! make one, straight to the commit as `forbidden`. What cannot be parsed is answered with its
//! reason where a queue takes the answer, and dead-lettered with it otherwise.

use std::sync::Arc;

use anyhow::anyhow;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::fault::Fault;
use super::judge::Judge;
use super::registry_watch::RegistryWatch;
use crate::amqp::{
    Broker, DeadCopy, Incoming, Lanes, Outbox, Outgoing, ReplyTo, RoutedAnswers, Topology,
};
use crate::course::Registry;
use crate::domain::{Action, Reason, Request, Ruling};
use crate::pipeline::{CommitQueue, Envelope, InFlight, InFlightGuard};
use crate::protocol::{Answer, Invalid, parse_request};
use crate::store::Lease;
use crate::telemetry::metrics::{self, Stage};

#[derive(Clone)]
pub(super) struct Intake {
    pub broker: Arc<Broker>,
    /// The session's second connection, for the named lanes' consumers.
    pub bulk: Arc<Broker>,
    pub courses: Registry,
    pub commit: CommitQueue,
    /// Dead letters of invalid messages.
    pub outbox: Outbox,
    /// Answers to invalid messages, published so that the intake learns whether a queue took
    /// them.
    pub routed: RoutedAnswers,
    pub topology: Topology,
    pub prefetch: u16,
    pub fault: Fault,
    pub admin_users: Arc<Vec<String>>,
    /// The session's halt: a delivery still being routed or dead-lettered then is given up
    /// (unacked, it returns to the broker) instead of waiting on a database or broker that
    /// does not answer.
    pub halt: CancellationToken,
    /// Whether the registration rules are on; the judge rules on requests under them.
    pub registry: RegistryWatch,
    pub judge: Judge,
}

/// What an intake takes from the broker at once: a delivery alone (no registry is loaded, the
/// usual path costs nothing more), or what the broker had already delivered, to be judged.
// On the stack for the moment one delivery is handled: boxing the large variant would allocate
// on the usual path, which this type exists to keep free of allocations.
#[allow(clippy::large_enum_variant)]
enum Taken {
    One(Incoming, InFlightGuard, usize),
    Judged(Vec<(Incoming, InFlightGuard, usize)>),
}

/// An invalid delivery on its way out: its dead letter posted, waiting for the broker's confirm
/// before it is answered and acked; it yields the lane the delivery came from. The intake
/// polls these beside its next deliveries, so a flood of bad messages costs each a place in the
/// broker's pipeline, not a round trip that the valid requests behind it wait for.
type Settling<'a> = BoxFuture<'a, usize>;

/// The invalid deliveries one handling dead-lettered, each with its lane.
type Rejected<'a> = Vec<(usize, Settling<'a>)>;

/// Deliveries judged under the registration rules in one transaction at most: what the
/// broker has already handed over is taken together, never waited for.
const JUDGED_AT_ONCE: usize = 256;

/// Invalid deliveries of one lane of a partition whose dead copies may await the broker's
/// confirm at once. Enough to keep the dead-letter publishes pipelined; beyond it the lane
/// takes no more deliveries until one settles, while the partition's other lanes go on.
/// Without it only the prefetch bounded them, and a flood of large invalid messages held
/// partitions × prefetch bodies in memory.
const SETTLING_AT_ONCE: usize = 128;

impl Intake {
    /// Consumes the partition held by `lease`, every lane's queue of it, until `stop`,
    /// counting each delivery in `in_flight` until it is settled. Deliveries are handled one at
    /// a time, which keeps each course's requests in arrival order within a lane; the lanes
    /// take turns. Returns the cancelled consumers, whose channels must stay open until what
    /// they delivered is settled.
    pub(super) async fn consume(
        self,
        lease: Lease,
        stop: CancellationToken,
        in_flight: InFlight,
    ) -> Option<Lanes> {
        let queues = self.topology.partition_queues(lease.partition);
        let tag = format!("p{}-e{}", lease.partition, lease.epoch);
        let mut deliveries =
            match Lanes::start(&self.broker, &self.bulk, &queues, &tag, self.prefetch).await {
                Ok(deliveries) => deliveries,
                Err((queue, e)) => {
                    self.fault
                        .raise(anyhow::Error::new(e).context(format!("consuming {queue}")));
                    return None;
                }
            };
        tracing::info!(partition = %lease.partition, epoch = lease.epoch, "consuming partition");
        // Each holds a delivery not yet acked, with its dead copy and its answer: at most
        // SETTLING_AT_ONCE, so a flood of invalid messages that the broker confirms slowly
        // waits in the broker, not in this worker's memory.
        let mut settling: FuturesUnordered<Settling<'_>> = FuturesUnordered::new();
        // How many of `settling` came from each lane.
        let mut unsettled = vec![0usize; deliveries.count()];
        loop {
            let open = |lane: usize| unsettled[lane] < SETTLING_AT_ONCE;
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                Some(lane) = settling.next(), if !settling.is_empty() => {
                    unsettled[lane] -= 1;
                    continue;
                }
                next = deliveries.next(open) => next,
            };
            let (lane, next) = next;
            match next {
                Some(Ok(incoming)) => {
                    let guard = in_flight.enter();
                    let mut failed = None;
                    // Under the rules, what the broker has already delivered is judged in one
                    // transaction; without them, each delivery goes on alone, as it came.
                    let taken = if self.registry.is_loaded() {
                        let mut batch = vec![(incoming, guard, lane)];
                        while batch.len() < JUDGED_AT_ONCE {
                            match deliveries.next(open).now_or_never() {
                                Some((lane, Some(Ok(more)))) => {
                                    batch.push((more, in_flight.enter(), lane))
                                }
                                Some((lane, Some(Err(e)))) => {
                                    failed = Some((lane, e));
                                    break;
                                }
                                Some((_, None)) | None => break,
                            }
                        }
                        Taken::Judged(batch)
                    } else {
                        Taken::One(incoming, guard, lane)
                    };
                    let mut rejected = Vec::new();
                    tokio::select! {
                        // The deliveries first: on the usual path they are routed at once,
                        // and the halt's token is then never polled (polling it registers a
                        // waiter).
                        biased;
                        () = self.handle(taken, lease, &mut rejected) => {}
                        // Routing waits while the catalog cannot be read or a mailbox is
                        // full, judging while the database does not answer, dead-lettering
                        // while the broker does not confirm; past the halt, the deliveries
                        // are dropped unacked and return to the broker.
                        _ = self.halt.cancelled() => break,
                    }
                    for (lane, settle) in rejected {
                        unsettled[lane] += 1;
                        settling.push(settle);
                    }
                    if let Some((lane, e)) = failed {
                        let queue = deliveries.queue(lane);
                        self.fault
                            .raise(anyhow::Error::new(e).context(format!("consuming {queue}")));
                        break;
                    }
                }
                Some(Err(e)) => {
                    let queue = deliveries.queue(lane);
                    self.fault
                        .raise(anyhow::Error::new(e).context(format!("consuming {queue}")));
                    break;
                }
                None => {
                    if !stop.is_cancelled() {
                        let queue = deliveries.queue(lane);
                        self.fault
                            .raise(anyhow!("the broker cancelled the consumer of {queue}"));
                    }
                    break;
                }
            }
        }
        // The invalid deliveries dead-lettered so far are settled; past the halt they are
        // dropped unacked and return to the broker.
        tokio::select! {
            () = async { while settling.next().await.is_some() {} } => {}
            _ = self.halt.cancelled() => {}
        }
        drop(settling);
        // Stop the flow but keep the channel: what is in flight is still acked on it. A broker
        // that stalls never confirms the cancel; the channel's close then stops the flow.
        tokio::select! {
            () = deliveries.cancel() => {}
            _ = self.halt.cancelled() => {}
        }
        tracing::info!(partition = %lease.partition, "stopped consuming partition");
        Some(deliveries)
    }

    /// Parses what was taken and hands it forward in order; deliveries taken together under
    /// the registration rules are judged first, all at once.
    async fn handle<'a>(&'a self, taken: Taken, lease: Lease, rejected: &mut Rejected<'a>) {
        let batch = match taken {
            Taken::One(incoming, guard, lane) => {
                if let Some(envelope) = self.parse(incoming, lease, guard, lane, rejected).await {
                    self.forward(envelope).await;
                }
                return;
            }
            Taken::Judged(batch) => batch,
        };
        let mut envelopes = Vec::with_capacity(batch.len());
        for (incoming, guard, lane) in batch {
            if let Some(envelope) = self.parse(incoming, lease, guard, lane, rejected).await {
                envelopes.push(envelope);
            }
        }
        if !envelopes.is_empty() {
            let rulings = self.judge(&envelopes).await;
            for (envelope, ruling) in envelopes.iter_mut().zip(rulings) {
                envelope.ruling = ruling;
            }
        }
        for envelope in envelopes {
            self.forward(envelope).await;
        }
    }

    /// The rulings of the rules on these requests, from the worker's judge; all `Off` if it
    /// is gone (the session is stopping: nothing judged now will be committed).
    async fn judge(&self, envelopes: &[Envelope]) -> Vec<Ruling> {
        let requests: Vec<Request> = envelopes.iter().map(|e| e.request.clone()).collect();
        match self.judge.rule(requests).await {
            Ok(rulings) => rulings,
            Err(super::judge::JudgeGone) => {
                // Held back until the halt drops them unacked: they return to the broker.
                std::future::pending::<()>().await;
                Vec::new()
            }
        }
    }

    /// Hands a parsed request forward: refused by the rules or forbidden, straight to the
    /// commit; otherwise to its course actor.
    async fn forward(&self, envelope: Envelope) {
        // An error means the committer is gone (shutting down): the delivery returns to its
        // queue with the channel.
        let _ = if let Ruling::Refused(refusal) = &envelope.ruling {
            let refusal = refusal.clone();
            self.commit.refuse(envelope, refusal).await
        } else if self.may_not_change(&envelope) {
            tracing::warn!(user = %envelope.request.student_id, course_id = %envelope.request.course_id, action = envelope.request.action.as_str(), "course change refused: not an admin user");
            self.commit.reject(envelope, Reason::Forbidden).await
        } else {
            metrics::busy_while(Stage::Route, self.courses.route(envelope)).await
        };
    }

    /// The delivery (from `lane`) as an envelope; an invalid one is dead-lettered, and what
    /// remains of it (the answer and the ack, after the broker's confirm) joins `rejected`.
    async fn parse<'a>(
        &'a self,
        incoming: Incoming,
        lease: Lease,
        guard: InFlightGuard,
        lane: usize,
        rejected: &mut Rejected<'a>,
    ) -> Option<Envelope> {
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
                Some(Envelope {
                    request,
                    reply_to,
                    ack: incoming.ack,
                    partition: lease.partition,
                    epoch: lease.epoch,
                    redelivered: incoming.redelivered,
                    guard,
                    ruling: Ruling::Off,
                })
            }
            Err(invalid) => {
                rejected.push((lane, self.reject(incoming, invalid, guard, lane)));
                None
            }
        }
    }

    /// A course change, a draw wake-up or a swap's release, from a broker user not listed as an
    /// admin.
    fn may_not_change(&self, envelope: &Envelope) -> bool {
        let user = match &envelope.request.action {
            Action::Configure(_) | Action::Draw => &envelope.request.student_id,
            Action::Release(by) => by,
            _ => return false,
        };
        !self.admin_users.iter().any(|u| u == user.as_str())
    }

    /// Settles a message that is not a valid request, and yields `lane`. One with a valid id
    /// and a reply address is answered there (`rejected`/`invalid`, the reason in `detail`)
    /// and, once a queue took the answer, acked. Any other, or one whose answer no queue took
    /// (nobody listens at the address), is dead-lettered with the reason in a header and acked
    /// once the broker confirmed the copy. Nothing of it runs in the intake's own loop, so a
    /// broker that confirms slowly holds up only the lane whose invalid deliveries wait on it
    /// (up to [`SETTLING_AT_ONCE`]), not the partition. If neither can be published (the
    /// session is failing), the delivery is not acked: it returns to the broker.
    fn reject<'a>(
        &'a self,
        incoming: Incoming,
        invalid: Box<Invalid>,
        guard: InFlightGuard,
        lane: usize,
    ) -> Settling<'a> {
        tracing::debug!(why = %invalid.why, message_id = ?incoming.message_id, "invalid request");
        Box::pin(async move {
            let answered = match self.answer_invalid(&incoming, &invalid).await {
                Ok(answered) => answered,
                Err(e) => {
                    self.fault
                        .raise(anyhow::Error::new(e).context("answering an invalid request"));
                    return lane;
                }
            };
            if answered {
                metrics::invalid_answered();
            } else if let Err(e) = self.dead_letter_invalid(&incoming, &invalid.why).await {
                self.fault
                    .raise(anyhow::Error::new(e).context("dead-lettering an invalid request"));
                return lane;
            }
            if let Err(e) = incoming.ack.ack().await {
                self.fault
                    .raise(anyhow::Error::new(e).context("acking an invalid request"));
            }
            drop(guard);
            lane
        })
    }

    /// Answers an invalid message that has a valid id and a reply address; `true` once a queue
    /// took the answer, `false` if there is nothing to answer or nobody listens there.
    async fn answer_invalid(
        &self,
        incoming: &Incoming,
        invalid: &Invalid,
    ) -> crate::amqp::Result<bool> {
        let (true, Some(queue)) = (invalid.answerable, &incoming.reply_to) else {
            return Ok(false);
        };
        let to = ReplyTo {
            queue: queue.clone(),
            correlation_id: incoming.correlation_id.clone(),
            batch: takes_batches(incoming),
        };
        let mut answer = Answer::invalid(invalid);
        self.routed
            .deliver(Outgoing::answer(&to, &mut answer))
            .await
    }

    /// Copies an invalid message to the dead-letter exchange with `why`, and waits for the
    /// broker's confirm.
    async fn dead_letter_invalid(&self, incoming: &Incoming, why: &str) -> crate::amqp::Result<()> {
        metrics::dead_lettered(metrics::DeadReason::Invalid);
        let dead = Outgoing::dead_letter(&self.topology, &DeadCopy::of(incoming), why);
        self.outbox.post_confirmed(dead).await?.confirmed().await
    }
}

/// Whether the producer asked for its answers in batches (`x-seatrush-batch: true`, as a
/// boolean or a string).
fn takes_batches(incoming: &Incoming) -> bool {
    incoming
        .header(crate::protocol::BATCH_HEADER)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}
