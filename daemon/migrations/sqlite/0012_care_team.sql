-- The care-team view: per citizen, the latest contact this site learned
-- per (organisation, unit) from handled receipts and plan changes. Keyed
-- by the citizen's keyed reference (an HMAC, as in audit_log), never the
-- CPR number; `contact` is the encoded tvaers.v1.CareTeamMember, sealed by
-- the daemon (store/sealed.rs). `as_of_ms` is when the contact held at its
-- source: a row is only replaced by one at least as recent.
CREATE TABLE care_team (
    citizen_ref   BLOB    NOT NULL,
    org           TEXT    NOT NULL,
    unit          TEXT    NOT NULL,
    contact       BLOB    NOT NULL,
    as_of_ms      INTEGER NOT NULL,
    learned_at_ms INTEGER NOT NULL,
    notice_id     TEXT    NOT NULL,
    PRIMARY KEY (citizen_ref, org, unit)
);
-- A correction withdraws what its notice taught, by notice id.
CREATE INDEX care_team_by_notice ON care_team (notice_id);
