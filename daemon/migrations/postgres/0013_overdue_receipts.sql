-- Overdue receipts (tvaers.v1.Handled with status OVERDUE): a peer tells us
-- that nobody took our notice in time in one of its team inboxes. It is
-- kept next to the HANDLED receipt that may follow for the same team, so
-- the status is part of the key.
ALTER TABLE handled_receipts ADD COLUMN status TEXT NOT NULL DEFAULT 'handled';
ALTER TABLE handled_receipts DROP CONSTRAINT handled_receipts_pkey;
ALTER TABLE handled_receipts ADD PRIMARY KEY (notice_id, from_org, inbox, status);

-- Serves the start-up check that every escalation's overdue receipt was
-- stored for sending (see daemon/src/api/handling.rs).
CREATE INDEX inbox_placements_escalated ON inbox_placements (escalated_at_ms)
    WHERE escalated_at_ms IS NOT NULL;
