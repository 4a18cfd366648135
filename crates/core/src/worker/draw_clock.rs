//! The draw clock: wakes every draw course at its opening, so it draws on time even when no
//! student asks then and its actor is idle, passivated or on another worker.
//!
//! The clock does not draw. It publishes a `draw` wake-up to the course's partition, like any
//! request, under the worker's own broker user (the intake takes wake-ups from admin users
//! only); whichever worker owns the partition then routes it to the course actor, which draws
//! before it decides anything at or after the opening. Every worker runs a clock, so a draw
//! happens while any worker lives; extra wake-ups are answered `drawn`/`already_drawn`.
//! A course stays due until its results are confirmed sent, so a draw whose announcement a
//! crash cut short is woken again and announced by whoever loads it.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::amqp::{Outbox, Outgoing, Topology};
use crate::domain::{Action, CourseId, Request};
use crate::protocol::request_body;
use crate::store::Store;

/// How far ahead the clock reads due draws; it then sleeps to the exact instant.
const LOOKAHEAD: Duration = Duration::from_secs(2);
/// Longest sleep between two reads, so a draw configured meanwhile is seen soon enough.
const POLL: Duration = Duration::from_secs(1);
/// A course woken and still not drawn and announced is woken again after this long (its
/// wake-up was lost with a worker, or sits behind a long queue).
const REWAKE: Duration = Duration::from_secs(5);
/// Draws handled per read: a bound on the clock's memory, whatever is configured.
const BATCH: i64 = 1000;

pub(super) struct DrawClock {
    pub store: Store,
    pub outbox: Outbox,
    pub topology: Topology,
    /// The worker's broker user, which wake-ups carry as `user_id`.
    pub user: String,
}

impl DrawClock {
    /// Runs until `stop`.
    pub(super) async fn run(self, stop: CancellationToken) {
        let mut woken: HashMap<CourseId, tokio::time::Instant> = HashMap::new();
        let mut failing = false;
        loop {
            let next = match self.store.draws_due(LOOKAHEAD, BATCH).await {
                Ok(due) => {
                    failing = false;
                    self.wake_due(&due, &mut woken).await
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %crate::telemetry::chain(&e), "cannot read the draws due; retrying");
                        failing = true;
                    }
                    POLL
                }
            };
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Wakes the courses whose opening has come (once per [`REWAKE`]); returns how long to
    /// sleep until the next opening read, at most [`POLL`].
    async fn wake_due(
        &self,
        due: &[(CourseId, chrono::DateTime<Utc>)],
        woken: &mut HashMap<CourseId, tokio::time::Instant>,
    ) -> Duration {
        // Only the courses still due are remembered: the map stays within one read's bound.
        let still_due: std::collections::HashSet<&CourseId> = due.iter().map(|(c, _)| c).collect();
        woken.retain(|course, _| still_due.contains(course));
        let now = Utc::now();
        let mut next = POLL;
        for (course, opens_at) in due {
            let until = (*opens_at - now).to_std().unwrap_or(Duration::ZERO);
            if until > Duration::ZERO {
                next = next.min(until);
                continue;
            }
            if woken.get(course).is_some_and(|at| at.elapsed() < REWAKE) {
                continue;
            }
            match self.wake(course).await {
                Ok(()) => {
                    woken.insert(course.clone(), tokio::time::Instant::now());
                }
                Err(e) => {
                    tracing::warn!(course_id = %course, error = %crate::telemetry::chain(&e), "could not publish a draw wake-up");
                }
            }
        }
        next
    }

    async fn wake(&self, course: &CourseId) -> Result<(), crate::amqp::AmqpError> {
        let request = Request {
            request_id: crate::domain::wake_request_id(),
            action: Action::Draw,
            course_id: course.clone(),
            student_id: crate::domain::draw_actor(),
        };
        tracing::info!(course_id = %course, "waking a draw course at its opening");
        let message = Outgoing::request(
            &self.topology,
            course.as_str(),
            request.request_id.as_str(),
            None,
            request_body(&request),
        )
        .with_user_id(&self.user);
        self.outbox.post_confirmed(message).await?.confirmed().await
    }
}
