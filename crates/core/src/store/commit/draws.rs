//! Reading back a course's draw: what each entrant got, in rank order, to announce it. The
//! draw itself is applied by `apply_course_effects` like any effect; this is read after it, in the
//! same transaction, and again when a redelivered or reloaded draw must be announced anew.

use std::collections::HashMap;

use sqlx::Row;

use super::Entry;
use crate::domain::{
    Action, CourseId, DrawNote, Effect, Outcome, Reason, Request, RequestId, StudentId, Verdict,
};
use crate::protocol::DrawResult;
use crate::store::courses::to_u32;
use crate::store::{Result, StoreError};

/// The drawn entrants of `courses`, by course, rank 1 first.
pub(super) async fn results(
    tx: &mut sqlx::PgConnection,
    courses: &[&str],
) -> Result<HashMap<String, Vec<DrawResult>>> {
    if courses.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT course_id, student_id, request_id, reply_to, correlation_id, draw_position, \
                outcome, seats_left, waitlist_position \
         FROM draw_entries WHERE course_id = ANY($1) AND draw_position IS NOT NULL \
         ORDER BY course_id, draw_position",
    )
    .bind(courses)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_course: HashMap<String, Vec<DrawResult>> = HashMap::new();
    for row in rows {
        let course: String = row.try_get("course_id")?;
        let result = result_of(&row, &course)?;
        by_course.entry(course).or_default().push(result);
    }
    Ok(by_course)
}

fn result_of(row: &sqlx::postgres::PgRow, course: &str) -> Result<DrawResult> {
    let corrupt = |e: &dyn std::fmt::Display| {
        StoreError::Inconsistent(format!(
            "the draw of course {course} holds an invalid id: {e}"
        ))
    };
    let outcome: String = row.try_get("outcome")?;
    let outcome = Outcome::parse(&outcome)
        .ok_or_else(|| StoreError::Inconsistent(format!("a draw outcome {outcome:?}")))?;
    let mut verdict = Verdict::new(
        outcome,
        (outcome == Outcome::Rejected).then_some(Reason::Full),
        to_u32(row.try_get("seats_left")?),
    );
    verdict.waitlist_position = row
        .try_get::<Option<i32>, _>("waitlist_position")?
        .map(to_u32);
    verdict.draw = Some(Box::new(DrawNote {
        position: Some(to_u32(row.try_get("draw_position")?)),
        ..DrawNote::default()
    }));
    Ok(DrawResult {
        entry: Request {
            request_id: RequestId::parse(row.try_get::<&str, _>("request_id")?)
                .map_err(|e| corrupt(&e))?,
            action: Action::Enroll,
            course_id: CourseId::parse(course).map_err(|e| corrupt(&e))?,
            student_id: StudentId::parse(row.try_get::<&str, _>("student_id")?)
                .map_err(|e| corrupt(&e))?,
        },
        reply_to: row.try_get("reply_to")?,
        correlation_id: row.try_get("correlation_id")?,
        verdict,
    })
}

/// Gives every fresh draw that applied its results, discards every one the database refused, and marks it unexpected unless the
/// database drew the same entrants, in the same order, with the same outcomes as the actor.
pub(super) async fn read_back(
    tx: &mut sqlx::PgConnection,
    entries: &mut [Entry<'_>],
) -> Result<()> {
    let drawn: Vec<&str> = entries
        .iter()
        .filter(|entry| matches!(entry.pending.effect, Effect::Draw(_)))
        .filter(|entry| entry.fresh.as_ref().is_some_and(|fresh| !fresh.missed))
        .map(|entry| entry.pending.request.course_id.as_str())
        .collect();
    if drawn.is_empty() {
        return Ok(());
    }
    let mut results = results(tx, &drawn).await?;
    for entry in entries.iter_mut() {
        let Effect::Draw(expected) = &entry.pending.effect else {
            continue;
        };
        let Some(fresh) = entry.fresh.as_mut().filter(|fresh| !fresh.missed) else {
            continue;
        };
        let course = entry.pending.request.course_id.as_str();
        let got = results.remove(course).unwrap_or_default();
        let same = expected.entrants.len() == got.len()
            && expected.entrants.iter().zip(&got).all(|(e, g)| {
                e.student_id == g.entry.student_id && e.verdict.outcome == g.verdict.outcome
            });
        fresh.unexpected |= !same;
        fresh.draws = got;
    }
    Ok(())
}

/// The courses among `courses` whose draw results were never confirmed sent.
pub(super) async fn unannounced(
    tx: &mut sqlx::PgConnection,
    courses: &[&str],
) -> Result<Vec<String>> {
    if courses.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(
        "SELECT course_id FROM courses \
         WHERE course_id = ANY($1) AND drawn_at IS NOT NULL AND NOT draw_announced",
    )
    .bind(courses)
    .fetch_all(&mut *tx)
    .await?)
}
