//! The finalizer: publishes each committed batch's final answers (reply and event, batched
//! where the client or the events mode asks for it) and the promotions it made, waits for the broker's confirms, records the batch as answered, and only
//! then acks its deliveries.

use std::time::Duration;

use anyhow::anyhow;
use futures::future::join_all;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::super::fault::Fault;
use crate::amqp::{Batch, Outbox, Outgoing, Posted, ReplyTo, Topology};
use crate::domain::{Action, Outcome, Request, StudentId};
use crate::pipeline::Decided;
use crate::protocol::{Answer, DecidedAnswer, FinalEvents, Stage};
use crate::store::{Committed, Store};

pub(super) type CommittedBatch = Vec<(Decided, Committed)>;

/// Where and how the finalizer publishes.
pub(super) struct Publishing {
    pub topology: Topology,
    pub final_events: FinalEvents,
    /// The worker's broker user, which the releases completing swaps carry as `user_id`.
    pub broker_user: Option<String>,
}

/// How long the finalizer waits for a batch's broker confirms, or its acks, before it gives
/// the session up. Far above any healthy wait (milliseconds), and above short broker alarms.
const CONFIRMS_WITHIN: Duration = Duration::from_secs(30);

/// Publishes the final answers of committed batches, waits for the broker's confirms, records
/// them as answered, then acks.
///
/// A request the broker redelivers after its answer was already confirmed (the worker stopped
/// or crashed between answering and acking) is only acked: the client has its one final answer.
/// A client that re-publishes a request id is answered again, since its message is new.
pub(super) async fn finalize(
    mut batches: mpsc::Receiver<CommittedBatch>,
    outbox: Outbox,
    store: Store,
    publishing: Publishing,
    fault: Fault,
    halt: CancellationToken,
) {
    while let Some(batch) = batches.recv().await {
        let finalized = tokio::select! {
            finalized = finalize_batch(batch, &outbox, &store, &publishing, &fault) => finalized,
            // The session is over (its connection failed): no confirm or ack can come any
            // more, and every delivery of the batch is redelivered and replays its outcome.
            _ = fault.raised() => false,
            // The drain expired: the same, by the worker's choice.
            _ = halt.cancelled() => false,
        };
        if !finalized {
            return;
        }
    }
}

/// Answers one committed batch, then acks it; `false` if the session must end.
async fn finalize_batch(
    batch: CommittedBatch,
    outbox: &Outbox,
    store: &Store,
    publishing: &Publishing,
    fault: &Fault,
) -> bool {
    let mut answers = Answers::new(outbox, publishing);
    for (decided, committed) in &batch {
        answers.post(decided, committed).await;
    }
    answers.finish().await;
    let Answers {
        confirms,
        answered_batches,
        answered_copies,
        drawn_courses,
        ..
    } = answers;
    if let Err(e) = confirmed(confirms).await {
        // Not acked: the requests are redelivered and replay their committed outcome.
        fault.raise(e);
        return false;
    }
    crate::failpoint::crash_point(crate::failpoint::AFTER_PUBLISH);
    // Only a hint for redeliveries: if it cannot be written, a redelivered request is
    // answered twice, which is better than not acking what is committed and answered.
    if !(answered_batches.is_empty() && answered_copies.is_empty())
        && let Err(e) = store
            .mark_answered(&answered_batches, &answered_copies)
            .await
    {
        tracing::warn!(error = %crate::telemetry::chain(&e), "could not record final answers as sent");
    }
    // The same kind of hint for draws: a draw not recorded as announced is announced again by
    // the next worker that loads its course (same outcomes).
    let drawn: Vec<&str> = drawn_courses.iter().map(String::as_str).collect();
    if !drawn.is_empty()
        && let Err(e) = store.mark_draws_announced(&drawn).await
    {
        tracing::warn!(error = %crate::telemetry::chain(&e), "could not record draw results as sent");
    }
    crate::failpoint::crash_point(crate::failpoint::BEFORE_ACK);
    match crate::telemetry::metrics::busy_while(crate::telemetry::metrics::Stage::Ack, acked(batch))
        .await
    {
        Ok(()) => true,
        Err(e) => {
            fault.raise(e);
            false
        }
    }
}

/// The final answers of one batch as they are posted, with the confirms to wait for. Answers
/// for reply queues that take batches, and the batched events, are gathered and posted by
/// [`Answers::finish`], one message per reply queue and one event for the whole commit.
struct Answers<'a> {
    outbox: &'a Outbox,
    topology: &'a Topology,
    final_events: FinalEvents,
    broker_user: Option<&'a str>,
    confirms: Vec<Result<Posted, crate::amqp::AmqpError>>,
    /// The decision batches whose answers these are, to record as answered.
    answered_batches: Vec<i64>,
    /// Replayed outcomes answered at an address (request id, the address's fingerprint), to
    /// record so a redelivery of that copy is not answered again.
    answered_copies: Vec<(String, i64)>,
    /// The courses whose draw results these are, to record as announced.
    drawn_courses: Vec<String>,
    /// Final answers for reply queues that take batches, by queue, in the order first seen.
    replies: Vec<(String, Batch)>,
    /// The commit's final answers, for the one batched event.
    events: Batch,
}

