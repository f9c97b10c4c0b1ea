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
COMMENT ON COLUMN gn2pg.source.id IS
    'Source id, returned by gn2pg_add_source() (gn2pg.source_secret.source_id, gn2pg.run_log.source_id).';
COMMENT ON COLUMN gn2pg.source.name IS
    'Name given at registration (1 to 63 characters among a-z 0-9 _ -): what every gn2pg function, table and job calls the source.';
COMMENT ON COLUMN gn2pg.source.url IS
    'GeoNature API root, normalised to end with /api (e.g. https://geonature.example.org/api).';
COMMENT ON COLUMN gn2pg.source.export_id IS
    'Id of the export in the GeoNature Export module (data read from /exports/api/<export_id>).';
COMMENT ON COLUMN gn2pg.source.auth IS
    'How the export is read: login (POST /auth/login, cookie session), token (the export''s API key, sent as ?token=) or public.';
COMMENT ON COLUMN gn2pg.source.options IS
    'The options given to gn2pg_add_source() (page_size, paging, key_column, query, streams, workers, destination, stale_after_hours, ...; see README, SQL API); unknown keys are refused.';
COMMENT ON COLUMN gn2pg.source.enabled IS
    'false: its pg_cron job skips it (gn2pg_harvest_scheduled returns NULL) and it is never late; a harvest started by hand still runs.';
COMMENT ON COLUMN gn2pg.source.created_at IS 'When the source was first registered.';
COMMENT ON COLUMN gn2pg.source.updated_at IS 'When gn2pg_add_source() last registered it again (same name).';

-- Secrets live apart from the registry so that monitoring roles can read every source column
-- without ever being able to read a password or a token.
CREATE TABLE gn2pg.source_secret (
    source_id   integer PRIMARY KEY REFERENCES gn2pg.source (id) ON DELETE CASCADE,
    login       text,
    password    text,
    token       text
);
COMMENT ON TABLE gn2pg.source_secret IS
    'Credentials of sources (logins, passwords, tokens, alert webhooks), in clear; readable by gn2pg_admin and superusers only.';
COMMENT ON COLUMN gn2pg.source_secret.source_id IS
    'The source (gn2pg.source.id); its credentials go with it when it is removed.';
COMMENT ON COLUMN gn2pg.source_secret.login IS
    'Login of the harvesting GeoNature account (auth = login); NULL otherwise.';
COMMENT ON COLUMN gn2pg.source_secret.password IS
    'Password of that account, in clear (auth = login); NULL otherwise. pg_dump saves it in clear.';
COMMENT ON COLUMN gn2pg.source_secret.token IS
    'API key of the export (auth = token), in clear; NULL otherwise. pg_dump saves it in clear.';
REVOKE ALL ON gn2pg.source_secret FROM PUBLIC;

CREATE TABLE gn2pg.run_log (
    id              bigint PRIMARY KEY,   -- taken from run_log_id_seq by the launcher
    source          text NOT NULL,
    source_id       integer,
    mode            text NOT NULL CHECK (mode IN ('full', 'incremental')),
    status          text NOT NULL
                    CHECK (status IN ('pending', 'running', 'success', 'failed', 'cancelled', 'abandoned')),
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
    resumed_from    bigint,               -- the interrupted run this one continues
    window_end      text,
    clock_offset    interval,
    streams         integer,
    latency_p50_ms  integer,
    latency_p95_ms  integer,
    reconcile       text,
    reconcile_requests integer
);
CREATE SEQUENCE gn2pg.run_log_id_seq OWNED BY gn2pg.run_log.id;
ALTER TABLE gn2pg.run_log ALTER COLUMN id SET DEFAULT nextval('gn2pg.run_log_id_seq');
CREATE INDEX run_log_source_idx ON gn2pg.run_log (source, id DESC);
COMMENT ON TABLE gn2pg.run_log IS
    'One row per harvest run, updated page by page while it runs (like cron.job_run_details).';
