//! Reading back what the database holds: ids decided before, the verdicts of effects the
//! database refused, waitlist positions after the batch's writes, and the stored outcomes
//! and promotions of requests decided in earlier batches.

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::{Entry, Pending};
use crate::domain::Effect;
use crate::domain::{Outcome, Reason, Verdict};
use crate::protocol::Promotion;
use crate::store::Result;
use crate::store::courses::{VERDICT_COLUMNS, to_u32, verdict_from_row};

/// The request ids among `ids` that already have a stored outcome.
pub(super) async fn stored_ids(
    tx: &mut sqlx::PgConnection,
    ids: &[&str],
) -> Result<HashSet<String>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT request_id FROM outcomes WHERE request_id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut *tx)
            .await?;
    Ok(stored.into_iter().collect())
}

/// Rewrites the final verdict of every fresh effect the database did not apply, from its
/// state after this batch's writes.
pub(super) async fn revise(tx: &mut sqlx::PgConnection, entries: &mut [Entry<'_>]) -> Result<()> {
    let missed: Vec<usize> = indexes(entries, |entry| {
        entry
            .fresh
            .as_ref()
            .is_some_and(|fresh| fresh.missed && !fresh.discard)
    });
    if missed.is_empty() {
        return Ok(());
    }
    let (courses, students) = courses_and_students(entries, &missed);
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
        let Some(entry) = nth(&missed, row.try_get("ord")?).and_then(|i| entries.get_mut(i)) else {
            continue;
        };
        let held = Held {
            seats_left: to_u32(row.try_get("seats_left")?),
            enrolled: to_u32(row.try_get("enrolled")?),
            waitlisted: to_u32(row.try_get("waitlisted")?),
            holds: row.try_get("holds")?,
            position: row.try_get::<Option<i32>, _>("position")?.map(to_u32),
        };
        let verdict = held.verdict_of(entry)?;
        if let Some(fresh) = entry.fresh.as_mut() {
            fresh.verdict = verdict;
        }
    }
    Ok(())
}

/// A course and one of its students as committed after this batch's writes.
struct Held {
    seats_left: u32,
    enrolled: u32,
    waitlisted: u32,
    /// The student holds a seat.
    holds: bool,
    /// The student's place on the waitlist.
    position: Option<u32>,
}

impl Held {
    /// The verdict of an effect the database refused, told from what it holds.
    fn verdict_of(&self, entry: &Entry<'_>) -> Result<Verdict> {
        let (outcome, reason) = match (&entry.pending.effect, self.holds, self.position) {
            (Effect::Enroll | Effect::Waitlist, true, _) => {
                (Outcome::Enrolled, Reason::AlreadyEnrolled)
            }
            (Effect::Enroll | Effect::Waitlist, false, Some(_)) => {
                (Outcome::Waitlisted, Reason::AlreadyWaitlisted)
            }
            (Effect::Enroll | Effect::Waitlist, false, None) => (Outcome::Rejected, Reason::Full),
            (Effect::Enter, true, _) => (Outcome::Enrolled, Reason::AlreadyEnrolled),
            (Effect::Enter, false, Some(_)) => (Outcome::Waitlisted, Reason::AlreadyWaitlisted),
            // The only entry the database refuses on its own is one into a course drawn
            // meanwhile (by another owner): the draw went ahead without it.
            (Effect::Enter, false, None) => (Outcome::Rejected, Reason::AlreadyDrawn),
            (Effect::Configure { settings, .. }, _, _) => {
                let reason = if !settings.window_is_valid() {
                    Reason::WindowOutOfOrder
                } else if settings.capacity < self.enrolled {
                    Reason::SeatsBelowEnrolled
                } else if settings.waitlist < self.waitlisted {
                    Reason::WaitlistBelowWaiting
                } else if !settings.draw_is_complete() {
                    Reason::DrawWithoutOpening
                } else {
                    // The opening rules are the remaining ones: a draw's entrants keep it a
                    // draw, and a drawn course keeps its opening.
                    match settings.opening {
                        crate::domain::Opening::FirstCome => Reason::DrawHasEntrants,
                        crate::domain::Opening::Draw => Reason::AlreadyDrawn,
                    }
                };
                (Outcome::Rejected, reason)
            }
            (_, _, _) => (Outcome::Rejected, Reason::NotEnrolled),
        };
        let mut verdict = Verdict::new(outcome, Some(reason), self.seats_left);
        verdict.waitlist_position = self.position;
        Ok(verdict)
    }
}

/// Sets the position of every waitlisted final verdict to the student's place after this
/// batch's writes, so the final answer matches the committed waitlist. A student promoted
/// later in the same batch keeps the position the decision gave; their promotion follows.
pub(super) async fn place_on_waitlist(
    tx: &mut sqlx::PgConnection,
    entries: &mut [Entry<'_>],
) -> Result<()> {
    let waiting = indexes(entries, |entry| {
        entry
            .fresh
            .as_ref()
            .is_some_and(|fresh| fresh.verdict.outcome == Outcome::Waitlisted)
    });
    if waiting.is_empty() {
        return Ok(());
    }
    let (courses, students) = courses_and_students(entries, &waiting);
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
        let position: i32 = row.try_get("position")?;
        if let Some(fresh) = nth(&waiting, row.try_get("ord")?)
            .and_then(|i| entries.get_mut(i))
            .and_then(|entry| entry.fresh.as_mut())
        {
            fresh.verdict.waitlist_position = Some(to_u32(position));
        }
    }
    Ok(())
}

