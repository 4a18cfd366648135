//! The worker's judge: one task that judges the requests of every partition the worker
//! consumes under the registration rules, in one transaction per round.
//!
//! Each intake hands it what it has taken from the broker and waits for the rulings (so each
//! partition keeps its order); whatever the intakes hand over while a round is in the database
//! goes into the next one. One round at a time per worker: a student's choices, spread over
//! the partitions, never wait on one another inside a worker, and the rounds grow with the
//! load, as the group commit's batches do.

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::domain::{Request, Ruling};
use crate::store::Store;
use crate::telemetry::metrics::Stage;

/// Requests judged in one round at most: each student of a round takes a lock, and the
/// server's lock table (`max_locks_per_transaction` times its connections) is shared by every
/// transaction.
const ROUND_MAX: usize = 1_024;

type Asked = (Vec<Request>, oneshot::Sender<Vec<Ruling>>);

/// Cheap to clone; every clone hands to the same judge.
#[derive(Clone)]
pub(super) struct Judge {
    asks: mpsc::Sender<Asked>,
}

/// The judge is gone (the session is stopping).
#[derive(Debug)]
pub(super) struct JudgeGone;

impl Judge {
    /// Starts the judge; it runs until `stop`.
    pub(super) fn start(store: Store, stop: CancellationToken) -> (Self, impl Future<Output = ()>) {
        let (asks, received) = mpsc::channel(256);
        (Self { asks }, run(store, received, stop))
    }

    /// The rulings on `requests`, in their order.
    pub(super) async fn rule(&self, requests: Vec<Request>) -> Result<Vec<Ruling>, JudgeGone> {
        let (answer, ruled) = oneshot::channel();
        self.asks
            .send((requests, answer))
            .await
            .map_err(|_| JudgeGone)?;
        ruled.await.map_err(|_| JudgeGone)
    }
}

async fn run(store: Store, mut received: mpsc::Receiver<Asked>, stop: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            first = received.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        let mut round = vec![first];
        let mut size = round[0].0.len();
        while size < ROUND_MAX {
            match received.try_recv() {
                Ok(more) => {
                    size += more.0.len();
                    round.push(more);
                }
                Err(_) => break,
            }
        }
        let requests: Vec<&Request> = round.iter().flat_map(|(r, _)| r.iter()).collect();
        let started = std::time::Instant::now();
        let Some(mut rulings) = judged(&store, &requests, &stop).await else {
            return;
        };
        tracing::debug!(
            requests = requests.len(),
            intakes = round.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "judged a round"
        );
        // Back to each intake, in the order handed over.
        for (asked, answer) in round.into_iter().rev() {
            let theirs = rulings.split_off(rulings.len() - asked.len());
            // An intake that gave up (its partition halted) no longer listens.
            let _ = answer.send(theirs);
        }
    }
}

/// The rulings, retrying while the database does not answer; `None` once stopped.
async fn judged(
    store: &Store,
    requests: &[&Request],
    stop: &CancellationToken,
) -> Option<Vec<Ruling>> {
    let judging = crate::retry::until_ok("judging requests under the registration rules", || {
        let judging = store.judge(requests, chrono::Utc::now());
        crate::telemetry::metrics::busy_while(Stage::Judge, judging)
    });
    tokio::select! {
        _ = stop.cancelled() => None,
        rulings = judging => Some(rulings),
    }
}
