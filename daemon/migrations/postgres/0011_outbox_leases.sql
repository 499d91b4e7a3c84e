-- Several daemon instances of one organisation share one store. Outbox work
-- is split into shards (a stable function of the citizen, see
-- src/lease.rs); an instance sends only the rows of shards it holds a
-- lease on, so all notices about one citizen are sent by one instance, in
-- order. Rows stored before this migration belong to shard 0.
ALTER TABLE outbox ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;

-- Serves the poll for undelivered rows of the shards an instance holds.
CREATE INDEX outbox_open_by_shard
    ON outbox (recipient, shard, seq)
    WHERE state IN ('pending', 'in_flight');

-- One row per shard somebody holds or held: its owner (an instance id) and
-- until when. An expired lease may be claimed by any instance.
CREATE TABLE outbox_leases (
    shard         INTEGER PRIMARY KEY NOT NULL,
    owner         TEXT    NOT NULL,
    expires_at_ms BIGINT  NOT NULL
);

-- Instances alive (heartbeat renewed with their leases), so each can work
-- out its fair share of the shards.
CREATE TABLE store_instances (
    instance_id   TEXT   PRIMARY KEY NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
