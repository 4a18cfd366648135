//! Partition ownership: workers acquire partitions by lease and every acquisition bumps the
//! partition's epoch, which commits check (see `commit::check_fence`).

use std::time::Duration;

use sqlx::Row;

use super::{Result, Store};
use crate::domain::Partition;

/// What a heartbeat learns: the leases this worker still holds, and every live worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub held: Vec<Lease>,
    /// Workers whose heartbeat is younger than a lease, in id order (this one included).
    pub live_workers: Vec<String>,
}

impl Membership {
    /// How many partitions of `partitions` this worker should own once settled: with W live
    /// workers each owns floor(P/W), and the first P mod W in id order one more. Every worker
    /// computes the same split from the same table, so the shares add up to P.
    pub fn fair_share(&self, worker_id: &str, partitions: u16) -> u16 {
        let workers = self.live_workers.len().max(1);
        let rank = self
            .live_workers
            .iter()
            .position(|w| w == worker_id)
            .unwrap_or(workers - 1);
        fair_share(usize::from(partitions), workers, rank)
    }
}

/// The share of the worker at `rank` (0-based) among `workers`, of `partitions`.
fn fair_share(partitions: usize, workers: usize, rank: usize) -> u16 {
    let share = partitions / workers + usize::from(rank < partitions % workers);
    u16::try_from(share).unwrap_or(u16::MAX)
}

/// A worker as the ownership table sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerRow {
    pub worker_id: String,
    pub hostname: String,
    pub pid: i32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
}

/// A partition's ownership.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionRow {
    pub partition: u16,
    /// Its holder, if its lease runs; a lapsed lease's last holder is `None`.
    pub owner: Option<String>,
    pub epoch: i64,
    /// Milliseconds the lease has left (negative once lapsed).
    pub lease_left_ms: Option<i64>,
    /// Deliveries the owner held unacked at its last heartbeat.
    pub unacked: i32,
}

/// A partition held by this worker, at the epoch it was acquired under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub partition: Partition,
    pub epoch: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The partitions and epochs of `leases`, as two arrays for `unnest`.
fn lease_columns<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> (Vec<i32>, Vec<i64>) {
    leases
        .into_iter()
        .map(|l| (i32::from(l.partition.0), l.epoch))
        .unzip()
}

fn leases(rows: Vec<sqlx::postgres::PgRow>) -> Result<Vec<Lease>> {
    rows.iter()
        .map(|row| {
            let partition: i32 = row.try_get("partition")?;
            Ok(Lease {
                partition: Partition(u16::try_from(partition).unwrap_or(u16::MAX)),
                epoch: row.try_get("epoch")?,
            })
        })
        .collect()
}

impl Store {
    /// Announces a worker (or refreshes its heartbeat).
    pub async fn register_worker(&self, worker_id: &str, hostname: &str, pid: u32) -> Result<()> {
        sqlx::query(
            "INSERT INTO workers (worker_id, hostname, pid) VALUES ($1, $2, $3) \
             ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(worker_id)
        .bind(hostname)
        .bind(i32::try_from(pid).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes up to `limit` partitions that nobody holds or whose lease ran out.
    pub async fn acquire_partitions(
        &self,
        worker_id: &str,
        lease: Duration,
        limit: u16,
    ) -> Result<Vec<Lease>> {
        let rows = sqlx::query(
            "UPDATE partitions SET owner = $1, epoch = epoch + 1, unacked = 0, acquired_at = now(), \
                    lease_until = now() + $2 * interval '1 millisecond' \
             WHERE partition IN ( \
                SELECT partition FROM partitions \
                WHERE owner IS NULL OR lease_until < now() \
                ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING partition, epoch",
        )
        .bind(worker_id)
        .bind(millis(lease))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        leases(rows)
    }

    /// The heartbeat: refreshes this worker's liveness, extends the given leases where it still
    /// holds them at their epoch (recording what it holds unacked on each, for the operator's
    /// view) and reads who is alive. A lease missing from the answer's `held` was taken over
    /// and must no longer be consumed.
    ///
    /// Only the leases the caller names are renewed, not every partition recorded under its
    /// id: a worker restarted under the same id (as a container keeps it) finds the leases of
    /// its previous life still recorded, and renewing them would keep partitions that nobody
    /// consumes from ever lapsing.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        lease: Duration,
        renew: &[(Lease, usize)],
    ) -> Result<Membership> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE workers SET heartbeat_at = now() WHERE worker_id = $1")
            .bind(worker_id)
            .execute(&mut *tx)
            .await?;
        let (ids, epochs) = lease_columns(renew.iter().map(|(l, _)| l));
        let counts: Vec<i32> = renew
            .iter()
            .map(|(_, n)| i32::try_from(*n).unwrap_or(i32::MAX))
            .collect();
        // A lease that lapsed while the database was unreachable is renewed as long as no
        // other worker took the partition meanwhile: a takeover changes the owner and bumps the
        // epoch, so this cannot revive a lease someone else holds, and the epoch this worker's
        // commits carry stays valid. The rows are locked in partition order first, the order
        // the commits' fence locks them in: an update alone locks them in the table's physical
        // order, which a long run shuffles, and two orders over the same rows deadlock.
        let rows = sqlx::query(
            "WITH held AS (SELECT p.partition, r.unacked FROM partitions p \
                           JOIN unnest($3::int[], $4::bigint[], $5::int[]) \
                             AS r(partition, epoch, unacked) \
                             ON r.partition = p.partition AND r.epoch = p.epoch \
                           WHERE p.owner = $1 ORDER BY p.partition FOR UPDATE OF p) \
             UPDATE partitions p SET lease_until = now() + $2 * interval '1 millisecond', \
                    unacked = held.unacked \
             FROM held WHERE p.partition = held.partition AND p.owner = $1 \
             RETURNING p.partition, p.epoch",
        )
        .bind(worker_id)
        .bind(millis(lease))
        .bind(&ids)
        .bind(&epochs)
        .bind(&counts)
        .fetch_all(&mut *tx)
        .await?;
        let live_workers = sqlx::query_scalar(
            "SELECT worker_id FROM workers \
             WHERE heartbeat_at > now() - $1 * interval '1 millisecond' ORDER BY worker_id",
        )
        .bind(millis(lease))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Membership {
            held: leases(rows)?,
            live_workers,
        })
    }

