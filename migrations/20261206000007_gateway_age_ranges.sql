-- The gateway prunes its keys and events by age, a few times an hour, while it inserts them by
-- the thousand a second in a rush. Both tables are filled in time order, so a BRIN index
-- (a few pages, one summary per range of blocks) finds the old rows as well as a B-tree did,
-- without a B-tree insert per row.
DROP INDEX gateway_keys_by_age;
CREATE INDEX gateway_keys_by_age ON gateway_keys USING brin (accepted_at);
DROP INDEX student_events_by_age;
CREATE INDEX student_events_by_age ON student_events USING brin (recorded_at);
