//! One instance of a course actor: loads the course, then decides its requests one at a time
//! from memory and hands each decision forward to the commit. The supervisor (`actor.rs`)
//! starts a new instance after a panic or when the state must be read again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use super::context::ActorContext;
use super::decision::{CourseState, Rules};
use super::loads::Loads;
use crate::domain::{CourseId, Decision, Eligibility, Refusal, StudentId};
use crate::pipeline::{CourseTicket, Envelope};

/// The message being decided, kept outside the instance so a panic does not lose it.
pub(super) type InHand = Arc<Mutex<Option<Envelope>>>;
/// The mailbox, shared by the instances the supervisor starts one after the other.
pub(super) type Mailbox = Arc<tokio::sync::Mutex<mpsc::Receiver<Envelope>>>;

/// Why an instance ended.
pub(super) enum Stop {
    /// Every sender is gone and the mailbox is empty: passivated, evicted or shutting down.
    MailboxClosed,
    /// The database disagreed with this instance's memory (`diverged`), or the partition was
    /// owned by another worker meanwhile: reload and go on.
    Reload { diverged: bool },
}

pub(super) struct Instance {
    pub course: CourseId,
    pub mailbox: Mailbox,
    pub in_hand: InHand,
    pub ticket: Arc<CourseTicket>,
    pub ctx: Arc<ActorContext>,
}

impl Instance {
    pub(super) async fn run(self) -> Stop {
        self.ticket.all_committed().await;
        let mut state = load(&self.ctx.loads, &self.course, self.ctx.draw_entries).await;
        // The ownership epoch of the partition this state was loaded under: the first request's.
        let mut loaded_under: Option<i64> = None;
        loop {
            let Some(envelope) = self.next().await else {
                return Stop::MailboxClosed;
            };
            // A newer epoch means the partition left this worker and came back: another owner
            // may have decided for this course meanwhile, so the state is read again. (Requests
            // of an older epoch are decided as they are; their commit is fenced out.)
            let newer_epoch = loaded_under.is_some_and(|epoch| envelope.epoch > epoch);
            let diverged = self.ticket.is_stale();
            if diverged || newer_epoch {
                self.hold(envelope);
                return Stop::Reload { diverged };
            }
            loaded_under = loaded_under.max(Some(envelope.epoch));
            let mut envelope = envelope;
            self.claim_if_needed(&mut envelope, state.as_ref()).await;
            // One instant for what is judged and what is decided: a draw found due by one is
            // due for the other.
            // The worker's clock decides windows: keep worker hosts NTP-synchronized.
            let now = chrono::Utc::now();
            let eligibility = self.eligibility(&envelope, state.as_ref(), now).await;
            let Some((envelope, decision)) =
                self.decide(envelope, state.as_mut(), eligibility.as_deref(), now)
            else {
                continue;
            };
            crate::failpoint::crash_point(crate::failpoint::AFTER_DECIDE);
            // A draw this request found due goes to the commit first: it came first.
            if let Some((request, draw)) = state.as_mut().and_then(CourseState::take_draw)
                && self.submit_draw(&envelope, request, draw).await.is_err()
            {
                return Stop::MailboxClosed;
            }
            // At debug level, what happens to one request carries its id (a disabled span costs
            // next to nothing on this hot path).
            let span = tracing::debug_span!("request", request_id = %envelope.request.request_id);
            let handed = self
                .ctx
                .commit
                .submit(envelope, decision, Some(self.ticket.clone()))
                .instrument(span)
                .await;
            if handed.is_err() {
                // The committer is gone: the worker is stopping and the message returns to its
                // queue when the channel closes.
                return Stop::MailboxClosed;
            }
        }
    }

    /// The message a crashed or reloading instance left in hand, else the next in the mailbox;
    /// `None` once the mailbox is closed and empty.
    async fn next(&self) -> Option<Envelope> {
        let carried = self
            .in_hand
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match carried {
            Some(envelope) => Some(envelope),
            None => self.mailbox.lock().await.recv().await,
        }
    }

    /// Hands the course's draw to the commit, on the partition and epoch of the request that
    /// found it due. Nothing is acked for it; it counts as in flight with that request, and on
    /// this actor's ticket, until committed. If it is not committed (the worker dies, the
    /// partition moves), the next owner draws again from the same seed and entrants.
    async fn submit_draw(
        &self,
        cause: &Envelope,
        request: crate::domain::Request,
        draw: Decision,
    ) -> Result<(), crate::pipeline::CommitClosed> {
        crate::failpoint::crash_point(crate::failpoint::BEFORE_DRAW);
        let envelope = Envelope {
            request,
            reply_to: None,
            ack: crate::amqp::AckHandle::detached(),
            partition: cause.partition,
            epoch: cause.epoch,
            redelivered: false,
            guard: cause.guard.sibling(),
            // Under the rules, the commit settles the seats the draw claimed.
            ruling: if cause.ruling.is_on() {
                crate::domain::Ruling::Allowed
            } else {
                crate::domain::Ruling::Off
            },
        };
        self.ticket.route();
        self.ctx
            .commit
            .submit(envelope, draw, Some(self.ticket.clone()))
            .await
    }

