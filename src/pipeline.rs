//! What travels between the stages of a worker: intake → course actor → committer → finalizer.
//!
//! Every message received from the broker is wrapped with an [`InFlightGuard`] the moment it
//! arrives; the guard is dropped only once the message is settled (acked or returned). Graceful
//! shutdown waits for the count to reach zero, which is how "finish and commit what is in flight"
//! is known to be done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::amqp::{AckHandle, ReplyTo};
use crate::course::CourseTicket;
use crate::domain::{Partition, Request};
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
}

/// A decided request on its way to the group commit (its reply address travels in `pending`,
/// which stores it with a waitlist place).
#[derive(Debug)]
pub struct Decided {
    pub pending: Pending,
    pub ack: AckHandle,
    /// The course actor instance that decided it (none for an unknown course), told when the
    /// decision is durable and when the database disagreed with it.
    pub ticket: Option<Arc<CourseTicket>>,
    pub redelivered: bool,
    pub guard: InFlightGuard,
}

/// Counts messages received from the broker and not yet settled.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    inner: Arc<InFlightInner>,
}

#[derive(Debug, Default)]
struct InFlightInner {
    count: AtomicUsize,
    settled: Notify,
}

impl InFlight {
    /// Registers one more message in flight.
    pub fn enter(&self) -> InFlightGuard {
        self.inner.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Waits until nothing is in flight, or the timeout passes; returns what is left.
    pub async fn drained(&self, timeout: Duration) -> usize {
        let wait = async {
            loop {
                let notified = self.inner.settled.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.count()
    }
}

/// Held by a message while it is in flight.
#[derive(Debug)]
pub struct InFlightGuard {
    inner: Arc<InFlightInner>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.inner.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.settled.notify_waiters();
        }
    }
}
