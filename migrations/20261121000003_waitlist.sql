-- Waitlists, drops that promote, course windows and course changes decided by the course actor.

-- A course's waitlist capacity (0: no waitlist), how many wait now, and its enrollment window.
-- The two new CHECKs are the database's own guards: the waitlist never exceeds its capacity, and
-- nobody waits while a seat is free (a freed seat always goes to the head of the waitlist in the
-- same transaction that frees it).
ALTER TABLE courses
    ADD COLUMN waitlist_capacity integer NOT NULL DEFAULT 0 CHECK (waitlist_capacity >= 0),
    ADD COLUMN waitlisted        integer NOT NULL DEFAULT 0 CHECK (waitlisted >= 0),
    ADD COLUMN opens_at          timestamptz,
    ADD COLUMN closes_at         timestamptz,
    ADD CONSTRAINT waitlisted_within_capacity CHECK (waitlisted <= waitlist_capacity),
    ADD CONSTRAINT nobody_waits_for_a_free_seat CHECK (waitlisted = 0 OR enrolled = capacity),
    ADD CONSTRAINT window_in_order CHECK (opens_at IS NULL OR closes_at IS NULL OR opens_at < closes_at);

-- One row per waiting student, in arrival order. Positions are 1..n per course; a removal
-- renumbers the rest in the same transaction, so the uniqueness is checked at commit.
CREATE TABLE waitlist (
    course_id      text        NOT NULL REFERENCES courses (course_id),
    student_id     text        NOT NULL CHECK (student_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    position       integer     NOT NULL CHECK (position > 0),
    -- The request that put the student here, and where its client listened, so the promotion
    -- can be announced to the same address.
    request_id     text        NOT NULL,
    reply_to       text,
    correlation_id text,
    joined_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (course_id, student_id),
    CONSTRAINT one_student_per_position UNIQUE (course_id, position) DEFERRABLE INITIALLY DEFERRED
);

-- Every promotion from a waitlist to a seat, with the request (a drop or a course change) whose
-- commit made it. A redelivered drop whose answers were never confirmed announces its
-- promotions again from here.
CREATE TABLE promotions (
    request_id       text        PRIMARY KEY,
    course_id        text        NOT NULL REFERENCES courses (course_id),
    student_id       text        NOT NULL,
    reply_to         text,
    correlation_id   text,
    cause_request_id text        NOT NULL,
    seats_left       integer     NOT NULL CHECK (seats_left >= 0),
    promoted_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX promotions_by_cause ON promotions (cause_request_id);

-- New outcomes and actions, the waitlist position a waitlisted answer gave, and the opening or
-- closing instant a not_open or closed rejection referred to.
ALTER TABLE outcomes DROP CONSTRAINT outcomes_outcome_check;
ALTER TABLE outcomes DROP CONSTRAINT outcomes_action_check;
ALTER TABLE outcomes
    ADD CONSTRAINT outcomes_outcome_check
        CHECK (outcome IN ('enrolled', 'waitlisted', 'rejected', 'dropped', 'configured')),
    ADD CONSTRAINT outcomes_action_check CHECK (action IN ('enroll', 'drop', 'configure')),
    ADD COLUMN waitlist_position integer CHECK (waitlist_position > 0),
    ADD COLUMN window_at timestamptz;

-- Applies a batch's effects in decision order per course, each guarded by what the database
-- holds, and returns whether each applied and whom it promoted (one row per promotion, or one
-- row with no promotion). Courses are visited in id order, so concurrent writers lock them in
-- the same order. The counters are written once per course, after its last effect.
--
-- Kinds: enroll (take a free seat), waitlist (join a full course's waitlist), drop (give a seat
-- back; the head of the waitlist takes it), leave (leave the waitlist), configure (new seats,
-- waitlist capacity and window; refused below what is held; promotes into new seats).
CREATE FUNCTION apply_effects(
    p_ord integer[], p_course text[], p_student text[], p_request text[], p_kind text[],
    p_reply text[], p_correlation text[], p_capacity integer[], p_waitlist integer[],
    p_opens timestamptz[], p_closes timestamptz[])
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
        SELECT * FROM UNNEST(p_ord, p_course, p_student, p_request, p_kind, p_reply,
                             p_correlation, p_capacity, p_waitlist, p_opens, p_closes)
            AS t(ord, course_id, student_id, request_id, kind, reply_to, correlation_id,
                 capacity, waitlist, opens_at, closes_at)
        ORDER BY t.course_id, t.ord
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

-- Writes a course's settings and counters after a batch, in one update so the CHECKs see the
-- final state, and closes the gaps removals left in its waitlist.
CREATE FUNCTION settle_course(p_course text, p_capacity integer, p_enrolled integer,
                              p_wcap integer, p_waitlisted integer, p_opens timestamptz,
                              p_closes timestamptz, p_moved boolean)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE courses
       SET capacity = p_capacity, enrolled = p_enrolled, waitlist_capacity = p_wcap,
           waitlisted = p_waitlisted, opens_at = p_opens, closes_at = p_closes
     WHERE course_id = p_course
       AND (capacity, enrolled, waitlist_capacity, waitlisted, opens_at, closes_at)
           IS DISTINCT FROM (p_capacity, p_enrolled, p_wcap, p_waitlisted, p_opens, p_closes);
    IF p_moved THEN
        UPDATE waitlist w SET position = r.rank
          FROM (SELECT student_id, row_number() OVER (ORDER BY position)::integer AS rank
                  FROM waitlist WHERE course_id = p_course) r
         WHERE w.course_id = p_course AND w.student_id = r.student_id AND w.position <> r.rank;
    END IF;
END;
$$;
