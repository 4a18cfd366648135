//! The two moments of a worker's stop, and what the stop left behind.
//!
//! A stop is *requested* (SIGTERM or SIGINT, or a test cancelling its token): the worker stops
//! taking deliveries and finishes what it holds. It *expires* `drain_timeout` later: whatever is
//! still unsettled then is given up. Every wait on the way out watches one of the two (or has a
//! bound of its own), so a database or broker that is down, refusing or stalled cannot hold the
//! process: what was not committed is not acked, and returns to the broker when its channel or
//! connection closes (invariant I1).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::Partition;
use crate::pipeline::InFlight;

/// How long the teardown may go on once the drain has expired: closing channels and the
/// connection, releasing partitions. Past it, the session is abandoned (see `worker::run`).
pub(super) const TEARDOWN_WITHIN: Duration = Duration::from_secs(5);

/// How long one database call of the teardown (a release, the deregistration, closing the
/// pool) may take. A healthy database answers in milliseconds; one that is down or stalled
/// would otherwise hold the stop for the pool's acquire timeout or forever.
pub(super) const STORE_CALL_WITHIN: Duration = Duration::from_secs(2);

/// The stop of one worker: when it was requested, and when its drain expires.
#[derive(Clone)]
pub(super) struct Shutdown {
    requested: CancellationToken,
    expired: CancellationToken,
}

impl Shutdown {
    /// Follows `requested` and expires `drain_timeout` after it. The returned task is the
    /// timer; its owner aborts it once the worker has stopped.
    pub(super) fn new(
        requested: CancellationToken,
        drain_timeout: Duration,
    ) -> (Self, JoinHandle<()>) {
        let expired = CancellationToken::new();
        let timer = tokio::spawn({
            let (requested, expired) = (requested.clone(), expired.clone());
            async move {
                requested.cancelled().await;
                tokio::time::sleep(drain_timeout).await;
                expired.cancel();
            }
        });
        (Self { requested, expired }, timer)
    }

    /// Resolves once the stop is requested.
    pub(super) async fn requested(&self) {
        self.requested.cancelled().await;
    }

    pub(super) fn is_requested(&self) -> bool {
        self.requested.is_cancelled()
    }

    /// Resolves once the drain has expired.
    pub(super) async fn expired(&self) {
        self.expired.cancelled().await;
    }

    /// A token for one session to halt on: cancelled when the drain expires, or earlier by the
    /// session itself (after a fault, nothing can be drained).
    pub(super) fn halt_token(&self) -> CancellationToken {
        self.expired.child_token()
    }

    /// Runs `step` unless the stop is requested first (`None` then). For the steps before any
    /// delivery is taken: abandoning them leaves nothing behind.
    pub(super) async fn unless_requested<F: Future>(&self, step: F) -> Option<F::Output> {
        tokio::select! {
            done = step => Some(done),
            _ = self.requested.cancelled() => None,
        }
    }
}

/// A session's halt, and how many deliveries were in flight the moment it came. The count is
/// taken before the token is cancelled, so before any stage (each gives up what it holds on the
/// halt) lets go of a delivery: it is what the stop returns to the broker.
pub(super) struct Halt {
    state: Arc<HaltState>,
    /// The task that halts at the expiry; owned by the halt, aborted with it.
    gate: JoinHandle<()>,
}

/// What the halt and its gate task share.
struct HaltState {
    token: CancellationToken,
    in_flight: InFlight,
    in_flight_then: AtomicUsize,
}

impl HaltState {
    fn now(&self) {
        if !self.token.is_cancelled() {
            self.in_flight_then
                .store(self.in_flight.count(), Ordering::SeqCst);
            self.token.cancel();
        }
    }
}

impl Halt {
    /// A halt that comes when `expiry` is cancelled (the drain expired), or on `now`.
    pub(super) fn follow(expiry: CancellationToken, in_flight: InFlight) -> Self {
        let state = Arc::new(HaltState {
            token: CancellationToken::new(),
            in_flight,
            in_flight_then: AtomicUsize::new(0),
        });
        let gate = tokio::spawn({
            let state = state.clone();
            async move {
                tokio::select! {
                    () = expiry.cancelled() => state.now(),
                    () = state.token.cancelled() => {}
                }
            }
        });
        Self { state, gate }
    }

    /// The token every stage watches.
    pub(super) fn token(&self) -> &CancellationToken {
        &self.state.token
    }

    /// Halts the session now (after a fault, or once the drain gave up), counting what is in
    /// flight first; a second call changes nothing.
    pub(super) fn now(&self) {
        self.state.now();
    }

    /// How many deliveries were in flight when the halt came.
    pub(super) fn in_flight_then(&self) -> usize {
        self.state.in_flight_then.load(Ordering::SeqCst)
    }
}

impl Drop for Halt {
    fn drop(&mut self) {
        self.gate.abort();
    }
}

/// How long closing a channel or the connection may take once the session is halted. The
/// client library's own bound (5 s) is for a connection that failed; a broker that stalls
/// would hold every close that long, and the process exit closes the socket anyway.
pub(super) const CLOSE_HALTED_WITHIN: Duration = Duration::from_secs(1);

/// Waits for `step` until `halt`, then at most `grace` longer; `None` if it did not finish.
pub(super) async fn until_halted<F: Future>(
    step: F,
    halt: &CancellationToken,
    grace: Duration,
) -> Option<F::Output> {
    tokio::pin!(step);
    tokio::select! {
        done = &mut step => return Some(done),
        _ = halt.cancelled() => {}
    }
    tokio::time::timeout(grace, step).await.ok()
}

/// Waits at most `within` for `task` to end, and aborts it if it has not: `false` then. For
/// tasks that bound their own waits, where this only guards against one stuck anyway.
pub(super) async fn finish_within(mut task: JoinHandle<()>, within: Duration) -> bool {
    if tokio::time::timeout(within, &mut task).await.is_ok() {
        return true;
    }
    task.abort();
    false
}

/// What a stop left to the broker and to lease expiry. Empty after a clean drain: every
/// delivery taken was committed and acked, every partition released.
#[derive(Debug, Default)]
pub struct Left {
    /// Deliveries taken and not acked when the worker gave up on them. The broker delivers
    /// them again; those already committed replay their stored outcome (I4).
    pub returned: usize,
    /// Partitions whose release could not be written; they pass to another worker when their
    /// lease lapses.
    pub unreleased: Vec<Partition>,
    /// The session's teardown did not end within [`TEARDOWN_WITHIN`] after the drain expired
    /// and was dropped; what it held returns to the broker when the process exits.
    pub abandoned: bool,
}

impl Left {
    /// Nothing was left: the drain finished.
    pub fn is_empty(&self) -> bool {
        self.returned == 0 && self.unreleased.is_empty() && !self.abandoned
    }
}
