//! Partition ownership for one session: the heartbeat, the fair share, and the handovers.
//!
//! Every `lease / 3` the worker beats its heart in Postgres, which renews the leases it holds
//! and tells it who else is alive. With W live workers and P partitions its fair share is
//! floor(P/W) or ceil(P/W) (see [`Membership::fair_share`]). Above it, the worker hands the
//! surplus over; below it, it takes free partitions (released, or whose lease lapsed because
//! their owner died). Nobody takes a partition that is still held: ownership only moves by a
//! handover or by a lapsed lease.
//!
//! A handover keeps every course's requests in order and each decided once: the old owner stops
//! consuming the partition, waits until what it delivered is committed and acked, closes the
//! partition's channel and only then releases it. The new owner acquires it with a new epoch,
//! so even a commit of the old owner that somehow came late would be fenced out, and its course
//! actors load their state after the old owner's last commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::intake::Intake;
use super::shutdown::{CLOSE_HALTED_WITHIN, STORE_CALL_WITHIN, until_halted};
use crate::amqp::Lanes;
use crate::course::Registry;
use crate::domain::Partition;
use crate::pipeline::InFlight;
use crate::store::{Lease, Store};
use crate::telemetry::metrics;

pub(super) struct Ownership {
    pub store: Store,
    pub worker_id: String,
    pub lease: Duration,
    pub partitions: u16,
    pub intake: Intake,
    /// The session's in-flight count; each partition counts its own in a child of it.
    pub in_flight: InFlight,
    /// Pause between a partition's last ack and closing its channel, so the broker applies the
    /// acks before it sees the channel close (see `WorkerConfig::settle_grace`).
    pub grace: Duration,
    /// How long a handover waits for the partition's in-flight requests.
    pub drain_timeout: Duration,
    /// Whether the last heartbeat failed, so an outage is logged once.
    pub heartbeat_failing: std::sync::atomic::AtomicBool,
    /// Told by the committer when a batch was fenced: some partition has a new owner, and the
    /// heartbeat that finds which runs at once rather than at the next tick.
    pub fenced: Arc<Notify>,
}

/// A partition this worker consumes.
struct Held {
    lease: Lease,
    stop: CancellationToken,
    consumer: JoinHandle<Option<Lanes>>,
    in_flight: InFlight,
}

/// What a session keeps after a fault stopped its consumers: the partitions to release, and the
/// consumers' channels, to be closed first. After a graceful stop, which hands every partition
/// over itself, only the partitions whose release could not be written.
#[derive(Default)]
pub(super) struct Stopped {
    pub partitions: Vec<Lease>,
    pub channels: Vec<Lanes>,
    /// Handovers a fault caught under way, to be awaited with the session's teardown (each
    /// closes its own channel and releases its own partition).
    pub handovers: Vec<JoinHandle<Option<Partition>>>,
    /// Handed over but not released (the database did not answer): they lapse with their lease.
    pub unreleased: Vec<Partition>,
}

/// A partition being handed over or given back: its lease (renewed by the heartbeat until the
/// handover releases it, so a long drain does not let it lapse) and the task doing it.
type Leaving = (Lease, JoinHandle<Option<Partition>>);

/// Awaits the handovers a fault caught under way: each ends at most a bounded while after the
/// halt (see `hand_over`); any still running then is aborted, and its partition lapses with
/// its lease. Returns the partitions whose release could not be written.
pub(super) async fn finish_handovers(
    handovers: Vec<JoinHandle<Option<Partition>>>,
    halt: &CancellationToken,
) -> Vec<Partition> {
    let aborts: Vec<_> = handovers.iter().map(JoinHandle::abort_handle).collect();
    match until_halted(join_all(handovers), halt, STORE_CALL_WITHIN).await {
        Some(handed) => handed
            .into_iter()
            .filter_map(|handed| handed.ok().flatten())
            .collect(),
        None => {
            tracing::warn!(within = ?STORE_CALL_WITHIN, "handovers under way did not end in time after the halt; their leases will lapse");
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
            Vec::new()
        }
    }
}

/// Closes the channel of a partition this worker lost, once its consumer has stopped and the
/// batches committed before the loss had time to be acked. Whatever it still holds unacked (a
/// prefetched delivery, a decision the new owner's epoch fences out) returns to the queue for
/// the new owner; keeping the channel open would hold those messages back indefinitely. Then
/// the partition's idle course actors stop. Returns no partition: it is not this worker's.
async fn give_back(
    held: Held,
    grace: Duration,
    registry: Registry,
    halt: CancellationToken,
) -> Option<Partition> {
    held.stop.cancel();
    if let Ok(Some(channel)) = held.consumer.await {
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = halt.cancelled() => {}
        }
        until_halted(channel.close(), &halt, CLOSE_HALTED_WITHIN).await;
    }
    registry.forget_partition(held.lease.partition);
    None
}