/// An outcome as stored.
pub(super) struct Stored {
    pub verdict: Verdict,
    /// The final answers of the batch that wrote it were confirmed by the broker.
    pub answered: bool,
    /// The fingerprint of the address its final answer went to ([`crate::domain::ReplyTo::key`]).
    pub reply_key: Option<i64>,
    /// The fingerprints of the other addresses a replay of it was confirmed answered at.
    pub copies: Vec<i64>,
}

impl Stored {
    /// Its final answer was confirmed to the address with this fingerprint: the address the
    /// outcome was decided for, once its batch is answered, or one a replay was answered at.
    pub fn answered_at(&self, key: Option<i64>) -> bool {
        (self.answered && self.reply_key == key) || key.is_some_and(|k| self.copies.contains(&k))
    }
}

/// What earlier batches stored for the requests this batch did not decide afresh.
pub(super) struct Earlier {
    /// Stored outcomes by request id, read after this batch's writes (a duplicate within the
    /// batch finds the outcome its first occurrence wrote).
    pub stored: HashMap<String, Stored>,
    /// The promotions of those whose final answers were never confirmed, to announce again.
    pub promotions: HashMap<String, Vec<Promotion>>,
    /// The results of replayed draws whose results were never confirmed sent, by the draw's
    /// request id, to announce again.
    pub draws: HashMap<String, Vec<crate::protocol::DrawResult>>,
}

/// Reads the stored outcome of every entry that is not fresh, and the promotions to announce
/// again.
pub(super) async fn earlier(tx: &mut sqlx::PgConnection, entries: &[Entry<'_>]) -> Result<Earlier> {
    let ids: Vec<&str> = entries
        .iter()
        .filter(|entry| entry.fresh.is_none())
        .map(Entry::request_id)
        .collect();
    let stored = fetch_stored(tx, &ids).await?;
    let unannounced: Vec<&str> = stored
        .iter()
        .filter(|(_, s)| !s.answered)
        .map(|(id, _)| id.as_str())
        .collect();
    let promotions = fetch_promotions(tx, &unannounced).await?;
    let draws = replayed_draws(tx, entries).await?;
    Ok(Earlier {
        stored,
        promotions,
        draws,
    })
}

/// The results of the draws among the replayed entries whose courses never had them
/// confirmed sent, by the draw's request id.
async fn replayed_draws(
    tx: &mut sqlx::PgConnection,
    entries: &[Entry<'_>],
) -> Result<HashMap<String, Vec<crate::protocol::DrawResult>>> {
    let draws: Vec<&Pending> = entries
        .iter()
        .filter(|entry| entry.fresh.is_none())
        .map(|entry| entry.pending)
        .filter(|p| p.request.is_draw_record())
        .collect();
    let courses: Vec<&str> = draws.iter().map(|p| p.request.course_id.as_str()).collect();
    let pending = super::draws::unannounced(tx, &courses).await?;
    let pending: Vec<&str> = pending.iter().map(String::as_str).collect();
    let mut results = super::draws::results(tx, &pending).await?;
    Ok(draws
        .into_iter()
        .filter_map(|p| {
            let course = p.request.course_id.as_str();
            results
                .remove(course)
                .map(|r| (p.request.request_id.to_string(), r))
        })
        .collect())
}

async fn fetch_stored(
    tx: &mut sqlx::PgConnection,
    ids: &[&str],
) -> Result<HashMap<String, Stored>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    // `decision_batches` shares no column name with a verdict but `batch_id`, joined on.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT request_id, {VERDICT_COLUMNS}, answered, reply_key \
         FROM answers JOIN decision_batches USING (batch_id) \
         WHERE request_id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut copies = answered_copies(tx, ids).await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("request_id")?;
            let stored = Stored {
                verdict: verdict_from_row(row)?,
                answered: row.try_get("answered")?,
                reply_key: row.try_get("reply_key")?,
                copies: copies.remove(&id).unwrap_or_default(),
            };
            Ok((id, stored))
        })
        .collect()
}

/// The fingerprints of the addresses replays of these requests were confirmed answered at,
/// by request id.
async fn answered_copies(
    tx: &mut sqlx::PgConnection,
    ids: &[&str],
) -> Result<HashMap<String, Vec<i64>>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT request_id, reply_key FROM answered_copies WHERE request_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut copies: HashMap<String, Vec<i64>> = HashMap::new();
    for (id, key) in rows {
        copies.entry(id).or_default().push(key);
    }
    Ok(copies)
}

/// The promotions made by the given requests, by request, each request's in the order they
/// were made. One request's promotions share a transaction, so `promoted_at` cannot order
/// them; the seats left after each can, as every promotion takes one more seat.
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
         FROM promotions WHERE cause_request_id = ANY($1) \
         ORDER BY promoted_at, seats_left DESC, request_id",
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

/// The indexes of the entries that match.
fn indexes(entries: &[Entry<'_>], matches: impl Fn(&Entry<'_>) -> bool) -> Vec<usize> {
    entries
        .iter()
        .enumerate()
        .filter(|(_, entry)| matches(entry))
        .map(|(i, _)| i)
        .collect()
}

/// The course and student ids of the given entries, as two arrays for `UNNEST`.
fn courses_and_students<'a>(
    entries: &[Entry<'a>],
    indexes: &[usize],
) -> (Vec<&'a str>, Vec<&'a str>) {
    indexes
        .iter()
        .map(|&i| {
            let pending: &'a Pending = entries[i].pending;
            let r = &pending.request;
            (r.course_id.as_str(), r.student_id.as_str())
        })
        .unzip()
}

/// The entry index that `UNNEST ... WITH ORDINALITY` numbered `ord` (from 1).
fn nth(indexes: &[usize], ord: i64) -> Option<usize> {
    usize::try_from(ord - 1)
        .ok()
        .and_then(|o| indexes.get(o))
        .copied()
}
