-- How gn2pg.observation was created, read once per run (src/loader.rs, Loader::prepare):
-- whether uuid is unique (observation_uuid_key, absent when 0.1.0 left duplicates) and whether
-- item compresses with lz4 (then the helper thread compresses items itself).
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                WHERE conrelid = 'gn2pg.observation'::regclass AND conname = 'observation_uuid_key'),
       (SELECT coalesce(attcompression = 'l', false) FROM pg_catalog.pg_attribute
         WHERE attrelid = 'gn2pg.observation'::regclass AND attname = 'item')