/// Hands one partition over to whichever worker takes it next: stops consuming it, waits until
/// what it delivered is committed and acked (at most `drain_timeout`, and not past `halt`),
/// closes its channel, then releases it. Returns the partition if its release could not be
/// written.
async fn hand_over(
    store: Store,
    worker_id: String,
    held: Held,
    grace: Duration,
    drain_timeout: Duration,
    registry: Registry,
    halt: CancellationToken,
) -> Option<Partition> {
    let partition = held.lease.partition;
    held.stop.cancel();
    // The consumer ends by itself once stopped; what it is still routing it gives up at the
    // halt (the envelope returns to the broker).
    let channel = held.consumer.await.ok().flatten();
    let left = tokio::select! {
        left = held.in_flight.drained(drain_timeout) => left,
        _ = halt.cancelled() => held.in_flight.count(),
    };
    if left > 0 {
        // Released anyway: what is left returns to the queue when the channel closes, and the
        // next owner's epoch fences out any commit of it still to come from here.
        tracing::warn!(%partition, left, "partition not drained in time; handing it over anyway");
    } else {
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = halt.cancelled() => {}
        }
    }
    if let Some(channel) = channel
        && until_halted(channel.close(), &halt, CLOSE_HALTED_WITHIN)
            .await
            .is_none()
    {
        // The broker does not answer; it gets the deliveries back when the connection closes.
        tracing::debug!(%partition, "closing the partition's channel was not confirmed in time");
    }
    registry.forget_partition(partition);
    // Waited for as long as it takes until the halt (a busy pool is no reason to leave a
    // partition unowned for a lease), then at most STORE_CALL_WITHIN: with the database down
    // the pool would wait its acquire timeout, and with it stalled forever. An unreleased
    // partition passes on when its lease lapses.
    let leases = [held.lease];
    let release = store.release_partitions(&worker_id, &leases);
    match until_halted(release, &halt, STORE_CALL_WITHIN).await {
        Some(Ok(())) => {
            tracing::info!(%partition, epoch = held.lease.epoch, "partition handed over");
            None
        }
        Some(Err(e)) => {
            tracing::warn!(%partition, error = %crate::telemetry::chain(&e), "could not release the partition; its lease will lapse");
            Some(partition)
        }
        None => {
            tracing::warn!(%partition, within = ?STORE_CALL_WITHIN, "could not release the partition in time; its lease will lapse");
            Some(partition)
        }
    }
}

