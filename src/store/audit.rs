//! The audit: checks the invariants on the live database.

use sqlx::Row;

use super::{Result, Store};

/// One broken invariant, with enough detail to find the rows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub check: &'static str,
    pub detail: String,
}

/// Each check is one query returning a `detail` column per violating row.
const CHECKS: &[(&str, &str)] = &[
    (
        "over_capacity",
        "SELECT format('course %s holds %s students for %s seats', course_id, enrolled, capacity) \
         FROM courses WHERE enrolled > capacity",
    ),
    (
        "counter_mismatch",
        "SELECT format('course %s counter says %s, enrollment rows say %s', \
                       c.course_id, c.enrolled, count(e.student_id)) \
         FROM courses c LEFT JOIN enrollments e ON e.course_id = c.course_id \
         GROUP BY c.course_id, c.enrolled HAVING c.enrolled <> count(e.student_id)",
    ),
    (
        "student_twice",
        "SELECT format('student %s holds %s seats in course %s', student_id, count(*), course_id) \
         FROM enrollments GROUP BY course_id, student_id HAVING count(*) > 1",
    ),
    (
        "enrollment_without_outcome",
        "SELECT format('student %s holds a seat in %s from request %s, which has no matching \
                        enrolled outcome', e.student_id, e.course_id, e.request_id) \
         FROM enrollments e LEFT JOIN outcomes o ON o.request_id = e.request_id \
         WHERE o.request_id IS NULL OR o.outcome <> 'enrolled' OR o.course_id <> e.course_id \
            OR o.student_id <> e.student_id",
    ),
    (
        "outcomes_disagree_with_seats",
        // Each enroll that took a seat (enrolled, no reason) and each drop (dropped) moved one
        // seat; what a student holds now must be their difference. Only those outcomes are
        // aggregated (rejections move nothing), so the check stays quick with millions of
        // rejected requests on record; a seat with no such outcome at all is caught by
        // enrollment_without_outcome.
        "SELECT format('student %s in %s: %s seat-taking enrolls, %s drops, holds %s', \
                       o.student_id, o.course_id, o.takes, o.drops, \
                       CASE WHEN e.student_id IS NULL THEN 0 ELSE 1 END) \
         FROM ( \
            SELECT course_id, student_id, \
                   count(*) FILTER (WHERE outcome = 'enrolled') AS takes, \
                   count(*) FILTER (WHERE outcome = 'dropped') AS drops \
            FROM outcomes \
            WHERE (outcome = 'enrolled' AND reason IS NULL) OR outcome = 'dropped' \
            GROUP BY course_id, student_id) o \
         LEFT JOIN enrollments e \
           ON e.course_id = o.course_id AND e.student_id = o.student_id \
         WHERE o.takes - o.drops <> CASE WHEN e.student_id IS NULL THEN 0 ELSE 1 END",
    ),
    (
        "rejection_without_reason",
        "SELECT format('request %s was rejected without a reason', request_id) \
         FROM outcomes WHERE outcome = 'rejected' AND reason IS NULL",
    ),
    (
        "batch_log_mismatch",
        "SELECT format('decision batches record %s decisions, outcomes hold %s', b.n, o.n) \
         FROM (SELECT coalesce(sum(requests), 0) AS n FROM decision_batches) b, \
              (SELECT count(*) AS n FROM outcomes) o WHERE b.n <> o.n",
    ),
];

impl Store {
    /// Runs every check in one consistent snapshot; an empty list means the database is clean.
    pub async fn audit(&self) -> Result<Vec<Violation>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut violations = Vec::new();
        for (check, sql) in CHECKS {
            for row in sqlx::query(*sql).fetch_all(&mut *tx).await? {
                violations.push(Violation {
                    check,
                    detail: row.try_get(0)?,
                });
            }
        }
        tx.commit().await?;
        Ok(violations)
    }
}
