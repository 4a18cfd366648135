//! The registry: finds the actor of a course, starts it on first request, bounds how many are
//! alive, and stops those that sit idle.
//!
//! The map only ever holds courses that exist (the catalog is asked before anything is spawned),
//! and never more than `max_actors` of them (invariant I6).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::actor::CourseHandle;
use super::catalog::Catalog;
use super::context::ActorContext;
use crate::domain::{CourseId, Partition, Reason};
use crate::pipeline::{CommitClosed, Envelope};

#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    /// Requests a course actor's mailbox holds before its sender waits.
    pub mailbox: usize,
    /// Live course actors at most; past it, the least recently used idle one is stopped.
    pub max_actors: usize,
    /// An actor with nothing to do for this long stops; the next request brings it back.
    pub idle_timeout: Duration,
}

/// How to stop the actors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    Drain,
    Halt,
}

struct Entry {
    handle: CourseHandle,
    last_used: Instant,
    /// The partition its last request came from.
    partition: Partition,
}

/// Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    actors: Mutex<HashMap<CourseId, Entry>>,
    catalog: Catalog,
    ctx: Arc<ActorContext>,
    config: RegistryConfig,
    tasks: TaskTracker,
    halt: CancellationToken,
}

impl Registry {
    /// A registry whose actors stop at once, abandoning what they hold, when `halt` is
    /// cancelled (the session's halt: its drain expired, or it faulted).
    pub fn new(
        catalog: Catalog,
        ctx: Arc<ActorContext>,
        config: RegistryConfig,
        halt: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                actors: Mutex::new(HashMap::new()),
                catalog,
                ctx,
                config,
                tasks: TaskTracker::new(),
                halt,
            }),
        }
    }

    fn actors(&self) -> std::sync::MutexGuard<'_, HashMap<CourseId, Entry>> {
        self.inner
            .actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many course actors are alive.
    pub fn live(&self) -> usize {
        self.actors().len()
    }

    /// Requests waiting in the mailboxes: in all, and in the deepest one.
    pub fn mailbox_depths(&self) -> (usize, usize) {
        self.actors()
            .values()
            .map(|e| e.handle.depth())
            .fold((0, 0), |(total, max), depth| {
                (total + depth, max.max(depth))
            })
    }

    /// Delivers a request to its course actor, starting the actor if needed; a request for a
    /// course that does not exist goes straight to the commit as `unknown_course`, recorded
    /// like any decision (so it replays) without spawning anything. Waits while the mailbox is
    /// full (backpressure reaches the broker through the prefetch limit). While the database
    /// cannot be asked whether a course exists, this waits: the partition stops taking
    /// deliveries rather than answering "unknown" for a course that may exist. Its caller, the
    /// intake, bounds the wait by the session's halt: dropped then, the envelope returns to the
    /// broker unacked (and a message counted on a ticket no longer matters: every actor stops at
    /// the halt).
    pub async fn route(&self, mut envelope: Envelope) -> Result<(), CommitClosed> {
        // Whether the catalog could not be read last time, so an outage is logged once.
        let mut catalog_failing = false;
        loop {
            let course = envelope.request.course_id.clone();
            let partition = envelope.partition;
            let Some(handle) = self.live_handle(&course, partition) else {
                match self.inner.catalog.contains(&course).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return self
                            .inner
                            .ctx
                            .commit
                            .reject(envelope, Reason::UnknownCourse)
                            .await;
                    }
                    Err(e) => {
                        if !catalog_failing {
                            tracing::warn!(error = %crate::telemetry::chain(&e), "cannot read the course catalog; waiting");
                            catalog_failing = true;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
                if !self.start(&course, partition) {
                    // Every live actor is busy and the bound is reached: wait for one to
                    // settle rather than exceed it.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                continue;
            };
            match handle.send(envelope).await {
                Ok(()) => return Ok(()),
                Err(back) => {
                    // The actor ended between lookup and send; forget it and start anew.
                    handle.ticket().unroute();
                    self.forget(&course, &handle);
                    envelope = back;
                }
            }
        }
    }

    /// The live actor of `course`, with one more message counted on its ticket. Counting under
    /// the map's lock is what makes stopping an idle actor race-free: an actor is only removed
    /// while its count is zero.
    fn live_handle(&self, course: &CourseId, partition: Partition) -> Option<CourseHandle> {
        self.actors().get_mut(course).map(|entry| {
            entry.last_used = Instant::now();
            entry.partition = partition;
            entry.handle.ticket().route();
            entry.handle.clone()
        })
    }

    /// Starts an actor for `course` unless one is alive; false when the bound is reached and no
    /// idle actor can make room.
    fn start(&self, course: &CourseId, partition: Partition) -> bool {
        let mut actors = self.actors();
        if actors.contains_key(course) {
            return true;
        }
        if actors.len() >= self.inner.config.max_actors {
            let victim = actors
                .iter()
                .filter(|(_, e)| e.handle.ticket().is_idle())
                .min_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| id.clone());
            match victim {
                // Dropping the entry drops the only long-lived handle: the actor ends on its own.
                Some(id) => {
                    actors.remove(&id);
                }
                None => return false,
            }
        }
        let handle = CourseHandle::spawn(
            course.clone(),
            partition,
            self.inner.config.mailbox,
            self.inner.ctx.clone(),
            &self.inner.tasks,
            self.inner.halt.clone(),
        );
        actors.insert(
            course.clone(),
            Entry {
                handle,
                last_used: Instant::now(),
                partition,
            },
        );
        true
    }

    fn forget(&self, course: &CourseId, handle: &CourseHandle) {
        let mut actors = self.actors();
        if actors
            .get(course)
            .is_some_and(|e| Arc::ptr_eq(e.handle.ticket(), handle.ticket()))
        {
            actors.remove(course);
        }
    }

    /// Stops the idle actors of a partition this worker no longer owns: their state would be
    /// stale by the time the partition came back. Busy ones finish what they hold and stop when
    /// idle (or reload first, should the partition come back meanwhile).
    pub fn forget_partition(&self, partition: Partition) {
        self.actors()
            .retain(|_, e| e.partition != partition || !e.handle.ticket().is_idle());
    }

    /// Stops actors idle for longer than the timeout, until `shutdown`.
    pub async fn sweep_idle(&self, shutdown: CancellationToken) {
        let timeout = self.inner.config.idle_timeout;
        let period = (timeout / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.actors().retain(|_, e| !e.handle.ticket().is_idle() || e.last_used.elapsed() < timeout);
                }
            }
        }
    }

    /// Stops every actor and waits for them: once its mailbox is empty (`Close::Drain`), or at
    /// once, abandoning what they hold (`Close::Halt`, after a fault or once the drain expired).
    /// A drain still going on when the registry halts becomes a halt: whatever is left returns
    /// to the queues with the channels.
    pub async fn close(&self, how: Close) {
        self.actors().clear();
        if how == Close::Halt {
            self.inner.halt.cancel();
        }
        self.inner.tasks.close();
        tokio::select! {
            () = self.inner.tasks.wait() => return,
            _ = self.inner.halt.cancelled() => {}
        }
        // Halted: each supervisor aborts its instance (a load retrying against a database that
        // is down included) and returns.
        if tokio::time::timeout(HALTED_WITHIN, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                actors = self.inner.tasks.len(),
                "course actors did not stop after the halt; leaving them behind"
            );
        }
    }
}

/// How long halted actors may take to stop; their supervisors stop at the halt at once.
const HALTED_WITHIN: Duration = Duration::from_secs(1);
