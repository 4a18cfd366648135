//! The fence (invariant I5): a batch commits only while this worker still owns every
//! partition it came from, at the epoch its items were consumed under.

use std::collections::{BTreeSet, HashSet};

use super::Pending;
use crate::store::{Result, StoreError};

/// Fails with [`StoreError::Fenced`], naming the partitions lost, unless this worker holds
/// every partition of the batch at the items' epochs. The rows are read `FOR SHARE`: a
/// takeover (which updates the row) waits for this commit, and a commit that starts after a
/// takeover sees the new epoch and is refused. They are locked in partition order, as the
/// heartbeat locks them (`Store::heartbeat`), so the two never wait on each other in a cycle.
pub(super) async fn check(
    tx: &mut sqlx::PgConnection,
    worker_id: &str,
    items: &[&Pending],
) -> Result<()> {
    let held: BTreeSet<(u16, i64)> = items.iter().map(|p| (p.partition.0, p.epoch)).collect();
    let partitions: Vec<i32> = held.iter().map(|(p, _)| i32::from(*p)).collect();
    let epochs: Vec<i64> = held.iter().map(|(_, e)| *e).collect();
    let valid: Vec<i32> = sqlx::query_scalar(
        "SELECT p.partition FROM partitions p \
         JOIN UNNEST($1::int[], $2::bigint[]) AS b(partition, epoch) \
           ON p.partition = b.partition AND p.epoch = b.epoch \
         WHERE p.owner = $3 ORDER BY p.partition FOR SHARE OF p",
    )
    .bind(&partitions)
    .bind(&epochs)
    .bind(worker_id)
    .fetch_all(&mut *tx)
    .await?;
    if valid.len() == held.len() {
        return Ok(());
    }
    let valid: HashSet<i32> = valid.into_iter().collect();
    Err(StoreError::Fenced {
        partitions: held
            .iter()
            .filter(|(p, _)| !valid.contains(&i32::from(*p)))
            .map(|(p, _)| *p)
            .collect(),
    })
}
