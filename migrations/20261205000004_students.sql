-- The term's student registry, and the course facts that registration rules across courses read:
-- each course's credits and weekly meetings.

-- A student of the term: the credits they may hold at most, when their registration opens (their
-- time ticket; null: with everyone), and the holds on their account (unpaid fees, missing
-- advising...). Once any student is imported, the registry is loaded.
CREATE TABLE students (
    student_id            text        PRIMARY KEY
        CHECK (student_id ~ '^[A-Za-z0-9_-]+$' AND length(student_id) <= 64),
    max_credits           integer     NOT NULL CHECK (max_credits >= 0),
    registration_opens_at timestamptz,
    holds                 text[]      NOT NULL DEFAULT '{}'
        CHECK (cardinality(holds) <= 16),
    imported_at           timestamptz NOT NULL DEFAULT now()
);

-- A course's credits, and its meetings in the canonical text `MO 09:00-10:30;WE 09:00-10:30`
-- (empty: it never meets at a fixed time).
ALTER TABLE courses
    ADD COLUMN credits  integer NOT NULL DEFAULT 0 CHECK (credits BETWEEN 0 AND 100),
    ADD COLUMN meetings text    NOT NULL DEFAULT '' CHECK (length(meetings) <= 512);
