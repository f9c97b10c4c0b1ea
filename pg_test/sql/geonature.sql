-- A GeoNature-shaped destination for the tests and the benchmark: the tables, columns, keys,
-- CHECKs, defaults and triggers of GeoNature 2.17.4 that a harvester writing the synthese and
-- gn_meta meets (docs/geonature-destination.md §1-3), written for gn2pg's tests. It is
-- not GeoNature's schema: objects a harvester never touches are left out, and the trigger
-- bodies are simple versions doing the same kind of work (a spatial join per inserted batch,
-- a per-row recomputation on update, a log of deletions).
--
-- {local_srid} is replaced by the loader (pg_test/src/geonature.rs); reference data (nomenclature
-- values, TAXREF, habref, areas) are inserted by the loader too, from the fixture server's own
-- tables, so that both always agree.
--
-- Every trigger function counts its calls in a sequence of schema gn_fixture named after it
-- (cheap, and not undone by a rollback); view gn_fixture.trigger_calls shows them, so that tests
-- can tell which triggers a write fired.

CREATE SCHEMA gn_fixture;
CREATE SEQUENCE gn_fixture.tri_meta_dates_change_synthese;
CREATE SEQUENCE gn_fixture.tri_insert_cor_area_synthese;
CREATE SEQUENCE gn_fixture.tri_update_cor_area_synthese;
CREATE SEQUENCE gn_fixture.tri_insert_calculate_sensitivity;
CREATE SEQUENCE gn_fixture.tri_update_calculate_sensitivity;
CREATE SEQUENCE gn_fixture.tri_log_delete_synthese;
CREATE VIEW gn_fixture.trigger_calls AS
SELECT v.trigger_name, CASE WHEN v.is_called THEN v.last_value ELSE 0 END AS calls
  FROM (SELECT 'tri_meta_dates_change_synthese'::text, last_value, is_called FROM gn_fixture.tri_meta_dates_change_synthese
        UNION ALL SELECT 'tri_insert_cor_area_synthese'::text, last_value, is_called FROM gn_fixture.tri_insert_cor_area_synthese
        UNION ALL SELECT 'tri_update_cor_area_synthese'::text, last_value, is_called FROM gn_fixture.tri_update_cor_area_synthese
        UNION ALL SELECT 'tri_insert_calculate_sensitivity'::text, last_value, is_called FROM gn_fixture.tri_insert_calculate_sensitivity
        UNION ALL SELECT 'tri_update_calculate_sensitivity'::text, last_value, is_called FROM gn_fixture.tri_update_calculate_sensitivity
        UNION ALL SELECT 'tri_log_delete_synthese'::text, last_value, is_called FROM gn_fixture.tri_log_delete_synthese) AS v(trigger_name, last_value, is_called);
CREATE FUNCTION gn_fixture.count_call(p_trigger text) RETURNS void LANGUAGE sql AS $$
    SELECT nextval(('gn_fixture.' || p_trigger)::regclass);
$$;

CREATE SCHEMA utilisateurs;
CREATE TABLE utilisateurs.bib_organismes (
    id_organisme serial PRIMARY KEY,
    uuid_organisme uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    nom_organisme varchar(500) NOT NULL,
    email_organisme varchar(100),
    additional_data jsonb DEFAULT '{}'::jsonb
);
CREATE TABLE utilisateurs.t_roles (
    id_role serial PRIMARY KEY,
    uuid_role uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    nom_role varchar(50),
    prenom_role varchar(50),
    email varchar(250),
    id_organisme integer REFERENCES utilisateurs.bib_organismes (id_organisme) ON UPDATE CASCADE
);

CREATE SCHEMA gn_commons;
CREATE TABLE gn_commons.t_modules (
    id_module serial PRIMARY KEY,
    module_code varchar(50) NOT NULL UNIQUE,
    module_label varchar(255) NOT NULL
);
INSERT INTO gn_commons.t_modules (module_code, module_label) VALUES ('SYNTHESE', 'Synthèse'), ('EXPORTS', 'Exports');

CREATE SCHEMA gn_imports;
CREATE TABLE gn_imports.t_imports (id_import serial PRIMARY KEY, date_create_import timestamp DEFAULT now());

