-- Escalation of team-inbox items whose handling deadline passed (see
-- daemon/src/escalation.rs): the notice kind a deadline rule matches on,
-- when the item was placed in the inbox (NULL: when it was received), and
-- whether and from where it was escalated.
ALTER TABLE inbox_placements ADD COLUMN kind TEXT NOT NULL DEFAULT '';
ALTER TABLE inbox_placements ADD COLUMN placed_at_ms BIGINT;
ALTER TABLE inbox_placements ADD COLUMN escalated_at_ms BIGINT;
ALTER TABLE inbox_placements ADD COLUMN escalated_from TEXT;

-- Serves the escalation driver: items neither handled nor escalated.
CREATE INDEX inbox_placements_open ON inbox_placements (inbox_name, cursor)
    WHERE handled_at_ms IS NULL AND escalated_at_ms IS NULL;
