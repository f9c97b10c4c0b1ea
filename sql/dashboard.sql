-- gn2pg: what the web dashboard (dashboard/, issue 13) needs from the database: row counts kept
-- up to date instead of counted on every read, acknowledging alerts, GeoNature accounts allowed
-- to sign in, and the grants of gn2pg_check_source.
--
-- Wording: a *count delta* is one row of gn2pg.observation_count: rows added (or, negative,
-- removed) for one (source, CA, JDD) as received. The count of a group is the sum of its deltas;
-- the deltas of a source are folded into one row per group when one of its runs ends.
--
-- Runs in CREATE EXTENSION after operations.sql, and verbatim in the 0.2.0 -> 0.3.0 upgrade, but
-- for the COMMENTs added since, which the upgrade carries in its section "COMMENT on every object".

------------------------------------------------------------------------------------------------
-- Row counts per source, CA and JDD, maintained by statement triggers on gn2pg.observation.
-- Deltas are appended, never updated in place: two transactions loading the same source (the
-- workers of a parallel run) never wait for each other on a counter row, and cannot deadlock.
------------------------------------------------------------------------------------------------
CREATE TABLE gn2pg.observation_count (
    source          text NOT NULL,
    source_ca_uuid  uuid,
    source_jdd_uuid uuid,
    rows            bigint NOT NULL
);
CREATE INDEX observation_count_source_idx ON gn2pg.observation_count (source);
-- Dumped: restoring gn2pg.observation fires no insert trigger that would rebuild it.
SELECT pg_catalog.pg_extension_config_dump('gn2pg.observation_count', '');
COMMENT ON TABLE gn2pg.observation_count IS
    'Rows of gn2pg.observation per (source, source_ca_uuid, source_jdd_uuid): the sum of rows over each group. Kept by the loader (inserts) and by triggers (updates, deletes); dumped.';
COMMENT ON COLUMN gn2pg.observation_count.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.observation_count.source_ca_uuid IS
    'CA as the source sent it (gn2pg.observation.source_ca_uuid).';
COMMENT ON COLUMN gn2pg.observation_count.source_jdd_uuid IS
    'JDD as the source sent it (gn2pg.observation.source_jdd_uuid).';
COMMENT ON COLUMN gn2pg.observation_count.rows IS
    'Rows added to the group (negative: removed); the group''s count is the sum over its rows, folded into one when a run ends.';

-- Inserted rows are counted by the loader's INSERT itself (sql/load/insert_rows.sql, the only
-- statement that inserts into gn2pg.observation): a transition table of inserted rows would copy
-- every whole row of every page. The triggers below count what any statement updates or deletes.

CREATE FUNCTION gn2pg._count_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO gn2pg.observation_count (source, source_ca_uuid, source_jdd_uuid, rows)
    SELECT o.source, o.source_ca_uuid, o.source_jdd_uuid, -count(*) FROM old_rows o GROUP BY 1, 2, 3;
    RETURN NULL;
END
$$;

-- Most updates keep a row's source, CA and JDD: they net to zero and write nothing.
CREATE FUNCTION gn2pg._count_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO gn2pg.observation_count (source, source_ca_uuid, source_jdd_uuid, rows)
    SELECT d.source, d.ca, d.jdd, sum(d.n)
      FROM (SELECT o.source, o.source_ca_uuid AS ca, o.source_jdd_uuid AS jdd, -1 AS n FROM old_rows o
            UNION ALL
            SELECT n.source, n.source_ca_uuid, n.source_jdd_uuid, 1 FROM new_rows n) d
     GROUP BY 1, 2, 3
    HAVING sum(d.n) <> 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION gn2pg._count_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM gn2pg.observation_count;
    RETURN NULL;
END
$$;

