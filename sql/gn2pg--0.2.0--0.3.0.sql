-- gn2pg 0.2.0 -> 0.3.0.
--
-- Each section below says which change it carries; `pg_test/tests/upgrade.rs` checks that
-- updating from every released version gives exactly the objects of a fresh install.

-- A harvest that runs while its database is updated keeps the old library's code until it ends,
-- and that code expects the old tables: update once no harvest runs (the package can be
-- installed meanwhile; see README, "Upgrading").
DO $$
DECLARE
    busy text;
BEGIN
    SELECT string_agg(pg_catalog.format('%s (pid %s)', a.backend_type, a.pid), ', ' ORDER BY a.pid) INTO busy
      FROM pg_catalog.pg_stat_activity a
     WHERE a.datname = pg_catalog.current_database() AND a.backend_type LIKE 'gn2pg harvest%';
    IF busy IS NOT NULL THEN
        RAISE EXCEPTION 'gn2pg: cannot update while harvests run in this database'
              USING ERRCODE = 'object_in_use', DETAIL = 'Running: ' || busy || '.',
                    HINT = 'Wait for them to end, or cancel them: SELECT gn2pg_cancel(running_run_id) FROM gn2pg.flow_status WHERE running_run_id IS NOT NULL; then run ALTER EXTENSION gn2pg UPDATE again.';
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- Security (issue 9, sec): no path from a gn2pg role to superuser, least privilege, no denial
-- of service by ordinary roles.
------------------------------------------------------------------------------------------------

