-- The core schema: courses with their seat counters, enrollments, the outcome of every request
-- (the idempotency record), the group-commit log, and partition ownership.

-- A course and its counter. The CHECK is the database's own guard against overselling (I3): even
-- a buggy or stale writer cannot commit more enrolled students than seats.
CREATE TABLE courses (
    course_id   text        PRIMARY KEY CHECK (course_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    capacity    integer     NOT NULL CHECK (capacity >= 0),
    enrolled    integer     NOT NULL DEFAULT 0 CHECK (enrolled >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT enrolled_within_capacity CHECK (enrolled <= capacity)
);

-- One row per seat held. The primary key makes "the same student twice" impossible.
CREATE TABLE enrollments (
    course_id   text        NOT NULL REFERENCES courses (course_id),
    student_id  text        NOT NULL CHECK (student_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    request_id  text        NOT NULL,
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (course_id, student_id)
);

-- Every transaction that wrote decisions, so their number can be counted and audited.
CREATE TABLE decision_batches (
    batch_id     bigserial   PRIMARY KEY,
    worker_id    text        NOT NULL,
    requests     integer     NOT NULL CHECK (requests > 0),
    committed_at timestamptz NOT NULL DEFAULT now()
);

-- The outcome of every valid request, keyed by request id (I4). A request for an unknown course
-- is recorded too (its course_id references nothing), so a later redelivery replays it.
CREATE TABLE outcomes (
    request_id  text        PRIMARY KEY CHECK (request_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    course_id   text        NOT NULL,
    student_id  text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('enroll', 'drop')),
    outcome     text        NOT NULL CHECK (outcome IN ('enrolled', 'rejected', 'dropped')),
    reason      text,
    seats_left  integer     NOT NULL CHECK (seats_left >= 0),
    batch_id    bigint      NOT NULL REFERENCES decision_batches (batch_id),
    decided_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outcomes_by_course ON outcomes (course_id);

-- The partition count chosen on first setup. Changing it would move courses between partitions
-- under running workers, so a worker with another count refuses to start.
CREATE TABLE topology (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    partitions  integer     NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Live workers, for ownership leases and the operator's view.
CREATE TABLE workers (
    worker_id    text        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Who owns each partition. A worker acquires a partition by bumping its epoch; every commit
-- checks the epoch in the same transaction, so a worker that lost a partition cannot write (I5).
CREATE TABLE partitions (
    partition   integer     PRIMARY KEY CHECK (partition >= 0),
    owner       text,
    epoch       bigint      NOT NULL DEFAULT 0,
    lease_until timestamptz
);