CREATE TRIGGER observation_count_update AFTER UPDATE ON gn2pg.observation
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION gn2pg._count_updated();
CREATE TRIGGER observation_count_delete AFTER DELETE ON gn2pg.observation
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION gn2pg._count_deleted();
CREATE TRIGGER observation_count_truncate AFTER TRUNCATE ON gn2pg.observation
    FOR EACH STATEMENT EXECUTE FUNCTION gn2pg._count_truncated();
COMMENT ON FUNCTION gn2pg._count_deleted() IS
    'Trigger: subtracts the rows a statement deleted from gn2pg.observation from gn2pg.observation_count.';
COMMENT ON FUNCTION gn2pg._count_updated() IS
    'Trigger: moves the counts of rows whose source, CA or JDD an UPDATE of gn2pg.observation changed.';
COMMENT ON FUNCTION gn2pg._count_truncated() IS
    'Trigger: empties gn2pg.observation_count when gn2pg.observation is truncated.';

-- Folds the deltas of a source into one row per group. Safe beside writers and other folds in
-- READ COMMITTED: a delta committed after this statement's snapshot is neither deleted nor
-- summed, and a delta another fold already deleted is skipped by both.
CREATE FUNCTION gn2pg._fold_counts(p_source text) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH gone AS (DELETE FROM gn2pg.observation_count c WHERE c.source = p_source RETURNING c.*)
    INSERT INTO gn2pg.observation_count (source, source_ca_uuid, source_jdd_uuid, rows)
    SELECT g.source, g.source_ca_uuid, g.source_jdd_uuid, sum(g.rows)
      FROM gone g GROUP BY 1, 2, 3 HAVING sum(g.rows) <> 0;
END;
COMMENT ON FUNCTION gn2pg._fold_counts(text) IS
    'Folds the count deltas of a source into one row per (CA, JDD); run when a run of the source ends.';

CREATE FUNCTION gn2pg._fold_counts_after_run() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM gn2pg._fold_counts(NEW.source);
    RETURN NULL;
END
$$;
CREATE TRIGGER run_ended_fold_counts AFTER UPDATE OF status ON gn2pg.run_log
    FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION gn2pg._fold_counts_after_run();
COMMENT ON FUNCTION gn2pg._fold_counts_after_run() IS
    'Trigger: folds the count deltas of a source when one of its runs ends.';

-- A source removed with its rows leaves deltas that sum to zero.
CREATE FUNCTION gn2pg._fold_counts_after_removal() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM gn2pg._fold_counts(OLD.name);
    RETURN NULL;
END
$$;
CREATE TRIGGER source_removed_fold_counts AFTER DELETE ON gn2pg.source
    FOR EACH ROW EXECUTE FUNCTION gn2pg._fold_counts_after_removal();
COMMENT ON FUNCTION gn2pg._fold_counts_after_removal() IS
    'Trigger: folds the count deltas of a removed source (with its rows dropped, they sum to zero).';

