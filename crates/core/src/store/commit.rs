//! The group commit: one transaction writes a whole batch of decisions.
//!
//! The course actors decide in memory; this is where their decisions become durable. The
//! effects that change a course (seats, waitlist places, settings) go to one call of the
//! `apply_effects` function, which applies them in decision order per course, each guarded by
//! what the database holds, and promotes the head of a waitlist into every freed seat; the
//! outcomes go in one `UNNEST` insert. A batch of 500 decisions costs a handful of round trips.
//! The database stays the final arbiter: an effect that no longer fits what is committed (a seat
//! that is not free, a student not enrolled, a request id already decided elsewhere) is not
//! applied, and the final verdict says what really happened.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::courses::{to_u32, verdict_from_row};
use super::{Result, Store, StoreError};
use crate::domain::Effect;
use crate::domain::{Outcome, Partition, Reason, ReplyTo, Request, StudentId, Verdict};
use crate::protocol::Promotion;

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
    /// Where the client listens; kept with a waitlist place to announce a promotion there.
    pub reply_to: Option<ReplyTo>,
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
    /// The database did not do what the actor decided (a different verdict, an effect not
    /// applied, other students promoted): the actor's memory is out of step and must reload.
    pub diverged: bool,
    /// A replayed outcome whose final answer the broker has already confirmed once.
    pub answered: bool,
    /// The batch that wrote this outcome, for a fresh one: the finalizer records it as answered.
    pub batch_id: Option<i64>,
    /// Waitlisted students this request moved into a seat, to be told. For a replay, only
    /// while its batch's answers are not confirmed (a redelivery after a crash tells them).
    pub promotions: Vec<Promotion>,
}

/// What `apply_effects` did with one effect.
#[derive(Debug, Default)]
struct Applied {
    applied: bool,
    promotions: Vec<Promotion>,
}

impl Store {
    /// Commits a batch in one transaction and returns the final verdict of each item, in order.
    ///
    /// Fails with [`StoreError::Fenced`] if this worker no longer owns one of the partitions at
    /// the epoch the items carry; nothing is written then.
    pub async fn commit(&self, worker_id: &str, items: &[&Pending]) -> Result<Vec<Committed>> {
        let mut tx = self.pool.begin().await?;
        check_fence(&mut tx, worker_id, items).await?;

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

        let mut applied = apply_effects(&mut tx, items, &fresh).await?;

        // Final verdicts of the fresh items: the provisional one, unless the effect did not apply.
        let mut finals: HashMap<usize, Verdict> = HashMap::new();
        let mut missed: Vec<usize> = Vec::new();
        let mut promotions: HashMap<usize, Vec<Promotion>> = HashMap::new();
        let mut unexpected: HashSet<usize> = HashSet::new();
        for &i in &fresh {
            let p = &items[i];
            let done = applied.remove(&i).unwrap_or_default();
            if p.effect != Effect::None && !done.applied {
                missed.push(i);
            }
            // The database promoted whom the actor expected, in the same order.
            let expected = p.effect.promoted().iter().map(StudentId::as_str);
            let actual = done.promotions.iter().map(|s| s.student_id.as_str());
            if !expected.eq(actual) {
                unexpected.insert(i);
            }
            promotions.insert(i, done.promotions);
            finals.insert(i, p.provisional.clone());
        }
        if !missed.is_empty() {
            revise(&mut tx, items, &missed, &mut finals).await?;
        }
        place_on_waitlist(&mut tx, items, &mut finals).await?;

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
        let unannounced: Vec<&str> = replayed
            .iter()
            .filter(|(_, s)| !s.answered)
            .map(|(id, _)| id.as_str())
            .collect();
        let mut announced_again = fetch_promotions(&mut tx, &unannounced).await?;
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
                let id = p.request.request_id.as_str();
                let (verdict, replayed, answered, written, told) = match fresh_verdict {
                    Some(v) => (v, false, false, batch_id, promotions.remove(&i)),
                    None => {
                        let stored = replayed.get(id).ok_or_else(|| {
                            StoreError::Inconsistent(format!(
                                "request {id} was replayed but has no stored outcome"
                            ))
                        })?;
                        let told = announced_again.remove(id);
                        (stored.verdict.clone(), true, stored.answered, None, told)
                    }
                };
                let revised = !same_answer(&verdict, &p.provisional);
                Ok(Committed {
                    verdict,
                    replayed,
                    revised,
                    diverged: revised || unapplied || unexpected.contains(&i),
                    answered,
                    batch_id: written,
                    promotions: told.unwrap_or_default(),
                })
            })
            .collect()
    }
}

/// Two verdicts tell the student the same thing (seat counts and positions move on between
/// the two).
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
        "SELECT o.request_id, o.outcome, o.reason, o.seats_left, o.waitlist_position, \
                o.window_at, b.answered \
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