------------------------------------------------------------------------------------------------
-- Nomenclatures
------------------------------------------------------------------------------------------------
CREATE SCHEMA ref_nomenclatures;
CREATE TABLE ref_nomenclatures.bib_nomenclatures_types (
    id_type serial PRIMARY KEY,
    mnemonique varchar(255) NOT NULL UNIQUE,
    label_default varchar(255) NOT NULL,
    label_fr varchar(255)
);
CREATE TABLE ref_nomenclatures.t_nomenclatures (
    id_nomenclature serial PRIMARY KEY,
    id_type integer NOT NULL REFERENCES ref_nomenclatures.bib_nomenclatures_types (id_type) ON UPDATE CASCADE,
    cd_nomenclature varchar(255) NOT NULL,
    mnemonique varchar(255),
    label_default varchar(255) NOT NULL,
    label_fr varchar(255),
    definition_default text,
    active boolean NOT NULL DEFAULT true,
    UNIQUE (id_type, cd_nomenclature)
);
CREATE TABLE ref_nomenclatures.defaults_nomenclatures_value (
    mnemonique_type varchar(255) NOT NULL REFERENCES ref_nomenclatures.bib_nomenclatures_types (mnemonique),
    id_organism integer NOT NULL DEFAULT 0,
    id_nomenclature integer NOT NULL REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature),
    PRIMARY KEY (mnemonique_type, id_organism)
);

CREATE FUNCTION ref_nomenclatures.get_id_nomenclature_type(mytype varchar) RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    theidtype integer;
BEGIN
    SELECT INTO theidtype id_type FROM ref_nomenclatures.bib_nomenclatures_types WHERE mnemonique = mytype;
    RETURN theidtype;
END
$$;

-- As in GeoNature: a plpgsql lookup per call, which the synthese's CHECKs run for every
-- nomenclature column of every row written.
CREATE FUNCTION ref_nomenclatures.check_nomenclature_type_by_mnemonique(id integer, mytype varchar) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF (id IN (SELECT id_nomenclature FROM ref_nomenclatures.t_nomenclatures
                WHERE id_type = ref_nomenclatures.get_id_nomenclature_type(mytype))
        OR id IS NULL) THEN
        RETURN true;
    END IF;
    RAISE EXCEPTION 'Error : id_nomenclature --> (%) and nomenclature --> (%) type didn''t match.', id, mytype;
END
$$;

CREATE FUNCTION ref_nomenclatures.get_cd_nomenclature(myidnomenclature integer) RETURNS varchar
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    thecdnomenclature varchar;
BEGIN
    SELECT INTO thecdnomenclature cd_nomenclature FROM ref_nomenclatures.t_nomenclatures
     WHERE id_nomenclature = myidnomenclature;
    RETURN thecdnomenclature;
END
$$;

CREATE FUNCTION ref_nomenclatures.get_id_nomenclature(mytype varchar, mycdnomenclature varchar) RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    theidnomenclature integer;
BEGIN
    SELECT INTO theidnomenclature n.id_nomenclature
      FROM ref_nomenclatures.t_nomenclatures n
      JOIN ref_nomenclatures.bib_nomenclatures_types t ON t.id_type = n.id_type
     WHERE t.mnemonique = mytype AND n.cd_nomenclature = mycdnomenclature;
    RETURN theidnomenclature;
END
$$;

-- Returns -1 when the type has no default, as GeoNature's does.
CREATE FUNCTION ref_nomenclatures.get_default_nomenclature_value(mytype varchar, myidorganism integer DEFAULT 0)
RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    thenomenclatureid integer;
BEGIN
    SELECT INTO thenomenclatureid id_nomenclature FROM ref_nomenclatures.defaults_nomenclatures_value
     WHERE mnemonique_type = mytype AND (id_organism = myidorganism OR id_organism = 0)
     ORDER BY id_organism DESC LIMIT 1;
    RETURN coalesce(thenomenclatureid, -1);
END
$$;

------------------------------------------------------------------------------------------------
-- Taxonomy, habitats, areas
------------------------------------------------------------------------------------------------
CREATE SCHEMA taxonomie;
CREATE TABLE taxonomie.taxref (
    cd_nom integer PRIMARY KEY,
    cd_ref integer NOT NULL,
    regne varchar(20),
    group2_inpn varchar(50),
    lb_nom varchar(250),
    nom_vern varchar(1000),
    nom_valide varchar(500)
);

CREATE SCHEMA ref_habitats;
CREATE TABLE ref_habitats.habref (
    cd_hab integer PRIMARY KEY,
    lb_code varchar(50),
    lb_hab_fr varchar(500)
);

