//! The group commit: one transaction writes a whole batch of decisions.
//!
//! The course actors decide in memory; this is where their decisions become durable. Each table
//! is written by one set-based statement over `UNNEST`ed arrays, so a batch of 500 decisions
//! costs a handful of round trips. The database stays the final arbiter: an effect that no
//! longer fits what is committed (a seat that is not free, a student not enrolled, a request id
//! already decided elsewhere) is not applied, and the final verdict says what really happened.

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::Row;

use super::courses::{to_u32, verdict_from_row};
use super::{Result, Store, StoreError};
use crate::course::Effect;
use crate::domain::{Outcome, Partition, Reason, Request, Verdict};

/// One decision waiting to be committed.
#[derive(Debug, Clone)]
pub struct Pending {
    pub request: Request,
    /// What the actor decided (and sent as the provisional answer).
    pub provisional: Verdict,
    pub effect: Effect,
    /// The actor replayed a verdict it already knew; nothing is written for it.
    pub replay: bool,
    /// The partition the request came from and the ownership epoch it was consumed under.
    pub partition: Partition,
    pub epoch: i64,
}

/// What a committed decision turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub verdict: Verdict,
    /// The request id had been decided before; this is its stored verdict.
    pub replayed: bool,
    /// The verdict differs from the provisional one: the course actor's memory was not in step
    /// with the database.
    pub revised: bool,
    /// The database did not do what the actor decided (a different verdict, or an effect not
    /// applied): the actor's memory is out of step and must reload.
    pub diverged: bool,
    /// A replayed outcome whose final answer the broker has already confirmed once.
    pub answered: bool,
    /// The batch that wrote this outcome, for a fresh one: the finalizer records it as answered.
    pub batch_id: Option<i64>,
}

impl Store {
    /// Commits a batch in one transaction and returns the final verdict of each item, in order.
    ///
    /// Fails with [`StoreError::Fenced`] if this worker no longer owns one of the partitions at
    /// the epoch the items carry; nothing is written then.
    pub async fn commit(&self, worker_id: &str, items: &[&Pending]) -> Result<Vec<Committed>> {
        let mut tx = self.pool.begin().await?;
        check_fence(&mut tx, worker_id, items).await?;

        // Lock the touched courses in a fixed order, so concurrent writers (a stale owner in
        // the fencing gap, an admin command) queue up instead of deadlocking.
        let touched: BTreeSet<&str> = items
            .iter()
            .filter(|p| p.effect != Effect::None)
            .map(|p| p.request.course_id.as_str())
            .collect();
        let touched: Vec<&str> = touched.into_iter().collect();
        if !touched.is_empty() {
            sqlx::query(
                "SELECT 1 FROM courses WHERE course_id = ANY($1) ORDER BY course_id FOR UPDATE",
            )
            .bind(&touched)
            .execute(&mut *tx)
            .await?;
        }

        // Request ids decided before this batch (possible after a failover or when a client
        // reuses an id for another course): their stored verdict wins, their effect is skipped.
        let candidate_ids: Vec<&str> = items
            .iter()
            .filter(|p| !p.replay)
            .map(|p| p.request.request_id.as_str())
            .collect();
        let stored = fetch_stored(&mut tx, &candidate_ids).await?;

        // The fresh items, each request id once (the first occurrence in the batch wins).
        let mut seen = HashSet::new();
        let fresh: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                !p.replay
                    && !stored.contains_key(p.request.request_id.as_str())
                    && seen.insert(p.request.request_id.as_str())
            })
            .map(|(i, _)| i)
            .collect();

        let dropped = apply_drops(&mut tx, items, &fresh).await?;
        let enrolled = apply_enrolls(&mut tx, items, &fresh).await?;

        // Final verdicts of the fresh items: the provisional one, unless the effect did not apply.
        let mut finals: HashMap<usize, Verdict> = HashMap::new();
        let mut missed: Vec<usize> = Vec::new();
        for &i in &fresh {
            let p = &items[i];
            let id = p.request.request_id.as_str();
            let applied = match p.effect {
                Effect::None => true,
                Effect::Enroll => enrolled.contains(id),
                Effect::Drop => dropped.contains(id),
            };
            if !applied {
                missed.push(i);
            }
            finals.insert(i, p.provisional.clone());
        }
        if !missed.is_empty() {
            revise(&mut tx, items, &missed, &mut finals).await?;
        }

        let batch_id = if fresh.is_empty() {
            None
        } else {
            Some(insert_outcomes(&mut tx, worker_id, items, &fresh, &finals).await?)
        };

        // Replays and earlier decisions: read what is stored, now including this batch.
        let replay_ids: Vec<&str> = items
            .iter()
            .enumerate()
            .filter(|(i, _)| !finals.contains_key(i))
            .map(|(_, p)| p.request.request_id.as_str())
            .collect();
        let replayed = fetch_stored(&mut tx, &replay_ids).await?;
        tx.commit().await?;

        items
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let fresh_verdict = finals.remove(&i);
                // An effect was decided but not written: for fresh items when the database had
                // no room for it, for the rest because their id was decided before.
                let unapplied =
                    p.effect != Effect::None && (fresh_verdict.is_none() || missed.contains(&i));
                let (verdict, replayed, answered, written) = match fresh_verdict {
                    Some(v) => (v, false, false, batch_id),
                    None => {
                        let stored =
                            replayed.get(p.request.request_id.as_str()).ok_or_else(|| {
                                StoreError::Inconsistent(format!(
                                    "request {} was replayed but has no stored outcome",
                                    p.request.request_id
                                ))
                            })?;
                        (stored.verdict.clone(), true, stored.answered, None)
                    }
                };
                let revised = !same_answer(&verdict, &p.provisional);
                Ok(Committed {
                    verdict,
                    replayed,
                    revised,
                    diverged: revised || unapplied,
                    answered,
                    batch_id: written,
                })
            })
            .collect()
    }
}

