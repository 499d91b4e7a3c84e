-- One row the readiness probe (`/readyz`) rewrites: a store that cannot
-- commit a write is not ready, whatever it still answers to reads.
CREATE TABLE write_probe (
    id             INTEGER PRIMARY KEY,
    probed_at_ms   BIGINT  NOT NULL
);
