//! The engine's bookkeeping statements: the source registry, locks, the run log and its
//! progress, parallel parts. Writing harvested rows and metadata is `loader`.
//!
//! All objects are schema-qualified: workers run with the default search_path, and PostGIS may
//! live in any schema, so its functions are qualified with the schema looked up at run start.

use pgrx::prelude::*;
use pgrx::spi;

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
}

pub fn load_source(name: &str) -> SpiResult<Option<SourceRow>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT s.id, s.name, s.url, s.export_id, s.auth, k.login, k.password, k.token,
                    s.options, s.enabled
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
        }))
    })
}

/// The version of the extension's objects in this database (`ALTER EXTENSION … UPDATE` moves it).
pub fn extension_version() -> SpiResult<Option<String>> {
    Spi::get_one::<String>("SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'gn2pg'")
}

/// Session-level advisory lock: one run per source at a time, released when the worker exits.
pub fn try_lock_source(source_id: i32) -> SpiResult<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext('gn2pg.source'), $1)",
        &[source_id.into()],
    )?
    .unwrap_or(false))
}

/// The run currently holding a source, for the "already running" message.
pub fn running_run(source: &str, except: i64) -> SpiResult<Option<(i64, Option<i32>)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT id, worker_pid FROM gn2pg.run_log
              WHERE source = $1 AND status = 'running' AND id <> $2 ORDER BY id DESC LIMIT 1",
            None,
            &[source.into(), except.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some((r.get::<i64>(1)?.unwrap_or_default(), r.get::<i32>(2)?)))
    })
}

/// With the source lock held, any other 'running' run of it has lost its process.
pub fn mark_abandoned(source: &str, except: i64) -> SpiResult<()> {
    Spi::run_with_args(
        "UPDATE gn2pg.run_log
            SET status = 'abandoned', finished_at = now(),
                error = coalesce(error, 'its worker process ended without finishing (killed or server restart)')
          WHERE source = $1 AND status = 'running' AND id <> $2",
        &[source.into(), except.into()],
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

pub fn begin_run(r: &RunStart) -> SpiResult<()> {
    Spi::run_with_args(
        "INSERT INTO gn2pg.run_log (id, source, source_id, mode, status, worker_pid, paging, since, resumed_from)
         VALUES ($1, $2, $3, $4, 'running', pg_catalog.pg_backend_pid(), $5, $6, $7)",
        &[
            r.run_id.into(),
            r.source.into(),
            r.source_id.into(),
            r.mode.into(),
            r.paging.into(),
            r.since.into(),
            r.resumed_from.into(),
        ],
    )
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

pub fn finish_part(run_id: i64, part: i32, status: &str, error: Option<&str>) -> SpiResult<()> {
    Spi::run_with_args(
        "UPDATE gn2pg.run_part SET status = $3, error = $4, worker_pid = pg_catalog.pg_backend_pid()
          WHERE run_id = $1 AND part = $2",
        &[run_id.into(), part.into(), status.into(), error.into()],
    )
}

/// (part, status, error) of the other parts of a run.
pub fn parts_status(run_id: i64) -> SpiResult<Vec<(i32, String, Option<String>)>> {
    Spi::connect(|c| {
        c.select(
            "SELECT part, status, error FROM gn2pg.run_part WHERE run_id = $1 AND part > 0 ORDER BY part",
            None,
            &[run_id.into()],
        )?
        .map(|r| Ok((r.get::<i32>(1)?.unwrap_or(0), r.get::<String>(2)?.unwrap_or_default(), r.get::<String>(3)?)))
        .collect()
    })
}

pub fn finish_run(
    run_id: i64,
    status: &str,
    error: Option<&str>,
    requests: i64,
    retries: i64,
    bytes: i64,
) -> SpiResult<()> {
    Spi::run_with_args(
        "UPDATE gn2pg.run_log
            SET status = $2, error = $3, finished_at = now(),
                -- A parallel run's transport counters live in its parts.
                http_requests = coalesce((SELECT sum(http_requests) FROM gn2pg.run_part WHERE run_id = $1), $4),
                http_retries = coalesce((SELECT sum(http_retries) FROM gn2pg.run_part WHERE run_id = $1), $5),
                bytes_received = coalesce((SELECT sum(bytes_received) FROM gn2pg.run_part WHERE run_id = $1), $6)
          WHERE id = $1",
        &[run_id.into(), status.into(), error.into(), (requests as i32).into(), (retries as i32).into(), bytes.into()],
    )
}

/// A run that failed before it could start properly still gets its row, so the caller (and
/// the operator reading run_log) sees why.
pub fn record_failed_start(run_id: i64, source: &str, mode: &str, error: &str) -> SpiResult<()> {
    Spi::run_with_args(
        "INSERT INTO gn2pg.run_log (id, source, mode, status, finished_at, worker_pid, error)
         VALUES ($1, $2, $3, 'failed', now(), pg_catalog.pg_backend_pid(), $4)
         ON CONFLICT (id) DO UPDATE SET status = 'failed', finished_at = now(), error = EXCLUDED.error",
        &[run_id.into(), source.into(), mode.into(), error.into()],
    )
}
