-- gn2pg 0.2.0 -> 0.3.0.
--
-- Each section below says which change it carries; `pg_test/tests/upgrade.rs` checks that
-- updating from every released version gives exactly the objects of a fresh install.

-- ---------------------------------------------------------------------------------------------
-- Issue 14 (pkg): backup and restore, and removal that leaves no pg_cron job behind.
-- ---------------------------------------------------------------------------------------------

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
    FOR EACH ROW WHEN (NEW.status <> 'running' AND NEW.finished_at = now()) EXECUTE FUNCTION gn2pg._run_ended();

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
