-- Leadership of the allocator among control-plane replicas (issue "Run it for real").
-- One row per lease. `epoch` grows with every change of holder and fences the writes of a
-- deposed holder; `generation` counts the holder's committed write transactions, so that
-- other replicas know when their in-memory copy is stale.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    holder_url TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    generation BIGINT NOT NULL
);
INSERT INTO leases (name, holder, holder_url, epoch, expires_at, generation)
VALUES ('allocator', '', '', 0, 0, 0);
