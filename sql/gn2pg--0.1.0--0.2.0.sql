-- gn2pg 0.1.0 -> 0.2.0: pages are diffed against a content hash, so unchanged rows are not
-- rewritten without comparing them column by column.
--
-- Rows harvested by 0.1.0 have no hash yet: the first run after the update rewrites each of
-- them once (counted in rows_upserted), and compares hashes from then on.

ALTER TABLE gn2pg.observation ADD COLUMN content_hash bigint;
COMMENT ON COLUMN gn2pg.observation.content_hash IS
    'Hash of what was stored from the source (item, geometry, CA, JDD); rows with an equal hash are not rewritten.';

-- Compares gn2pg's Rust jsonb encoder with jsonb_in for one document (src/diagnostics.rs).
CREATE FUNCTION gn2pg."_jsonb_selftest"("doc" TEXT) RETURNS TEXT
STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_jsonb_selftest_wrapper';
