//! The engine's bookkeeping statements: the source registry, locks, the run log and its
//! progress, parallel parts. Writing harvested rows and metadata is `loader`.
//!
//! All objects are schema-qualified: workers run with the default search_path, and PostGIS may
//! live in any schema, so its functions are qualified with the schema looked up at run start.

use pgrx::prelude::*;
use pgrx::spi;

use crate::error::Error;
use crate::loader::PageLoad;

type SpiResult<T> = Result<T, spi::Error>;

/// A registry row with its secrets, as the worker needs it.
pub struct SourceRow {
    pub id: i32,
    pub name: String,
    pub url: String,
    pub export_id: i32,
    pub auth: String,
    pub login: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub options: serde_json::Value,
    pub enabled: bool,
    /// Registered (or last changed) by a role that is not a superuser: its URLs must stay
    /// within `gn2pg.allowed_hosts`, checked before every run.
    pub restricted: bool,
}

pub fn load_source(name: &str) -> SpiResult<Option<SourceRow>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT s.id, s.name, s.url, s.export_id, s.auth, k.login, k.password, k.token,
                    s.options, s.enabled, s.restricted
               FROM gn2pg.source s LEFT JOIN gn2pg.source_secret k ON k.source_id = s.id
              WHERE s.name = $1",
            Some(1),
            &[name.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some(SourceRow {
            id: r.get::<i32>(1)?.unwrap_or_default(),
            name: r.get::<String>(2)?.unwrap_or_default(),
            url: r.get::<String>(3)?.unwrap_or_default(),
            export_id: r.get::<i32>(4)?.unwrap_or_default(),
            auth: r.get::<String>(5)?.unwrap_or_default(),
            login: r.get::<String>(6)?,
            password: r.get::<String>(7)?,
            token: r.get::<String>(8)?,
            options: r.get::<pgrx::JsonB>(9)?.map(|j| j.0).unwrap_or(serde_json::json!({})),
            enabled: r.get::<bool>(10)?.unwrap_or(true),
            restricted: r.get::<bool>(11)?.unwrap_or(true),
        }))
    })
}

/// The version of the extension's objects in this database (`ALTER EXTENSION … UPDATE` moves it).
pub fn extension_version() -> SpiResult<Option<String>> {
    Spi::get_one::<String>("SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'gn2pg'")
}

/// What keeps a source from being claimed.
#[derive(Debug, Clone, PartialEq)]
pub enum Busy {
    /// A pending or running run whose worker is alive.
    Run { id: i64, status: String, pid: Option<i32>, since: String },
    /// Another transaction holds its registry row: it is launching a run, or changing or
    /// removing the source.
    Locked,
    /// No such source.
    Missing,
}

const SINCE: &str = "to_char(since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"')";

fn busy_run(r: &pgrx::spi::SpiTupleTable) -> SpiResult<Option<Busy>> {
    Ok(r.get::<i64>(1)?.map(|id| Busy::Run {
        id,
        status: r.get::<String>(2).ok().flatten().unwrap_or_default(),
        pid: r.get::<i32>(3).ok().flatten(),
        since: r.get::<String>(4).ok().flatten().unwrap_or_default(),
    }))
}

