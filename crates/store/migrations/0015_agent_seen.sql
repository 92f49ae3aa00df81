-- When each node's agent was last heard from by a replica that does not lead. Followers
-- answer heartbeats without news themselves and write here in batches; the leader reads the
-- rows of the nodes it has not heard from directly before it counts one as silent. No
-- foreign key: a row of a removed node is harmless and rewritten on the next heartbeat.
CREATE TABLE agent_seen (
    node_id TEXT PRIMARY KEY,
    seen_at BIGINT NOT NULL
);
