-- gn2pg 0.2.0 -> 0.3.0.
--
-- Each section below says which change it carries; `pg_test/tests/upgrade.rs` checks that
-- updating from every released version gives exactly the objects of a fresh install.

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
