-- Instances (allocations tenants run), contracts (reserved capacity) and quotas.
-- A GPU's `holder` (table gpus) names the instance that holds it: assignment and state
-- change commit together, and the allocator is rebuilt from these rows at start.

CREATE TABLE instances (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants(id),
    name               TEXT,
    class              TEXT NOT NULL,
    gpu_model          TEXT NOT NULL,
    shape_kind         TEXT NOT NULL,
    shape_gpus         BIGINT,
    shape_count        BIGINT,
    shape_level        TEXT,
    gpu_count          BIGINT NOT NULL,
    requested_site_id  TEXT,
    site_id            TEXT,
    contract_id        TEXT,
    state              TEXT NOT NULL,
    reason             TEXT,
    created_at         BIGINT NOT NULL,
    started_at         BIGINT,
    ended_at           BIGINT,
    preempt_at         BIGINT,
    wait_until         BIGINT
);
CREATE INDEX instances_by_tenant ON instances (tenant_id, id);
CREATE INDEX instances_by_state ON instances (state, id);
CREATE INDEX gpus_by_holder ON gpus (holder) WHERE holder IS NOT NULL;

CREATE TABLE contracts (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants(id),
    gpu_model      TEXT NOT NULL,
    gpu_count      BIGINT NOT NULL,
    site_id        TEXT NOT NULL REFERENCES sites(id),
    block_level    TEXT,
    start_at       BIGINT NOT NULL,
    end_at         BIGINT NOT NULL,
    rate_micros    BIGINT NOT NULL,
    sla_milli      BIGINT NOT NULL,
    state          TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX contracts_by_tenant ON contracts (tenant_id, id);

ALTER TABLE nodes ADD COLUMN pool_contract_id TEXT;
-- An operator's power cap below the budget (demand response, a failed feed); none = the budget.
ALTER TABLE sites ADD COLUMN power_cap_watts BIGINT;
CREATE INDEX nodes_by_pool ON nodes (pool_contract_id);

CREATE TABLE quotas (
    tenant_id  TEXT NOT NULL REFERENCES tenants(id),
    gpu_model  TEXT NOT NULL,
    class      TEXT NOT NULL,
    max_gpus   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, gpu_model, class)
);
