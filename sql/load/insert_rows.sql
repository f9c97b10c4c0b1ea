-- Inserts a page's new rows into gn2pg.observation (followed by upsert_clause.sql, it also
-- rewrites the changed ones). Every array has one element per row, in the same order:
--   $1 text        the source            $2 bigint       the run
--   $3 bigint[]    keys (id_data)        $4 uuid[]       uuids (id_perm_sinp)
--   $5 jsonb[]     items                 $6 bytea[]      geometries as EWKB, NULL without one
--   $7 uuid[]      CA after mapping      $8 uuid[]       JDD after mapping
--   $9 uuid[]      CA as sent            $10 uuid[]      JDD as sent
--   $11 timestamp[] derniere_action (the source's clock)  $12 bigint[] content hashes
-- src/loader.rs replaces {pg} by the (quoted) schema of PostGIS, puts page_rows.sql after FROM
-- and, for the changed rows, upsert_clause.sql at the upsert placeholder. Returns the number of
-- rows written.
--
-- The rows inserted are counted in gn2pg.observation_count here, by (source, CA, JDD) as sent:
-- an AFTER INSERT trigger with a transition table would copy every whole row of every page
-- (about 7 % of a full harvest); RETURNING copies three columns. Rows an upsert updates are
-- counted by the UPDATE trigger (sql/dashboard.sql); `xmax = 0` tells an inserted row from an
-- updated one. This is the only statement that inserts into gn2pg.observation.
WITH written AS (
INSERT INTO gn2pg.observation AS o
       (source, id_data, uuid, item, geom, ca_uuid, jdd_uuid, source_ca_uuid, source_jdd_uuid,
        source_updated_at, updated_at, run_id, content_hash)
SELECT $1, t.id, t.uuid, t.item, {pg}.ST_GeomFromEWKB(t.geom), t.ca, t.jdd, t.source_ca, t.source_jdd,
       t.updated, now(), $2, t.hash
  FROM {rows}
{upsert}
RETURNING o.source_ca_uuid, o.source_jdd_uuid, o.xmax = '0'::pg_catalog.xid AS inserted
), counted AS (
INSERT INTO gn2pg.observation_count (source, source_ca_uuid, source_jdd_uuid, rows)
SELECT $1, w.source_ca_uuid, w.source_jdd_uuid, pg_catalog.count(*)
  FROM written w WHERE w.inserted GROUP BY w.source_ca_uuid, w.source_jdd_uuid
)
SELECT pg_catalog.count(*) FROM written
