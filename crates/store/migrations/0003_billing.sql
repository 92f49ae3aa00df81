-- Billing: the price book, the usage ledger, operator-entered downtime and invoices.

-- Prices per GPU-hour in micro-dollars. site_key is '' for "all sites" so that the unique
-- constraint treats it as a value on both backends (NULLs never conflict).
CREATE TABLE prices (
    gpu_model       TEXT NOT NULL,
    site_key        TEXT NOT NULL,
    kind            TEXT NOT NULL,
    price_micros    BIGINT NOT NULL,
    effective_from  BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (gpu_model, site_key, kind, effective_from)
);

-- Spot prices as recomputed from utilization, each valid from its time until the next.
CREATE TABLE spot_prices (
    gpu_model       TEXT NOT NULL,
    site_id         TEXT NOT NULL,
    effective_from  BIGINT NOT NULL,
    price_micros    BIGINT NOT NULL,
    PRIMARY KEY (gpu_model, site_id, effective_from)
);

-- The ledger: append-only, one row per metered interval; (instance_id, start_at) makes a
-- replayed state change add nothing.
CREATE TABLE usage_records (
    instance_id    TEXT NOT NULL,
    start_at       BIGINT NOT NULL,
    end_at         BIGINT NOT NULL,
    tenant_id      TEXT NOT NULL,
    class          TEXT NOT NULL,
    gpu_model      TEXT NOT NULL,
    site_id        TEXT NOT NULL,
    contract_id    TEXT,
    gpus           BIGINT NOT NULL,
    month          TEXT NOT NULL,
    gpu_seconds    BIGINT NOT NULL,
    rate_micros    BIGINT NOT NULL,
    amount_micros  BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (instance_id, start_at)
);
CREATE INDEX usage_by_tenant_month ON usage_records (tenant_id, month);
CREATE INDEX usage_by_month ON usage_records (month);

-- How far each instance has been metered (month closes meter running instances).
ALTER TABLE instances ADD COLUMN metered_until BIGINT;

CREATE TABLE downtime (
    id           TEXT PRIMARY KEY,
    contract_id  TEXT NOT NULL REFERENCES contracts(id),
    start_at     BIGINT NOT NULL,
    end_at       BIGINT NOT NULL,
    gpus         BIGINT NOT NULL,
    note         TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX downtime_by_contract ON downtime (contract_id, start_at);

CREATE TABLE invoices (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id),
    month                TEXT NOT NULL,
    state                TEXT NOT NULL,
    total_micros         BIGINT NOT NULL,
    shadow_total_micros  BIGINT NOT NULL,
    lines_json           TEXT NOT NULL,
    created_at           BIGINT NOT NULL,
    finalized_at         BIGINT,
    UNIQUE (tenant_id, month)
);
