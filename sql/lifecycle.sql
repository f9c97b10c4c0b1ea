-- gn2pg: what dropping gn2pg leaves behind (issue 14). Its pg_cron jobs live in the cron
-- database (src/cron_cleanup.rs): when a statement that may drop gn2pg starts, this event
-- trigger asks for the jobs of databases without gn2pg to be removed once the transaction has
-- committed (a rolled-back drop keeps them). DROP DATABASE fires no trigger: the job
-- gn2pg:housekeeping of the cron database covers it.

-- Never blocks the statement: the whole call is trapped, so DROP EXTENSION gn2pg works without
-- pg_cron, without a free worker slot, and without the gn2pg library (package removed first).
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