    /// Under the registration rules, when the request may free seats: the students waiting,
    /// judged in line order and a seat claimed for each allowed, until the seats are claimed.
    /// Waits while the database does not answer (the supervisor aborts this instance when the
    /// session halts).
    async fn eligibility(
        &self,
        envelope: &Envelope,
        state: Option<&CourseState>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Vec<(StudentId, Result<(), Refusal>)>> {
        if !envelope.ruling.is_on() {
            return None;
        }
        let state = state?;
        // A draw due now comes first, and its seats are judged for it, in rank order.
        if let Some((ranked, seats)) = state.draw_candidates(now) {
            let record = crate::domain::draw_request_id(&self.course);
            return Some(self.claimed(&ranked, &record, seats).await);
        }
        let (waiting, seats) = state.promotion_candidates(&envelope.request)?;
        Some(
            self.claimed(&waiting, &envelope.request.request_id, seats)
                .await,
        )
    }

    /// Seats of this course claimed for `cause` (see `Store::claim_for_promotion`), retrying
    /// while the database does not answer (the supervisor aborts this instance when the
    /// session halts).
    async fn claimed(
        &self,
        waiting: &[StudentId],
        cause: &crate::domain::RequestId,
        seats: usize,
    ) -> Vec<(StudentId, Result<(), Refusal>)> {
        crate::retry::until_ok("claiming seats under the registration rules", || {
            self.ctx.store.claim_for_promotion(
                &self.course,
                cause,
                waiting,
                seats,
                chrono::Utc::now(),
            )
        })
        .await
    }

    /// An enroll judged when its course had no seat, which finds one free here (a drop or a
    /// change not yet committed): the seat is claimed for it now, or refused by the rules.
    async fn claim_if_needed(&self, envelope: &mut Envelope, state: Option<&CourseState>) {
        if !state.is_some_and(|s| s.needs_claim(&envelope.request, &envelope.ruling)) {
            return;
        }
        let student = std::slice::from_ref(&envelope.request.student_id);
        let judged = self.claimed(student, &envelope.request.request_id, 1).await;
        envelope.ruling = match judged.into_iter().next() {
            Some((_, verdict)) => crate::domain::Ruling::Seat(verdict),
            // The course is gone from the database: nothing to claim, nothing given.
            None => crate::domain::Ruling::Unclaimed,
        };
    }

    fn hold(&self, envelope: Envelope) {
        *self.in_hand.lock().unwrap_or_else(PoisonError::into_inner) = Some(envelope);
    }

    /// Decides with the message in hand, so a panic leaves it to the next instance; then takes
    /// it back out with its decision.
    fn decide(
        &self,
        envelope: Envelope,
        state: Option<&mut CourseState>,
        eligibility: Option<&Eligibility>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<(Envelope, Decision)> {
        let decision = {
            let mut slot = self.in_hand.lock().unwrap_or_else(PoisonError::into_inner);
            let envelope = slot.insert(envelope);
            before_decide(&envelope.request);
            match state {
                Some(state) => {
                    let started = Instant::now();
                    let rules = Rules {
                        ruling: &envelope.ruling,
                        promotion: eligibility,
                    };
                    let decision = state.decide_under(&envelope.request, now, &rules);
                    crate::telemetry::metrics::decided_in(started.elapsed());
                    decision
                }
                None => Decision::unknown_course(),
            }
        };
        let envelope = self
            .in_hand
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        Some((envelope, decision))
    }
}

/// Loads the course, retrying while the database is unreachable; `None` if it does not exist.
/// It retries for as long as it takes: an instance has nothing else to do before its course is
/// loaded. Its supervisor aborts it when the session halts (see `CourseActor::supervise`).
async fn load(loads: &Loads, course: &CourseId, entries_limit: usize) -> Option<CourseState> {
    let mut delays = crate::retry::delays(Duration::from_millis(50), Duration::from_secs(1));
    let mut failures = 0u32;
    loop {
        match loads.load(course).await {
            Ok(snapshot) => {
                if failures > 0 {
                    tracing::info!(course_id = %course, failures, "course loaded after the database came back");
                }
                return snapshot.map(|s| {
                    CourseState::from_snapshot(course.clone(), s).with_entries_limit(entries_limit)
                });
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(1));
                // Once per outage per course: the retries that follow say nothing new.
                if failures == 0 {
                    tracing::warn!(course_id = %course, error = %crate::telemetry::chain(&e), "loading course failed; retrying until the database answers");
                }
                failures += 1;
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A named fail point before each decision, for fault-injection tests: `course-decide-<course>`
/// (for example `FAILPOINTS=course-decide-CS101=1*panic` crashes the actor once, and
/// `course-decide-CS101=return(abort)` kills the whole worker process at every request of that
/// course). Compiled out without the `failpoints` feature.
#[cfg(feature = "failpoints")]
fn before_decide(request: &crate::domain::Request) {
    crate::failpoint::crash_point(&format!("course-decide-{}", request.course_id));
}

#[cfg(not(feature = "failpoints"))]
fn before_decide(_: &crate::domain::Request) {}
