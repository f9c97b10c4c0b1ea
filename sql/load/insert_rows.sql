-- Inserts a page's new rows into gn2pg.observation (followed by upsert_clause.sql, it also
-- rewrites the changed ones). Every array has one element per row, in the same order:
--   $1 text        the source            $2 bigint       the run
--   $3 bigint[]    keys (id_data)        $4 uuid[]       uuids (id_perm_sinp)
--   $5 jsonb[]     items                 $6 bytea[]      geometries as EWKB, NULL without one
--   $7 uuid[]      CA after mapping      $8 uuid[]       JDD after mapping
--   $9 uuid[]      CA as sent            $10 uuid[]      JDD as sent
--   $11 timestamp[] derniere_action (the source's clock)  $12 bigint[] content hashes
-- src/loader.rs replaces {pg} by the (quoted) schema of PostGIS and puts page_rows.sql after FROM.
INSERT INTO gn2pg.observation AS o
       (source, id_data, uuid, item, geom, ca_uuid, jdd_uuid, source_ca_uuid, source_jdd_uuid,
        source_updated_at, updated_at, run_id, content_hash)
SELECT $1, t.id, t.uuid, t.item, {pg}.ST_GeomFromEWKB(t.geom), t.ca, t.jdd, t.source_ca, t.source_jdd,
       t.updated, now(), $2, t.hash
  FROM {rows}
