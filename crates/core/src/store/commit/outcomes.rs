//! Writing the outcomes of the requests decided in this batch.

use chrono::{DateTime, Utc};

use super::{Entry, Pending, to_i32};
use crate::domain::{Reason, ReplyTo, RuleFacts};
use crate::store::Result;

/// Records the batch in `decision_batches` and the final verdict of each fresh entry in
/// `outcomes`, in one `UNNEST` insert; returns the batch's id, or `None` when nothing in it was
/// decided afresh.
pub(super) async fn insert(
    tx: &mut sqlx::PgConnection,
    worker_id: &str,
    entries: &[Entry<'_>],
) -> Result<Option<i64>> {
    let rows = Columns::of(entries);
    if rows.request_ids.is_empty() {
        return Ok(None);
    }
    let count = i32::try_from(rows.request_ids.len()).unwrap_or(i32::MAX);
    let batch_id: i64 = sqlx::query_scalar(
        "INSERT INTO decision_batches (worker_id, requests) VALUES ($1, $2) RETURNING batch_id",
    )
    .bind(worker_id)
    .bind(count)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO outcomes \
           (request_id, course_id, student_id, action, outcome, reason, seats_left, \
            waitlist_position, window_at, draw_commitment, entries_open_at, rule, reply_key, \
            batch_id) \
         SELECT r.*, $14 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                    $6::text[], $7::int[], $8::int[], $9::timestamptz[], \
                                    $10::text[], $11::timestamptz[], $12::jsonb[], \
                                    $13::int8[]) AS r",
    )
    .bind(&rows.request_ids)
    .bind(&rows.course_ids)
    .bind(&rows.student_ids)
    .bind(&rows.actions)
    .bind(&rows.outcomes)
    .bind(&rows.reasons)
    .bind(&rows.seats)
    .bind(&rows.positions)
    .bind(&rows.windows)
    .bind(&rows.commitments)
    .bind(&rows.entries_open)
    .bind(&rows.rules)
    .bind(&rows.reply_keys)
    .bind(batch_id)
    .execute(&mut *tx)
    .await?;
    Ok(Some(batch_id))
}

/// The fresh outcomes as one array per column of `outcomes`.
#[derive(Default)]
struct Columns<'a> {
    request_ids: Vec<&'a str>,
    course_ids: Vec<&'a str>,
    student_ids: Vec<&'a str>,
    actions: Vec<&'static str>,
    outcomes: Vec<&'static str>,
    reasons: Vec<Option<&'static str>>,
    seats: Vec<i32>,
    positions: Vec<Option<i32>>,
    windows: Vec<Option<DateTime<Utc>>>,
    commitments: Vec<Option<&'a str>>,
    entries_open: Vec<Option<DateTime<Utc>>>,
    rules: Vec<Option<sqlx::types::Json<RuleFacts>>>,
    reply_keys: Vec<Option<i64>>,
}

impl<'a> Columns<'a> {
    fn of(entries: &'a [Entry<'a>]) -> Self {
        let mut columns = Self::default();
        for entry in entries {
            let Some(fresh) = entry.fresh.as_ref().filter(|fresh| !fresh.discard) else {
                continue;
            };
            let pending: &'a Pending = entry.pending;
            let request = &pending.request;
            let verdict = &fresh.verdict;
            columns.request_ids.push(request.request_id.as_str());
            columns.course_ids.push(request.course_id.as_str());
            columns.student_ids.push(request.student_id.as_str());
            columns.actions.push(request.action.as_str());
            columns.outcomes.push(verdict.outcome.as_str());
            columns.reasons.push(verdict.reason.map(Reason::as_str));
            columns.seats.push(to_i32(verdict.seats_left));
            columns
                .positions
                .push(verdict.waitlist_position.map(to_i32));
            columns.windows.push(verdict.window_at);
            let draw = verdict.draw.as_deref();
            columns
                .commitments
                .push(draw.and_then(|d| d.commitment.as_deref()));
            columns
                .entries_open
                .push(draw.and_then(|d| d.entries_open_at));
            columns
                .rules
                .push(verdict.rule.as_ref().map(|r| sqlx::types::Json(r.facts())));
            columns
                .reply_keys
                .push(pending.reply_to.as_ref().map(ReplyTo::key));
        }
        columns
    }
}
