-- gn2pg schema: the source registry, the run log, harvested observations and metadata.
--
-- Wording: a *source* is one export of one remote GeoNature instance; a *run* is one harvest of
-- a source (full or incremental); a *page* is one answer of the export API.
--
-- This file runs inside CREATE EXTENSION with search_path = gn2pg, <postgis schema>, so the
-- geometry type resolves without qualification here (and only here).

-- Harvested items are stored as jsonb built from their UTF-8 text (src/encode/jsonb.rs).
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'gn2pg needs a database with UTF8 encoding, this one is %', pg_catalog.getdatabaseencoding()
              USING HINT = 'CREATE DATABASE ... ENCODING ''UTF8'' TEMPLATE template0';
    END IF;
END
$$;

-- Ids come from explicit sequences, not identity columns: pg_dump saves the counter of an
-- extension's sequence only when it is marked with pg_extension_config_dump (below), and it never
-- saves an identity sequence of an extension's table, so a restored database would hand out ids
-- that are already taken.
CREATE SEQUENCE gn2pg.source_id_seq AS integer;
CREATE TABLE gn2pg.source (
    id          integer PRIMARY KEY DEFAULT nextval('gn2pg.source_id_seq'),
    name        text NOT NULL UNIQUE
                CHECK (name ~ '^[a-z0-9_-]+$' AND length(name) <= 63),
    url         text NOT NULL,          -- API root, normalised to end with /api
    export_id   integer NOT NULL CHECK (export_id > 0),
    auth        text NOT NULL CHECK (auth IN ('login', 'token', 'public')),
    options     jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(options) = 'object'),
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE gn2pg.source_id_seq OWNED BY gn2pg.source.id;
COMMENT ON TABLE gn2pg.source IS
    'One row per harvested export. Manage with gn2pg_add_source() / gn2pg_remove_source().';

-- Secrets live apart from the registry so that monitoring roles can read every source column
-- without ever being able to read a password or a token.
CREATE TABLE gn2pg.source_secret (
    source_id   integer PRIMARY KEY REFERENCES gn2pg.source (id) ON DELETE CASCADE,
    login       text,
    password    text,
    token       text
);
COMMENT ON TABLE gn2pg.source_secret IS 'Credentials of sources; readable by superusers only.';
REVOKE ALL ON gn2pg.source_secret FROM PUBLIC;

CREATE TABLE gn2pg.run_log (
    id              bigint PRIMARY KEY,   -- taken from run_log_id_seq by the launcher
    source          text NOT NULL,
    source_id       integer,
    mode            text NOT NULL CHECK (mode IN ('full', 'incremental')),
    status          text NOT NULL
                    CHECK (status IN ('running', 'success', 'failed', 'cancelled', 'abandoned')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    pages_done      integer NOT NULL DEFAULT 0,
    rows_received   bigint  NOT NULL DEFAULT 0,
    rows_upserted   bigint  NOT NULL DEFAULT 0,
    rows_unchanged  bigint  NOT NULL DEFAULT 0,
    rows_deleted    bigint  NOT NULL DEFAULT 0,
    rows_failed     bigint  NOT NULL DEFAULT 0,
    http_requests   integer NOT NULL DEFAULT 0,
    http_retries    integer NOT NULL DEFAULT 0,
    bytes_received  bigint  NOT NULL DEFAULT 0,
    source_wait_ms  bigint  NOT NULL DEFAULT 0,   -- time spent waiting for the source
    load_ms         bigint  NOT NULL DEFAULT 0,   -- time spent loading pages into PostgreSQL
    error           text,
    worker_pid      integer,
    paging          text,                 -- 'keyset' or 'offset'
    since           text,                 -- incremental window start, source clock
    max_source_action text,               -- latest derniere_action seen, source clock
    checkpoint      jsonb,                -- key ranges still to fetch; a resumed run starts there
    resumed_from    bigint                -- the interrupted run this one continues
);
CREATE SEQUENCE gn2pg.run_log_id_seq OWNED BY gn2pg.run_log.id;
ALTER TABLE gn2pg.run_log ALTER COLUMN id SET DEFAULT nextval('gn2pg.run_log_id_seq');
CREATE INDEX run_log_source_idx ON gn2pg.run_log (source, id DESC);
COMMENT ON TABLE gn2pg.run_log IS
    'One row per harvest run, updated page by page while it runs (like cron.job_run_details).';

-- Key ranges of a run loaded by several background workers (option workers > 1): one row per
-- range, with its position; the run's checkpoint is derived from these rows.
CREATE TABLE gn2pg.run_part (
    run_id          bigint NOT NULL REFERENCES gn2pg.run_log (id) ON DELETE CASCADE,
    part            integer NOT NULL,
    lo              bigint NOT NULL,
    hi              bigint,
    next_key        bigint NOT NULL,
    done            boolean NOT NULL DEFAULT false,
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'success', 'failed', 'cancelled')),
    error           text,
    worker_pid      integer,
    http_requests   integer NOT NULL DEFAULT 0,
    http_retries    integer NOT NULL DEFAULT 0,
    bytes_received  bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, part)
);
COMMENT ON TABLE gn2pg.run_part IS 'Key ranges of a run loaded in parallel by several workers.';

