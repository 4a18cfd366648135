//! The registry students' ledger after a batch (`settle_student_seats`): the seats the batch
//! gave are held, those it took back leave, and the claims its requests did not use are
//! released. Skipped when no request of the batch was judged under the rules.

use sqlx::{PgConnection, Row};

use super::Entry;
use crate::domain::{Action, Outcome};
use crate::protocol::{PassedOver, Promotion};
use crate::store::Result;

pub(super) async fn settle(tx: &mut PgConnection, entries: &mut [Entry<'_>]) -> Result<()> {
    if !entries.iter().any(|e| e.pending.ruled) {
        return Ok(());
    }
    pass_over(tx, entries).await?;
    let (mut held_students, mut held_courses) = (Vec::new(), Vec::new());
    let (mut dropped_students, mut dropped_courses) = (Vec::new(), Vec::new());
    let mut requests = Vec::with_capacity(entries.len());
    for entry in entries {
        let request = &entry.pending.request;
        requests.push(request.request_id.as_str());
        let Some(fresh) = &entry.fresh else {
            continue;
        };
        let verdict = &fresh.verdict;
        match (&request.action, verdict.outcome) {
            (Action::Enroll | Action::Swap(_), Outcome::Enrolled) => {
                held_students.push(request.student_id.as_str());
                held_courses.push(request.course_id.as_str());
            }
            // A seat given back (a waitlist place left names its position).
            (Action::Drop | Action::Release(_), Outcome::Dropped)
                if verdict.waitlist_position.is_none() =>
            {
                dropped_students.push(request.student_id.as_str());
                dropped_courses.push(request.course_id.as_str());
            }
            _ => {}
        }
        // The seats a draw gave its entrants.
        for drawn in fresh
            .draws
            .iter()
            .filter(|d| d.verdict.outcome == Outcome::Enrolled)
        {
            held_students.push(drawn.entry.student_id.as_str());
            held_courses.push(drawn.entry.course_id.as_str());
        }
        for promotion in &fresh.promotions {
            held_students.push(promotion.student_id.as_str());
            held_courses.push(promotion.course_id.as_str());
        }
    }
    sqlx::query("SELECT settle_student_seats($1, $2, $3, $4, $5)")
        .bind(&held_students)
        .bind(&held_courses)
        .bind(&dropped_students)
        .bind(&dropped_courses)
        .bind(&requests)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Whom each fresh request passed over for the seats it freed, with their enroll request's
/// address (from their waitlist place, which they keep), to be told after the commit.
async fn pass_over(tx: &mut PgConnection, entries: &mut [Entry<'_>]) -> Result<()> {
    for entry in entries.iter_mut() {
        let pending = entry.pending;
        let Some(fresh) = entry.fresh.as_mut().filter(|_| !pending.skipped.is_empty()) else {
            continue;
        };
        let students: Vec<&str> = pending
            .skipped
            .iter()
            .map(|s| s.student_id.as_str())
            .collect();
        let rows = sqlx::query(
            "SELECT student_id, request_id, reply_to, correlation_id FROM waitlist \
              WHERE course_id = $1 AND student_id = ANY ($2)",
        )
        .bind(pending.request.course_id.as_str())
        .bind(&students)
        .fetch_all(&mut *tx)
        .await?;
        for skipped in &pending.skipped {
            let Some(row) = rows.iter().find(|r| {
                r.try_get::<&str, _>("student_id").ok() == Some(skipped.student_id.as_str())
            }) else {
                continue;
            };
            fresh.passed_over.push(PassedOver {
                promotion: Promotion {
                    course_id: pending.request.course_id.to_string(),
                    student_id: skipped.student_id.to_string(),
                    request_id: row.try_get("request_id")?,
                    reply_to: row.try_get("reply_to")?,
                    correlation_id: row.try_get("correlation_id")?,
                    promoted_by: pending.request.request_id.to_string(),
                    seats_left: fresh.verdict.seats_left,
                },
                refusal: skipped.refusal.clone(),
            });
        }
    }
    Ok(())
}
