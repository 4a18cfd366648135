//! Partition ownership: workers acquire partitions by lease and every acquisition bumps the
//! partition's epoch, which commits check (see `commit::check_fence`).

use std::time::Duration;

use sqlx::Row;

use super::{Result, Store};
use crate::domain::Partition;

/// A partition held by this worker, at the epoch it was acquired under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub partition: Partition,
    pub epoch: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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
            "UPDATE partitions SET owner = $1, epoch = epoch + 1, \
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

    /// Extends the leases this worker still holds and returns them; a partition missing from
    /// the answer was taken over and must no longer be consumed.
    pub async fn renew_partitions(&self, worker_id: &str, lease: Duration) -> Result<Vec<Lease>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE workers SET heartbeat_at = now() WHERE worker_id = $1")
            .bind(worker_id)
            .execute(&mut *tx)
            .await?;
        // A lease that lapsed while the database was unreachable is renewed as long as no
        // other worker took the partition meanwhile: a takeover changes the owner and bumps the
        // epoch, so this cannot revive a lease someone else holds, and the epoch this worker's
        // commits carry stays valid.
        let rows = sqlx::query(
            "UPDATE partitions SET lease_until = now() + $2 * interval '1 millisecond' \
             WHERE owner = $1 RETURNING partition, epoch",
        )
        .bind(worker_id)
        .bind(millis(lease))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        leases(rows)
    }

    /// Gives partitions back (graceful shutdown), so another worker can take them at once.
    pub async fn release_partitions(
        &self,
        worker_id: &str,
        partitions: &[Partition],
    ) -> Result<()> {
        let ids: Vec<i32> = partitions.iter().map(|p| i32::from(p.0)).collect();
        sqlx::query(
            "UPDATE partitions SET owner = NULL, lease_until = NULL \
             WHERE owner = $1 AND partition = ANY($2)",
        )
        .bind(worker_id)
        .bind(&ids)
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
