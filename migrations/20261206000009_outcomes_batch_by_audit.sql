-- Each outcome's batch is no longer checked by a foreign key: the check ran once per inserted
-- outcome (a lookup and a lock of the batch row) and cost about two fifths of the group
-- commit's insert, its largest statement. The batch row and its outcomes are written by the
-- same commit, in the same transaction, one statement apart, and batches are never deleted;
-- the audit's `batch_log_mismatch` compares every batch's recorded count with its outcomes, so
-- an outcome naming a batch that does not exist is still found.
ALTER TABLE outcomes DROP CONSTRAINT outcomes_batch_id_fkey;