impl<'a> Answers<'a> {
    fn new(outbox: &'a Outbox, publishing: &'a Publishing) -> Self {
        Self {
            outbox,
            topology: &publishing.topology,
            final_events: publishing.final_events,
            broker_user: publishing.broker_user.as_deref(),
            confirms: Vec::new(),
            answered_batches: Vec::new(),
            answered_copies: Vec::new(),
            drawn_courses: Vec::new(),
            replies: Vec::new(),
            events: Batch::new(),
        }
    }

    /// Posts (or gathers) one request's final answer, to its reply address and as an event,
    /// and posts the promotions it made. A redelivered request whose answer was already
    /// confirmed to the address it asks at gets none.
    async fn post(&mut self, decided: &Decided, committed: &Committed) {
        if decided.redelivered && committed.answered {
            return;
        }
        let request = &decided.pending.request;
        if let Some(id) = committed.batch_id
            && !self.answered_batches.contains(&id)
        {
            self.answered_batches.push(id);
        }
        if committed.replayed
            && let Some(to) = &decided.pending.reply_to
        {
            self.answered_copies
                .push((request.request_id.to_string(), to.key()));
        }
        let mut answer = DecidedAnswer::new(request, &committed.verdict, Stage::Final);
        answer.replayed = committed.replayed;
        answer.revised = committed.revised;
        // Batched answers and events are written straight into their batch's buffer: the
        // default path serializes each final answer twice (reply and event) and copies neither.
        match &decided.pending.reply_to {
            Some(to) if to.batch => {
                let mut batched = answer;
                batched.correlation_id = to.correlation_id.as_deref();
                self.reply_batch(&to.queue)
                    .push_with(|body| batched.write_to(body));
            }
            Some(to) => self.confirm(Outgoing::reply(to, answer.to_json())).await,
            None => {}
        }
        self.post_event(&answer).await;
        self.post_promotions(&committed.promotions).await;
        self.post_passed_over(&committed.passed_over).await;
        if committed.verdict.outcome == Outcome::Enrolled && committed.verdict.reason.is_none() {
            self.release_given_up(request).await;
        }
        // A course's draw record (fresh, or replayed to announce it again), even one with no
        // entrant: once confirmed, the course is announced and no clock wakes it again. A draw
        // the database refused settles nothing: the reloaded actor draws again.
        if committed.settles_draw {
            self.post_draw(committed.draws.as_slice()).await;
            self.drawn_courses.push(request.course_id.to_string());
        }
    }

    /// A swap that took its new seat gives up the old one: its release is published (under
    /// this worker's broker user, confirmed before the swap is acked, and again on a
    /// redelivery whose answer was not confirmed), to the course given up.
    async fn release_given_up(&mut self, swap: &Request) {
        if !matches!(swap.action, Action::Swap(_)) {
            return;
        }
        let Some(user) = self.broker_user else {
            tracing::error!(request_id = %swap.request_id, "a swap took its seat but the seat it gives up cannot be released: the AMQP URL names no broker user to sign the release with");
            return;
        };
        let Ok(by) = StudentId::parse(user) else {
            return;
        };
        let Some(release) = swap.release_of_swap(by) else {
            return;
        };
        let message = Outgoing::request(
            self.topology,
            release.course_id.as_str(),
            release.request_id.as_str(),
            None,
            crate::protocol::request_body(&release),
        )
        .with_user_id(user);
        self.confirm(message).await;
    }

    /// Each entrant of a draw hears what it gave them at the address of their entry request,
    /// and on the events exchange (in the commit's batched event, or one event each).
    async fn post_draw(&mut self, results: &[crate::protocol::DrawResult]) {
        for result in results {
            let answer = DecidedAnswer::new(&result.entry, &result.verdict, Stage::Final);
            if let Some(queue) = &result.reply_to {
                let to = ReplyTo::single(queue.as_str(), result.correlation_id.clone());
                self.confirm(Outgoing::reply(&to, answer.to_json())).await;
            }
            self.post_event(&answer).await;
        }
    }

    /// A final answer on the events exchange: into the commit's batched event, or as one event
    /// routed by its course and student.
    async fn post_event(&mut self, answer: &DecidedAnswer<'_>) {
        match self.final_events {
            FinalEvents::Batched => self.events.push_with(|body| answer.write_to(body)),
            FinalEvents::PerRequest => {
                let request = answer.request();
                let event = Outgoing::event(
                    self.topology,
                    request.course_id.as_str(),
                    request.student_id.as_str(),
                    answer.to_json(),
                );
                self.confirm(event).await;
            }
        }
    }