CREATE SCHEMA ref_geo;
CREATE TABLE ref_geo.bib_areas_types (
    id_type serial PRIMARY KEY,
    type_code varchar(25) NOT NULL UNIQUE,
    type_name varchar(200) NOT NULL
);
CREATE TABLE ref_geo.l_areas (
    id_area serial PRIMARY KEY,
    id_type integer NOT NULL REFERENCES ref_geo.bib_areas_types (id_type),
    area_name varchar(250) NOT NULL,
    area_code varchar(25) NOT NULL,
    geom geometry(MultiPolygon, {local_srid}),
    enable boolean NOT NULL DEFAULT true,
    UNIQUE (id_type, area_code)
);
CREATE INDEX l_areas_geom_idx ON ref_geo.l_areas USING gist (geom);

------------------------------------------------------------------------------------------------
-- Metadata (gn_meta)
------------------------------------------------------------------------------------------------
CREATE SCHEMA gn_meta;
CREATE TABLE gn_meta.t_acquisition_frameworks (
    id_acquisition_framework serial PRIMARY KEY,
    unique_acquisition_framework_id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    acquisition_framework_name varchar(255) NOT NULL,
    acquisition_framework_desc text NOT NULL,
    id_nomenclature_territorial_level integer
        DEFAULT ref_nomenclatures.get_default_nomenclature_value('NIVEAU_TERRITORIAL')
        REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE
        CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(id_nomenclature_territorial_level, 'NIVEAU_TERRITORIAL')),
    territory_desc text,
    keywords text,
    id_nomenclature_financing_type integer
        DEFAULT ref_nomenclatures.get_default_nomenclature_value('TYPE_FINANCEMENT')
        REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE
        CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(id_nomenclature_financing_type, 'TYPE_FINANCEMENT')),
    target_description text,
    ecologic_or_geologic_target text,
    acquisition_framework_parent_id integer REFERENCES gn_meta.t_acquisition_frameworks (id_acquisition_framework),
    is_parent boolean,
    opened boolean DEFAULT true,
    id_digitizer integer REFERENCES utilisateurs.t_roles (id_role),
    acquisition_framework_start_date date NOT NULL,
    acquisition_framework_end_date date,
    initial_closing_date timestamp,
    meta_create_date timestamp NOT NULL DEFAULT now(),
    meta_update_date timestamp,
    additional_data jsonb DEFAULT '{}'::jsonb,
    CHECK (acquisition_framework_end_date IS NULL OR acquisition_framework_end_date >= acquisition_framework_start_date)
);
CREATE TABLE gn_meta.cor_acquisition_framework_actor (
    id_cafa serial PRIMARY KEY,
    id_acquisition_framework integer NOT NULL
        REFERENCES gn_meta.t_acquisition_frameworks (id_acquisition_framework) ON UPDATE CASCADE ON DELETE CASCADE,
    id_role integer REFERENCES utilisateurs.t_roles (id_role) ON UPDATE CASCADE,
    id_organism integer REFERENCES utilisateurs.bib_organismes (id_organisme) ON UPDATE CASCADE,
    id_nomenclature_actor_role integer NOT NULL
        REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE
        CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(id_nomenclature_actor_role, 'ROLE_ACTEUR')),
    CHECK (id_role IS NOT NULL OR id_organism IS NOT NULL)
);
CREATE TABLE gn_meta.cor_acquisition_framework_objectif (
    id_acquisition_framework integer NOT NULL REFERENCES gn_meta.t_acquisition_frameworks ON DELETE CASCADE,
    id_nomenclature_objectif integer NOT NULL REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature),
    PRIMARY KEY (id_acquisition_framework, id_nomenclature_objectif)
);
CREATE TABLE gn_meta.cor_acquisition_framework_voletsinp (
    id_acquisition_framework integer NOT NULL REFERENCES gn_meta.t_acquisition_frameworks ON DELETE CASCADE,
    id_nomenclature_voletsinp integer NOT NULL REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature),
    PRIMARY KEY (id_acquisition_framework, id_nomenclature_voletsinp)
);
CREATE TABLE gn_meta.cor_acquisition_framework_territory (
    id_acquisition_framework integer NOT NULL REFERENCES gn_meta.t_acquisition_frameworks ON DELETE CASCADE,
    id_nomenclature_territory integer NOT NULL REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature),
    territory_desc text,
    PRIMARY KEY (id_acquisition_framework, id_nomenclature_territory)
);

