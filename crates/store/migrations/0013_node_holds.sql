-- Whole nodes held by a multi-node instance (a gang, or GPUs over several whole nodes): one
-- row per node instead of `gpus.holder` on each of its GPUs, so that a 1,024-node gang
-- writes, reads and releases 1,024 rows rather than 8,192. A GPU is held through its own
-- row (`gpus.holder`, or a slice in `instance_slices`) or through its node's row here, never
-- both: every statement that takes GPUs checks the other places first. No foreign key to
-- nodes: PostgreSQL would check it row by row (6 ms of a 1,024-node gang's launch), and a
-- fleet import refuses to remove a node that is held.
CREATE TABLE node_holds (
    node_id TEXT PRIMARY KEY,
    holder  TEXT NOT NULL
);
CREATE INDEX node_holds_by_holder ON node_holds (holder);
