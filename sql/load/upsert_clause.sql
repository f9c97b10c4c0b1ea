-- Fragment, not a statement: insert_rows.sql's {upsert}, to rewrite the page's changed rows.
    ON CONFLICT (source, id_data) DO UPDATE
   SET uuid = EXCLUDED.uuid, item = EXCLUDED.item, geom = EXCLUDED.geom, ca_uuid = EXCLUDED.ca_uuid,
       jdd_uuid = EXCLUDED.jdd_uuid, source_ca_uuid = EXCLUDED.source_ca_uuid,
       source_jdd_uuid = EXCLUDED.source_jdd_uuid, source_updated_at = EXCLUDED.source_updated_at,
       updated_at = EXCLUDED.updated_at, run_id = EXCLUDED.run_id, content_hash = EXCLUDED.content_hash