-- One run of a source at a time: 'pending' (launched by gn2pg_harvest_async in a transaction
-- that has not ended, or waiting for its worker) or 'running'.
CREATE UNIQUE INDEX run_log_active_idx ON gn2pg.run_log (source) WHERE status IN ('pending', 'running');
COMMENT ON COLUMN gn2pg.run_log.status IS
    'pending (launched, its worker waits for the launching transaction), running, success, failed, cancelled, abandoned (its worker ended without recording the end).';
COMMENT ON COLUMN gn2pg.run_log.id IS
    'Run id: returned by gn2pg_harvest_async(), named in errors, alerts and gn2pg.run_error.run_id.';
COMMENT ON COLUMN gn2pg.run_log.source IS 'Name of the harvested source (the row stays when the source is removed).';
COMMENT ON COLUMN gn2pg.run_log.source_id IS 'gn2pg.source.id of the source when the run was launched.';
COMMENT ON COLUMN gn2pg.run_log.mode IS
    'full (afterwards the local rows equal the export''s) or incremental (rows changed since the window start); mode auto is decided before the run starts.';
COMMENT ON COLUMN gn2pg.run_log.started_at IS
    'When the run was launched, then (pending to running) when its worker started it.';
COMMENT ON COLUMN gn2pg.run_log.finished_at IS 'When the run ended; NULL while it is pending or running.';
COMMENT ON COLUMN gn2pg.run_log.pages_done IS 'Data pages loaded and committed so far.';
COMMENT ON COLUMN gn2pg.run_log.rows_received IS 'Items received in data pages so far, rejected ones included.';
COMMENT ON COLUMN gn2pg.run_log.rows_upserted IS
    'Rows inserted or rewritten in gn2pg.observation: new or changed at the source, moved by a mapping, or stored without a hash by 0.1.0.';
COMMENT ON COLUMN gn2pg.run_log.rows_unchanged IS 'Rows received whose stored version was current: not written.';
COMMENT ON COLUMN gn2pg.run_log.rows_deleted IS
    'Rows deleted from gn2pg.observation because the source no longer has them (key-range sweep, deletion log, reconciliation, offset walk).';
COMMENT ON COLUMN gn2pg.run_log.rows_failed IS
    'Items rejected, one gn2pg.run_error row each (SELECT * FROM gn2pg.run_error WHERE run_id = id).';
COMMENT ON COLUMN gn2pg.run_log.http_requests IS
    'HTTP requests sent to the source, retries included (a parallel run: the sum over its parts).';
COMMENT ON COLUMN gn2pg.run_log.http_retries IS
    'Requests sent again after a connection error, a timeout, a cut answer, HTTP 429 or 5xx.';
COMMENT ON COLUMN gn2pg.run_log.bytes_received IS 'Bytes of answer bodies received from the source.';
COMMENT ON COLUMN gn2pg.run_log.source_wait_ms IS
    'Milliseconds spent waiting for the source''s pages; compared with load_ms, it tells whether the source or the database is the bottleneck.';
COMMENT ON COLUMN gn2pg.run_log.load_ms IS 'Milliseconds spent loading pages into PostgreSQL.';
COMMENT ON COLUMN gn2pg.run_log.error IS
    'Why the run did not succeed, naming the source and the cause (stored secrets masked); NULL for a success and while it runs.';
COMMENT ON COLUMN gn2pg.run_log.worker_pid IS
    'Process id of the background worker that runs or ran it: a pending or running run whose worker is gone is marked abandoned.';
COMMENT ON COLUMN gn2pg.run_log.paging IS
    'keyset or offset: how the run asked for pages (option paging); NULL until it starts.';
COMMENT ON COLUMN gn2pg.run_log.since IS
    'Incremental runs: the start of the window (filter_d_up_<updated_column>), in the source''s timestamps; NULL for full runs.';
COMMENT ON COLUMN gn2pg.run_log.max_source_action IS
    'Latest updated_column (derniere_action) value received, in the source''s timestamps; NULL when no row carried one.';
COMMENT ON COLUMN gn2pg.run_log.checkpoint IS
    'Where a full run resumes, written with every page: {"ranges": [[next key, last key or null], ...]} (keyset) or {"page_index": n} (offset).';
