-- Unreachable nodes: a node whose agent went silent is `unreachable` (its work keeps
-- running) until it heartbeats again or the grace period ends. The state it returns to
-- when heard from again is kept here, so that a restart of the control plane does not
-- lose it; NULL while the node is not unreachable.
ALTER TABLE nodes ADD COLUMN unreachable_from TEXT;
ALTER TABLE nodes ADD COLUMN unreachable_from_reason TEXT;
