-- A fair opening: a course's opening policy, entries into its draw, and the draw itself, decided
-- by the course actor like any request and guarded here like every other effect.
--
-- Under `draw`, an enroll before the opening enters the student into the course's draw (outcome
-- `queued`). At the opening the actor ranks the entrants by HMAC-SHA256(seed, student id) and
-- decides them in that order as if they had enrolled so; apply_effects applies the draw in the
-- actor's order, once per course, and only if the entrants it names are exactly those entered.

-- The opening policy, the instant entries open, the draw's seed and its public commitment (the
-- CHECK makes the stored commitment the seed's SHA-256 for ever), and the draw's record once
-- performed. The seed is kept from the moment a course first becomes a draw.
ALTER TABLE courses
    ADD COLUMN opening         text        NOT NULL DEFAULT 'first-come'
        CHECK (opening IN ('first-come', 'draw')),
    ADD COLUMN entries_open_at timestamptz,
    ADD COLUMN draw_seed       bytea       CHECK (draw_seed IS NULL OR length(draw_seed) = 32),
    ADD COLUMN draw_commitment text,
    ADD COLUMN drawn_at        timestamptz,
    ADD COLUMN draw_request_id text,
    -- The draw's results were announced (the broker confirmed them); until then a worker that
    -- loads the course announces them again.
    ADD COLUMN draw_announced  boolean     NOT NULL DEFAULT false,
    ADD CONSTRAINT draw_commitment_is_the_seeds CHECK (
        (draw_seed IS NULL AND draw_commitment IS NULL)
        OR draw_commitment = encode(sha256(draw_seed), 'hex')),
    ADD CONSTRAINT a_draw_has_a_seed_and_an_opening CHECK (
        opening <> 'draw' OR (draw_seed IS NOT NULL AND opens_at IS NOT NULL)),
    ADD CONSTRAINT entries_open_before_the_course CHECK (
        entries_open_at IS NULL OR opens_at IS NULL OR entries_open_at < opens_at),
    ADD CONSTRAINT drawn_with_a_record CHECK ((drawn_at IS NULL) = (draw_request_id IS NULL));

-- The workers' draw clock looks for draws due and not yet announced.
CREATE INDEX courses_draws_pending ON courses (opens_at)
    WHERE opening = 'draw' AND NOT draw_announced;