-- Rebuilds every count from gn2pg.observation (after a restore made with --disable-triggers).
-- With a source: its counts only, which a reconciling run of that source rebuilds when it finds
-- them wrong (src/reconcile_run.rs); the run holds the source, so no other writer changes its rows.
CREATE FUNCTION gn2pg._recount(p_source text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF p_source IS NULL THEN
        LOCK TABLE gn2pg.observation IN SHARE MODE;
    END IF;
    DELETE FROM gn2pg.observation_count c WHERE p_source IS NULL OR c.source = p_source;
    INSERT INTO gn2pg.observation_count (source, source_ca_uuid, source_jdd_uuid, rows)
    SELECT o.source, o.source_ca_uuid, o.source_jdd_uuid, count(*) FROM gn2pg.observation o
     WHERE p_source IS NULL OR o.source = p_source GROUP BY 1, 2, 3;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION gn2pg._recount(text) IS
    'Rebuilds gn2pg.observation_count from gn2pg.observation (of one source, or all); returns the number of groups. Superusers only.';

-- Rows already harvested (upgrade from 0.2.0; nothing at install).
SELECT gn2pg._recount();

REVOKE ALL ON FUNCTION gn2pg._count_deleted() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._count_updated() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._count_truncated() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._fold_counts(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._fold_counts_after_run() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._fold_counts_after_removal() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._recount(text) FROM PUBLIC;
GRANT SELECT ON gn2pg.observation_count TO gn2pg_reader;

-- The two views that counted gn2pg.observation on every read now sum the counts. Their
-- definitions are otherwise those of metadata.sql and operations.sql.
CREATE OR REPLACE VIEW gn2pg.metadata_mapping AS
WITH pairs AS (
    SELECT c.source, c.source_ca_uuid AS ca, c.source_jdd_uuid AS jdd, sum(c.rows)::bigint AS n
      FROM gn2pg.observation_count c GROUP BY 1, 2, 3 HAVING sum(c.rows) <> 0
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
    'Every CA and JDD received per source (metadata or rows), its row count and where its rows land; mapped = false: they keep the source value. Counts come from gn2pg.observation_count.';

------------------------------------------------------------------------------------------------
-- Errors with a reason (issue 10): a run that fails or is cancelled records the SQLSTATE its
-- caller gets and one word for the kind of failure (README, "Errors"), so that alerts, views and
-- scripts never read message text. Added here, after destination.sql's columns, so that a fresh
-- install and the 0.2.0 -> 0.3.0 upgrade (its own section, last) give the same column order.
------------------------------------------------------------------------------------------------
ALTER TABLE gn2pg.run_log ADD COLUMN sqlstate text, ADD COLUMN reason text;
COMMENT ON COLUMN gn2pg.run_log.sqlstate IS
    'SQLSTATE of the run''s error, as gn2pg_harvest raises it (failed and cancelled runs; XX000 for abandoned ones; NULL otherwise).';
COMMENT ON COLUMN gn2pg.run_log.reason IS
    'Kind of failure of a failed, cancelled or abandoned run: auth, http, timeout, protocol, limit, config, cancelled, database, internal (an abandoned run; busy: a refused start recorded by 0.2.0). NULL otherwise.';
ALTER TABLE gn2pg.run_part ADD COLUMN sqlstate text, ADD COLUMN reason text;
COMMENT ON COLUMN gn2pg.run_part.sqlstate IS 'SQLSTATE of the part''s error (see run_log.sqlstate).';
COMMENT ON COLUMN gn2pg.run_part.reason IS 'Kind of failure of the part (see run_log.reason).';

-- The dashboard view, with the reason of the last run and the rows a run rejected until a
-- successful run rejects none (what the 'rejected' alert says), after the columns it had.
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
       (SELECT coalesce(sum(c.rows), 0)::bigint FROM gn2pg.observation_count c WHERE c.source = s.name) AS local_rows,
       coalesce(al.n, 0) AS open_alerts,
       al.kinds AS open_alert_kinds,
       lim.stale_after,
       CASE WHEN lr.id IS NULL THEN 'never_run'
            WHEN lr.status IN ('failed', 'abandoned') THEN 'failing'
            WHEN s.enabled AND lim.stale_after > interval '0'
                 AND coalesce(ls.finished_at, s.created_at) < now() - lim.stale_after THEN 'late'
            ELSE 'ok'
       END AS health,
       s.created_at,
       lr.reason AS last_run_reason,
       coalesce(rj.rows_failed, 0) AS last_rows_rejected,
       rj.id AS last_rejected_run_id
  FROM gn2pg.source s
  LEFT JOIN gn2pg.schedule sc ON sc.source = s.name
  CROSS JOIN LATERAL (
        SELECT CASE WHEN s.options ? 'stale_after_hours'
                    THEN make_interval(hours => (s.options ->> 'stale_after_hours')::integer)
                    ELSE make_interval(mins => gn2pg._stale_after_minutes()) END AS stale_after) lim
  LEFT JOIN LATERAL (
        -- The columns of run_log in 0.2.0 and its reason, spelled out: `r.*` would be frozen at
        -- creation, and a column added later would make an updated database differ from a fresh install.
        SELECT r.id, r.source, r.source_id, r.mode, r.status, r.started_at, r.finished_at, r.pages_done,
               r.rows_received, r.rows_upserted, r.rows_unchanged, r.rows_deleted, r.rows_failed, r.http_requests,
               r.http_retries, r.bytes_received, r.source_wait_ms, r.load_ms, r.error, r.worker_pid, r.paging,
               r.since, r.max_source_action, r.checkpoint, r.resumed_from, r.reason
          FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status NOT IN ('pending', 'running') AND r.reason IS DISTINCT FROM 'busy'
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
          FROM gn2pg.alert a WHERE a.source = s.name AND a.resolved_at IS NULL) al ON true
  LEFT JOIN LATERAL (
        -- The latest run that rejected rows, unless a successful run rejecting none came after it.
        SELECT r.id, r.rows_failed FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status NOT IN ('pending', 'running') AND r.rows_failed > 0
           AND r.id > coalesce((SELECT max(c.id) FROM gn2pg.run_log c
                                 WHERE c.source = s.name AND c.status = 'success' AND c.rows_failed = 0), 0)
         ORDER BY r.id DESC LIMIT 1) rj ON true;
COMMENT ON COLUMN gn2pg.flow_status.local_rows IS 'Rows of the source in gn2pg.observation (from gn2pg.observation_count).';
COMMENT ON COLUMN gn2pg.flow_status.last_run_reason IS
    'Kind of failure of the latest finished run (gn2pg.run_log.reason): NULL when it succeeded.';
COMMENT ON COLUMN gn2pg.flow_status.last_rows_rejected IS
    'Rows the latest run that rejected any rejected (in gn2pg.run_error, not stored); 0 once a successful run rejects none.';
COMMENT ON COLUMN gn2pg.flow_status.last_rejected_run_id IS
    'That run: SELECT * FROM gn2pg.run_error WHERE run_id = last_rejected_run_id. NULL when last_rows_rejected is 0.';

------------------------------------------------------------------------------------------------
-- Acknowledging an alert: someone has seen it and is on it. It stays open until a successful
-- run (or the end of the staleness) resolves it; repeats keep the acknowledgement.
------------------------------------------------------------------------------------------------
ALTER TABLE gn2pg.alert ADD COLUMN acknowledged_at timestamptz;
ALTER TABLE gn2pg.alert ADD COLUMN acknowledged_by text;
ALTER TABLE gn2pg.alert ADD COLUMN acknowledgement text;
COMMENT ON COLUMN gn2pg.alert.acknowledged_at IS 'When someone acknowledged it (gn2pg_acknowledge_alert); NULL: not yet.';
COMMENT ON COLUMN gn2pg.alert.acknowledged_by IS 'Who acknowledged it: the role that called gn2pg_acknowledge_alert, or the dashboard''s GeoNature account.';
COMMENT ON COLUMN gn2pg.alert.acknowledgement IS 'The note left with the acknowledgement.';

------------------------------------------------------------------------------------------------
-- GeoNature accounts (UsersHub, utilisateurs.t_roles) that may sign in to the dashboard, each
-- with the one gn2pg role it acts as. No row, no access.
------------------------------------------------------------------------------------------------
CREATE TABLE gn2pg.geonature_account (
    id_role    integer PRIMARY KEY,         -- utilisateurs.t_roles.id_role
    login      text NOT NULL,               -- its identifiant when mapped
    role       text NOT NULL CHECK (role IN ('gn2pg_reader', 'gn2pg_operator', 'gn2pg_admin')),
    mapped_by  text NOT NULL,
    mapped_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE gn2pg.geonature_account IS
    'GeoNature accounts allowed to sign in to the gn2pg dashboard, and the gn2pg role each acts as. Manage with gn2pg_map_geonature_account().';
COMMENT ON COLUMN gn2pg.geonature_account.id_role IS 'The account: utilisateurs.t_roles.id_role.';
COMMENT ON COLUMN gn2pg.geonature_account.login IS
    'Its identifiant when it was mapped (a sign-in checks the current one).';
COMMENT ON COLUMN gn2pg.geonature_account.role IS
    'The gn2pg role it acts as in the dashboard: gn2pg_reader, gn2pg_operator or gn2pg_admin.';
COMMENT ON COLUMN gn2pg.geonature_account.mapped_by IS 'The role that last mapped it (gn2pg_map_geonature_account()).';
COMMENT ON COLUMN gn2pg.geonature_account.mapped_at IS 'When it was last mapped.';
SELECT pg_catalog.pg_extension_config_dump('gn2pg.geonature_account', '');
GRANT SELECT ON gn2pg.geonature_account TO gn2pg_admin;

-- What the dashboard's login role needs to check a GeoNature sign-in: the account's bcrypt hash
-- (UsersHub's pass_plus), whether it is active, and the gn2pg role it is mapped to. Nothing
-- when the database has no UsersHub schema, the login is unknown, ambiguous or a group, or the
-- account is not mapped. Granted by the administrator to the dashboard's login role only.
CREATE FUNCTION gn2pg._geonature_sign_in(p_login text)
RETURNS TABLE (id_role integer, login text, password_hash text, active boolean, role text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regclass('utilisateurs.t_roles') IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT r.id_role, r.identifiant::text, r.pass_plus::text, coalesce(r.active, true), a.role
          FROM utilisateurs.t_roles r
          JOIN gn2pg.geonature_account a ON a.id_role = r.id_role
         WHERE r.identifiant = p_login AND NOT coalesce(r.groupe, false)
           AND (SELECT count(*) FROM utilisateurs.t_roles d
                 WHERE d.identifiant = p_login AND NOT coalesce(d.groupe, false)) = 1;
END
$$;
COMMENT ON FUNCTION gn2pg._geonature_sign_in(text) IS
    'For the dashboard''s login role: the bcrypt hash, active flag and gn2pg role of a mapped GeoNature account.';
REVOKE ALL ON FUNCTION gn2pg._geonature_sign_in(text) FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- Privileges of the functions above that users call (src/check.rs, src/dashboard.rs). Each
-- checks the caller's role again; gn2pg_check_source needs gn2pg_admin unless it checks a
-- registered source exactly as saved.
------------------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION public.gn2pg_check_source(text, text, integer, text, text, text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_check_source(text, text, integer, text, text, text, text, jsonb) TO gn2pg_operator;
REVOKE ALL ON FUNCTION public.gn2pg_acknowledge_alert(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_acknowledge_alert(bigint, text) TO gn2pg_operator;
REVOKE ALL ON FUNCTION public.gn2pg_map_geonature_account(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_map_geonature_account(text, text) TO gn2pg_admin;
REVOKE ALL ON FUNCTION public.gn2pg_unmap_geonature_account(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_unmap_geonature_account(text) TO gn2pg_admin;
COMMENT ON FUNCTION public.gn2pg_check_source(text, text, integer, text, text, text, text, jsonb) IS
    'Sends the requests a harvest starts with to a source (registered, or described by the arguments) and reports what it answered; stores nothing.';
COMMENT ON FUNCTION public.gn2pg_acknowledge_alert(bigint, text) IS
    'Marks an open alert as acknowledged, with an optional note; false if it is resolved or unknown. Operators.';
COMMENT ON FUNCTION public.gn2pg_map_geonature_account(text, text) IS
    'Lets a GeoNature account (utilisateurs.t_roles.identifiant) sign in to the dashboard as gn2pg_reader, gn2pg_operator or gn2pg_admin; returns its id_role. Admin only.';
COMMENT ON FUNCTION public.gn2pg_unmap_geonature_account(text) IS
    'Removes the dashboard access of a GeoNature account; false if it had none. Admin only.';
