-- Fleet inventory, tenancy, keys, audit trail and idempotency records.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL. Ids are prefixed text, times are
-- microseconds since the Unix epoch (BIGINT), money is micro-dollars (BIGINT), flags are 0/1.

CREATE TABLE gpu_models (
    name        TEXT PRIMARY KEY,
    vendor      TEXT NOT NULL,
    memory_gib  BIGINT NOT NULL,
    tdp_watts   BIGINT NOT NULL,
    builtin     BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

CREATE TABLE sites (
    id                     TEXT PRIMARY KEY,
    name                   TEXT NOT NULL UNIQUE,
    region                 TEXT NOT NULL,
    kind                   TEXT NOT NULL,
    power_budget_watts     BIGINT NOT NULL,
    pue_milli              BIGINT NOT NULL,
    energy_micros_per_mwh  BIGINT NOT NULL,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL
);

CREATE TABLE blocks (
    id          TEXT PRIMARY KEY,
    site_id     TEXT NOT NULL REFERENCES sites(id),
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    parent_id   TEXT REFERENCES blocks(id),
    path        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (site_id, name)
);

CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    site_id     TEXT NOT NULL REFERENCES sites(id),
    block_id    TEXT REFERENCES blocks(id),
    block_path  TEXT NOT NULL,
    gpu_model   TEXT NOT NULL REFERENCES gpu_models(name),
    gpu_count   BIGINT NOT NULL,
    cpu_cores   BIGINT NOT NULL,
    ram_gib     BIGINT NOT NULL,
    idle_watts  BIGINT NOT NULL,
    peak_watts  BIGINT NOT NULL,
    state       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX nodes_by_site_name ON nodes (site_id, name);
CREATE INDEX nodes_by_site_path ON nodes (site_id, block_path, name);
CREATE INDEX nodes_by_model ON nodes (gpu_model, name);

-- One row per GPU. `holder` names what the GPU is allocated to (an instance, later); a node
-- with a held GPU cannot be removed or reshaped by a fleet import.
CREATE TABLE gpus (
    node_id  TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    idx      BIGINT NOT NULL,
    uuid     TEXT,
    health   TEXT NOT NULL,
    holder   TEXT,
    PRIMARY KEY (node_id, idx)
);

CREATE TABLE tenants (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    display_name         TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    status               TEXT NOT NULL,
    credit_limit_micros  BIGINT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    tenant_id     TEXT REFERENCES tenants(id),
    prefix        TEXT NOT NULL UNIQUE,
    secret_hash   TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id);

CREATE TABLE events (
    id             TEXT PRIMARY KEY,
    at             BIGINT NOT NULL,
    actor_key_id   TEXT,
    tenant_id      TEXT,
    action         TEXT NOT NULL,
    resource_kind  TEXT NOT NULL,
    resource_id    TEXT NOT NULL,
    before_json    TEXT,
    after_json     TEXT
);
CREATE INDEX events_by_tenant ON events (tenant_id, id);
CREATE INDEX events_by_resource ON events (resource_id, id);

-- A create retried with the same Idempotency-Key (per API key) returns the stored response.
CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    idem_key     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    status       BIGINT NOT NULL,
    body         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);

CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