CREATE TABLE gn_meta.t_datasets (
    id_dataset serial PRIMARY KEY,
    unique_dataset_id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    id_acquisition_framework integer NOT NULL
        REFERENCES gn_meta.t_acquisition_frameworks (id_acquisition_framework) ON UPDATE CASCADE,
    dataset_name varchar(255) NOT NULL,
    dataset_shortname varchar(255) NOT NULL,
    dataset_desc text NOT NULL,
    id_nomenclature_data_type integer NOT NULL
        DEFAULT ref_nomenclatures.get_default_nomenclature_value('DATA_TYP')
        REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE
        CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(id_nomenclature_data_type, 'DATA_TYP')),
    keywords text,
    marine_domain boolean NOT NULL,
    terrestrial_domain boolean NOT NULL,
    id_nomenclature_dataset_objectif integer NOT NULL
        DEFAULT ref_nomenclatures.get_default_nomenclature_value('JDD_OBJECTIFS')
        REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE
        CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(id_nomenclature_dataset_objectif, 'JDD_OBJECTIFS')),
    bbox_west real,
    bbox_east real,
    bbox_south real,
    bbox_north real,
    id_nomenclature_collecting_method integer NOT NULL
        DEFAULT ref_nomenclatures.get_default_nomenclature_value('METHO_RECUEIL')
        REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE
        CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(id_nomenclature_collecting_method, 'METHO_RECUEIL')),
    id_nomenclature_data_origin integer NOT NULL
        DEFAULT ref_nomenclatures.get_default_nomenclature_value('DS_PUBLIQUE')
        REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE
        CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(id_nomenclature_data_origin, 'DS_PUBLIQUE')),
    id_nomenclature_source_status integer NOT NULL
        DEFAULT ref_nomenclatures.get_default_nomenclature_value('STATUT_SOURCE')
        REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE
        CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(id_nomenclature_source_status, 'STATUT_SOURCE')),
    id_nomenclature_resource_type integer NOT NULL
        DEFAULT ref_nomenclatures.get_default_nomenclature_value('RESOURCE_TYP')
        REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE
        CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(id_nomenclature_resource_type, 'RESOURCE_TYP')),
    active boolean NOT NULL DEFAULT true,
    validable boolean DEFAULT true,
    id_digitizer integer REFERENCES utilisateurs.t_roles (id_role),
    id_taxa_list integer,
    meta_create_date timestamp NOT NULL DEFAULT now(),
    meta_update_date timestamp,
    additional_data jsonb DEFAULT '{}'::jsonb
);
CREATE TABLE gn_meta.cor_dataset_actor (
    id_cda serial PRIMARY KEY,
    id_dataset integer NOT NULL REFERENCES gn_meta.t_datasets (id_dataset) ON UPDATE CASCADE ON DELETE CASCADE,
    id_role integer REFERENCES utilisateurs.t_roles (id_role) ON UPDATE CASCADE,
    id_organism integer REFERENCES utilisateurs.bib_organismes (id_organisme) ON UPDATE CASCADE,
    id_nomenclature_actor_role integer NOT NULL
        REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE
        CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(id_nomenclature_actor_role, 'ROLE_ACTEUR')),
    CHECK (id_role IS NOT NULL OR id_organism IS NOT NULL)
);
CREATE TABLE gn_meta.cor_dataset_territory (
    id_dataset integer NOT NULL REFERENCES gn_meta.t_datasets (id_dataset) ON DELETE CASCADE,
    id_nomenclature_territory integer NOT NULL REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature),
    territory_desc text,
    PRIMARY KEY (id_dataset, id_nomenclature_territory)
);
CREATE TABLE gn_meta.cor_dataset_protocol (
    id_cdp serial PRIMARY KEY,
    id_dataset integer NOT NULL REFERENCES gn_meta.t_datasets (id_dataset) ON DELETE CASCADE,
    id_protocol integer NOT NULL
);

------------------------------------------------------------------------------------------------
-- Synthese
------------------------------------------------------------------------------------------------
CREATE SCHEMA gn_synthese;
CREATE TABLE gn_synthese.defaults_nomenclatures_value (
    mnemonique_type varchar(50) NOT NULL REFERENCES ref_nomenclatures.bib_nomenclatures_types (mnemonique),
    id_organism integer NOT NULL DEFAULT 0,
    regne varchar(20) NOT NULL DEFAULT '0',
    group2_inpn varchar(255) NOT NULL DEFAULT '0',
    id_nomenclature integer NOT NULL REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature),
    PRIMARY KEY (mnemonique_type, id_organism, regne, group2_inpn)
);

