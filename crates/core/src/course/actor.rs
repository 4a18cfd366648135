//! One course actor: a supervisor task that (re)starts an instance task, which loads the course
//! from Postgres and then decides its requests one at a time from memory.
//!
//! Why two tasks: an instance may panic (a bug, or a test's fail point). The supervisor sees the
//! panic through the instance's `JoinHandle`, waits until the course's earlier decisions are
//! durable, and starts a fresh instance that reloads the state. The mailbox and the message in
//! hand live outside the instance (behind mutexes the supervisor also holds), so the message that
//! was being decided is decided again by the next instance rather than lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

use super::decision::{CourseState, Decision};
use crate::amqp::{Outbox, Outgoing, Topology};
use crate::domain::CourseId;
use crate::pipeline::{Decided, Envelope};
use crate::protocol::{Answer, Stage};
use crate::store::{Pending, Store};

/// How many crashes in how long make a course actor give up on the message at hand.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub window: Duration,
}

/// What the actor needs from the rest of the worker.
pub struct ActorContext {
    pub store: Store,
    /// Every outgoing message: provisional answers (unconfirmed: the final answer is the binding
    /// one), dead letters (confirmed).
    pub outbox: Outbox,
    pub topology: Topology,
    pub committer: mpsc::Sender<Decided>,
    pub restarts: RestartPolicy,
}

/// Shared between a course's actor, the registry and the committer.
#[derive(Debug, Default)]
pub struct CourseTicket {
    /// Messages handed to this actor and not yet settled; an actor with none can be stopped.
    routed: AtomicUsize,
    /// Decisions sent to the committer and not yet committed; a reload waits for zero, so the
    /// state it reads includes every decision already taken.
    uncommitted: AtomicUsize,
    committed: Notify,
    /// Set when the database disagreed with a decision: the actor reloads before the next one.
    stale: AtomicBool,
}

