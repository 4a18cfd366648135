//! The clients: web back ends asking Redis to decide each request of the stream. A request that
//! gets no answer (the connection was lost, the server is restarting, the answer timed out) is
//! asked again with the same request id after a pause, as a web back end would; the script's
//! per-id memory makes that safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::ConnectionManager;
use tokio::task::JoinSet;

use super::RedisOutcome;
use super::decide::Registrar;
use seatrush_core::domain::Request;

/// Attempts at one request before the client gives up and reports an error.
const ATTEMPTS: u32 = 60;
/// How long one request may be retried in all.
const ASK_LIMIT: Duration = Duration::from_secs(30);
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// When the requests arrive.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pace {
    /// Every request at time zero: the flash crowd.
    AtOnce,
    /// Spread evenly over this long, so a fault can land in the middle of the burst.
    Over(Duration),
}

/// The answer a client was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Told {
    pub outcome: RedisOutcome,
    /// Given from the script's memory of the request id, not a new decision.
    pub replayed: bool,
    /// Since the run's start.
    pub at: Duration,
}

/// What became of one request of the stream.
#[derive(Debug, Clone, Default)]
pub(super) struct Asked {
    pub told: Option<Told>,
    pub attempts: u32,
    /// Why the last attempt failed, when no answer came.
    pub error: Option<String>,
}

/// Who asks, on which connections.
pub(super) struct Crowd {
    pub registrar: Arc<Registrar>,
    pub connections: Vec<ConnectionManager>,
    pub clients: usize,
    pub pace: Pace,
}

impl Crowd {
    /// Asks every request of the stream, `clients` at a time, and returns what became of each,
    /// in stream order.
    pub async fn ask_all(
        &self,
        stream: Arc<Vec<Request>>,
        start: Instant,
    ) -> anyhow::Result<Vec<Asked>> {
        anyhow::ensure!(
            !self.connections.is_empty(),
            "no Redis connection to ask on"
        );
        let next = Arc::new(AtomicUsize::new(0));
        // A JoinSet owns the client tasks: if this future is dropped (the run timed out), they
        // are aborted with it instead of going on alone.
        let mut tasks = JoinSet::new();
        for k in 0..self.clients.max(1) {
            let con = self.connections[k % self.connections.len()].clone();
            let (registrar, stream, next) = (self.registrar.clone(), stream.clone(), next.clone());
            let pace = self.pace;
            tasks.spawn(async move { client(&registrar, con, &stream, &next, pace, start).await });
        }
        let mut asked = vec![Asked::default(); stream.len()];
        while let Some(done) = tasks.join_next().await {
            for (i, answer) in done.context("a client task failed")? {
                if let Some(slot) = asked.get_mut(i) {
                    *slot = answer;
                }
            }
        }
        Ok(asked)
    }
}

/// One client: takes the next request of the stream until there are none.
async fn client(
    registrar: &Registrar,
    mut con: ConnectionManager,
    stream: &[Request],
    next: &AtomicUsize,
    pace: Pace,
    start: Instant,
) -> Vec<(usize, Asked)> {
    let mut done = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(request) = stream.get(i) else { break };
        if let Pace::Over(spread) = pace {
            let due = spread.mul_f64(i as f64 / stream.len().max(1) as f64);
            tokio::time::sleep_until((start + due).into()).await;
        }
        done.push((i, ask(registrar, &mut con, request, start).await));
    }
    done
}

/// Asks one request until it is answered, the error is not one a retry can cure, or the
/// attempts or the time run out.
async fn ask(
    registrar: &Registrar,
    con: &mut ConnectionManager,
    request: &Request,
    start: Instant,
) -> Asked {
    let deadline = Instant::now() + ASK_LIMIT;
    let mut pause = FIRST_PAUSE;
    let mut attempts = 0;
    let mut error = None;
    while attempts < ATTEMPTS {
        attempts += 1;
        match registrar.decide(con, request).await {
            Ok(decided) => {
                return Asked {
                    told: Some(Told {
                        outcome: decided.outcome,
                        replayed: decided.replayed,
                        at: start.elapsed(),
                    }),
                    attempts,
                    error: None,
                };
            }
            Err(e) => {
                let transient = super::transient(&e);
                error = Some(e.to_string());
                if !transient || Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
    Asked {
        told: None,
        attempts,
        error,
    }
}