-- NULL when the type has no default (the synthese's column defaults call it).
CREATE FUNCTION gn_synthese.get_default_nomenclature_value(myidtype varchar, myidorganism integer DEFAULT 0,
                                                           myregne varchar DEFAULT '0', mygroup2inpn varchar DEFAULT '0')
RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    theidnomenclature integer;
BEGIN
    SELECT INTO theidnomenclature id_nomenclature FROM gn_synthese.defaults_nomenclatures_value
     WHERE mnemonique_type = myidtype AND (id_organism = 0 OR id_organism = myidorganism)
       AND (regne = '0' OR regne = myregne) AND (group2_inpn = '0' OR group2_inpn = mygroup2inpn)
     ORDER BY group2_inpn DESC, regne DESC, id_organism DESC LIMIT 1;
    RETURN theidnomenclature;
END
$$;

CREATE TABLE gn_synthese.t_sources (
    id_source serial PRIMARY KEY,
    name_source varchar(255) NOT NULL UNIQUE,
    desc_source text,
    entity_source_pk_field varchar(255),
    url_source varchar(255),
    meta_create_date timestamp DEFAULT now(),
    meta_update_date timestamp DEFAULT now(),
    id_module integer REFERENCES gn_commons.t_modules (id_module)
);

CREATE TABLE gn_synthese.synthese (
    id_synthese serial PRIMARY KEY,
    unique_id_sinp uuid,
    unique_id_sinp_grp uuid,
    id_source integer NOT NULL REFERENCES gn_synthese.t_sources (id_source) ON UPDATE CASCADE,
    id_module integer REFERENCES gn_commons.t_modules (id_module) ON UPDATE CASCADE,
    entity_source_pk_value varchar,
    id_dataset integer REFERENCES gn_meta.t_datasets (id_dataset) ON UPDATE CASCADE,
    id_nomenclature_geo_object_nature integer DEFAULT gn_synthese.get_default_nomenclature_value('NAT_OBJ_GEO'),
    id_nomenclature_grp_typ integer DEFAULT gn_synthese.get_default_nomenclature_value('TYP_GRP'),
    grp_method varchar(255),
    id_nomenclature_obs_technique integer DEFAULT gn_synthese.get_default_nomenclature_value('METH_OBS'),
    id_nomenclature_bio_status integer DEFAULT gn_synthese.get_default_nomenclature_value('STATUT_BIO'),
    id_nomenclature_bio_condition integer DEFAULT gn_synthese.get_default_nomenclature_value('ETA_BIO'),
    id_nomenclature_naturalness integer DEFAULT gn_synthese.get_default_nomenclature_value('NATURALITE'),
    id_nomenclature_exist_proof integer DEFAULT gn_synthese.get_default_nomenclature_value('PREUVE_EXIST'),
    id_nomenclature_valid_status integer DEFAULT gn_synthese.get_default_nomenclature_value('STATUT_VALID'),
    id_nomenclature_diffusion_level integer,
    id_nomenclature_life_stage integer DEFAULT gn_synthese.get_default_nomenclature_value('STADE_VIE'),
    id_nomenclature_sex integer DEFAULT gn_synthese.get_default_nomenclature_value('SEXE'),
    id_nomenclature_obj_count integer DEFAULT gn_synthese.get_default_nomenclature_value('OBJ_DENBR'),
    id_nomenclature_type_count integer DEFAULT gn_synthese.get_default_nomenclature_value('TYP_DENBR'),
    id_nomenclature_sensitivity integer,
    id_nomenclature_observation_status integer DEFAULT gn_synthese.get_default_nomenclature_value('STATUT_OBS'),
    id_nomenclature_blurring integer DEFAULT gn_synthese.get_default_nomenclature_value('DEE_FLOU'),
    id_nomenclature_source_status integer DEFAULT gn_synthese.get_default_nomenclature_value('STATUT_SOURCE'),
    id_nomenclature_info_geo_type integer DEFAULT gn_synthese.get_default_nomenclature_value('TYP_INF_GEO'),
    id_nomenclature_behaviour integer DEFAULT gn_synthese.get_default_nomenclature_value('OCC_COMPORTEMENT'),
    id_nomenclature_biogeo_status integer DEFAULT gn_synthese.get_default_nomenclature_value('STAT_BIOGEO'),
    id_nomenclature_determination_method integer DEFAULT gn_synthese.get_default_nomenclature_value('METH_DETERMIN'),
    reference_biblio varchar(5000),
    count_min integer,
    count_max integer,
    cd_nom integer REFERENCES taxonomie.taxref (cd_nom) ON UPDATE CASCADE,
    cd_hab integer REFERENCES ref_habitats.habref (cd_hab) ON UPDATE CASCADE,
    nom_cite varchar(1000) NOT NULL,
    meta_v_taxref varchar(50),
    sample_number_proof text,
    digital_proof text,
    non_digital_proof text,
    altitude_min integer,
    altitude_max integer,
    depth_min integer,
    depth_max integer,
    place_name varchar(500),
    the_geom_4326 geometry(Geometry, 4326),
    the_geom_point geometry(Point, 4326),
    the_geom_local geometry(Geometry, {local_srid}),
    precision integer,
    id_area_attachment integer REFERENCES ref_geo.l_areas (id_area) ON UPDATE CASCADE,
    date_min timestamp NOT NULL,
    date_max timestamp NOT NULL,
    validator varchar(1000),
    validation_comment text,
    observers varchar(1000),
    determiner varchar(1000),
    id_digitiser integer REFERENCES utilisateurs.t_roles (id_role) ON UPDATE CASCADE,
    comment_context text,
    comment_description text,
    additional_data jsonb,
    meta_validation_date timestamp,
    meta_create_date timestamp DEFAULT now(),
    meta_update_date timestamp DEFAULT now(),
    last_action char(1),
    id_import integer REFERENCES gn_imports.t_imports (id_import) ON UPDATE CASCADE,
    CONSTRAINT unique_id_sinp_unique UNIQUE (unique_id_sinp),
    CONSTRAINT enforce_dims_the_geom_4326 CHECK (st_ndims(the_geom_4326) = 2),
    CONSTRAINT enforce_dims_the_geom_local CHECK (st_ndims(the_geom_local) = 2),
    CONSTRAINT enforce_dims_the_geom_point CHECK (st_ndims(the_geom_point) = 2),
    CONSTRAINT enforce_geotype_the_geom_point CHECK (geometrytype(the_geom_point) = 'POINT' OR the_geom_point IS NULL),
    CONSTRAINT enforce_srid_the_geom_4326 CHECK (st_srid(the_geom_4326) = 4326),
    CONSTRAINT enforce_srid_the_geom_local CHECK (st_srid(the_geom_local) = {local_srid}),
    CONSTRAINT enforce_srid_the_geom_point CHECK (st_srid(the_geom_point) = 4326),
    CONSTRAINT check_synthese_altitude_max CHECK (altitude_max >= altitude_min),
    CONSTRAINT check_synthese_depth_max CHECK (depth_max >= depth_min),
    CONSTRAINT check_synthese_date_max CHECK (date_max >= date_min),
    CONSTRAINT check_synthese_count_max CHECK (count_max >= count_min),
    CONSTRAINT check_synthese_info_geo_type_id_area_attachment
        CHECK (NOT (ref_nomenclatures.get_cd_nomenclature(id_nomenclature_info_geo_type) = '2' AND id_area_attachment IS NULL))
);

-- One FK and one type CHECK per nomenclature column, as in GeoNature.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('id_nomenclature_geo_object_nature', 'NAT_OBJ_GEO'), ('id_nomenclature_grp_typ', 'TYP_GRP'),
        ('id_nomenclature_obs_technique', 'METH_OBS'), ('id_nomenclature_bio_status', 'STATUT_BIO'),
        ('id_nomenclature_bio_condition', 'ETA_BIO'), ('id_nomenclature_naturalness', 'NATURALITE'),
        ('id_nomenclature_exist_proof', 'PREUVE_EXIST'), ('id_nomenclature_valid_status', 'STATUT_VALID'),
        ('id_nomenclature_diffusion_level', 'NIV_PRECIS'), ('id_nomenclature_life_stage', 'STADE_VIE'),
        ('id_nomenclature_sex', 'SEXE'), ('id_nomenclature_obj_count', 'OBJ_DENBR'),
        ('id_nomenclature_type_count', 'TYP_DENBR'), ('id_nomenclature_sensitivity', 'SENSIBILITE'),
        ('id_nomenclature_observation_status', 'STATUT_OBS'), ('id_nomenclature_blurring', 'DEE_FLOU'),
        ('id_nomenclature_source_status', 'STATUT_SOURCE'), ('id_nomenclature_info_geo_type', 'TYP_INF_GEO'),
        ('id_nomenclature_behaviour', 'OCC_COMPORTEMENT'), ('id_nomenclature_biogeo_status', 'STAT_BIOGEO'),
        ('id_nomenclature_determination_method', 'METH_DETERMIN')) AS v(col, typ)
    LOOP
        EXECUTE format('ALTER TABLE gn_synthese.synthese ADD CONSTRAINT %I FOREIGN KEY (%I)
                          REFERENCES ref_nomenclatures.t_nomenclatures (id_nomenclature) ON UPDATE CASCADE',
                       'fk_synthese_' || c.col, c.col);
        EXECUTE format('ALTER TABLE gn_synthese.synthese ADD CONSTRAINT %I
                          CHECK (ref_nomenclatures.check_nomenclature_type_by_mnemonique(%I, %L)) NOT VALID',
                       'check_synthese_' || c.col, c.col, c.typ);
    END LOOP;