-- One row per entrant. Before the draw, `draw_position` and the results are null; the draw
-- fills them for every entrant in one transaction. A withdrawn entry is deleted.
CREATE TABLE draw_entries (
    course_id         text        NOT NULL REFERENCES courses (course_id),
    student_id        text        NOT NULL
        CHECK (student_id ~ '^[A-Za-z0-9_-]+$' AND length(student_id) <= 64),
    -- The entry request (its id answers with the draw's outcome once drawn) and where its
    -- client listens, to announce the outcome there.
    request_id        text        NOT NULL,
    reply_to          text,
    correlation_id    text,
    entered_at        timestamptz NOT NULL DEFAULT now(),
    draw_position     integer     CHECK (draw_position > 0),
    outcome           text        CHECK (outcome IN ('enrolled', 'waitlisted', 'rejected')),
    seats_left        integer     CHECK (seats_left >= 0),
    waitlist_position integer     CHECK (waitlist_position > 0),
    PRIMARY KEY (course_id, student_id),
    CONSTRAINT one_entrant_per_rank UNIQUE (course_id, draw_position),
    CONSTRAINT drawn_entries_are_complete CHECK (
        (draw_position IS NULL) = (outcome IS NULL) AND (outcome IS NULL) = (seats_left IS NULL)
        AND ((outcome = 'waitlisted') = (waitlist_position IS NOT NULL)))
);
CREATE INDEX draw_entries_by_request ON draw_entries (request_id);

-- The new outcomes (`queued` for an entry, `drawn` for the draw's own record and for a wake-up),
-- the wake-up's action, and what a draw course's answer carries.
ALTER TABLE outcomes DROP CONSTRAINT outcomes_outcome_check;
ALTER TABLE outcomes DROP CONSTRAINT outcomes_action_check;
ALTER TABLE outcomes
    ADD CONSTRAINT outcomes_outcome_check CHECK (outcome IN
        ('enrolled', 'waitlisted', 'rejected', 'dropped', 'configured', 'queued', 'drawn')),
    ADD CONSTRAINT outcomes_action_check CHECK (action IN ('enroll', 'drop', 'configure', 'draw')),
    ADD COLUMN draw_commitment text,
    ADD COLUMN entries_open_at timestamptz;

-- What a request id answers now: its outcome as decided, or, for an entry of a drawn course,
-- the draw's outcome for it. Replays read this, never `outcomes` alone.
CREATE VIEW answers AS
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
       d.draw_position
  FROM outcomes o
  LEFT JOIN draw_entries d
    ON d.request_id = o.request_id AND d.course_id = o.course_id AND d.outcome IS NOT NULL;

-- The new effect kinds. Workers of the previous release never send them.
ALTER TYPE effect_kind ADD VALUE 'enter';
ALTER TYPE effect_kind ADD VALUE 'withdraw';
ALTER TYPE effect_kind ADD VALUE 'draw';

-- An effect as this release sends it: `effect` and what `configure` and `draw` carry besides.
-- A new type rather than new attributes of `effect`, so a worker of the previous release, which
-- sends `effect` rows of eleven fields, still commits during a rolling upgrade (its
-- `apply_effects(effect[])` becomes a wrapper of this release's function, below).
CREATE TYPE course_effect AS (
    ord             integer,
    course_id       text,
    student_id      text,
    request_id      text,
    kind            effect_kind,
    reply_to        text,
    correlation_id  text,
    capacity        integer,
    waitlist        integer,
    opens_at        timestamptz,
    closes_at       timestamptz,
    -- configure: the opening policy, the entries' instant, and a fresh seed taken only by a
    -- course that has none.
    opening         text,
    entries_open_at timestamptz,
    draw_seed       bytea,
    -- draw: the entrants, rank 1 first.
    draw_order      text[]
);

-- The loop of 20261121000005_typed_effects.sql over `course_effect`, with the draw's kinds and
-- the opening in `configure`; the other kinds are unchanged.
--
-- enter: into the draw of a draw course not yet drawn, unless the student holds a seat or a
--   place (the actor answers those as already enrolled or waitlisted);
-- withdraw: an entry not yet drawn;
-- draw: once per course (`drawn_at` is null), only if the entrants named are exactly those
--   entered; each, in the order given, takes a free seat, else a waitlist place, else nothing,
--   and its row records its rank and outcome;
-- configure: also refused when it changes the opening of a drawn course, or turns a draw with
--   entrants back to first-come (the actor refuses the same).
CREATE FUNCTION apply_course_effects_in_order(p_effects course_effect[])
RETURNS TABLE (r_ord integer, r_applied boolean, r_student text, r_request text,
               r_reply text, r_correlation text, r_seats_left integer)
LANGUAGE plpgsql AS $$
DECLARE
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
            IF v_enrolled < v_capacity AND v_waitlisted = 0 AND NOT v_pending THEN
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
                    IF v_enrolled < v_capacity AND v_waitlisted = 0 THEN
                        INSERT INTO enrollments (course_id, student_id, request_id)
                        VALUES (cur, v_order[i], entrant.request_id) ON CONFLICT DO NOTHING;
                        GET DIAGNOSTICS n = ROW_COUNT;
                        v_enrolled := v_enrolled + n;
                        v_outcome := 'enrolled';
                    ELSIF v_waitlisted < v_wcap THEN
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
                           seats_left = v_capacity - v_enrolled, waitlist_position = v_position
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

-- The set form of 20261205000001_enrolls_as_a_set.sql over `course_effect`, unchanged but for
-- its argument's type, the loop it hands mixed courses to (a course with an entry, a withdrawal
-- or a draw is mixed), and no free seat in a draw course not yet drawn.
CREATE FUNCTION apply_course_effects(p_effects course_effect[])
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
                   CASE WHEN c.waitlisted = 0 AND NOT (c.opening = 'draw' AND c.drawn_at IS NULL)
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

-- The previous release's entry point, now a wrapper: its eleven fields, and nothing of a draw.
-- (Its `configure` keeps the course's opening: the wrapper passes the opening stored.)
DROP FUNCTION apply_effects(effect[]);
DROP FUNCTION apply_effects_in_order(effect[]);
CREATE FUNCTION apply_effects(p_effects effect[])
RETURNS TABLE (r_ord integer, r_applied boolean, r_student text, r_request text,
               r_reply text, r_correlation text, r_seats_left integer)
LANGUAGE sql AS $$
    SELECT * FROM apply_course_effects(ARRAY(
        SELECT ROW(e.ord, e.course_id, e.student_id, e.request_id, e.kind, e.reply_to,
                   e.correlation_id, e.capacity, e.waitlist, e.opens_at, e.closes_at,
                   c.opening, c.entries_open_at, NULL, NULL)::course_effect
          FROM UNNEST(p_effects) e LEFT JOIN courses c ON c.course_id = e.course_id))
$$;
