-- Where each item stands in its team inbox's feed: a position increasing in
-- the order items were placed (received and routed, or escalated there
-- later), so a team-inbox stream resumed from a position misses no item
-- placed after it, not even an escalation of an item received long before.
-- Writers that place items take the audit table's lock first (see
-- daemon/src/store/sql.rs), so positions are assigned in commit order even
-- with several daemon instances on one database.
ALTER TABLE inbox_placements ADD COLUMN position BIGINT;

UPDATE inbox_placements SET position = numbered.position
FROM (
    SELECT cursor, inbox_name,
           ROW_NUMBER() OVER (ORDER BY cursor, inbox_name) AS position
    FROM inbox_placements
) AS numbered
WHERE inbox_placements.cursor = numbered.cursor
  AND inbox_placements.inbox_name = numbered.inbox_name;

CREATE UNIQUE INDEX inbox_placements_by_position ON inbox_placements (position);
CREATE INDEX inbox_placements_feed ON inbox_placements (inbox_name, position);