END
$$;

CREATE INDEX i_synthese_t_sources ON gn_synthese.synthese (id_source);
CREATE INDEX i_synthese_cd_nom ON gn_synthese.synthese (cd_nom);
CREATE INDEX i_synthese_date_min ON gn_synthese.synthese (date_min DESC);
CREATE INDEX i_synthese_date_max ON gn_synthese.synthese (date_max DESC);
CREATE INDEX i_synthese_altitude_min ON gn_synthese.synthese (altitude_min);
CREATE INDEX i_synthese_altitude_max ON gn_synthese.synthese (altitude_max);
CREATE INDEX i_synthese_id_dataset ON gn_synthese.synthese (id_dataset);
CREATE INDEX i_synthese_the_geom_local ON gn_synthese.synthese USING gist (the_geom_local);
CREATE INDEX i_synthese_the_geom_4326 ON gn_synthese.synthese USING gist (the_geom_4326);
CREATE INDEX i_synthese_the_geom_point ON gn_synthese.synthese USING gist (the_geom_point);

CREATE TABLE gn_synthese.cor_area_synthese (
    id_synthese integer NOT NULL REFERENCES gn_synthese.synthese (id_synthese) ON UPDATE CASCADE ON DELETE CASCADE,
    id_area integer NOT NULL REFERENCES ref_geo.l_areas (id_area) ON UPDATE CASCADE,
    PRIMARY KEY (id_synthese, id_area)
);
CREATE INDEX cor_area_synthese_area_idx ON gn_synthese.cor_area_synthese (id_area);

