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
        // A seat comes from an enroll that took it, or from a waitlisted enroll later promoted.
        "SELECT format('student %s holds a seat in %s from request %s, which has no matching \
                        enrolled outcome or promotion', e.student_id, e.course_id, e.request_id) \
         FROM enrollments e LEFT JOIN outcomes o ON o.request_id = e.request_id \
         LEFT JOIN promotions p ON p.request_id = e.request_id \
         WHERE o.request_id IS NULL OR o.course_id <> e.course_id OR o.student_id <> e.student_id \
            OR NOT (o.outcome = 'enrolled' OR (o.outcome = 'waitlisted' AND p.request_id IS NOT NULL))",
    ),
    (
        "outcomes_disagree_with_seats",
        // Each enroll that took a seat (enrolled, no reason) and each promotion moved a student
        // into a seat, each seat drop (dropped, no waitlist position) out of it; what a student
        // holds now must be the difference. Only those rows are aggregated (rejections move
        // nothing), so the check stays quick with millions of rejected requests on record.
        "SELECT format('student %s in %s: %s seats taken, %s dropped, holds %s', \
                       m.student_id, m.course_id, m.takes, m.drops, \
                       CASE WHEN e.student_id IS NULL THEN 0 ELSE 1 END) \
         FROM ( \
            SELECT course_id, student_id, sum(takes) AS takes, sum(drops) AS drops FROM ( \
                SELECT course_id, student_id, \
                       count(*) FILTER (WHERE outcome = 'enrolled') AS takes, \
                       count(*) FILTER (WHERE outcome = 'dropped') AS drops \
                FROM outcomes \
                WHERE (outcome = 'enrolled' AND reason IS NULL) \
                   OR (outcome = 'dropped' AND waitlist_position IS NULL) \
                GROUP BY course_id, student_id \
                UNION ALL \
                SELECT course_id, student_id, count(*), 0 FROM promotions \
                GROUP BY course_id, student_id) moves \
            GROUP BY course_id, student_id) m \
         LEFT JOIN enrollments e \
           ON e.course_id = m.course_id AND e.student_id = m.student_id \
         WHERE m.takes - m.drops <> CASE WHEN e.student_id IS NULL THEN 0 ELSE 1 END",
    ),
    (
        "outcomes_disagree_with_waitlist",
        // Joins (waitlisted, no reason) minus leaves (dropped with the position left) minus
        // promotions must be whether the student waits now.
        "SELECT format('student %s in %s: %s joins, %s leaves or promotions, waits %s', \
                       m.student_id, m.course_id, m.joins, m.leaves, \
                       CASE WHEN w.student_id IS NULL THEN 0 ELSE 1 END) \
         FROM ( \
            SELECT course_id, student_id, sum(joins) AS joins, sum(leaves) AS leaves FROM ( \
                SELECT course_id, student_id, \
                       count(*) FILTER (WHERE outcome = 'waitlisted') AS joins, \
                       count(*) FILTER (WHERE outcome = 'dropped') AS leaves \
                FROM outcomes \
                WHERE (outcome = 'waitlisted' AND reason IS NULL) \
                   OR (outcome = 'dropped' AND waitlist_position IS NOT NULL) \
                GROUP BY course_id, student_id \
                UNION ALL \
                SELECT course_id, student_id, 0, count(*) FROM promotions \
                GROUP BY course_id, student_id) moves \
            GROUP BY course_id, student_id) m \
         LEFT JOIN waitlist w ON w.course_id = m.course_id AND w.student_id = m.student_id \
         WHERE m.joins - m.leaves <> CASE WHEN w.student_id IS NULL THEN 0 ELSE 1 END",
    ),
    (
        "waitlist_without_outcome",
        "SELECT format('student %s waits in %s from request %s, which has no matching \
                        waitlisted outcome', w.student_id, w.course_id, w.request_id) \
         FROM waitlist w LEFT JOIN outcomes o ON o.request_id = w.request_id \
         WHERE o.request_id IS NULL OR o.outcome <> 'waitlisted' \
            OR o.course_id <> w.course_id OR o.student_id <> w.student_id",
    ),
    (
        "waitlist_counter_mismatch",
        "SELECT format('course %s counter says %s waiting, waitlist rows say %s', \
                       c.course_id, c.waitlisted, count(w.student_id)) \
         FROM courses c LEFT JOIN waitlist w ON w.course_id = c.course_id \
         GROUP BY c.course_id, c.waitlisted HAVING c.waitlisted <> count(w.student_id)",
    ),
    (
        "waitlist_over_capacity",
        "SELECT format('course %s has %s waiting for %s waitlist places', \
                       course_id, waitlisted, waitlist_capacity) \
         FROM courses WHERE waitlisted > waitlist_capacity",
    ),
    (
        "waitlist_positions_not_contiguous",
        "SELECT format('course %s waitlist positions run %s..%s over %s students', \
                       course_id, min(position), max(position), count(*)) \
         FROM waitlist GROUP BY course_id \
         HAVING min(position) <> 1 OR max(position) <> count(*) \
             OR count(DISTINCT position) <> count(*)",
    ),
    (
        "enrolled_and_waitlisted",
        "SELECT format('student %s both holds a seat and waits in %s', w.student_id, w.course_id) \
         FROM waitlist w JOIN enrollments e \
           ON e.course_id = w.course_id AND e.student_id = w.student_id",
    ),
    (
        "waiting_for_a_free_seat",
        "SELECT format('course %s has %s seats free while %s students wait', \
                       course_id, capacity - enrolled, waitlisted) \
         FROM courses WHERE waitlisted > 0 AND enrolled < capacity",
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
        let mut tx = self.snapshot().await?;
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
