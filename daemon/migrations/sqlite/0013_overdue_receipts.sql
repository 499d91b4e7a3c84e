-- Overdue receipts (tvaers.v1.Handled with status OVERDUE): a peer tells us
-- that nobody took our notice in time in one of its team inboxes. It is
-- kept next to the HANDLED receipt that may follow for the same team, so
-- the status is part of the key. SQLite cannot change a primary key in
-- place: the table is rebuilt with its rows.
CREATE TABLE handled_receipts_new (
    notice_id      TEXT    NOT NULL,
    from_org       TEXT    NOT NULL,
    inbox          TEXT    NOT NULL,
    status         TEXT    NOT NULL DEFAULT 'handled',
    handled        BLOB    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (notice_id, from_org, inbox, status)
);
INSERT INTO handled_receipts_new (notice_id, from_org, inbox, status, handled, received_at_ms)
    SELECT notice_id, from_org, inbox, 'handled', handled, received_at_ms FROM handled_receipts;
DROP TABLE handled_receipts;
ALTER TABLE handled_receipts_new RENAME TO handled_receipts;

-- Serves the start-up check that every escalation's overdue receipt was
-- stored for sending (see daemon/src/api/handling.rs).
CREATE INDEX inbox_placements_escalated ON inbox_placements (escalated_at_ms)
    WHERE escalated_at_ms IS NOT NULL;
