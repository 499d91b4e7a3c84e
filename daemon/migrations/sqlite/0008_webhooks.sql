-- Webhooks: one event per placement of an inbox item in a team inbox that
-- has a webhook, written in the transaction that places the item, so a
-- restart resumes sending. The body is built at send time from the inbox
-- item; nothing here carries the CPR number or health details.
CREATE TABLE webhook_events (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    inbox              TEXT    NOT NULL,
    cursor             INTEGER NOT NULL REFERENCES inbox (cursor),
    kind               TEXT    NOT NULL,
    state              TEXT    NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    last_error         TEXT,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    UNIQUE (cursor, inbox)
);

-- Serves claiming due events.
CREATE INDEX webhook_events_due ON webhook_events (state, next_attempt_at_ms);
