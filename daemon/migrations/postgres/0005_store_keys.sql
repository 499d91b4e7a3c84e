-- Keys the store keeps for itself, wrapped (AES-256-GCM) under a
-- key-encryption key that is never stored here: today the data key that
-- encrypts envelopes at rest (see daemon/src/at_rest.rs). In the database so
-- instances sharing it agree on one key and a backup carries it.
CREATE TABLE store_keys (
    name          TEXT   PRIMARY KEY NOT NULL,
    wrapped       BYTEA  NOT NULL,
    -- Short SHA-256 digest of the key-encryption key (not secret).
    kek_id        TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
