//! What every course actor of a session shares: the store and the loader it loads from, where its decisions
//! go, and how it restarts.

use std::time::Duration;

use super::Loads;
use crate::amqp::{Outbox, Topology};
use crate::pipeline::CommitQueue;
use crate::store::Store;

/// How many crashes in how long make a course actor give up on the message at hand.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub window: Duration,
}

/// What every course actor of a session needs from the rest of the worker.
pub struct ActorContext {
    pub store: Store,
    /// Where an actor's course is loaded from, gathered with the loads of the actors starting
    /// beside it.
    pub loads: Loads,
    /// Dead letters of messages an actor gave up on (confirmed by the broker before the ack).
    pub outbox: Outbox,
    pub topology: Topology,
    /// Where decisions go: the provisional answer, then the group commit.
    pub commit: CommitQueue,
    pub restarts: RestartPolicy,
    /// Entries a draw course takes at most.
    pub draw_entries: usize,
}
