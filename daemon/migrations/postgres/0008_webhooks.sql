-- Webhooks: one event per placement of an inbox item in a team inbox that
-- has a webhook, written in the transaction that places the item, so a
-- restart resumes sending. The body is built at send time from the inbox
-- item; nothing here carries the CPR number or health details.
CREATE TABLE webhook_events (
    id                 BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    inbox              TEXT    NOT NULL,
    cursor             BIGINT  NOT NULL REFERENCES inbox (cursor),
    kind               TEXT    NOT NULL,
    state              TEXT    NOT NULL,
    attempts           BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT  NOT NULL,
    last_error         TEXT,
    created_at_ms      BIGINT  NOT NULL,
    updated_at_ms      BIGINT  NOT NULL,
    UNIQUE (cursor, inbox)
);

-- Serves claiming due events.
CREATE INDEX webhook_events_due ON webhook_events (state, next_attempt_at_ms);