/// The live pending or running run of a source other than `except`, if any.
pub fn active_run(source: &str, except: Option<i64>) -> SpiResult<Option<Busy>> {
    Spi::run("SELECT pg_catalog.pg_stat_clear_snapshot()")?;
    Spi::connect(|c| {
        let t = c.select(
            &format!("SELECT run_id, status, worker_pid, {SINCE} FROM gn2pg._active_run($1, $2)"),
            None,
            &[source.into(), except.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        busy_run(&t.first())
    })
}

/// Takes the registry row of an idle source until the end of the transaction (Ok: its id),
/// or says what keeps it busy (gn2pg._claim_source). Nothing waits.
pub fn claim_source(source: &str) -> SpiResult<Result<i32, Busy>> {
    Spi::connect(|c| {
        let t = c.select(
            &format!(
                "SELECT busy_run, busy_status, busy_pid, {}, source_id FROM gn2pg._claim_source($1)",
                SINCE.replace("since", "busy_since")
            ),
            None,
            &[source.into()],
        )?;
        let r = t.first();
        if let Some(b) = busy_run(&r)? {
            return Ok(Err(b));
        }
        Ok(match (r.get::<i32>(5)?, r.get::<String>(2)?.as_deref()) {
            (Some(id), _) => Ok(id),
            (None, Some("missing")) => Err(Busy::Missing),
            (None, _) => Err(Busy::Locked),
        })
    })
}

/// Whether another transaction holds the registry row of the source (false when there is no
/// such source); otherwise this transaction shares it until its end, so that no run starts
/// while the source is being changed.
pub fn row_taken(source: &str) -> SpiResult<bool> {
    Spi::connect_mut(|c| {
        let exists = !c.select("SELECT 1 FROM gn2pg.source WHERE name = $1", None, &[source.into()])?.is_empty();
        let shared =
            c.update("SELECT 1 FROM gn2pg.source WHERE name = $1 FOR SHARE SKIP LOCKED", None, &[source.into()])?;
        Ok(exists && shared.is_empty())
    })
}

/// Marks abandoned the pending and running runs of a source (all sources: None) whose worker
/// is gone, except `except`. Returns how many.
pub fn abandon_dead_runs(source: Option<&str>, except: Option<i64>) -> SpiResult<i32> {
    Spi::run("SELECT pg_catalog.pg_stat_clear_snapshot()")?;
    Ok(Spi::get_one_with_args::<i32>("SELECT gn2pg._abandon_dead_runs($1, $2)", &[source.into(), except.into()])?
        .unwrap_or(0))
}

/// Records a run launched in this transaction, before its worker takes it over: the source's
/// one active run from now on (unique index), so a second launch is refused.
pub fn insert_pending(run_id: i64, source: &str, source_id: i32, mode: &str, worker_pid: i32) -> SpiResult<()> {
    Spi::run_with_args(
        "INSERT INTO gn2pg.run_log (id, source, source_id, mode, status, worker_pid, started_at)
         VALUES ($1, $2, $3, $4, 'pending', $5, pg_catalog.clock_timestamp())",
        &[run_id.into(), source.into(), source_id.into(), mode.into(), worker_pid.into()],
    )
}

/// Facts about earlier runs that decide what `mode => 'auto'` means and where a run starts.
pub struct History {
    /// A successful run exists.
    pub has_success: bool,
    /// The latest finished full run succeeded (no interrupted full since).
    pub last_full_ok: bool,
    /// Latest source timestamp recorded by a successful run.
    pub max_source_action: Option<String>,
    /// Hours since the last successful full run ended.
    pub hours_since_full: Option<f64>,
    /// The latest finished run if it is an interrupted full run with a checkpoint: (id, checkpoint).
    pub resumable: Option<(i64, serde_json::Value)>,
}

pub fn history(source: &str, current_run: i64) -> SpiResult<History> {
    Spi::connect(|c| {
        let t = c.select(
            "WITH r AS (SELECT * FROM gn2pg.run_log WHERE source = $1 AND id <> $2),
                  last AS (SELECT * FROM r WHERE status <> 'running' ORDER BY id DESC LIMIT 1)
             SELECT EXISTS (SELECT 1 FROM r WHERE status = 'success'),
                    coalesce((SELECT status = 'success' FROM r WHERE mode = 'full' AND status <> 'running'
                               ORDER BY id DESC LIMIT 1), false),
                    (SELECT max(max_source_action) FROM r WHERE status = 'success'),
                    (SELECT extract(epoch FROM now() - max(finished_at))::float8 / 3600
                       FROM r WHERE mode = 'full' AND status = 'success'),
                    (SELECT id FROM last WHERE mode = 'full'
                        AND status IN ('failed', 'cancelled', 'abandoned') AND checkpoint IS NOT NULL),
                    (SELECT checkpoint FROM last WHERE mode = 'full'
                        AND status IN ('failed', 'cancelled', 'abandoned') AND checkpoint IS NOT NULL)",
            None,
            &[source.into(), current_run.into()],
        )?;
        let r = t.first();
        let resumable = match (r.get::<i64>(5)?, r.get::<pgrx::JsonB>(6)?) {
            (Some(id), Some(cp)) => Some((id, cp.0)),
            _ => None,
        };
        Ok(History {
            has_success: r.get::<bool>(1)?.unwrap_or(false),
            last_full_ok: r.get::<bool>(2)?.unwrap_or(false),
            max_source_action: r.get::<String>(3)?,
            hours_since_full: r.get::<f64>(4)?,
            resumable,
        })
    })
}

pub struct RunStart<'a> {
    pub run_id: i64,
    pub resumed_from: Option<i64>,
    pub source: &'a str,
    pub source_id: Option<i32>,
    pub mode: &'a str,
    pub paging: Option<&'a str>,
    pub since: Option<&'a str>,
}

/// Starts a run: its pending row (launched asynchronously) becomes running, or a running row is
/// created (gn2pg_harvest, whose caller cannot commit before the run ends). False: the pending
/// row is no longer pending (cancelled before it started).
pub fn begin_run(r: &RunStart) -> SpiResult<bool> {
    Ok(Spi::get_one_with_args::<i64>(
        "INSERT INTO gn2pg.run_log AS l (id, source, source_id, mode, status, worker_pid, paging, since, resumed_from)
         VALUES ($1, $2, $3, $4, 'running', pg_catalog.pg_backend_pid(), $5, $6, $7)
         ON CONFLICT (id) DO UPDATE
            SET status = 'running', started_at = now(), worker_pid = EXCLUDED.worker_pid, mode = EXCLUDED.mode,
                source_id = EXCLUDED.source_id, paging = EXCLUDED.paging, since = EXCLUDED.since,
                resumed_from = EXCLUDED.resumed_from
          WHERE l.status = 'pending'
         RETURNING l.id",
        &[
            r.run_id.into(),
            r.source.into(),
            r.source_id.into(),
            r.mode.into(),
            r.paging.into(),
            r.since.into(),
            r.resumed_from.into(),
        ],
    )?
    .is_some())
}

pub fn postgis_schema() -> SpiResult<String> {
    Spi::get_one::<String>(
        "SELECT (SELECT n.nspname::text FROM pg_catalog.pg_extension e
                   JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                  WHERE e.extname = 'postgis')",
    )?
    .ok_or(spi::Error::NoTupleTable)
}