impl CourseTicket {
    pub(super) fn route(&self) {
        self.routed.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn unroute(&self) {
        self.routed.fetch_sub(1, Ordering::SeqCst);
    }

    pub(super) fn is_idle(&self) -> bool {
        self.routed.load(Ordering::SeqCst) == 0
    }

    /// The committer reports a decision as durable (or abandoned); `in_step` is false when the
    /// final verdict differs from what the actor decided, or the commit failed.
    pub fn settled(&self, in_step: bool) {
        if !in_step {
            self.stale.store(true, Ordering::SeqCst);
        }
        self.uncommitted.fetch_sub(1, Ordering::SeqCst);
        self.routed.fetch_sub(1, Ordering::SeqCst);
        self.committed.notify_waiters();
    }

    async fn all_committed(&self) {
        loop {
            let notified = self.committed.notified();
            if self.uncommitted.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Sends the provisional answer and hands the decision to the group commit.
///
/// Used by course actors, and by the intake for requests naming an unknown course.
pub async fn submit(
    ctx: &ActorContext,
    envelope: Envelope,
    decision: Decision,
    ticket: Option<Arc<CourseTicket>>,
) -> Result<(), mpsc::error::SendError<Decided>> {
    if let Some(to) = &envelope.reply_to {
        let mut answer = Answer::decided(&envelope.request, &decision.verdict, Stage::Provisional);
        answer.replayed = decision.replay;
        // Best effort by design: a lost provisional answer is covered by the final one.
        if let Err(e) = ctx.outbox.post(Outgoing::reply(to, answer.to_json())).await {
            tracing::debug!(error = %crate::telemetry::chain(&e), "provisional answer not sent");
        }
    }
    if let Some(ticket) = &ticket {
        ticket.uncommitted.fetch_add(1, Ordering::SeqCst);
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
        },
        ack: envelope.ack,
        ticket,
        redelivered: envelope.redelivered,
        guard: envelope.guard,
    };
    ctx.committer.send(decided).await
}

/// Why an instance ended.
enum Stop {
    /// Every sender is gone and the mailbox is empty: passivated, evicted or shutting down.
    MailboxClosed,
    /// The database disagreed with this instance's memory (`diverged`), or the partition was
    /// owned by another worker meanwhile: reload and go on.
    Reload { diverged: bool },
}

type InHand = Arc<Mutex<Option<Envelope>>>;
type Mailbox = Arc<tokio::sync::Mutex<mpsc::Receiver<Envelope>>>;

/// The supervisor: runs instances until the mailbox closes, restarting crashed ones.
pub(super) async fn supervise(
    course: CourseId,
    mailbox: mpsc::Receiver<Envelope>,
    ticket: Arc<CourseTicket>,
    ctx: Arc<ActorContext>,
    halt: tokio_util::sync::CancellationToken,
) {
    let mailbox: Mailbox = Arc::new(tokio::sync::Mutex::new(mailbox));
    let in_hand: InHand = Arc::new(Mutex::new(None));
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    loop {
        let instance = tokio::spawn(
            run_instance(
                course.clone(),
                mailbox.clone(),
                in_hand.clone(),
                ticket.clone(),
                ctx.clone(),
            )
            .instrument(tracing::Span::current()),
        );
        let abort = instance.abort_handle();
        let ended = tokio::select! {
            ended = instance => ended,
            // The worker is abandoning its session: whatever is in hand returns to its queue.
            _ = halt.cancelled() => {
                abort.abort();
                return;
            }
        };
        match ended {
            Ok(Stop::MailboxClosed) => return,
            Ok(Stop::Reload { diverged: true }) => {
                tracing::info!(course_id = %course, "course state reloaded after the database disagreed");
            }
            Ok(Stop::Reload { diverged: false }) => {
                tracing::debug!(course_id = %course, "course state reloaded: its partition came back to this worker");
            }
            Err(e) if e.is_panic() => {
                let now = Instant::now();
                crashes.push_back(now);
                while crashes
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > ctx.restarts.window)
                {
                    crashes.pop_front();
                }
                tracing::error!(
                    course_id = %course,
                    crashes = crashes.len(),
                    "course actor panicked; restarting it with its state reloaded"
                );
                if crashes.len() > ctx.restarts.max_restarts as usize {
                    let taken = in_hand
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    if let Some(envelope) = taken {
                        give_up(&ctx, envelope, crashes.len(), &ticket).await;
                    }
                    crashes.clear();
                }
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        }
    }
}

/// Dead-letters a message the course crashed on too often, so it stops blocking the course.
async fn give_up(ctx: &ActorContext, envelope: Envelope, crashes: usize, ticket: &CourseTicket) {
    crate::telemetry::metrics::dead_lettered(crate::telemetry::metrics::DeadReason::CrashLoop);
    let reason = format!("course actor crashed {crashes} times deciding this request");
    ctx.outbox
        .dead_letter(
            &ctx.topology,
            &envelope.request,
            envelope.reply_to.as_ref(),
            envelope.ack,
            &reason,
        )
        .await;
    ticket.unroute();
}

async fn run_instance(
    course: CourseId,
    mailbox: Mailbox,
    in_hand: InHand,
    ticket: Arc<CourseTicket>,
    ctx: Arc<ActorContext>,
) -> Stop {
    ticket.all_committed().await;
    ticket.stale.store(false, Ordering::SeqCst);
    let mut state = load(&ctx.store, &course).await;
    // The ownership epoch of the partition this state was loaded under: the first request's.
    let mut loaded_under: Option<i64> = None;
    loop {
        let carried = in_hand
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let envelope = match carried {
            Some(envelope) => envelope,
            None => match mailbox.lock().await.recv().await {
                Some(envelope) => envelope,
                None => return Stop::MailboxClosed,
            },
        };
        // A newer epoch means the partition left this worker and came back: another owner may
        // have decided for this course meanwhile, so the state is read again. (Requests of an
        // older epoch are decided as they are; their commit is fenced out.)
        let newer_epoch = loaded_under.is_some_and(|epoch| envelope.epoch > epoch);
        let diverged = ticket.stale.load(Ordering::SeqCst);
        if diverged || newer_epoch {
            *in_hand.lock().unwrap_or_else(PoisonError::into_inner) = Some(envelope);
            return Stop::Reload { diverged };
        }
        loaded_under = loaded_under.max(Some(envelope.epoch));
        // The message stays in hand while it is decided, so a panic leaves it to the next
        // instance.
        let decision = {
            let mut slot = in_hand.lock().unwrap_or_else(PoisonError::into_inner);
            let envelope = slot.insert(envelope);
            before_decide(&envelope.request);
            match state.as_mut() {
                // The worker's clock decides windows: keep worker hosts NTP-synchronized.
                Some(state) => {
                    let started = Instant::now();
                    let decision = state.decide(&envelope.request, chrono::Utc::now());
                    crate::telemetry::metrics::decided_in(started.elapsed());
                    decision
                }
                None => Decision::unknown_course(),
            }
        };
        let Some(envelope) = in_hand
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            continue;
        };
        crate::failpoint::crash_point(crate::failpoint::AFTER_DECIDE);
        // At debug level, what happens to one request carries its id (a disabled span costs
        // next to nothing on this hot path).
        let span = tracing::debug_span!("request", request_id = %envelope.request.request_id);
        if submit(&ctx, envelope, decision, Some(ticket.clone()))
            .instrument(span)
            .await
            .is_err()
        {
            // The committer is gone: the worker is stopping and the message returns to its
            // queue when the channel closes.
            return Stop::MailboxClosed;
        }
    }
}

/// Loads the course, retrying while the database is unreachable; `None` if it does not exist.
async fn load(store: &Store, course: &CourseId) -> Option<CourseState> {
    let mut delays = crate::retry::delays(Duration::from_millis(50), Duration::from_secs(1));
    let mut failures = 0u32;
    loop {
        match store.load_course(course).await {
            Ok(snapshot) => {
                if failures > 0 {
                    tracing::info!(course_id = %course, failures, "course loaded after the database came back");
                }
                return snapshot.map(|s| CourseState::from_snapshot(course.clone(), s));
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
