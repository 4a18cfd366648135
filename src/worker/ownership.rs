//! Partition ownership for one session: renews the leases this worker holds, takes free ones,
//! and runs one intake consumer per partition held.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::intake::Intake;
use crate::amqp::Deliveries;
use crate::domain::Partition;
use crate::store::{Lease, Store};

pub(super) struct Ownership {
    pub store: Store,
    pub worker_id: String,
    pub lease: Duration,
    pub partitions: u16,
    pub intake: Intake,
    /// How long a lost partition's channel stays open for acks of batches committed before
    /// the loss.
    pub grace: Duration,
    /// Whether the last renewal failed, so an outage is logged once.
    pub renew_failing: std::sync::atomic::AtomicBool,
}

struct Held {
    lease: Lease,
    stop: CancellationToken,
    consumer: JoinHandle<Option<Deliveries>>,
}

/// What a session keeps after its consumers stop: the partitions to release, and the stopped
/// consumers, whose channels stay open until the in-flight work is settled.
#[derive(Default)]
pub(super) struct Stopped {
    pub partitions: Vec<Partition>,
    pub channels: Vec<Deliveries>,
}

/// Closes the channel of a partition this worker lost, once its consumer has stopped and the
/// batches committed before the loss had time to be acked. Whatever it still holds unacked (a
/// prefetched delivery, a decision the new owner's epoch fences out) returns to the queue for
/// the new owner; keeping the channel open would hold those messages back indefinitely.
async fn give_back(consumer: JoinHandle<Option<Deliveries>>, grace: Duration) {
    if let Ok(Some(channel)) = consumer.await {
        tokio::time::sleep(grace).await;
        channel.close().await;
    }
}

impl Ownership {
    /// Holds partitions until `stop`, then stops every consumer and returns what must outlive
    /// the drain.
    pub(super) async fn run(self, stop: CancellationToken) -> Stopped {
        let mut held: HashMap<Partition, Held> = HashMap::new();
        let mut lost = Vec::new();
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.renew(&mut held, &mut lost).await;
            self.acquire(&mut held).await;
        }
        let mut stopped = Stopped::default();
        for handing_back in lost {
            let _ = handing_back.await;
        }
        for (partition, h) in held {
            h.stop.cancel();
            if let Ok(Some(channel)) = h.consumer.await {
                stopped.channels.push(channel);
            }
            stopped.partitions.push(partition);
        }
        stopped
    }

    async fn renew(&self, held: &mut HashMap<Partition, Held>, lost: &mut Vec<JoinHandle<()>>) {
        if held.is_empty() {
            return;
        }
        match self
            .store
            .renew_partitions(&self.worker_id, self.lease)
            .await
        {
            Ok(still) => {
                if self
                    .renew_failing
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    tracing::info!("partition leases renewed again");
                }
                let gone: Vec<Partition> = held
                    .iter()
                    .filter(|(_, h)| !still.contains(&h.lease))
                    .map(|(p, _)| *p)
                    .collect();
                for partition in gone {
                    if let Some(h) = held.remove(&partition) {
                        // Another worker took it (this one was too slow to renew). Its commits
                        // are fenced from now on; stop consuming and let the broker redeliver.
                        tracing::warn!(%partition, epoch = h.lease.epoch, "lost partition lease");
                        h.stop.cancel();
                        lost.push(tokio::spawn(give_back(h.consumer, self.grace)));
                    }
                }
            }
            Err(e) => {
                // Logged once per outage; a lapsed lease is renewed when the database is back
                // if no other worker took the partition meanwhile.
                if !self
                    .renew_failing
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    tracing::warn!(error = %crate::telemetry::chain(&e), "could not renew partition leases; retrying");
                }
            }
        }
    }

    async fn acquire(&self, held: &mut HashMap<Partition, Held>) {
        let missing = usize::from(self.partitions).saturating_sub(held.len());
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
                    let consumer = tokio::spawn(self.intake.clone().consume(lease, stop.clone()));
                    held.insert(
                        lease.partition,
                        Held {
                            lease,
                            stop,
                            consumer,
                        },
                    );
                }
            }
            Err(e) => {
                // The renewal, a moment before, already logged a database outage.
                tracing::debug!(error = %crate::telemetry::chain(&e), "could not acquire partitions")
            }
        }
    }
}
