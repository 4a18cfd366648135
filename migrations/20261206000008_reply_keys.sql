-- The address each outcome's final answer went to, as a fingerprint of its reply queue and
-- correlation id: a redelivered copy of a request skips a final answer the broker already
-- confirmed only when it asks at that same address. A client that lost its reply queue and
-- published the request again under its id, to a new queue, is answered there. Outcomes
-- written before this column have none: a redelivery of theirs that asks at an address is
-- answered again (a client keys answers by request id).
ALTER TABLE outcomes ADD COLUMN reply_key bigint;

-- The answers view of 20261205000005_student_seats.sql, with the address's fingerprint.
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
       CASE WHEN d.outcome IS NULL THEN o.rule END AS rule,
       o.reply_key
  FROM outcomes o
  LEFT JOIN draw_entries d
    ON d.request_id = o.request_id AND d.course_id = o.course_id AND d.outcome IS NOT NULL;
