-- One page of a metadata export (option metadata_export_id, GN2PG's metadata_only view) into
-- gn2pg.metadata in one statement; bad entries go to gn2pg.run_error. Returns the number of CA
-- items in the page, of CA and JDD rows inserted or changed, and of entries rejected.
--   $1 text: the page's body. $2 text: the source. $3 bigint: the run.
--   $4 text: the key column (option metadata_key_column). $5 boolean: items are a FeatureCollection.
-- src/loader.rs replaces {uuid_re} by the uuid regular expression and puts
-- metadata_upsert_clause.sql in the written CTE.
WITH doc AS (
    SELECT $1::jsonb AS j
), elems AS (
    SELECT t.ord, CASE WHEN $5 THEN t.e -> 'properties' ELSE t.e END AS p
      FROM doc,
           jsonb_array_elements(CASE WHEN $5 THEN doc.j -> 'items' -> 'features'
                                     ELSE doc.j -> 'items' END) WITH ORDINALITY AS t(e, ord)
), cas AS (
    SELECT e.ord, e.p,
           CASE WHEN jsonb_typeof(e.p -> $4) IN ('number', 'string') AND (e.p ->> $4) ~ '^-?[0-9]{1,18}$'
                THEN (e.p ->> $4)::bigint END AS id_data,
           coalesce(e.p ->> 'ca_uuid', e.p -> 'ca_data' ->> 'uuid') AS uuid_text
      FROM elems e
), entries AS (
    SELECT c.ord, 0::bigint AS sub, 'ca'::text AS level, c.id_data, c.p AS raw, c.uuid_text,
           coalesce(c.p ->> 'ca_nom', c.p -> 'ca_data' ->> 'name') AS name,
           NULL::text AS parent_text,
           CASE WHEN jsonb_typeof(c.p -> 'ca_data') = 'object' THEN c.p -> 'ca_data' END AS item
      FROM cas c
    UNION ALL
    SELECT c.ord, d.ord, 'jdd', c.id_data, d.e,
           coalesce(d.e ->> 'jdd_uuid', d.e -> 'jdd_data' ->> 'uuid'),
           coalesce(d.e ->> 'jdd_nom', d.e -> 'jdd_data' ->> 'name'),
           c.uuid_text,
           CASE WHEN jsonb_typeof(d.e -> 'jdd_data') = 'object' THEN d.e -> 'jdd_data' END
      FROM cas c
     CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(c.p -> 'datasets') = 'array'
                                                  THEN c.p -> 'datasets' ELSE '[]'::jsonb END)
                        WITH ORDINALITY AS d(e, ord)
), typed AS (
    SELECT x.*,
           CASE WHEN x.uuid_text ~ {uuid_re} THEN x.uuid_text::uuid END AS uuid,
           CASE WHEN x.parent_text ~ {uuid_re} THEN x.parent_text::uuid END AS parent,
           CASE WHEN jsonb_typeof(x.raw) IS DISTINCT FROM 'object'
                     THEN CASE x.level WHEN 'ca' THEN 'item' ELSE 'dataset entry' END || ' is not a JSON object'
                WHEN x.uuid_text IS NULL
                     THEN CASE x.level WHEN 'ca' THEN 'missing acquisition framework uuid (ca_uuid)'
                                       ELSE 'missing dataset uuid (jdd_uuid)' END
                WHEN NOT (x.uuid_text ~ {uuid_re})
                     THEN format('invalid %s uuid %s',
                                 CASE x.level WHEN 'ca' THEN 'acquisition framework' ELSE 'dataset' END,
                                 left(x.uuid_text, 80))
           END AS reason
      FROM entries x
), rejected AS (
    INSERT INTO gn2pg.run_error (run_id, source, id_data, uuid, item, error)
    SELECT $3, $2, t.id_data, t.uuid_text, t.raw, 'metadata export: ' || t.reason
      FROM typed t WHERE t.reason IS NOT NULL
    RETURNING 1
), picked AS (
    SELECT DISTINCT ON (t.level, t.uuid) t.*
      FROM typed t WHERE t.reason IS NULL ORDER BY t.level, t.uuid, t.ord DESC, t.sub DESC
), written AS (
    INSERT INTO gn2pg.metadata AS m (source, level, uuid, name, parent_uuid, item, run_id)
    SELECT $2, p.level, p.uuid, p.name, p.parent, p.item, $3 FROM picked p
    {meta_upsert}
    RETURNING 1
)
SELECT (SELECT count(*) FROM elems), (SELECT count(*) FROM written), (SELECT count(*) FROM rejected)
