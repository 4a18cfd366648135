//! The group commit: one transaction writes a whole batch of decisions.
//!
//! The course actors decide in memory; this is where their decisions become durable. The
//! effects that change a course (seats, waitlist places, settings) go to one call of the
//! `apply_course_effects` function, which applies them in decision order per course, each guarded by
//! what the database holds, and promotes the head of a waitlist into every freed seat; the
//! outcomes go in one `UNNEST` insert. A batch of 500 decisions costs a handful of round trips.
//! The database stays the final arbiter: an effect that no longer fits what is committed (a seat
//! that is not free, a student not enrolled, a request id already decided elsewhere) is not
//! applied, and the final verdict says what really happened.
//!
//! [`Store::commit`] runs the steps in order, each in its own file: `fence` (is this worker
//! still the owner), `effects` (the typed rows `apply_course_effects` takes and what it answers),
//! `results` (revised verdicts, waitlist positions and what earlier batches stored), and
//! `outcomes` (the insert of this batch's outcomes). Every item of the batch is followed
//! through them as one [`Entry`].

mod draws;
mod effects;
mod fence;
mod outcomes;
mod results;
mod seats;

use std::collections::HashSet;

use super::{Result, Store, StoreError};
use crate::domain::Effect;
use crate::domain::{Partition, ReplyTo, Request, Skipped, Verdict};
use crate::protocol::{DrawResult, PassedOver, Promotion};
use results::Earlier;

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
    /// The request was judged under the registration rules: the commit settles the ledger of
    /// seats of the students it concerns.
    pub ruled: bool,
    /// Waiting students the rules passed over for the seats this request freed.
    pub skipped: Vec<Skipped>,
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
    /// A replayed outcome whose final answer the broker has already confirmed once, to the
    /// address this copy of the request asks at.
    pub answered: bool,
    /// The batch that wrote this outcome, for a fresh one: the finalizer records it as answered.
    pub batch_id: Option<i64>,
    /// Waitlisted students this request moved into a seat, to be told. For a replay, only
    /// while its batch's answers are not confirmed (a redelivery after a crash tells them).
    pub promotions: Vec<Promotion>,
    /// For a course's draw: what each entrant got, rank 1 first, to be told. For a replayed
    /// draw, only while its results are not confirmed sent.
    pub draws: Vec<DrawResult>,
    /// This is a course's draw record and the course is drawn (fresh and applied, or stored
    /// before): once its results are confirmed sent, the course counts as announced.
    pub settles_draw: bool,
    /// Waiting students the rules passed over for the seats this request freed, to be told.
    pub passed_over: Vec<PassedOver>,
}

/// One item of the batch, followed through the steps of the commit.
struct Entry<'a> {
    pending: &'a Pending,
    /// What this batch makes of the request; `None` when its id was decided before (replayed
    /// by the actor, stored by an earlier batch, or an earlier item of this batch): then its
    /// stored outcome is the answer and its effect is not written.
    fresh: Option<Fresh>,
}

/// A request decided in this batch, as the commit works it out.
struct Fresh {
    /// The final verdict: the provisional one, unless the database did not apply the effect.
    verdict: Verdict,
    /// The effect was decided but the committed state did not allow it.
    missed: bool,
    /// The database promoted other students than the actor did, or in another order.
    unexpected: bool,
    /// Whom the database moved from the waitlist into the seats this request freed.
    promotions: Vec<Promotion>,
    /// What the draw this request carries gave each entrant.
    draws: Vec<DrawResult>,
    /// Whom the rules passed over for the seats this request freed.
    passed_over: Vec<PassedOver>,
    /// A draw the database refused (the actor's entrants were not the committed ones): nothing
    /// is written for it, not even its outcome, so the draw record stays free for the draw the
    /// reloaded actor performs.
    discard: bool,
}

impl Store {
    /// Commits a batch in one transaction and returns the final verdict of each item, in order.
    ///
    /// Fails with [`StoreError::Fenced`] if this worker no longer owns one of the partitions at
    /// the epoch the items carry; nothing is written then.
    pub async fn commit(&self, worker_id: &str, items: &[&Pending]) -> Result<Vec<Committed>> {
        let mut tx = self.commits.begin().await?;
        fence::check(&mut tx, worker_id, items).await?;
        let mut entries = entries(&mut tx, items).await?;
        effects::apply(&mut tx, &mut entries).await?;
        effects::set_course_facts(&mut tx, &entries).await?;
        draws::read_back(&mut tx, &mut entries).await?;
        results::revise(&mut tx, &mut entries).await?;
        results::place_on_waitlist(&mut tx, &mut entries).await?;
        seats::settle(&mut tx, &mut entries).await?;
        let batch_id = outcomes::insert(&mut tx, worker_id, &entries).await?;
        let mut earlier = results::earlier(&mut tx, &entries).await?;
        tx.commit().await?;
        entries
            .into_iter()
            .map(|entry| entry.committed(batch_id, &mut earlier))
            .collect()
    }

    /// Opens the group commit's connections and prepares its call of `apply_course_effects` on each,
    /// so the first commit of a rush, which holds every decision of its batch back, does not
    /// pay for them.
    pub async fn warm_commits(&self) -> Result<()> {
        let mut held = Vec::new();
        for _ in 0..super::COMMIT_CONNECTIONS {
            let mut conn = self.commits.acquire().await?;
            effects::warm(&mut conn).await?;
            held.push(conn);
        }
        Ok(())
    }

