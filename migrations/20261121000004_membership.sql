-- Membership and the operator's view: what each owner holds unacked per partition, reported
-- with every heartbeat, and how many partitions each worker should own once settled.
ALTER TABLE partitions
    ADD COLUMN unacked     integer NOT NULL DEFAULT 0 CHECK (unacked >= 0),
    ADD COLUMN acquired_at timestamptz;

-- Live workers are found by heartbeat.
CREATE INDEX workers_heartbeat ON workers (heartbeat_at);
