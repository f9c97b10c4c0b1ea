-- gn2pg 0.1.0 -> 0.2.0: pages are diffed against a content hash, so unchanged rows are not
-- rewritten without comparing them column by column; a uuid is stored once across sources.
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

-- One row per SINP permanent id across sources, checked at commit (see sql/schema.sql). 0.1.0
-- refused such duplicates too, but two sources harvested at once could both store a uuid: if
-- that happened, the plain index stays, gn2pg keeps checking uuids before writing, and the
-- warning says how to find the duplicates.
DO $$
DECLARE
    duplicated bigint;
BEGIN
    SELECT count(*) INTO duplicated
      FROM (SELECT uuid FROM gn2pg.observation WHERE uuid IS NOT NULL GROUP BY uuid HAVING count(*) > 1) d;
    IF duplicated = 0 THEN
        DROP INDEX gn2pg.observation_uuid_idx;
        ALTER TABLE gn2pg.observation
            ADD CONSTRAINT observation_uuid_key UNIQUE (uuid) DEFERRABLE INITIALLY DEFERRED;
    ELSE
        RAISE WARNING 'gn2pg: % uuids are stored under several keys, so gn2pg.observation.uuid is not made unique', duplicated
              USING HINT = 'List them with: SELECT uuid, array_agg(source || '':'' || id_data) FROM gn2pg.observation '
                        || 'GROUP BY uuid HAVING count(*) > 1; once resolved, run: ALTER TABLE gn2pg.observation ADD CONSTRAINT '
                        || 'observation_uuid_key UNIQUE (uuid) DEFERRABLE INITIALLY DEFERRED; DROP INDEX gn2pg.observation_uuid_idx;';
    END IF;
END
$$;
