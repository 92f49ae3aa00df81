-- Gang repair: what happens to a running instance when one of its nodes fails.

-- `fail`, `replace` or `shrink`; NULL (rows from before) reads as the shape's default:
-- `replace` for gangs, `fail` for everything else.
ALTER TABLE instances ADD COLUMN on_node_failure TEXT;