impl Ownership {
    /// Holds a fair share of the partitions until `stop`. Then, unless `fault` was raised too,
    /// hands every partition over, each as soon as it is drained; after a fault it only stops
    /// the consumers and returns what the session must close and release.
    pub(super) async fn run(self, stop: CancellationToken, fault: CancellationToken) -> Stopped {
        let mut held: HashMap<Partition, Held> = HashMap::new();
        let mut leaving: Vec<Leaving> = Vec::new();
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
                () = self.fenced.notified() => {}
            }
            leaving.retain(|(_, handover)| !handover.is_finished());
            // A heartbeat or an acquisition waits as long as the database takes: up to the
            // pool's acquire timeout when it is down, forever when it is stalled. Stopping does
            // not wait for it. Cut short, it leaves at most a lease this worker does not know
            // it holds (an acquisition that was written): it lapses, nothing was consumed.
            let beat = async {
                let Some(share) = self.heartbeat(&mut held, &mut leaving).await else {
                    return;
                };
                if held.len() > usize::from(share) {
                    self.hand_over_surplus(&mut held, &mut leaving, share);
                } else {
                    self.acquire(&mut held, share).await;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                () = beat => {}
            }
            metrics::owned_partitions(held.len());
        }
        if fault.is_cancelled() {
            let mut stopped = Stopped {
                handovers: leaving.into_iter().map(|(_, task)| task).collect(),
                ..Stopped::default()
            };
            for h in held.into_values() {
                h.stop.cancel();
                if let Ok(Some(channel)) = h.consumer.await {
                    stopped.channels.push(channel);
                }
                stopped.partitions.push(h.lease);
            }
            return stopped;
        }
        // Graceful: every partition is handed over on its own, as soon as it is drained, so
        // other workers can take the first ones while the last ones still finish.
        tracing::info!(
            partitions = held.len(),
            "handing every partition over before stopping"
        );
        metrics::owned_partitions(0);
        leaving.extend(held.into_values().map(|h| self.spawn_hand_over(h)));
        // Each handover ends by the halt plus its bounded channel close and release.
        let unreleased = join_all(leaving.into_iter().map(|(_, task)| task))
            .await
            .into_iter()
            .filter_map(|handed| handed.ok().flatten())
            .collect();
        Stopped {
            unreleased,
            ..Stopped::default()
        }
    }

    fn spawn_hand_over(&self, held: Held) -> Leaving {
        let lease = held.lease;
        let task = tokio::spawn(hand_over(
            self.store.clone(),
            self.worker_id.clone(),
            held,
            self.grace,
            self.drain_timeout,
            self.intake.courses.clone(),
            self.intake.halt.clone(),
        ));
        (lease, task)
    }

    /// Beats, drops the partitions another worker took, and returns this worker's fair share;
    /// `None` while the database cannot be reached.
    async fn heartbeat(
        &self,
        held: &mut HashMap<Partition, Held>,
        leaving: &mut Vec<Leaving>,
    ) -> Option<u16> {
        let renew: Vec<(Lease, usize)> = held
            .values()
            .map(|h| (h.lease, h.in_flight.count()))
            .chain(leaving.iter().map(|(lease, _)| (*lease, 0)))
            .collect();
        let membership = match self
            .store
            .heartbeat(&self.worker_id, self.lease, &renew)
            .await
        {
            Ok(membership) => membership,
            Err(e) => {
                // Logged once per outage; a lapsed lease is renewed when the database is back
                // if no other worker took the partition meanwhile.
                if !self
                    .heartbeat_failing
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    tracing::warn!(error = %crate::telemetry::chain(&e), "could not renew partition leases; retrying");
                }
                return None;
            }
        };
        if self
            .heartbeat_failing
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            tracing::info!("partition leases renewed again");
        }
        let gone: Vec<Partition> = held
            .iter()
            .filter(|(_, h)| !membership.held.contains(&h.lease))
            .map(|(p, _)| *p)
            .collect();
        for partition in gone {
            if let Some(h) = held.remove(&partition) {
                // Another worker took it (this one was too slow to renew). Its commits are
                // fenced from now on; stop consuming and let the broker redeliver.
                tracing::warn!(%partition, epoch = h.lease.epoch, "lost partition lease");
                let lease = h.lease;
                let task = tokio::spawn(give_back(
                    h,
                    self.grace,
                    self.intake.courses.clone(),
                    self.intake.halt.clone(),
                ));
                leaving.push((lease, task));
            }
        }
        Some(membership.fair_share(&self.worker_id, self.partitions))
    }

    /// Hands over the partitions above `share` (the highest-numbered), one handover each.
    fn hand_over_surplus(
        &self,
        held: &mut HashMap<Partition, Held>,
        leaving: &mut Vec<Leaving>,
        share: u16,
    ) {
        let mut mine: Vec<Partition> = held.keys().copied().collect();
        mine.sort_unstable();
        for partition in mine.into_iter().skip(usize::from(share)) {
            if let Some(h) = held.remove(&partition) {
                tracing::info!(%partition, share, "handing a partition over to balance the load");
                leaving.push(self.spawn_hand_over(h));
            }
        }
    }

    /// Takes free partitions up to `share` and starts consuming them.
    async fn acquire(&self, held: &mut HashMap<Partition, Held>, share: u16) {
        let missing = usize::from(share).saturating_sub(held.len());
        if missing == 0 {
            return;
        }
        let limit = u16::try_from(missing).unwrap_or(u16::MAX);
        match self
            .store
            .acquire_partitions(&self.worker_id, self.lease, limit)
            .await
        {
            Ok(leases) => {
                for lease in leases {
                    let stop = CancellationToken::new();
                    let in_flight = self.in_flight.child();
                    // Everything logged while consuming carries the partition and its epoch.
                    let span = tracing::info_span!(
                        "partition",
                        partition = %lease.partition,
                        epoch = lease.epoch
                    );
                    let consumer = tokio::spawn(
                        self.intake
                            .clone()
                            .consume(lease, stop.clone(), in_flight.clone())
                            .instrument(span),
                    );
                    held.insert(
                        lease.partition,
                        Held {
                            lease,
                            stop,
                            consumer,
                            in_flight,
                        },
                    );
                }
            }
            Err(e) => {
                // The heartbeat, a moment before, already logged a database outage.
                tracing::debug!(error = %crate::telemetry::chain(&e), "could not acquire partitions")
            }
        }
    }
}
