-- Health: node agents, GPU inventory and telemetry, the health event history, operator
-- overrides of the XID policy, and outages of contracted capacity.

-- A node-agent key may be bound to one node; an unbound node-agent key only enrolls agents.
ALTER TABLE api_keys ADD COLUMN node_id TEXT;
CREATE INDEX api_keys_by_node ON api_keys (node_id) WHERE node_id IS NOT NULL;

-- What the node's agent last said, and the lifecycle bookkeeping.
ALTER TABLE nodes ADD COLUMN agent_json TEXT;
ALTER TABLE nodes ADD COLUMN agent_registered_at BIGINT;
ALTER TABLE nodes ADD COLUMN last_heartbeat_at BIGINT;
ALTER TABLE nodes ADD COLUMN agent_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN state_reason TEXT;
ALTER TABLE nodes ADD COLUMN state_since BIGINT;
ALTER TABLE nodes ADD COLUMN burn_in_id TEXT;
ALTER TABLE nodes ADD COLUMN burn_in_passed_at BIGINT;
-- Latest telemetry of the node's GPUs (JSON array of GpuSample), written in batches with
-- last_heartbeat_at, not on every heartbeat.
ALTER TABLE nodes ADD COLUMN telemetry_json TEXT;
CREATE INDEX nodes_by_state ON nodes (state);

ALTER TABLE gpus ADD COLUMN serial TEXT;
ALTER TABLE gpus ADD COLUMN pci_bus_id TEXT;
ALTER TABLE gpus ADD COLUMN product TEXT;
-- Partial: until agents report, every UUID is NULL, and a full index would look useless to
-- the planner's statistics.
CREATE INDEX gpus_by_uuid ON gpus (uuid) WHERE uuid IS NOT NULL;

-- Every health fact about a GPU or node, keyed by the GPU's UUID so that its history follows
-- it through repair and RMA into whatever node it lands in.
CREATE TABLE health_events (
    id          TEXT PRIMARY KEY,
    at          BIGINT NOT NULL,
    node_id     TEXT NOT NULL,
    gpu_uuid    TEXT,
    gpu_index   BIGINT,
    kind        TEXT NOT NULL,
    code        BIGINT,
    action      TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX health_events_by_node ON health_events (node_id, id);
CREATE INDEX health_events_by_gpu ON health_events (gpu_uuid, id);

-- Operator overrides of the built-in XID policy.
CREATE TABLE health_rules (
    code        BIGINT PRIMARY KEY,
    action      TEXT NOT NULL,
    note        TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Contracted capacity out of service: opened when a pool node fails, closed when a spare
-- replaces it or it returns; a closed outage becomes a downtime row for SLA credits.
CREATE TABLE outages (
    id           TEXT PRIMARY KEY,
    contract_id  TEXT NOT NULL REFERENCES contracts(id),
    node_id      TEXT NOT NULL,
    gpus         BIGINT NOT NULL,
    start_at     BIGINT NOT NULL,
    end_at       BIGINT,
    reason       TEXT NOT NULL
);
CREATE INDEX outages_open ON outages (contract_id) WHERE end_at IS NULL;