    /// Records that the final answers of these batches, and of these replayed copies (request
    /// id and the fingerprint of the address it was answered at), were confirmed by the broker.
    ///
    /// The record is a hint for redeliveries, so its commit does not wait for the disk
    /// (`synchronous_commit = off`): it is visible to every worker at once, and only a crash of
    /// the database within a fraction of a second could lose it, which matters only if this
    /// worker also dies before its acks (a redelivered request is then answered twice, as when
    /// the record cannot be written at all). Waiting for the flush cost one more disk sync per
    /// batch, shared with the broker's own.
    pub async fn mark_answered(&self, batch_ids: &[i64], copies: &[(String, i64)]) -> Result<()> {
        let mut tx = self.commits.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        if !batch_ids.is_empty() {
            sqlx::query("UPDATE decision_batches SET answered = true WHERE batch_id = ANY($1)")
                .bind(batch_ids)
                .execute(&mut *tx)
                .await?;
        }
        if !copies.is_empty() {
            let (ids, keys): (Vec<&str>, Vec<i64>) =
                copies.iter().map(|(id, key)| (id.as_str(), *key)).unzip();
            sqlx::query(
                "INSERT INTO answered_copies (request_id, reply_key) \
                 SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
            )
            .bind(ids)
            .bind(keys)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records that the results of these courses' draws were confirmed by the broker, so no
    /// worker announces them again. A hint like [`Store::mark_answered`]: if it is lost, the
    /// entrants hear their (unchanged) outcome twice.
    pub async fn mark_draws_announced(&self, courses: &[&str]) -> Result<()> {
        sqlx::query("UPDATE courses SET draw_announced = true WHERE course_id = ANY($1)")
            .bind(courses)
            .execute(&self.commits)
            .await?;
        Ok(())
    }
}

/// The batch's items as entries, each request id fresh at most once: ids decided before this
/// batch (possible after a failover or when a client reuses an id for another course) keep
/// their stored verdict, and within the batch the first occurrence wins.
async fn entries<'a>(tx: &mut sqlx::PgConnection, items: &[&'a Pending]) -> Result<Vec<Entry<'a>>> {
    let candidates: Vec<&str> = items
        .iter()
        .filter(|p| !p.replay)
        .map(|p| p.request.request_id.as_str())
        .collect();
    let stored = results::stored_ids(tx, &candidates).await?;
    let mut seen = HashSet::new();
    Ok(items
        .iter()
        .map(|&pending| {
            let id = pending.request.request_id.as_str();
            let fresh = !pending.replay && !stored.contains(id) && seen.insert(id);
            Entry {
                pending,
                fresh: fresh.then(|| Fresh {
                    verdict: pending.provisional.clone(),
                    missed: false,
                    unexpected: false,
                    promotions: Vec::new(),
                    draws: Vec::new(),
                    passed_over: Vec::new(),
                    discard: false,
                }),
            }
        })
        .collect())
}

impl Entry<'_> {
    fn request_id(&self) -> &str {
        self.pending.request.request_id.as_str()
    }

    /// What the caller is told about this item once the transaction has committed.
    fn committed(self, batch_id: Option<i64>, earlier: &mut Earlier) -> Result<Committed> {
        let provisional = &self.pending.provisional;
        let Some(fresh) = self.fresh else {
            let id = self.pending.request.request_id.as_str();
            let stored = earlier.stored.get(id).ok_or_else(|| {
                StoreError::Inconsistent(format!(
                    "request {id} was replayed but has no stored outcome"
                ))
            })?;
            let revised = !same_answer(&stored.verdict, provisional);
            // Its id was decided before, so any effect decided now was not written.
            let unapplied = self.pending.effect != Effect::None;
            return Ok(Committed {
                verdict: stored.verdict.clone(),
                replayed: true,
                revised,
                diverged: revised || unapplied,
                // Confirmed to this very address: a copy of the request published again to
                // another queue (its client lost the first) is answered there.
                answered: stored.answered_at(self.pending.reply_to.as_ref().map(ReplyTo::key)),
                batch_id: None,
                promotions: earlier.promotions.remove(id).unwrap_or_default(),
                draws: earlier.draws.remove(id).unwrap_or_default(),
                // A stored draw record is only ever written with its draw.
                settles_draw: self.pending.request.is_draw_record(),
                passed_over: Vec::new(),
            });
        };
        if fresh.discard {
            return Ok(Committed {
                verdict: provisional.clone(),
                replayed: false,
                revised: false,
                diverged: true,
                answered: false,
                batch_id: None,
                promotions: Vec::new(),
                draws: Vec::new(),
                settles_draw: false,
                passed_over: Vec::new(),
            });
        }
        let revised = !same_answer(&fresh.verdict, provisional);
        Ok(Committed {
            verdict: fresh.verdict,
            replayed: false,
            revised,
            diverged: revised || fresh.missed || fresh.unexpected,
            answered: false,
            batch_id,
            promotions: fresh.promotions,
            draws: fresh.draws,
            settles_draw: self.pending.request.is_draw_record(),
            passed_over: fresh.passed_over,
        })
    }
}

/// Two verdicts tell the student the same thing (seat counts and positions move on between
/// the two).
fn same_answer(a: &Verdict, b: &Verdict) -> bool {
    a.outcome == b.outcome && a.reason == b.reason
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
