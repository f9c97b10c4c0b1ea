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
COMMENT ON COLUMN gn2pg.destination.source IS 'The source writing to GeoNature.';
COMMENT ON COLUMN gn2pg.destination.id_source IS 'Its gn_synthese.t_sources.id_source (name_source gn2pg:<source>).';
COMMENT ON COLUMN gn2pg.destination.local_srid IS
    'SRID of gn_synthese.synthese.the_geom_local (find_srid) when the destination was enabled: the_geom_local is transformed to it.';
COMMENT ON COLUMN gn2pg.destination.enabled_at IS 'When the destination was enabled for the source.';

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
COMMENT ON COLUMN gn2pg.nomenclature_mapping.source IS 'The source whose values are mapped.';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.type IS
    'Nomenclature type: ref_nomenclatures.bib_nomenclatures_types.mnemonique (e.g. STADE_VIE).';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.source_value IS 'A code or a label, as the source sends it.';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.target_code IS
    'The cd_nomenclature of that type it stands for in this GeoNature.';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.created_at IS 'When the mapping was created.';
COMMENT ON COLUMN gn2pg.nomenclature_mapping.updated_at IS 'When its target_code last changed.';

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
COMMENT ON COLUMN gn2pg.destination_pending.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.destination_pending.id_data IS 'The harvested row (gn2pg.observation.id_data).';
COMMENT ON COLUMN gn2pg.destination_pending.uuid IS 'Its id_perm_sinp (gn2pg.observation.uuid).';
COMMENT ON COLUMN gn2pg.destination_pending.detail IS
    'Which value, and what is wrong with it; for uuid_conflict, the owner (id_synthese, id_source, name_source).';
COMMENT ON COLUMN gn2pg.destination_pending.run_id IS
    'The run that last tried it; NULL: gn2pg_sync_destination() or a remap.';
COMMENT ON COLUMN gn2pg.destination_pending.since IS 'When it was last tried and left pending.';

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
