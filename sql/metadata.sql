-- gn2pg: CA/JDD metadata and acquisition-framework mapping (issue 4).
--
-- Wording: the *source metadata* are the acquisition frameworks (CA, cadres d'acquisition) and
-- datasets (JDD, jeux de données) a source sends; the page loader keeps them in gn2pg.metadata,
-- one row per (source, level, uuid), latest content. *Targets* are CA/JDD of the receiving
-- platform. A *mapping* sends the rows of a source CA or JDD (or of every CA or JDD of a source)
-- to a target. Rows keep what they received in observation.source_ca_uuid/source_jdd_uuid and
-- carry the destination in observation.ca_uuid/jdd_uuid. *Remapping* rewrites harvested rows
-- after mappings changed, without any request to the source.
--
-- Precedence, for a row with source CA c and source JDD j:
--   jdd_uuid = the mapping of j, else the source-wide JDD mapping, else j;
--   ca_uuid  = the CA of the target JDD (when a JDD mapping applies and its target JDD is
--              described with a parent CA), else the mapping of c, else the source-wide CA
--              mapping, else c.
-- gn2pg._resolve_mapping is the one place that says so; the page loader (src/store.rs) and
-- gn2pg_remap both call it once per statement.
--
-- Functions run with search_path = pg_catalog, pg_temp (or are fully qualified): pg_temp last,
-- else a caller's pg_temp domain named like a pg_catalog type would be found first.

-- An explicit sequence (not an identity) so that pg_dump keeps its state with the table.
CREATE SEQUENCE gn2pg.mapping_id_seq AS integer;
CREATE TABLE gn2pg.mapping (
    id          integer PRIMARY KEY DEFAULT nextval('gn2pg.mapping_id_seq'),
    source      text NOT NULL REFERENCES gn2pg.source (name) ON DELETE CASCADE ON UPDATE CASCADE,
    level       text NOT NULL CHECK (level IN ('ca', 'jdd')),
    source_uuid uuid,                       -- NULL: every CA (or JDD) of the source
    target_uuid uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE gn2pg.mapping_id_seq OWNED BY gn2pg.mapping.id;
CREATE UNIQUE INDEX mapping_key ON gn2pg.mapping (source, level, source_uuid) NULLS NOT DISTINCT;
COMMENT ON TABLE gn2pg.mapping IS
    'Where the rows of a source CA or JDD land. Manage with gn2pg_map_ca() / gn2pg_map_jdd() and their unmap counterparts.';
COMMENT ON COLUMN gn2pg.mapping.source_uuid IS 'CA or JDD uuid as sent by the source; NULL means every CA (or JDD) of the source.';
COMMENT ON COLUMN gn2pg.mapping.target_uuid IS 'CA or JDD uuid of the receiving platform.';
COMMENT ON COLUMN gn2pg.mapping.id IS 'Mapping id, returned by gn2pg_map_ca() / gn2pg_map_jdd().';
COMMENT ON COLUMN gn2pg.mapping.source IS 'The source whose rows are mapped.';
COMMENT ON COLUMN gn2pg.mapping.level IS 'ca: maps an acquisition framework; jdd: maps a dataset.';
COMMENT ON COLUMN gn2pg.mapping.created_at IS 'When the mapping was created.';
COMMENT ON COLUMN gn2pg.mapping.updated_at IS 'When its target last changed.';

CREATE TABLE gn2pg.target_metadata (
    level       text NOT NULL CHECK (level IN ('ca', 'jdd')),
    uuid        uuid NOT NULL,
    name        text,
    description text,
    parent_ca   uuid,                       -- for a JDD: its CA on the receiving platform
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (level, uuid),
    CHECK (level = 'jdd' OR parent_ca IS NULL)
);
COMMENT ON TABLE gn2pg.target_metadata IS
    'CA and JDD of the receiving platform, described locally (so a platform without GeoNature has them too). Fill with gn2pg_describe_target() or the target_* arguments of the map functions.';
COMMENT ON COLUMN gn2pg.target_metadata.parent_ca IS
    'CA of a target JDD: rows mapped to this JDD get it as ca_uuid (a JDD mapping wins over CA mappings).';
COMMENT ON COLUMN gn2pg.target_metadata.level IS 'ca (acquisition framework) or jdd (dataset).';
COMMENT ON COLUMN gn2pg.target_metadata.uuid IS 'Its uuid on this platform (the target_uuid of mappings).';
COMMENT ON COLUMN gn2pg.target_metadata.name IS
    'Its name (target_name); the GeoNature destination names the CA or JDD it creates with it. NULL: not given.';
COMMENT ON COLUMN gn2pg.target_metadata.description IS 'Its description (target_description); NULL: not given.';
COMMENT ON COLUMN gn2pg.target_metadata.created_at IS 'When it was first described.';
COMMENT ON COLUMN gn2pg.target_metadata.updated_at IS 'When its description last changed.';

CREATE TABLE gn2pg.mapping_state (
    source          text PRIMARY KEY REFERENCES gn2pg.source (name) ON DELETE CASCADE ON UPDATE CASCADE,
    version         bigint NOT NULL DEFAULT 0,   -- bumped by every change that can move rows
    applied_version bigint NOT NULL DEFAULT 0,   -- the version harvested rows reflect
    applied_at      timestamptz
);
COMMENT ON TABLE gn2pg.mapping_state IS
    'Per source: whether harvested rows reflect the current mappings (version = applied_version). A pending remap is done by gn2pg_remap() or at the start of the next run.';
COMMENT ON COLUMN gn2pg.mapping_state.source IS 'The source.';
COMMENT ON COLUMN gn2pg.mapping_state.version IS
    'Counts the changes of mappings and target descriptions that can move the source''s rows.';
COMMENT ON COLUMN gn2pg.mapping_state.applied_version IS
    'The version its harvested rows reflect: lower than version while a remap is pending.';
COMMENT ON COLUMN gn2pg.mapping_state.applied_at IS
    'When its rows were last remapped (gn2pg_remap() or the start of a run); NULL: never.';

SELECT pg_catalog.pg_extension_config_dump('gn2pg.mapping', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.mapping_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.target_metadata', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.mapping_state', '');

COMMENT ON COLUMN gn2pg.metadata.name IS 'ca_nom / jdd_nom, or the name inside ca_data / jdd_data.';
COMMENT ON COLUMN gn2pg.metadata.item IS
    'The nested ca_data / jdd_data object (kept here only, stripped from observation.item); NULL when the source only sends flat columns.';
COMMENT ON COLUMN gn2pg.metadata.updated_at IS 'Last time the content changed (unchanged metadata is not rewritten).';
COMMENT ON COLUMN gn2pg.metadata.run_id IS 'The run that last changed the row.';
COMMENT ON COLUMN gn2pg.metadata.source IS 'Name of the source that sent it.';
COMMENT ON COLUMN gn2pg.metadata.level IS
    'ca (acquisition framework, cadre d''acquisition) or jdd (dataset, jeu de données).';
COMMENT ON COLUMN gn2pg.metadata.uuid IS 'Its uuid as the source sent it.';
COMMENT ON COLUMN gn2pg.metadata.parent_uuid IS 'For a JDD: its CA at the source; NULL for a CA or when not sent.';
COMMENT ON COLUMN gn2pg.metadata.first_seen IS 'When a run first received it.';

-- ------------------------------------------------------------------------------------------
-- Internal helpers

-- _check_source returns the id of a source, or raises naming the calling function.
CREATE FUNCTION gn2pg._check_source(p_fn text, p_source text) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id integer;
BEGIN
    IF p_source IS NULL THEN
        RAISE EXCEPTION '%: source must not be NULL', p_fn
              USING ERRCODE = 'null_value_not_allowed',
                    HINT = 'Give the name of a source registered with gn2pg_add_source().';
    END IF;
    SELECT s.id INTO v_id FROM gn2pg.source s WHERE s.name = p_source;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: source "%" does not exist', p_fn, p_source
              USING ERRCODE = 'undefined_object',
                    HINT = 'Registered sources are listed in gn2pg.source; add one with gn2pg_add_source().';
    END IF;
    RETURN v_id;
END
$$;

-- _uuid_arg parses argument p_arg of function p_fn as a uuid (NULL stays NULL), or raises
-- naming both: the uuid type's own error would not say which argument is wrong.
CREATE FUNCTION gn2pg._uuid_arg(p_fn text, p_arg text, p_value text) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_value IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN btrim(p_value)::uuid;
EXCEPTION WHEN invalid_text_representation THEN
    RAISE EXCEPTION '%: % "%" is not a valid UUID', p_fn, p_arg, left(p_value, 80)
          USING ERRCODE = 'invalid_parameter_value',
                HINT = format('Give %s as a UUID, e.g. ''4b9c0f4e-1d2a-4c3b-9e8f-0a1b2c3d4e5f''.', p_arg);
END
$$;

-- _level_arg checks a level argument ('ca' or 'jdd').
CREATE FUNCTION gn2pg._level_arg(p_fn text, p_value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_value IS NULL OR p_value NOT IN ('ca', 'jdd') THEN
        RAISE EXCEPTION '%: level must be ''ca'' or ''jdd'', not %', p_fn, coalesce(quote_literal(p_value), 'NULL')
              USING ERRCODE = 'invalid_parameter_value',
                    HINT = '''ca'' is an acquisition framework, ''jdd'' a dataset.';
    END IF;
    RETURN p_value;
END
$$;

-- _mapping_changed records that the rows of a source may have to move (see mapping_state).
CREATE FUNCTION gn2pg._mapping_changed(p_source text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO gn2pg.mapping_state AS st (source, version) VALUES (p_source, 1)
    ON CONFLICT (source) DO UPDATE SET version = st.version OPERATOR(pg_catalog.+) 1;
$$;

-- _resolve_mapping gives the destination of each (source CA, source JDD) pair: the arrays are
-- zipped, one output row per pair, in no particular order. ca_rule / jdd_rule say which
-- mapping applied ('mapping', 'source-wide', 'target jdd' for a CA taken from the target
-- JDD's description), NULL when the source value is kept. No SET clause, so that it can be
-- inlined: everything is qualified.
CREATE FUNCTION gn2pg._resolve_mapping(p_source text, p_ca uuid[], p_jdd uuid[])
RETURNS TABLE (source_ca uuid, source_jdd uuid, ca_uuid uuid, jdd_uuid uuid, ca_rule text, jdd_rule text)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT k.ca, k.jdd,
           coalesce(tj.parent_ca, cm.target_uuid, k.ca),
           coalesce(jm.target_uuid, k.jdd),
           CASE WHEN tj.parent_ca IS NOT NULL THEN 'target jdd'
                WHEN cm.target_uuid IS NOT NULL THEN cm.rule END,
           jm.rule
      FROM ROWS FROM (pg_catalog.unnest(p_ca), pg_catalog.unnest(p_jdd)) AS k (ca, jdd)
      LEFT JOIN LATERAL (
            SELECT m.target_uuid, CASE WHEN m.source_uuid IS NULL THEN 'source-wide' ELSE 'mapping' END AS rule
              FROM gn2pg.mapping m
             WHERE m.source OPERATOR(pg_catalog.=) p_source AND m.level OPERATOR(pg_catalog.=) 'jdd'
               AND (m.source_uuid OPERATOR(pg_catalog.=) k.jdd OR m.source_uuid IS NULL)
             ORDER BY m.source_uuid IS NULL
             LIMIT 1) jm ON true
      LEFT JOIN gn2pg.target_metadata tj
             ON tj.level OPERATOR(pg_catalog.=) 'jdd' AND tj.uuid OPERATOR(pg_catalog.=) jm.target_uuid
      LEFT JOIN LATERAL (
            SELECT m.target_uuid, CASE WHEN m.source_uuid IS NULL THEN 'source-wide' ELSE 'mapping' END AS rule
              FROM gn2pg.mapping m
             WHERE m.source OPERATOR(pg_catalog.=) p_source AND m.level OPERATOR(pg_catalog.=) 'ca'
               AND (m.source_uuid OPERATOR(pg_catalog.=) k.ca OR m.source_uuid IS NULL)
             ORDER BY m.source_uuid IS NULL
             LIMIT 1) cm ON true
$$;

-- _remap rewrites the rows of a source whose destination differs from what the mappings say
-- now, in one statement, and records the mapping version it applied. Returns the rows changed.
CREATE FUNCTION gn2pg._remap(p_source text) RETURNS bigint
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

-- _remap_if_pending is called by the harvest worker at the start of each run (its run is the
-- source's only active one): mappings changed since the last remap are applied to every harvested row,
-- not only to the rows the run will receive. Returns the rows changed.
CREATE FUNCTION gn2pg._remap_if_pending(p_source text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM gn2pg.mapping_state s
                WHERE s.source = p_source AND s.version > s.applied_version) THEN
        RETURN gn2pg._remap(p_source);
    END IF;
    RETURN 0;
END
$$;

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

-- _describe records what is known locally of a target CA or JDD; NULL arguments keep the
-- current values. A new parent CA of a target JDD moves rows: their sources need a remap.
CREATE FUNCTION gn2pg._describe(p_level text, p_uuid uuid, p_name text, p_description text, p_parent uuid)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old_parent uuid;
    v_existed boolean;
BEGIN
    SELECT t.parent_ca, true INTO v_old_parent, v_existed
      FROM gn2pg.target_metadata t WHERE t.level = p_level AND t.uuid = p_uuid FOR UPDATE;
    IF coalesce(v_existed, false) THEN
        UPDATE gn2pg.target_metadata t
           SET name = coalesce(p_name, t.name), description = coalesce(p_description, t.description),
               parent_ca = coalesce(p_parent, t.parent_ca), updated_at = now()
         WHERE t.level = p_level AND t.uuid = p_uuid
           AND (t.name IS DISTINCT FROM coalesce(p_name, t.name)
                OR t.description IS DISTINCT FROM coalesce(p_description, t.description)
                OR t.parent_ca IS DISTINCT FROM coalesce(p_parent, t.parent_ca));
    ELSIF p_name IS NOT NULL OR p_description IS NOT NULL OR p_parent IS NOT NULL THEN
        INSERT INTO gn2pg.target_metadata (level, uuid, name, description, parent_ca)
        VALUES (p_level, p_uuid, p_name, p_description, p_parent)
        ON CONFLICT (level, uuid) DO UPDATE
           SET name = coalesce(EXCLUDED.name, gn2pg.target_metadata.name),
               description = coalesce(EXCLUDED.description, gn2pg.target_metadata.description),
               parent_ca = coalesce(EXCLUDED.parent_ca, gn2pg.target_metadata.parent_ca),
               updated_at = now();
    END IF;
    IF p_parent IS NOT NULL AND p_parent IS DISTINCT FROM v_old_parent THEN
        PERFORM gn2pg._mapping_changed(m.source)
           FROM (SELECT DISTINCT m.source FROM gn2pg.mapping m
                  WHERE m.level = 'jdd' AND m.target_uuid = p_uuid) m;
    END IF;
END
$$;

-- _map creates or changes one mapping; returns its id.
CREATE FUNCTION gn2pg._map(p_source text, p_level text, p_source_uuid uuid, p_target uuid) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id integer;
BEGIN
    INSERT INTO gn2pg.mapping AS m (source, level, source_uuid, target_uuid)
    VALUES (p_source, p_level, p_source_uuid, p_target)
    ON CONFLICT (source, level, source_uuid) DO UPDATE
       SET target_uuid = EXCLUDED.target_uuid, updated_at = now()
     WHERE m.target_uuid IS DISTINCT FROM EXCLUDED.target_uuid
    RETURNING m.id INTO v_id;
    IF v_id IS NULL THEN
        -- Already mapped there: nothing moves.
        SELECT m.id INTO v_id FROM gn2pg.mapping m
         WHERE m.source = p_source AND m.level = p_level AND m.source_uuid IS NOT DISTINCT FROM p_source_uuid;
    ELSE
        PERFORM gn2pg._mapping_changed(p_source);
    END IF;
    RETURN v_id;
END
$$;

-- _unmap removes one mapping; false (with a NOTICE) if there was none.
CREATE FUNCTION gn2pg._unmap(p_fn text, p_source text, p_level text, p_source_uuid uuid) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM gn2pg.mapping m
     WHERE m.source = p_source AND m.level = p_level AND m.source_uuid IS NOT DISTINCT FROM p_source_uuid;
    IF NOT FOUND THEN
        IF p_source_uuid IS NULL THEN
            RAISE NOTICE '%: source "%" has no source-wide % mapping, nothing removed', p_fn, p_source, p_level;
        ELSE
            RAISE NOTICE '%: source "%" has no mapping for % %, nothing removed', p_fn, p_source, p_level, p_source_uuid;
        END IF;
        RETURN false;
    END IF;
    PERFORM gn2pg._mapping_changed(p_source);
    RETURN true;
END
$$;

COMMENT ON FUNCTION gn2pg._resolve_mapping(text, uuid[], uuid[]) IS
    'Internal: destination CA/JDD of (source CA, source JDD) pairs; the precedence rule of gn2pg mappings.';
COMMENT ON FUNCTION gn2pg._remap(text) IS 'Internal: the work of gn2pg_remap(), without the lock check.';
COMMENT ON FUNCTION gn2pg._remap_idle(text) IS 'Internal: gn2pg_remap() once the source is known to be idle.';
COMMENT ON FUNCTION gn2pg._remap_if_pending(text) IS 'Internal: called by the harvest worker before loading pages.';
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

-- ------------------------------------------------------------------------------------------
-- User-facing functions (public, so they are callable without qualification)

-- Refuses the call unless the caller has the privileges of p_role. Mapping functions call it
-- first: EXECUTE granted by mistake is not enough (roles and grants: sql/operations.sql).
CREATE FUNCTION gn2pg._require(p_role text, p_fn text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT pg_has_role(current_user, p_role, 'USAGE') THEN
        RAISE EXCEPTION 'gn2pg: permission denied for %()', p_fn
              USING ERRCODE = 'insufficient_privilege',
                    HINT = format('%s needs the privileges of role %s: GRANT %s TO <login role>;', p_fn, p_role, p_role);
    END IF;
END
$$;
COMMENT ON FUNCTION gn2pg._require(text, text) IS 'Internal: role check of the mapping functions.';


CREATE FUNCTION public.gn2pg_describe_target(level text, target_uuid text, name text DEFAULT NULL,
                                             description text DEFAULT NULL, parent_ca text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_level  text := gn2pg._level_arg('gn2pg_describe_target', $1);
    v_uuid   uuid := gn2pg._uuid_arg('gn2pg_describe_target', 'target_uuid', $2);
    v_parent uuid := gn2pg._uuid_arg('gn2pg_describe_target', 'parent_ca', $5);
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_describe_target');
    IF v_uuid IS NULL THEN
        RAISE EXCEPTION 'gn2pg_describe_target: target_uuid must not be NULL'
              USING ERRCODE = 'null_value_not_allowed', HINT = 'Give the uuid of the CA or JDD on this platform.';
    END IF;
    IF v_level = 'ca' AND v_parent IS NOT NULL THEN
        RAISE EXCEPTION 'gn2pg_describe_target: parent_ca is for a JDD, not a CA'
              USING ERRCODE = 'invalid_parameter_value', HINT = 'Call it with level => ''jdd'', or without parent_ca.';
    END IF;
    PERFORM gn2pg._describe(v_level, v_uuid, $3, $4, v_parent);
END
$$;
COMMENT ON FUNCTION public.gn2pg_describe_target(text, text, text, text, text) IS
    'Describes a CA or JDD of this platform (name, description, and for a JDD its CA) in gn2pg.target_metadata; NULL arguments keep the current values.';

CREATE FUNCTION public.gn2pg_map_ca(source text, source_ca text, target_ca text,
                                    target_name text DEFAULT NULL, target_description text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_source text := $1;
    v_src    uuid;
    v_tgt    uuid;
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_map_ca');
    PERFORM gn2pg._check_source('gn2pg_map_ca', v_source);
    v_src := gn2pg._uuid_arg('gn2pg_map_ca', 'source_ca', $2);
    IF $3 IS NULL THEN
        RAISE EXCEPTION 'gn2pg_map_ca: target_ca must not be NULL'
              USING ERRCODE = 'null_value_not_allowed',
                    HINT = 'To remove a mapping, call gn2pg_unmap_ca(source, source_ca).';
    END IF;
    v_tgt := gn2pg._uuid_arg('gn2pg_map_ca', 'target_ca', $3);
    PERFORM gn2pg._describe('ca', v_tgt, $4, $5, NULL);
    RETURN gn2pg._map(v_source, 'ca', v_src, v_tgt);
END
$$;
COMMENT ON FUNCTION public.gn2pg_map_ca(text, text, text, text, text) IS
    'Lands the rows of source CA source_ca (NULL: every CA of the source) under target_ca; returns the mapping id. Harvested rows move at gn2pg_remap() or the next run.';

CREATE FUNCTION public.gn2pg_map_jdd(source text, source_jdd text, target_jdd text, target_ca text DEFAULT NULL,
                                     target_name text DEFAULT NULL, target_description text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_source text := $1;
    v_src    uuid;
    v_tgt    uuid;
    v_ca     uuid;
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_map_jdd');
    PERFORM gn2pg._check_source('gn2pg_map_jdd', v_source);
    v_src := gn2pg._uuid_arg('gn2pg_map_jdd', 'source_jdd', $2);
    IF $3 IS NULL THEN
        RAISE EXCEPTION 'gn2pg_map_jdd: target_jdd must not be NULL'
              USING ERRCODE = 'null_value_not_allowed',
                    HINT = 'To remove a mapping, call gn2pg_unmap_jdd(source, source_jdd).';
    END IF;
    v_tgt := gn2pg._uuid_arg('gn2pg_map_jdd', 'target_jdd', $3);
    v_ca := gn2pg._uuid_arg('gn2pg_map_jdd', 'target_ca', $4);
    PERFORM gn2pg._describe('jdd', v_tgt, $5, $6, v_ca);
    RETURN gn2pg._map(v_source, 'jdd', v_src, v_tgt);
END
$$;
COMMENT ON FUNCTION public.gn2pg_map_jdd(text, text, text, text, text, text) IS
    'Lands the rows of source JDD source_jdd (NULL: every JDD of the source) in target_jdd, under target_ca when given (else under the mapped or source CA); returns the mapping id. Harvested rows move at gn2pg_remap() or the next run.';

CREATE FUNCTION public.gn2pg_unmap_ca(source text, source_ca text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_unmap_ca');
    PERFORM gn2pg._check_source('gn2pg_unmap_ca', $1);
    RETURN gn2pg._unmap('gn2pg_unmap_ca', $1, 'ca', gn2pg._uuid_arg('gn2pg_unmap_ca', 'source_ca', $2));
END
$$;
COMMENT ON FUNCTION public.gn2pg_unmap_ca(text, text) IS
    'Removes the mapping of source CA source_ca (NULL: the source-wide CA mapping); false if there was none. Rows get their source values back at gn2pg_remap() or the next run.';

CREATE FUNCTION public.gn2pg_unmap_jdd(source text, source_jdd text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_unmap_jdd');
    PERFORM gn2pg._check_source('gn2pg_unmap_jdd', $1);
    RETURN gn2pg._unmap('gn2pg_unmap_jdd', $1, 'jdd', gn2pg._uuid_arg('gn2pg_unmap_jdd', 'source_jdd', $2));
END
$$;
COMMENT ON FUNCTION public.gn2pg_unmap_jdd(text, text) IS
    'Removes the mapping of source JDD source_jdd (NULL: the source-wide JDD mapping); false if there was none. Rows get their source values back at gn2pg_remap() or the next run.';

CREATE FUNCTION public.gn2pg_remap(source text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_source text := $1;
    v_id     integer := gn2pg._check_source('gn2pg_remap', $1);
BEGIN
    PERFORM gn2pg._require('gn2pg_admin', 'gn2pg_remap');
    RETURN gn2pg._remap_idle(v_source);
END
$$;
COMMENT ON FUNCTION public.gn2pg_remap(text) IS
    'Applies the current mappings to every harvested row of a source, set-based and without contacting the source; returns the number of rows changed.';

-- ------------------------------------------------------------------------------------------
-- Visibility

CREATE VIEW gn2pg.metadata_mapping AS
WITH pairs AS (
    SELECT o.source, o.source_ca_uuid AS ca, o.source_jdd_uuid AS jdd, count(*) AS n
      FROM gn2pg.observation o GROUP BY 1, 2, 3
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
    'Every CA and JDD received per source (metadata or rows), its row count and where its rows land; mapped = false: they keep the source value. Counting scans gn2pg.observation.';
COMMENT ON COLUMN gn2pg.metadata_mapping.source_ca_uuid IS 'For a JDD: its CA at the source.';
COMMENT ON COLUMN gn2pg.metadata_mapping.mapped_by IS
    'The rule that applies first: ''jdd mapping'', ''jdd source-wide'', ''ca mapping'' or ''ca source-wide''; NULL when rows keep the source value.';
COMMENT ON COLUMN gn2pg.metadata_mapping.remap_pending IS
    'Mappings changed since the rows were last remapped: gn2pg_remap() or the next run applies them.';
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
