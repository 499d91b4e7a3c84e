-- Business receipts peers sent about notices we sent them: who took the
-- notice in which team (see tvaers.v1.Handled). `handled` is the encoded
-- message, opaque here; it names staff, never the citizen.
CREATE TABLE handled_receipts (
    notice_id      TEXT    NOT NULL,
    from_org       TEXT    NOT NULL,
    inbox          TEXT    NOT NULL,
    handled        BYTEA   NOT NULL,
    received_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (notice_id, from_org, inbox)
);