    /// Each student a request moved off the waitlist hears it on the events exchange, and at
    /// the address of their own enroll request where it still listens; one message each, in
    /// either events mode (promotions are rare and each concerns one student).
    async fn post_promotions(&mut self, promotions: &[crate::protocol::Promotion]) {
        for promotion in promotions {
            self.post_to_waiting(promotion, Answer::promoted(promotion).to_json())
                .await;
        }
    }

    /// An event about a waiting student: at the address of their enroll request where it
    /// still listens, and on the events exchange.
    async fn post_to_waiting(&mut self, promotion: &crate::protocol::Promotion, body: Vec<u8>) {
        if let Some(queue) = &promotion.reply_to {
            let to = ReplyTo::single(queue.as_str(), promotion.correlation_id.clone());
            self.confirm(Outgoing::reply(&to, body.clone())).await;
        }
        let event = Outgoing::event(
            self.topology,
            &promotion.course_id,
            &promotion.student_id,
            body,
        );
        self.confirm(event).await;
    }

    /// Each waiting student the rules passed over for a freed seat hears why, as a promoted
    /// student would hear of the seat.
    async fn post_passed_over(&mut self, passed: &[crate::protocol::PassedOver]) {
        for passed in passed {
            self.post_to_waiting(&passed.promotion, Answer::passed_over(passed).to_json())
                .await;
        }
    }

    /// The batch of final answers for a reply queue that takes batches, started on first use.
    fn reply_batch(&mut self, queue: &str) -> &mut Batch {
        let at = match self.replies.iter().position(|(q, _)| q == queue) {
            Some(at) => at,
            None => {
                self.replies.push((queue.to_owned(), Batch::new()));
                self.replies.len() - 1
            }
        };
        &mut self.replies[at].1
    }

    /// Posts what was gathered: one message per reply queue that takes batches, and the
    /// commit's batched event.
    async fn finish(&mut self) {
        for (queue, batch) in std::mem::take(&mut self.replies) {
            self.confirm(Outgoing::reply_batch(&queue, batch)).await;
        }
        let events = std::mem::take(&mut self.events);
        if !events.is_empty() {
            self.confirm(Outgoing::finals(self.topology, events)).await;
        }
    }

    async fn confirm(&mut self, message: Outgoing) {
        self.confirms
            .push(self.outbox.post_confirmed(message).await);
    }
}

/// Waits for every confirm. Bounded: a confirm the client library never resolves (its
/// connection failed between the publish and the error) must not hold the session forever.
async fn confirmed(confirms: Vec<Result<Posted, crate::amqp::AmqpError>>) -> anyhow::Result<()> {
    let confirming = join_all(
        confirms
            .into_iter()
            .map(|sent| async move { sent?.confirmed().await }),
    );
    let Ok(confirmed) = tokio::time::timeout(CONFIRMS_WITHIN, confirming).await else {
        return Err(anyhow!(
            "publishing final answers: no broker confirm within {CONFIRMS_WITHIN:?}"
        ));
    };
    match confirmed.into_iter().find(Result::is_err) {
        Some(Err(e)) => Err(anyhow::Error::new(e).context("publishing final answers")),
        _ => Ok(()),
    }
}

/// Acks every delivery of the batch, each releasing its in-flight count; bounded like the
/// confirms.
async fn acked(batch: CommittedBatch) -> anyhow::Result<()> {
    let acking = join_all(batch.into_iter().map(|(decided, _)| async move {
        if lose_ack(&decided.pending.request) {
            // Dropped unsettled: the broker gets it back and redelivers it.
            return Ok(());
        }
        let acked = decided.ack.ack().await;
        drop(decided.guard);
        acked
    }));
    let Ok(acks) = tokio::time::timeout(CONFIRMS_WITHIN, acking).await else {
        return Err(anyhow!(
            "acking committed requests: not settled within {CONFIRMS_WITHIN:?}"
        ));
    };
    match acks.into_iter().find(Result::is_err) {
        Some(Err(e)) => Err(anyhow!(e).context("acking committed requests")),
        _ => Ok(()),
    }
}

/// A named fail point for fault-injection tests, `finalize-lose-ack-<course>`: the ack is lost as
/// if the worker died between answering and acking, and the broker redelivers the request.
/// Compiled out without the `failpoints` feature.
#[cfg(feature = "failpoints")]
fn lose_ack(request: &crate::domain::Request) -> bool {
    let name = format!("finalize-lose-ack-{}", request.course_id);
    fail::eval(&name, |_| ()).is_some()
}

#[cfg(not(feature = "failpoints"))]
fn lose_ack(_: &crate::domain::Request) -> bool {
    false
}
