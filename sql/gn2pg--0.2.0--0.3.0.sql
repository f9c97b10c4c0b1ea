-- gn2pg 0.2.0 -> 0.3.0.
--
-- Each section below says which change it carries; `pg_test/tests/upgrade.rs` checks that
-- updating from every released version gives exactly the objects of a fresh install.

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
