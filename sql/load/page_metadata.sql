-- The CA and JDD named by a page's rows, upserted into gn2pg.metadata. Arrays by position:
--   $1 text: the source. $2 bigint: the run.
--   $3 text[]: level ('ca' or 'jdd'). $4 uuid[]: uuid. $5 text[]: name (ca_nom, jdd_nom), or NULL.
--   $6 uuid[]: the CA of a JDD, or NULL. $7 jsonb[]: the ca_data / jdd_data object, or NULL.
-- src/loader.rs puts metadata_upsert_clause.sql at the end.
INSERT INTO gn2pg.metadata AS m (source, level, uuid, name, parent_uuid, item, run_id)
SELECT $1, t.level, t.uuid, t.name, t.parent, t.item, $2
  FROM unnest($3::text[], $4::uuid[], $5::text[], $6::uuid[], $7::jsonb[]) AS t(level, uuid, name, parent, item)
{meta_upsert}