/// Two verdicts tell the student the same thing (seat counts move on between the two).
fn same_answer(a: &Verdict, b: &Verdict) -> bool {
    a.outcome == b.outcome && a.reason == b.reason
}

async fn check_fence(
    tx: &mut sqlx::PgConnection,
    worker_id: &str,
    items: &[&Pending],
) -> Result<()> {
    let held: BTreeSet<(u16, i64)> = items.iter().map(|p| (p.partition.0, p.epoch)).collect();
    let partitions: Vec<i32> = held.iter().map(|(p, _)| i32::from(*p)).collect();
    let epochs: Vec<i64> = held.iter().map(|(_, e)| *e).collect();
    // FOR SHARE: a takeover (which updates the row) waits for this commit, and a commit that
    // starts after a takeover sees the new epoch and is refused.
    let valid: Vec<i32> = sqlx::query_scalar(
        "SELECT p.partition FROM partitions p \
         JOIN UNNEST($1::int[], $2::bigint[]) AS b(partition, epoch) \
           ON p.partition = b.partition AND p.epoch = b.epoch \
         WHERE p.owner = $3 FOR SHARE OF p",
    )
    .bind(&partitions)
    .bind(&epochs)
    .bind(worker_id)
    .fetch_all(&mut *tx)
    .await?;
    if valid.len() != held.len() {
        let valid: HashSet<i32> = valid.into_iter().collect();
        return Err(StoreError::Fenced {
            partitions: held
                .iter()
                .filter(|(p, _)| !valid.contains(&i32::from(*p)))
                .map(|(p, _)| *p)
                .collect(),
        });
    }
    Ok(())
}

/// An outcome as stored.
struct Stored {
    verdict: Verdict,
    answered: bool,
}

async fn fetch_stored(
    tx: &mut sqlx::PgConnection,
    ids: &[&str],
) -> Result<HashMap<String, Stored>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT o.request_id, o.outcome, o.reason, o.seats_left, b.answered \
         FROM outcomes o JOIN decision_batches b ON b.batch_id = o.batch_id \
         WHERE o.request_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|row| {
            let stored = Stored {
                verdict: verdict_from_row(row)?,
                answered: row.try_get("answered")?,
            };
            Ok((row.try_get("request_id")?, stored))
        })
        .collect()
}

