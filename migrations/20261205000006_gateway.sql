-- The web gateway's records: the idempotency keys it accepted, and each student's final events
-- in one order every gateway shares, so that an event stream resumes anywhere.

-- A key is recorded, with a fingerprint of the request it was first used for, before the request
-- is published: the same key with another request is refused, and a key whose request is still
-- undecided is known to be in flight, at any gateway.
CREATE TABLE gateway_keys (
    request_id  text        PRIMARY KEY CHECK (request_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    fingerprint bytea       NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gateway_keys_by_age ON gateway_keys (accepted_at);

-- Every final answer, promotion, skipped promotion and draw result a student received, once
-- each (`dedup`), numbered in the order they were recorded. Recorders take one lock per insert,
-- so numbers are committed in order and a reader that has seen number n has seen all before it.
CREATE TABLE student_events (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedup       text        NOT NULL UNIQUE,
    student_id  text        NOT NULL,
    kind        text        NOT NULL
        CHECK (kind IN ('final', 'promoted', 'promotion_skipped', 'draw')),
    -- The answer exactly as the workers published it (json keeps the text as it was).
    answer      json        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX student_events_by_student ON student_events (student_id, seq);
CREATE INDEX student_events_by_age ON student_events (recorded_at);

-- A student's own seats, looked up by student (the page shows them on every sign-in).
CREATE INDEX enrollments_by_student ON enrollments (student_id);
