-- tvaers store, SQLite backend: notices we submitted, their per-recipient
-- outbox rows, and the inbox of notices peers sent us. Times are UTC
-- milliseconds since the Unix epoch. Envelopes and receipts are the encoded
-- protobuf bytes; the store never decodes them.

-- One row per accepted submit; the idempotency key deduplicates retries.
CREATE TABLE notices (
    notice_id       TEXT    PRIMARY KEY NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,
    request_digest  BLOB    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL
);

-- One row per (notice, recipient). `seq` is the submission order over the
-- whole outbox; AUTOINCREMENT so a seq is never reused.
CREATE TABLE outbox (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    notice_id          TEXT    NOT NULL REFERENCES notices (notice_id),
    recipient          TEXT    NOT NULL,
    envelope           BLOB    NOT NULL,
    state              TEXT    NOT NULL
        CHECK (state IN ('pending', 'in_flight', 'delivered', 'failed')),
    attempts           INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at_ms INTEGER NOT NULL,
    last_error         TEXT,
    finished_at_ms     INTEGER,
    receipt            BLOB,
    UNIQUE (notice_id, recipient)
);

-- Serves `undelivered(recipient)`: only rows still to deliver are indexed,
-- so the index stays small however long the outbox history grows.
CREATE INDEX outbox_undelivered
    ON outbox (recipient, seq)
    WHERE state IN ('pending', 'in_flight');

-- Notices peers sent us, unique on (sender, notice id) so a resend is
-- answered with the first copy's receipt instead of being stored twice.
CREATE TABLE inbox (
    cursor         INTEGER PRIMARY KEY AUTOINCREMENT,
    sender         TEXT    NOT NULL,
    notice_id      TEXT    NOT NULL,
    envelope       BLOB    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    receipt        BLOB    NOT NULL,
    acked_at_ms    INTEGER,
    UNIQUE (sender, notice_id)
);

-- Serves `inbox_after(.., unacked_only = true)` once most items are acked.
CREATE INDEX inbox_unacked
    ON inbox (cursor)
    WHERE acked_at_ms IS NULL;