    /// Every registered worker and every partition's ownership, read in one snapshot.
    pub async fn ownership(&self) -> Result<(Vec<WorkerRow>, Vec<PartitionRow>)> {
        let mut tx = self.snapshot().await?;
        let workers = sqlx::query(
            "SELECT worker_id, hostname, pid, started_at, \
                    (extract(epoch FROM now() - heartbeat_at) * 1000)::bigint AS age \
             FROM workers ORDER BY worker_id",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| {
            Ok(WorkerRow {
                worker_id: row.try_get("worker_id")?,
                hostname: row.try_get("hostname")?,
                pid: row.try_get("pid")?,
                started_at: row.try_get("started_at")?,
                heartbeat_age_ms: row.try_get("age")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let partitions = sqlx::query(
            "SELECT partition, CASE WHEN lease_until > now() THEN owner END AS owner, epoch, \
                    (extract(epoch FROM lease_until - now()) * 1000)::bigint AS left_ms, unacked \
             FROM partitions ORDER BY partition",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| {
            let partition: i32 = row.try_get("partition")?;
            Ok(PartitionRow {
                partition: u16::try_from(partition).unwrap_or(u16::MAX),
                owner: row.try_get("owner")?,
                epoch: row.try_get("epoch")?,
                lease_left_ms: row.try_get("left_ms")?,
                unacked: row.try_get("unacked")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok((workers, partitions))
    }

    /// Gives leases back (graceful shutdown), so another worker can take their partitions at
    /// once. A partition held at another epoch than the lease's is left alone: it was taken
    /// again since, by another worker or by a later session of this one.
    pub async fn release_partitions(&self, worker_id: &str, leases: &[Lease]) -> Result<()> {
        let (ids, epochs) = lease_columns(leases);
        // Locked in partition order, as the heartbeat and the commits' fence lock them.
        sqlx::query(
            "WITH released AS (SELECT p.partition FROM partitions p \
                               JOIN unnest($2::int[], $3::bigint[]) AS l(partition, epoch) \
                                 ON l.partition = p.partition AND l.epoch = p.epoch \
                               WHERE p.owner = $1 ORDER BY p.partition FOR UPDATE OF p) \
             UPDATE partitions p SET owner = NULL, lease_until = NULL, unacked = 0 \
             FROM released WHERE p.partition = released.partition AND p.owner = $1",
        )
        .bind(worker_id)
        .bind(&ids)
        .bind(&epochs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a worker that is leaving.
    pub async fn deregister_worker(&self, worker_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM workers WHERE worker_id = $1")
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_shares_differ_by_at_most_one_and_add_up() {
        for partitions in 1..=64usize {
            for workers in 1..=12usize {
                let shares: Vec<usize> = (0..workers)
                    .map(|r| usize::from(fair_share(partitions, workers, r)))
                    .collect();
                assert_eq!(shares.iter().sum::<usize>(), partitions);
                let (floor, ceil) = (partitions / workers, partitions.div_ceil(workers));
                assert!(
                    shares.iter().all(|s| *s == floor || *s == ceil),
                    "{shares:?}"
                );
            }
        }
    }

    #[test]
    fn a_worker_not_yet_listed_takes_the_last_share() {
        let membership = Membership {
            held: Vec::new(),
            live_workers: vec!["a".into(), "b".into(), "c".into()],
        };
        assert_eq!(membership.fair_share("a", 16), 6);
        assert_eq!(membership.fair_share("b", 16), 5);
        assert_eq!(membership.fair_share("c", 16), 5);
        assert_eq!(membership.fair_share("z", 16), 5);
    }
}