COMMENT ON COLUMN gn2pg.run_log.resumed_from IS
    'The interrupted full run (failed, cancelled or abandoned) whose checkpoint this run started from; NULL: it started from the beginning.';

-- Whether the worker of a run is alive: the process of that pid is a gn2pg harvest worker that
-- started before the run did (a pid reused by a later process does not count). SECURITY
-- DEFINER so that gn2pg_reader, whose pg_stat_activity hides other roles' backend_start, gets
-- the same answer in gn2pg.flow_status; it only tells about gn2pg workers.
CREATE FUNCTION gn2pg._run_alive(p_pid integer, p_since timestamptz) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                WHERE a.pid = p_pid AND a.backend_type = 'gn2pg harvest' AND a.backend_start <= p_since);
COMMENT ON FUNCTION gn2pg._run_alive(integer, timestamptz) IS
    'Whether pid is the gn2pg harvest worker of a run started at p_since (not a later process with the same pid).';

-- The pending or running run of a source whose worker is alive (at most one), except p_except.
CREATE FUNCTION gn2pg._active_run(p_source text, p_except bigint DEFAULT NULL,
                                  OUT run_id bigint, OUT status text, OUT worker_pid integer, OUT since timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, r.status, r.worker_pid, r.started_at FROM gn2pg.run_log r
     WHERE r.source = p_source AND r.status IN ('pending', 'running') AND r.id IS DISTINCT FROM p_except
       AND gn2pg._run_alive(r.worker_pid, r.started_at)
     ORDER BY r.id DESC LIMIT 1
$$;
COMMENT ON FUNCTION gn2pg._active_run(text, bigint) IS 'The live pending or running run of a source, if any.';

-- Closes the pending and running runs (of one source, or all) whose worker is gone: killed,
-- crashed, stopped by a server restart, or unable to record the end of its run. Returns how many.
CREATE FUNCTION gn2pg._abandon_dead_runs(p_source text DEFAULT NULL, p_except bigint DEFAULT NULL) RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        UPDATE gn2pg.run_log r
           SET status = 'abandoned', finished_at = now(),
               -- No word from the worker: gn2pg's "internal" reason (error.rs, Reason::Internal).
               sqlstate = coalesce(r.sqlstate, 'XX000'), reason = coalesce(r.reason, 'internal'),
               error = coalesce(r.error || '; ', '')
                       || CASE WHEN r.status = 'pending' THEN 'its worker process ended before the run started'
                               ELSE 'its worker process ended without finishing the run (killed, crashed, server restart, or it could not record the end: see the server log)' END
         WHERE r.status IN ('pending', 'running') AND (p_source IS NULL OR r.source = p_source)
           AND r.id IS DISTINCT FROM p_except AND NOT gn2pg._run_alive(r.worker_pid, r.started_at)
        RETURNING 1)
    SELECT count(*)::integer FROM gone
$$;
COMMENT ON FUNCTION gn2pg._abandon_dead_runs(text, bigint) IS
    'Marks abandoned the pending and running runs whose worker is gone (of one source, or all); returns how many.';

-- Takes a source for this transaction, or says who has it. A source is taken by a live
-- pending or running run (busy_run), or by a transaction that holds its registry row
-- (busy_status 'locked': it is launching a run, or changing or removing the source); else its
-- row is locked FOR NO KEY UPDATE here until the end of the transaction and source_id is set.
-- Only the owner can lock gn2pg.source rows (it takes the UPDATE privilege), so no other role
-- can keep a source from being harvested; SKIP LOCKED: a busy source is refused, never waited for.
CREATE FUNCTION gn2pg._claim_source(p_source text, OUT source_id integer, OUT busy_run bigint,
                                    OUT busy_status text, OUT busy_pid integer, OUT busy_since timestamptz)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id integer;
