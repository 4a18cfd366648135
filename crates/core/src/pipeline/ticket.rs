//! A course's ticket: what the registry, the course actor and the committer count about one
//! actor instance's messages, so that an idle actor can be stopped without stranding a message
//! and a reload waits for the decisions already handed to the commit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

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
    /// The registry hands the actor one more message (counted under the registry's lock).
    pub fn route(&self) {
        self.routed.fetch_add(1, Ordering::SeqCst);
    }

    /// A message the actor will never decide (it ended before taking it, or gave up on it).
    pub fn unroute(&self) {
        self.routed.fetch_sub(1, Ordering::SeqCst);
    }

    /// Nothing in the mailbox, in hand, or awaiting commit.
    pub fn is_idle(&self) -> bool {
        self.routed.load(Ordering::SeqCst) == 0
    }

    /// The actor hands one decision to the committer.
    pub fn handed_to_commit(&self) {
        self.uncommitted.fetch_add(1, Ordering::SeqCst);
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

    /// Whether the database disagreed with one of this actor's decisions since it loaded.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }

    /// Waits until every decision handed to the committer is committed, then clears the stale
    /// mark: a state loaded after this includes them all.
    pub async fn all_committed(&self) {
        loop {
            let notified = self.committed.notified();
            if self.uncommitted.load(Ordering::SeqCst) == 0 {
                break;
            }
            notified.await;
        }
        self.stale.store(false, Ordering::SeqCst);
    }
}