/// Applies the fresh items' effects in decision order; returns what each did, by item index.
async fn apply_effects(
    tx: &mut sqlx::PgConnection,
    items: &[&Pending],
    fresh: &[usize],
) -> Result<HashMap<usize, Applied>> {
    let effects: Vec<usize> = fresh
        .iter()
        .copied()
        .filter(|&i| items[i].effect != Effect::None)
        .collect();
    if effects.is_empty() {
        return Ok(HashMap::new());
    }
    let mut ords = Vec::with_capacity(effects.len());
    let mut courses = Vec::with_capacity(effects.len());
    let mut students = Vec::with_capacity(effects.len());
    let mut requests = Vec::with_capacity(effects.len());
    let mut kinds = Vec::with_capacity(effects.len());
    let mut replies: Vec<Option<&str>> = Vec::with_capacity(effects.len());
    let mut correlations: Vec<Option<&str>> = Vec::with_capacity(effects.len());
    let mut capacities: Vec<Option<i32>> = Vec::with_capacity(effects.len());
    let mut waitlists: Vec<Option<i32>> = Vec::with_capacity(effects.len());
    let mut opens: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(effects.len());
    let mut closes: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(effects.len());
    for &i in &effects {
        let p = items[i];
        let (kind, settings) = match &p.effect {
            Effect::Enroll => ("enroll", None),
            Effect::Waitlist => ("waitlist", None),
            Effect::Drop { .. } => ("drop", None),
            Effect::Leave => ("leave", None),
            Effect::Configure { settings, .. } => ("configure", Some(settings)),
            Effect::None => continue,
        };
        kinds.push(kind);
        ords.push(i32::try_from(i).unwrap_or(i32::MAX));
        courses.push(p.request.course_id.as_str());
        students.push(p.request.student_id.as_str());
        requests.push(p.request.request_id.as_str());
        replies.push(p.reply_to.as_ref().map(|r| r.queue.as_str()));
        correlations.push(
            p.reply_to
                .as_ref()
                .and_then(|r| r.correlation_id.as_deref()),
        );
        capacities.push(settings.map(|s| to_i32(s.capacity)));
        waitlists.push(settings.map(|s| to_i32(s.waitlist)));
        opens.push(settings.and_then(|s| s.opens_at));
        closes.push(settings.and_then(|s| s.closes_at));
    }
    let rows = sqlx::query(
        "SELECT * FROM apply_effects($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                     $6::text[], $7::text[], $8::int[], $9::int[], \
                                     $10::timestamptz[], $11::timestamptz[])",
    )
    .bind(&ords)
    .bind(&courses)
    .bind(&students)
    .bind(&requests)
    .bind(&kinds)
    .bind(&replies)
    .bind(&correlations)
    .bind(&capacities)
    .bind(&waitlists)
    .bind(&opens)
    .bind(&closes)
    .fetch_all(&mut *tx)
    .await?;
    let mut done: HashMap<usize, Applied> = HashMap::new();
    for row in rows {
        let ord: i32 = row.try_get("r_ord")?;
        let i = usize::try_from(ord)
            .map_err(|_| StoreError::Inconsistent(format!("apply_effects returned ord {ord}")))?;
        let entry = done.entry(i).or_default();
        entry.applied = row.try_get("r_applied")?;
        if let Some(student_id) = row.try_get::<Option<String>, _>("r_student")? {
            entry.promotions.push(Promotion {
                course_id: items[i].request.course_id.to_string(),
                student_id,
                request_id: row.try_get("r_request")?,
                reply_to: row.try_get("r_reply")?,
                correlation_id: row.try_get("r_correlation")?,
                promoted_by: items[i].request.request_id.to_string(),
                seats_left: to_u32(row.try_get("r_seats_left")?),
            });
        }
    }
    Ok(done)
}

/// The promotions made by the given requests, to announce them again.
async fn fetch_promotions(
    tx: &mut sqlx::PgConnection,
    causes: &[&str],
) -> Result<HashMap<String, Vec<Promotion>>> {
    if causes.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT request_id, course_id, student_id, reply_to, correlation_id, cause_request_id, \
                seats_left \
         FROM promotions WHERE cause_request_id = ANY($1) ORDER BY promoted_at, request_id",
    )
    .bind(causes)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_cause: HashMap<String, Vec<Promotion>> = HashMap::new();
    for row in rows {
        let cause: String = row.try_get("cause_request_id")?;
        by_cause.entry(cause.clone()).or_default().push(Promotion {
            course_id: row.try_get("course_id")?,
            student_id: row.try_get("student_id")?,
            request_id: row.try_get("request_id")?,
            reply_to: row.try_get("reply_to")?,
            correlation_id: row.try_get("correlation_id")?,
            promoted_by: cause,
            seats_left: to_u32(row.try_get("seats_left")?),
        });
    }
    Ok(by_cause)
}

