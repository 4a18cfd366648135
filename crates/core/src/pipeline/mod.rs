//! What travels between the stages of a worker, and the hand-offs between them, in the order a
//! request meets them: intake → registry → course actor → [`CommitQueue`] → committer → store →
//! finalizer → outbox. Each stage only hands forward: nothing here knows a later stage's
//! internals, and no stage calls back into an earlier one.
//!
//! - [`Envelope`]: a parsed request on its way to its course actor.
//! - [`Decided`]: a decided request on its way to the group commit.
//! - [`CommitQueue`]: sends the provisional answer and queues the decision for the commit.
//! - [`InFlight`]: counts what was taken from the broker and is not yet settled.
//! - [`CourseTicket`]: counts one course actor's messages, for idling and reloading.

mod in_flight;
mod ticket;

use std::sync::Arc;

use tokio::sync::mpsc;

pub use in_flight::{InFlight, InFlightGuard};
pub use ticket::CourseTicket;

use crate::amqp::{AckHandle, Outbox, Outgoing, ReplyTo};
use crate::domain::{Decision, Partition, Reason, Refusal, Request, Ruling};
use crate::protocol::{DecidedAnswer, Stage};
use crate::store::Pending;

/// A parsed request on its way to its course actor.
#[derive(Debug)]
pub struct Envelope {
    pub request: Request,
    pub reply_to: Option<ReplyTo>,
    pub ack: AckHandle,
    pub partition: Partition,
    /// The ownership epoch under which the partition was consumed; the commit checks it.
    pub epoch: i64,
    /// The broker delivered this message before (to this or another worker).
    pub redelivered: bool,
    pub guard: InFlightGuard,
    /// What the registration rules said of it at the intake.
    pub ruling: Ruling,
}

/// A decided request on its way to the group commit (its reply address travels in `pending`,
/// which stores it with a waitlist place).
#[derive(Debug)]
pub struct Decided {
    pub pending: Pending,
    pub ack: AckHandle,
    /// The course actor instance that decided it (none for a request rejected before any
    /// actor), told when the decision is durable and when the database disagreed with it.
    pub ticket: Option<Arc<CourseTicket>>,
    pub redelivered: bool,
    pub guard: InFlightGuard,
}

/// The committer is gone (the session is stopping); the message returns to its queue with its
/// channel.
#[derive(Debug)]
pub struct CommitClosed;

/// The way into the group commit: cheap to clone, one per session, held by the course actors
/// and by the stages that reject a request before any actor (unknown course, forbidden change).
#[derive(Clone)]
pub struct CommitQueue {
    outbox: Outbox,
    committer: mpsc::Sender<Decided>,
}

impl CommitQueue {
    /// A queue into `committer`; provisional answers go out through `outbox`.
    pub fn new(outbox: Outbox, committer: mpsc::Sender<Decided>) -> Self {
        Self { outbox, committer }
    }

    /// Sends the provisional answer at once and queues the decision for the group commit
    /// (waiting while the committer's channel is full: that is the backpressure).
    pub async fn submit(
        &self,
        envelope: Envelope,
        decision: Decision,
        ticket: Option<Arc<CourseTicket>>,
    ) -> Result<(), CommitClosed> {
        if let Some(to) = &envelope.reply_to {
            let mut answer =
                DecidedAnswer::new(&envelope.request, &decision.verdict, Stage::Provisional);
            answer.replayed = decision.replay;
            // Best effort by design: a lost provisional answer is covered by the final one.
            if let Err(e) = self.outbox.post(Outgoing::decided(to, answer)).await {
                tracing::debug!(error = %crate::telemetry::chain(&e), "provisional answer not sent");
            }
        }
        if let Some(ticket) = &ticket {
            ticket.handed_to_commit();
        }
        let decided = Decided {
            pending: Pending {
                request: envelope.request,
                provisional: decision.verdict,
                effect: decision.effect,
                replay: decision.replay,
                partition: envelope.partition,
                epoch: envelope.epoch,
                reply_to: envelope.reply_to,
                ruled: envelope.ruling.is_on(),
                skipped: decision.skipped,
            },
            ack: envelope.ack,
            ticket,
            redelivered: envelope.redelivered,
            guard: envelope.guard,
        };
        self.committer.send(decided).await.map_err(|_| CommitClosed)
    }

    /// A request rejected before any course actor saw it: recorded like any decision (so a
    /// redelivery replays it), without spawning anything.
    pub async fn reject(&self, envelope: Envelope, reason: Reason) -> Result<(), CommitClosed> {
        self.submit(envelope, Decision::rejected(reason), None)
            .await
    }

    /// A request the registration rules refused before any course actor saw it.
    pub async fn refuse(&self, envelope: Envelope, refusal: Refusal) -> Result<(), CommitClosed> {
        self.submit(envelope, Decision::refused(refusal), None)
            .await
    }
}
