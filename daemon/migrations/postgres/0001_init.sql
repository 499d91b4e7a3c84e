-- tvaers store, PostgreSQL backend: the same tables, constraints and partial
-- indexes as migrations/sqlite/0001_init.sql. Times are UTC milliseconds
-- since the Unix epoch. Envelopes and receipts are the encoded protobuf
-- bytes; the store never decodes them. Tables are created unqualified, in
-- the first schema of the connection's search_path.

-- One row per accepted submit; the idempotency key deduplicates retries.
CREATE TABLE notices (
    notice_id       TEXT   PRIMARY KEY NOT NULL,
    idempotency_key TEXT   NOT NULL UNIQUE,
    request_digest  BYTEA  NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL
);

-- One row per (notice, recipient). `seq` is the submission order over the
-- whole outbox; an identity column, so a seq is never reused.
CREATE TABLE outbox (
    seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notice_id          TEXT   NOT NULL REFERENCES notices (notice_id),
    recipient          TEXT   NOT NULL,
    envelope           BYTEA  NOT NULL,
    state              TEXT   NOT NULL
        CHECK (state IN ('pending', 'in_flight', 'delivered', 'failed')),
    attempts           BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at_ms BIGINT NOT NULL,
    last_error         TEXT,
    finished_at_ms     BIGINT,
    receipt            BYTEA,
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
    cursor         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender         TEXT   NOT NULL,
    notice_id      TEXT   NOT NULL,
    envelope       BYTEA  NOT NULL,
    received_at_ms BIGINT NOT NULL,
    receipt        BYTEA  NOT NULL,
    acked_at_ms    BIGINT,
    UNIQUE (sender, notice_id)
);

-- Serves `inbox_after(.., unacked_only = true)` once most items are acked.
CREATE INDEX inbox_unacked
    ON inbox (cursor)
    WHERE acked_at_ms IS NULL;
