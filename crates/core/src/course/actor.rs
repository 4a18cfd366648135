//! One course actor, split as in "Actors with Tokio": [`CourseHandle`] (public, cheap to clone,
//! owns the mailbox's sender and spawns the actor) and the actor itself (private, owns the
//! mailbox's receiver), a supervisor that (re)starts instances (`instance.rs`), each of which
//! loads the course from Postgres and then decides its requests one at a time from memory.
//!
//! Why two tasks: an instance may panic (a bug, or a test's fail point). The supervisor sees the
//! panic through the instance's `JoinHandle`, waits until the course's earlier decisions are
//! durable, and starts a fresh instance that reloads the state. The mailbox and the message in
//! hand live outside the instance (behind mutexes the supervisor also holds), so the message that
//! was being decided is decided again by the next instance rather than lost.
//!
//! The actor ends when every handle is gone and its mailbox is empty, or at once when the
//! session halts (what it holds then returns to the queues with the channels).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::context::ActorContext;
use super::instance::{InHand, Instance, Mailbox, Stop};
use crate::domain::{CourseId, Partition};
use crate::pipeline::{CourseTicket, Envelope};

/// The public side of a course actor: sends it requests and tells how busy it is.
#[derive(Clone)]
pub struct CourseHandle {
    sender: mpsc::Sender<Envelope>,
    ticket: Arc<CourseTicket>,
}

impl CourseHandle {
    /// Spawns the actor of `course` on `tasks` with a mailbox of `mailbox` requests. It runs
    /// until every handle is dropped and its mailbox is drained, or until `halt`.
    pub fn spawn(
        course: CourseId,
        partition: Partition,
        mailbox: usize,
        ctx: Arc<ActorContext>,
        tasks: &TaskTracker,
        halt: CancellationToken,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(mailbox);
        let ticket = Arc::new(CourseTicket::default());
        // Everything the actor logs carries its course. A root span: the actor outlives the
        // partition consumer that happened to start it.
        let span = tracing::info_span!(parent: None, "course", course_id = %course, %partition);
        let actor = CourseActor {
            course,
            mailbox: Arc::new(tokio::sync::Mutex::new(receiver)),
            in_hand: Arc::new(Mutex::new(None)),
            ticket: ticket.clone(),
            ctx,
        };
        tasks.spawn(actor.supervise(halt).instrument(span));
        Self { sender, ticket }
    }

    /// The ticket the registry counts this actor's messages on.
    pub fn ticket(&self) -> &Arc<CourseTicket> {
        &self.ticket
    }

    /// Puts a request in the mailbox, waiting while it is full; hands the request back if the
    /// actor has ended.
    pub async fn send(&self, envelope: Envelope) -> Result<(), Envelope> {
        self.sender.send(envelope).await.map_err(|e| e.0)
    }

    /// Requests waiting in the mailbox.
    pub fn depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }
}

/// The private side: the supervisor and what its instances share.
struct CourseActor {
    course: CourseId,
    mailbox: Mailbox,
    in_hand: InHand,
    ticket: Arc<CourseTicket>,
    ctx: Arc<ActorContext>,
}

impl CourseActor {
    /// Runs instances until the mailbox closes, restarting crashed ones.
    async fn supervise(self, halt: CancellationToken) {
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        loop {
            let instance = Instance {
                course: self.course.clone(),
                mailbox: self.mailbox.clone(),
                in_hand: self.in_hand.clone(),
                ticket: self.ticket.clone(),
                ctx: self.ctx.clone(),
            };
            let instance = tokio::spawn(instance.run().instrument(tracing::Span::current()));
            let abort = instance.abort_handle();
            let ended = tokio::select! {
                ended = instance => ended,
                // The worker is abandoning its session: whatever is in hand returns to its queue.
                // This is also how an instance waiting on the database ends (its load retries,
                // or its wait for earlier decisions to commit): by being aborted here.
                _ = halt.cancelled() => {
                    abort.abort();
                    return;
                }
            };
            match ended {
                Ok(Stop::MailboxClosed) => return,
                Ok(Stop::Reload { diverged: true }) => {
                    tracing::info!(course_id = %self.course, "course state reloaded after the database disagreed");
                }
                Ok(Stop::Reload { diverged: false }) => {
                    tracing::debug!(course_id = %self.course, "course state reloaded: its partition came back to this worker");
                }
                Err(e) if e.is_panic() => tokio::select! {
                    () = self.crashed(&mut crashes) => {}
                    // Giving up on a message waits for the broker to confirm its dead letter.
                    _ = halt.cancelled() => return,
                },
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            }
        }
    }

    /// Counts a crash in the restart window; past `max_restarts`, gives up on the message in
    /// hand so it stops blocking the course.
    async fn crashed(&self, crashes: &mut VecDeque<Instant>) {
        let now = Instant::now();
        crashes.push_back(now);
        while crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.ctx.restarts.window)
        {
            crashes.pop_front();
        }
        tracing::error!(
            course_id = %self.course,
            crashes = crashes.len(),
            "course actor panicked; restarting it with its state reloaded"
        );
        if crashes.len() > self.ctx.restarts.max_restarts as usize {
            let taken = self
                .in_hand
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(envelope) = taken {
                self.give_up(envelope, crashes.len()).await;
            }
            crashes.clear();
        }
    }

    /// Dead-letters a message the course crashed on too often.
    async fn give_up(&self, envelope: Envelope, crashes: usize) {
        crate::telemetry::metrics::dead_lettered(crate::telemetry::metrics::DeadReason::CrashLoop);
        let reason = format!("course actor crashed {crashes} times deciding this request");
        self.ctx
            .outbox
            .dead_letter(
                &self.ctx.topology,
                &envelope.request,
                envelope.reply_to.as_ref(),
                envelope.ack,
                &reason,
            )
            .await;
        self.ticket.unroute();
    }
}