CREATE TABLE gn_synthese.t_log_synthese (
    id_synthese integer PRIMARY KEY,
    unique_id_sinp uuid,
    last_action char(1) NOT NULL,
    meta_last_action_date timestamp DEFAULT now()
);

-- Sensitivity: a rule per taxon gives the SENSIBILITE code; other taxa are not sensitive.
CREATE SCHEMA gn_sensitivity;
CREATE TABLE gn_sensitivity.t_sensitivity_rules (
    cd_nom integer PRIMARY KEY,
    cd_sensitivity varchar(10) NOT NULL
);
CREATE FUNCTION gn_sensitivity.get_id_nomenclature_sensitivity(my_cd_nom integer) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT ref_nomenclatures.get_id_nomenclature('SENSIBILITE',
             coalesce((SELECT r.cd_sensitivity FROM gn_sensitivity.t_sensitivity_rules r WHERE r.cd_nom = my_cd_nom), '0'));
$$;

-- tri_meta_dates_change_synthese: BEFORE INSERT OR UPDATE, row.
CREATE FUNCTION gn_synthese.fct_tri_meta_dates_change_synthese() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM gn_fixture.count_call(TG_NAME);
    IF TG_OP = 'INSERT' THEN
        NEW.meta_create_date := now();
        NEW.meta_update_date := now();
        NEW.last_action := 'I';
    ELSE
        NEW.meta_create_date := OLD.meta_create_date;
        NEW.meta_update_date := now();
        NEW.last_action := 'U';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER tri_meta_dates_change_synthese BEFORE INSERT OR UPDATE ON gn_synthese.synthese
    FOR EACH ROW EXECUTE FUNCTION gn_synthese.fct_tri_meta_dates_change_synthese();

