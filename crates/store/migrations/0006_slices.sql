-- Fractional (time-shared) and MIG instances, CPU-only instances, and the CPU and memory an
-- instance takes on its node (issue 9).
--
-- A whole-GPU instance still marks its GPUs in gpus.holder. A slice (a share of one GPU or a
-- MIG instance) cannot: several of them may sit on one GPU. Each slice, and each CPU-only
-- instance, has one row in instance_slices instead, naming its node and GPU (none for
-- CPU-only) and, for MIG, the first memory slice of its GPU instance.

-- What was asked for: CPU thousandths of a core and memory MiB on the node; NULL = in
-- proportion to its part of the node's GPUs.
ALTER TABLE instances ADD COLUMN cpu_milli BIGINT;
ALTER TABLE instances ADD COLUMN memory_mib BIGINT;
-- Thousandths of a GPU the instance counts as (quotas, billing); NULL = gpu_count × 1000.
ALTER TABLE instances ADD COLUMN gpu_milli BIGINT;
-- What the placement holds on each of its nodes; NULL on rows placed before this migration
-- (then the proportional default).
ALTER TABLE instances ADD COLUMN held_cpu_milli BIGINT;
ALTER TABLE instances ADD COLUMN held_memory_mib BIGINT;

CREATE TABLE instance_slices (
    instance_id  TEXT PRIMARY KEY REFERENCES instances(id),
    node_id      TEXT NOT NULL REFERENCES nodes(id),
    idx          BIGINT,
    mig_start    BIGINT
);
CREATE INDEX instance_slices_by_gpu ON instance_slices (node_id, idx);

-- Thousandths of a GPU a usage record is rated for; NULL = gpus × 1000.
ALTER TABLE usage_records ADD COLUMN gpu_milli BIGINT;
