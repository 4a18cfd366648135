-- Registration rules across courses, enforced in Postgres (invariant I8): a student of the
-- registry never holds more credits than their cap, two seats whose meetings clash, or a seat
-- taken while a hold is on their account.
--
-- `student_seats` is each registry student's ledger of seats: a row is claimed by the worker
-- that judges the student's request under the rules (in the student's turn, `lock_students`,
-- so that two workers judging the same student at the same instant take turns), before the
-- course decides; it is held once the seat is committed, and deleted when the course decides
-- otherwise or the seat is dropped. A claim counts like a held seat, so what one worker has
-- promised is seen by every other.

-- `student_id WITH =` in an exclusion constraint.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE student_seats (
    student_id  text           NOT NULL REFERENCES students ON DELETE CASCADE,
    -- No foreign key to `courses`: its check would share-lock the course's row, which the
    -- group commit locks for update, and the two would wait on each other.
    course_id   text           NOT NULL,
    -- The course's credits and its weekly meetings when the seat was claimed: as written, and
    -- as minutes of the week (Monday 00:00 = 0) for the clash constraint.
    credits     integer        NOT NULL CHECK (credits >= 0),
    meetings    text           NOT NULL,
    minutes     int4multirange NOT NULL,
    -- The request that claimed it (the enroll or swap, or the drop or change whose freed seat
    -- it takes).
    request_id  text           NOT NULL,
    held        boolean        NOT NULL DEFAULT false,
    -- A swap giving this seat up: while it is decided, and once it took its new seat until the
    -- release that gives this one back is committed, the seat counts for nothing here (the
    -- swap is judged as if it were already dropped). A swap that fails restores it.
    released_by text,
    claimed_at  timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (student_id, course_id),
    -- I8: no two seats of one student meet at the same time.
    CONSTRAINT student_seats_no_clash EXCLUDE USING gist (student_id WITH =, minutes WITH &&)
        WHERE (released_by IS NULL)
);
CREATE INDEX student_seats_by_request ON student_seats (request_id) WHERE NOT held;
-- Every commit under the rules looks for the seats its swaps gave up.
CREATE INDEX student_seats_by_releaser ON student_seats (released_by) WHERE released_by IS NOT NULL;

-- A student's turn: every judgement of a student, every change of their holds and every
-- check below takes this transaction-scoped lock first (in key order when it takes several),
-- so they take turns on each student without writing to the student's row.
CREATE FUNCTION lock_students(p_students text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    k bigint;
BEGIN
    FOR k IN SELECT DISTINCT hashtextextended(s, 0) FROM UNNEST(p_students) s ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
END;
$$;

-- I8: no seat past the cap, and none claimed under a hold. Checked after each row, in the
-- student's turn, whatever wrote it.
CREATE FUNCTION student_seats_within_rules() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_cap   integer;
    v_holds text[];
    v_total integer;
BEGIN
    PERFORM lock_students(ARRAY[NEW.student_id]);
    SELECT s.max_credits, s.holds INTO v_cap, v_holds
      FROM students s WHERE s.student_id = NEW.student_id;
    -- (A held row inserted is a seat taken before the student was imported, not a claim.)
    IF TG_OP = 'INSERT' AND NOT NEW.held AND cardinality(v_holds) > 0 THEN
        RAISE EXCEPTION 'I8: student % has holds %; no seat may be claimed', NEW.student_id, v_holds
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT coalesce(sum(credits), 0) INTO v_total
      FROM student_seats WHERE student_id = NEW.student_id AND released_by IS NULL;
    IF v_total > v_cap THEN
        RAISE EXCEPTION 'I8: student % would hold % credits, more than the cap %',
            NEW.student_id, v_total, v_cap USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;

-- Only what can add to a student's seats is checked: a row written, or a seat a failed swap
-- counts again. Marking a claim held changes nothing the rules count, so the group commit
-- does not lock the students of its batch (every judgement of them would wait for it).
CREATE TRIGGER student_seats_within_rules
    AFTER INSERT ON student_seats
    FOR EACH ROW EXECUTE FUNCTION student_seats_within_rules();
CREATE TRIGGER student_seats_counted_again
    AFTER UPDATE OF released_by ON student_seats
    FOR EACH ROW WHEN (OLD.released_by IS NOT NULL AND NEW.released_by IS NULL)
    EXECUTE FUNCTION student_seats_within_rules();

-- The facts a rule's refusal carries (`holds`, `registration_opens_at`, `credits_held`,
-- `credits_asked`, `credits_allowed`, `conflicts_with`, `drop_course_id`), so that a replay
-- answers the same.
ALTER TABLE outcomes ADD COLUMN rule jsonb;

