-- The addresses a replayed outcome's final answer was confirmed at. A request id published
-- twice (a client that retried under a new correlation id, or a duplicate in flight) is
-- decided once, by the copy whose address the outcome keeps in `reply_key`; the other copy
-- is answered from the stored outcome, at its own address. When the worker dies after that
-- answer's confirm and before its ack, the broker redelivers the copy: without a record of
-- its address it would be answered a second time.
--
-- Written only for replays, so a rush of distinct requests writes nothing here. A hint like
-- `decision_batches.answered`: if a record is lost, the copy is answered again with the same
-- outcome.
CREATE TABLE answered_copies (
    request_id text NOT NULL,
    reply_key bigint NOT NULL,
    PRIMARY KEY (request_id, reply_key)
);
