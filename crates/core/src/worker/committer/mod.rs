//! The group commit and the finalizer.
//!
//! The committer takes decisions as the course actors hand them over and writes them in batches:
//! everything already waiting (up to `batch_max`), plus whatever arrives within `batch_linger`.
//! One batch commits at a time, so batches reach Postgres in the order their decisions were
//! taken. While a batch commits, the next fills up: under load the batch size grows by itself.
//!
//! The finalizer then publishes each final answer (reply and event) with publisher confirms and
//! only then acks the deliveries: a final event never precedes its commit (I2) and a delivery is
//! never acked before its commit (I1).

mod finalizer;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::finalizer::{CommittedBatch, finalize};
use super::fault::Fault;
use super::shutdown::finish_within;
use crate::amqp::{Outbox, Topology};
use crate::pipeline::Decided;
use crate::store::{Committed, Store, StoreError};
use crate::telemetry::metrics;

pub(in crate::worker) struct Committer {
    pub store: Store,
    pub outbox: Outbox,
    pub topology: Topology,
    pub final_events: crate::protocol::FinalEvents,
    /// The worker's broker user, which the releases completing swaps carry as `user_id`.
    pub broker_user: Option<String>,
    pub worker_id: String,
    pub batch_max: usize,
    pub batch_linger: Duration,
    pub fault: Fault,
    /// The session's halt: the finalizer then stops waiting for confirms and acks.
    pub halt: CancellationToken,
    /// Told when a batch is fenced, so that the partition ownership beats at once and stops
    /// consuming the partitions lost, instead of at its next tick.
    pub fenced: Arc<Notify>,
}

/// How long a stopping committer waits for its finalizer.
const FINALIZER_WITHIN: Duration = Duration::from_secs(10);