impl Store {
    /// Records that the final answers of these batches were confirmed by the broker.
    pub async fn mark_answered(&self, batch_ids: &[i64]) -> Result<()> {
        sqlx::query("UPDATE decision_batches SET answered = true WHERE batch_id = ANY($1)")
            .bind(batch_ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Deletes the seats of fresh drops and lowers the counters; returns the request ids applied.
async fn apply_drops(
    tx: &mut sqlx::PgConnection,
    items: &[&Pending],
    fresh: &[usize],
) -> Result<HashSet<String>> {
    let drops: Vec<&Pending> = fresh
        .iter()
        .map(|&i| items[i])
        .filter(|p| p.effect == Effect::Drop)
        .collect();
    if drops.is_empty() {
        return Ok(HashSet::new());
    }
    let courses: Vec<&str> = drops.iter().map(|p| p.request.course_id.as_str()).collect();
    let students: Vec<&str> = drops
        .iter()
        .map(|p| p.request.student_id.as_str())
        .collect();
    let requests: Vec<&str> = drops
        .iter()
        .map(|p| p.request.request_id.as_str())
        .collect();
    let applied: Vec<String> = sqlx::query_scalar(
        "WITH d AS ( \
            SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) \
              AS d(course_id, student_id, request_id)), \
         gone AS ( \
            DELETE FROM enrollments e USING d \
            WHERE e.course_id = d.course_id AND e.student_id = d.student_id \
            RETURNING e.course_id, d.request_id), \
         counts AS (SELECT course_id, count(*)::int AS n FROM gone GROUP BY course_id), \
         lowered AS ( \
            UPDATE courses c SET enrolled = c.enrolled - counts.n \
            FROM counts WHERE c.course_id = counts.course_id) \
         SELECT request_id FROM gone",
    )
    .bind(&courses)
    .bind(&students)
    .bind(&requests)
    .fetch_all(&mut *tx)
    .await?;
    Ok(applied.into_iter().collect())
}

/// Inserts the seats of fresh enrolls, in decision order, as far as each course has room, and
/// raises the counters; returns the request ids applied.
async fn apply_enrolls(
    tx: &mut sqlx::PgConnection,
    items: &[&Pending],
    fresh: &[usize],
) -> Result<HashSet<String>> {
    let enrolls: Vec<&Pending> = fresh
        .iter()
        .map(|&i| items[i])
        .filter(|p| p.effect == Effect::Enroll)
        .collect();
    if enrolls.is_empty() {
        return Ok(HashSet::new());
    }
    let courses: Vec<&str> = enrolls
        .iter()
        .map(|p| p.request.course_id.as_str())
        .collect();
    let students: Vec<&str> = enrolls
        .iter()
        .map(|p| p.request.student_id.as_str())
        .collect();
    let requests: Vec<&str> = enrolls
        .iter()
        .map(|p| p.request.request_id.as_str())
        .collect();
    // The room check is what keeps a memory that drifted from the database from ever
    // overselling; the CHECK constraint on courses stays as the last line.
    let applied: Vec<String> = sqlx::query_scalar(
        "WITH w AS ( \
            SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
              AS w(course_id, student_id, request_id, ord)), \
         ranked AS ( \
            SELECT w.*, row_number() OVER (PARTITION BY w.course_id ORDER BY w.ord) AS rank \
            FROM w WHERE NOT EXISTS ( \
              SELECT 1 FROM enrollments e \
              WHERE e.course_id = w.course_id AND e.student_id = w.student_id)), \
         fits AS ( \
            SELECT r.course_id, r.student_id, r.request_id FROM ranked r \
            JOIN courses c ON c.course_id = r.course_id \
            WHERE r.rank <= c.capacity - c.enrolled), \
         added AS ( \
            INSERT INTO enrollments (course_id, student_id, request_id) \
            SELECT course_id, student_id, request_id FROM fits \
            ON CONFLICT DO NOTHING RETURNING course_id, request_id), \
         counts AS (SELECT course_id, count(*)::int AS n FROM added GROUP BY course_id), \
         raised AS ( \
            UPDATE courses c SET enrolled = c.enrolled + counts.n \
            FROM counts WHERE c.course_id = counts.course_id) \
         SELECT request_id FROM added",
    )
    .bind(&courses)
    .bind(&students)
    .bind(&requests)
    .fetch_all(&mut *tx)
    .await?;
    Ok(applied.into_iter().collect())
}

/// Rewrites the final verdict of every fresh effect that did not apply, from the database's
/// state after this batch's writes.
async fn revise(
    tx: &mut sqlx::PgConnection,
    items: &[&Pending],
    missed: &[usize],
    finals: &mut HashMap<usize, Verdict>,
) -> Result<()> {
    let courses: Vec<&str> = missed
        .iter()
        .map(|&i| items[i].request.course_id.as_str())
        .collect();
    let students: Vec<&str> = missed
        .iter()
        .map(|&i| items[i].request.student_id.as_str())
        .collect();
    let rows = sqlx::query(
        "SELECT m.ord, c.capacity - c.enrolled AS seats_left, \
                EXISTS (SELECT 1 FROM enrollments e \
                        WHERE e.course_id = m.course_id AND e.student_id = m.student_id) AS holds \
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS m(course_id, student_id, ord) \
         JOIN courses c ON c.course_id = m.course_id",
    )
    .bind(&courses)
    .bind(&students)
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        let ord: i64 = row.try_get("ord")?;
        let seats_left = to_u32(row.try_get::<i32, _>("seats_left")?);
        let holds: bool = row.try_get("holds")?;
        let Some(&i) = usize::try_from(ord - 1).ok().and_then(|o| missed.get(o)) else {
            continue;
        };
        let (outcome, reason) = match (items[i].effect, holds) {
            (Effect::Enroll, true) => (Outcome::Enrolled, Some(Reason::AlreadyEnrolled)),
            (Effect::Enroll, false) => (Outcome::Rejected, Some(Reason::Full)),
            (_, _) => (Outcome::Rejected, Some(Reason::NotEnrolled)),
        };
        finals.insert(
            i,
            Verdict {
                outcome,
                reason,
                seats_left,
            },
        );
    }
    Ok(())
}

async fn insert_outcomes(
    tx: &mut sqlx::PgConnection,
    worker_id: &str,
    items: &[&Pending],
    fresh: &[usize],
    finals: &HashMap<usize, Verdict>,
) -> Result<i64> {
    let count = i32::try_from(fresh.len()).unwrap_or(i32::MAX);
    let batch_id: i64 = sqlx::query_scalar(
        "INSERT INTO decision_batches (worker_id, requests) VALUES ($1, $2) RETURNING batch_id",
    )
    .bind(worker_id)
    .bind(count)
    .fetch_one(&mut *tx)
    .await?;

    let mut request_ids = Vec::with_capacity(fresh.len());
    let mut course_ids = Vec::with_capacity(fresh.len());
    let mut student_ids = Vec::with_capacity(fresh.len());
    let mut actions = Vec::with_capacity(fresh.len());
    let mut outcomes = Vec::with_capacity(fresh.len());
    let mut reasons: Vec<Option<&str>> = Vec::with_capacity(fresh.len());
    let mut seats = Vec::with_capacity(fresh.len());
    for &i in fresh {
        let p = &items[i];
        let verdict = finals.get(&i).unwrap_or(&p.provisional);
        request_ids.push(p.request.request_id.as_str());
        course_ids.push(p.request.course_id.as_str());
        student_ids.push(p.request.student_id.as_str());
        actions.push(p.request.action.as_str());
        outcomes.push(verdict.outcome.as_str());
        reasons.push(verdict.reason.map(Reason::as_str));
        seats.push(i32::try_from(verdict.seats_left).unwrap_or(i32::MAX));
    }
    sqlx::query(
        "INSERT INTO outcomes \
           (request_id, course_id, student_id, action, outcome, reason, seats_left, batch_id) \
         SELECT r.*, $8 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                   $6::text[], $7::int[]) AS r",
    )
    .bind(&request_ids)
    .bind(&course_ids)
    .bind(&student_ids)
    .bind(&actions)
    .bind(&outcomes)
    .bind(&reasons)
    .bind(&seats)
    .bind(batch_id)
    .execute(&mut *tx)
    .await?;
    Ok(batch_id)
}