/// Run log progress of a metadata page: its rejected entries and the transport counters.
pub fn record_metadata_page(run_id: i64, failed: i64, requests: i64, retries: i64, bytes: i64) -> SpiResult<()> {
    Spi::run_with_args(
        "UPDATE gn2pg.run_log
            SET rows_failed = rows_failed + $2, http_requests = $3, http_retries = $4, bytes_received = $5
          WHERE id = $1",
        &[run_id.into(), failed.into(), (requests as i32).into(), (retries as i32).into(), bytes.into()],
    )
}

/// Applies mappings changed since the last remap to every harvested row of the source (the
/// caller holds the source lock). Returns the rows changed.
pub fn remap_if_pending(source: &str) -> SpiResult<i64> {
    Ok(Spi::get_one_with_args::<i64>("SELECT gn2pg._remap_if_pending($1)", &[source.into()])?.unwrap_or(0))
}

/// Progress of a run, written in the same transaction as the page it accounts for, so the
/// run log and the checkpoint never disagree with the data.
pub struct Progress<'a> {
    pub run_id: i64,
    /// For a run loaded by several workers: this worker's part and its new position.
    pub part: Option<PartPosition>,
    pub page: &'a PageLoad,
    pub requests: i64,
    pub retries: i64,
    pub bytes: i64,
    pub source_wait_ms: i64,
    pub checkpoint: serde_json::Value,
}

#[derive(Debug, Clone, Copy)]
pub struct PartPosition {
    pub part: i32,
    pub next_key: i64,
    pub done: bool,
}

