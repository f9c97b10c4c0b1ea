-- gn2pg: operating flows (issue 5): roles and grants, schedules, alerts, the flow status view.
--
-- Wording: an *alert* is an open problem of one source: kind 'failed' or 'abandoned' (its
-- latest run ended so), 'rejected' (a run rejected rows: they are in gn2pg.run_error, not
-- stored) or 'stale' (no successful run within the staleness limit). At most one
-- alert per source and kind is open; a repeat only bumps its counters. An *alert event* is one
-- notification about an alert ('raised' or 'resolved'): sent with NOTIFY gn2pg_alert when its
-- transaction commits and, when a webhook is configured, POSTed by a background worker
-- (src/alert.rs). The next successful run of a source resolves all its alerts ('rejected' only
-- if it rejected no row).
--
-- Runs in CREATE EXTENSION after schema.sql and metadata.sql; everything is schema-qualified.

------------------------------------------------------------------------------------------------
-- Roles. Roles belong to the cluster: a second database creating the extension finds them.
-- gn2pg_admin is a member of gn2pg_operator, itself a member of gn2pg_reader.
------------------------------------------------------------------------------------------------
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['gn2pg_reader', 'gn2pg_operator', 'gn2pg_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    IF NOT pg_catalog.pg_has_role('gn2pg_operator', 'gn2pg_reader', 'MEMBER') THEN
        GRANT gn2pg_reader TO gn2pg_operator;
    END IF;
    IF NOT pg_catalog.pg_has_role('gn2pg_admin', 'gn2pg_operator', 'MEMBER') THEN
        GRANT gn2pg_operator TO gn2pg_admin;
    END IF;
END
$$;
COMMENT ON ROLE gn2pg_reader IS 'gn2pg: reads sources (without secrets), runs, alerts, flow status and harvested data.';
COMMENT ON ROLE gn2pg_operator IS 'gn2pg: gn2pg_reader, plus running and cancelling harvests and checking flows.';
COMMENT ON ROLE gn2pg_admin IS 'gn2pg: gn2pg_operator, plus managing sources and schedules and reading secrets.';

------------------------------------------------------------------------------------------------
-- Per-source alert webhook: with the credentials, since such URLs usually embed a secret.
------------------------------------------------------------------------------------------------
ALTER TABLE gn2pg.source_secret ADD COLUMN alert_webhook text;
COMMENT ON COLUMN gn2pg.source_secret.alert_webhook IS
    'URL that receives this source''s alert events (JSON POST); NULL: gn2pg.alert_webhook.';

------------------------------------------------------------------------------------------------
-- Sources registered by a role that is not a superuser stay within gn2pg.allowed_hosts: their
-- URL and webhook are checked again before every run and every delivery (the list may narrow).
------------------------------------------------------------------------------------------------
ALTER TABLE gn2pg.source ADD COLUMN restricted boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN gn2pg.source.restricted IS
    'Registered or last changed by a role that is not a superuser: its URL and alert webhook must be allowed by gn2pg.allowed_hosts at every run.';

------------------------------------------------------------------------------------------------
-- Schedules: gn2pg's record of the pg_cron job of each scheduled source.
------------------------------------------------------------------------------------------------
CREATE TABLE gn2pg.schedule (
    source        text PRIMARY KEY REFERENCES gn2pg.source (name) ON DELETE CASCADE ON UPDATE CASCADE,
    schedule      text NOT NULL,            -- cron format, UTC (pg_cron 1.4)
    mode          text NOT NULL DEFAULT 'auto' CHECK (mode IN ('auto', 'full', 'incremental')),
    job_name      text NOT NULL,            -- gn2pg:<source>
    cron_jobid    bigint,                   -- cron.job.jobid in cron_database
    cron_database text NOT NULL,            -- where the job is defined (cron.database_name)
    run_as        text NOT NULL,            -- role the job runs as: who scheduled it
    scheduled_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE gn2pg.schedule IS
    'pg_cron jobs of sources, as created by gn2pg_schedule(); the jobs themselves are in cron.job of the cron database.';
COMMENT ON COLUMN gn2pg.schedule.schedule IS 'Cron expression in UTC (pg_cron 1.4 has no time zone).';
COMMENT ON COLUMN gn2pg.schedule.run_as IS 'Login role the job runs as (the one that called gn2pg_schedule).';
COMMENT ON COLUMN gn2pg.schedule.source IS 'The scheduled source.';
COMMENT ON COLUMN gn2pg.schedule.mode IS 'Harvest mode of the scheduled runs: auto, full or incremental.';
COMMENT ON COLUMN gn2pg.schedule.job_name IS 'Name of the pg_cron job: gn2pg:<source>.';
COMMENT ON COLUMN gn2pg.schedule.cron_jobid IS
    'cron.job.jobid of the job in cron_database when it was created (a restored database schedules its sources again).';
COMMENT ON COLUMN gn2pg.schedule.cron_database IS 'The database that holds the pg_cron jobs (cron.database_name).';
COMMENT ON COLUMN gn2pg.schedule.scheduled_at IS 'When gn2pg_schedule() last created or replaced the job.';

------------------------------------------------------------------------------------------------
-- Alerts and their events.
------------------------------------------------------------------------------------------------
-- Explicit sequences (not identities), marked for pg_dump: see gn2pg.source in sql/schema.sql.
CREATE SEQUENCE gn2pg.alert_id_seq;
CREATE TABLE gn2pg.alert (
    id              bigint PRIMARY KEY DEFAULT nextval('gn2pg.alert_id_seq'),
    source          text NOT NULL,
    kind            text NOT NULL CONSTRAINT alert_kind_check CHECK (kind IN ('failed', 'abandoned', 'stale', 'rejected')),
    message         text NOT NULL,            -- never contains a secret
    run_id          bigint,                   -- latest run that raised or repeated it
    raised_at       timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    occurrences     integer NOT NULL DEFAULT 1,
    resolved_at     timestamptz,
    resolved_by_run bigint
);
ALTER SEQUENCE gn2pg.alert_id_seq OWNED BY gn2pg.alert.id;
CREATE UNIQUE INDEX alert_open_idx ON gn2pg.alert (source, kind) WHERE resolved_at IS NULL;
CREATE INDEX alert_source_idx ON gn2pg.alert (source, id DESC);
COMMENT ON TABLE gn2pg.alert IS
    'Problems of sources: failed or abandoned runs, rows a run rejected, sources without a recent success (stale). Open while resolved_at IS NULL.';
COMMENT ON COLUMN gn2pg.alert.occurrences IS 'Times it happened while open (repeats do not notify again).';
COMMENT ON COLUMN gn2pg.alert.resolved_by_run IS 'The successful run that resolved it (NULL: resolved otherwise).';
COMMENT ON COLUMN gn2pg.alert.id IS 'Alert id: in its notifications, and what gn2pg_acknowledge_alert() takes.';
COMMENT ON COLUMN gn2pg.alert.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.alert.kind IS
    'failed or abandoned: a run of the source ended so; stale: no successful run within the staleness limit.';
COMMENT ON COLUMN gn2pg.alert.message IS
    'What happened, naming the source and the run, with the run''s error; never a secret.';
COMMENT ON COLUMN gn2pg.alert.run_id IS 'The latest run that raised or repeated it; NULL for stale alerts.';
COMMENT ON COLUMN gn2pg.alert.raised_at IS 'When it was raised.';
COMMENT ON COLUMN gn2pg.alert.last_seen_at IS 'When it last happened (raised or repeated).';
COMMENT ON COLUMN gn2pg.alert.resolved_at IS
    'When it was resolved: a successful run, the source no longer late, or the source removed; NULL while open.';

CREATE SEQUENCE gn2pg.alert_event_id_seq;
CREATE TABLE gn2pg.alert_event (
    id               bigint PRIMARY KEY DEFAULT nextval('gn2pg.alert_event_id_seq'),
    alert_id         bigint NOT NULL REFERENCES gn2pg.alert (id) ON DELETE CASCADE,
    event            text NOT NULL CHECK (event IN ('raised', 'resolved')),
    payload          jsonb NOT NULL,          -- as sent by NOTIFY and to the webhook
    created_at       timestamptz NOT NULL DEFAULT now(),
    webhook_state    text CHECK (webhook_state IN ('pending', 'sending', 'sent', 'failed')),
    webhook_attempts integer NOT NULL DEFAULT 0,
    webhook_error    text,
    webhook_at       timestamptz
);
ALTER SEQUENCE gn2pg.alert_event_id_seq OWNED BY gn2pg.alert_event.id;
CREATE INDEX alert_event_alert_idx ON gn2pg.alert_event (alert_id);
CREATE INDEX alert_event_pending_idx ON gn2pg.alert_event (id) WHERE webhook_state IN ('pending', 'sending');
COMMENT ON TABLE gn2pg.alert_event IS
    'Notifications of alerts (raised, resolved): the NOTIFY gn2pg_alert payload and the webhook delivery.';
COMMENT ON COLUMN gn2pg.alert_event.webhook_state IS
    'NULL: no webhook configured; pending, sending, sent, failed (webhook_error says why, without the URL).';
COMMENT ON COLUMN gn2pg.alert_event.id IS 'Event id, in the order the events happened.';
COMMENT ON COLUMN gn2pg.alert_event.alert_id IS 'The alert (gn2pg.alert.id).';
COMMENT ON COLUMN gn2pg.alert_event.event IS 'raised or resolved.';
COMMENT ON COLUMN gn2pg.alert_event.payload IS
    'The JSON sent with NOTIFY gn2pg_alert and to the webhook: event, alert_id, database, source, kind, run_id, message, raised_at, occurrences, resolved_at, resolved_by_run.';
COMMENT ON COLUMN gn2pg.alert_event.created_at IS 'When it happened; NOTIFY is sent when that transaction commits.';
COMMENT ON COLUMN gn2pg.alert_event.webhook_attempts IS 'Webhook requests made for it, retries included.';
COMMENT ON COLUMN gn2pg.alert_event.webhook_error IS 'Why the delivery failed, without the URL; NULL otherwise.';
COMMENT ON COLUMN gn2pg.alert_event.webhook_at IS
    'When its delivery last changed state (taken by a worker, sent, failed); NULL: not tried.';

SELECT pg_catalog.pg_extension_config_dump('gn2pg.schedule', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.alert', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.alert_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.alert_event', '');
SELECT pg_catalog.pg_extension_config_dump('gn2pg.alert_event_id_seq', '');

-- Masks every stored password, token and webhook URL found in a text (defence in depth: the
-- engine already writes none).
CREATE FUNCTION gn2pg._scrub(message text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    secret text;
BEGIN
    IF message IS NULL THEN
        RETURN NULL;
    END IF;
    FOR secret IN
        SELECT s FROM gn2pg.source_secret k, LATERAL (VALUES (k.password), (k.token), (k.alert_webhook)) v(s)
         WHERE length(s) >= 4
    LOOP
        message := replace(message, secret, '***');
    END LOOP;
    RETURN message;
END
$$;
COMMENT ON FUNCTION gn2pg._scrub(text) IS 'Replaces any stored secret found in a text by ***.';

-- Errors of runs, parts and rejected items go through _scrub as they are stored: the engine
-- already masks the source's secrets (and its session cookies, which are not stored), this
-- catches any stored secret it could not know of.
CREATE FUNCTION gn2pg._scrub_error() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.error := gn2pg._scrub(NEW.error);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION gn2pg._scrub_error() IS 'Trigger: masks stored secrets in the error column of a row being written.';
CREATE TRIGGER scrub_error BEFORE INSERT OR UPDATE OF error ON gn2pg.run_log
    FOR EACH ROW WHEN (NEW.error IS NOT NULL) EXECUTE FUNCTION gn2pg._scrub_error();
CREATE TRIGGER scrub_error BEFORE INSERT OR UPDATE OF error ON gn2pg.run_part
    FOR EACH ROW WHEN (NEW.error IS NOT NULL) EXECUTE FUNCTION gn2pg._scrub_error();
CREATE TRIGGER scrub_error BEFORE INSERT OR UPDATE OF error ON gn2pg.run_error
    FOR EACH ROW WHEN (NEW.error IS NOT NULL) EXECUTE FUNCTION gn2pg._scrub_error();

-- Records one event of an alert: NOTIFY gn2pg_alert (sent at commit) and, if a webhook is
-- configured, a pending delivery.
CREATE FUNCTION gn2pg._alert_event(a gn2pg.alert, event text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    payload jsonb;
    hook boolean;
BEGIN
    -- The reason and SQLSTATE of the run that raised it (README, "Errors"): what a receiver
    -- tests, never the message.
    payload := jsonb_build_object(
        'event', event, 'alert_id', a.id, 'database', current_database(), 'source', a.source,
        'kind', a.kind, 'run_id', a.run_id, 'message', left(a.message, 2000),
        'raised_at', a.raised_at, 'occurrences', a.occurrences,
        'resolved_at', a.resolved_at, 'resolved_by_run', a.resolved_by_run,
        'reason', (SELECT r.reason FROM gn2pg.run_log r WHERE r.id = a.run_id),
        'sqlstate', (SELECT r.sqlstate FROM gn2pg.run_log r WHERE r.id = a.run_id));
    SELECT coalesce(nullif(k.alert_webhook, ''), nullif(current_setting('gn2pg.alert_webhook', true), '')) IS NOT NULL
      INTO hook
      FROM (SELECT 1) one
      LEFT JOIN gn2pg.source s ON s.name = a.source
      LEFT JOIN gn2pg.source_secret k ON k.source_id = s.id;
    INSERT INTO gn2pg.alert_event (alert_id, event, payload, webhook_state)
    VALUES (a.id, event, payload, CASE WHEN hook THEN 'pending' END);
    PERFORM pg_notify('gn2pg_alert', payload::text);
END
$$;
COMMENT ON FUNCTION gn2pg._alert_event(gn2pg.alert, text) IS
    'Sends NOTIFY gn2pg_alert for an alert event and queues its webhook delivery.';

-- Opens an alert, or bumps the open one of the same source and kind (no new notification).
CREATE FUNCTION gn2pg._raise_alert(p_source text, p_kind text, p_run_id bigint, p_message text) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a gn2pg.alert;
    msg text := gn2pg._scrub(coalesce(p_message, p_kind));
BEGIN
    LOOP
        UPDATE gn2pg.alert
           SET occurrences = occurrences + 1, last_seen_at = now(),
               run_id = coalesce(p_run_id, run_id), message = msg
         WHERE source = p_source AND kind = p_kind AND resolved_at IS NULL
        RETURNING * INTO a;
        IF FOUND THEN
            RETURN a.id;
        END IF;
        INSERT INTO gn2pg.alert (source, kind, run_id, message)
        VALUES (p_source, p_kind, p_run_id, msg)
        ON CONFLICT (source, kind) WHERE resolved_at IS NULL DO NOTHING
        RETURNING * INTO a;
        IF FOUND THEN
            PERFORM gn2pg._alert_event(a, 'raised');
            RETURN a.id;
        END IF;
        -- Another transaction opened it meanwhile: bump that one.
    END LOOP;
END
$$;
COMMENT ON FUNCTION gn2pg._raise_alert(text, text, bigint, text) IS
    'Opens an alert (and notifies) or counts a repeat of the open one.';

-- Resolves the open alerts of a source (each one notifies).
CREATE FUNCTION gn2pg._resolve_alerts(p_source text, p_run_id bigint, p_kinds text[] DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a gn2pg.alert;
    n integer := 0;
BEGIN
    FOR a IN
        UPDATE gn2pg.alert SET resolved_at = now(), resolved_by_run = p_run_id
         WHERE source = p_source AND resolved_at IS NULL AND (p_kinds IS NULL OR kind = ANY (p_kinds))
        RETURNING *
    LOOP
        PERFORM gn2pg._alert_event(a, 'resolved');
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION gn2pg._resolve_alerts(text, bigint, text[]) IS
    'Resolves the open alerts of a source (all kinds, or those given) and notifies.';

-- A run reached its final status: a success resolves the source's alerts; a failure or an
-- abandoned run raises one. A run that rejected rows (whatever its status) raises 'rejected',
-- which only a success rejecting nothing resolves.
CREATE FUNCTION gn2pg._run_ended() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gn2pg.source WHERE name = NEW.source) THEN
        RETURN NULL;
    END IF;
    IF NEW.status = 'success' THEN
        PERFORM gn2pg._resolve_alerts(NEW.source, NEW.id,
            CASE WHEN NEW.rows_failed > 0 THEN ARRAY['failed', 'abandoned', 'stale'] END);
    ELSIF NEW.status IN ('failed', 'abandoned') THEN
        PERFORM gn2pg._raise_alert(NEW.source, NEW.status, NEW.id,
            format('run %s of source %s %s: %s', NEW.id, NEW.source, NEW.status,
                   coalesce(NEW.error, 'no error recorded')));
    END IF;
    IF NEW.rows_failed > 0 THEN
        PERFORM gn2pg._raise_alert(NEW.source, 'rejected', NEW.id,
            format('run %s of source %s rejected %s of the %s rows received: SELECT * FROM gn2pg.run_error WHERE run_id = %s',
                   NEW.id, NEW.source, NEW.rows_failed, NEW.rows_received, NEW.id));
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION gn2pg._run_ended() IS 'Trigger: raises or resolves alerts when a run ends.';

-- A row inserted already ended is a run the engine refused or failed at once: it ends in the
-- transaction that inserts it (finished_at = now()). Rows that arrive with an older end are
-- history copied in by pg_restore, whose alerts are restored with them: they raise nothing.
CREATE TRIGGER run_ended_insert AFTER INSERT ON gn2pg.run_log
    FOR EACH ROW WHEN (NEW.status NOT IN ('pending', 'running') AND NEW.finished_at = now())
    EXECUTE FUNCTION gn2pg._run_ended();
CREATE TRIGGER run_ended_update AFTER UPDATE OF status ON gn2pg.run_log
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status NOT IN ('pending', 'running'))
    EXECUTE FUNCTION gn2pg._run_ended();

-- A removed source keeps its alert history, but nothing stays open for it.
CREATE FUNCTION gn2pg._source_removed() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE gn2pg.alert SET resolved_at = now() WHERE source = OLD.name AND resolved_at IS NULL;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION gn2pg._source_removed() IS 'Trigger: closes the open alerts of a removed source (without notification).';
CREATE TRIGGER source_removed AFTER DELETE ON gn2pg.source
    FOR EACH ROW EXECUTE FUNCTION gn2pg._source_removed();

------------------------------------------------------------------------------------------------
-- The dashboard. sql/dashboard.sql replaces this view (row counts from triggers, the reason of
-- the last run, rejections).
------------------------------------------------------------------------------------------------
CREATE VIEW gn2pg.flow_status AS
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
       (SELECT count(*) FROM gn2pg.observation o WHERE o.source = s.name) AS local_rows,
       coalesce(al.n, 0) AS open_alerts,
       al.kinds AS open_alert_kinds,
       lim.stale_after,
       CASE WHEN lr.id IS NULL THEN 'never_run'
            WHEN lr.status IN ('failed', 'abandoned') THEN 'failing'
            WHEN s.enabled AND lim.stale_after > interval '0'
                 AND coalesce(ls.finished_at, s.created_at) < now() - lim.stale_after THEN 'late'
            ELSE 'ok'
       END AS health,
       s.created_at
  FROM gn2pg.source s
  LEFT JOIN gn2pg.schedule sc ON sc.source = s.name
  CROSS JOIN LATERAL (
        SELECT CASE WHEN s.options ? 'stale_after_hours'
                    THEN make_interval(hours => (s.options ->> 'stale_after_hours')::integer)
                    ELSE make_interval(mins => gn2pg._stale_after_minutes()) END AS stale_after) lim
  LEFT JOIN LATERAL (
        -- The columns of run_log in 0.2.0, spelled out: `r.*` would be frozen at creation, and a
        -- column added later would make an updated database differ from a fresh install.
        SELECT r.id, r.source, r.source_id, r.mode, r.status, r.started_at, r.finished_at, r.pages_done,
               r.rows_received, r.rows_upserted, r.rows_unchanged, r.rows_deleted, r.rows_failed, r.http_requests,
               r.http_retries, r.bytes_received, r.source_wait_ms, r.load_ms, r.error, r.worker_pid, r.paging,
               r.since, r.max_source_action, r.checkpoint, r.resumed_from
          FROM gn2pg.run_log r
         WHERE r.source = s.name AND r.status NOT IN ('pending', 'running')
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
          FROM gn2pg.alert a WHERE a.source = s.name AND a.resolved_at IS NULL) al ON true;
COMMENT ON VIEW gn2pg.flow_status IS
    'One row per source: organisation, URL, export, access mode, schedule and next run, last run, last success, local rows, open alerts, health (ok, late, failing, never_run).';
COMMENT ON COLUMN gn2pg.flow_status.organism IS 'options.organism: who publishes the export.';
COMMENT ON COLUMN gn2pg.flow_status.organism_id IS 'options.organism_id: its id in the national organisms referential.';
COMMENT ON COLUMN gn2pg.flow_status.access_mode IS 'login, token or public.';
COMMENT ON COLUMN gn2pg.flow_status.next_run_at IS 'Next time the pg_cron job fires (UTC schedule); NULL when unscheduled or disabled.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_id IS 'Latest finished run (runs refused because the source was busy are ignored).';
COMMENT ON COLUMN gn2pg.flow_status.last_run_rows IS 'Rows received by the latest finished run.';
COMMENT ON COLUMN gn2pg.flow_status.local_rows IS 'Rows of the source in gn2pg.observation (counted on each read).';
COMMENT ON COLUMN gn2pg.flow_status.stale_after IS 'Staleness limit: options.stale_after_hours, else gn2pg.stale_after; 0 = never late.';
COMMENT ON COLUMN gn2pg.flow_status.health IS
    'never_run (no finished run), failing (latest run failed or abandoned), late (no success within stale_after), ok.';
COMMENT ON COLUMN gn2pg.flow_status.source_id IS 'gn2pg.source.id.';
COMMENT ON COLUMN gn2pg.flow_status.source IS 'Name of the source.';
COMMENT ON COLUMN gn2pg.flow_status.enabled IS 'false: its pg_cron job skips it and it is never late.';
COMMENT ON COLUMN gn2pg.flow_status.url IS 'GeoNature API root of the source.';
COMMENT ON COLUMN gn2pg.flow_status.export_id IS 'Id of the export in the GeoNature Export module.';
COMMENT ON COLUMN gn2pg.flow_status.schedule IS 'Cron expression of its pg_cron job (UTC); NULL: not scheduled.';
COMMENT ON COLUMN gn2pg.flow_status.schedule_mode IS
    'Mode of the scheduled runs (auto, full, incremental); NULL: not scheduled.';
COMMENT ON COLUMN gn2pg.flow_status.running_run_id IS
    'The pending or running run, whose worker is alive; NULL: no run now.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_mode IS 'full or incremental: mode of the latest finished run.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_status IS
    'success, failed, cancelled or abandoned: how the latest finished run ended.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_started_at IS 'When the latest finished run started.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_finished_at IS 'When the latest finished run ended.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_duration IS 'How long the latest finished run took.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_rows_upserted IS 'Rows the latest finished run inserted or rewritten.';
COMMENT ON COLUMN gn2pg.flow_status.last_run_rows_deleted IS
    'Rows the latest finished run deleted (gone from the source).';
COMMENT ON COLUMN gn2pg.flow_status.last_run_rows_failed IS 'Items the latest finished run rejected (gn2pg.run_error).';
COMMENT ON COLUMN gn2pg.flow_status.last_run_error IS 'Why the latest finished run did not succeed; NULL when it did.';
COMMENT ON COLUMN gn2pg.flow_status.last_success_run_id IS 'The latest successful run; NULL: none yet.';
COMMENT ON COLUMN gn2pg.flow_status.last_success_at IS 'When the latest successful run ended; NULL: none yet.';
COMMENT ON COLUMN gn2pg.flow_status.open_alerts IS 'Open alerts of the source (gn2pg.alert WHERE resolved_at IS NULL).';
COMMENT ON COLUMN gn2pg.flow_status.open_alert_kinds IS 'Kinds of the open alerts, sorted; NULL when none is open.';
COMMENT ON COLUMN gn2pg.flow_status.created_at IS
    'When the source was registered: staleness counts from there until a first success.';

-- Raises 'stale' alerts for enabled sources whose latest success (or registration) is older
-- than their limit, and resolves those that are no longer late. Returns the alerts raised.
CREATE FUNCTION gn2pg._check_stale() RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    raised integer := 0;
BEGIN
    FOR f IN
        SELECT v.source, v.last_success_at, v.stale_after,
               v.enabled AND v.stale_after > interval '0'
                 AND coalesce(v.last_success_at, v.created_at) < now() - v.stale_after AS late
          FROM gn2pg.flow_status v
    LOOP
        IF f.late THEN
            IF NOT EXISTS (SELECT 1 FROM gn2pg.alert a
                            WHERE a.source = f.source AND a.kind = 'stale' AND a.resolved_at IS NULL) THEN
                raised := raised + 1;
            END IF;
            PERFORM gn2pg._raise_alert(f.source, 'stale', NULL,
                CASE WHEN f.last_success_at IS NULL
                     THEN format('source %s has had no successful run since it was registered (limit %s)', f.source, f.stale_after)
                     ELSE format('source %s has had no successful run since %s (limit %s)', f.source,
                                 to_char(f.last_success_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'), f.stale_after)
                END);
        ELSE
            PERFORM gn2pg._resolve_alerts(f.source, NULL, ARRAY['stale']);
        END IF;
    END LOOP;
    RETURN raised;
END
$$;
COMMENT ON FUNCTION gn2pg._check_stale() IS 'Raises and resolves stale alerts; called by gn2pg_check_flows().';

------------------------------------------------------------------------------------------------
-- Privileges. Tables are read-only for the gn2pg roles: the functions below are the only way
-- to change them, and they check the caller's role before working as the extension owner.
------------------------------------------------------------------------------------------------
GRANT USAGE ON SCHEMA gn2pg TO gn2pg_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA gn2pg TO gn2pg_reader;      -- tables and views
REVOKE ALL ON gn2pg.source_secret FROM gn2pg_reader;
GRANT SELECT ON gn2pg.source_secret TO gn2pg_admin;

-- Every function's EXECUTE is granted on purpose (pg_test/tests/security.rs checks the whole
-- list); the finalize step of the extension script revokes EXECUTE on every function of
-- schema gn2pg from PUBLIC, whatever is added later.
REVOKE ALL ON FUNCTION public.gn2pg_add_source(text, text, integer, text, text, text, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_remove_source(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_schedule(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_unschedule(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_schedule_check_flows(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_unschedule_check_flows() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_add_source(text, text, integer, text, text, text, text, jsonb, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_remove_source(text, boolean) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_schedule(text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_unschedule(text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_schedule_check_flows(text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_unschedule_check_flows() TO gn2pg_admin;

REVOKE ALL ON FUNCTION public.gn2pg_harvest(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_harvest_async(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_harvest_scheduled(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_cancel(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_check_flows() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_harvest(text, text) TO gn2pg_operator;
GRANT EXECUTE ON FUNCTION public.gn2pg_harvest_async(text, text) TO gn2pg_operator;
GRANT EXECUTE ON FUNCTION public.gn2pg_harvest_scheduled(text, text) TO gn2pg_operator;
GRANT EXECUTE ON FUNCTION public.gn2pg_cancel(bigint) TO gn2pg_operator;
GRANT EXECUTE ON FUNCTION public.gn2pg_check_flows() TO gn2pg_operator;

-- Internal, owner only: the engine, the triggers, the functions above once they run as the
-- owner, and _jsonb_selftest (superusers: it allocates in proportion to its input).
REVOKE ALL ON FUNCTION gn2pg._scrub(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._scrub_error() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._alert_event(gn2pg.alert, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._raise_alert(text, text, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._resolve_alerts(text, bigint, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._run_ended() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._source_removed() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._check_stale() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._parse_geometry(jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._active_run(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._abandon_dead_runs(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._claim_source(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._claim_idle_source(text, text, text) FROM PUBLIC;

-- Called by the views with the reader's rights (a view runs its functions as the caller), so
-- gn2pg_reader may execute them. Each is safe for any reader: _cron_next computes a time from
-- a text (bounded loop), _stale_after_minutes reads a setting, _resolve_mapping reads mappings
-- readers may read anyway, and _run_alive (SECURITY DEFINER) only says whether a pid is a gn2pg
-- harvest worker started before a time.
REVOKE ALL ON FUNCTION gn2pg._cron_next(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._stale_after_minutes() FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._resolve_mapping(text, uuid[], uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._run_alive(integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gn2pg._cron_next(text, timestamptz) TO gn2pg_reader;
GRANT EXECUTE ON FUNCTION gn2pg._stale_after_minutes() TO gn2pg_reader;
GRANT EXECUTE ON FUNCTION gn2pg._resolve_mapping(text, uuid[], uuid[]) TO gn2pg_reader;
GRANT EXECUTE ON FUNCTION gn2pg._run_alive(integer, timestamptz) TO gn2pg_reader;

COMMENT ON FUNCTION public.gn2pg_harvest_scheduled(text, text) IS
    'Run by the pg_cron job of a source: starts a harvest like gn2pg_harvest_async, or returns NULL when the source is disabled or still being harvested (scheduled runs never overlap).';
COMMENT ON FUNCTION public.gn2pg_schedule(text, text, text) IS
    'Creates or replaces the pg_cron job gn2pg:<source> (cron format, UTC); returns its job id. Admin only.';
COMMENT ON FUNCTION public.gn2pg_unschedule(text) IS 'Removes the pg_cron job of a source; false if there was none. Admin only.';
COMMENT ON FUNCTION public.gn2pg_schedule_check_flows(text) IS
    'Creates or replaces the pg_cron job gn2pg:check-flows:<database> that runs gn2pg_check_flows(); returns its job id. Admin only.';
COMMENT ON FUNCTION public.gn2pg_unschedule_check_flows() IS 'Removes the job of gn2pg_schedule_check_flows(); false if there was none. Admin only.';
COMMENT ON FUNCTION public.gn2pg_check_flows() IS
    'Raises stale alerts for sources without a recent successful run (schedule it with pg_cron); returns the number raised.';
COMMENT ON FUNCTION gn2pg._cron_next(text, timestamptz) IS 'Next time a pg_cron 1.4 schedule fires after a time (UTC); NULL if never.';
COMMENT ON FUNCTION gn2pg._stale_after_minutes() IS 'The gn2pg.stale_after setting, in minutes.';

-- Mappings (sql/metadata.sql) are managed by admins. The public functions (SECURITY INVOKER)
-- check the caller's role with the argument helpers, then write through SECURITY DEFINER
-- helpers, so the tables stay read-only. _remap (no busy check) and _mapping_changed are only
-- called by those helpers and the engine, as the owner.
ALTER FUNCTION gn2pg._map(text, text, uuid, uuid) SECURITY DEFINER;
ALTER FUNCTION gn2pg._unmap(text, text, text, uuid) SECURITY DEFINER;
ALTER FUNCTION gn2pg._describe(text, uuid, text, text, uuid) SECURITY DEFINER;
ALTER FUNCTION gn2pg._remap(text) SECURITY DEFINER;
ALTER FUNCTION gn2pg._remap_idle(text) SECURITY DEFINER;
ALTER FUNCTION gn2pg._mapping_changed(text) SECURITY DEFINER;
REVOKE ALL ON FUNCTION gn2pg._map(text, text, uuid, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._unmap(text, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._describe(text, uuid, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._remap(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._remap_idle(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._remap_if_pending(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._mapping_changed(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._check_source(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._uuid_arg(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._level_arg(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._require(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gn2pg._map(text, text, uuid, uuid) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._unmap(text, text, text, uuid) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._describe(text, uuid, text, text, uuid) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._remap_idle(text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._check_source(text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._uuid_arg(text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._level_arg(text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION gn2pg._require(text, text) TO gn2pg_admin;
REVOKE ALL ON FUNCTION public.gn2pg_describe_target(text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_map_ca(text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_map_jdd(text, text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_unmap_ca(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_unmap_jdd(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.gn2pg_remap(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.gn2pg_describe_target(text, text, text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_map_ca(text, text, text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_map_jdd(text, text, text, text, text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_unmap_ca(text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_unmap_jdd(text, text) TO gn2pg_admin;
GRANT EXECUTE ON FUNCTION public.gn2pg_remap(text) TO gn2pg_admin;
