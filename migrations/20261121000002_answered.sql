-- Whether the final answers of a batch were confirmed by the broker. A request the broker
-- redelivers (after a worker stopped or crashed between answering and acking) whose batch was
-- answered is then acked without a second final answer; a client that re-publishes the same
-- request id still gets the stored outcome again. One row per batch, not per request, so
-- recording it costs one small update per commit.
ALTER TABLE decision_batches ADD COLUMN answered boolean NOT NULL DEFAULT false;
