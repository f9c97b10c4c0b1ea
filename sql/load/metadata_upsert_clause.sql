-- Fragment, not a statement: the conflict clause of the two inserts into gn2pg.metadata AS m
-- (page_metadata.sql and metadata_export_page.sql).
    ON CONFLICT (source, level, uuid) DO UPDATE
       SET name = coalesce(EXCLUDED.name, m.name),
           parent_uuid = coalesce(EXCLUDED.parent_uuid, m.parent_uuid),
           item = coalesce(EXCLUDED.item, m.item),
           updated_at = now(), run_id = EXCLUDED.run_id
     WHERE (EXCLUDED.name IS NOT NULL AND EXCLUDED.name IS DISTINCT FROM m.name)
        OR (EXCLUDED.parent_uuid IS NOT NULL AND EXCLUDED.parent_uuid IS DISTINCT FROM m.parent_uuid)
        OR (EXCLUDED.item IS NOT NULL AND EXCLUDED.item IS DISTINCT FROM m.item)