/// A page of a parallel run also moves its part's row (position and transport counters); the
/// run's transport counters are then the parts' sum (`finish_run`) and its checkpoint is rebuilt
/// from every part. A part may see another part's position slightly behind (snapshot): resuming
/// from there re-reads a page, it never skips one.
pub fn record_page(p: &Progress) -> SpiResult<()> {
    let own = |v: i64| if p.part.is_some() { None } else { Some(v) };
    if let Some(pos) = p.part {
        Spi::run_with_args(
            "UPDATE gn2pg.run_part
                SET next_key = $3, done = $4, http_requests = $5, http_retries = $6, bytes_received = $7
              WHERE run_id = $1 AND part = $2",
            &[
                p.run_id.into(),
                pos.part.into(),
                pos.next_key.into(),
                pos.done.into(),
                (p.requests as i32).into(),
                (p.retries as i32).into(),
                p.bytes.into(),
            ],
        )?;
    }
    Spi::run_with_args(
        "UPDATE gn2pg.run_log
            SET pages_done = pages_done + 1,
                rows_received = rows_received + $2,
                rows_upserted = rows_upserted + $3,
                rows_unchanged = rows_unchanged + $4,
                rows_failed = rows_failed + $5,
                rows_deleted = rows_deleted + $6,
                http_requests = coalesce($7, http_requests),
                http_retries = coalesce($8, http_retries),
                bytes_received = coalesce($9, bytes_received),
                max_source_action = greatest(max_source_action, $10),
                checkpoint = coalesce($11,
                    (SELECT jsonb_build_object('ranges',
                             coalesce(jsonb_agg(jsonb_build_array(q.next_key, q.hi) ORDER BY q.part), '[]'))
                       FROM gn2pg.run_part q WHERE q.run_id = $1 AND NOT q.done)),
                source_wait_ms = source_wait_ms + $12,
                load_ms = load_ms + (extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::bigint
          WHERE id = $1",
        &[
            p.run_id.into(),
            p.page.received.into(),
            (p.page.inserted + p.page.updated).into(),
            p.page.unchanged.into(),
            p.page.failed.into(),
            p.page.deleted.into(),
            own(p.requests).map(|v| v as i32).into(),
            own(p.retries).map(|v| v as i32).into(),
            own(p.bytes).into(),
            p.page.max_source_action.as_deref().into(),
            p.part.is_none().then(|| pgrx::JsonB(p.checkpoint.clone())).into(),
            p.source_wait_ms.into(),
        ],
    )
}

/// Declares the parts of a parallel run.
pub fn create_parts(run_id: i64, ranges: &[(i64, Option<i64>)]) -> SpiResult<()> {
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        Spi::run_with_args(
            "INSERT INTO gn2pg.run_part (run_id, part, lo, hi, next_key) VALUES ($1, $2, $3, $4, $3)",
            &[run_id.into(), (i as i32).into(), (*lo).into(), (*hi).into()],
        )?;
    }
    Ok(())
}

/// (next_key, hi) of a part, for its worker.
pub fn part_range(run_id: i64, part: i32) -> SpiResult<Option<(i64, Option<i64>)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT next_key, hi FROM gn2pg.run_part WHERE run_id = $1 AND part = $2",
            None,
            &[run_id.into(), part.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some((r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?)))
    })
}

pub fn finish_part(run_id: i64, part: i32, status: &str, error: Option<&Error>) -> SpiResult<()> {
    let (error, sqlstate, reason) = error_columns(error);
    Spi::run_with_args(
        "UPDATE gn2pg.run_part SET status = $3, error = $4, sqlstate = $5, reason = $6,
                worker_pid = pg_catalog.pg_backend_pid()
          WHERE run_id = $1 AND part = $2",
        &[run_id.into(), part.into(), status.into(), error.into(), sqlstate.into(), reason.into()],
    )
}

/// The end a part of a parallel run recorded.
pub struct PartStatus {
    pub part: i32,
    pub status: String,
    pub error: Option<Error>,
}