impl Committer {
    pub(in crate::worker) async fn run(
        self,
        mut decided: mpsc::Receiver<Decided>,
        stop: CancellationToken,
    ) {
        // A couple of batches may wait for their confirms while the next one commits.
        let (to_finalizer, committed) = mpsc::channel::<CommittedBatch>(2);
        let finalizer = tokio::spawn(finalize(
            committed,
            self.outbox.clone(),
            self.store.clone(),
            finalizer::Publishing {
                topology: self.topology.clone(),
                final_events: self.final_events,
                broker_user: self.broker_user.clone(),
            },
            self.fault.clone(),
            self.halt.clone(),
        ));
        // Best effort: a database that is not there yet fails the first commit instead, which
        // retries.
        tokio::select! {
            warmed = self.store.warm_commits() => if let Err(e) = warmed {
                tracing::debug!(error = %crate::telemetry::chain(&e), "commit connections not warmed");
            },
            _ = stop.cancelled() => {}
        }
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                first = decided.recv() => match first {
                    Some(first) => first,
                    None => break,
                },
            };
            let batch = self.gather(first, &mut decided).await;
            if !self.settle(batch, &to_finalizer, &stop).await {
                break;
            }
        }
        drop(to_finalizer);
        // The finalizer bounds its own waits; this bound only guards against a task that
        // somehow stays stuck, so the session can still end and start afresh.
        if !finish_within(finalizer, FINALIZER_WITHIN).await {
            tracing::warn!(
                "the finalizer did not finish; abandoning it (its requests are redelivered)"
            );
        }
    }

    /// Commits a batch and hands it to the finalizer; `false` once the worker is stopping.
    ///
    /// A batch the database refuses for good (a broken constraint, a bug) is committed again in
    /// halves, in order, down to the requests it refuses, which are dead-lettered with the
    /// database's reason. One bad request therefore does not send its batch-mates back to the
    /// queue over and over, and costs at most about 2·log2(batch) extra round trips. In a
    /// fenced batch, the items of the partitions lost go back to the queue (they have a new
    /// owner) and the others are committed again.
    async fn settle(
        &self,
        batch: Vec<Decided>,
        to_finalizer: &mpsc::Sender<CommittedBatch>,
        stop: &CancellationToken,
    ) -> bool {
        // Last in, first committed: the first half of a split is pushed last.
        let mut chunks = vec![batch];
        while let Some(chunk) = chunks.pop() {
            match self.commit(&chunk, stop).await {
                Some(Ok(results)) => {
                    crate::failpoint::crash_point(crate::failpoint::AFTER_COMMIT);
                    if results.iter().any(|c| !c.draws.is_empty()) {
                        crate::failpoint::crash_point(crate::failpoint::AFTER_DRAW_COMMIT);
                    }
                    for (d, c) in chunk.iter().zip(&results) {
                        if let Some(ticket) = &d.ticket {
                            ticket.settled(!c.diverged);
                        }
                        metrics::request_committed(&d.pending.request.action, c.verdict.outcome);
                        if !c.replayed {
                            metrics::promoted(c.promotions.len());
                        }
                    }
                    let pairs = chunk.into_iter().zip(results).collect();
                    // The finalizer's queue is full while it waits for confirms; a stop does
                    // not wait for them (the batch, committed, is redelivered and replays).
                    let handed = tokio::select! {
                        handed = to_finalizer.send(pairs) => handed.is_ok(),
                        _ = stop.cancelled() => false,
                    };
                    if !handed {
                        return false;
                    }
                }
                Some(Err(StoreError::Fenced { partitions })) => {
                    // Only the items of the partitions lost go back; the others commit again.
                    let (lost, kept): (Vec<_>, Vec<_>) = chunk
                        .into_iter()
                        .partition(|d| partitions.contains(&d.pending.partition.0));
                    self.fenced.notify_one();
                    self.abandon(lost, &partitions).await;
                    if !kept.is_empty() {
                        chunks.push(kept);
                    }
                }
                Some(Err(e)) if chunk.len() > 1 => {
                    tracing::warn!(
                        error = %crate::telemetry::chain(&e),
                        size = chunk.len(),
                        "group commit refused; committing the batch in halves to find the request it refuses"
                    );
                    let mut first = chunk;
                    let second = first.split_off(first.len() / 2);
                    chunks.push(second);
                    chunks.push(first);
                }
                Some(Err(e)) => {
                    for refused in chunk {
                        self.refuse(refused, &e).await;
                    }
                }
                // Stopping while the database is unreachable: the batch is not acked and returns
                // to the queues when the connection closes.
                None => return false,
            }
        }
        true
    }

    /// Dead-letters a request the database refuses on its own, with the database's reason;
    /// its course reloads, since its memory holds an effect that was never written.
    async fn refuse(&self, refused: Decided, error: &StoreError) {
        metrics::dead_lettered(metrics::DeadReason::DatabaseRefused);
        if let Some(ticket) = &refused.ticket {
            ticket.settled(false);
        }
        let reason = format!(
            "the database refused this request: {}",
            crate::telemetry::chain(error)
        );
        let request = &refused.pending.request;
        self.outbox
            .dead_letter(
                &self.topology,
                request,
                refused.pending.reply_to.as_ref(),
                refused.ack,
                &reason,
            )
            .await;
        drop(refused.guard);
    }

    /// Everything already waiting, then whatever arrives within the linger time.
    async fn gather(&self, first: Decided, decided: &mut mpsc::Receiver<Decided>) -> Vec<Decided> {
        let mut batch = Vec::with_capacity(self.batch_max.min(1024));
        batch.push(first);
        while batch.len() < self.batch_max {
            match decided.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let deadline = Instant::now() + self.batch_linger;
        while batch.len() < self.batch_max {
            match tokio::time::timeout_at(deadline, decided.recv()).await {
                Ok(Some(d)) => batch.push(d),
                _ => break,
            }
        }
        batch
    }

    /// Commits, retrying transient failures with backoff for as long as it takes. Meanwhile the
    /// bounded channels fill up and the consumers stop taking deliveries, so an outage never
    /// piles requests up in memory. `None` if asked to stop first.
    async fn commit(
        &self,
        batch: &[Decided],
        stop: &CancellationToken,
    ) -> Option<Result<Vec<Committed>, StoreError>> {
        let pending: Vec<&crate::store::Pending> = batch.iter().map(|d| &d.pending).collect();
        // Capped at a second: a retry is one cheap attempt, and students wait on it once the
        // database is back.
        let mut delays = crate::retry::delays(Duration::from_millis(50), Duration::from_secs(1));
        let mut failures = 0u32;
        loop {
            let started = std::time::Instant::now();
            // A database that stalls may never answer; a stop does not wait for it. A commit
            // cut short unacked is safe whether or not it reached the database: its requests
            // are redelivered and either decided anew or replayed from their stored outcome.
            let attempt = tokio::select! {
                attempt = metrics::busy_while(
                    metrics::Stage::Commit,
                    self.store.commit(&self.worker_id, &pending),
                ) => attempt,
                _ = stop.cancelled() => return None,
            };
            match attempt {
                Ok(results) => {
                    metrics::committed_batch(batch.len(), started.elapsed());
                    if failures > 0 {
                        tracing::info!(failures, "group commit succeeded again");
                    }
                    return Some(Ok(results));
                }
                Err(e) if e.is_transient() => {
                    if failures == 0 {
                        tracing::warn!(
                            error = %crate::telemetry::chain(&e),
                            size = batch.len(),
                            "group commit failed; retrying"
                        );
                    }
                    failures += 1;
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The items of a fenced batch whose partitions have a new owner: their deliveries go back
    /// to the queue, and their courses reload before deciding again. The ownership, told of the
    /// fence, beats at once and stops consuming those partitions, so a returned delivery goes
    /// to the new owner after at most a round or two here, not once per decision until the
    /// delivery limit dead-letters it.
    async fn abandon(&self, batch: Vec<Decided>, lost: &[u16]) {
        tracing::error!(
            ?lost,
            size = batch.len(),
            "group commit fenced: another worker owns these partitions now; returning their requests to the queues"
        );
        let mut unsettled = 0usize;
        for d in batch {
            if let Some(ticket) = &d.ticket {
                ticket.settled(false);
            }
            // A delivery that cannot be returned is on a channel that is closed or closing (a
            // partition given back after its lease was lost, a broken connection): the broker
            // returns every unacked delivery of a closed channel to its queue by itself.
            if d.ack.requeue().await.is_err() {
                unsettled += 1;
            }
        }
        if unsettled > 0 {
            tracing::info!(
                unsettled,
                "part of a refused batch was on a closed channel; the broker returns it"
            );
        }
    }
}
