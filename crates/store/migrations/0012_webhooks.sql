-- Webhooks: URLs subscribed to events, and the log of deliveries to them.

-- Events are numbered in commit order (NULL for those written before this migration):
-- webhooks receive them in this order.
ALTER TABLE events ADD COLUMN seq BIGINT;
CREATE INDEX events_by_seq ON events (seq);

CREATE TABLE webhooks (
    id               TEXT PRIMARY KEY,
    -- NULL: an operator webhook, which receives every event.
    tenant_id        TEXT REFERENCES tenants(id),
    url              TEXT NOT NULL,
    -- The HMAC key deliveries are signed with (it has to be read back to sign).
    secret           TEXT NOT NULL,
    -- JSON array of action patterns: `instance.failed`, `instance.*`, `*`.
    events           TEXT NOT NULL,
    -- It receives events numbered after this (those committed after it was created).
    after_seq        BIGINT NOT NULL,
    -- When its oldest pending delivery is due; NULL when nothing is pending.
    next_attempt_at  BIGINT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX webhooks_by_tenant ON webhooks (tenant_id);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at);

-- One row per event and webhook: pending until delivered or given up.
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_seq        BIGINT NOT NULL,
    event_action     TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    next_attempt_at  BIGINT,
    last_attempt_at  BIGINT,
    last_status      BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    UNIQUE (webhook_id, event_seq)
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook_id, state, event_seq);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at);
