-- Team inboxes: each accepted notice is placed in one or more named inboxes
-- of this organisation by the routing rules, and goes through new → read →
-- handled in each of them. `handling` is the encoded tvaers.v1 handling
-- record (handler's contact and note), kept opaque like envelopes.
CREATE TABLE inbox_placements (
    cursor        BIGINT  NOT NULL REFERENCES inbox (cursor),
    inbox_name    TEXT    NOT NULL,
    read_by       TEXT,
    read_at_ms    BIGINT,
    handled_by    TEXT,
    handled_at_ms BIGINT,
    handling      BYTEA,
    PRIMARY KEY (cursor, inbox_name)
);

-- Serves listing and streaming one team inbox in cursor order.
CREATE INDEX inbox_placements_by_inbox ON inbox_placements (inbox_name, cursor);

-- Items received before routing existed belong to the default inbox.
INSERT INTO inbox_placements (cursor, inbox_name) SELECT cursor, 'main' FROM inbox;