-- tri_insert_cor_area_synthese: AFTER INSERT, statement, transition table.
CREATE FUNCTION gn_synthese.fct_trig_insert_in_cor_area_synthese_on_each_statement() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM gn_fixture.count_call(TG_NAME);
    INSERT INTO gn_synthese.cor_area_synthese (id_synthese, id_area)
    SELECT n.id_synthese, a.id_area
      FROM new_rows n JOIN ref_geo.l_areas a ON st_intersects(n.the_geom_local, a.geom)
     WHERE a.enable;
    RETURN NULL;
END
$$;
CREATE TRIGGER tri_insert_cor_area_synthese AFTER INSERT ON gn_synthese.synthese
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION gn_synthese.fct_trig_insert_in_cor_area_synthese_on_each_statement();

-- tri_update_cor_area_synthese: AFTER UPDATE OF the geometries, row.
CREATE FUNCTION gn_synthese.fct_trig_update_in_cor_area_synthese() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM gn_fixture.count_call(TG_NAME);
    DELETE FROM gn_synthese.cor_area_synthese WHERE id_synthese = NEW.id_synthese;
    INSERT INTO gn_synthese.cor_area_synthese (id_synthese, id_area)
    SELECT NEW.id_synthese, a.id_area FROM ref_geo.l_areas a
     WHERE a.enable AND st_intersects(NEW.the_geom_local, a.geom);
    RETURN NULL;
END
$$;
CREATE TRIGGER tri_update_cor_area_synthese AFTER UPDATE OF the_geom_local, the_geom_4326 ON gn_synthese.synthese
    FOR EACH ROW EXECUTE FUNCTION gn_synthese.fct_trig_update_in_cor_area_synthese();

-- tri_insert_calculate_sensitivity: AFTER INSERT, statement: GeoNature computes the
-- sensitivity of new rows from its rules, whatever the row says.
CREATE FUNCTION gn_synthese.fct_tri_cal_sensi_diff_level_on_each_statement() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM gn_fixture.count_call(TG_NAME);
    UPDATE gn_synthese.synthese s
       SET id_nomenclature_sensitivity = c.sensitivity
      FROM (SELECT n.id_synthese, gn_sensitivity.get_id_nomenclature_sensitivity(n.cd_nom) AS sensitivity
              FROM new_rows n) c
     WHERE s.id_synthese = c.id_synthese AND s.id_nomenclature_sensitivity IS DISTINCT FROM c.sensitivity;
    RETURN NULL;
END
$$;
CREATE TRIGGER tri_insert_calculate_sensitivity AFTER INSERT ON gn_synthese.synthese
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION gn_synthese.fct_tri_cal_sensi_diff_level_on_each_statement();

-- tri_update_calculate_sensitivity: BEFORE UPDATE OF dates, taxon, geometry, statuses, row.
CREATE FUNCTION gn_synthese.fct_tri_update_sensitivity_on_each_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM gn_fixture.count_call(TG_NAME);
    NEW.id_nomenclature_sensitivity := gn_sensitivity.get_id_nomenclature_sensitivity(NEW.cd_nom);
    RETURN NEW;
END
$$;
CREATE TRIGGER tri_update_calculate_sensitivity
    BEFORE UPDATE OF date_min, date_max, cd_nom, the_geom_local, id_nomenclature_bio_status, id_nomenclature_behaviour
    ON gn_synthese.synthese
    FOR EACH ROW EXECUTE FUNCTION gn_synthese.fct_tri_update_sensitivity_on_each_row();

-- tri_log_delete_synthese: AFTER DELETE, statement: what /synthese/log serves.
CREATE FUNCTION gn_synthese.fct_tri_log_delete_on_synthese() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM gn_fixture.count_call(TG_NAME);
    INSERT INTO gn_synthese.t_log_synthese (id_synthese, unique_id_sinp, last_action, meta_last_action_date)
    SELECT o.id_synthese, o.unique_id_sinp, 'D', now() FROM old_rows o
    ON CONFLICT (id_synthese) DO UPDATE
       SET last_action = 'D', meta_last_action_date = now(), unique_id_sinp = EXCLUDED.unique_id_sinp;
    RETURN NULL;
END
$$;
CREATE TRIGGER tri_log_delete_synthese AFTER DELETE ON gn_synthese.synthese
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION gn_synthese.fct_tri_log_delete_on_synthese();
