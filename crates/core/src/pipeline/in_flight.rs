//! The in-flight counters. Every message received from the broker is wrapped with an
//! [`InFlightGuard`] the moment it arrives; the guard is dropped only once the message is settled
//! (acked or returned). Graceful shutdown waits for the count to reach zero, which is how "finish
//! and commit what is in flight" is known to be done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Counts messages received from the broker and not yet settled: for the whole worker, and
/// per partition (a child counter also counts in its parent), so that one partition can be
/// drained and handed over while the others go on.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    inner: Arc<InFlightInner>,
}

#[derive(Debug, Default)]
struct InFlightInner {
    count: AtomicUsize,
    settled: Notify,
    parent: Option<Arc<InFlightInner>>,
}

impl InFlightInner {
    fn enter(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        if let Some(parent) = &self.parent {
            parent.enter();
        }
    }

    fn leave(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.settled.notify_waiters();
        }
        if let Some(parent) = &self.parent {
            parent.leave();
        }
    }
}

impl InFlight {
    /// A counter whose messages also count here.
    pub fn child(&self) -> InFlight {
        InFlight {
            inner: Arc::new(InFlightInner {
                parent: Some(self.inner.clone()),
                ..InFlightInner::default()
            }),
        }
    }

    /// Registers one more message in flight.
    pub fn enter(&self) -> InFlightGuard {
        self.inner.enter();
        InFlightGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Waits until nothing is in flight. Callers bound the wait (a timeout, or a token).
    pub async fn settled(&self) {
        loop {
            let notified = self.inner.settled.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Waits until nothing is in flight, or the timeout passes; returns what is left.
    pub async fn drained(&self, timeout: Duration) -> usize {
        let _ = tokio::time::timeout(timeout, self.settled()).await;
        self.count()
    }
}

/// Held by a message while it is in flight.
#[derive(Debug)]
pub struct InFlightGuard {
    inner: Arc<InFlightInner>,
}

impl InFlightGuard {
    /// One more message in flight on the same counter: work a message brought about that must
    /// settle before its partition counts as drained (a course's draw, decided on a request).
    pub fn sibling(&self) -> InFlightGuard {
        self.inner.enter();
        InFlightGuard {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.inner.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_partition_drains_on_its_own_and_counts_in_the_whole() {
        let worker = InFlight::default();
        let (p0, p1) = (worker.child(), worker.child());
        let a = p0.enter();
        let b = p1.enter();
        assert_eq!((worker.count(), p0.count(), p1.count()), (2, 1, 1));
        drop(a);
        assert_eq!(p0.drained(Duration::from_millis(10)).await, 0);
        assert_eq!(worker.drained(Duration::from_millis(10)).await, 1);
        drop(b);
        assert_eq!(worker.drained(Duration::from_millis(10)).await, 0);
    }
}