-- An entrant the rules refused a seat at the draw, passed over into the waitlist (or refused
-- for want of a place) while seats were still given after them.
ALTER TABLE draw_entries ADD COLUMN passed_over boolean NOT NULL DEFAULT false;

-- A seat may stay free while only students the rules refused it to wait: the next request
-- may take it.
ALTER TABLE courses DROP CONSTRAINT nobody_waits_for_a_free_seat;

-- Swaps, and the releases that complete them.
ALTER TABLE outcomes
    DROP CONSTRAINT outcomes_action_check,
    ADD CONSTRAINT outcomes_action_check
        CHECK (action IN ('enroll', 'drop', 'configure', 'draw', 'swap', 'release'));

-- The answers view of 20261205000003_draw.sql, with the rule's facts.
CREATE OR REPLACE VIEW answers AS
SELECT o.request_id, o.course_id, o.student_id, o.action, o.batch_id, o.decided_at,
       coalesce(d.outcome, o.outcome) AS outcome,
       CASE WHEN d.outcome IS NULL THEN o.reason
            WHEN d.outcome = 'rejected' THEN 'full' END AS reason,
       coalesce(d.seats_left, o.seats_left) AS seats_left,
       CASE WHEN d.outcome IS NULL THEN o.waitlist_position ELSE d.waitlist_position END
           AS waitlist_position,
       CASE WHEN d.outcome IS NULL THEN o.window_at END AS window_at,
       CASE WHEN d.outcome IS NULL THEN o.draw_commitment END AS draw_commitment,
       CASE WHEN d.outcome IS NULL THEN o.entries_open_at END AS entries_open_at,
       d.draw_position,
       CASE WHEN d.outcome IS NULL THEN o.rule END AS rule
  FROM outcomes o
  LEFT JOIN draw_entries d
    ON d.request_id = o.request_id AND d.course_id = o.course_id AND d.outcome IS NOT NULL;

-- Whether anyone on the course's waitlist may take a freed seat at any time: a student outside
-- the registry (and so everyone, when no registry is loaded). A registry student takes one only
-- when the course's actor claimed it for them, for the very drop or change that freed it. A seat
-- is free while the waitlist holds only registry students; the next request may take it.
CREATE FUNCTION waitlist_has_promotable(p_course text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM waitlist w
         WHERE w.course_id = p_course
           AND NOT EXISTS (SELECT 1 FROM students s WHERE s.student_id = w.student_id))
$$;

-- A canonical meetings text (`MO 09:00-10:30;WE 09:00-10:30`) as minutes of the week, Monday
-- 00:00 being 0, as the workers compute them.
CREATE FUNCTION meetings_minutes(p_meetings text) RETURNS int4multirange
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(range_agg(int4range(
               d * 1440 + split_part(t.start, ':', 1)::int * 60 + split_part(t.start, ':', 2)::int,
               d * 1440 + split_part(t.stop, ':', 1)::int * 60 + split_part(t.stop, ':', 2)::int)),
           '{}')
      FROM (SELECT array_position(ARRAY['MO', 'TU', 'WE', 'TH', 'FR', 'SA', 'SU'],
                                  upper(substr(slot, 1, 2))) - 1 AS d,
                   split_part(substr(slot, 4), '-', 1) AS start,
                   split_part(substr(slot, 4), '-', 2) AS stop
              FROM UNNEST(string_to_array(nullif(p_meetings, ''), ';')) slot) t
$$;

