-- gn2pg 0.2.0 -> 0.3.0.
--
-- Each section below says which change it carries; `pg_test/tests/upgrade.rs` checks that
-- updating from every released version gives exactly the objects of a fresh install.

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

-- _remap_idle is gn2pg_remap() once the source is idle: no pending or running run (a run
-- remaps pending changes itself before it loads), and no other transaction starting, changing
-- or removing it (its registry row is locked until the end of this transaction, so no run can
-- start meanwhile). SECURITY DEFINER (sql/operations.sql): admins cannot lock gn2pg.source rows.
CREATE FUNCTION gn2pg._remap_idle(p_source text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v record;
BEGIN
    SELECT * INTO v FROM gn2pg._claim_source(p_source);
    IF v.busy_run IS NOT NULL THEN
        RAISE EXCEPTION 'gn2pg_remap: source "%" is being harvested by run %', p_source, v.busy_run
              USING ERRCODE = 'object_in_use',
                    DETAIL = format('Run %s is %s in worker process %s since %s.', v.busy_run, v.busy_status,
                                    v.busy_pid, v.busy_since),
                    HINT = 'Call gn2pg_remap() again when the run has ended, or let the next run apply the mappings: it remaps before loading.';
    ELSIF v.source_id IS NULL THEN
        RAISE EXCEPTION 'gn2pg_remap: source "%" is being started, changed or removed by another transaction', p_source
              USING ERRCODE = 'lock_not_available', HINT = 'Call gn2pg_remap() again when that transaction has ended.';
    END IF;
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
        SELECT r.* FROM gn2pg.run_log r
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
