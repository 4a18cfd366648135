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
        "seat_without_course",
        "SELECT format('student %s holds a seat in %s, which is not a course', \
                       e.student_id, e.course_id) \
         FROM enrollments e LEFT JOIN courses c ON c.course_id = e.course_id \
         WHERE c.course_id IS NULL",
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
         FROM enrollments e LEFT JOIN answers o ON o.request_id = e.request_id \
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
                FROM answers \
                WHERE (outcome = 'enrolled' AND reason IS NULL) \
                   OR (outcome = 'dropped' AND waitlist_position IS NULL \
                       AND draw_commitment IS NULL) \
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
                FROM answers \
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
         FROM waitlist w LEFT JOIN answers o ON o.request_id = w.request_id \
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
         FROM courses WHERE waitlisted > 0 AND enrolled < capacity \
           AND waitlist_has_promotable(course_id)",
    ),
    (
        "rejection_without_reason",
        "SELECT format('request %s was rejected without a reason', request_id) \
         FROM answers WHERE outcome = 'rejected' AND reason IS NULL",
    ),
    (
        "draw_commitment_mismatch",
        "SELECT format('course %s shows commitment %s for a seed whose SHA-256 is %s', \
                       course_id, draw_commitment, encode(sha256(draw_seed), 'hex')) \
         FROM courses WHERE draw_commitment IS DISTINCT FROM encode(sha256(draw_seed), 'hex')",
    ),
    (
        "entrant_without_draw_outcome",
        // Every entrant of a drawn course has its one outcome from the draw (one row per
        // student by key); no entry of an undrawn course has one.
        "SELECT format('student %s in %s: course drawn %s, entry ranked %s', \
                       d.student_id, d.course_id, c.drawn_at IS NOT NULL, d.draw_position) \
         FROM draw_entries d JOIN courses c ON c.course_id = d.course_id \
         WHERE (c.drawn_at IS NULL) <> (d.draw_position IS NULL)",
    ),
    (
        "draw_ranks_not_contiguous",
        "SELECT format('course %s draw ranks run %s..%s over %s entrants', \
                       course_id, min(draw_position), max(draw_position), count(*)) \
         FROM draw_entries WHERE draw_position IS NOT NULL GROUP BY course_id \
         HAVING min(draw_position) <> 1 OR max(draw_position) <> count(*)",
    ),
    (
        "draw_out_of_rank",
        // Seats went to the best ranks, then waitlist places, then refusals: nobody got more
        // than an entrant ranked before them. (What entrants did after the draw, a drop, a
        // promotion, does not change the draw's record.) An entrant the registration rules
        // refused a seat was passed over and is left out.
        "SELECT format('course %s: last seat at rank %s, first waitlist place at %s, first \
                        refusal at %s, last waitlist place at %s', course_id, e, fw, fr, lw) \
         FROM (SELECT course_id, \
                      max(draw_position) FILTER (WHERE outcome = 'enrolled') AS e, \
                      min(draw_position) FILTER (WHERE outcome = 'waitlisted') AS fw, \
                      max(draw_position) FILTER (WHERE outcome = 'waitlisted') AS lw, \
                      min(draw_position) FILTER (WHERE outcome = 'rejected') AS fr \
                 FROM draw_entries WHERE draw_position IS NOT NULL AND NOT passed_over \
                GROUP BY course_id) r \
         WHERE e > fw OR e > fr OR lw > fr",
    ),
    (
        "late_request_before_draw",
        // A request that is not an entry took a seat, a place or a refusal for want of room in
        // a drawn course in a batch before the draw's.
        "SELECT format('request %s for %s was decided (%s) in batch %s, before the draw in %s', \
                       o.request_id, o.course_id, o.outcome, o.batch_id, d.batch_id) \
         FROM courses c JOIN outcomes d ON d.request_id = c.draw_request_id \
         JOIN outcomes o ON o.course_id = c.course_id AND o.batch_id < d.batch_id \
         WHERE o.action = 'enroll' AND o.decided_at >= c.opens_at \
           AND (o.outcome IN ('enrolled', 'waitlisted') OR o.reason = 'full') \
           AND NOT EXISTS (SELECT 1 FROM draw_entries x WHERE x.request_id = o.request_id)",
    ),
    // I8, over the registry's students: their ledger of seats matches their enrollments (a
    // seat a swap gives up is counted from the swap on, until its release is committed),
    // stays within the cap, and holds no claim a commit never settled.
    (
        "seat_without_ledger",
        "SELECT format('student %s holds a seat in %s that their ledger does not count', \
                       e.student_id, e.course_id) \
         FROM enrollments e JOIN students s ON s.student_id = e.student_id \
         LEFT JOIN student_seats l \
           ON l.student_id = e.student_id AND l.course_id = e.course_id AND l.held \
         WHERE l.student_id IS NULL",
    ),
    (
        "ledger_without_seat",
        "SELECT format('the ledger of student %s holds a seat in %s they do not have', \
                       l.student_id, l.course_id) \
         FROM student_seats l LEFT JOIN enrollments e \
           ON e.student_id = l.student_id AND e.course_id = l.course_id \
         WHERE l.held AND e.student_id IS NULL",
    ),
    (
        "credits_over_cap",
        "SELECT format('student %s holds %s credits, more than the cap %s', \
                       s.student_id, sum(l.credits), s.max_credits) \
         FROM students s JOIN student_seats l ON l.student_id = s.student_id \
         WHERE l.released_by IS NULL \
         GROUP BY s.student_id, s.max_credits HAVING sum(l.credits) > s.max_credits",
    ),
    (
        "seats_clash",
        "SELECT format('student %s holds seats in %s and %s, which meet at the same time', \
                       a.student_id, a.course_id, b.course_id) \
         FROM student_seats a JOIN student_seats b \
           ON b.student_id = a.student_id AND a.course_id < b.course_id \
         WHERE a.released_by IS NULL AND b.released_by IS NULL AND a.minutes && b.minutes",
    ),
    (
        "batch_log_mismatch",
        // Per batch, so an outcome naming a batch that does not exist is found too (no
        // foreign key checks it: see migration 20261206000009).
        "SELECT format('decision batch %s records %s decisions, outcomes hold %s', \
                       coalesce(b.batch_id, o.batch_id), coalesce(b.requests, 0), \
                       coalesce(o.n, 0)) \
         FROM decision_batches b \
         FULL JOIN (SELECT batch_id, count(*) AS n FROM outcomes GROUP BY batch_id) o \
           ON o.batch_id = b.batch_id \
         WHERE coalesce(b.requests, 0) <> coalesce(o.n, 0)",
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
