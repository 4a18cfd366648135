-- Enrolls applied as one set. In a rush nearly every course's share of a batch is nothing but
-- enrolls, and the row-at-a-time loop of apply_effects spent most of the commit on them (one
-- INSERT and one counter UPDATE per effect and per course, each planned and run on its own:
-- about three quarters of the database's time per request). A course whose effects in a batch
-- are all enrolls is now applied by one INSERT ... SELECT for the whole batch and one UPDATE
-- of the counters; every other course goes through the loop as before, unchanged.
--
-- The set form decides exactly what the loop would: in an enroll-only course the seats only
-- fill, so the loop applies an enroll iff nobody waits, the student does not hold the seat yet
-- (nor took it earlier in the batch), and fewer such enrolls came before it than there were
-- free seats. tests/it/apply_sets.rs checks the two forms agree on random batches.

-- The loop keeps its body under a name of its own; apply_effects hands it every course that is
-- not enroll-only.
ALTER FUNCTION apply_effects(effect[]) RENAME TO apply_effects_in_order;

CREATE FUNCTION apply_effects(p_effects effect[])
RETURNS TABLE (r_ord integer, r_applied boolean, r_student text, r_request text,
               r_reply text, r_correlation text, r_seats_left integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_courses text[];
    v_mixed text[];
    v_locked text[];
    v_free integer[];
BEGIN
    -- Every statement below reaches courses through their primary key, by the arrays of ids
    -- this batch names: a join would let the planner scan every course of the term, at each
    -- commit, once the table outgrows what it guesses a batch touches.
    SELECT array_agg(DISTINCT t.course_id) INTO v_courses FROM UNNEST(p_effects) t;

    -- Every course of the batch is locked up front, in id order, as the loop locks them one by
    -- one: concurrent writers still lock in the same order. What is free in each is kept: a
    -- seat is free only while nobody waits.
    SELECT coalesce(array_agg(l.course_id), '{}'), coalesce(array_agg(l.free), '{}')
      INTO v_locked, v_free
      FROM (SELECT b.course_id FROM UNNEST(v_courses) AS b(course_id) ORDER BY 1) b
      CROSS JOIN LATERAL (
            SELECT c.course_id,
                   CASE WHEN c.waitlisted = 0 THEN c.capacity - c.enrolled ELSE 0 END AS free
              FROM courses c WHERE c.course_id = b.course_id FOR UPDATE) l;

    SELECT coalesce(array_agg(g.course_id), '{}') INTO v_mixed
      FROM (SELECT t.course_id FROM UNNEST(p_effects) t
             GROUP BY t.course_id HAVING NOT bool_and(t.kind = 'enroll')) g;

    RETURN QUERY
    WITH effects AS (
        SELECT t.ord, t.course_id, t.student_id, t.request_id
          FROM UNNEST(p_effects) t
         WHERE t.course_id <> ALL (v_mixed)
    ),
    -- Each student's first enroll per course, unless the seat is already theirs.
    firsts AS (
        SELECT DISTINCT ON (e.course_id, e.student_id) e.*
          FROM effects e
         WHERE NOT EXISTS (SELECT 1 FROM enrollments x
                            WHERE x.course_id = e.course_id AND x.student_id = e.student_id)
         ORDER BY e.course_id, e.student_id, e.ord
    ),
    ranked AS (
        SELECT f.*, row_number() OVER (PARTITION BY f.course_id ORDER BY f.ord) AS rank
          FROM firsts f
    ),
    taken AS (
        INSERT INTO enrollments (course_id, student_id, request_id)
        SELECT r.course_id, r.student_id, r.request_id
          FROM ranked r
          JOIN UNNEST(v_locked, v_free) AS c(course_id, free) ON c.course_id = r.course_id
         WHERE r.rank <= c.free
         ORDER BY r.course_id, r.ord
        ON CONFLICT DO NOTHING
        RETURNING enrollments.course_id, enrollments.request_id
    ),
    counted AS (
        UPDATE courses c SET enrolled = c.enrolled + n.seats
          FROM (SELECT k.course_id, count(*)::integer AS seats FROM taken k GROUP BY k.course_id) n
         WHERE c.course_id = ANY (v_locked) AND c.course_id = n.course_id
        RETURNING c.course_id
    )
    SELECT e.ord, k.request_id IS NOT NULL, NULL::text, NULL::text, NULL::text, NULL::text,
           NULL::integer
      FROM effects e
      LEFT JOIN taken k ON k.course_id = e.course_id AND k.request_id = e.request_id;

    IF cardinality(v_mixed) > 0 THEN
        RETURN QUERY
        SELECT * FROM apply_effects_in_order(ARRAY(
            SELECT t FROM UNNEST(p_effects) t WHERE t.course_id = ANY (v_mixed)));
    END IF;
END;
$$;