-- Functions pin pg_temp last: with `pg_catalog` alone, pg_temp is searched first for relations
-- and types, so a caller's pg_temp.uuid domain would run its CHECK as a SECURITY DEFINER owner.
ALTER FUNCTION gn2pg._check_source(text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION gn2pg._uuid_arg(text, text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION gn2pg._level_arg(text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION gn2pg._mapping_changed(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION gn2pg._remap(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION gn2pg._remap_if_pending(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION gn2pg._describe(text, uuid, text, text, uuid) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION gn2pg._map(text, text, uuid, uuid) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION gn2pg._unmap(text, text, text, uuid) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION gn2pg._require(text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.gn2pg_describe_target(text, text, text, text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.gn2pg_map_ca(text, text, text, text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.gn2pg_map_jdd(text, text, text, text, text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.gn2pg_unmap_ca(text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.gn2pg_unmap_jdd(text, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.gn2pg_remap(text) SET search_path = pg_catalog, pg_temp;
DO $$
BEGIN
    EXECUTE pg_catalog.format('ALTER FUNCTION gn2pg._parse_geometry(jsonb, text) SET search_path = pg_catalog, %I, pg_temp',
                   (SELECT n.nspname FROM pg_catalog.pg_extension e
                      JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                     WHERE e.extname OPERATOR(pg_catalog.=) 'postgis'));
END
$$;

-- One active run per source, recorded by its launcher ('pending') before its worker takes it
-- over ('running'); runs whose worker is gone are closed first (they would block the index).
ALTER TABLE gn2pg.run_log DROP CONSTRAINT run_log_status_check;
ALTER TABLE gn2pg.run_log ADD CONSTRAINT run_log_status_check
    CHECK (status IN ('pending', 'running', 'success', 'failed', 'cancelled', 'abandoned'));
COMMENT ON COLUMN gn2pg.run_log.status IS
    'pending (launched, its worker waits for the launching transaction), running, success, failed, cancelled, abandoned (its worker ended without recording the end).';
UPDATE gn2pg.run_log r
   SET status = 'abandoned', finished_at = now(),
       error = coalesce(r.error || '; ', '') || 'its worker process ended without finishing the run (killed, crashed, server restart, or it could not record the end: see the server log)'
 WHERE r.status = 'running'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                    WHERE a.pid OPERATOR(pg_catalog.=) r.worker_pid AND a.backend_type OPERATOR(pg_catalog.=) 'gn2pg harvest');
CREATE UNIQUE INDEX run_log_active_idx ON gn2pg.run_log (source) WHERE status IN ('pending', 'running');

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

-- _remap_idle is gn2pg_remap() once the source is idle: no pending or running run (a run
-- remaps pending changes itself before it loads), and no other transaction starting, changing
-- or removing it (its registry row is locked until the end of this transaction, so no run can
-- start meanwhile). SECURITY DEFINER (sql/operations.sql): admins cannot lock gn2pg.source rows.
CREATE FUNCTION gn2pg._remap_idle(p_source text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM gn2pg._claim_idle_source('gn2pg_remap', p_source,
        'Call gn2pg_remap() again when the run has ended, or let the next run apply the mappings: it remaps before loading.');
    RETURN gn2pg._remap(p_source);
END
$$;

COMMENT ON FUNCTION gn2pg._remap_idle(text) IS 'Internal: gn2pg_remap() once the source is known to be idle.';

-- gn2pg_remap claims the source like a run does (no advisory lock any more).
CREATE OR REPLACE FUNCTION public.gn2pg_remap(source text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_source text := $1;
    v_id     integer := gn2pg._check_source('gn2pg_remap', $1);
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_remap');
    RETURN gn2pg._remap_idle(v_source);
END
$$;

-- A refused start is an ERROR of the launching call and leaves no run: alerts no longer need to
-- recognise refusals; pending runs are not ended runs.
CREATE OR REPLACE FUNCTION gn2pg._run_ended() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gn2pg.source WHERE name = NEW.source) THEN
        RETURN NULL;
    END IF;
    IF NEW.status = 'success' THEN
        PERFORM gn2pg._resolve_alerts(NEW.source, NEW.id);
    ELSIF NEW.status IN ('failed', 'abandoned') THEN
        PERFORM gn2pg._raise_alert(NEW.source, NEW.status, NEW.id,
            format('run %s of source %s %s: %s', NEW.id, NEW.source, NEW.status,
                   coalesce(NEW.error, 'no error recorded')));
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER run_ended_insert ON gn2pg.run_log;
DROP TRIGGER run_ended_update ON gn2pg.run_log;
CREATE TRIGGER run_ended_insert AFTER INSERT ON gn2pg.run_log
    FOR EACH ROW WHEN (NEW.status NOT IN ('pending', 'running')) EXECUTE FUNCTION gn2pg._run_ended();
CREATE TRIGGER run_ended_update AFTER UPDATE OF status ON gn2pg.run_log
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status NOT IN ('pending', 'running'))
    EXECUTE FUNCTION gn2pg._run_ended();

COMMENT ON FUNCTION gn2pg._busy_refusal(text) IS
    'Whether a run error says the source was busy with another run (such runs raise no alert and do not count as the last run).';

-- The dashboard: pending runs count as running, and a worker is alive only if it is the run's.
CREATE OR REPLACE VIEW gn2pg.flow_status AS
SELECT s.id AS source_id,
       s.name AS source,
       s.enabled,
       nullif(btrim(s.options ->> 'organism'), '') AS organism,
       nullif(btrim(s.options ->> 'organism_id'), '') AS organism_id,
       s.url,
       s.export_id,
       s.auth AS access_mode,
       sc.schedule,
       sc.mode AS schedule_mode,
       CASE WHEN s.enabled THEN gn2pg._cron_next(sc.schedule, now()) END AS next_run_at,
       cur.id AS running_run_id,
       lr.id AS last_run_id,
       lr.mode AS last_run_mode,
       lr.status AS last_run_status,
       lr.started_at AS last_run_started_at,
       lr.finished_at AS last_run_finished_at,
       lr.finished_at - lr.started_at AS last_run_duration,
       lr.rows_received AS last_run_rows,
       lr.rows_upserted AS last_run_rows_upserted,
       lr.rows_deleted AS last_run_rows_deleted,
       lr.rows_failed AS last_run_rows_failed,
       lr.error AS last_run_error,
       ls.id AS last_success_run_id,
       ls.finished_at AS last_success_at,
       (SELECT count(*) FROM gn2pg.observation o WHERE o.source = s.name) AS local_rows,
       coalesce(al.n, 0) AS open_alerts,
       al.kinds AS open_alert_kinds,
       lim.stale_after,
       CASE WHEN lr.id IS NULL THEN 'never_run'
            WHEN lr.status IN ('failed', 'abandoned') THEN 'failing'
            WHEN s.enabled AND lim.stale_after > interval '0'
                 AND coalesce(ls.finished_at, s.created_at) < now() - lim.stale_after THEN 'late'
            ELSE 'ok'
       END AS health,
       s.created_at
  FROM gn2pg.source s
  LEFT JOIN gn2pg.schedule sc ON sc.source = s.name
  CROSS JOIN LATERAL (
        SELECT CASE WHEN s.options ? 'stale_after_hours'
                    THEN make_interval(hours => (s.options ->> 'stale_after_hours')::integer)
                    ELSE make_interval(mins => gn2pg._stale_after_minutes()) END AS stale_after) lim
  LEFT JOIN LATERAL (
        -- The columns of run_log in 0.2.0, spelled out: `r.*` would be frozen at creation, and a
        -- column added later would make an updated database differ from a fresh install.
        SELECT r.id, r.source, r.source_id, r.mode, r.status, r.started_at, r.finished_at, r.pages_done,
               r.rows_received, r.rows_upserted, r.rows_unchanged, r.rows_deleted, r.rows_failed, r.http_requests,
               r.http_retries, r.bytes_received, r.source_wait_ms, r.load_ms, r.error, r.worker_pid, r.paging,
               r.since, r.max_source_action, r.checkpoint, r.resumed_from
          FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status NOT IN ('pending', 'running') AND NOT gn2pg._busy_refusal(r.error)
         ORDER BY r.id DESC LIMIT 1) lr ON true
  LEFT JOIN LATERAL (
        SELECT r.id, r.finished_at FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status = 'success'
         ORDER BY r.id DESC LIMIT 1) ls ON true
  LEFT JOIN LATERAL (
        SELECT max(r.id) AS id FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status IN ('pending', 'running')
           AND gn2pg._run_alive(r.worker_pid, r.started_at)) cur ON true
  LEFT JOIN LATERAL (
        SELECT count(*)::integer AS n, array_agg(a.kind ORDER BY a.kind) AS kinds
          FROM gn2pg.alert a WHERE a.source = s.name AND a.resolved_at IS NULL) al ON true;

-- Least privilege.
-- Every function's EXECUTE is granted on purpose (pg_test/tests/security.rs checks the whole
-- list); the finalize step of the extension script revokes EXECUTE on every function of
-- schema gn2pg from PUBLIC, whatever is added later.
REVOKE ALL ON FUNCTION public.gn2pg_add_source(text, text, integer, text, text, text, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_remove_source(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_schedule(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_unschedule(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_schedule_check_flows(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_unschedule_check_flows() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_add_source(text, text, integer, text, text, text, text, jsonb, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_remove_source(text, boolean) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_schedule(text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_unschedule(text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_schedule_check_flows(text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_unschedule_check_flows() TO gn2pg_admin;

REVOKE ALL ON FUNCTION public.gn2pg_harvest(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_harvest_async(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_harvest_scheduled(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_cancel(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_check_flows() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_harvest(text, text) TO gn2pg_operator;
GRANT EXECUTE ON FUNCTION public.gn2pg_harvest_async(text, text) TO gn2pg_operator;
GRANT EXECUTE ON FUNCTION public.gn2pg_harvest_scheduled(text, text) TO gn2pg_operator;
GRANT EXECUTE ON FUNCTION public.gn2pg_cancel(bigint) TO gn2pg_operator;
GRANT EXECUTE ON FUNCTION public.gn2pg_check_flows() TO gn2pg_operator;

-- Internal, owner only: the engine, the triggers, the functions above once they run as the
-- owner, and _jsonb_selftest (superusers: it allocates in proportion to its input).
REVOKE ALL ON FUNCTION gn2pg._scrub(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._alert_event(gn2pg.alert, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._raise_alert(text, text, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._resolve_alerts(text, bigint, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._run_ended() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._source_removed() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._check_stale() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._parse_geometry(jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._active_run(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._abandon_dead_runs(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._claim_source(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._claim_idle_source(text, text, text) FROM PUBLIC;

-- Called by the views with the reader's rights (a view runs its functions as the caller), so
-- gn2pg_reader may execute them. Each is safe for any reader: _cron_next computes a time from
-- a text (bounded loop), _stale_after_minutes reads a setting, _busy_refusal matches a text,
-- _resolve_mapping reads mappings readers may read anyway, and _run_alive (SECURITY DEFINER)
-- only says whether a pid is a gn2pg harvest worker started before a time.
REVOKE ALL ON FUNCTION gn2pg._cron_next(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._stale_after_minutes() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._busy_refusal(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._resolve_mapping(text, uuid[], uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._run_alive(integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gn2pg._cron_next(text, timestamptz) TO gn2pg_reader;
GRANT EXECUTE ON FUNCTION gn2pg._stale_after_minutes() TO gn2pg_reader;
GRANT EXECUTE ON FUNCTION gn2pg._busy_refusal(text) TO gn2pg_reader;
GRANT EXECUTE ON FUNCTION gn2pg._resolve_mapping(text, uuid[], uuid[]) TO gn2pg_reader;
GRANT EXECUTE ON FUNCTION gn2pg._run_alive(integer, timestamptz) TO gn2pg_reader;

-- Mappings (sql/metadata.sql) are managed by admins. The public functions (SECURITY INVOKER)
-- check the caller's role with the argument helpers, then write through SECURITY DEFINER
-- helpers, so the tables stay read-only. _remap (no busy check) and _mapping_changed are only
-- called by those helpers and the engine, as the owner.
ALTER FUNCTION gn2pg._map(text, text, uuid, uuid) SECURITY DEFINER;
ALTER FUNCTION gn2pg._unmap(text, text, text, uuid) SECURITY DEFINER;
ALTER FUNCTION gn2pg._describe(text, uuid, text, text, uuid) SECURITY DEFINER;
ALTER FUNCTION gn2pg._remap(text) SECURITY DEFINER;
ALTER FUNCTION gn2pg._remap_idle(text) SECURITY DEFINER;
ALTER FUNCTION gn2pg._mapping_changed(text) SECURITY DEFINER;
REVOKE ALL ON FUNCTION gn2pg._map(text, text, uuid, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._unmap(text, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._describe(text, uuid, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._remap(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._remap_idle(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._remap_if_pending(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._mapping_changed(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._check_source(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._uuid_arg(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._level_arg(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._require(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gn2pg._map(text, text, uuid, uuid) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._unmap(text, text, text, uuid) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._describe(text, uuid, text, text, uuid) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._remap_idle(text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._check_source(text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._uuid_arg(text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._level_arg(text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._require(text, text) TO gn2pg_admin;
-- Only the SECURITY DEFINER helpers call these now (gn2pg_remap goes through _remap_idle).
REVOKE EXECUTE ON FUNCTION gn2pg._remap(text) FROM gn2pg_admin;
REVOKE EXECUTE ON FUNCTION gn2pg._mapping_changed(text) FROM gn2pg_admin;

-- Secrets never reach readers (issue 9, item 6).
-- Errors of runs, parts and rejected items go through _scrub as they are stored: the engine
-- already masks the source's secrets (and its session cookies, which are not stored), this
-- catches any stored secret it could not know of.
CREATE FUNCTION gn2pg._scrub_error() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.error := gn2pg._scrub(NEW.error);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION gn2pg._scrub_error() IS 'Trigger: masks stored secrets in the error column of a row being written.';
CREATE TRIGGER scrub_error BEFORE INSERT OR UPDATE OF error ON gn2pg.run_log
    FOR EACH ROW WHEN (NEW.error IS NOT NULL) EXECUTE FUNCTION gn2pg._scrub_error();
CREATE TRIGGER scrub_error BEFORE INSERT OR UPDATE OF error ON gn2pg.run_part
    FOR EACH ROW WHEN (NEW.error IS NOT NULL) EXECUTE FUNCTION gn2pg._scrub_error();
CREATE TRIGGER scrub_error BEFORE INSERT OR UPDATE OF error ON gn2pg.run_error
    FOR EACH ROW WHEN (NEW.error IS NOT NULL) EXECUTE FUNCTION gn2pg._scrub_error();

REVOKE ALL ON FUNCTION gn2pg._scrub_error() FROM PUBLIC;

-- Transport (issue 9, item 5): gn2pg.allowed_hosts is checked at every run of the sources that
-- a role other than a superuser registered. 0.2.0 did not record who registered a source:
-- with an empty list only superusers could, so none is restricted; with a list, every source
-- is (a superuser's source outside the list then fails with an error saying so; registering
-- it again as a superuser lifts it).
ALTER TABLE gn2pg.source ADD COLUMN restricted boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN gn2pg.source.restricted IS
    'Registered or last changed by a role that is not a superuser: its URL and alert webhook must be allowed by gn2pg.allowed_hosts at every run.';
UPDATE gn2pg.source SET restricted = true
 WHERE coalesce(pg_catalog.btrim(pg_catalog.current_setting('gn2pg.allowed_hosts', true)), '') <> '';


-- Issue 12 (large sources): incremental windows on the source's clock, reconciliation by range
-- counts, streams paced to the source. New run_log columns, in the order of sql/schema.sql.
ALTER TABLE gn2pg.run_log
    ADD COLUMN window_end text,
    ADD COLUMN clock_offset interval,
    ADD COLUMN streams integer,
    ADD COLUMN latency_p50_ms integer,
    ADD COLUMN latency_p95_ms integer,
    ADD COLUMN reconcile text,
    ADD COLUMN reconcile_requests integer;
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

-- ---- issue 11: GeoNature destination (begin) ----
-- The GeoNature destination: sql/destination.sql as installed (tables, run_log counters,
-- functions, views, grants), and gn2pg._remap, which now moves synthese rows too.

-- _remap rewrites the rows of a source whose destination differs from what the mappings say
-- now, in one statement, and records the mapping version it applied. Returns the rows changed.
CREATE OR REPLACE FUNCTION gn2pg._remap(p_source text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_changed bigint;
    v_version bigint;
    v_moved bigint[];
BEGIN
    -- One statement, one snapshot: the version read is the one the rows now reflect.
    WITH st AS (
        SELECT coalesce(max(s.version), 0) AS version FROM gn2pg.mapping_state s WHERE s.source = p_source
    ), pairs AS (
        SELECT o.source_ca_uuid AS ca, o.source_jdd_uuid AS jdd
          FROM gn2pg.observation o WHERE o.source = p_source GROUP BY 1, 2
    ), r AS (
        SELECT x.*
          FROM (SELECT array_agg(pairs.ca) AS cas, array_agg(pairs.jdd) AS jdds FROM pairs) a,
               gn2pg._resolve_mapping(p_source, a.cas, a.jdds) x
    ), moved AS (
        UPDATE gn2pg.observation o
           SET ca_uuid = r.ca_uuid, jdd_uuid = r.jdd_uuid, updated_at = now()
          FROM r
         WHERE o.source = p_source
           -- hashable keys; the IS NULL tests keep NULL apart from the nil uuid
           AND coalesce(o.source_ca_uuid, '00000000-0000-0000-0000-000000000000')
               = coalesce(r.source_ca, '00000000-0000-0000-0000-000000000000')
           AND (o.source_ca_uuid IS NULL) = (r.source_ca IS NULL)
           AND coalesce(o.source_jdd_uuid, '00000000-0000-0000-0000-000000000000')
               = coalesce(r.source_jdd, '00000000-0000-0000-0000-000000000000')
           AND (o.source_jdd_uuid IS NULL) = (r.source_jdd IS NULL)
           AND (o.ca_uuid IS DISTINCT FROM r.ca_uuid OR o.jdd_uuid IS DISTINCT FROM r.jdd_uuid)
        RETURNING o.id_data
    )
    SELECT (SELECT count(*) FROM moved), (SELECT st.version FROM st), (SELECT array_agg(moved.id_data) FROM moved)
      INTO v_changed, v_version, v_moved;
    -- A GeoNature destination moves the synthese rows too (sql/destination.sql).
    PERFORM gn2pg._destination_remapped(p_source, v_moved);

    INSERT INTO gn2pg.mapping_state AS s (source, version, applied_version, applied_at)
    VALUES (p_source, v_version, v_version, now())
    ON CONFLICT (source) DO UPDATE
       SET applied_version = greatest(s.applied_version, EXCLUDED.applied_version), applied_at = now();
    RETURN v_changed;
END
$$;
-- CREATE OR REPLACE resets SECURITY DEFINER (sql/operations.sql sets it).
ALTER FUNCTION gn2pg._remap(text) SECURITY DEFINER;

-- gn2pg: the GeoNature destination (issue 11). A source registered with
-- options => '{"destination": "geonature"}' also keeps its harvested rows in the local
-- GeoNature: gn_synthese.synthese (one row per harvested row), gn_meta (the CA and JDD of the
-- rows) and gn_synthese.t_sources (one row per gn2pg source).
--
-- Wording: the *destination* is the local GeoNature. A harvested row is *written* when the
-- synthese holds its current version, *pending* when it cannot be written yet (unknown taxon or
-- habitat, unresolved nomenclature under the 'reject' policy, uuid owned by another synthese
-- row, no dataset, a value the synthese refuses); pending rows stay in gn2pg.observation and
-- are tried again by every run and by gn2pg_sync_destination(). *Applying* rows computes their
-- synthese values from gn2pg.observation and writes only what differs.
--
-- The page loader (src/loader.rs) calls gn2pg._destination_page() in each page's transaction,
-- after the page's rows are written; every deletion path calls gn2pg._destination_delete() in
-- the transaction that deletes the rows; a run ends with gn2pg._destination_finish(). All of
-- them return at once for sources without a destination. Nothing here references GeoNature's
-- tables at creation: the extension installs on databases without GeoNature.
--
-- Every function pins search_path = pg_catalog, pg_temp and qualifies every other object;
-- PostGIS functions are called through EXECUTE with the schema PostGIS lives in, looked up
-- at run time. Geometries are compared as bytea (EWKB), which needs no PostGIS operator.
-- The functions that write GeoNature's tables then switch, for their own duration, to the
-- database's search_path (_destination_geonature_path): GeoNature's triggers and functions
-- name objects (PostGIS's among them) without a schema and set no search_path of their own.

------------------------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------------------------
CREATE TABLE gn2pg.destination (
    source      text PRIMARY KEY REFERENCES gn2pg.source (name) ON UPDATE CASCADE ON DELETE CASCADE,
    id_source   integer NOT NULL,          -- gn_synthese.t_sources.id_source
    local_srid  integer NOT NULL,          -- find_srid('gn_synthese', 'synthese', 'the_geom_local')
    enabled_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE gn2pg.destination IS
    'Sources whose rows are kept in the local GeoNature (options.destination = geonature), with their gn_synthese.t_sources row.';

CREATE TABLE gn2pg.destination_row (
    source        text NOT NULL,
    id_data       bigint NOT NULL,
    id_synthese   integer,                 -- the synthese row holding it (NULL: never written)
    state         text NOT NULL CHECK (state IN ('written', 'pending')),
    reason        text CHECK (reason IN ('taxon', 'habitat', 'nomenclature', 'uuid_conflict', 'dataset', 'invalid')),
    detail        text,
    content_hash  bigint,                  -- gn2pg.observation.content_hash when it was applied
    jdd_uuid      uuid,                    -- gn2pg.observation.jdd_uuid (after mapping) when it was applied
    run_id        bigint,                  -- the run that applied it last (NULL: gn2pg_sync_destination or a remap)
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, id_data),
    CHECK ((state = 'pending') = (reason IS NOT NULL))
);
CREATE INDEX destination_row_pending_idx ON gn2pg.destination_row (source, id_data) WHERE state = 'pending';
COMMENT ON TABLE gn2pg.destination_row IS
    'Per harvested row of a source with a GeoNature destination: the synthese row holding it, or why it is pending.';
COMMENT ON COLUMN gn2pg.destination_row.detail IS
    'Why the row is pending; for a written row, the values replaced by their type''s default (policy default).';
COMMENT ON COLUMN gn2pg.destination_row.content_hash IS
    'The row''s gn2pg.observation.content_hash when it was last applied: a row whose hash and dataset did not change is not applied again.';

CREATE TABLE gn2pg.nomenclature_mapping (
    source        text NOT NULL REFERENCES gn2pg.source (name) ON UPDATE CASCADE ON DELETE CASCADE,
    type          text NOT NULL,           -- ref_nomenclatures.bib_nomenclatures_types.mnemonique
    source_value  text NOT NULL,           -- a code or a label, as the source sends it
    target_code   text NOT NULL,           -- cd_nomenclature in the destination
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, type, source_value)
);
COMMENT ON TABLE gn2pg.nomenclature_mapping IS
    'Nomenclature values of a source mapped to a code of the destination. Manage with gn2pg_map_nomenclature() / gn2pg_unmap_nomenclature().';

CREATE TABLE gn2pg.destination_report (
    id          bigserial PRIMARY KEY,
    source      text NOT NULL,
    run_id      bigint,                    -- NULL: gn2pg_sync_destination()
    sync_at     timestamptz,               -- gn2pg_sync_destination(): its transaction's start
    field       text NOT NULL,             -- export field (cd_nom, code_habitat, sexe, id_perm_sinp, ...)
    value       text,
    problem     text NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('pending', 'defaulted')),
    rows        bigint NOT NULL DEFAULT 0,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    CHECK ((run_id IS NULL) <> (sync_at IS NULL))
);
CREATE UNIQUE INDEX destination_report_key ON gn2pg.destination_report
    (source, run_id, sync_at, field, value, problem, outcome) NULLS NOT DISTINCT;
CREATE INDEX destination_report_run_idx ON gn2pg.destination_report (run_id);
COMMENT ON TABLE gn2pg.destination_report IS
    'Values the destination could not take, per run (or per gn2pg_sync_destination() call): field, value, problem, what happened to the rows, how many.';
COMMENT ON COLUMN gn2pg.destination_report.outcome IS
    'pending: the rows were not written (they wait in gn2pg.observation); defaulted: written with the type''s default (nomenclature_unknown = default).';

CREATE TABLE gn2pg.destination_metadata (
    level        text NOT NULL CHECK (level IN ('ca', 'jdd')),
    uuid         uuid NOT NULL,
    id           integer NOT NULL,         -- id_acquisition_framework or id_dataset
    created_by   text NOT NULL,            -- the source whose run created it
    fingerprint  text,                     -- of what gn2pg last wrote
    acteurs      text,                     -- a JDD's jdd_acteurs as rows last sent them (views without jdd_data)
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (level, uuid)
);
COMMENT ON TABLE gn2pg.destination_metadata IS
    'CA and JDD gn2pg created in gn_meta, which it keeps up to date; CA and JDD that existed before are used as they are.';

ALTER TABLE gn2pg.run_log
    ADD COLUMN synthese_inserted bigint NOT NULL DEFAULT 0,
    ADD COLUMN synthese_updated bigint NOT NULL DEFAULT 0,
    ADD COLUMN synthese_unchanged bigint NOT NULL DEFAULT 0,
    ADD COLUMN synthese_deleted bigint NOT NULL DEFAULT 0,
    ADD COLUMN synthese_defaulted bigint NOT NULL DEFAULT 0,
    ADD COLUMN synthese_pending_taxon bigint NOT NULL DEFAULT 0,
    ADD COLUMN synthese_pending_habitat bigint NOT NULL DEFAULT 0,
    ADD COLUMN synthese_pending_nomenclature bigint NOT NULL DEFAULT 0,
    ADD COLUMN synthese_pending_uuid_conflict bigint NOT NULL DEFAULT 0,
    ADD COLUMN synthese_pending_other bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN gn2pg.run_log.synthese_inserted IS 'GeoNature destination: rows inserted into gn_synthese.synthese.';
COMMENT ON COLUMN gn2pg.run_log.synthese_updated IS 'GeoNature destination: synthese rows updated (only their changed columns).';
COMMENT ON COLUMN gn2pg.run_log.synthese_unchanged IS 'GeoNature destination: rows received whose synthese row needed no change.';
COMMENT ON COLUMN gn2pg.run_log.synthese_deleted IS 'GeoNature destination: synthese rows deleted (deleted at the source).';
COMMENT ON COLUMN gn2pg.run_log.synthese_defaulted IS
    'GeoNature destination: rows written with a nomenclature replaced by its type''s default (nomenclature_unknown = default).';
COMMENT ON COLUMN gn2pg.run_log.synthese_pending_taxon IS 'GeoNature destination: rows left pending: cd_nom not in taxonomie.taxref.';
COMMENT ON COLUMN gn2pg.run_log.synthese_pending_habitat IS 'GeoNature destination: rows left pending: cd_hab not in ref_habitats.habref.';
COMMENT ON COLUMN gn2pg.run_log.synthese_pending_nomenclature IS
    'GeoNature destination: rows left pending: a nomenclature value unknown or ambiguous (nomenclature_unknown = reject).';
COMMENT ON COLUMN gn2pg.run_log.synthese_pending_uuid_conflict IS
    'GeoNature destination: rows left pending: their id_perm_sinp belongs to another synthese row.';
COMMENT ON COLUMN gn2pg.run_log.synthese_pending_other IS
    'GeoNature destination: rows left pending for another reason (no dataset, a value the synthese refuses).';

SELECT pg_catalog.pg_extension_config_dump('gn2pg.destination', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.destination_row', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.nomenclature_mapping', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.destination_report', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.destination_report_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.destination_metadata', '');

------------------------------------------------------------------------------------------------
-- What the destination must have
------------------------------------------------------------------------------------------------

-- _destination_missing lists the GeoNature objects a destination needs that this database lacks.
CREATE FUNCTION gn2pg._destination_missing() RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(r.name ORDER BY r.name), '{}')
      FROM unnest(ARRAY['gn_synthese.synthese', 'gn_synthese.t_sources', 'gn_synthese.defaults_nomenclatures_value',
                        'gn_meta.t_acquisition_frameworks', 'gn_meta.t_datasets', 'gn_meta.cor_dataset_actor',
                        'gn_meta.cor_acquisition_framework_actor', 'ref_nomenclatures.t_nomenclatures',
                        'ref_nomenclatures.bib_nomenclatures_types', 'taxonomie.taxref', 'ref_habitats.habref',
                        'ref_geo.l_areas', 'ref_geo.bib_areas_types', 'utilisateurs.bib_organismes']) AS r(name)
     WHERE to_regclass(r.name) IS NULL;
$$;
COMMENT ON FUNCTION gn2pg._destination_missing() IS 'Internal: GeoNature tables a destination needs that this database lacks.';

-- The nomenclature fields of an export row, in the order of the work table's arrays
-- (nomen[i] / nid[i]): export field, synthese column, nomenclature type.
CREATE FUNCTION gn2pg._destination_fields()
RETURNS TABLE (i integer, field text, column_name text, mnemonique text)
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    VALUES (1, 'nature_objet_geo', 'id_nomenclature_geo_object_nature', 'NAT_OBJ_GEO'),
           (2, 'type_regroupement', 'id_nomenclature_grp_typ', 'TYP_GRP'),
           (3, 'comportement', 'id_nomenclature_behaviour', 'OCC_COMPORTEMENT'),
           (4, 'technique_obs', 'id_nomenclature_obs_technique', 'METH_OBS'),
           (5, 'statut_biologique', 'id_nomenclature_bio_status', 'STATUT_BIO'),
           (6, 'etat_biologique', 'id_nomenclature_bio_condition', 'ETA_BIO'),
           (7, 'naturalite', 'id_nomenclature_naturalness', 'NATURALITE'),
           (8, 'preuve_existante', 'id_nomenclature_exist_proof', 'PREUVE_EXIST'),
           (9, 'precision_diffusion', 'id_nomenclature_diffusion_level', 'NIV_PRECIS'),
           (10, 'stade_vie', 'id_nomenclature_life_stage', 'STADE_VIE'),
           (11, 'sexe', 'id_nomenclature_sex', 'SEXE'),
           (12, 'objet_denombrement', 'id_nomenclature_obj_count', 'OBJ_DENBR'),
           (13, 'type_denombrement', 'id_nomenclature_type_count', 'TYP_DENBR'),
           (14, 'niveau_sensibilite', 'id_nomenclature_sensitivity', 'SENSIBILITE'),
           (15, 'statut_observation', 'id_nomenclature_observation_status', 'STATUT_OBS'),
           (16, 'floutage_dee', 'id_nomenclature_blurring', 'DEE_FLOU'),
           (17, 'statut_source', 'id_nomenclature_source_status', 'STATUT_SOURCE'),
           (18, 'type_info_geo', 'id_nomenclature_info_geo_type', 'TYP_INF_GEO'),
           (19, 'methode_determination', 'id_nomenclature_determination_method', 'METH_DETERMIN');
$$;
COMMENT ON FUNCTION gn2pg._destination_fields() IS
    'Internal: nomenclature fields of an export row, their synthese column and nomenclature type.';

-- _destination_srid is the SRID of the synthese's local geometries (find_srid is slow: it is
-- read when a source is set up and at the end of each run, and kept in gn2pg.destination).
CREATE FUNCTION gn2pg._destination_srid() RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_srid integer;
BEGIN
    EXECUTE format('SELECT %I.find_srid(''gn_synthese'', ''synthese'', ''the_geom_local'')', gn2pg._destination_postgis())
       INTO v_srid;
    RETURN v_srid;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_srid() IS 'Internal: find_srid() of gn_synthese.synthese.the_geom_local.';

-- _destination_geonature_path is the search_path GeoNature's triggers and functions need (they
-- name tables and PostGIS functions without a schema and set none): the database's own
-- setting (ALTER DATABASE ... SET search_path), else PostgreSQL's default. Never a role's
-- setting: a caller of a SECURITY DEFINER function must not choose where the code they trigger
-- looks for names. The writers set it for their own duration only (set_config(..., true)
-- inside a function with a SET clause).
CREATE FUNCTION gn2pg._destination_geonature_path() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT substring(c.setting FROM length('search_path=') + 1)
                       FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) AS c(setting)
                      WHERE s.setdatabase = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
                        AND s.setrole = 0 AND c.setting LIKE 'search\_path=%'),
                    '"$user", public');
$$;
COMMENT ON FUNCTION gn2pg._destination_geonature_path() IS
    'Internal: the search_path GeoNature''s triggers run with when gn2pg writes its tables (the database''s setting, else the default).';

-- _destination_postgis is the schema PostGIS lives in.
CREATE FUNCTION gn2pg._destination_postgis() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.nspname::text FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'postgis';
$$;
COMMENT ON FUNCTION gn2pg._destination_postgis() IS 'Internal: the schema of PostGIS.';

------------------------------------------------------------------------------------------------
-- Enabling and disabling
------------------------------------------------------------------------------------------------

-- _destination_configure applies a source's options (called by gn2pg_add_source in its
-- transaction): with "destination": "geonature", checks GeoNature is there, creates or updates
-- the source's t_sources row and takes over the synthese rows an earlier enablement kept;
-- without it, refuses to drop a destination that still holds rows (the caller must say what
-- becomes of them).
CREATE FUNCTION gn2pg._destination_configure(p_source text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s gn2pg.source;
    v_missing text[];
    v_id integer;
    v_name text := 'gn2pg:' || p_source;
    v_url text;
    v_key text;
    v_rows bigint;
BEGIN
    -- GeoNature's own triggers and functions name objects without their schema and set no
    -- search_path (see _destination_geonature_path). Everything in this function stays
    -- schema-qualified.
    PERFORM set_config('search_path', gn2pg._destination_geonature_path(), true);
    SELECT * INTO s FROM gn2pg.source WHERE name = p_source;
    IF s.options ->> 'destination' IS NULL THEN
        IF EXISTS (SELECT 1 FROM gn2pg.destination d WHERE d.source = p_source) THEN
            RAISE EXCEPTION 'gn2pg: source "%" writes to GeoNature: its options must keep "destination"', p_source
                  USING ERRCODE = 'object_in_use',
                        DETAIL = 'Its rows are in gn_synthese.synthese; removing the option would leave them without saying what becomes of them.',
                        HINT = format('To stop writing to GeoNature, call gn2pg_disable_destination(%L, synthese => ''keep'') or (%L, synthese => ''delete'').',
                                      p_source, p_source);
        END IF;
        RETURN;
    END IF;
    v_missing := gn2pg._destination_missing();
    IF cardinality(v_missing) > 0 THEN
        RAISE EXCEPTION 'gn2pg: source "%" cannot write to GeoNature: this database has no GeoNature schema', p_source
              USING ERRCODE = 'undefined_table',
                    DETAIL = 'Missing: ' || array_to_string(v_missing, ', ') || '.',
                    HINT = 'Register the source in the database of GeoNature (with GeoNature 2.12 or later installed), or without "destination".';
    END IF;
    v_url := regexp_replace(s.url, '/api$', '');
    v_key := coalesce(s.options ->> 'key_column', 'id_synthese');
    SELECT t.id_source INTO v_id FROM gn_synthese.t_sources t WHERE t.name_source = v_name;
    IF v_id IS NULL THEN
        INSERT INTO gn_synthese.t_sources (name_source, desc_source, entity_source_pk_field, url_source)
        VALUES (v_name, format('Observations harvested by gn2pg from export %s of %s (gn2pg source %s)', s.export_id, v_url, p_source),
                v_key, v_url)
        RETURNING id_source INTO v_id;
    ELSE
        UPDATE gn_synthese.t_sources t
           SET desc_source = format('Observations harvested by gn2pg from export %s of %s (gn2pg source %s)', s.export_id, v_url, p_source),
               entity_source_pk_field = v_key, url_source = v_url, meta_update_date = now()
         WHERE t.id_source = v_id
           AND (t.entity_source_pk_field IS DISTINCT FROM v_key OR t.url_source IS DISTINCT FROM v_url
                OR t.desc_source IS DISTINCT FROM format('Observations harvested by gn2pg from export %s of %s (gn2pg source %s)', s.export_id, v_url, p_source));
    END IF;
    INSERT INTO gn2pg.destination AS d (source, id_source, local_srid) VALUES (p_source, v_id, gn2pg._destination_srid())
    ON CONFLICT (source) DO UPDATE SET id_source = EXCLUDED.id_source, local_srid = EXCLUDED.local_srid
     WHERE (d.id_source, d.local_srid) IS DISTINCT FROM (EXCLUDED.id_source, EXCLUDED.local_srid);
    -- Synthese rows kept by an earlier gn2pg_disable_destination(..., 'keep') are taken over, not
    -- duplicated: the next run or gn2pg_sync_destination() rewrites what changed since.
    INSERT INTO gn2pg.destination_row (source, id_data, id_synthese, state)
    SELECT p_source, o.id_data, sy.id_synthese, 'written'
      FROM gn_synthese.synthese sy
      JOIN gn2pg.observation o ON o.source = p_source AND o.id_data::text = sy.entity_source_pk_value
     WHERE sy.id_source = v_id
    ON CONFLICT (source, id_data) DO NOTHING;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows > 0 THEN
        RAISE NOTICE 'gn2pg: source "%" takes over % rows it had left in gn_synthese.synthese', p_source, v_rows
              USING HINT = format('SELECT gn2pg_sync_destination(%L) brings them up to date now; otherwise the next runs do as rows change.', p_source);
    END IF;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_configure(text) IS
    'Internal: applies the destination option of a source (called by gn2pg_add_source).';

-- _destination_before_remove refuses to remove a source that still writes to GeoNature.
CREATE FUNCTION gn2pg._destination_before_remove(p_source text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM gn2pg.destination d WHERE d.source = p_source) THEN
        RAISE EXCEPTION 'gn2pg: source "%" writes to GeoNature: say what becomes of its synthese rows first', p_source
              USING ERRCODE = 'object_in_use',
                    HINT = format('Call gn2pg_disable_destination(%L, synthese => ''keep'') or (%L, synthese => ''delete''), then remove the source.',
                                  p_source, p_source);
    END IF;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_before_remove(text) IS
    'Internal: refuses gn2pg_remove_source() while the source writes to GeoNature.';

-- _destination_disable stops writing a source to GeoNature; p_synthese says what becomes of its
-- synthese rows. Returns the synthese rows deleted ('delete') or left in place ('keep').
CREATE FUNCTION gn2pg._destination_disable(p_source text, p_synthese text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d gn2pg.destination;
    v_rows bigint;
BEGIN
    -- GeoNature's own triggers and functions name objects without their schema and set no
    -- search_path (see _destination_geonature_path). Everything in this function stays
    -- schema-qualified.
    PERFORM set_config('search_path', gn2pg._destination_geonature_path(), true);
    SELECT * INTO d FROM gn2pg.destination x WHERE x.source = p_source FOR UPDATE;
    IF NOT FOUND THEN
        RAISE NOTICE 'gn2pg_disable_destination: source "%" does not write to GeoNature, nothing done', p_source;
        RETURN 0;
    END IF;
    IF p_synthese = 'delete' THEN
        DELETE FROM gn_synthese.synthese sy WHERE sy.id_source = d.id_source;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        DELETE FROM gn_synthese.t_sources t
         WHERE t.id_source = d.id_source
           AND NOT EXISTS (SELECT 1 FROM gn_synthese.synthese sy WHERE sy.id_source = d.id_source);
    ELSE
        SELECT count(*) INTO v_rows FROM gn_synthese.synthese sy WHERE sy.id_source = d.id_source;
    END IF;
    DELETE FROM gn2pg.destination_row r WHERE r.source = p_source;
    DELETE FROM gn2pg.destination x WHERE x.source = p_source;
    UPDATE gn2pg.source s SET options = s.options - 'destination' - 'nomenclature_unknown', updated_at = now()
     WHERE s.name = p_source;
    RETURN v_rows;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_disable(text, text) IS 'Internal: the work of gn2pg_disable_destination().';

------------------------------------------------------------------------------------------------
-- The work table: one row per harvested row being applied, with its synthese values
------------------------------------------------------------------------------------------------

-- _destination_work creates this session's work table (once) and empties it. A table of that
-- name the session made itself is refused: these functions run as the extension owner.
CREATE FUNCTION gn2pg._destination_work() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_owner oid;
    v_pg text;
BEGIN
    SELECT c.relowner INTO v_owner FROM pg_catalog.pg_class c
     WHERE c.oid = to_regclass('pg_temp.gn2pg_destination_work');
    IF v_owner IS NULL THEN
        v_pg := gn2pg._destination_postgis();
        EXECUTE format($f$
            CREATE TEMP TABLE gn2pg_destination_work (
                id_data bigint PRIMARY KEY,
                id_synthese integer,
                content_hash bigint,
                ca_uuid uuid,
                jdd_uuid uuid,
                jdd_acteurs text,
                unique_id_sinp uuid,
                unique_id_sinp_grp uuid,
                id_dataset integer,
                grp_method text,
                count_min integer,
                count_max integer,
                cd_nom integer,
                cd_hab integer,
                nom_cite text,
                meta_v_taxref text,
                sample_number_proof text,
                digital_proof text,
                non_digital_proof text,
                altitude_min integer,
                altitude_max integer,
                depth_min integer,
                depth_max integer,
                place_name text,
                the_geom_4326 %1$I.geometry,
                the_geom_point %1$I.geometry,
                the_geom_local %1$I.geometry,
                precision integer,
                area_code text,
                area_type text,
                id_area_attachment integer,
                date_min timestamp,
                date_max timestamp,
                validator text,
                observers text,
                determiner text,
                comment_context text,
                comment_description text,
                additional_data jsonb,
                reference_biblio text,
                nomen text[],            -- raw nomenclature values, in _destination_fields() order
                nid integer[],           -- their id_nomenclature
                problem text,            -- pending reason (destination_row.reason)
                detail text,
                defaulted text,          -- values replaced by their type's default
                action "char",           -- I insert, U update, K keep (identical), P pending
                mask bigint,             -- changed columns of an update
                uuid_owner integer,      -- another synthese row holding unique_id_sinp
                uuid_owner_source integer
            ) ON COMMIT DELETE ROWS$f$, v_pg);
    ELSIF v_owner <> (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'gn2pg: the temporary table gn2pg_destination_work of this session was not created by gn2pg'
              USING ERRCODE = 'insufficient_privilege', HINT = 'Drop it, or call the function from a new session.';
    ELSIF EXISTS (SELECT 1 FROM pg_temp.gn2pg_destination_work) THEN
        TRUNCATE pg_temp.gn2pg_destination_work;
    END IF;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_work() IS 'Internal: creates or empties the session''s destination work table.';

-- _destination_stage reads the harvested rows of p_keys that need applying (new, changed, moved
-- to another dataset, pending, or all with p_force) into the work table, with their synthese
-- values. A value that cannot be cast (a date that does not exist, a number too large) raises;
-- the caller then stages the rows one by one. Returns (rows found, rows staged).
CREATE FUNCTION gn2pg._destination_stage(p_source text, p_keys bigint[], p_force boolean,
                                         OUT rows_found bigint, OUT rows_staged bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    WITH k AS MATERIALIZED (
        SELECT o.id_data, o.uuid, o.item, o.geom, o.ca_uuid, o.jdd_uuid, o.content_hash, r.id_synthese,
               p_force OR r.id_data IS NULL OR r.state <> 'written' OR r.content_hash IS NULL
                   OR r.content_hash <> o.content_hash OR r.jdd_uuid IS DISTINCT FROM o.jdd_uuid AS needed
          FROM unnest(p_keys) AS k(id)
          JOIN gn2pg.observation o ON o.source = p_source AND o.id_data = k.id
          LEFT JOIN gn2pg.destination_row r ON r.source = p_source AND r.id_data = k.id
    ), ins AS (
        INSERT INTO pg_temp.gn2pg_destination_work (
            id_data, id_synthese, content_hash, ca_uuid, jdd_uuid, jdd_acteurs, unique_id_sinp, unique_id_sinp_grp,
            grp_method, count_min, count_max, cd_nom, cd_hab, nom_cite, meta_v_taxref, sample_number_proof,
            digital_proof, non_digital_proof, altitude_min, altitude_max, depth_min, depth_max, place_name,
            the_geom_4326, precision, area_code, area_type, date_min, date_max, validator, observers, determiner,
            comment_context, comment_description, additional_data, reference_biblio, nomen)
        SELECT o.id_data, o.id_synthese, o.content_hash, o.ca_uuid, o.jdd_uuid, j.jdd_acteurs, o.uuid,
               nullif(j.id_perm_grp_sinp, '')::uuid, j.methode_regroupement,
               j.nombre_min::integer, j.nombre_max::integer, j.cd_nom::integer,
               coalesce(j.code_habitat, j.cd_hab)::integer,
               j.nom_cite, j.version_taxref, j.numero_preuve, j.preuve_numerique, j.preuve_non_numerique,
               j.altitude_min::integer, j.altitude_max::integer, j.profondeur_min::integer, j.profondeur_max::integer,
               j.nom_lieu, o.geom, j."precision"::integer,
               j.area_attachment ->> 'area_code', j.area_attachment ->> 'type_code',
               j.date_debut::timestamp, j.date_fin::timestamp,
               j.validateur, j.observateurs, j.determinateur, j.comment_releve, j.comment_occurrence,
               -- v_synthese_sinp sends additional_data as text holding JSON.
               CASE jsonb_typeof(j.donnees_additionnelles)
                    WHEN 'string' THEN (j.donnees_additionnelles #>> '{}')::jsonb
                    WHEN 'null' THEN NULL
                    ELSE j.donnees_additionnelles END,
               j.reference_biblio,
               ARRAY[j.nature_objet_geo, j.type_regroupement, j.comportement, j.technique_obs, j.statut_biologique,
                     j.etat_biologique, j.naturalite, j.preuve_existante, j.precision_diffusion, j.stade_vie, j.sexe,
                     j.objet_denombrement, j.type_denombrement, j.niveau_sensibilite, j.statut_observation,
                     j.floutage_dee, j.statut_source, j.type_info_geo, j.methode_determination]
          FROM k AS o
          -- One pass over each item (reading keys one by one would decompress it each time).
          CROSS JOIN LATERAL jsonb_to_record(o.item) AS j(
               jdd_acteurs text, id_perm_grp_sinp text, methode_regroupement text, nombre_min text, nombre_max text,
               cd_nom text, code_habitat text, cd_hab text, nom_cite text, version_taxref text, numero_preuve text,
               preuve_numerique text, preuve_non_numerique text, altitude_min text, altitude_max text,
               profondeur_min text, profondeur_max text, nom_lieu text, "precision" text, area_attachment jsonb,
               date_debut text, date_fin text, validateur text, observateurs text, determinateur text,
               comment_releve text, comment_occurrence text, donnees_additionnelles jsonb, reference_biblio text,
               nature_objet_geo text, type_regroupement text, comportement text, technique_obs text,
               statut_biologique text, etat_biologique text, naturalite text, preuve_existante text,
               precision_diffusion text, stade_vie text, sexe text, objet_denombrement text, type_denombrement text,
               niveau_sensibilite text, statut_observation text, floutage_dee text, statut_source text,
               type_info_geo text, methode_determination text)
         WHERE o.needed
        ON CONFLICT (id_data) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM k), (SELECT count(*) FROM ins) INTO rows_found, rows_staged;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_stage(text, bigint[], boolean) IS
    'Internal: reads the harvested rows that need applying into the destination work table.';

------------------------------------------------------------------------------------------------
-- Reports and small lookups
------------------------------------------------------------------------------------------------

-- _destination_report counts rows of a run (or of a call outside runs) under (field, value,
-- problem, outcome).
CREATE FUNCTION gn2pg._destination_report(p_source text, p_run_id bigint, p_field text, p_value text,
                                          p_problem text, p_outcome text, p_rows bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO gn2pg.destination_report AS r (source, run_id, sync_at, field, value, problem, outcome, rows)
    VALUES (p_source, p_run_id, CASE WHEN p_run_id IS NULL THEN now() END, p_field, p_value, p_problem, p_outcome, p_rows)
    ON CONFLICT (source, run_id, sync_at, field, value, problem, outcome)
    DO UPDATE SET rows = r.rows + EXCLUDED.rows, last_seen = now();
$$;
COMMENT ON FUNCTION gn2pg._destination_report(text, bigint, text, text, text, text, bigint) IS
    'Internal: adds rows to a line of gn2pg.destination_report.';

-- _destination_code is the id of a nomenclature value given by code (NULL if unknown).
CREATE FUNCTION gn2pg._destination_code(p_type text, p_code text) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT n.id_nomenclature FROM ref_nomenclatures.t_nomenclatures n
              JOIN ref_nomenclatures.bib_nomenclatures_types t ON t.id_type = n.id_type
             WHERE t.mnemonique = p_type AND n.cd_nomenclature = p_code);
END
$$;
COMMENT ON FUNCTION gn2pg._destination_code(text, text) IS 'Internal: id_nomenclature of (type, cd_nomenclature).';

-- _destination_meta_code: a metadata nomenclature from its code, else the type's default in
-- gn_meta (reported).
CREATE FUNCTION gn2pg._destination_meta_code(p_source text, p_run_id bigint, p_field text, p_type text, p_code text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id integer := gn2pg._destination_code(p_type, p_code);
BEGIN
    IF v_id IS NULL THEN
        v_id := nullif(ref_nomenclatures.get_default_nomenclature_value(p_type::varchar), -1);
        IF p_code IS NOT NULL THEN
            PERFORM gn2pg._destination_report(p_source, p_run_id, p_field, p_code, 'unknown ' || p_type || ' code', 'defaulted', 1);
        END IF;
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_meta_code(text, bigint, text, text, text) IS
    'Internal: a CA/JDD nomenclature from its code, else the type''s default (reported).';

-- _destination_date reads a date sent as text; NULL when it is not one.
CREATE FUNCTION gn2pg._destination_date(p_text text) RETURNS date
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN left(p_text, 10)::date;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_date(text) IS 'Internal: a date sent as text, NULL when it is not one.';

-- _destination_organism finds an organism by name, then by uuid, or creates it.
CREATE FUNCTION gn2pg._destination_organism(p_uuid uuid, p_name text) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id integer;
BEGIN
    -- GeoNature's own triggers and functions name objects without their schema and set no
    -- search_path (see _destination_geonature_path). Everything in this function stays
    -- schema-qualified.
    PERFORM set_config('search_path', gn2pg._destination_geonature_path(), true);
    SELECT o.id_organisme INTO v_id FROM utilisateurs.bib_organismes o WHERE o.uuid_organisme = p_uuid;
    IF v_id IS NULL THEN
        SELECT min(o.id_organisme) INTO v_id FROM utilisateurs.bib_organismes o WHERE o.nom_organisme = p_name;
    END IF;
    IF v_id IS NULL THEN
        INSERT INTO utilisateurs.bib_organismes (uuid_organisme, nom_organisme)
        VALUES (p_uuid, left(p_name, 500)) RETURNING id_organisme INTO v_id;
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_organism(uuid, text) IS 'Internal: an organism of utilisateurs.bib_organismes, created if missing.';

-- _destination_actors: (organism uuid, name, role code) of a CA or JDD: its organisms as the
-- source describes them (ca_data/jdd_data actors, or jdd_acteurs), else the source's own
-- organism (options.organism, else "gn2pg: <source>") as principal contact, because
-- GeoNature's exports hide the rows of datasets without actors. People are not copied: they
-- would become accounts of utilisateurs.t_roles.
CREATE FUNCTION gn2pg._destination_actors(p_source text, p_item jsonb, p_acteurs text)
RETURNS TABLE (uuid uuid, name text, role text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_acteurs jsonb;
    v_org text;
BEGIN
    IF jsonb_typeof(p_item -> 'actors') = 'array' THEN
        RETURN QUERY
        SELECT DISTINCT ON (a ->> 'uuid_actor') (a ->> 'uuid_actor')::uuid, a -> 'identity' ->> 'organism_name',
               coalesce(a ->> 'cd_nomenclature_actor_role', '1')
          FROM jsonb_array_elements(p_item -> 'actors') a
         WHERE a ->> 'type_role' = 'organism' AND (a ->> 'uuid_actor') ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
           AND a -> 'identity' ->> 'organism_name' IS NOT NULL;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    IF p_acteurs ~ '^\s*\[' THEN
        BEGIN
            v_acteurs := p_acteurs::jsonb;
        EXCEPTION WHEN data_exception THEN
            v_acteurs := NULL;
        END;
        IF jsonb_typeof(v_acteurs) = 'array' THEN
            RETURN QUERY
            SELECT DISTINCT ON (a ->> 'uuid_organism') (a ->> 'uuid_organism')::uuid, a ->> 'nom_organisme',
                   coalesce(a ->> 'type_role', '1')
              FROM jsonb_array_elements(v_acteurs) a
             WHERE (a ->> 'uuid_organism') ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' AND a ->> 'nom_organisme' IS NOT NULL;
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
    END IF;
    SELECT coalesce(nullif(btrim(s.options ->> 'organism'), ''), 'gn2pg: ' || s.name) INTO v_org
      FROM gn2pg.source s WHERE s.name = p_source;
    RETURN QUERY SELECT md5('gn2pg organism ' || v_org)::uuid, v_org, '1';
END
$$;
COMMENT ON FUNCTION gn2pg._destination_actors(text, jsonb, text) IS
    'Internal: the organisms written as actors of a CA or JDD gn2pg creates.';

-- _destination_set_actors replaces the actors of a CA ('ca') or JDD ('jdd') gn2pg created.
CREATE FUNCTION gn2pg._destination_set_actors(p_level text, p_id integer, p_actors jsonb, p_source text, p_run_id bigint)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a record;
    v_org integer;
    v_role integer;
BEGIN
    -- GeoNature's own triggers and functions name objects without their schema and set no
    -- search_path (see _destination_geonature_path). Everything in this function stays
    -- schema-qualified.
    PERFORM set_config('search_path', gn2pg._destination_geonature_path(), true);
    IF p_level = 'ca' THEN
        DELETE FROM gn_meta.cor_acquisition_framework_actor x WHERE x.id_acquisition_framework = p_id;
    ELSE
        DELETE FROM gn_meta.cor_dataset_actor x WHERE x.id_dataset = p_id;
    END IF;
    FOR a IN SELECT * FROM jsonb_to_recordset(p_actors) AS t(uuid uuid, name text, role text) LOOP
        v_org := gn2pg._destination_organism(a.uuid, a.name);
        v_role := gn2pg._destination_meta_code(p_source, p_run_id, p_level || ' actor role', 'ROLE_ACTEUR', a.role);
        IF p_level = 'ca' THEN
            INSERT INTO gn_meta.cor_acquisition_framework_actor (id_acquisition_framework, id_organism, id_nomenclature_actor_role)
            VALUES (p_id, v_org, v_role);
        ELSE
            INSERT INTO gn_meta.cor_dataset_actor (id_dataset, id_organism, id_nomenclature_actor_role)
            VALUES (p_id, v_org, v_role);
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_set_actors(text, integer, jsonb, text, bigint) IS
    'Internal: replaces the actors of a CA or JDD gn2pg created.';

------------------------------------------------------------------------------------------------
-- Metadata: the CA and JDD of the rows, in gn_meta before the rows
------------------------------------------------------------------------------------------------

-- _destination_ca makes sure CA p_uuid exists in gn_meta and returns its id: an existing CA
-- is used as it is, unless gn2pg created it, in which case it is updated from what gn2pg knows
-- now (gn2pg.target_metadata for a mapping target, else the source's gn2pg.metadata).
CREATE FUNCTION gn2pg._destination_ca(p_source text, p_run_id bigint, p_uuid uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id integer;
    v_tracked gn2pg.destination_metadata;
    v_name text;
    v_desc text;
    v_item jsonb;
    v_start date;
    v_end date;
    v_actors jsonb;
    v_fp text;
    v_level integer;
    v_financing integer;
BEGIN
    -- GeoNature's own triggers and functions name objects without their schema and set no
    -- search_path (see _destination_geonature_path). Everything in this function stays
    -- schema-qualified.
    PERFORM set_config('search_path', gn2pg._destination_geonature_path(), true);
    IF p_uuid IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT a.id_acquisition_framework INTO v_id FROM gn_meta.t_acquisition_frameworks a
     WHERE a.unique_acquisition_framework_id = p_uuid;
    SELECT * INTO v_tracked FROM gn2pg.destination_metadata m WHERE m.level = 'ca' AND m.uuid = p_uuid;
    IF v_id IS NOT NULL AND (v_tracked.id IS DISTINCT FROM v_id) THEN
        RETURN v_id;                    -- not gn2pg's: used as it is
    END IF;
    SELECT coalesce(t.name, m.name), t.description, coalesce(m.item, '{}'::jsonb)
      INTO v_name, v_desc, v_item
      FROM (SELECT 1) one
      LEFT JOIN gn2pg.target_metadata t ON t.level = 'ca' AND t.uuid = p_uuid
      LEFT JOIN gn2pg.metadata m ON m.source = p_source AND m.level = 'ca' AND m.uuid = p_uuid;
    v_name := left(coalesce(v_name, 'Cadre d''acquisition ' || p_uuid), 255);
    v_desc := coalesce(v_desc, v_item ->> 'desc',
                       format('Cadre d''acquisition des observations moissonnées par gn2pg (source %s)', p_source));
    v_start := coalesce(gn2pg._destination_date(v_item ->> 'start_date'),
                        (SELECT a.acquisition_framework_start_date FROM gn_meta.t_acquisition_frameworks a
                          WHERE a.id_acquisition_framework = v_id),
                        current_date);
    v_end := gn2pg._destination_date(v_item ->> 'end_date');
    IF v_end < v_start THEN
        v_end := NULL;
    END IF;
    SELECT coalesce(jsonb_agg(to_jsonb(x) ORDER BY x.uuid), '[]') INTO v_actors
      FROM gn2pg._destination_actors(p_source, v_item, NULL) x;
    v_fp := md5(jsonb_build_object('name', v_name, 'desc', v_desc, 'start', v_start, 'end', v_end,
                                   'level', v_item ->> 'territorial_level', 'financing', v_item ->> 'financing_type',
                                   'target', v_item ->> 'target_description',
                                   'ecologic', v_item ->> 'ecologic_or_geologic_target',
                                   'closing', v_item ->> 'initial_closing_date', 'actors', v_actors)::text);
    IF v_id IS NOT NULL AND v_tracked.fingerprint = v_fp THEN
        RETURN v_id;
    END IF;
    v_level := gn2pg._destination_meta_code(p_source, p_run_id, 'ca_data.territorial_level', 'NIVEAU_TERRITORIAL',
                                            v_item ->> 'territorial_level');
    v_financing := gn2pg._destination_meta_code(p_source, p_run_id, 'ca_data.financing_type', 'TYPE_FINANCEMENT',
                                                v_item ->> 'financing_type');
    IF v_id IS NULL THEN
        INSERT INTO gn_meta.t_acquisition_frameworks
               (unique_acquisition_framework_id, acquisition_framework_name, acquisition_framework_desc,
                id_nomenclature_territorial_level, id_nomenclature_financing_type, target_description,
                ecologic_or_geologic_target, is_parent, acquisition_framework_start_date,
                acquisition_framework_end_date, initial_closing_date, meta_create_date, additional_data)
        VALUES (p_uuid, v_name, v_desc, v_level, v_financing, v_item ->> 'target_description',
                v_item ->> 'ecologic_or_geologic_target', false, v_start, v_end,
                gn2pg._destination_date(v_item ->> 'initial_closing_date'), now(),
                jsonb_build_object('gn2pg_source', p_source))
        RETURNING id_acquisition_framework INTO v_id;
        INSERT INTO gn2pg.destination_metadata (level, uuid, id, created_by, fingerprint)
        VALUES ('ca', p_uuid, v_id, p_source, v_fp);
    ELSE
        UPDATE gn_meta.t_acquisition_frameworks a
           SET acquisition_framework_name = v_name, acquisition_framework_desc = v_desc,
               id_nomenclature_territorial_level = v_level, id_nomenclature_financing_type = v_financing,
               target_description = v_item ->> 'target_description',
               ecologic_or_geologic_target = v_item ->> 'ecologic_or_geologic_target',
               acquisition_framework_start_date = v_start, acquisition_framework_end_date = v_end,
               initial_closing_date = gn2pg._destination_date(v_item ->> 'initial_closing_date'),
               meta_update_date = now()
         WHERE a.id_acquisition_framework = v_id;
        UPDATE gn2pg.destination_metadata m SET fingerprint = v_fp, updated_at = now()
         WHERE m.level = 'ca' AND m.uuid = p_uuid;
    END IF;
    PERFORM gn2pg._destination_set_actors('ca', v_id, v_actors, p_source, p_run_id);
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_ca(text, bigint, uuid) IS
    'Internal: the id of a CA in gn_meta, created or updated from what gn2pg knows when gn2pg owns it.';

-- _destination_jdd does the same for JDD p_uuid, under CA p_ca (the rows' CA after mapping).
CREATE FUNCTION gn2pg._destination_jdd(p_source text, p_run_id bigint, p_uuid uuid, p_ca uuid, p_acteurs text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id integer;
    v_tracked gn2pg.destination_metadata;
    v_ca integer;
    v_name text;
    v_desc text;
    v_item jsonb;
    v_actors jsonb;
    v_fp text;
    v_marine boolean;
    v_terrestrial boolean;
BEGIN
    -- GeoNature's own triggers and functions name objects without their schema and set no
    -- search_path (see _destination_geonature_path). Everything in this function stays
    -- schema-qualified.
    PERFORM set_config('search_path', gn2pg._destination_geonature_path(), true);
    IF p_uuid IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT d.id_dataset INTO v_id FROM gn_meta.t_datasets d WHERE d.unique_dataset_id = p_uuid;
    SELECT * INTO v_tracked FROM gn2pg.destination_metadata m WHERE m.level = 'jdd' AND m.uuid = p_uuid;
    IF v_id IS NOT NULL AND (v_tracked.id IS DISTINCT FROM v_id) THEN
        RETURN v_id;                    -- not gn2pg's: used as it is
    END IF;
    p_acteurs := coalesce(p_acteurs, v_tracked.acteurs);
    SELECT coalesce(t.name, m.name), t.description, coalesce(m.item, '{}'::jsonb), coalesce(p_ca, t.parent_ca, m.parent_uuid)
      INTO v_name, v_desc, v_item, p_ca
      FROM (SELECT 1) one
      LEFT JOIN gn2pg.target_metadata t ON t.level = 'jdd' AND t.uuid = p_uuid
      LEFT JOIN gn2pg.metadata m ON m.source = p_source AND m.level = 'jdd' AND m.uuid = p_uuid;
    v_ca := gn2pg._destination_ca(p_source, p_run_id, p_ca);
    IF v_ca IS NULL THEN
        RETURN v_id;                    -- without a CA, a new JDD cannot be created: rows wait
    END IF;
    v_name := left(coalesce(v_name, 'Jeu de données ' || p_uuid), 255);
    v_desc := coalesce(v_desc, v_item ->> 'desc', format('Observations moissonnées par gn2pg (source %s)', p_source));
    v_marine := CASE WHEN jsonb_typeof(v_item -> 'marine_domain') = 'boolean' THEN (v_item ->> 'marine_domain')::boolean ELSE false END;
    v_terrestrial := CASE WHEN jsonb_typeof(v_item -> 'terrestrial_domain') = 'boolean'
                          THEN (v_item ->> 'terrestrial_domain')::boolean ELSE true END;
    SELECT coalesce(jsonb_agg(to_jsonb(x) ORDER BY x.uuid), '[]') INTO v_actors
      FROM gn2pg._destination_actors(p_source, v_item, p_acteurs) x;
    v_fp := md5(jsonb_build_object('ca', v_ca, 'name', v_name, 'desc', v_desc, 'short', v_item ->> 'shortname',
                                   'keywords', v_item ->> 'keywords', 'marine', v_marine, 'terrestrial', v_terrestrial,
                                   'data_type', v_item ->> 'data_type', 'objectif', v_item ->> 'dataset_objectif',
                                   'collecting', v_item ->> 'collecting_method', 'origin', v_item ->> 'data_origin',
                                   'status', v_item ->> 'source_status', 'resource', v_item ->> 'resource_type',
                                   'actors', v_actors)::text);
    IF v_id IS NOT NULL AND v_tracked.fingerprint = v_fp THEN
        RETURN v_id;
    END IF;
    IF v_id IS NULL THEN
        INSERT INTO gn_meta.t_datasets
               (unique_dataset_id, id_acquisition_framework, dataset_name, dataset_shortname, dataset_desc,
                id_nomenclature_data_type, keywords, marine_domain, terrestrial_domain, id_nomenclature_dataset_objectif,
                id_nomenclature_collecting_method, id_nomenclature_data_origin, id_nomenclature_source_status,
                id_nomenclature_resource_type, active, meta_create_date, additional_data)
        VALUES (p_uuid, v_ca, v_name, left(coalesce(v_item ->> 'shortname', v_name), 30), v_desc,
                gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.data_type', 'DATA_TYP', v_item ->> 'data_type'),
                v_item ->> 'keywords', v_marine, v_terrestrial,
                gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.dataset_objectif', 'JDD_OBJECTIFS', v_item ->> 'dataset_objectif'),
                gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.collecting_method', 'METHO_RECUEIL', v_item ->> 'collecting_method'),
                gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.data_origin', 'DS_PUBLIQUE', v_item ->> 'data_origin'),
                gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.source_status', 'STATUT_SOURCE', v_item ->> 'source_status'),
                gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.resource_type', 'RESOURCE_TYP', v_item ->> 'resource_type'),
                true, now(), jsonb_build_object('gn2pg_source', p_source))
        RETURNING id_dataset INTO v_id;
        INSERT INTO gn2pg.destination_metadata (level, uuid, id, created_by, fingerprint, acteurs)
        VALUES ('jdd', p_uuid, v_id, p_source, v_fp, p_acteurs);
    ELSE
        UPDATE gn_meta.t_datasets d
           SET id_acquisition_framework = v_ca, dataset_name = v_name,
               dataset_shortname = left(coalesce(v_item ->> 'shortname', v_name), 30), dataset_desc = v_desc,
               id_nomenclature_data_type = gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.data_type', 'DATA_TYP', v_item ->> 'data_type'),
               keywords = v_item ->> 'keywords', marine_domain = v_marine, terrestrial_domain = v_terrestrial,
               id_nomenclature_dataset_objectif = gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.dataset_objectif', 'JDD_OBJECTIFS', v_item ->> 'dataset_objectif'),
               id_nomenclature_collecting_method = gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.collecting_method', 'METHO_RECUEIL', v_item ->> 'collecting_method'),
               id_nomenclature_data_origin = gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.data_origin', 'DS_PUBLIQUE', v_item ->> 'data_origin'),
               id_nomenclature_source_status = gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.source_status', 'STATUT_SOURCE', v_item ->> 'source_status'),
               id_nomenclature_resource_type = gn2pg._destination_meta_code(p_source, p_run_id, 'jdd_data.resource_type', 'RESOURCE_TYP', v_item ->> 'resource_type'),
               meta_update_date = now()
         WHERE d.id_dataset = v_id;
        UPDATE gn2pg.destination_metadata m SET fingerprint = v_fp, acteurs = p_acteurs, updated_at = now()
         WHERE m.level = 'jdd' AND m.uuid = p_uuid;
    END IF;
    PERFORM gn2pg._destination_set_actors('jdd', v_id, v_actors, p_source, p_run_id);
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_jdd(text, bigint, uuid, uuid, text) IS
    'Internal: the id of a JDD in gn_meta, created or updated from what gn2pg knows when gn2pg owns it.';

------------------------------------------------------------------------------------------------
-- Writing the synthese
------------------------------------------------------------------------------------------------

-- _destination_insert inserts the work rows to insert (all, or those of p_only) into the
-- synthese and records their id_synthese. Nomenclatures GeoNature keeps for itself (validation
-- status, biogeographic status) get their defaults.
CREATE FUNCTION gn2pg._destination_insert(p_id_source integer, p_only bigint[]) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_valid integer;
    v_biogeo integer;
    v_rows bigint;
BEGIN
    -- GeoNature's own triggers and functions name objects without their schema and set no
    -- search_path (see _destination_geonature_path). Everything in this function stays
    -- schema-qualified.
    PERFORM set_config('search_path', gn2pg._destination_geonature_path(), true);
    v_valid := gn_synthese.get_default_nomenclature_value('STATUT_VALID'::varchar);
    v_biogeo := gn_synthese.get_default_nomenclature_value('STAT_BIOGEO'::varchar);
    WITH ins AS (
        INSERT INTO gn_synthese.synthese (
            unique_id_sinp, unique_id_sinp_grp, id_source, entity_source_pk_value, id_dataset,
            id_nomenclature_geo_object_nature, id_nomenclature_grp_typ, id_nomenclature_behaviour,
            id_nomenclature_obs_technique, id_nomenclature_bio_status, id_nomenclature_bio_condition,
            id_nomenclature_naturalness, id_nomenclature_exist_proof, id_nomenclature_diffusion_level,
            id_nomenclature_life_stage, id_nomenclature_sex, id_nomenclature_obj_count, id_nomenclature_type_count,
            id_nomenclature_sensitivity, id_nomenclature_observation_status, id_nomenclature_blurring,
            id_nomenclature_source_status, id_nomenclature_info_geo_type, id_nomenclature_determination_method,
            id_nomenclature_valid_status, id_nomenclature_biogeo_status,
            grp_method, count_min, count_max, cd_nom, cd_hab, nom_cite, meta_v_taxref, sample_number_proof,
            digital_proof, non_digital_proof, altitude_min, altitude_max, depth_min, depth_max, place_name,
            the_geom_4326, the_geom_point, the_geom_local, precision, id_area_attachment, date_min, date_max,
            validator, observers, determiner, comment_context, comment_description, additional_data,
            reference_biblio)
        SELECT w.unique_id_sinp, w.unique_id_sinp_grp, p_id_source, w.id_data::text, w.id_dataset,
               w.nid[1], w.nid[2], w.nid[3], w.nid[4], w.nid[5], w.nid[6], w.nid[7], w.nid[8], w.nid[9], w.nid[10],
               w.nid[11], w.nid[12], w.nid[13], w.nid[14], w.nid[15], w.nid[16], w.nid[17], w.nid[18], w.nid[19],
               v_valid, v_biogeo,
               w.grp_method, w.count_min, w.count_max, w.cd_nom, w.cd_hab, w.nom_cite, w.meta_v_taxref,
               w.sample_number_proof, w.digital_proof, w.non_digital_proof, w.altitude_min, w.altitude_max,
               w.depth_min, w.depth_max, w.place_name, w.the_geom_4326, w.the_geom_point, w.the_geom_local,
               w.precision, w.id_area_attachment, w.date_min, w.date_max, w.validator, w.observers, w.determiner,
               w.comment_context, w.comment_description, w.additional_data, w.reference_biblio
          FROM pg_temp.gn2pg_destination_work w
         WHERE w.action = 'I' AND (p_only IS NULL OR w.id_data = ANY (p_only))
        RETURNING id_synthese, entity_source_pk_value
    )
    UPDATE pg_temp.gn2pg_destination_work w SET id_synthese = ins.id_synthese
      FROM ins WHERE w.id_data = ins.entity_source_pk_value::bigint;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_insert(integer, bigint[]) IS 'Internal: inserts work rows into gn_synthese.synthese.';

-- _destination_set_list is the SET list of an UPDATE of the columns of p_mask (the bits of
-- _destination_apply's comparison), values read from the work row w.
CREATE FUNCTION gn2pg._destination_set_list(p_mask bigint) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(c.expr, ', ' ORDER BY c.bit)
      FROM (VALUES (0, 'unique_id_sinp = w.unique_id_sinp'), (1, 'unique_id_sinp_grp = w.unique_id_sinp_grp'),
                   (2, 'id_dataset = w.id_dataset'), (3, 'grp_method = w.grp_method'), (4, 'count_min = w.count_min'),
                   (5, 'count_max = w.count_max'), (6, 'cd_nom = w.cd_nom'), (7, 'cd_hab = w.cd_hab'),
                   (8, 'nom_cite = w.nom_cite'), (9, 'meta_v_taxref = w.meta_v_taxref'),
                   (10, 'sample_number_proof = w.sample_number_proof'), (11, 'digital_proof = w.digital_proof'),
                   (12, 'non_digital_proof = w.non_digital_proof'), (13, 'altitude_min = w.altitude_min'),
                   (14, 'altitude_max = w.altitude_max'), (15, 'depth_min = w.depth_min'), (16, 'depth_max = w.depth_max'),
                   (17, 'place_name = w.place_name'),
                   (18, 'the_geom_4326 = w.the_geom_4326, the_geom_point = w.the_geom_point, the_geom_local = w.the_geom_local'),
                   (19, 'precision = w.precision'), (20, 'id_area_attachment = w.id_area_attachment'),
                   (21, 'date_min = w.date_min'), (22, 'date_max = w.date_max'), (23, 'validator = w.validator'),
                   (24, 'observers = w.observers'), (25, 'determiner = w.determiner'),
                   (26, 'comment_context = w.comment_context'), (27, 'comment_description = w.comment_description'),
                   (28, 'additional_data = w.additional_data'), (29, 'reference_biblio = w.reference_biblio')
            UNION ALL
            -- Nomenclature i is bit 29 + i; sensitivity (14) is GeoNature's, never updated.
            SELECT 29 + f.i, format('%I = w.nid[%s]', f.column_name, f.i)
              FROM gn2pg._destination_fields() f WHERE f.i <> 14) AS c(bit, expr)
     WHERE p_mask & (1::bigint << c.bit) <> 0;
$$;
COMMENT ON FUNCTION gn2pg._destination_set_list(bigint) IS 'Internal: the SET list updating the synthese columns of a change mask.';

-- _destination_update updates the changed columns of the work rows with change mask p_mask
-- (all, or those of p_only): one statement per set of changed columns, so that GeoNature's
-- row-level UPDATE OF triggers fire only for columns that really changed.
CREATE FUNCTION gn2pg._destination_update(p_mask bigint, p_only bigint[]) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_rows bigint;
BEGIN
    -- GeoNature's own triggers and functions name objects without their schema and set no
    -- search_path (see _destination_geonature_path). Everything in this function stays
    -- schema-qualified.
    PERFORM set_config('search_path', gn2pg._destination_geonature_path(), true);
    -- The rows by primary key (= ANY): an index lookup each, whatever the statistics say.
    EXECUTE format('UPDATE gn_synthese.synthese s SET %s FROM pg_temp.gn2pg_destination_work w
                     WHERE s.id_synthese = ANY ($1) AND w.id_synthese = s.id_synthese',
                   gn2pg._destination_set_list(p_mask))
    USING (SELECT array_agg(w.id_synthese) FROM pg_temp.gn2pg_destination_work w
            WHERE w.action = 'U' AND w.mask = p_mask AND (p_only IS NULL OR w.id_data = ANY (p_only)));
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_update(bigint, bigint[]) IS 'Internal: updates the changed synthese columns of work rows.';

-- _destination_refused turns a row the synthese refused into a pending row with the reason.
CREATE FUNCTION gn2pg._destination_refused(p_id_data bigint, p_sqlstate text, p_message text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE pg_temp.gn2pg_destination_work w
       SET action = 'P',
           problem = CASE WHEN p_sqlstate = '23505' THEN 'uuid_conflict' ELSE 'invalid' END,
           detail = 'refused by gn_synthese.synthese: ' || p_message
     WHERE w.id_data = p_id_data;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_refused(bigint, text, text) IS 'Internal: marks a work row the synthese refused.';

-- _destination_apply applies harvested rows (p_keys) of a source to the synthese, set-based:
-- stages the rows that need it, makes sure their CA/JDD exist, resolves the page's distinct
-- nomenclature values once, marks the rows that cannot be written (and why), inserts the new
-- rows in one statement, updates only the changed columns of the others, and records the
-- outcome per row, per run (run_log counters) and per value (destination_report).
-- A statement the synthese refuses as a whole is retried row by row, so that one bad row
-- stays pending instead of failing the page.
CREATE FUNCTION gn2pg._destination_apply(p_source text, p_run_id bigint, p_keys bigint[], p_force boolean,
                                         OUT inserted bigint, OUT updated bigint, OUT unchanged bigint,
                                         OUT pending bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_dest gn2pg.destination;
    v_policy text;
    v_found bigint;
    v_staged bigint;
    v_k bigint;
    v_ids jsonb;
    v_problems jsonb;
    v_defaults integer[];
    v_fields text[];
    v_typ2 integer;
    v_pg text;
    v_srid integer;
    v_mask bigint;
    v_outcome text;
    v_release integer[];
BEGIN
    -- GeoNature's own triggers and functions name objects without their schema and set no
    -- search_path (see _destination_geonature_path). Everything in this function stays
    -- schema-qualified.
    PERFORM set_config('search_path', gn2pg._destination_geonature_path(), true);
    inserted := 0; updated := 0; unchanged := 0; pending := 0;
    SELECT * INTO v_dest FROM gn2pg.destination x WHERE x.source = p_source;
    IF NOT FOUND OR p_keys IS NULL OR cardinality(p_keys) = 0 THEN
        RETURN;
    END IF;
    SELECT coalesce(s.options ->> 'nomenclature_unknown', 'reject') INTO v_policy FROM gn2pg.source s WHERE s.name = p_source;
    v_outcome := CASE v_policy WHEN 'default' THEN 'defaulted' ELSE 'pending' END;
    PERFORM gn2pg._destination_work();

    -- 1. The rows to apply, with their values.
    BEGIN
        SELECT g.rows_found, g.rows_staged INTO v_found, v_staged FROM gn2pg._destination_stage(p_source, p_keys, p_force) g;
    EXCEPTION WHEN data_exception THEN
        v_found := 0;
        FOREACH v_k IN ARRAY p_keys LOOP
            BEGIN
                v_found := v_found + (SELECT g.rows_found FROM gn2pg._destination_stage(p_source, ARRAY[v_k], p_force) g);
            EXCEPTION WHEN data_exception THEN
                INSERT INTO pg_temp.gn2pg_destination_work (id_data, id_synthese, content_hash, jdd_uuid, action, problem, detail)
                SELECT o.id_data, r.id_synthese, o.content_hash, o.jdd_uuid, 'P', 'invalid', 'a value cannot be read: ' || SQLERRM
                  FROM gn2pg.observation o
                  LEFT JOIN gn2pg.destination_row r ON r.source = o.source AND r.id_data = o.id_data
                 WHERE o.source = p_source AND o.id_data = v_k;
                v_found := v_found + 1;
            END;
        END LOOP;
        SELECT count(*) INTO v_staged FROM pg_temp.gn2pg_destination_work;
    END;
    unchanged := v_found - v_staged;
    IF v_staged > 0 THEN
        -- 2. The CA and JDD of the rows exist before the rows.
        PERFORM gn2pg._destination_jdd(p_source, p_run_id, x.jdd_uuid, x.ca_uuid, x.jdd_acteurs)
           FROM (SELECT DISTINCT ON (w.jdd_uuid) w.jdd_uuid, w.ca_uuid, w.jdd_acteurs
                   FROM pg_temp.gn2pg_destination_work w
                  WHERE w.problem IS NULL AND w.jdd_uuid IS NOT NULL
                  ORDER BY w.jdd_uuid, w.ca_uuid) x;

        -- 3. Nomenclatures: the distinct values of these rows, resolved once. A value resolves
        -- through the source's mapping, else as a code, else as a label of exactly one value
        -- of the type; otherwise it is unknown or ambiguous and never silently defaulted.
        SELECT array_agg(f.field ORDER BY f.i),
               array_agg(gn_synthese.get_default_nomenclature_value(f.mnemonique::varchar) ORDER BY f.i)
          INTO v_fields, v_defaults
          FROM gn2pg._destination_fields() f;
        WITH v AS (
            SELECT DISTINCT u.i::integer AS i, u.value
              FROM pg_temp.gn2pg_destination_work w, unnest(w.nomen) WITH ORDINALITY AS u(value, i)
             WHERE u.value IS NOT NULL
        ), r AS (
            SELECT v.i, v.value,
                   (SELECT n.id_nomenclature FROM gn2pg.nomenclature_mapping m
                      JOIN ref_nomenclatures.bib_nomenclatures_types t ON t.mnemonique = m.type
                      JOIN ref_nomenclatures.t_nomenclatures n ON n.id_type = t.id_type AND n.cd_nomenclature = m.target_code
                     WHERE m.source = p_source AND m.type = f.mnemonique AND m.source_value = v.value) AS mapped,
                   (SELECT n.id_nomenclature FROM ref_nomenclatures.t_nomenclatures n
                      JOIN ref_nomenclatures.bib_nomenclatures_types t ON t.id_type = n.id_type
                     WHERE t.mnemonique = f.mnemonique AND n.cd_nomenclature = v.value) AS by_code,
                   (SELECT array_agg(n.id_nomenclature) FROM ref_nomenclatures.t_nomenclatures n
                      JOIN ref_nomenclatures.bib_nomenclatures_types t ON t.id_type = n.id_type
                     WHERE t.mnemonique = f.mnemonique AND n.label_default = v.value) AS by_label
              FROM v JOIN gn2pg._destination_fields() f ON f.i = v.i
        ), x AS (
            SELECT r.i || ':' || r.value AS k,
                   coalesce(r.mapped, r.by_code, CASE WHEN cardinality(r.by_label) = 1 THEN r.by_label[1] END) AS id,
                   CASE WHEN cardinality(r.by_label) > 1 THEN 'ambiguous label' ELSE 'unknown' END AS problem
              FROM r
        )
        SELECT jsonb_object_agg(x.k, x.id) FILTER (WHERE x.id IS NOT NULL),
               jsonb_object_agg(x.k, x.problem) FILTER (WHERE x.id IS NULL)
          INTO v_ids, v_problems
          FROM x;
        -- 4. In one pass (each pass rewrites the rows of the work table): the dataset, the area of
        -- attachment, the nomenclatures, and the rows that cannot be written, with why (the
        -- first reason found).
        UPDATE pg_temp.gn2pg_destination_work w
           SET id_dataset = x.id_dataset,
               id_area_attachment = x.id_area,
               nid = ARRAY[
                     CASE WHEN w.nomen[1] IS NULL THEN v_defaults[1] ELSE coalesce((v_ids ->> ('1:' || w.nomen[1]))::integer, v_defaults[1]) END,
                     CASE WHEN w.nomen[2] IS NULL THEN v_defaults[2] ELSE coalesce((v_ids ->> ('2:' || w.nomen[2]))::integer, v_defaults[2]) END,
                     CASE WHEN w.nomen[3] IS NULL THEN v_defaults[3] ELSE coalesce((v_ids ->> ('3:' || w.nomen[3]))::integer, v_defaults[3]) END,
                     CASE WHEN w.nomen[4] IS NULL THEN v_defaults[4] ELSE coalesce((v_ids ->> ('4:' || w.nomen[4]))::integer, v_defaults[4]) END,
                     CASE WHEN w.nomen[5] IS NULL THEN v_defaults[5] ELSE coalesce((v_ids ->> ('5:' || w.nomen[5]))::integer, v_defaults[5]) END,
                     CASE WHEN w.nomen[6] IS NULL THEN v_defaults[6] ELSE coalesce((v_ids ->> ('6:' || w.nomen[6]))::integer, v_defaults[6]) END,
                     CASE WHEN w.nomen[7] IS NULL THEN v_defaults[7] ELSE coalesce((v_ids ->> ('7:' || w.nomen[7]))::integer, v_defaults[7]) END,
                     CASE WHEN w.nomen[8] IS NULL THEN v_defaults[8] ELSE coalesce((v_ids ->> ('8:' || w.nomen[8]))::integer, v_defaults[8]) END,
                     CASE WHEN w.nomen[9] IS NULL THEN v_defaults[9] ELSE coalesce((v_ids ->> ('9:' || w.nomen[9]))::integer, v_defaults[9]) END,
                     CASE WHEN w.nomen[10] IS NULL THEN v_defaults[10] ELSE coalesce((v_ids ->> ('10:' || w.nomen[10]))::integer, v_defaults[10]) END,
                     CASE WHEN w.nomen[11] IS NULL THEN v_defaults[11] ELSE coalesce((v_ids ->> ('11:' || w.nomen[11]))::integer, v_defaults[11]) END,
                     CASE WHEN w.nomen[12] IS NULL THEN v_defaults[12] ELSE coalesce((v_ids ->> ('12:' || w.nomen[12]))::integer, v_defaults[12]) END,
                     CASE WHEN w.nomen[13] IS NULL THEN v_defaults[13] ELSE coalesce((v_ids ->> ('13:' || w.nomen[13]))::integer, v_defaults[13]) END,
                     CASE WHEN w.nomen[14] IS NULL THEN v_defaults[14] ELSE coalesce((v_ids ->> ('14:' || w.nomen[14]))::integer, v_defaults[14]) END,
                     CASE WHEN w.nomen[15] IS NULL THEN v_defaults[15] ELSE coalesce((v_ids ->> ('15:' || w.nomen[15]))::integer, v_defaults[15]) END,
                     CASE WHEN w.nomen[16] IS NULL THEN v_defaults[16] ELSE coalesce((v_ids ->> ('16:' || w.nomen[16]))::integer, v_defaults[16]) END,
                     CASE WHEN w.nomen[17] IS NULL THEN v_defaults[17] ELSE coalesce((v_ids ->> ('17:' || w.nomen[17]))::integer, v_defaults[17]) END,
                     CASE WHEN w.nomen[18] IS NULL THEN v_defaults[18] ELSE coalesce((v_ids ->> ('18:' || w.nomen[18]))::integer, v_defaults[18]) END,
                     CASE WHEN w.nomen[19] IS NULL THEN v_defaults[19] ELSE coalesce((v_ids ->> ('19:' || w.nomen[19]))::integer, v_defaults[19]) END],
               problem = x.problem,
               detail = CASE x.problem
                    WHEN 'dataset' THEN
                        CASE WHEN w.jdd_uuid IS NULL THEN 'the row has no dataset (jdd_uuid)'
                             ELSE format('dataset %s is not in gn_meta.t_datasets and cannot be created without its acquisition framework', w.jdd_uuid) END
                    WHEN 'taxon' THEN format('cd_nom %s is not in taxonomie.taxref', w.cd_nom)
                    WHEN 'habitat' THEN format('code_habitat %s is not in ref_habitats.habref', w.cd_hab)
                    WHEN 'invalid' THEN
                        CASE WHEN w.nom_cite IS NULL THEN 'nom_cite is missing'
                             WHEN w.date_min IS NULL THEN 'date_debut is missing'
                             WHEN w.date_max IS NULL THEN 'date_fin is missing'
                             WHEN w.date_max < w.date_min THEN format('date_fin %s is before date_debut %s', w.date_max, w.date_min)
                             WHEN w.count_max < w.count_min THEN format('nombre_max %s is below nombre_min %s', w.count_max, w.count_min)
                             WHEN w.altitude_max < w.altitude_min THEN format('altitude_max %s is below altitude_min %s', w.altitude_max, w.altitude_min)
                             ELSE format('profondeur_max %s is below profondeur_min %s', w.depth_max, w.depth_min) END
               END
          FROM (SELECT w2.id_data, ds.id_dataset,
                       CASE WHEN w2.area_code IS NOT NULL
                            THEN (SELECT a.id_area FROM ref_geo.l_areas a
                                    JOIN ref_geo.bib_areas_types t ON t.id_type = a.id_type
                                   WHERE a.area_code = w2.area_code AND t.type_code = w2.area_type LIMIT 1) END AS id_area,
                       CASE WHEN ds.id_dataset IS NULL THEN 'dataset'
                            WHEN w2.cd_nom IS NOT NULL AND NOT EXISTS (SELECT 1 FROM taxonomie.taxref t WHERE t.cd_nom = w2.cd_nom) THEN 'taxon'
                            WHEN w2.cd_hab IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ref_habitats.habref h WHERE h.cd_hab = w2.cd_hab) THEN 'habitat'
                            WHEN w2.nom_cite IS NULL OR w2.date_min IS NULL OR w2.date_max IS NULL OR w2.date_max < w2.date_min
                                 OR w2.count_max < w2.count_min OR w2.altitude_max < w2.altitude_min
                                 OR w2.depth_max < w2.depth_min THEN 'invalid'
                       END AS problem
                  FROM pg_temp.gn2pg_destination_work w2
                  LEFT JOIN LATERAL (SELECT d.id_dataset FROM gn_meta.t_datasets d
                                      WHERE d.unique_dataset_id = w2.jdd_uuid LIMIT 1) ds ON true
                 WHERE w2.problem IS NULL) x
         WHERE w.id_data = x.id_data;
        IF v_problems IS NOT NULL THEN
            UPDATE pg_temp.gn2pg_destination_work w
               SET defaulted = x.issues
              FROM (SELECT w2.id_data,
                           string_agg(format('%s=%s (%s)', v_fields[u.i::integer], u.value, v_problems ->> (u.i || ':' || u.value)),
                                      ', ' ORDER BY u.i) AS issues
                      FROM pg_temp.gn2pg_destination_work w2, unnest(w2.nomen) WITH ORDINALITY AS u(value, i)
                     WHERE w2.problem IS NULL AND v_problems ? (u.i || ':' || u.value)
                     GROUP BY w2.id_data) x
             WHERE w.id_data = x.id_data;
            PERFORM gn2pg._destination_report(p_source, p_run_id, v_fields[x.i::integer], x.value, v_problems ->> (x.i || ':' || x.value),
                                              v_outcome, x.n)
               FROM (SELECT u.i, u.value, count(*) AS n
                       FROM pg_temp.gn2pg_destination_work w, unnest(w.nomen) WITH ORDINALITY AS u(value, i)
                      WHERE w.problem IS NULL AND v_problems ? (u.i || ':' || u.value)
                      GROUP BY 1, 2) x;
        END IF;
        -- GeoNature refuses type_info_geo 2 (attachment) without the area it is attached to.
        v_typ2 := gn2pg._destination_code('TYP_INF_GEO', '2');
        PERFORM gn2pg._destination_report(p_source, p_run_id, 'type_info_geo', x.value, 'attachment (2) without a known area_attachment',
                                          v_outcome, x.n)
           FROM (SELECT w.nomen[18] AS value, count(*) AS n FROM pg_temp.gn2pg_destination_work w
                  WHERE w.problem IS NULL AND w.nid[18] = v_typ2 AND w.id_area_attachment IS NULL GROUP BY 1) x;
        UPDATE pg_temp.gn2pg_destination_work w
           SET defaulted = concat_ws(', ', w.defaulted, format('type_info_geo=%s (attachment without a known area_attachment)', w.nomen[18])),
               nid[18] = v_defaults[18]
         WHERE w.problem IS NULL AND w.nid[18] = v_typ2 AND w.id_area_attachment IS NULL;
        IF v_policy = 'reject' THEN
            UPDATE pg_temp.gn2pg_destination_work w
               SET problem = 'nomenclature', detail = 'nomenclature values not resolved: ' || w.defaulted, defaulted = NULL
             WHERE w.problem IS NULL AND w.defaulted IS NOT NULL;
        END IF;

        -- 5. Geometries in the destination's projection, and a point of each geometry:
        -- ST_PointOnSurface (on the geometry, unlike a polygon's centroid), or the centroid of a
        -- geometry GEOS cannot handle.
        v_pg := gn2pg._destination_postgis();
        v_srid := v_dest.local_srid;
        BEGIN
            PERFORM gn2pg._destination_geometries(v_pg, v_srid, NULL);
        EXCEPTION WHEN data_exception OR internal_error THEN
            FOR v_k IN SELECT w.id_data FROM pg_temp.gn2pg_destination_work w
                        WHERE w.problem IS NULL AND w.the_geom_4326 IS NOT NULL LOOP
                BEGIN
                    PERFORM gn2pg._destination_geometries(v_pg, v_srid, v_k);
                EXCEPTION WHEN data_exception OR internal_error THEN
                    UPDATE pg_temp.gn2pg_destination_work w
                       SET problem = 'invalid', detail = 'the geometry cannot be projected: ' || SQLERRM
                     WHERE w.id_data = v_k;
                END;
            END LOOP;
        END;

        -- 6. A uuid already in the synthese: a row of this source holding it has given it to
        -- another row (gn2pg.observation holds a uuid once) and releases it first; any other owner
        -- (another source, a module, an import) is a conflict, reported with that owner. One
        -- index lookup per row (LATERAL ... LIMIT 1), whatever the planner thinks of the
        -- synthese's size.
        UPDATE pg_temp.gn2pg_destination_work w
           SET uuid_owner = x.id_synthese, uuid_owner_source = x.id_source
          FROM (SELECT w2.id_data, o.*
                  FROM pg_temp.gn2pg_destination_work w2
                 CROSS JOIN LATERAL (SELECT sy.id_synthese, sy.id_source
                                       FROM gn_synthese.synthese sy
                                      WHERE sy.unique_id_sinp = w2.unique_id_sinp LIMIT 1) o
                 WHERE w2.problem IS NULL AND w2.unique_id_sinp IS NOT NULL) x
         WHERE w.id_data = x.id_data AND x.id_synthese IS DISTINCT FROM w.id_synthese;
        SELECT array_agg(w.uuid_owner) INTO v_release
          FROM pg_temp.gn2pg_destination_work w
         WHERE w.uuid_owner IS NOT NULL AND w.uuid_owner_source = v_dest.id_source;
        IF v_release IS NOT NULL THEN
            UPDATE gn_synthese.synthese sy SET unique_id_sinp = NULL WHERE sy.id_synthese = ANY (v_release);
        END IF;
        UPDATE pg_temp.gn2pg_destination_work w
           SET problem = 'uuid_conflict',
               detail = format('id_perm_sinp %s already belongs to synthese row %s of id_source %s (%s)',
                               w.unique_id_sinp, w.uuid_owner, w.uuid_owner_source,
                               coalesce((SELECT ts.name_source FROM gn_synthese.t_sources ts
                                          WHERE ts.id_source = w.uuid_owner_source), '?'))
         WHERE w.problem IS NULL AND w.uuid_owner IS NOT NULL
           AND NOT (w.uuid_owner = ANY (coalesce(v_release, '{}')));

        -- 7. What to do with each row: pending, insert (new, or its synthese row was deleted
        -- meanwhile), update of the changed columns, or keep (identical).
        UPDATE pg_temp.gn2pg_destination_work w
           SET action = CASE WHEN w.problem IS NOT NULL THEN 'P' WHEN x.existing IS NULL THEN 'I'
                             WHEN x.mask = 0 THEN 'K' ELSE 'U' END,
               mask = CASE WHEN w.problem IS NULL AND x.existing IS NOT NULL THEN x.mask END
          FROM (SELECT w2.id_data, sy.id_synthese AS existing,
                         (CASE WHEN w2.unique_id_sinp IS DISTINCT FROM sy.unique_id_sinp THEN 1::bigint << 0 ELSE 0 END)
                       | (CASE WHEN w2.unique_id_sinp_grp IS DISTINCT FROM sy.unique_id_sinp_grp THEN 1::bigint << 1 ELSE 0 END)
                       | (CASE WHEN w2.id_dataset IS DISTINCT FROM sy.id_dataset THEN 1::bigint << 2 ELSE 0 END)
                       | (CASE WHEN w2.grp_method IS DISTINCT FROM sy.grp_method THEN 1::bigint << 3 ELSE 0 END)
                       | (CASE WHEN w2.count_min IS DISTINCT FROM sy.count_min THEN 1::bigint << 4 ELSE 0 END)
                       | (CASE WHEN w2.count_max IS DISTINCT FROM sy.count_max THEN 1::bigint << 5 ELSE 0 END)
                       | (CASE WHEN w2.cd_nom IS DISTINCT FROM sy.cd_nom THEN 1::bigint << 6 ELSE 0 END)
                       | (CASE WHEN w2.cd_hab IS DISTINCT FROM sy.cd_hab THEN 1::bigint << 7 ELSE 0 END)
                       | (CASE WHEN w2.nom_cite IS DISTINCT FROM sy.nom_cite THEN 1::bigint << 8 ELSE 0 END)
                       | (CASE WHEN w2.meta_v_taxref IS DISTINCT FROM sy.meta_v_taxref THEN 1::bigint << 9 ELSE 0 END)
                       | (CASE WHEN w2.sample_number_proof IS DISTINCT FROM sy.sample_number_proof THEN 1::bigint << 10 ELSE 0 END)
                       | (CASE WHEN w2.digital_proof IS DISTINCT FROM sy.digital_proof THEN 1::bigint << 11 ELSE 0 END)
                       | (CASE WHEN w2.non_digital_proof IS DISTINCT FROM sy.non_digital_proof THEN 1::bigint << 12 ELSE 0 END)
                       | (CASE WHEN w2.altitude_min IS DISTINCT FROM sy.altitude_min THEN 1::bigint << 13 ELSE 0 END)
                       | (CASE WHEN w2.altitude_max IS DISTINCT FROM sy.altitude_max THEN 1::bigint << 14 ELSE 0 END)
                       | (CASE WHEN w2.depth_min IS DISTINCT FROM sy.depth_min THEN 1::bigint << 15 ELSE 0 END)
                       | (CASE WHEN w2.depth_max IS DISTINCT FROM sy.depth_max THEN 1::bigint << 16 ELSE 0 END)
                       | (CASE WHEN w2.place_name IS DISTINCT FROM sy.place_name THEN 1::bigint << 17 ELSE 0 END)
                       | (CASE WHEN w2.the_geom_4326::bytea IS DISTINCT FROM sy.the_geom_4326::bytea
                                 OR w2.the_geom_local::bytea IS DISTINCT FROM sy.the_geom_local::bytea
                               THEN 1::bigint << 18 ELSE 0 END)
                       | (CASE WHEN w2.precision IS DISTINCT FROM sy.precision THEN 1::bigint << 19 ELSE 0 END)
                       | (CASE WHEN w2.id_area_attachment IS DISTINCT FROM sy.id_area_attachment THEN 1::bigint << 20 ELSE 0 END)
                       | (CASE WHEN w2.date_min IS DISTINCT FROM sy.date_min THEN 1::bigint << 21 ELSE 0 END)
                       | (CASE WHEN w2.date_max IS DISTINCT FROM sy.date_max THEN 1::bigint << 22 ELSE 0 END)
                       | (CASE WHEN w2.validator IS DISTINCT FROM sy.validator THEN 1::bigint << 23 ELSE 0 END)
                       | (CASE WHEN w2.observers IS DISTINCT FROM sy.observers THEN 1::bigint << 24 ELSE 0 END)
                       | (CASE WHEN w2.determiner IS DISTINCT FROM sy.determiner THEN 1::bigint << 25 ELSE 0 END)
                       | (CASE WHEN w2.comment_context IS DISTINCT FROM sy.comment_context THEN 1::bigint << 26 ELSE 0 END)
                       | (CASE WHEN w2.comment_description IS DISTINCT FROM sy.comment_description THEN 1::bigint << 27 ELSE 0 END)
                       | (CASE WHEN w2.additional_data IS DISTINCT FROM sy.additional_data THEN 1::bigint << 28 ELSE 0 END)
                       | (CASE WHEN w2.reference_biblio IS DISTINCT FROM sy.reference_biblio THEN 1::bigint << 29 ELSE 0 END)
                       | (CASE WHEN w2.nid[1] IS DISTINCT FROM sy.id_nomenclature_geo_object_nature THEN 1::bigint << 30 ELSE 0 END)
                       | (CASE WHEN w2.nid[2] IS DISTINCT FROM sy.id_nomenclature_grp_typ THEN 1::bigint << 31 ELSE 0 END)
                       | (CASE WHEN w2.nid[3] IS DISTINCT FROM sy.id_nomenclature_behaviour THEN 1::bigint << 32 ELSE 0 END)
                       | (CASE WHEN w2.nid[4] IS DISTINCT FROM sy.id_nomenclature_obs_technique THEN 1::bigint << 33 ELSE 0 END)
                       | (CASE WHEN w2.nid[5] IS DISTINCT FROM sy.id_nomenclature_bio_status THEN 1::bigint << 34 ELSE 0 END)
                       | (CASE WHEN w2.nid[6] IS DISTINCT FROM sy.id_nomenclature_bio_condition THEN 1::bigint << 35 ELSE 0 END)
                       | (CASE WHEN w2.nid[7] IS DISTINCT FROM sy.id_nomenclature_naturalness THEN 1::bigint << 36 ELSE 0 END)
                       | (CASE WHEN w2.nid[8] IS DISTINCT FROM sy.id_nomenclature_exist_proof THEN 1::bigint << 37 ELSE 0 END)
                       | (CASE WHEN w2.nid[9] IS DISTINCT FROM sy.id_nomenclature_diffusion_level THEN 1::bigint << 38 ELSE 0 END)
                       | (CASE WHEN w2.nid[10] IS DISTINCT FROM sy.id_nomenclature_life_stage THEN 1::bigint << 39 ELSE 0 END)
                       | (CASE WHEN w2.nid[11] IS DISTINCT FROM sy.id_nomenclature_sex THEN 1::bigint << 40 ELSE 0 END)
                       | (CASE WHEN w2.nid[12] IS DISTINCT FROM sy.id_nomenclature_obj_count THEN 1::bigint << 41 ELSE 0 END)
                       | (CASE WHEN w2.nid[13] IS DISTINCT FROM sy.id_nomenclature_type_count THEN 1::bigint << 42 ELSE 0 END)
                       -- nid[14], sensitivity: GeoNature computes it; written at insert only.
                       | (CASE WHEN w2.nid[15] IS DISTINCT FROM sy.id_nomenclature_observation_status THEN 1::bigint << 44 ELSE 0 END)
                       | (CASE WHEN w2.nid[16] IS DISTINCT FROM sy.id_nomenclature_blurring THEN 1::bigint << 45 ELSE 0 END)
                       | (CASE WHEN w2.nid[17] IS DISTINCT FROM sy.id_nomenclature_source_status THEN 1::bigint << 46 ELSE 0 END)
                       | (CASE WHEN w2.nid[18] IS DISTINCT FROM sy.id_nomenclature_info_geo_type THEN 1::bigint << 47 ELSE 0 END)
                       | (CASE WHEN w2.nid[19] IS DISTINCT FROM sy.id_nomenclature_determination_method THEN 1::bigint << 48 ELSE 0 END)
                         AS mask
                  FROM pg_temp.gn2pg_destination_work w2
                  LEFT JOIN LATERAL (SELECT * FROM gn_synthese.synthese s1
                                      WHERE s1.id_synthese = w2.id_synthese AND w2.problem IS NULL LIMIT 1) sy ON true) x
         WHERE w.id_data = x.id_data;

        -- 8. Write: one INSERT; one UPDATE per set of changed columns (few in practice).
        -- A statement the synthese refuses is retried row by row.
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_temp.gn2pg_destination_work w WHERE w.action = 'I') THEN
                PERFORM gn2pg._destination_insert(v_dest.id_source, NULL);
            END IF;
        EXCEPTION WHEN integrity_constraint_violation OR data_exception OR raise_exception THEN
            FOR v_k IN SELECT w.id_data FROM pg_temp.gn2pg_destination_work w WHERE w.action = 'I' LOOP
                BEGIN
                    PERFORM gn2pg._destination_insert(v_dest.id_source, ARRAY[v_k]);
                EXCEPTION WHEN integrity_constraint_violation OR data_exception OR raise_exception THEN
                    PERFORM gn2pg._destination_refused(v_k, SQLSTATE, SQLERRM);
                END;
            END LOOP;
        END;
        FOR v_mask IN SELECT DISTINCT w.mask FROM pg_temp.gn2pg_destination_work w WHERE w.action = 'U' LOOP
            BEGIN
                PERFORM gn2pg._destination_update(v_mask, NULL);
            EXCEPTION WHEN integrity_constraint_violation OR data_exception OR raise_exception THEN
                FOR v_k IN SELECT w.id_data FROM pg_temp.gn2pg_destination_work w WHERE w.action = 'U' AND w.mask = v_mask LOOP
                    BEGIN
                        PERFORM gn2pg._destination_update(v_mask, ARRAY[v_k]);
                    EXCEPTION WHEN integrity_constraint_violation OR data_exception OR raise_exception THEN
                        PERFORM gn2pg._destination_refused(v_k, SQLSTATE, SQLERRM);
                    END;
                END LOOP;
            END;
        END LOOP;

        -- 9. Outcome per row, per reason, per run.
        INSERT INTO gn2pg.destination_row AS r
               (source, id_data, id_synthese, state, reason, detail, content_hash, jdd_uuid, run_id, updated_at)
        SELECT p_source, w.id_data, w.id_synthese, CASE WHEN w.action = 'P' THEN 'pending' ELSE 'written' END,
               CASE WHEN w.action = 'P' THEN w.problem END, CASE WHEN w.action = 'P' THEN w.detail ELSE w.defaulted END,
               w.content_hash, w.jdd_uuid, p_run_id, now()
          FROM pg_temp.gn2pg_destination_work w
        ON CONFLICT (source, id_data) DO UPDATE
           SET id_synthese = EXCLUDED.id_synthese, state = EXCLUDED.state, reason = EXCLUDED.reason,
               detail = EXCLUDED.detail, content_hash = EXCLUDED.content_hash, jdd_uuid = EXCLUDED.jdd_uuid,
               run_id = EXCLUDED.run_id, updated_at = EXCLUDED.updated_at;
        PERFORM gn2pg._destination_report(p_source, p_run_id, x.field, x.value, x.why, 'pending', x.n)
           FROM (SELECT CASE w.problem WHEN 'taxon' THEN 'cd_nom' WHEN 'habitat' THEN 'code_habitat'
                                       WHEN 'dataset' THEN 'jdd_uuid' WHEN 'uuid_conflict' THEN 'id_perm_sinp' ELSE 'row' END AS field,
                        CASE w.problem WHEN 'taxon' THEN w.cd_nom::text WHEN 'habitat' THEN w.cd_hab::text
                                       WHEN 'dataset' THEN w.jdd_uuid::text
                                       WHEN 'uuid_conflict' THEN substring(w.detail FROM 'of (id_source .*)$')
                                       ELSE w.detail END AS value,
                        CASE w.problem WHEN 'taxon' THEN 'not in taxonomie.taxref' WHEN 'habitat' THEN 'not in ref_habitats.habref'
                                       WHEN 'dataset' THEN 'no dataset' WHEN 'uuid_conflict' THEN 'owned by another synthese row'
                                       ELSE 'refused' END AS why,
                        count(*) AS n
                   FROM pg_temp.gn2pg_destination_work w
                  WHERE w.action = 'P' AND w.problem <> 'nomenclature'
                  GROUP BY 1, 2, 3) x;
        SELECT count(*) FILTER (WHERE w.action = 'I'), count(*) FILTER (WHERE w.action = 'U'),
               unchanged + count(*) FILTER (WHERE w.action = 'K'), count(*) FILTER (WHERE w.action = 'P')
          INTO inserted, updated, unchanged, pending
          FROM pg_temp.gn2pg_destination_work w;
    END IF;
    IF p_run_id IS NOT NULL THEN
        UPDATE gn2pg.run_log l
           SET synthese_inserted = l.synthese_inserted + inserted,
               synthese_updated = l.synthese_updated + updated,
               synthese_unchanged = l.synthese_unchanged + unchanged,
               synthese_defaulted = l.synthese_defaulted + c.defaulted,
               synthese_pending_taxon = l.synthese_pending_taxon + c.taxon,
               synthese_pending_habitat = l.synthese_pending_habitat + c.habitat,
               synthese_pending_nomenclature = l.synthese_pending_nomenclature + c.nomenclature,
               synthese_pending_uuid_conflict = l.synthese_pending_uuid_conflict + c.uuid_conflict,
               synthese_pending_other = l.synthese_pending_other + c.other
          FROM (SELECT count(*) FILTER (WHERE w.action <> 'P' AND w.defaulted IS NOT NULL) AS defaulted,
                       count(*) FILTER (WHERE w.action = 'P' AND w.problem = 'taxon') AS taxon,
                       count(*) FILTER (WHERE w.action = 'P' AND w.problem = 'habitat') AS habitat,
                       count(*) FILTER (WHERE w.action = 'P' AND w.problem = 'nomenclature') AS nomenclature,
                       count(*) FILTER (WHERE w.action = 'P' AND w.problem = 'uuid_conflict') AS uuid_conflict,
                       count(*) FILTER (WHERE w.action = 'P' AND w.problem IN ('dataset', 'invalid')) AS other
                  FROM pg_temp.gn2pg_destination_work w) c
         WHERE l.id = p_run_id;
    END IF;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_apply(text, bigint, bigint[], boolean) IS
    'Internal: applies harvested rows of a source to gn_synthese.synthese, set-based; p_force re-applies rows whose source did not change.';

-- _destination_geometries computes the destination's local geometry and a point of each
-- staged geometry (all rows, or p_only).
CREATE FUNCTION gn2pg._destination_geometries(p_postgis text, p_srid integer, p_only bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format($f$
        UPDATE pg_temp.gn2pg_destination_work w
           SET the_geom_local = %1$I.st_transform(w.the_geom_4326, $1),
               the_geom_point = CASE WHEN %1$I.st_isempty(w.the_geom_4326) THEN NULL
                                     WHEN %1$I.geometrytype(w.the_geom_4326) = 'POINT' THEN w.the_geom_4326
                                     WHEN %1$I.st_isvalid(w.the_geom_4326) THEN %1$I.st_pointonsurface(w.the_geom_4326)
                                     ELSE %1$I.st_centroid(w.the_geom_4326) END
         WHERE w.problem IS NULL AND w.the_geom_4326 IS NOT NULL AND ($2 IS NULL OR w.id_data = $2)$f$, p_postgis)
    USING p_srid, p_only;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_geometries(text, integer, bigint) IS
    'Internal: local-SRID geometry and point of each staged row (ST_PointOnSurface; the centroid of an invalid geometry).';

------------------------------------------------------------------------------------------------
-- The hooks of the engine
------------------------------------------------------------------------------------------------

-- _destination_delete removes from the synthese the rows of a source deleted from
-- gn2pg.observation (deletion log, key-range sweep, sweep after an offset walk). Returns the
-- synthese rows deleted.
CREATE FUNCTION gn2pg._destination_delete(p_source text, p_run_id bigint, p_keys bigint[]) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id_source integer;
    v_ids integer[];
    v_rows bigint;
BEGIN
    -- GeoNature's own triggers and functions name objects without their schema and set no
    -- search_path (see _destination_geonature_path). Everything in this function stays
    -- schema-qualified.
    PERFORM set_config('search_path', gn2pg._destination_geonature_path(), true);
    SELECT d.id_source INTO v_id_source FROM gn2pg.destination d WHERE d.source = p_source;
    IF v_id_source IS NULL OR p_keys IS NULL OR cardinality(p_keys) = 0 THEN
        RETURN 0;
    END IF;
    WITH r AS (
        DELETE FROM gn2pg.destination_row r
         WHERE r.source = p_source AND r.id_data = ANY (p_keys)
        RETURNING r.id_synthese
    )
    SELECT array_agg(r.id_synthese) FILTER (WHERE r.id_synthese IS NOT NULL) INTO v_ids FROM r;
    DELETE FROM gn_synthese.synthese sy WHERE sy.id_synthese = ANY (v_ids) AND sy.id_source = v_id_source;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF p_run_id IS NOT NULL AND v_rows > 0 THEN
        UPDATE gn2pg.run_log l SET synthese_deleted = l.synthese_deleted + v_rows WHERE l.id = p_run_id;
    END IF;
    RETURN v_rows;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_delete(text, bigint, bigint[]) IS
    'Internal: deletes from gn_synthese.synthese the rows of a source deleted at the source; called in the transaction that deletes them from gn2pg.observation.';

-- _destination_page is the page loader's hook: the rows of the page's keys, then the stored
-- rows the page proved gone, in the page's transaction.
CREATE FUNCTION gn2pg._destination_page(p_source text, p_run_id bigint, p_keys bigint[], p_gone bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gn2pg.destination d WHERE d.source = p_source) THEN
        RETURN;
    END IF;
    PERFORM gn2pg._destination_delete(p_source, p_run_id, p_gone);
    PERFORM gn2pg._destination_apply(p_source, p_run_id, p_keys, false);
END
$$;
COMMENT ON FUNCTION gn2pg._destination_page(text, bigint, bigint[], bigint[]) IS
    'Internal: writes a loaded page to the GeoNature destination, in the page''s transaction.';

-- _destination_refresh_metadata brings the CA/JDD gn2pg created for a source up to date with
-- what gn2pg knows now (a rename at the source reaches gn_meta even when no row changed).
CREATE FUNCTION gn2pg._destination_refresh_metadata(p_source text, p_run_id bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM gn2pg._destination_jdd(p_source, p_run_id, m.uuid, a.unique_acquisition_framework_id, NULL)
       FROM gn2pg.destination_metadata m
       JOIN gn_meta.t_datasets ds ON ds.id_dataset = m.id
       JOIN gn_meta.t_acquisition_frameworks a ON a.id_acquisition_framework = ds.id_acquisition_framework
      WHERE m.level = 'jdd' AND m.created_by = p_source;
    PERFORM gn2pg._destination_ca(p_source, p_run_id, m.uuid)
       FROM gn2pg.destination_metadata m WHERE m.level = 'ca' AND m.created_by = p_source;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_refresh_metadata(text, bigint) IS
    'Internal: updates the CA/JDD gn2pg created for a source from its current metadata.';

-- _destination_finish ends a run: CA/JDD refreshed, and rows left pending by earlier runs tried
-- again (a taxon added to TAXREF, a nomenclature mapped since).
CREATE FUNCTION gn2pg._destination_finish(p_source text, p_run_id bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_keys bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gn2pg.destination d WHERE d.source = p_source) THEN
        RETURN;
    END IF;
    UPDATE gn2pg.destination d SET local_srid = gn2pg._destination_srid()
     WHERE d.source = p_source AND d.local_srid IS DISTINCT FROM gn2pg._destination_srid();
    PERFORM gn2pg._destination_refresh_metadata(p_source, p_run_id);
    -- Bounded: one batch of pending keys at a time, each leaves the loop or is retried once.
    LOOP
        SELECT array_agg(r.id_data ORDER BY r.id_data) INTO v_keys
          FROM (SELECT r.id_data FROM gn2pg.destination_row r
                 WHERE r.source = p_source AND r.state = 'pending' AND r.run_id IS DISTINCT FROM p_run_id
                 ORDER BY r.id_data LIMIT 5000) r;
        EXIT WHEN v_keys IS NULL;
        PERFORM gn2pg._destination_apply(p_source, p_run_id, v_keys, false);
        -- Keys not applied are gone from gn2pg.observation: so are their synthese rows.
        PERFORM gn2pg._destination_delete(p_source, p_run_id, array_agg(r.id_data))
           FROM gn2pg.destination_row r
          WHERE r.source = p_source AND r.id_data = ANY (v_keys) AND r.run_id IS DISTINCT FROM p_run_id
         HAVING count(*) > 0;
    END LOOP;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_finish(text, bigint) IS
    'Internal: called at the end of a successful run: refreshes the CA/JDD gn2pg created and retries pending rows.';

-- _destination_remapped follows a remap (gn2pg_remap, or the one a run does first): the CA/JDD
-- the moved rows now use exist (a gn2pg-created JDD moves to its new CA), then the moved rows
-- are applied (their dataset changed).
CREATE FUNCTION gn2pg._destination_remapped(p_source text, p_keys bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_batch bigint[];
    v_from integer := 1;
BEGIN
    IF p_keys IS NULL OR NOT EXISTS (SELECT 1 FROM gn2pg.destination d WHERE d.source = p_source) THEN
        RETURN;
    END IF;
    PERFORM gn2pg._destination_jdd(p_source, NULL, x.jdd_uuid, x.ca_uuid, NULL)
       FROM (SELECT DISTINCT o.jdd_uuid, o.ca_uuid FROM gn2pg.observation o
              WHERE o.source = p_source AND o.id_data = ANY (p_keys) AND o.jdd_uuid IS NOT NULL) x;
    WHILE v_from <= cardinality(p_keys) LOOP
        v_batch := p_keys[v_from:v_from + 4999];
        PERFORM gn2pg._destination_apply(p_source, NULL, v_batch, false);
        v_from := v_from + 5000;
    END LOOP;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_remapped(text, bigint[]) IS
    'Internal: moves the synthese rows of remapped harvested rows to their new dataset.';

-- _destination_sync re-applies every harvested row of a source without contacting it, in
-- batches of keys, comparing each with its synthese row (identical rows are not rewritten), and
-- removes synthese rows whose harvested row is gone. Returns the synthese rows changed.
CREATE FUNCTION gn2pg._destination_sync(p_source text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_keys bigint[];
    v_after bigint := -9223372036854775808;
    v_changed bigint := 0;
    a record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gn2pg.destination d WHERE d.source = p_source) THEN
        RAISE EXCEPTION 'gn2pg_sync_destination: source "%" does not write to GeoNature', p_source
              USING ERRCODE = 'object_not_in_prerequisite_state',
                    HINT = 'Register it with options => ''{"destination": "geonature"}'' (gn2pg_add_source) first.';
    END IF;
    UPDATE gn2pg.destination d SET local_srid = gn2pg._destination_srid()
     WHERE d.source = p_source AND d.local_srid IS DISTINCT FROM gn2pg._destination_srid();
    PERFORM gn2pg._destination_refresh_metadata(p_source, NULL);
    -- Bounded: each turn moves past 5000 keys of the source, or ends.
    LOOP
        SELECT array_agg(k.id_data ORDER BY k.id_data) INTO v_keys
          FROM (SELECT o.id_data FROM gn2pg.observation o
                 WHERE o.source = p_source AND o.id_data > v_after ORDER BY o.id_data LIMIT 5000) k;
        EXIT WHEN v_keys IS NULL;
        SELECT * INTO a FROM gn2pg._destination_apply(p_source, NULL, v_keys, true);
        v_changed := v_changed + a.inserted + a.updated;
        v_after := v_keys[cardinality(v_keys)];
    END LOOP;
    SELECT array_agg(r.id_data) INTO v_keys
      FROM gn2pg.destination_row r
     WHERE r.source = p_source
       AND NOT EXISTS (SELECT 1 FROM gn2pg.observation o WHERE o.source = p_source AND o.id_data = r.id_data);
    RETURN v_changed + gn2pg._destination_delete(p_source, NULL, v_keys);
END
$$;
COMMENT ON FUNCTION gn2pg._destination_sync(text) IS 'Internal: the work of gn2pg_sync_destination(), without the checks.';

-- _destination_map_nomenclature checks and records that a source's value of a type means
-- target_code in the destination.
CREATE FUNCTION gn2pg._destination_map_nomenclature(p_source text, p_type text, p_value text, p_code text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_done boolean;
    v_codes text;
BEGIN
    IF cardinality(gn2pg._destination_missing()) > 0 THEN
        RAISE EXCEPTION 'gn2pg_map_nomenclature: this database has no GeoNature nomenclatures'
              USING ERRCODE = 'undefined_table',
                    DETAIL = 'Missing: ' || array_to_string(gn2pg._destination_missing(), ', ') || '.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM gn2pg._destination_fields() f WHERE f.mnemonique = p_type) THEN
        RAISE EXCEPTION 'gn2pg_map_nomenclature: "%" is not a nomenclature type of the synthese', p_type
              USING ERRCODE = 'invalid_parameter_value',
                    HINT = 'Give one of: ' || (SELECT string_agg(f.mnemonique, ', ' ORDER BY f.i) FROM gn2pg._destination_fields() f) || '.';
    END IF;
    IF gn2pg._destination_code(p_type, p_code) IS NULL THEN
        EXECUTE 'SELECT string_agg(format(''%s (%s)'', n.cd_nomenclature, n.label_default), '', '' ORDER BY n.id_nomenclature)
                   FROM ref_nomenclatures.t_nomenclatures n
                   JOIN ref_nomenclatures.bib_nomenclatures_types t ON t.id_type = n.id_type
                  WHERE t.mnemonique = $1' INTO v_codes USING p_type;
        RAISE EXCEPTION 'gn2pg_map_nomenclature: type % has no code "%"', p_type, p_code
              USING ERRCODE = 'invalid_parameter_value',
                    HINT = 'Its codes are: ' || coalesce(v_codes, 'none') || '.';
    END IF;
    INSERT INTO gn2pg.nomenclature_mapping AS m (source, type, source_value, target_code)
    VALUES (p_source, p_type, p_value, p_code)
    ON CONFLICT (source, type, source_value) DO UPDATE
       SET target_code = EXCLUDED.target_code, updated_at = now()
     WHERE m.target_code <> EXCLUDED.target_code
    RETURNING true INTO v_done;
    RETURN coalesce(v_done, false);
END
$$;
COMMENT ON FUNCTION gn2pg._destination_map_nomenclature(text, text, text, text) IS 'Internal: the write of gn2pg_map_nomenclature().';

CREATE FUNCTION gn2pg._destination_unmap_nomenclature(p_source text, p_type text, p_value text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM gn2pg.nomenclature_mapping m WHERE m.source = p_source AND m.type = p_type AND m.source_value = p_value;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION gn2pg._destination_unmap_nomenclature(text, text, text) IS 'Internal: the write of gn2pg_unmap_nomenclature().';

------------------------------------------------------------------------------------------------
-- User-facing functions
------------------------------------------------------------------------------------------------

-- _destination_lock claims the source for the destination functions as a run does
-- (_claim_idle_source). SECURITY DEFINER (below): admins cannot lock gn2pg.source rows themselves.
CREATE FUNCTION gn2pg._destination_lock(p_fn text, p_source text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM gn2pg._claim_idle_source(p_fn, p_source, format('Call %s() again when the run has ended.', p_fn));
END
$$;
ALTER FUNCTION gn2pg._destination_lock(text, text) SECURITY DEFINER;
COMMENT ON FUNCTION gn2pg._destination_lock(text, text) IS 'Internal: claims an idle source for the destination functions, as a run does.';

CREATE FUNCTION public.gn2pg_sync_destination(source text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id integer := gn2pg._check_source('gn2pg_sync_destination', $1);
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_sync_destination');
    PERFORM gn2pg._destination_lock('gn2pg_sync_destination', $1);
    RETURN gn2pg._destination_sync($1);
END
$$;
COMMENT ON FUNCTION public.gn2pg_sync_destination(text) IS
    'Re-applies every harvested row of a source to the GeoNature destination without contacting the source (after enabling it, a TAXREF or nomenclature update, a mapping change); rows already identical are not rewritten. Returns the synthese rows inserted, updated or deleted. Admin only.';

CREATE FUNCTION public.gn2pg_map_nomenclature(source text, type text, source_value text, target_code text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_map_nomenclature');
    PERFORM gn2pg._check_source('gn2pg_map_nomenclature', $1);
    IF $2 IS NULL OR $3 IS NULL OR $4 IS NULL THEN
        RAISE EXCEPTION 'gn2pg_map_nomenclature: type, source_value and target_code must not be NULL'
              USING ERRCODE = 'null_value_not_allowed',
                    HINT = 'To remove a mapping, call gn2pg_unmap_nomenclature(source, type, source_value).';
    END IF;
    RETURN gn2pg._destination_map_nomenclature($1, $2, $3, $4);
END
$$;
COMMENT ON FUNCTION public.gn2pg_map_nomenclature(text, text, text, text) IS
    'Maps a nomenclature value a source sends (a code or a label) to a code of the destination, for one type (e.g. SEXE); returns false if it was already so. Pending rows take it at the next run or gn2pg_sync_destination(). Admin only.';

CREATE FUNCTION public.gn2pg_unmap_nomenclature(source text, type text, source_value text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_unmap_nomenclature');
    PERFORM gn2pg._check_source('gn2pg_unmap_nomenclature', $1);
    IF NOT gn2pg._destination_unmap_nomenclature($1, $2, $3) THEN
        RAISE NOTICE 'gn2pg_unmap_nomenclature: source "%" has no mapping for % "%", nothing removed', $1, $2, $3;
        RETURN false;
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION public.gn2pg_unmap_nomenclature(text, text, text) IS
    'Removes a nomenclature mapping of a source; false if there was none. Admin only.';

CREATE FUNCTION public.gn2pg_disable_destination(source text, synthese text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id integer := gn2pg._check_source('gn2pg_disable_destination', $1);
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_disable_destination');
    IF $2 IS NULL OR $2 NOT IN ('keep', 'delete') THEN
        RAISE EXCEPTION 'gn2pg_disable_destination: synthese must be ''keep'' or ''delete'', not %', coalesce(quote_literal($2), 'NULL')
              USING ERRCODE = 'invalid_parameter_value',
                    HINT = '''keep'' leaves the source''s rows in gn_synthese.synthese (a later enablement takes them over); ''delete'' deletes them.';
    END IF;
    PERFORM gn2pg._destination_lock('gn2pg_disable_destination', $1);
    RETURN gn2pg._destination_disable($1, $2);
END
$$;
COMMENT ON FUNCTION public.gn2pg_disable_destination(text, text) IS
    'Stops writing a source to GeoNature; synthese => ''keep'' leaves its rows in gn_synthese.synthese, ''delete'' deletes them. Returns the rows kept or deleted. Admin only.';

------------------------------------------------------------------------------------------------
-- Visibility
------------------------------------------------------------------------------------------------

CREATE VIEW gn2pg.destination_pending AS
SELECT r.source, r.id_data, o.uuid, r.reason, r.detail,
       r.id_synthese IS NOT NULL AS older_version_written,
       r.run_id, r.updated_at AS since
  FROM gn2pg.destination_row r
  LEFT JOIN gn2pg.observation o ON o.source = r.source AND o.id_data = r.id_data
 WHERE r.state = 'pending';
COMMENT ON VIEW gn2pg.destination_pending IS
    'Harvested rows not (or not in their current version) in the GeoNature synthese, and why; every run and gn2pg_sync_destination() try them again.';
COMMENT ON COLUMN gn2pg.destination_pending.reason IS
    'taxon, habitat, nomenclature, uuid_conflict, dataset or invalid; detail says which value.';
COMMENT ON COLUMN gn2pg.destination_pending.older_version_written IS
    'The synthese holds an older version of the row (written before it changed at the source).';

CREATE VIEW gn2pg.destination_status AS
SELECT d.source, d.id_source, d.enabled_at,
       coalesce(s.options ->> 'nomenclature_unknown', 'reject') AS nomenclature_unknown,
       coalesce(c.written, 0) AS rows_written,
       coalesce(c.pending, 0) AS rows_pending,
       coalesce(c.pending_taxon, 0) AS pending_taxon,
       coalesce(c.pending_habitat, 0) AS pending_habitat,
       coalesce(c.pending_nomenclature, 0) AS pending_nomenclature,
       coalesce(c.pending_uuid_conflict, 0) AS pending_uuid_conflict,
       coalesce(c.pending_other, 0) AS pending_other,
       (SELECT count(*) FROM gn2pg.observation o
         WHERE o.source = d.source
           AND NOT EXISTS (SELECT 1 FROM gn2pg.destination_row r WHERE r.source = o.source AND r.id_data = o.id_data)) AS rows_not_applied
  FROM gn2pg.destination d
  JOIN gn2pg.source s ON s.name = d.source
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE r.state = 'written') AS written,
               count(*) FILTER (WHERE r.state = 'pending') AS pending,
               count(*) FILTER (WHERE r.reason = 'taxon') AS pending_taxon,
               count(*) FILTER (WHERE r.reason = 'habitat') AS pending_habitat,
               count(*) FILTER (WHERE r.reason = 'nomenclature') AS pending_nomenclature,
               count(*) FILTER (WHERE r.reason = 'uuid_conflict') AS pending_uuid_conflict,
               count(*) FILTER (WHERE r.reason IN ('dataset', 'invalid')) AS pending_other
          FROM gn2pg.destination_row r WHERE r.source = d.source) c ON true;
COMMENT ON VIEW gn2pg.destination_status IS
    'One row per source writing to GeoNature: its t_sources id, policy, rows written and pending (by reason), harvested rows not applied yet (run gn2pg_sync_destination()). Counting scans the source''s rows.';

------------------------------------------------------------------------------------------------
-- Privileges: the tables are read-only for the gn2pg roles; admins change them through the
-- functions above, which check the role, then write through SECURITY DEFINER helpers.
------------------------------------------------------------------------------------------------
GRANT SELECT ON gn2pg.destination, gn2pg.destination_row, gn2pg.nomenclature_mapping, gn2pg.destination_report,
                gn2pg.destination_metadata, gn2pg.destination_pending, gn2pg.destination_status TO gn2pg_reader;

ALTER FUNCTION gn2pg._destination_sync(text) SECURITY DEFINER;
ALTER FUNCTION gn2pg._destination_map_nomenclature(text, text, text, text) SECURITY DEFINER;
ALTER FUNCTION gn2pg._destination_unmap_nomenclature(text, text, text) SECURITY DEFINER;
ALTER FUNCTION gn2pg._destination_disable(text, text) SECURITY DEFINER;
REVOKE ALL ON FUNCTION gn2pg._destination_sync(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_map_nomenclature(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_unmap_nomenclature(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_disable(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gn2pg._destination_sync(text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._destination_map_nomenclature(text, text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._destination_unmap_nomenclature(text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._destination_disable(text, text) TO gn2pg_admin;
REVOKE ALL ON FUNCTION public.gn2pg_sync_destination(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_map_nomenclature(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_unmap_nomenclature(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_disable_destination(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_sync_destination(text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_map_nomenclature(text, text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_unmap_nomenclature(text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_disable_destination(text, text) TO gn2pg_admin;
-- Internal: only the extension owner (the harvest worker, gn2pg_add_source/gn2pg_remove_source
-- working as the owner, the SECURITY DEFINER helpers above) calls these.
REVOKE ALL ON FUNCTION gn2pg._destination_missing() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_fields() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_postgis() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_srid() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_geonature_path() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_configure(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_before_remove(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_work() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_stage(text, bigint[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_report(text, bigint, text, text, text, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_code(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_meta_code(text, bigint, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_date(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_organism(uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_actors(text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_set_actors(text, integer, jsonb, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_ca(text, bigint, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_jdd(text, bigint, uuid, uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_insert(integer, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_set_list(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_update(bigint, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_refused(bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_apply(text, bigint, bigint[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_geometries(text, integer, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_delete(text, bigint, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_page(text, bigint, bigint[], bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_refresh_metadata(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_finish(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._destination_remapped(text, bigint[]) FROM PUBLIC;
-- The source's lock, taken by the admin functions with the caller's rights.
REVOKE ALL ON FUNCTION gn2pg._destination_lock(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gn2pg._destination_lock(text, text) TO gn2pg_admin;
-- ---- issue 11: GeoNature destination (end) ----

------------------------------------------------------------------------------------------------
-- Issue 13 (web dashboard): gn2pg_check_source, gn2pg_acknowledge_alert,
-- gn2pg_map_geonature_account / gn2pg_unmap_geonature_account (src/check.rs, src/dashboard.rs),
-- then sql/dashboard.sql verbatim: row counts kept by triggers (filled from the rows already
-- harvested), gn2pg.metadata_mapping and gn2pg.flow_status reading them, alert
-- acknowledgement, GeoNature accounts. Keep this section equal to that file.
------------------------------------------------------------------------------------------------

CREATE FUNCTION public."gn2pg_check_source"(
	"name" TEXT DEFAULT NULL,
	"url" TEXT DEFAULT NULL,
	"export_id" INT DEFAULT NULL,
	"auth" TEXT DEFAULT NULL,
	"login" TEXT DEFAULT NULL,
	"password" TEXT DEFAULT NULL,
	"token" TEXT DEFAULT NULL,
	"options" jsonb DEFAULT NULL
) RETURNS jsonb
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'gn2pg_check_source_wrapper';
CREATE FUNCTION public."gn2pg_acknowledge_alert"(
	"alert_id" bigint,
	"note" TEXT DEFAULT NULL
) RETURNS bool
LANGUAGE c
AS 'MODULE_PATHNAME', 'gn2pg_acknowledge_alert_wrapper';
CREATE FUNCTION public."gn2pg_map_geonature_account"(
	"login" TEXT,
	"role" TEXT
) RETURNS INT
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'gn2pg_map_geonature_account_wrapper';
CREATE FUNCTION public."gn2pg_unmap_geonature_account"(
	"login" TEXT
) RETURNS bool
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'gn2pg_unmap_geonature_account_wrapper';

-- gn2pg: what the web dashboard (dashboard/, issue 13) needs from the database: row counts kept
-- up to date instead of counted on every read, acknowledging alerts, GeoNature accounts allowed
-- to sign in, and the grants of gn2pg_check_source.
--
-- Wording: a *count delta* is one row of gn2pg.observation_count: rows added (or, negative,
-- removed) for one (source, CA, JDD) as received. The count of a group is the sum of its deltas;
-- the deltas of a source are folded into one row per group when one of its runs ends.
--
-- Runs in CREATE EXTENSION after operations.sql, and verbatim in the 0.2.0 -> 0.3.0 upgrade.

------------------------------------------------------------------------------------------------
-- Row counts per source, CA and JDD, maintained by statement triggers on gn2pg.observation.
-- Deltas are appended, never updated in place: two transactions loading the same source (the
-- workers of a parallel run) never wait for each other on a counter row, and cannot deadlock.
------------------------------------------------------------------------------------------------
CREATE TABLE gn2pg.observation_count (
    source          text NOT NULL,
    source_ca_uuid  uuid,
    source_jdd_uuid uuid,
    rows            bigint NOT NULL
);
CREATE INDEX observation_count_source_idx ON gn2pg.observation_count (source);
-- Dumped: restoring gn2pg.observation fires no insert trigger that would rebuild it.
SELECT pg_catalog.pg_extension_config_dump('gn2pg.observation_count', '');
COMMENT ON TABLE gn2pg.observation_count IS
    'Rows of gn2pg.observation per (source, source_ca_uuid, source_jdd_uuid): the sum of rows over each group. Kept by the loader (inserts) and by triggers (updates, deletes); dumped.';

-- Inserted rows are counted by the loader's INSERT itself (sql/load/insert_rows.sql, the only
-- statement that inserts into gn2pg.observation): a transition table of inserted rows would copy
-- every whole row of every page. The triggers below count what any statement updates or deletes.

CREATE FUNCTION gn2pg._count_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO gn2pg.observation_count (source, source_ca_uuid, source_jdd_uuid, rows)
    SELECT o.source, o.source_ca_uuid, o.source_jdd_uuid, -count(*) FROM old_rows o GROUP BY 1, 2, 3;
    RETURN NULL;
END
$$;

-- Most updates keep a row's source, CA and JDD: they net to zero and write nothing.
CREATE FUNCTION gn2pg._count_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO gn2pg.observation_count (source, source_ca_uuid, source_jdd_uuid, rows)
    SELECT d.source, d.ca, d.jdd, sum(d.n)
      FROM (SELECT o.source, o.source_ca_uuid AS ca, o.source_jdd_uuid AS jdd, -1 AS n FROM old_rows o
            UNION ALL
            SELECT n.source, n.source_ca_uuid, n.source_jdd_uuid, 1 FROM new_rows n) d
     GROUP BY 1, 2, 3
    HAVING sum(d.n) <> 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION gn2pg._count_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM gn2pg.observation_count;
    RETURN NULL;
END
$$;

CREATE TRIGGER observation_count_update AFTER UPDATE ON gn2pg.observation
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION gn2pg._count_updated();
CREATE TRIGGER observation_count_delete AFTER DELETE ON gn2pg.observation
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION gn2pg._count_deleted();
CREATE TRIGGER observation_count_truncate AFTER TRUNCATE ON gn2pg.observation
    FOR EACH STATEMENT EXECUTE FUNCTION gn2pg._count_truncated();

-- Folds the deltas of a source into one row per group. Safe beside writers and other folds in
-- READ COMMITTED: a delta committed after this statement's snapshot is neither deleted nor
-- summed, and a delta another fold already deleted is skipped by both.
CREATE FUNCTION gn2pg._fold_counts(p_source text) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH gone AS (DELETE FROM gn2pg.observation_count c WHERE c.source = p_source RETURNING c.*)
    INSERT INTO gn2pg.observation_count (source, source_ca_uuid, source_jdd_uuid, rows)
    SELECT g.source, g.source_ca_uuid, g.source_jdd_uuid, sum(g.rows)
      FROM gone g GROUP BY 1, 2, 3 HAVING sum(g.rows) <> 0;
END;
COMMENT ON FUNCTION gn2pg._fold_counts(text) IS
    'Folds the count deltas of a source into one row per (CA, JDD); run when a run of the source ends.';

CREATE FUNCTION gn2pg._fold_counts_after_run() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM gn2pg._fold_counts(NEW.source);
    RETURN NULL;
END
$$;
CREATE TRIGGER run_ended_fold_counts AFTER UPDATE OF status ON gn2pg.run_log
    FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION gn2pg._fold_counts_after_run();

-- A source removed with its rows leaves deltas that sum to zero.
CREATE FUNCTION gn2pg._fold_counts_after_removal() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM gn2pg._fold_counts(OLD.name);
    RETURN NULL;
END
$$;
CREATE TRIGGER source_removed_fold_counts AFTER DELETE ON gn2pg.source
    FOR EACH ROW EXECUTE FUNCTION gn2pg._fold_counts_after_removal();

-- Rebuilds every count from gn2pg.observation (after a restore made with --disable-triggers).
-- With a source: its counts only, which a reconciling run of that source rebuilds when it finds
-- them wrong (src/reconcile_run.rs); the run holds the source, so no other writer changes its rows.
CREATE FUNCTION gn2pg._recount(p_source text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF p_source IS NULL THEN
        LOCK TABLE gn2pg.observation IN SHARE MODE;
    END IF;
    DELETE FROM gn2pg.observation_count c WHERE p_source IS NULL OR c.source = p_source;
    INSERT INTO gn2pg.observation_count (source, source_ca_uuid, source_jdd_uuid, rows)
    SELECT o.source, o.source_ca_uuid, o.source_jdd_uuid, count(*) FROM gn2pg.observation o
     WHERE p_source IS NULL OR o.source = p_source GROUP BY 1, 2, 3;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION gn2pg._recount(text) IS
    'Rebuilds gn2pg.observation_count from gn2pg.observation (of one source, or all); returns the number of groups. Superusers only.';

-- Rows already harvested (upgrade from 0.2.0; nothing at install).
SELECT gn2pg._recount();

REVOKE ALL ON FUNCTION gn2pg._count_deleted() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._count_updated() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._count_truncated() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._fold_counts(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._fold_counts_after_run() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._fold_counts_after_removal() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._recount(text) FROM PUBLIC;
GRANT SELECT ON gn2pg.observation_count TO gn2pg_reader;

-- The two views that counted gn2pg.observation on every read now sum the counts. Their
-- definitions are otherwise those of metadata.sql and operations.sql.
CREATE OR REPLACE VIEW gn2pg.metadata_mapping AS
WITH pairs AS (
    SELECT c.source, c.source_ca_uuid AS ca, c.source_jdd_uuid AS jdd, sum(c.rows)::bigint AS n
      FROM gn2pg.observation_count c GROUP BY 1, 2, 3 HAVING sum(c.rows) <> 0
), counted AS (
    SELECT p.source, 'ca'::text AS level, p.ca AS uuid, NULL::uuid AS parent, sum(p.n)::bigint AS n
      FROM pairs p WHERE p.ca IS NOT NULL GROUP BY 1, 3
    UNION ALL
    SELECT p.source, 'jdd', p.jdd, min(p.ca::text)::uuid, sum(p.n)::bigint
      FROM pairs p WHERE p.jdd IS NOT NULL GROUP BY 1, 3
), seen AS (
    SELECT coalesce(m.source, c.source) AS source, coalesce(m.level, c.level) AS level,
           coalesce(m.uuid, c.uuid) AS uuid, m.name, coalesce(m.parent_uuid, c.parent) AS parent,
           coalesce(c.n, 0) AS n
      FROM gn2pg.metadata m
      FULL JOIN counted c ON c.source = m.source AND c.level = m.level AND c.uuid = m.uuid
), resolved AS (
    -- A CA: its own mapping only (JDD mappings move datasets, not a whole CA).
    SELECT s.*, coalesce(cm.target_uuid, s.uuid) AS target_ca, NULL::uuid AS target_jdd,
           CASE WHEN cm.source_uuid IS NOT NULL THEN 'ca mapping'
                WHEN cm.target_uuid IS NOT NULL THEN 'ca source-wide' END AS mapped_by
      FROM seen s
      LEFT JOIN LATERAL (
            SELECT m.source_uuid, m.target_uuid FROM gn2pg.mapping m
             WHERE m.source = s.source AND m.level = 'ca' AND (m.source_uuid = s.uuid OR m.source_uuid IS NULL)
             ORDER BY m.source_uuid IS NULL LIMIT 1) cm ON true
     WHERE s.level = 'ca'
    UNION ALL
    -- A JDD: where its rows land, with the precedence of the loader.
    SELECT s.*, r.ca_uuid, r.jdd_uuid,
           CASE WHEN r.jdd_rule IS NOT NULL THEN 'jdd ' || r.jdd_rule
                WHEN r.ca_rule IS NOT NULL THEN 'ca ' || r.ca_rule END
      FROM seen s
     CROSS JOIN LATERAL gn2pg._resolve_mapping(s.source, ARRAY[s.parent], ARRAY[s.uuid]) r
     WHERE s.level = 'jdd'
)
SELECT r.source,
       r.level,
       r.uuid       AS source_uuid,
       r.name       AS source_name,
       r.parent     AS source_ca_uuid,
       r.n          AS rows,
       r.mapped_by IS NOT NULL AS mapped,
       r.mapped_by,
       r.target_ca  AS target_ca_uuid,
       r.target_jdd AS target_jdd_uuid,
       t.name       AS target_name,
       coalesce(st.version > st.applied_version, false) AS remap_pending
  FROM resolved r
  LEFT JOIN gn2pg.target_metadata t
         ON t.level = r.level AND t.uuid = coalesce(r.target_jdd, r.target_ca) AND r.mapped_by IS NOT NULL
  LEFT JOIN gn2pg.mapping_state st ON st.source = r.source;
COMMENT ON VIEW gn2pg.metadata_mapping IS
    'Every CA and JDD received per source (metadata or rows), its row count and where its rows land; mapped = false: they keep the source value. Counts come from gn2pg.observation_count.';

CREATE OR REPLACE VIEW gn2pg.flow_status AS
SELECT s.id AS source_id,
       s.name AS source,
       s.enabled,
       nullif(btrim(s.options ->> 'organism'), '') AS organism,
       nullif(btrim(s.options ->> 'organism_id'), '') AS organism_id,
       s.url,
       s.export_id,
       s.auth AS access_mode,
       sc.schedule,
       sc.mode AS schedule_mode,
       CASE WHEN s.enabled THEN gn2pg._cron_next(sc.schedule, now()) END AS next_run_at,
       cur.id AS running_run_id,
       lr.id AS last_run_id,
       lr.mode AS last_run_mode,
       lr.status AS last_run_status,
       lr.started_at AS last_run_started_at,
       lr.finished_at AS last_run_finished_at,
       lr.finished_at - lr.started_at AS last_run_duration,
       lr.rows_received AS last_run_rows,
       lr.rows_upserted AS last_run_rows_upserted,
       lr.rows_deleted AS last_run_rows_deleted,
       lr.rows_failed AS last_run_rows_failed,
       lr.error AS last_run_error,
       ls.id AS last_success_run_id,
       ls.finished_at AS last_success_at,
       (SELECT coalesce(sum(c.rows), 0)::bigint FROM gn2pg.observation_count c WHERE c.source = s.name) AS local_rows,
       coalesce(al.n, 0) AS open_alerts,
       al.kinds AS open_alert_kinds,
       lim.stale_after,
       CASE WHEN lr.id IS NULL THEN 'never_run'
            WHEN lr.status IN ('failed', 'abandoned') THEN 'failing'
            WHEN s.enabled AND lim.stale_after > interval '0'
                 AND coalesce(ls.finished_at, s.created_at) < now() - lim.stale_after THEN 'late'
            ELSE 'ok'
       END AS health,
       s.created_at
  FROM gn2pg.source s
  LEFT JOIN gn2pg.schedule sc ON sc.source = s.name
  CROSS JOIN LATERAL (
        SELECT CASE WHEN s.options ? 'stale_after_hours'
                    THEN make_interval(hours => (s.options ->> 'stale_after_hours')::integer)
                    ELSE make_interval(mins => gn2pg._stale_after_minutes()) END AS stale_after) lim
  LEFT JOIN LATERAL (
        -- The columns of run_log in 0.2.0, spelled out: `r.*` would be frozen at creation, and a
        -- column added later would make an updated database differ from a fresh install.
        SELECT r.id, r.source, r.source_id, r.mode, r.status, r.started_at, r.finished_at, r.pages_done,
               r.rows_received, r.rows_upserted, r.rows_unchanged, r.rows_deleted, r.rows_failed, r.http_requests,
               r.http_retries, r.bytes_received, r.source_wait_ms, r.load_ms, r.error, r.worker_pid, r.paging,
               r.since, r.max_source_action, r.checkpoint, r.resumed_from
          FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status NOT IN ('pending', 'running') AND NOT gn2pg._busy_refusal(r.error)
         ORDER BY r.id DESC LIMIT 1) lr ON true
  LEFT JOIN LATERAL (
        SELECT r.id, r.finished_at FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status = 'success'
         ORDER BY r.id DESC LIMIT 1) ls ON true
  LEFT JOIN LATERAL (
        SELECT max(r.id) AS id FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status IN ('pending', 'running')
           AND gn2pg._run_alive(r.worker_pid, r.started_at)) cur ON true
  LEFT JOIN LATERAL (
        SELECT count(*)::integer AS n, array_agg(a.kind ORDER BY a.kind) AS kinds
          FROM gn2pg.alert a WHERE a.source = s.name AND a.resolved_at IS NULL) al ON true;
COMMENT ON COLUMN gn2pg.flow_status.local_rows IS 'Rows of the source in gn2pg.observation (from gn2pg.observation_count).';

------------------------------------------------------------------------------------------------
-- Acknowledging an alert: someone has seen it and is on it. It stays open until a successful
-- run (or the end of the staleness) resolves it; repeats keep the acknowledgement.
------------------------------------------------------------------------------------------------
ALTER TABLE gn2pg.alert ADD COLUMN acknowledged_at timestamptz;
ALTER TABLE gn2pg.alert ADD COLUMN acknowledged_by text;
ALTER TABLE gn2pg.alert ADD COLUMN acknowledgement text;
COMMENT ON COLUMN gn2pg.alert.acknowledged_at IS 'When someone acknowledged it (gn2pg_acknowledge_alert); NULL: not yet.';
COMMENT ON COLUMN gn2pg.alert.acknowledged_by IS 'Who acknowledged it: the role that called gn2pg_acknowledge_alert, or the dashboard''s GeoNature account.';
COMMENT ON COLUMN gn2pg.alert.acknowledgement IS 'The note left with the acknowledgement.';

------------------------------------------------------------------------------------------------
-- GeoNature accounts (UsersHub, utilisateurs.t_roles) that may sign in to the dashboard, each
-- with the one gn2pg role it acts as. No row, no access.
------------------------------------------------------------------------------------------------
CREATE TABLE gn2pg.geonature_account (
    id_role    integer PRIMARY KEY,         -- utilisateurs.t_roles.id_role
    login      text NOT NULL,               -- its identifiant when mapped
    role       text NOT NULL CHECK (role IN ('gn2pg_reader', 'gn2pg_operator', 'gn2pg_admin')),
    mapped_by  text NOT NULL,
    mapped_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE gn2pg.geonature_account IS
    'GeoNature accounts allowed to sign in to the gn2pg dashboard, and the gn2pg role each acts as. Manage with gn2pg_map_geonature_account().';
SELECT pg_catalog.pg_extension_config_dump('gn2pg.geonature_account', '');
GRANT SELECT ON gn2pg.geonature_account TO gn2pg_admin;

-- What the dashboard's login role needs to check a GeoNature sign-in: the account's bcrypt hash
-- (UsersHub's pass_plus), whether it is active, and the gn2pg role it is mapped to. Nothing
-- when the database has no UsersHub schema, the login is unknown, ambiguous or a group, or the
-- account is not mapped. Granted by the administrator to the dashboard's login role only.
CREATE FUNCTION gn2pg._geonature_sign_in(p_login text)
RETURNS TABLE (id_role integer, login text, password_hash text, active boolean, role text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regclass('utilisateurs.t_roles') IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT r.id_role, r.identifiant::text, r.pass_plus::text, coalesce(r.active, true), a.role
          FROM utilisateurs.t_roles r
          JOIN gn2pg.geonature_account a ON a.id_role = r.id_role
         WHERE r.identifiant = p_login AND NOT coalesce(r.groupe, false)
           AND (SELECT count(*) FROM utilisateurs.t_roles d
                 WHERE d.identifiant = p_login AND NOT coalesce(d.groupe, false)) = 1;
END
$$;
COMMENT ON FUNCTION gn2pg._geonature_sign_in(text) IS
    'For the dashboard''s login role: the bcrypt hash, active flag and gn2pg role of a mapped GeoNature account.';
REVOKE ALL ON FUNCTION gn2pg._geonature_sign_in(text) FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- Privileges of the functions above that users call (src/check.rs, src/dashboard.rs). Each
-- checks the caller's role again; gn2pg_check_source needs gn2pg_admin unless it checks a
-- registered source exactly as saved.
------------------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION public.gn2pg_check_source(text, text, integer, text, text, text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_check_source(text, text, integer, text, text, text, text, jsonb) TO gn2pg_operator;
REVOKE ALL ON FUNCTION public.gn2pg_acknowledge_alert(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_acknowledge_alert(bigint, text) TO gn2pg_operator;
REVOKE ALL ON FUNCTION public.gn2pg_map_geonature_account(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_map_geonature_account(text, text) TO gn2pg_admin;
REVOKE ALL ON FUNCTION public.gn2pg_unmap_geonature_account(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_unmap_geonature_account(text) TO gn2pg_admin;
COMMENT ON FUNCTION public.gn2pg_check_source(text, text, integer, text, text, text, text, jsonb) IS
    'Sends the requests a harvest starts with to a source (registered, or described by the arguments) and reports what it answered; stores nothing.';
COMMENT ON FUNCTION public.gn2pg_acknowledge_alert(bigint, text) IS
    'Marks an open alert as acknowledged, with an optional note; false if it is resolved or unknown. Operators.';
COMMENT ON FUNCTION public.gn2pg_map_geonature_account(text, text) IS
    'Lets a GeoNature account (utilisateurs.t_roles.identifiant) sign in to the dashboard as gn2pg_reader, gn2pg_operator or gn2pg_admin; returns its id_role. Admin only.';
COMMENT ON FUNCTION public.gn2pg_unmap_geonature_account(text) IS
    'Removes the dashboard access of a GeoNature account; false if it had none. Admin only.';

-- ---------------------------------------------------------------------------------------------
-- Encoders checked on the operator's server; self-checks for superusers only (issues 9 and 10).
-- gn2pg._geometry_selftest compares the Rust EWKB encoder with PostGIS as _jsonb_selftest does
-- for jsonb; gn2pg._selfcheck runs both over a built-in corpus (src/diagnostics.rs), here as at
-- CREATE EXTENSION, and warns about any difference.
CREATE FUNCTION gn2pg."_geometry_selftest"("geometry" TEXT) RETURNS TEXT
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', '_geometry_selftest_wrapper';

CREATE FUNCTION gn2pg."_selfcheck"() RETURNS INT
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', '_selfcheck_wrapper';

REVOKE ALL ON FUNCTION gn2pg._jsonb_selftest(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._geometry_selftest(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._selfcheck() FROM PUBLIC;
COMMENT ON FUNCTION gn2pg._jsonb_selftest(text) IS
    'NULL when gn2pg''s jsonb encoder gives the bytes of jsonb_in for this document (at most 1 MB); else the difference. Superusers only.';
COMMENT ON FUNCTION gn2pg._geometry_selftest(text) IS
    'NULL when gn2pg''s EWKB encoder gives the bytes of PostGIS for this GeoJSON or WKT (or leaves it to PostGIS); else the difference. Superusers only.';
COMMENT ON FUNCTION gn2pg._selfcheck() IS
    'Both self-checks over a built-in corpus: warns about each difference and returns their number. Run by CREATE EXTENSION and ALTER EXTENSION UPDATE.';
SELECT gn2pg._selfcheck();

-- ---------------------------------------------------------------------------------------------
-- Issue 14 (pkg): backup and restore, and removal that leaves no pg_cron job behind.
-- ---------------------------------------------------------------------------------------------

-- The ids of gn2pg.source, gn2pg.run_error, gn2pg.alert and gn2pg.alert_event came from identity
-- columns, whose sequences pg_dump never saves for an extension's table: a restored database
-- handed out ids that were already taken (duplicate source_pkey, alert_pkey). They become
-- explicit sequences marked for pg_dump, as in a fresh install, and keep their counters.
DO $$
DECLARE
    t record;
    seq text;
    last_value bigint;
    is_called boolean;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('source', 'integer'), ('run_error', 'bigint'), ('alert', 'bigint'),
                                   ('alert_event', 'bigint')) AS v(tab, typ)
    LOOP
        seq := pg_catalog.pg_get_serial_sequence('gn2pg.' || t.tab, 'id');
        EXECUTE pg_catalog.format('SELECT last_value, is_called FROM %s', seq) INTO last_value, is_called;
        EXECUTE pg_catalog.format('ALTER TABLE gn2pg.%I ALTER COLUMN id DROP IDENTITY', t.tab);
        seq := pg_catalog.format('gn2pg.%I', t.tab || '_id_seq');
        EXECUTE pg_catalog.format('CREATE SEQUENCE %s AS %s', seq, t.typ);
        EXECUTE pg_catalog.format('ALTER SEQUENCE %s OWNED BY gn2pg.%I.id', seq, t.tab);
        EXECUTE pg_catalog.format('ALTER TABLE gn2pg.%I ALTER COLUMN id SET DEFAULT nextval(%L)', t.tab, seq);
        PERFORM pg_catalog.setval(seq::regclass, last_value, is_called);
        PERFORM pg_catalog.pg_extension_config_dump(seq::regclass, '');
    END LOOP;
END
$$;

-- pg_restore copies the run log in with its alerts: finished runs it inserts must not raise or
-- resolve alerts again (they did, and failed the restore on a duplicate alert_pkey).
DROP TRIGGER run_ended_insert ON gn2pg.run_log;
CREATE TRIGGER run_ended_insert AFTER INSERT ON gn2pg.run_log
    FOR EACH ROW WHEN (NEW.status NOT IN ('pending', 'running') AND NEW.finished_at = now())
    EXECUTE FUNCTION gn2pg._run_ended();

-- Dropping gn2pg (DROP EXTENSION, or DROP SCHEMA gn2pg / DROP OWNED that take it along) removes
-- its pg_cron jobs once the transaction commits (sql/lifecycle.sql, src/cron_cleanup.rs).
CREATE FUNCTION gn2pg."_cron_cleanup_after_commit"() RETURNS void
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'cron_cleanup_after_commit_wrapper';

CREATE FUNCTION gn2pg._drop_cleanup() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Only roles that can drop gn2pg matter; anyone else's DROP SCHEMA costs nothing.
    IF NOT pg_has_role(current_user, (SELECT extowner FROM pg_extension WHERE extname = 'gn2pg'), 'USAGE') THEN
        RETURN;
    END IF;
    PERFORM gn2pg._cron_cleanup_after_commit();
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'gn2pg: could not ask for the removal of the pg_cron jobs of this database: %', SQLERRM
          USING HINT = 'With pg_cron, the job gn2pg:housekeeping of the cron database removes them within 10 minutes.';
END
$$;
COMMENT ON FUNCTION gn2pg._drop_cleanup() IS
    'Event trigger: after a drop of gn2pg commits, removes the pg_cron jobs of databases without gn2pg.';
COMMENT ON FUNCTION gn2pg._cron_cleanup_after_commit() IS
    'Starts a worker that removes the pg_cron jobs of databases without gn2pg once this transaction commits.';

CREATE EVENT TRIGGER gn2pg_drop_cleanup ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION gn2pg._drop_cleanup();
COMMENT ON EVENT TRIGGER gn2pg_drop_cleanup IS
    'gn2pg: removes the pg_cron jobs of this database once a statement that drops gn2pg has committed.';

-- Event triggers call their function without checking EXECUTE; the extension owner (and
-- superusers) call the worker launcher through it.
REVOKE ALL ON FUNCTION gn2pg._drop_cleanup() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._cron_cleanup_after_commit() FROM PUBLIC;

-- Jobs that 0.2.0 left behind (databases dropped since) go once this update commits.
SELECT gn2pg._cron_cleanup_after_commit();

------------------------------------------------------------------------------------------------
-- COMMENT on every object (issue 10, item 5): every function, table, view and column of the
-- extension says what it holds or does (\df+, \d+). The statements of the install files, each
-- under the name of its file; pg_test/tests/upgrade.rs compares the comments of an updated
-- database with a fresh install's and fails on any object without one.
------------------------------------------------------------------------------------------------
-- sql/schema.sql
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
COMMENT ON FUNCTION gn2pg._parse_geometry(jsonb, text) IS
    'Internal: one item''s geometry converted by PostGIS from GeoJSON or WKT (EWKT with another SRID is transformed to 4326), or the error PostGIS raised; for geometries gn2pg does not build itself.';

-- sql/metadata.sql
COMMENT ON COLUMN gn2pg.mapping.id IS 'Mapping id, returned by gn2pg_map_ca() / gn2pg_map_jdd().';
COMMENT ON COLUMN gn2pg.mapping.source IS 'The source whose rows are mapped.';
COMMENT ON COLUMN gn2pg.mapping.level IS 'ca: maps an acquisition framework; jdd: maps a dataset.';
COMMENT ON COLUMN gn2pg.mapping.created_at IS 'When the mapping was created.';
COMMENT ON COLUMN gn2pg.mapping.updated_at IS 'When its target last changed.';
COMMENT ON COLUMN gn2pg.target_metadata.level IS 'ca (acquisition framework) or jdd (dataset).';
COMMENT ON COLUMN gn2pg.target_metadata.uuid IS 'Its uuid on this platform (the target_uuid of mappings).';
COMMENT ON COLUMN gn2pg.target_metadata.name IS
    'Its name (target_name); the GeoNature destination names the CA or JDD it creates with it. NULL: not given.';
COMMENT ON COLUMN gn2pg.target_metadata.description IS 'Its description (target_description); NULL: not given.';
COMMENT ON COLUMN gn2pg.target_metadata.created_at IS 'When it was first described.';
COMMENT ON COLUMN gn2pg.target_metadata.updated_at IS 'When its description last changed.';
COMMENT ON COLUMN gn2pg.mapping_state.source IS 'The source.';
COMMENT ON COLUMN gn2pg.mapping_state.version IS
    'Counts the changes of mappings and target descriptions that can move the source''s rows.';
COMMENT ON COLUMN gn2pg.mapping_state.applied_version IS
    'The version its harvested rows reflect: lower than version while a remap is pending.';
COMMENT ON COLUMN gn2pg.mapping_state.applied_at IS
    'When its rows were last remapped (gn2pg_remap() or the start of a run); NULL: never.';
COMMENT ON COLUMN gn2pg.metadata.source IS 'Name of the source that sent it.';
COMMENT ON COLUMN gn2pg.metadata.level IS
    'ca (acquisition framework, cadre d''acquisition) or jdd (dataset, jeu de données).';
COMMENT ON COLUMN gn2pg.metadata.uuid IS 'Its uuid as the source sent it.';
COMMENT ON COLUMN gn2pg.metadata.parent_uuid IS 'For a JDD: its CA at the source; NULL for a CA or when not sent.';
COMMENT ON COLUMN gn2pg.metadata.first_seen IS 'When a run first received it.';
COMMENT ON FUNCTION gn2pg._check_source(text, text) IS
    'Internal: the id of a source, or an error naming the calling function when the source is NULL or unknown.';
COMMENT ON FUNCTION gn2pg._uuid_arg(text, text, text) IS
    'Internal: an argument of a mapping function as a uuid (NULL stays NULL), or an error naming the function and the argument.';
COMMENT ON FUNCTION gn2pg._level_arg(text, text) IS
    'Internal: checks a level argument (ca or jdd), or raises naming the function.';
COMMENT ON FUNCTION gn2pg._mapping_changed(text) IS
    'Internal: records that the rows of a source may have to move (gn2pg.mapping_state.version).';
COMMENT ON FUNCTION gn2pg._describe(text, uuid, text, text, uuid) IS
    'Internal: records what is known of a target CA or JDD (NULL arguments keep the current values); a new parent CA marks the sources mapped to that JDD for a remap.';
COMMENT ON FUNCTION gn2pg._map(text, text, uuid, uuid) IS
    'Internal: creates or changes one mapping and returns its id; a new target marks the source for a remap.';
COMMENT ON FUNCTION gn2pg._unmap(text, text, text, uuid) IS
    'Internal: removes one mapping and marks the source for a remap; false with a NOTICE when there was none.';
COMMENT ON COLUMN gn2pg.metadata_mapping.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.metadata_mapping.level IS 'ca (acquisition framework) or jdd (dataset).';
COMMENT ON COLUMN gn2pg.metadata_mapping.source_uuid IS 'The CA or JDD uuid as the source sent it.';
COMMENT ON COLUMN gn2pg.metadata_mapping.source_name IS
    'Its name at the source (gn2pg.metadata.name); NULL when the source sent none.';
COMMENT ON COLUMN gn2pg.metadata_mapping.rows IS
    'Harvested rows that carry it as sent (source_ca_uuid or source_jdd_uuid).';
COMMENT ON COLUMN gn2pg.metadata_mapping.mapped IS 'A mapping applies to its rows; false: they keep the source value.';
COMMENT ON COLUMN gn2pg.metadata_mapping.target_ca_uuid IS
    'The CA its rows land in (the source value when not mapped).';
COMMENT ON COLUMN gn2pg.metadata_mapping.target_jdd_uuid IS
    'For a JDD: the JDD its rows land in (the source value when not mapped); NULL for a CA.';
COMMENT ON COLUMN gn2pg.metadata_mapping.target_name IS
    'The name of the target CA or JDD described locally (gn2pg.target_metadata); NULL when not mapped or not described.';

-- sql/operations.sql
COMMENT ON COLUMN gn2pg.schedule.source IS 'The scheduled source.';
COMMENT ON COLUMN gn2pg.schedule.mode IS 'Harvest mode of the scheduled runs: auto, full or incremental.';
COMMENT ON COLUMN gn2pg.schedule.job_name IS 'Name of the pg_cron job: gn2pg:<source>.';
COMMENT ON COLUMN gn2pg.schedule.cron_jobid IS
    'cron.job.jobid of the job in cron_database when it was created (a restored database schedules its sources again).';
COMMENT ON COLUMN gn2pg.schedule.cron_database IS 'The database that holds the pg_cron jobs (cron.database_name).';
COMMENT ON COLUMN gn2pg.schedule.scheduled_at IS 'When gn2pg_schedule() last created or replaced the job.';
COMMENT ON COLUMN gn2pg.alert.id IS 'Alert id: in its notifications, and what gn2pg_acknowledge_alert() takes.';
COMMENT ON COLUMN gn2pg.alert.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.alert.kind IS
    'failed or abandoned: a run of the source ended so; stale: no successful run within the staleness limit.';
COMMENT ON COLUMN gn2pg.alert.message IS
    'What happened, naming the source and the run, with the run''s error; never a secret.';
COMMENT ON COLUMN gn2pg.alert.run_id IS 'The latest run that raised or repeated it; NULL for stale alerts.';
COMMENT ON COLUMN gn2pg.alert.raised_at IS 'When it was raised.';
COMMENT ON COLUMN gn2pg.alert.last_seen_at IS 'When it last happened (raised or repeated).';
COMMENT ON COLUMN gn2pg.alert.resolved_at IS
    'When it was resolved: a successful run, the source no longer late, or the source removed; NULL while open.';
COMMENT ON COLUMN gn2pg.alert_event.id IS 'Event id, in the order the events happened.';
COMMENT ON COLUMN gn2pg.alert_event.alert_id IS 'The alert (gn2pg.alert.id).';
COMMENT ON COLUMN gn2pg.alert_event.event IS 'raised or resolved.';
COMMENT ON COLUMN gn2pg.alert_event.payload IS
    'The JSON sent with NOTIFY gn2pg_alert and to the webhook: event, alert_id, database, source, kind, run_id, message, raised_at, occurrences, resolved_at, resolved_by_run.';
COMMENT ON COLUMN gn2pg.alert_event.created_at IS 'When it happened; NOTIFY is sent when that transaction commits.';
COMMENT ON COLUMN gn2pg.alert_event.webhook_attempts IS 'Webhook requests made for it, retries included.';
COMMENT ON COLUMN gn2pg.alert_event.webhook_error IS 'Why the delivery failed, without the URL; NULL otherwise.';
COMMENT ON COLUMN gn2pg.alert_event.webhook_at IS
    'When its delivery last changed state (taken by a worker, sent, failed); NULL: not tried.';
COMMENT ON COLUMN gn2pg.flow_status.source_id IS 'gn2pg.source.id.';
COMMENT ON COLUMN gn2pg.flow_status.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.flow_status.enabled IS 'false: its pg_cron job skips it and it is never late.';
COMMENT ON COLUMN gn2pg.flow_status.url IS 'GeoNature API root of the source.';
COMMENT ON COLUMN gn2pg.flow_status.export_id IS 'Id of the export in the GeoNature Export module.';
COMMENT ON COLUMN gn2pg.flow_status.schedule IS 'Cron expression of its pg_cron job (UTC); NULL: not scheduled.';
COMMENT ON COLUMN gn2pg.flow_status.schedule_mode IS
    'Mode of the scheduled runs (auto, full, incremental); NULL: not scheduled.';
COMMENT ON COLUMN gn2pg.flow_status.running_run_id IS
    'The pending or running run, whose worker is alive; NULL: no run now.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_mode IS 'full or incremental: mode of the latest finished run.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_status IS
    'success, failed, cancelled or abandoned: how the latest finished run ended.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_started_at IS 'When the latest finished run started.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_finished_at IS 'When the latest finished run ended.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_duration IS 'How long the latest finished run took.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_rows_upserted IS 'Rows the latest finished run inserted or rewritten.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_rows_deleted IS
    'Rows the latest finished run deleted (gone from the source).';
COMMENT ON COLUMN gn2pg.flow_status.last_run_rows_failed IS 'Items the latest finished run rejected (gn2pg.run_error).';
COMMENT ON COLUMN gn2pg.flow_status.last_run_error IS 'Why the latest finished run did not succeed; NULL when it did.';
COMMENT ON COLUMN gn2pg.flow_status.last_success_run_id IS 'The latest successful run; NULL: none yet.';
COMMENT ON COLUMN gn2pg.flow_status.last_success_at IS 'When the latest successful run ended; NULL: none yet.';
COMMENT ON COLUMN gn2pg.flow_status.open_alerts IS 'Open alerts of the source (gn2pg.alert WHERE resolved_at IS NULL).';
COMMENT ON COLUMN gn2pg.flow_status.open_alert_kinds IS 'Kinds of the open alerts, sorted; NULL when none is open.';
COMMENT ON COLUMN gn2pg.flow_status.created_at IS
    'When the source was registered: staleness counts from there until a first success.';

-- sql/destination.sql
COMMENT ON COLUMN gn2pg.destination.source IS 'The source writing to GeoNature.';
COMMENT ON COLUMN gn2pg.destination.id_source IS 'Its gn_synthese.t_sources.id_source (name_source gn2pg:<source>).';
COMMENT ON COLUMN gn2pg.destination.local_srid IS
    'SRID of gn_synthese.synthese.the_geom_local (find_srid) when the destination was enabled: the_geom_local is transformed to it.';
COMMENT ON COLUMN gn2pg.destination.enabled_at IS 'When the destination was enabled for the source.';
COMMENT ON COLUMN gn2pg.destination_row.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.destination_row.id_data IS 'The harvested row (gn2pg.observation.id_data).';
COMMENT ON COLUMN gn2pg.destination_row.id_synthese IS 'The gn_synthese.synthese row holding it; NULL: never written.';
COMMENT ON COLUMN gn2pg.destination_row.state IS
    'written: the synthese holds its current version; pending: it does not (see reason).';
COMMENT ON COLUMN gn2pg.destination_row.reason IS
    'Why it is pending: taxon, habitat, nomenclature, uuid_conflict, dataset or invalid; NULL when written.';
COMMENT ON COLUMN gn2pg.destination_row.jdd_uuid IS
    'The row''s gn2pg.observation.jdd_uuid (after mapping) when it was last applied.';
COMMENT ON COLUMN gn2pg.destination_row.run_id IS
    'The run that last applied it; NULL: gn2pg_sync_destination() or a remap.';
COMMENT ON COLUMN gn2pg.destination_row.updated_at IS 'When it was last applied (written, or found pending).';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.source IS 'The source whose values are mapped.';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.type IS
    'Nomenclature type: ref_nomenclatures.bib_nomenclatures_types.mnemonique (e.g. STADE_VIE).';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.source_value IS 'A code or a label, as the source sends it.';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.target_code IS
    'The cd_nomenclature of that type it stands for in this GeoNature.';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.created_at IS 'When the mapping was created.';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.updated_at IS 'When its target_code last changed.';
COMMENT ON COLUMN gn2pg.destination_report.id IS 'Row id.';
COMMENT ON COLUMN gn2pg.destination_report.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.destination_report.run_id IS
    'The run that met the value; NULL for a call outside runs (see sync_at).';
COMMENT ON COLUMN gn2pg.destination_report.sync_at IS
    'A call outside runs (gn2pg_sync_destination(), gn2pg_remap()): the start of its transaction; NULL for a run.';
COMMENT ON COLUMN gn2pg.destination_report.field IS 'The export field (cd_nom, code_habitat, sexe, id_perm_sinp, ...).';
COMMENT ON COLUMN gn2pg.destination_report.value IS 'The value the source sent; NULL: none.';
COMMENT ON COLUMN gn2pg.destination_report.problem IS
    'What is wrong with it, e.g. unknown, ambiguous label, attachment (2) without a known area_attachment, or the owner of a uuid.';
COMMENT ON COLUMN gn2pg.destination_report.rows IS 'Rows that had this value and this problem.';
COMMENT ON COLUMN gn2pg.destination_report.first_seen IS 'When the run (or call) first met it.';
COMMENT ON COLUMN gn2pg.destination_report.last_seen IS 'When the run (or call) last met it.';
COMMENT ON COLUMN gn2pg.destination_metadata.level IS
    'ca (gn_meta.t_acquisition_frameworks) or jdd (gn_meta.t_datasets).';
COMMENT ON COLUMN gn2pg.destination_metadata.uuid IS 'Its uuid (unique_acquisition_framework_id or unique_dataset_id).';
COMMENT ON COLUMN gn2pg.destination_metadata.id IS 'Its id in gn_meta: id_acquisition_framework or id_dataset.';
COMMENT ON COLUMN gn2pg.destination_metadata.created_by IS 'The source whose run created it.';
COMMENT ON COLUMN gn2pg.destination_metadata.fingerprint IS
    'md5 of what gn2pg last wrote to it: unchanged metadata is not written again.';
COMMENT ON COLUMN gn2pg.destination_metadata.acteurs IS
    'A JDD''s jdd_acteurs as rows last sent them (exports without jdd_data); NULL otherwise.';
COMMENT ON COLUMN gn2pg.destination_metadata.created_at IS 'When gn2pg created it in gn_meta.';
COMMENT ON COLUMN gn2pg.destination_metadata.updated_at IS 'When gn2pg last changed it in gn_meta.';
COMMENT ON COLUMN gn2pg.destination_pending.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.destination_pending.id_data IS 'The harvested row (gn2pg.observation.id_data).';
COMMENT ON COLUMN gn2pg.destination_pending.uuid IS 'Its id_perm_sinp (gn2pg.observation.uuid).';
COMMENT ON COLUMN gn2pg.destination_pending.detail IS
    'Which value, and what is wrong with it; for uuid_conflict, the owner (id_synthese, id_source, name_source).';
COMMENT ON COLUMN gn2pg.destination_pending.run_id IS
    'The run that last tried it; NULL: gn2pg_sync_destination() or a remap.';
COMMENT ON COLUMN gn2pg.destination_pending.since IS 'When it was last tried and left pending.';
COMMENT ON COLUMN gn2pg.destination_status.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.destination_status.id_source IS 'Its gn_synthese.t_sources.id_source.';
COMMENT ON COLUMN gn2pg.destination_status.enabled_at IS 'When the destination was enabled for the source.';
COMMENT ON COLUMN gn2pg.destination_status.nomenclature_unknown IS
    'Policy for nomenclature values that cannot be resolved: reject (the row waits, pending) or default (written with the type''s default).';
COMMENT ON COLUMN gn2pg.destination_status.rows_written IS
    'Harvested rows the synthese holds in their current version.';
COMMENT ON COLUMN gn2pg.destination_status.rows_pending IS
    'Harvested rows the synthese does not hold in their current version (listed in gn2pg.destination_pending).';
COMMENT ON COLUMN gn2pg.destination_status.pending_taxon IS 'Pending rows: cd_nom not in taxonomie.taxref.';
COMMENT ON COLUMN gn2pg.destination_status.pending_habitat IS 'Pending rows: code_habitat not in ref_habitats.habref.';
COMMENT ON COLUMN gn2pg.destination_status.pending_nomenclature IS
    'Pending rows: a nomenclature value unknown or ambiguous.';
COMMENT ON COLUMN gn2pg.destination_status.pending_uuid_conflict IS
    'Pending rows: their id_perm_sinp belongs to another synthese row.';
COMMENT ON COLUMN gn2pg.destination_status.pending_other IS
    'Pending rows: no dataset, or a value the synthese refuses.';
COMMENT ON COLUMN gn2pg.destination_status.rows_not_applied IS
    'Harvested rows never applied to the synthese (harvested before the destination was enabled): gn2pg_sync_destination() writes them.';

-- sql/dashboard.sql
COMMENT ON COLUMN gn2pg.observation_count.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.observation_count.source_ca_uuid IS
    'CA as the source sent it (gn2pg.observation.source_ca_uuid).';
COMMENT ON COLUMN gn2pg.observation_count.source_jdd_uuid IS
    'JDD as the source sent it (gn2pg.observation.source_jdd_uuid).';
COMMENT ON COLUMN gn2pg.observation_count.rows IS
    'Rows added to the group (negative: removed); the group''s count is the sum over its rows, folded into one when a run ends.';
COMMENT ON FUNCTION gn2pg._count_deleted() IS
    'Trigger: subtracts the rows a statement deleted from gn2pg.observation from gn2pg.observation_count.';
COMMENT ON FUNCTION gn2pg._count_updated() IS
    'Trigger: moves the counts of rows whose source, CA or JDD an UPDATE of gn2pg.observation changed.';
COMMENT ON FUNCTION gn2pg._count_truncated() IS
    'Trigger: empties gn2pg.observation_count when gn2pg.observation is truncated.';
COMMENT ON FUNCTION gn2pg._fold_counts_after_run() IS
    'Trigger: folds the count deltas of a source when one of its runs ends.';
COMMENT ON FUNCTION gn2pg._fold_counts_after_removal() IS
    'Trigger: folds the count deltas of a removed source (with its rows dropped, they sum to zero).';
COMMENT ON COLUMN gn2pg.geonature_account.id_role IS 'The account: utilisateurs.t_roles.id_role.';
COMMENT ON COLUMN gn2pg.geonature_account.login IS
    'Its identifiant when it was mapped (a sign-in checks the current one).';
COMMENT ON COLUMN gn2pg.geonature_account.role IS
    'The gn2pg role it acts as in the dashboard: gn2pg_reader, gn2pg_operator or gn2pg_admin.';
COMMENT ON COLUMN gn2pg.geonature_account.mapped_by IS 'The role that last mapped it (gn2pg_map_geonature_account()).';
COMMENT ON COLUMN gn2pg.geonature_account.mapped_at IS 'When it was last mapped.';

-- sql/comments.sql
COMMENT ON FUNCTION public.gn2pg_add_source(text, text, integer, text, text, text, text, jsonb, text) IS
    'Registers a source (one export of a GeoNature instance), or updates it when name exists, with its whole option set; returns its id. Credentials go to gn2pg.source_secret. Admin only; a role that is not a superuser may only name hosts listed in gn2pg.allowed_hosts.';
COMMENT ON FUNCTION public.gn2pg_remove_source(text, boolean) IS
    'Removes a source with its credentials, mappings and pg_cron job; its harvested rows and metadata stay unless drop_data. Refused while it is harvested or writes to GeoNature (gn2pg_disable_destination() first); false with a NOTICE when there is no such source. Admin only.';
COMMENT ON FUNCTION public.gn2pg_harvest(text, text) IS
    'Harvests a source in a background worker and waits for it (mode auto, full or incremental); returns its gn2pg.run_log row as jsonb, and raises an error naming the source and the cause when the run does not succeed. Cancelling the call stops the run. Operators.';
COMMENT ON FUNCTION public.gn2pg_harvest_async(text, text) IS
    'Starts a harvest in a background worker once the calling transaction commits (none if it rolls back) and returns its run id at once; follow it in gn2pg.run_log. Operators.';
COMMENT ON FUNCTION public.gn2pg_cancel(bigint) IS
    'Stops a pending or running harvest: pages already loaded stay, the run ends cancelled. False with a NOTICE when the run is not pending or running. Operators.';

-- Nothing else of the extension is executable by PUBLIC (a fresh install does the same last).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT d.objid FROM pg_catalog.pg_depend d
              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'gn2pg')
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Issue 10, items 3 and 4 (errs): errors with a SQLSTATE and a reason; a run that rejects rows
-- says so (a 'rejected' alert, flow_status columns). As sql/operations.sql and sql/dashboard.sql.
-- ---------------------------------------------------------------------------------------------

-- A failed or cancelled run records the SQLSTATE its caller gets and the kind of failure, last
-- in run_log and run_part (a fresh install adds them after destination.sql's columns too).
ALTER TABLE gn2pg.run_log ADD COLUMN sqlstate text, ADD COLUMN reason text;
COMMENT ON COLUMN gn2pg.run_log.sqlstate IS
    'SQLSTATE of the run''s error, as gn2pg_harvest raises it (failed and cancelled runs; XX000 for abandoned ones; NULL otherwise).';
COMMENT ON COLUMN gn2pg.run_log.reason IS
    'Kind of failure of a failed, cancelled or abandoned run: auth, http, timeout, protocol, limit, config, cancelled, database, internal (an abandoned run; busy: a refused start recorded by 0.2.0). NULL otherwise.';
ALTER TABLE gn2pg.run_part ADD COLUMN sqlstate text, ADD COLUMN reason text;
COMMENT ON COLUMN gn2pg.run_part.sqlstate IS 'SQLSTATE of the part''s error (see run_log.sqlstate).';
COMMENT ON COLUMN gn2pg.run_part.reason IS 'Kind of failure of the part (see run_log.reason).';

-- Abandoned runs record gn2pg's reason for a worker that ended without a word.
CREATE OR REPLACE FUNCTION gn2pg._abandon_dead_runs(p_source text DEFAULT NULL, p_except bigint DEFAULT NULL) RETURNS integer
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

-- 0.2.0 recorded a start refused because its source was busy as a failed run, whose text is
-- the only trace of why: read once here, so that nothing matches message text any more.
UPDATE gn2pg.run_log SET sqlstate = '55006', reason = 'busy'
 WHERE status = 'failed' AND error LIKE '%is already being harvested%';

-- Alerts of kind 'rejected': a run rejected rows (in gn2pg.run_error, not stored).
ALTER TABLE gn2pg.alert DROP CONSTRAINT alert_kind_check,
    ADD CONSTRAINT alert_kind_check CHECK (kind IN ('failed', 'abandoned', 'stale', 'rejected'));
COMMENT ON TABLE gn2pg.alert IS
    'Problems of sources: failed or abandoned runs, rows a run rejected, sources without a recent success (stale). Open while resolved_at IS NULL.';
CREATE OR REPLACE FUNCTION gn2pg._alert_event(a gn2pg.alert, event text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    payload jsonb;
    hook boolean;
BEGIN
    -- The reason and SQLSTATE of the run that raised it (README, "Errors"): what a receiver
    -- tests, never the message.
    payload := jsonb_build_object(
        'event', event, 'alert_id', a.id, 'database', current_database(), 'source', a.source,
        'kind', a.kind, 'run_id', a.run_id, 'message', left(a.message, 2000),
        'raised_at', a.raised_at, 'occurrences', a.occurrences,
        'resolved_at', a.resolved_at, 'resolved_by_run', a.resolved_by_run,
        'reason', (SELECT r.reason FROM gn2pg.run_log r WHERE r.id = a.run_id),
        'sqlstate', (SELECT r.sqlstate FROM gn2pg.run_log r WHERE r.id = a.run_id));
    SELECT coalesce(nullif(k.alert_webhook, ''), nullif(current_setting('gn2pg.alert_webhook', true), '')) IS NOT NULL
      INTO hook
      FROM (SELECT 1) one
      LEFT JOIN gn2pg.source s ON s.name = a.source
      LEFT JOIN gn2pg.source_secret k ON k.source_id = s.id;
    INSERT INTO gn2pg.alert_event (alert_id, event, payload, webhook_state)
    VALUES (a.id, event, payload, CASE WHEN hook THEN 'pending' END);
    PERFORM pg_notify('gn2pg_alert', payload::text);
END
$$;

CREATE OR REPLACE FUNCTION gn2pg._run_ended() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gn2pg.source WHERE name = NEW.source) THEN
        RETURN NULL;
    END IF;
    IF NEW.status = 'success' THEN
        PERFORM gn2pg._resolve_alerts(NEW.source, NEW.id,
            CASE WHEN NEW.rows_failed > 0 THEN ARRAY['failed', 'abandoned', 'stale'] END);
    ELSIF NEW.status IN ('failed', 'abandoned') THEN
        PERFORM gn2pg._raise_alert(NEW.source, NEW.status, NEW.id,
            format('run %s of source %s %s: %s', NEW.id, NEW.source, NEW.status,
                   coalesce(NEW.error, 'no error recorded')));
    END IF;
    IF NEW.rows_failed > 0 THEN
        PERFORM gn2pg._raise_alert(NEW.source, 'rejected', NEW.id,
            format('run %s of source %s rejected %s of the %s rows received: SELECT * FROM gn2pg.run_error WHERE run_id = %s',
                   NEW.id, NEW.source, NEW.rows_failed, NEW.rows_received, NEW.id));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE VIEW gn2pg.flow_status AS
SELECT s.id AS source_id,
       s.name AS source,
       s.enabled,
       nullif(btrim(s.options ->> 'organism'), '') AS organism,
       nullif(btrim(s.options ->> 'organism_id'), '') AS organism_id,
       s.url,
       s.export_id,
       s.auth AS access_mode,
       sc.schedule,
       sc.mode AS schedule_mode,
       CASE WHEN s.enabled THEN gn2pg._cron_next(sc.schedule, now()) END AS next_run_at,
       cur.id AS running_run_id,
       lr.id AS last_run_id,
       lr.mode AS last_run_mode,
       lr.status AS last_run_status,
       lr.started_at AS last_run_started_at,
       lr.finished_at AS last_run_finished_at,
       lr.finished_at - lr.started_at AS last_run_duration,
       lr.rows_received AS last_run_rows,
       lr.rows_upserted AS last_run_rows_upserted,
       lr.rows_deleted AS last_run_rows_deleted,
       lr.rows_failed AS last_run_rows_failed,
       lr.error AS last_run_error,
       ls.id AS last_success_run_id,
       ls.finished_at AS last_success_at,
       (SELECT coalesce(sum(c.rows), 0)::bigint FROM gn2pg.observation_count c WHERE c.source = s.name) AS local_rows,
       coalesce(al.n, 0) AS open_alerts,
       al.kinds AS open_alert_kinds,
       lim.stale_after,
       CASE WHEN lr.id IS NULL THEN 'never_run'
            WHEN lr.status IN ('failed', 'abandoned') THEN 'failing'
            WHEN s.enabled AND lim.stale_after > interval '0'
                 AND coalesce(ls.finished_at, s.created_at) < now() - lim.stale_after THEN 'late'
            ELSE 'ok'
       END AS health,
       s.created_at,
       lr.reason AS last_run_reason,
       coalesce(rj.rows_failed, 0) AS last_rows_rejected,
       rj.id AS last_rejected_run_id
  FROM gn2pg.source s
  LEFT JOIN gn2pg.schedule sc ON sc.source = s.name
  CROSS JOIN LATERAL (
        SELECT CASE WHEN s.options ? 'stale_after_hours'
                    THEN make_interval(hours => (s.options ->> 'stale_after_hours')::integer)
                    ELSE make_interval(mins => gn2pg._stale_after_minutes()) END AS stale_after) lim
  LEFT JOIN LATERAL (
        -- The columns of run_log in 0.2.0 and its reason, spelled out: `r.*` would be frozen at
        -- creation, and a column added later would make an updated database differ from a fresh install.
        SELECT r.id, r.source, r.source_id, r.mode, r.status, r.started_at, r.finished_at, r.pages_done,
               r.rows_received, r.rows_upserted, r.rows_unchanged, r.rows_deleted, r.rows_failed, r.http_requests,
               r.http_retries, r.bytes_received, r.source_wait_ms, r.load_ms, r.error, r.worker_pid, r.paging,
               r.since, r.max_source_action, r.checkpoint, r.resumed_from, r.reason
          FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status NOT IN ('pending', 'running') AND r.reason IS DISTINCT FROM 'busy'
         ORDER BY r.id DESC LIMIT 1) lr ON true
  LEFT JOIN LATERAL (
        SELECT r.id, r.finished_at FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status = 'success'
         ORDER BY r.id DESC LIMIT 1) ls ON true
  LEFT JOIN LATERAL (
        SELECT max(r.id) AS id FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status IN ('pending', 'running')
           AND gn2pg._run_alive(r.worker_pid, r.started_at)) cur ON true
  LEFT JOIN LATERAL (
        SELECT count(*)::integer AS n, array_agg(a.kind ORDER BY a.kind) AS kinds
          FROM gn2pg.alert a WHERE a.source = s.name AND a.resolved_at IS NULL) al ON true
  LEFT JOIN LATERAL (
        -- The latest run that rejected rows, unless a successful run rejecting none came after it.
        SELECT r.id, r.rows_failed FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status NOT IN ('pending', 'running') AND r.rows_failed > 0
           AND r.id > coalesce((SELECT max(c.id) FROM gn2pg.run_log c
                                 WHERE c.source = s.name AND c.status = 'success' AND c.rows_failed = 0), 0)
         ORDER BY r.id DESC LIMIT 1) rj ON true;
COMMENT ON COLUMN gn2pg.flow_status.local_rows IS 'Rows of the source in gn2pg.observation (from gn2pg.observation_count).';
COMMENT ON COLUMN gn2pg.flow_status.last_run_reason IS
    'Kind of failure of the latest finished run (gn2pg.run_log.reason): NULL when it succeeded.';
COMMENT ON COLUMN gn2pg.flow_status.last_rows_rejected IS
    'Rows the latest run that rejected any rejected (in gn2pg.run_error, not stored); 0 once a successful run rejects none.';
COMMENT ON COLUMN gn2pg.flow_status.last_rejected_run_id IS
    'That run: SELECT * FROM gn2pg.run_error WHERE run_id = last_rejected_run_id. NULL when last_rows_rejected is 0.';

-- Busy refusals are told by their reason now.
DROP FUNCTION gn2pg._busy_refusal(text);
