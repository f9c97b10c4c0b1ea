-- gn2pg: COMMENTs of the functions pgrx generates from src/ (#[pg_extern]), which no SQL file
-- defines. Every other object has its COMMENT next to its definition; pg_test/tests/upgrade.rs
-- fails on any function, table, view or column of the extension without one.
--
-- Runs in CREATE EXTENSION after every function exists, before the final REVOKE (src/lib.rs).

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
