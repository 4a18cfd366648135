//! The effects of a batch as `apply_effects` takes them, and what it answers.

use chrono::{DateTime, Utc};

use super::{Entry, Pending, to_i32};
use crate::course::Effect;
use crate::domain::StudentId;
use crate::protocol::Promotion;
use crate::store::courses::to_u32;
use crate::store::{Result, StoreError};

/// The effects of a batch as the parallel arrays `apply_effects` takes.
#[derive(Default)]
struct EffectRows<'a> {
    ords: Vec<i32>,
    courses: Vec<&'a str>,
    students: Vec<&'a str>,
    requests: Vec<&'a str>,
    kinds: Vec<&'static str>,
    replies: Vec<Option<&'a str>>,
    correlations: Vec<Option<&'a str>>,
    capacities: Vec<Option<i32>>,
    waitlists: Vec<Option<i32>>,
    opens: Vec<Option<DateTime<Utc>>>,
    closes: Vec<Option<DateTime<Utc>>>,
}

impl<'a> EffectRows<'a> {
    /// Adds the entry at `index`, unless its decision changes nothing.
    fn push(&mut self, index: usize, entry: &Entry<'a>) {
        let p: &'a Pending = entry.pending;
        let (kind, settings) = match &p.effect {
            Effect::None => return,
            Effect::Enroll => ("enroll", None),
            Effect::Waitlist => ("waitlist", None),
            Effect::Drop { .. } => ("drop", None),
            Effect::Leave => ("leave", None),
            Effect::Configure { settings, .. } => ("configure", Some(settings)),
        };
        let reply_to = p.reply_to.as_ref();
        self.ords.push(i32::try_from(index).unwrap_or(i32::MAX));
        self.courses.push(p.request.course_id.as_str());
        self.students.push(p.request.student_id.as_str());
        self.requests.push(p.request.request_id.as_str());
        self.kinds.push(kind);
        self.replies.push(reply_to.map(|r| r.queue.as_str()));
        self.correlations
            .push(reply_to.and_then(|r| r.correlation_id.as_deref()));
        self.capacities.push(settings.map(|s| to_i32(s.capacity)));
        self.waitlists.push(settings.map(|s| to_i32(s.waitlist)));
        self.opens.push(settings.and_then(|s| s.opens_at));
        self.closes.push(settings.and_then(|s| s.closes_at));
    }
}

/// One row `apply_effects` returns: whether the effect `r_ord` applied, and one student it
/// promoted (an effect that promoted nobody has one row with no student).
#[derive(Debug, sqlx::FromRow)]
struct AppliedRow {
    r_ord: i32,
    r_applied: bool,
    r_student: Option<String>,
    r_request: Option<String>,
    r_reply: Option<String>,
    r_correlation: Option<String>,
    r_seats_left: Option<i32>,
}

/// Applies the fresh entries' effects in decision order and records in each what the database
/// did: whether its effect was missed, whom it promoted, and whether those are the students
/// the actor promoted, in the same order.
pub(super) async fn apply(tx: &mut sqlx::PgConnection, entries: &mut [Entry<'_>]) -> Result<()> {
    let mut rows = EffectRows::default();
    for (index, entry) in entries.iter().enumerate() {
        if entry.fresh.is_some() {
            rows.push(index, entry);
        }
    }
    if rows.ords.is_empty() {
        return Ok(());
    }
    // Missed until the database says it applied.
    for &ord in &rows.ords {
        if let Some(fresh) = entry_at(entries, ord)?.fresh.as_mut() {
            fresh.missed = true;
        }
    }
    let applied: Vec<AppliedRow> = sqlx::query_as(
        "SELECT * FROM apply_effects($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                     $6::text[], $7::text[], $8::int[], $9::int[], \
                                     $10::timestamptz[], $11::timestamptz[])",
    )
    .bind(&rows.ords)
    .bind(&rows.courses)
    .bind(&rows.students)
    .bind(&rows.requests)
    .bind(&rows.kinds)
    .bind(&rows.replies)
    .bind(&rows.correlations)
    .bind(&rows.capacities)
    .bind(&rows.waitlists)
    .bind(&rows.opens)
    .bind(&rows.closes)
    .fetch_all(&mut *tx)
    .await?;
    for row in applied {
        let entry = entry_at(entries, row.r_ord)?;
        let promotion = row.promotion(entry)?;
        let Some(fresh) = entry.fresh.as_mut() else {
            return Err(StoreError::Inconsistent(format!(
                "apply_effects answered for request {}, which had no effect to apply",
                entry.pending.request.request_id
            )));
        };
        fresh.missed &= !row.r_applied;
        fresh.promotions.extend(promotion);
    }
    for entry in entries.iter_mut() {
        let expected = entry
            .pending
            .effect
            .promoted()
            .iter()
            .map(StudentId::as_str);
        if let Some(fresh) = entry.fresh.as_mut() {
            let actual = fresh.promotions.iter().map(|p| p.student_id.as_str());
            fresh.unexpected = !expected.eq(actual);
        }
    }
    Ok(())
}

/// The entry a result row names.
fn entry_at<'e, 'a>(entries: &'e mut [Entry<'a>], ord: i32) -> Result<&'e mut Entry<'a>> {
    usize::try_from(ord)
        .ok()
        .and_then(|index| entries.get_mut(index))
        .ok_or_else(|| StoreError::Inconsistent(format!("apply_effects returned ord {ord}")))
}

impl AppliedRow {
    /// The promotion this row reports, made by the entry's request, if any.
    fn promotion(&self, entry: &Entry<'_>) -> Result<Option<Promotion>> {
        let Some(student_id) = self.r_student.clone() else {
            return Ok(None);
        };
        let (Some(request_id), Some(seats_left)) = (self.r_request.clone(), self.r_seats_left)
        else {
            return Err(StoreError::Inconsistent(format!(
                "apply_effects promoted {student_id} without naming the request or the seats left"
            )));
        };
        let cause = &entry.pending.request;
        Ok(Some(Promotion {
            course_id: cause.course_id.to_string(),
            student_id,
            request_id,
            reply_to: self.r_reply.clone(),
            correlation_id: self.r_correlation.clone(),
            promoted_by: cause.request_id.to_string(),
            seats_left: to_u32(seats_left),
        }))
    }
}
