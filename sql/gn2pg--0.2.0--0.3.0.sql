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
