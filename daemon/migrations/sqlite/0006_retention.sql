-- Retention: a notice body (the signed envelope, with the CPR number and
-- health details) is a transport copy, purged some days after the notice
-- was finished (outbox: delivered or failed; inbox: acknowledged). The
-- envelope column is emptied and this records when; ids, times, states and
-- receipts stay, so delivery can still be proven.
ALTER TABLE outbox ADD COLUMN purged_at_ms BIGINT;
ALTER TABLE inbox ADD COLUMN purged_at_ms BIGINT;

-- Serve the purge: only bodies still to purge are indexed, so the index
-- stays as small as the retention window however long the history grows.
CREATE INDEX outbox_unpurged
    ON outbox (finished_at_ms)
    WHERE purged_at_ms IS NULL AND state IN ('delivered', 'failed');
CREATE INDEX inbox_unpurged
    ON inbox (acked_at_ms)
    WHERE purged_at_ms IS NULL AND acked_at_ms IS NOT NULL;