BEGIN
    -- pg_stat_activity is read once per transaction unless told otherwise.
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    -- Checked before taking the row (a synchronous run's caller keeps it: name that run) and
    -- again after (a run launched meanwhile).
    FOR attempt IN 1..2 LOOP
        SELECT a.run_id, a.status, a.worker_pid, a.since INTO busy_run, busy_status, busy_pid, busy_since
          FROM gn2pg._active_run(p_source) a;
        IF busy_run IS NOT NULL THEN
            RETURN;
        END IF;
        EXIT WHEN attempt = 2;
        SELECT s.id INTO v_id FROM gn2pg.source s WHERE s.name = p_source FOR NO KEY UPDATE SKIP LOCKED;
        IF v_id IS NULL THEN
            busy_status := CASE WHEN EXISTS (SELECT 1 FROM gn2pg.source s WHERE s.name = p_source)
                                THEN 'locked' ELSE 'missing' END;
            RETURN;
        END IF;
    END LOOP;
    source_id := v_id;
END
$$;
COMMENT ON FUNCTION gn2pg._claim_source(text) IS
    'Locks the registry row of an idle source for this transaction (source_id), or says what keeps it busy.';

-- _claim_idle_source claims the source for this transaction as a run does (_claim_source), or
-- raises: which run has it (55006), or that another transaction does (55P03). Called only by
-- SECURITY DEFINER functions, which name themselves in p_fn and say what to do in p_hint.
CREATE FUNCTION gn2pg._claim_idle_source(p_fn text, p_source text, p_hint text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v record;
BEGIN
    SELECT * INTO v FROM gn2pg._claim_source(p_source);
    IF v.busy_run IS NOT NULL THEN
        RAISE EXCEPTION '%: source "%" is being harvested by run %', p_fn, p_source, v.busy_run
              USING ERRCODE = 'object_in_use',
                    DETAIL = format('Run %s is %s in worker process %s since %s.', v.busy_run, v.busy_status,
                                    v.busy_pid, v.busy_since),
                    HINT = p_hint;
    ELSIF v.source_id IS NULL THEN
        RAISE EXCEPTION '%: source "%" is being started, changed or removed by another transaction', p_fn, p_source
              USING ERRCODE = 'lock_not_available', HINT = format('Call %s() again when that transaction has ended.', p_fn);
    END IF;
END
$$;
COMMENT ON FUNCTION gn2pg._claim_idle_source(text, text, text) IS
    'Internal: claims an idle source for this transaction, as a run does, or raises saying what holds it.';
COMMENT ON COLUMN gn2pg.run_log.window_end IS
    'The source''s clock when the run started (source timestamps): the next incremental window starts there minus the overlap.';
COMMENT ON COLUMN gn2pg.run_log.clock_offset IS
    'What this run showed of the source''s clock: its newest action minus the HTTP Date of that answer (a lower bound of the offset between its timestamps and UTC).';
COMMENT ON COLUMN gn2pg.run_log.streams IS 'Most requests the run had in flight at once (parallel streams).';
COMMENT ON COLUMN gn2pg.run_log.latency_p50_ms IS 'Median time the source took to answer a data request.';
COMMENT ON COLUMN gn2pg.run_log.latency_p95_ms IS '95th percentile of the time the source took to answer a data request.';
COMMENT ON COLUMN gn2pg.run_log.reconcile IS
    'How deletions were looked for without a deletion log: counts (bisection by range counts), pages (capped counts: ranges of one page), sweep (every page), with the reason.';
COMMENT ON COLUMN gn2pg.run_log.reconcile_requests IS 'Requests spent looking for deletions (counts and pages).';

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
COMMENT ON COLUMN gn2pg.run_part.run_id IS 'The run (gn2pg.run_log.id).';
COMMENT ON COLUMN gn2pg.run_part.part IS
    'Number of the range in the run, from 0; part 0 is loaded by the run''s own worker.';
COMMENT ON COLUMN gn2pg.run_part.lo IS 'First key of the range.';
COMMENT ON COLUMN gn2pg.run_part.hi IS 'Last key of the range; NULL: no upper bound (the last range).';
COMMENT ON COLUMN gn2pg.run_part.next_key IS
    'The next key to fetch, moved with every page the part loads: a resumed run starts there.';
COMMENT ON COLUMN gn2pg.run_part.done IS 'The part has fetched its whole range.';
COMMENT ON COLUMN gn2pg.run_part.status IS 'running, success, failed or cancelled.';
COMMENT ON COLUMN gn2pg.run_part.error IS 'Why the part failed or stopped (stored secrets masked); NULL otherwise.';
COMMENT ON COLUMN gn2pg.run_part.worker_pid IS
    'Process id of the background worker that ran the part (recorded when it ends).';
COMMENT ON COLUMN gn2pg.run_part.http_requests IS
    'HTTP requests of this part, retries included (the run''s http_requests sums them).';
COMMENT ON COLUMN gn2pg.run_part.http_retries IS 'Requests of this part sent again after an error.';
COMMENT ON COLUMN gn2pg.run_part.bytes_received IS 'Bytes of answer bodies this part received.';

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
COMMENT ON COLUMN gn2pg.run_error.id IS 'Row id, in the order the items were rejected.';
COMMENT ON COLUMN gn2pg.run_error.run_id IS 'The run that rejected the item (gn2pg.run_log.id).';
COMMENT ON COLUMN gn2pg.run_error.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.run_error.id_data IS 'The item''s key (key_column); NULL when it is missing or not an integer.';
COMMENT ON COLUMN gn2pg.run_error.uuid IS
    'The item''s uuid (uuid_column) as sent, valid or not; NULL when it has none.';
COMMENT ON COLUMN gn2pg.run_error.item IS
    'The item as received; NULL when jsonb cannot hold it (e.g. text with \u0000).';
COMMENT ON COLUMN gn2pg.run_error.error IS
    'Why it was rejected, e.g. an invalid uuid or geometry, or a uuid another row owns (with the owner); stored secrets masked.';
COMMENT ON COLUMN gn2pg.run_error.created_at IS 'When the item was rejected.';

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
COMMENT ON COLUMN gn2pg.observation.source IS 'Name of the source; with id_data, the primary key.';
COMMENT ON COLUMN gn2pg.observation.id_data IS
    'The row''s key at the source (option key_column, id_synthese by default).';
COMMENT ON COLUMN gn2pg.observation.uuid IS
    'SINP permanent id (option uuid_column, id_perm_sinp by default), stored once across all sources; NULL when the source sends none.';
COMMENT ON COLUMN gn2pg.observation.item IS
    'The row as received, without the feature''s geometry and the nested ca_data / jdd_data objects (kept in gn2pg.metadata); an array item keeps its WKT.';
COMMENT ON COLUMN gn2pg.observation.geom IS
    'Geometry in SRID 4326, 2D (Z and M dropped), from the GeoJSON feature or option wkt_column; NULL when the row has none.';
COMMENT ON COLUMN gn2pg.observation.ca_uuid IS
    'Acquisition framework (CA) of the row after mapping: where it lands on this platform.';
COMMENT ON COLUMN gn2pg.observation.jdd_uuid IS
    'Dataset (JDD) of the row after mapping: where it lands on this platform.';
COMMENT ON COLUMN gn2pg.observation.source_ca_uuid IS 'Acquisition framework (CA) uuid as the source sent it.';
COMMENT ON COLUMN gn2pg.observation.source_jdd_uuid IS 'Dataset (JDD) uuid as the source sent it.';
COMMENT ON COLUMN gn2pg.observation.source_updated_at IS
    'When the source last changed the row (option updated_column, derniere_action by default), in the source''s local time.';
COMMENT ON COLUMN gn2pg.observation.updated_at IS 'When gn2pg last wrote the row (a run, or a remap that moved it).';
COMMENT ON COLUMN gn2pg.observation.run_id IS
    'The run that last wrote the row from the source (a remap does not change it).';

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
    EXECUTE format('ALTER FUNCTION gn2pg._parse_geometry(jsonb, text) SET search_path = pg_catalog, %I, pg_temp',
                   (SELECT n.nspname FROM pg_catalog.pg_extension e
                      JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                     WHERE e.extname = 'postgis'));
END
$$;
COMMENT ON FUNCTION gn2pg._parse_geometry(jsonb, text) IS
    'Internal: one item''s geometry converted by PostGIS from GeoJSON or WKT (EWKT with another SRID is transformed to 4326), or the error PostGIS raised; for geometries gn2pg does not build itself.';
