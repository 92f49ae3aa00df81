-- Planned maintenance windows over nodes.

CREATE TABLE maintenance_windows (
    id                  TEXT PRIMARY KEY,
    reason              TEXT NOT NULL,
    block               TEXT,
    -- JSON array of [node id, node name] pairs.
    nodes               TEXT NOT NULL,
    start_at            BIGINT NOT NULL,
    end_at              BIGINT NOT NULL,
    state               TEXT NOT NULL,
    notified_instances  BIGINT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX maintenance_by_state ON maintenance_windows (state, start_at);