CREATE SEQUENCE gn2pg.run_error_id_seq;
CREATE TABLE gn2pg.run_error (
    id          bigint PRIMARY KEY DEFAULT nextval('gn2pg.run_error_id_seq'),
    run_id      bigint NOT NULL REFERENCES gn2pg.run_log (id) ON DELETE CASCADE,
    source      text NOT NULL,
    id_data     bigint,
    uuid        text,
    item        jsonb,
    error       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE gn2pg.run_error_id_seq OWNED BY gn2pg.run_error.id;
CREATE INDEX run_error_run_idx ON gn2pg.run_error (run_id);
COMMENT ON TABLE gn2pg.run_error IS 'Items rejected during a run, with the cause.';

CREATE TABLE gn2pg.observation (
    source            text NOT NULL,
    id_data           bigint NOT NULL,       -- the source key (id_synthese)
    uuid              uuid,                  -- id_perm_sinp
    -- The row as received, minus the feature geometry and the nested ca_data/jdd_data (kept in
    -- gn2pg.metadata). lz4: items are ~1-3 KB, just over the TOAST threshold, and pglz would
    -- cost more CPU than the rest of the load.
    item              jsonb COMPRESSION lz4 NOT NULL,
    geom              geometry(Geometry, 4326),
    ca_uuid           uuid,                  -- after mapping
    jdd_uuid          uuid,
    source_ca_uuid    uuid,                  -- as received
    source_jdd_uuid   uuid,
    source_updated_at timestamp,             -- derniere_action, source clock
    updated_at        timestamptz NOT NULL DEFAULT now(),
    run_id            bigint,                -- the run that last wrote the row
    -- Hash of what was stored from the source (item, geometry, CA, JDD): a page compares it
    -- instead of the rows themselves, and rows with an equal hash are not rewritten.
    content_hash      bigint,
    PRIMARY KEY (source, id_data)
);
COMMENT ON COLUMN gn2pg.observation.content_hash IS
    'Hash of what was stored from the source (item, geometry, CA, JDD); rows with an equal hash are not rewritten.';
CREATE INDEX observation_geom_idx ON gn2pg.observation USING gist (geom);
-- A SINP permanent id identifies one observation across every source (as GN2PG's unique_uuid).
-- Deferred: a uuid may move between two rows of one page; the check holds at commit, so two
-- sources harvested at once cannot both store it. The loader relies on it instead of looking
-- every uuid up before writing, and looks them up only to report a conflict.
ALTER TABLE gn2pg.observation
    ADD CONSTRAINT observation_uuid_key UNIQUE (uuid) DEFERRABLE INITIALLY DEFERRED;
COMMENT ON TABLE gn2pg.observation IS 'Harvested observations, one row per source row.';

CREATE TABLE gn2pg.metadata (
    source      text NOT NULL,
    level       text NOT NULL CHECK (level IN ('ca', 'jdd')),
    uuid        uuid NOT NULL,
    name        text,
    parent_uuid uuid,                       -- the CA of a JDD
    item        jsonb,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    run_id      bigint,
    PRIMARY KEY (source, level, uuid)
);
COMMENT ON TABLE gn2pg.metadata IS
    'Acquisition frameworks (ca) and datasets (jdd) seen per source, latest content.';

-- pg_dump keeps what users configured and what was harvested.
SELECT pg_catalog.pg_extension_config_dump('gn2pg.source', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.source_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.source_secret', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.run_log', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.run_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.run_error', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.run_error_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.run_part', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.observation', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.metadata', '');

-- Geometry of one item, trapping parse errors. Used only for pages whose fast set-based load
-- failed: the EXCEPTION block costs a subtransaction per row.
CREATE FUNCTION gn2pg._parse_geometry(geojson jsonb, wkt text, OUT geom geometry, OUT error text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF jsonb_typeof(geojson) = 'object' THEN
        geom := ST_SetSRID(ST_GeomFromGeoJSON(geojson), 4326);
    ELSIF wkt ~* '^SRID=' THEN
        geom := ST_Transform(wkt::geometry, 4326);
    ELSIF wkt IS NOT NULL THEN
        geom := ST_SetSRID(wkt::geometry, 4326);
    END IF;
EXCEPTION WHEN OTHERS THEN
    geom := NULL;
    error := 'invalid geometry: ' || SQLERRM;
END
$$;

-- PG 15 has no @extschema:postgis@: pin the function's search_path to wherever PostGIS lives.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION gn2pg._parse_geometry(jsonb, text) SET search_path = pg_catalog, %I',
                   (SELECT n.nspname FROM pg_catalog.pg_extension e
                      JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                     WHERE e.extname = 'postgis'));
END
$$;