/// The status of the other parts of a run.
pub fn parts_status(run_id: i64) -> SpiResult<Vec<PartStatus>> {
    Spi::connect(|c| {
        c.select(
            "SELECT part, status, error, sqlstate, reason FROM gn2pg.run_part WHERE run_id = $1 AND part > 0 ORDER BY part",
            None,
            &[run_id.into()],
        )?
        .map(|r| {
            let (sqlstate, reason) = (r.get::<String>(4)?, r.get::<String>(5)?);
            let error = r.get::<String>(3)?.map(|m| recorded_error(m, sqlstate, reason));
            Ok(PartStatus { part: r.get::<i32>(1)?.unwrap_or(0), status: r.get::<String>(2)?.unwrap_or_default(), error })
        })
        .collect()
    })
}

/// An error as a run or part recorded it (`error`, `sqlstate`, `reason` columns).
pub fn recorded_error(message: String, sqlstate: Option<String>, reason: Option<String>) -> Error {
    use crate::error::{Reason, SqlState};
    let reason = reason.as_deref().and_then(Reason::parse).unwrap_or(Reason::Internal);
    let sqlstate = sqlstate.as_deref().and_then(SqlState::parse).unwrap_or(SqlState::INTERNAL_ERROR);
    Error::new(reason, sqlstate, message)
}

/// What a run or part records of its error: the text, its SQLSTATE and its reason.
fn error_columns(error: Option<&Error>) -> (Option<&str>, Option<String>, Option<&'static str>) {
    match error {
        Some(e) => (Some(e.message.as_str()), Some(e.sqlstate.to_string()), Some(e.reason.as_str())),
        None => (None, None, None),
    }
}

pub fn finish_run(
    run_id: i64,
    status: &str,
    error: Option<&Error>,
    requests: i64,
    retries: i64,
    bytes: i64,
) -> SpiResult<()> {
    let (error, sqlstate, reason) = error_columns(error);
    Spi::run_with_args(
        "UPDATE gn2pg.run_log
            SET status = $2, error = $3, sqlstate = $7, reason = $8, finished_at = now(),
                -- A parallel run's transport counters live in its parts.
                http_requests = coalesce((SELECT sum(http_requests) FROM gn2pg.run_part WHERE run_id = $1), $4),
                http_retries = coalesce((SELECT sum(http_retries) FROM gn2pg.run_part WHERE run_id = $1), $5),
                bytes_received = coalesce((SELECT sum(bytes_received) FROM gn2pg.run_part WHERE run_id = $1), $6)
          WHERE id = $1",
        &[
            run_id.into(),
            status.into(),
            error.into(),
            (requests as i32).into(),
            (retries as i32).into(),
            bytes.into(),
            sqlstate.into(),
            reason.into(),
        ],
    )
}

/// The end of a run when `finish_run` failed: the status and why (`message`, with the class of
/// the run's own error if it failed), nothing that could fail again.
pub fn finish_run_minimal(run_id: i64, status: &str, message: &str, error: Option<&Error>) -> SpiResult<()> {
    let (_, sqlstate, reason) = error_columns(error);
    Spi::run_with_args(
        "UPDATE gn2pg.run_log SET status = $2, error = $3, sqlstate = $4, reason = $5, finished_at = now() WHERE id = $1",
        &[run_id.into(), status.into(), message.into(), sqlstate.into(), reason.into()],
    )
}

/// A run that failed before it could start properly still gets its row, so the caller (and
/// the operator reading run_log) sees why: `message` (naming the source) and the class of `error`.
pub fn record_failed_start(run_id: i64, source: &str, mode: &str, message: &str, error: &Error) -> SpiResult<()> {
    Spi::run_with_args(
        "INSERT INTO gn2pg.run_log (id, source, mode, status, finished_at, worker_pid, error, sqlstate, reason)
         VALUES ($1, $2, $3, 'failed', now(), pg_catalog.pg_backend_pid(), $4, $5, $6)
         ON CONFLICT (id) DO UPDATE
            SET status = 'failed', finished_at = now(), error = EXCLUDED.error, sqlstate = EXCLUDED.sqlstate,
                reason = EXCLUDED.reason
          WHERE gn2pg.run_log.status IN ('pending', 'running')",
        &[
            run_id.into(),
            source.into(),
            mode.into(),
            message.into(),
            error.sqlstate.to_string().into(),
            error.reason.as_str().into(),
        ],
    )
}
