-- Delivery: what runs for an instance on its nodes, how the tenant reaches it, and the
-- tenant's SSH keys.

-- JSON {"delivery": {...}, "ssh_key_names": [...], "authorized_keys": [...]} fixed at
-- launch; NULL for a bare allocation.
ALTER TABLE instances ADD COLUMN delivery TEXT;
-- JSON {"host": ..., "port": ..., "user": ...} once the agent reports it running.
ALTER TABLE instances ADD COLUMN access TEXT;
-- For a stopping instance: the state it ends in once its agents confirm the stop.
ALTER TABLE instances ADD COLUMN ends_as TEXT;

CREATE TABLE ssh_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id),
    name         TEXT NOT NULL,
    public_key   TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
