-- The typed interface of apply_effects: one array of `effect` rows instead of eleven parallel
-- arrays, so a missing or misplaced field is a type error on both sides (the store builds the
-- rows from a Rust struct deriving the same type). The body is the one of
-- 20261121000003_waitlist.sql unchanged but for how it reads its argument: the same checks, in
-- the same order, with the same promotions and the same results. The eleven-array form, at the
-- end of this file, now only converts its arguments and calls this one.

-- What an effect does to its course. See apply_effects for what each kind checks.
CREATE TYPE effect_kind AS ENUM ('enroll', 'waitlist', 'drop', 'leave', 'configure');

-- One effect of a batch. `ord` is the decision's place in the batch (effects of one course are
-- applied in this order, and each result row names it); `reply_to` and `correlation_id` are
-- where the student listens, kept with a waitlist place; the settings fields are set for
-- `configure` only.
CREATE TYPE effect AS (
    ord            integer,
    course_id      text,
    student_id     text,
    request_id     text,
    kind           effect_kind,
    reply_to       text,
    correlation_id text,
    capacity       integer,
    waitlist       integer,
    opens_at       timestamptz,
    closes_at      timestamptz
);

-- Applies a batch's effects in decision order per course, each guarded by what the database
-- holds, and returns whether each applied and whom it promoted (one row per promotion, or one
-- row with no promotion). Courses are visited in id order, so concurrent writers lock them in
-- the same order. The counters are written once per course, after its last effect.
--
-- Kinds: enroll (take a free seat), waitlist (join a full course's waitlist), drop (give a seat
-- back; the head of the waitlist takes it), leave (leave the waitlist), configure (new seats,
-- waitlist capacity and window; refused below what is held; promotes into new seats).
CREATE FUNCTION apply_effects(p_effects effect[])
RETURNS TABLE (r_ord integer, r_applied boolean, r_student text, r_request text,
               r_reply text, r_correlation text, r_seats_left integer)
LANGUAGE plpgsql AS $$
DECLARE
    op record;
    head record;
    cur text := NULL;
    v_capacity integer;
    v_enrolled integer;
    v_wcap integer;
    v_waitlisted integer;
    v_opens timestamptz;
    v_closes timestamptz;
    v_next integer;
    v_moved boolean;
    v_promoted integer;
    n integer;
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
            SELECT c.capacity, c.enrolled, c.waitlist_capacity, c.waitlisted, c.opens_at, c.closes_at
              INTO v_capacity, v_enrolled, v_wcap, v_waitlisted, v_opens, v_closes
              FROM courses c WHERE c.course_id = cur FOR UPDATE;
            SELECT coalesce(max(w.position), 0) INTO v_next FROM waitlist w WHERE w.course_id = cur;
            v_moved := false;
        END IF;

        r_ord := op.ord;
        r_applied := false;
        v_promoted := 0;
        IF op.kind = 'enroll' THEN
            IF v_enrolled < v_capacity AND v_waitlisted = 0 THEN
                INSERT INTO enrollments (course_id, student_id, request_id)
                VALUES (cur, op.student_id, op.request_id) ON CONFLICT DO NOTHING;
                GET DIAGNOSTICS n = ROW_COUNT;
                r_applied := n = 1;
                v_enrolled := v_enrolled + n;
            END IF;
        ELSIF op.kind = 'waitlist' THEN
            IF v_enrolled >= v_capacity AND v_waitlisted < v_wcap AND NOT EXISTS (
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
               AND (op.opens_at IS NULL OR op.closes_at IS NULL OR op.opens_at < op.closes_at) THEN
                r_applied := true;
                v_capacity := op.capacity;
                v_wcap := op.waitlist;
                v_opens := op.opens_at;
                v_closes := op.closes_at;
            END IF;
        ELSE
            RAISE EXCEPTION 'unknown effect kind %', op.kind;
        END IF;

        -- A seat is free and someone waits: the head of the waitlist takes it, now.
        WHILE r_applied AND op.kind IN ('drop', 'configure')
              AND v_enrolled < v_capacity AND v_waitlisted > 0 LOOP
            DELETE FROM waitlist w
             WHERE w.course_id = cur
               AND w.position = (SELECT min(x.position) FROM waitlist x WHERE x.course_id = cur)
            RETURNING w.student_id, w.request_id, w.reply_to, w.correlation_id INTO head;
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

-- The eleven-array form stays for one release as a wrapper of the typed one, so the rules live
-- in one place and a worker of the previous release still commits during a rolling upgrade
-- (the first upgraded worker applies this migration while the others run on). A later
-- migration drops it once no worker of that release can be running.
CREATE OR REPLACE FUNCTION apply_effects(
    p_ord integer[], p_course text[], p_student text[], p_request text[], p_kind text[],
    p_reply text[], p_correlation text[], p_capacity integer[], p_waitlist integer[],
    p_opens timestamptz[], p_closes timestamptz[])
RETURNS TABLE (r_ord integer, r_applied boolean, r_student text, r_request text,
               r_reply text, r_correlation text, r_seats_left integer)
LANGUAGE sql AS $$
    SELECT * FROM apply_effects(ARRAY(
        SELECT ROW(t.ord, t.course_id, t.student_id, t.request_id, t.kind::effect_kind,
                   t.reply_to, t.correlation_id, t.capacity, t.waitlist, t.opens_at,
                   t.closes_at)::effect
          FROM UNNEST(p_ord, p_course, p_student, p_request, p_kind, p_reply, p_correlation,
                      p_capacity, p_waitlist, p_opens, p_closes)
            AS t(ord, course_id, student_id, request_id, kind, reply_to, correlation_id,
                 capacity, waitlist, opens_at, closes_at)))
$$;
