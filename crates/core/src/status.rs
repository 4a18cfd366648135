//! `seatrush status`: the operator's view of a deployment. Which workers are alive, who owns
//! which partition at which epoch, how many messages wait in each partition queue and how many
//! its owner holds unacked, and whether the assignment is settled and balanced.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::amqp::{Broker, Topology};
use crate::domain::Partition;
use crate::store::{PartitionRow, Store, WorkerRow};

/// A registered worker, and what it owns.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    #[serde(flatten)]
    pub worker: WorkerRow,
    /// Its heartbeat is younger than a lease.
    pub live: bool,
    /// Partitions it holds a running lease on.
    pub owns: usize,
}

/// A partition: its ownership, and its queue as the broker sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    #[serde(flatten)]
    pub ownership: PartitionRow,
    /// Messages waiting in its queue (`None` if the queue is not declared yet).
    pub ready: Option<u32>,
    /// Consumers attached to its queue (single active consumer: one of them gets deliveries).
    pub consumers: Option<u32>,
}

/// The whole view; serialized by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub workers: Vec<WorkerStatus>,
    pub partitions: Vec<PartitionStatus>,
    /// Messages in the dead-letter queue.
    pub dead_letters: Option<u32>,
    /// Every partition has a live owner, and each live worker owns floor(P/W) or ceil(P/W).
    pub balanced: bool,
}

/// Reads the view; `lease` decides which heartbeats count as alive (the workers' `--lease-ms`).
pub async fn gather(
    store: &Store,
    broker: &Broker,
    topology: &Topology,
    lease: Duration,
) -> anyhow::Result<Status> {
    let (workers, partitions) = store.ownership().await?;
    let owns = owned_by(&partitions);
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let workers: Vec<WorkerStatus> = workers
        .into_iter()
        .map(|worker| WorkerStatus {
            live: worker.heartbeat_age_ms < lease_ms,
            owns: owns.get(worker.worker_id.as_str()).copied().unwrap_or(0),
            worker,
        })
        .collect();
    let mut with_queues = Vec::with_capacity(partitions.len());
    for ownership in partitions {
        // Over the partition's lanes: what waits in all of them, and the consumers of the
        // least consumed (a lane nobody consumes is a partition not wholly served). Unknown if
        // one of its queues is.
        let mut depths = Vec::new();
        for queue in topology.partition_queues(Partition(ownership.partition)) {
            depths.push(broker.queue_depth(&queue).await?);
        }
        let depths: Option<Vec<_>> = depths.into_iter().collect();
        with_queues.push(PartitionStatus {
            ownership,
            ready: depths.as_ref().map(|all| all.iter().map(|d| d.ready).sum()),
            consumers: depths
                .as_ref()
                .and_then(|all| all.iter().map(|d| d.consumers).min()),
        });
    }
    let dead_letters = broker
        .queue_depth(&topology.dead_queue())
        .await?
        .map(|d| d.ready);
    let live_owned: Vec<usize> = workers.iter().filter(|w| w.live).map(|w| w.owns).collect();
    let all_owned = with_queues.iter().all(|p| {
        p.ownership
            .owner
            .as_deref()
            .is_some_and(|o| workers.iter().any(|w| w.live && w.worker.worker_id == o))
    });
    Ok(Status {
        balanced: all_owned && is_fair(&live_owned, with_queues.len()),
        workers,
        partitions: with_queues,
        dead_letters,
    })
}

/// How many partitions each holder of a running lease owns.
pub fn owned_by(partitions: &[PartitionRow]) -> HashMap<&str, usize> {
    let mut owns: HashMap<&str, usize> = HashMap::new();
    for owner in partitions.iter().filter_map(|p| p.owner.as_deref()) {
        *owns.entry(owner).or_default() += 1;
    }
    owns
}

/// Whether `owned` (partitions per live worker) splits `partitions` fairly: each floor(P/W) or
/// ceil(P/W), all of them owned.
pub fn is_fair(owned: &[usize], partitions: usize) -> bool {
    if owned.is_empty() {
        return partitions == 0;
    }
    let (floor, ceil) = (partitions / owned.len(), partitions.div_ceil(owned.len()));
    owned.iter().sum::<usize>() == partitions && owned.iter().all(|n| *n == floor || *n == ceil)
}

/// The view as text.
pub fn describe(status: &Status) -> String {
    let live = status.workers.iter().filter(|w| w.live).count();
    let mut out = format!(
        "workers: {live} live of {} registered; assignment {}\n",
        status.workers.len(),
        if status.balanced {
            "balanced"
        } else {
            "not settled"
        }
    );
    for w in &status.workers {
        out.push_str(&format!(
            "  {:<40} {:<6} owns {:>3}  host {} pid {}  heartbeat {} ms ago\n",
            w.worker.worker_id,
            if w.live { "live" } else { "silent" },
            w.owns,
            w.worker.hostname,
            w.worker.pid,
            w.worker.heartbeat_age_ms
        ));
    }
    out.push_str("partition  owner                                     epoch  lease left  ready  unacked  consumers\n");
    for p in &status.partitions {
        let o = &p.ownership;
        let show = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
        out.push_str(&format!(
            "{:>9}  {:<40} {:>6}  {:>10}  {:>5}  {:>7}  {:>9}\n",
            o.partition,
            o.owner.as_deref().unwrap_or("(free)"),
            o.epoch,
            o.lease_left_ms
                .filter(|ms| *ms > 0)
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
            show(p.ready),
            o.unacked,
            show(p.consumers),
        ));
    }
    out.push_str(&format!(
        "dead letters: {}\n",
        status
            .dead_letters
            .map_or_else(|| "no queue".to_owned(), |n| n.to_string())
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::is_fair;

    #[test]
    fn a_fair_split_is_floor_or_ceil_and_owns_everything() {
        assert!(is_fair(&[6, 5, 5], 16));
        assert!(is_fair(&[8, 8], 16));
        assert!(is_fair(&[16], 16));
        assert!(!is_fair(&[6, 6, 4], 16), "4 is below floor(16/3)");
        assert!(!is_fair(&[5, 5, 5], 16), "one partition unowned");
        assert!(!is_fair(&[], 16));
    }
}