-- The loop of 20261205000003_draw.sql, unchanged but for the promotion and the free seats: a
-- seat freed by a drop or a change goes to the first in line whom the rules let take it (a
-- registry student only with a claim on it in `student_seats`); the others stay where they
-- are. Without a registry that is the head, as before. An enroll takes a free seat when no one
-- waiting may. A draw likewise passes over an entrant the rules refuse a seat (`passed_over`).
CREATE OR REPLACE FUNCTION apply_course_effects_in_order(p_effects course_effect[])
RETURNS TABLE (r_ord integer, r_applied boolean, r_student text, r_request text,
               r_reply text, r_correlation text, r_seats_left integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_passed integer := 0;
    v_allowed boolean;
    v_free boolean;
    op record;
    head record;
    entrant record;
    cur text := NULL;
    v_capacity integer;
    v_enrolled integer;
    v_wcap integer;
    v_waitlisted integer;
    v_opens timestamptz;
    v_closes timestamptz;
    v_opening text;
    v_drawn timestamptz;
    v_next integer;
    v_moved boolean;
    v_promoted integer;
    v_outcome text;
    v_position integer;
    v_order text[];
    v_pending boolean;
    n integer;
    i integer;
BEGIN
    FOR op IN
        SELECT * FROM UNNEST(p_effects) AS t ORDER BY t.course_id, t.ord
    LOOP
        IF cur IS DISTINCT FROM op.course_id THEN
            IF cur IS NOT NULL THEN
                PERFORM settle_course(cur, v_capacity, v_enrolled, v_wcap, v_waitlisted,
                                      v_opens, v_closes, v_moved);
            END IF;
            cur := op.course_id;
            SELECT c.capacity, c.enrolled, c.waitlist_capacity, c.waitlisted, c.opens_at,
                   c.closes_at, c.opening, c.drawn_at
              INTO v_capacity, v_enrolled, v_wcap, v_waitlisted, v_opens, v_closes,
                   v_opening, v_drawn
              FROM courses c WHERE c.course_id = cur FOR UPDATE;
            SELECT coalesce(max(w.position), 0) INTO v_next FROM waitlist w WHERE w.course_id = cur;
            v_moved := false;
        END IF;

        r_ord := op.ord;
        r_applied := false;
        v_promoted := 0;
        -- A draw course not yet drawn gives no seat or place but through its draw (only a
        -- worker of the previous release, which knows no draw, would ask for one).
        v_pending := coalesce(v_opening = 'draw' AND v_drawn IS NULL, false);
        IF op.kind = 'enroll' THEN
            IF v_enrolled < v_capacity AND NOT v_pending
               AND (v_waitlisted = 0 OR NOT waitlist_has_promotable(cur)) THEN
                INSERT INTO enrollments (course_id, student_id, request_id)
                VALUES (cur, op.student_id, op.request_id) ON CONFLICT DO NOTHING;
                GET DIAGNOSTICS n = ROW_COUNT;
                r_applied := n = 1;
                v_enrolled := v_enrolled + n;
            END IF;
        ELSIF op.kind = 'waitlist' THEN
            IF v_enrolled >= v_capacity AND v_waitlisted < v_wcap AND NOT v_pending AND NOT EXISTS (
                SELECT 1 FROM enrollments e WHERE e.course_id = cur AND e.student_id = op.student_id)
            THEN
                INSERT INTO waitlist (course_id, student_id, position, request_id, reply_to, correlation_id)
                VALUES (cur, op.student_id, v_next + 1, op.request_id, op.reply_to, op.correlation_id)
                ON CONFLICT (course_id, student_id) DO NOTHING;
                GET DIAGNOSTICS n = ROW_COUNT;
                r_applied := n = 1;
                v_next := v_next + n;
                v_waitlisted := v_waitlisted + n;
            END IF;
        ELSIF op.kind = 'drop' THEN
            DELETE FROM enrollments e WHERE e.course_id = cur AND e.student_id = op.student_id;
            GET DIAGNOSTICS n = ROW_COUNT;
            r_applied := n = 1;
            v_enrolled := v_enrolled - n;
        ELSIF op.kind = 'leave' THEN
            DELETE FROM waitlist w WHERE w.course_id = cur AND w.student_id = op.student_id;
            GET DIAGNOSTICS n = ROW_COUNT;
            r_applied := n = 1;
            v_waitlisted := v_waitlisted - n;
            v_moved := v_moved OR n = 1;
        ELSIF op.kind = 'configure' THEN
            IF op.capacity >= v_enrolled AND op.waitlist >= v_waitlisted
               AND (op.opens_at IS NULL OR op.closes_at IS NULL OR op.opens_at < op.closes_at)
               AND (op.entries_open_at IS NULL OR op.opens_at IS NULL
                    OR op.entries_open_at < op.opens_at)
               AND (op.opening = v_opening OR v_drawn IS NULL)
               AND (op.opening <> 'draw' OR op.opens_at IS NOT NULL)
               AND (op.opening = 'draw' OR NOT EXISTS (
                    SELECT 1 FROM draw_entries d WHERE d.course_id = cur AND d.outcome IS NULL))
            THEN
                r_applied := true;
                v_capacity := op.capacity;
                v_wcap := op.waitlist;
                v_opens := op.opens_at;
                v_closes := op.closes_at;
                v_opening := op.opening;
                -- The window is written here too: the CHECKs see the opening and the instants
                -- together. A seed is taken only by a course that has none.
                UPDATE courses c
                   SET opening = op.opening, entries_open_at = op.entries_open_at,
                       opens_at = op.opens_at, closes_at = op.closes_at,
                       draw_seed = coalesce(c.draw_seed, op.draw_seed),
                       draw_commitment = coalesce(c.draw_commitment,
                                                  encode(sha256(op.draw_seed), 'hex'))
                 WHERE c.course_id = cur;
            END IF;
        ELSIF op.kind = 'enter' THEN
            IF v_opening = 'draw' AND v_drawn IS NULL
               AND NOT EXISTS (SELECT 1 FROM enrollments e
                                WHERE e.course_id = cur AND e.student_id = op.student_id)
               AND NOT EXISTS (SELECT 1 FROM waitlist w
                                WHERE w.course_id = cur AND w.student_id = op.student_id)
            THEN
                INSERT INTO draw_entries (course_id, student_id, request_id, reply_to, correlation_id)
                VALUES (cur, op.student_id, op.request_id, op.reply_to, op.correlation_id)
                ON CONFLICT DO NOTHING;
                GET DIAGNOSTICS n = ROW_COUNT;
                r_applied := n = 1;
            END IF;
        ELSIF op.kind = 'withdraw' THEN
            DELETE FROM draw_entries d
             WHERE d.course_id = cur AND d.student_id = op.student_id AND d.outcome IS NULL;
            GET DIAGNOSTICS n = ROW_COUNT;
            r_applied := n = 1;
        ELSIF op.kind = 'draw' THEN
            IF v_opening = 'draw' AND v_drawn IS NULL
               AND cardinality(op.draw_order) = (SELECT count(DISTINCT s) FROM UNNEST(op.draw_order) s)
               AND cardinality(op.draw_order) = (SELECT count(*) FROM draw_entries d WHERE d.course_id = cur)
               AND NOT EXISTS (SELECT 1 FROM UNNEST(op.draw_order) s
                                WHERE NOT EXISTS (SELECT 1 FROM draw_entries d
                                                   WHERE d.course_id = cur AND d.student_id = s))
            THEN
                -- A local copy: indexing the record's array walks it from the start each time.
                v_order := op.draw_order;
                FOR i IN 1 .. coalesce(cardinality(v_order), 0) LOOP
                    SELECT d.request_id, d.reply_to, d.correlation_id INTO entrant
                      FROM draw_entries d
                     WHERE d.course_id = cur AND d.student_id = v_order[i];
                    v_position := NULL;
                    -- A registry student takes a seat only with a claim on it; one the rules
                    -- refused is passed over into the waitlist, and the seats left still go.
                    v_allowed := NOT EXISTS (SELECT 1 FROM students s
                                              WHERE s.student_id = v_order[i])
                                 OR EXISTS (SELECT 1 FROM student_seats c
                                             WHERE c.student_id = v_order[i]
                                               AND c.course_id = cur
                                               AND c.request_id = op.request_id);
                    v_free := v_enrolled < v_capacity AND v_waitlisted = v_passed;
                    IF v_free AND v_allowed THEN
                        INSERT INTO enrollments (course_id, student_id, request_id)
                        VALUES (cur, v_order[i], entrant.request_id) ON CONFLICT DO NOTHING;
                        GET DIAGNOSTICS n = ROW_COUNT;
                        v_enrolled := v_enrolled + n;
                        v_outcome := 'enrolled';
                    ELSIF v_waitlisted < v_wcap THEN
                        IF v_free THEN
                            v_passed := v_passed + 1;
                        END IF;
                        v_next := v_next + 1;
                        v_waitlisted := v_waitlisted + 1;
                        v_position := v_waitlisted;
                        INSERT INTO waitlist (course_id, student_id, position, request_id,
                                              reply_to, correlation_id)
                        VALUES (cur, v_order[i], v_next, entrant.request_id,
                                entrant.reply_to, entrant.correlation_id);
                    ELSE
                        v_outcome := 'rejected';
                    END IF;
                    IF v_position IS NOT NULL THEN
                        v_outcome := 'waitlisted';
                    END IF;
                    UPDATE draw_entries d
                       SET draw_position = i, outcome = v_outcome,
                           seats_left = v_capacity - v_enrolled, waitlist_position = v_position,
                           passed_over = v_free AND NOT v_allowed
                     WHERE d.course_id = cur AND d.student_id = v_order[i];
                END LOOP;
                UPDATE courses c SET drawn_at = now(), draw_request_id = op.request_id
                 WHERE c.course_id = cur;
                v_drawn := now();
                r_applied := true;
            END IF;
        ELSE
            RAISE EXCEPTION 'unknown effect kind %', op.kind;
        END IF;

        -- A seat is free and someone waits: the head of the waitlist takes it, now.
        WHILE r_applied AND op.kind IN ('drop', 'configure')
              AND v_enrolled < v_capacity AND v_waitlisted > 0 LOOP
            -- The first in line whom the rules let take the seat: a registry student only
            -- with a claim on it (the actor claimed it for whoever it promotes).
            DELETE FROM waitlist w
             WHERE w.course_id = cur
               AND w.position = (SELECT min(x.position) FROM waitlist x
                                  WHERE x.course_id = cur
                                    AND (NOT EXISTS (SELECT 1 FROM students s
                                                      WHERE s.student_id = x.student_id)
                                         OR EXISTS (SELECT 1 FROM student_seats c
                                                     WHERE c.student_id = x.student_id
                                                       AND c.course_id = cur
                                                       AND c.request_id = op.request_id)))
            RETURNING w.student_id, w.request_id, w.reply_to, w.correlation_id INTO head;
            EXIT WHEN NOT FOUND;
            INSERT INTO enrollments (course_id, student_id, request_id)
            VALUES (cur, head.student_id, head.request_id);
            v_enrolled := v_enrolled + 1;
            v_waitlisted := v_waitlisted - 1;
            v_moved := true;
            INSERT INTO promotions (request_id, course_id, student_id, reply_to, correlation_id,
                                    cause_request_id, seats_left)
            VALUES (head.request_id, cur, head.student_id, head.reply_to, head.correlation_id,
                    op.request_id, v_capacity - v_enrolled);
            r_student := head.student_id;
            r_request := head.request_id;
            r_reply := head.reply_to;
            r_correlation := head.correlation_id;
            r_seats_left := v_capacity - v_enrolled;
            RETURN NEXT;
            v_promoted := v_promoted + 1;
        END LOOP;
        IF v_promoted = 0 THEN
            r_student := NULL;
            r_request := NULL;
            r_reply := NULL;
            r_correlation := NULL;
            r_seats_left := NULL;
            RETURN NEXT;
        END IF;
    END LOOP;
    IF cur IS NOT NULL THEN
        PERFORM settle_course(cur, v_capacity, v_enrolled, v_wcap, v_waitlisted,
                              v_opens, v_closes, v_moved);
    END IF;
END;
$$;


-- The set form of 20261205000003_draw.sql, unchanged but for the free seats: a course whose
-- waitlist holds only students the rules refused a seat has its free seats to give.
CREATE OR REPLACE FUNCTION apply_course_effects(p_effects course_effect[])
RETURNS TABLE (r_ord integer, r_applied boolean, r_student text, r_request text,
               r_reply text, r_correlation text, r_seats_left integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_courses text[];
    v_mixed text[];
    v_locked text[];
    v_free integer[];
BEGIN
    SELECT array_agg(DISTINCT t.course_id) INTO v_courses FROM UNNEST(p_effects) t;

    SELECT coalesce(array_agg(l.course_id), '{}'), coalesce(array_agg(l.free), '{}')
      INTO v_locked, v_free
      FROM (SELECT b.course_id FROM UNNEST(v_courses) AS b(course_id) ORDER BY 1) b
      CROSS JOIN LATERAL (
            -- A draw course not yet drawn has no seat to give first-come.
            SELECT c.course_id,
                   CASE WHEN (c.waitlisted = 0 OR NOT waitlist_has_promotable(c.course_id))
                         AND NOT (c.opening = 'draw' AND c.drawn_at IS NULL)
                        THEN c.capacity - c.enrolled ELSE 0 END AS free
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
        SELECT * FROM apply_course_effects_in_order(ARRAY(
            SELECT t FROM UNNEST(p_effects) t WHERE t.course_id = ANY (v_mixed)));
    END IF;
END;
$$;

-- After a batch's effects, in the commit's transaction: the seats the batch gave (enrolls,
-- swaps and promotions) are held, the seats it took back (drops and releases) leave the
-- ledger, every claim its requests made and did not use is released, and a seat a swap of the
-- batch gave up is counted again unless the swap took its new seat. None of this adds to what
-- a student holds but the last, so only its students are locked.
CREATE FUNCTION settle_student_seats(p_held_students text[], p_held_courses text[],
                                     p_dropped_students text[], p_dropped_courses text[],
                                     p_requests text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- The turn of the students whose rows are checked below (a seat a failed swap gives back,
    -- a held seat whose row is written anew), all taken at once in key order, so commits and
    -- judgements take turns without deadlocking.
    PERFORM lock_students(ARRAY(
        SELECT c.student_id FROM student_seats c WHERE c.released_by = ANY (p_requests)
        UNION
        SELECT h.student_id FROM UNNEST(p_held_students, p_held_courses) AS h(student_id, course_id)
         WHERE NOT EXISTS (SELECT 1 FROM student_seats c
                            WHERE c.student_id = h.student_id AND c.course_id = h.course_id)));
    -- What the database holds decides, whatever order the batch's decisions came in: a seat
    -- given back and taken again before either was committed stays in the ledger.
    DELETE FROM student_seats c
     USING UNNEST(p_dropped_students, p_dropped_courses) AS d(student_id, course_id)
     WHERE c.student_id = d.student_id AND c.course_id = d.course_id
       AND NOT EXISTS (SELECT 1 FROM enrollments e
                        WHERE e.student_id = c.student_id AND e.course_id = c.course_id);
    -- A seat given is held: its claim, or (its row deleted meanwhile by the commit of a drop
    -- decided before it) a row written now, which the checks judge like any other.
    INSERT INTO student_seats (student_id, course_id, credits, meetings, minutes, request_id,
                               held)
    SELECT h.student_id, h.course_id, c.credits, c.meetings, meetings_minutes(c.meetings),
           e.request_id, true
      FROM UNNEST(p_held_students, p_held_courses) AS h(student_id, course_id)
      JOIN students s ON s.student_id = h.student_id
      JOIN courses c ON c.course_id = h.course_id
      JOIN enrollments e ON e.student_id = h.student_id AND e.course_id = h.course_id
    ON CONFLICT (student_id, course_id) DO UPDATE SET held = true;
    DELETE FROM student_seats c WHERE c.request_id = ANY (p_requests) AND NOT c.held;
    UPDATE student_seats a SET released_by = NULL
     WHERE a.released_by = ANY (p_requests)
       AND NOT EXISTS (SELECT 1 FROM student_seats b
                        WHERE b.student_id = a.student_id AND b.request_id = a.released_by
                          AND b.held);
END;
$$;