/// Rewrites the final verdict of every fresh effect that did not apply, from the database's
/// state after this batch's writes.
async fn revise(
    tx: &mut sqlx::PgConnection,
    items: &[&Pending],
    missed: &[usize],
    finals: &mut HashMap<usize, Verdict>,
) -> Result<()> {
    let (courses, students) = courses_and_students(items, missed);
    let rows = sqlx::query(
        "SELECT m.ord, c.capacity - c.enrolled AS seats_left, c.enrolled, c.waitlisted, \
                EXISTS (SELECT 1 FROM enrollments e \
                        WHERE e.course_id = m.course_id AND e.student_id = m.student_id) AS holds, \
                (SELECT w.position FROM waitlist w \
                  WHERE w.course_id = m.course_id AND w.student_id = m.student_id) AS position \
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
        let position: Option<i32> = row.try_get("position")?;
        let enrolled = to_u32(row.try_get("enrolled")?);
        let waitlisted = to_u32(row.try_get("waitlisted")?);
        let Some(&i) = usize::try_from(ord - 1).ok().and_then(|o| missed.get(o)) else {
            continue;
        };
        let (outcome, reason) = match (&items[i].effect, holds, position) {
            (Effect::Enroll | Effect::Waitlist, true, _) => {
                (Outcome::Enrolled, Some(Reason::AlreadyEnrolled))
            }
            (Effect::Enroll | Effect::Waitlist, false, Some(_)) => {
                (Outcome::Waitlisted, Some(Reason::AlreadyWaitlisted))
            }
            (Effect::Enroll | Effect::Waitlist, false, None) => {
                (Outcome::Rejected, Some(Reason::Full))
            }
            (Effect::Configure { settings, .. }, _, _) => {
                let reason = if !settings.window_is_valid() {
                    Reason::WindowOutOfOrder
                } else if settings.capacity < enrolled {
                    Reason::SeatsBelowEnrolled
                } else if settings.waitlist < waitlisted {
                    Reason::WaitlistBelowWaiting
                } else {
                    // Refused for a reason this code does not know: say so rather than guess.
                    return Err(StoreError::Inconsistent(format!(
                        "the database refused course change {}",
                        items[i].request.request_id
                    )));
                };
                (Outcome::Rejected, Some(reason))
            }
            (_, _, _) => (Outcome::Rejected, Some(Reason::NotEnrolled)),
        };
        let mut verdict = Verdict::new(outcome, reason, seats_left);
        verdict.waitlist_position = position.map(to_u32);
        finals.insert(i, verdict);
    }
    Ok(())
}

/// Sets the position of every waitlisted final verdict to the student's place after this
/// batch's writes, so the final answer matches the committed waitlist. A student promoted
/// later in the same batch keeps the position the decision gave; their promotion follows.
async fn place_on_waitlist(
    tx: &mut sqlx::PgConnection,
    items: &[&Pending],
    finals: &mut HashMap<usize, Verdict>,
) -> Result<()> {
    let waiting: Vec<usize> = finals
        .iter()
        .filter(|(_, v)| v.outcome == Outcome::Waitlisted)
        .map(|(&i, _)| i)
        .collect();
    if waiting.is_empty() {
        return Ok(());
    }
    let (courses, students) = courses_and_students(items, &waiting);
    let rows = sqlx::query(
        "SELECT m.ord, w.position \
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS m(course_id, student_id, ord) \
         JOIN waitlist w ON w.course_id = m.course_id AND w.student_id = m.student_id",
    )
    .bind(&courses)
    .bind(&students)
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        let ord: i64 = row.try_get("ord")?;
        let position: i32 = row.try_get("position")?;
        if let Some(verdict) = usize::try_from(ord - 1)
            .ok()
            .and_then(|o| waiting.get(o))
            .and_then(|i| finals.get_mut(i))
        {
            verdict.waitlist_position = Some(to_u32(position));
        }
    }
    Ok(())
}

/// The course and student ids of the given items, as two arrays for `UNNEST`.
fn courses_and_students<'a>(
    items: &[&'a Pending],
    indexes: &[usize],
) -> (Vec<&'a str>, Vec<&'a str>) {
    indexes
        .iter()
        .map(|&i| {
            let r = &items[i].request;
            (r.course_id.as_str(), r.student_id.as_str())
        })
        .unzip()
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
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
    let mut positions: Vec<Option<i32>> = Vec::with_capacity(fresh.len());
    let mut windows: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(fresh.len());
    for &i in fresh {
        let p = &items[i];
        let verdict = finals.get(&i).unwrap_or(&p.provisional);
        request_ids.push(p.request.request_id.as_str());
        course_ids.push(p.request.course_id.as_str());
        student_ids.push(p.request.student_id.as_str());
        actions.push(p.request.action.as_str());
        outcomes.push(verdict.outcome.as_str());
        reasons.push(verdict.reason.map(Reason::as_str));
        seats.push(to_i32(verdict.seats_left));
        positions.push(verdict.waitlist_position.map(to_i32));
        windows.push(verdict.window_at);
    }
    sqlx::query(
        "INSERT INTO outcomes \
           (request_id, course_id, student_id, action, outcome, reason, seats_left, \
            waitlist_position, window_at, batch_id) \
         SELECT r.*, $10 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                    $6::text[], $7::int[], $8::int[], $9::timestamptz[]) AS r",
    )
    .bind(&request_ids)
    .bind(&course_ids)
    .bind(&student_ids)
    .bind(&actions)
    .bind(&outcomes)
    .bind(&reasons)
    .bind(&seats)
    .bind(&positions)
    .bind(&windows)
    .bind(batch_id)
    .execute(&mut *tx)
    .await?;
    Ok(batch_id)
}
