-- The audit log (see daemon/src/audit.rs): append-only, one row per event,
-- each row's MAC covering its fields and the previous row's MAC. `seq` is
-- assigned by the writer (last + 1) because it is part of what the MAC
-- covers. `citizen_ref` is an HMAC of the CPR number, never the number.
CREATE TABLE audit_log (
    seq         BIGINT  PRIMARY KEY NOT NULL,
    at_ms       BIGINT  NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    notice_id   TEXT,
    peer        TEXT,
    citizen_ref BYTEA,
    detail      TEXT    NOT NULL,
    prev_mac    BYTEA   NOT NULL,
    mac         BYTEA   NOT NULL
);

-- Serve `tvaers audit citizen`: entries with the reference, then every
-- entry about the same notices.
CREATE INDEX audit_log_citizen ON audit_log (citizen_ref) WHERE citizen_ref IS NOT NULL;
CREATE INDEX audit_log_notice ON audit_log (notice_id) WHERE notice_id IS NOT NULL;
