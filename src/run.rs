//! The harvest engine, run inside a background worker: it fetches each page outside any
//! transaction and loads it, with the run log progress and the checkpoint, in one transaction.
//! A crash therefore loses at most the page in flight, and other sessions watch `run_log` move.
//!
//! Wording: *setup* is the first transaction (lock the source, decide full or incremental,
//! create the run_log row); *pages* are then loaded one transaction each; *finish* records the
//! final status.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::guc;
use crate::source::client::{Host, SourceClient};
use crate::source::config::{api_root, auth_from_parts, Auth, PagingMode, SourceConfig, SourceOptions};
use crate::source::error::redact_url;
use crate::source::page::{parse_page, Shape};
use crate::source::paging::{Pager, Step};
use crate::source::SourceError;
use crate::store::{self, PageLoad, PageSpec, Progress, RunStart};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    Auto,
    Full,
    Incremental,
}

impl Requested {
    pub fn parse(s: &str) -> Option<Requested> {
        match s {
            "auto" => Some(Requested::Auto),
            "full" => Some(Requested::Full),
            "incremental" => Some(Requested::Incremental),
            _ => None,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Requested::Incremental => "incremental",
            _ => "full",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Incremental,
}

/// Why a run stopped early.
enum Stop {
    Cancelled(String),
    Failed(String),
}

impl From<SourceError> for Stop {
    fn from(e: SourceError) -> Stop {
        match e {
            SourceError::Cancelled(m) => Stop::Cancelled(m),
            other => Stop::Failed(other.to_string()),
        }
    }
}

/// Hard bound on pages in one run (a billion rows at 1000 per page): a runaway source cannot
/// keep a worker busy forever.
const MAX_PAGES: u64 = 1_000_000;

/// Cancellation and sleeping for a background worker: SIGTERM (gn2pg_cancel, shutdown) sets
/// ShutdownRequestPending, which pgrx's handler does not turn into an ERROR, so we poll it.
struct WorkerHost;

impl Host for WorkerHost {
    fn check_interrupts(&self) -> Result<(), SourceError> {
        // SAFETY: reading a sig_atomic_t flag set by the signal handler of this process.
        if unsafe { pg_sys::ShutdownRequestPending } != 0 {
            return Err(SourceError::Cancelled(
                "stopped on request (gn2pg_cancel, pg_terminate_backend or server shutdown)".into(),
            ));
        }
        // Lets ProcSignalBarriers (DROP DATABASE, ...) through while we wait on a source.
        pg_sys::check_for_interrupts!();
        Ok(())
    }

    fn sleep(&self, d: Duration) -> Result<(), SourceError> {
        let end = Instant::now() + d;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            BackgroundWorker::wait_latch(Some(left.min(Duration::from_millis(200))));
            self.check_interrupts()?;
        }
        Ok(())
    }
}

/// Runs `f` in its own transaction. Any ERROR (or an `Err`) rolls the transaction back and
/// comes back as `Err(message)`, so the engine can record it and carry on.
fn tx<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    let f = AssertUnwindSafe(f);
    PgTryBuilder::new(AssertUnwindSafe(|| {
        Ok(BackgroundWorker::transaction(AssertUnwindSafe(|| match (f.0)() {
            Ok(v) => v,
            Err(m) => pgrx::error!("{m}"),
        })))
    }))
    .catch_others(|e| {
        // SAFETY: BackgroundWorker::transaction re-raised without closing the transaction.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(caught_message(&e))
    })
    .execute()
}

fn caught_message(e: &pg_sys::panic::CaughtError) -> String {
    use pg_sys::panic::CaughtError::*;
    match e {
        PostgresError(r) | ErrorReport(r) | RustPanic { ereport: r, .. } => match r.detail() {
            Some(d) if !d.is_empty() => format!("{} ({d})", r.message()),
            _ => r.message().to_string(),
        },
    }
}

fn spi_err(e: pgrx::spi::Error) -> String {
    format!("internal SPI error: {e}")
}

struct Setup {
    cfg: SourceConfig,
    mode: Mode,
    since: Option<String>,
    postgis: String,
}

pub fn build_config(row: &store::SourceRow) -> Result<SourceConfig, SourceError> {
    Ok(SourceConfig {
        name: row.name.clone(),
        api_root: api_root(&row.url)?,
        export_id: row.export_id,
        auth: auth_from_parts(&row.auth, row.login.as_deref(), row.password.as_deref(), row.token.as_deref())?,
        options: SourceOptions::from_json(&row.options)?,
    })
}

fn setup(run_id: i64, name: &str, requested: Requested) -> Result<Setup, String> {
    let row = store::load_source(name).map_err(spi_err)?.ok_or_else(|| {
        format!("source \"{name}\" does not exist (if it was added in the same transaction, commit first)")
    })?;
    if !row.enabled {
        return Err(format!("source \"{name}\" is disabled"));
    }
    let cfg = build_config(&row).map_err(|e| format!("source \"{name}\": {e}"))?;
    if !store::try_lock_source(row.id).map_err(spi_err)? {
        let holder = store::running_run(name, run_id).map_err(spi_err)?;
        return Err(match holder {
            Some((id, pid)) => format!(
                "source \"{name}\" is already being harvested by run {id} (pid {}); \
                 wait for it or stop it with gn2pg_cancel({id})",
                pid.map_or("?".into(), |p| p.to_string())
            ),
            None => format!("source \"{name}\" is already being harvested by another run"),
        });
    }
    store::mark_abandoned(name, run_id).map_err(spi_err)?;
    // Mappings changed since the last remap move already harvested rows first (issue 4).
    let remapped = store::remap_if_pending(name).map_err(spi_err)?;
    if remapped > 0 {
        pgrx::log!("gn2pg: source \"{name}\": {remapped} harvested rows remapped to the current mappings");
    }
    let hist = store::history(name).map_err(spi_err)?;
    let incremental_possible = hist.has_success && hist.max_source_action.is_some();
    let mode = match requested {
        Requested::Full => Mode::Full,
        // Without a successful run there is no window to start from: a full run it is.
        Requested::Incremental if incremental_possible => Mode::Incremental,
        Requested::Auto if incremental_possible && hist.last_full_ok => Mode::Incremental,
        _ => Mode::Full,
    };
    let since = match (mode, hist.max_source_action.as_deref()) {
        (Mode::Incremental, Some(max)) => {
            let overlap = guc::incremental_overlap(&cfg.options).as_secs() as i64;
            store::window_start(max, overlap).map_err(spi_err)?
        }
        _ => None,
    };
    let paging = match cfg.options.paging {
        PagingMode::Keyset => "keyset",
        PagingMode::Offset => "offset",
    };
    store::begin_run(&RunStart {
        run_id,
        source: name,
        source_id: Some(row.id),
        mode: if mode == Mode::Full { "full" } else { "incremental" },
        paging: Some(paging),
        since: since.as_deref(),
    })
    .map_err(spi_err)?;
    let postgis = store::postgis_schema().map_err(|_| "PostGIS is not installed in this database".to_string())?;
    Ok(Setup { cfg, mode, since, postgis })
}

/// Entry point of a harvest worker once connected to its database.
pub fn execute(run_id: i64, name: &str, requested: Requested) {
    let setup = match tx(|| setup(run_id, name, requested)) {
        Ok(s) => s,
        Err(msg) => {
            if let Err(e) = tx(|| store::record_failed_start(run_id, name, requested.label(), &msg).map_err(spi_err)) {
                pgrx::warning!("gn2pg: run {run_id} of source \"{name}\" failed ({msg}) and could not be logged: {e}");
            }
            return;
        }
    };
    let host = WorkerHost;
    let limits = guc::limits(&setup.cfg.options);
    let mut client = match SourceClient::new(setup.cfg.clone(), limits) {
        Ok(c) => c,
        Err(e) => {
            finish(run_id, name, Err(Stop::from(e)), None);
            return;
        }
    };
    let result = harvest(run_id, &setup, &mut client, &host);
    finish(run_id, name, result, Some(&client));
}

fn finish(run_id: i64, name: &str, result: Result<(), Stop>, client: Option<&SourceClient>) {
    let (status, error) = match result {
        Ok(()) => ("success", None),
        Err(Stop::Cancelled(m)) => ("cancelled", Some(m)),
        Err(Stop::Failed(m)) => ("failed", Some(format!("source \"{name}\": {m}"))),
    };
    let s = client.map(|c| c.stats.clone()).unwrap_or_default();
    let recorded = tx(|| {
        store::finish_run(run_id, status, error.as_deref(), s.requests as i64, s.retries as i64, s.bytes as i64)
            .map_err(spi_err)
    });
    if let Err(e) = recorded {
        pgrx::warning!("gn2pg: could not record the end of run {run_id}: {e}");
    }
}

fn harvest(run_id: i64, setup: &Setup, client: &mut SourceClient, host: &WorkerHost) -> Result<(), Stop> {
    client.prepare(host)?;
    let o = &setup.cfg.options;
    if let Some(export_id) = o.metadata_export_id {
        harvest_metadata(run_id, setup, client, host, export_id)?;
    }
    let mut pager = Pager::new(o.paging, &o.key_column, o.page_size, 0, 0);
    let fast_sql = store::load_page_sql(&setup.postgis, false);
    let careful_sql = store::load_page_sql(&setup.postgis, true);
    let window: Vec<(String, String)> = match &setup.since {
        Some(since) => vec![(format!("filter_d_up_{}", o.updated_column), since.clone())],
        None => vec![],
    };
    for page_no in 0..MAX_PAGES {
        host.check_interrupts()?;
        let mut params = pager.params();
        params.extend(window.iter().cloned());
        let body = client.fetch_export_page(&params, host)?;
        let summary = parse_page(&body, &o.key_column).map_err(|cause| SourceError::BadAnswer {
            url: redact_url(client.export_url(&params).as_str()),
            cause,
        })?;
        let step = pager.step_for(&summary).map_err(SourceError::Paging)?;
        let sweep = if setup.mode == Mode::Full { pager.covered_range(&summary, &step) } else { None };
        let spec = PageSpec {
            source: &setup.cfg.name,
            run_id,
            key_column: &o.key_column,
            uuid_column: &o.uuid_column,
            wkt_column: &o.wkt_column,
            updated_column: &o.updated_column,
            feature_collection: summary.shape == Shape::FeatureCollection,
            sweep,
        };
        pager.advance(&summary);
        let checkpoint = json!({ "next_key": pager.next_key(), "page_index": pager.page_index() });
        load_page(&fast_sql, &careful_sql, &spec, &body, client, checkpoint)
            .map_err(|e| Stop::Failed(format!("page {} could not be loaded: {e}", page_no + 1)))?;
        drop(body);
        if step == Step::Done {
            break;
        }
    }
    if setup.mode == Mode::Incremental && matches!(setup.cfg.auth, Auth::Login { .. }) {
        if let Some(since) = &setup.since {
            match client.fetch_deletions(since, host) {
                Ok(ids) if !ids.is_empty() => {
                    tx(|| store::delete_ids(&setup.cfg.name, run_id, &ids).map_err(spi_err)).map_err(Stop::Failed)?;
                }
                Ok(_) => {}
                // GeoNature < 2.12 has no deletion log; full runs still reconcile deletions.
                Err(SourceError::NotFound { .. }) => {
                    pgrx::log!("gn2pg: source \"{}\" has no /synthese/log; deletions wait for the next full run", setup.cfg.name);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Bound on pages of a metadata export (one item per acquisition framework).
const MAX_METADATA_PAGES: u64 = 10_000;

/// The metadata export (`options.metadata_export_id`: one row per CA with its datasets) is
/// small, so every run reads it in full, before the data, into gn2pg.metadata.
fn harvest_metadata(run_id: i64, setup: &Setup, client: &mut SourceClient, host: &WorkerHost, export_id: i32) -> Result<(), Stop> {
    let o = &setup.cfg.options;
    let key = o.metadata_key_column.as_str();
    let failed = |m: String| Stop::Failed(format!("metadata export {export_id}: {m}"));
    let mut pager = Pager::new(o.paging, key, o.page_size, 0, 0);
    let sql = store::load_metadata_page_sql();
    for _ in 0..MAX_METADATA_PAGES {
        host.check_interrupts()?;
        let params = pager.params();
        let body = client.fetch_other_export_page(export_id, &params, host).map_err(|e| match e {
            SourceError::Cancelled(m) => Stop::Cancelled(m),
            other => failed(other.to_string()),
        })?;
        let summary = parse_page(&body, key).map_err(|cause| {
            let url = redact_url(client.other_export_url(export_id, &params).as_str());
            failed(SourceError::BadAnswer { url, cause }.to_string())
        })?;
        let step = pager.step_for(&summary).map_err(failed)?;
        pager.advance(&summary);
        let spec = store::MetadataPageSpec {
            source: &setup.cfg.name,
            run_id,
            key_column: key,
            feature_collection: summary.shape == Shape::FeatureCollection,
        };
        let s = &client.stats;
        tx(|| {
            let load = store::load_metadata_page(&sql, &spec, &body).map_err(spi_err)?;
            pgrx::debug1!(
                "gn2pg: run {run_id}: metadata page: {} items, {} CA/JDD rows written, {} rejected",
                load.received, load.written, load.failed
            );
            store::record_metadata_page(run_id, load.failed, s.requests as i64, s.retries as i64, s.bytes as i64)
                .map_err(spi_err)
        })
        .map_err(|e| failed(format!("page could not be loaded: {e}")))?;
        if step == Step::Done {
            return Ok(());
        }
    }
    Err(failed(format!("more than {MAX_METADATA_PAGES} pages")))
}

/// Loads a page with its progress row in one transaction; if the fast statement fails (a bad
/// geometry raises), the page is loaded again in careful mode, which sends bad items to
/// run_error instead of failing the page.
fn load_page(
    fast: &str,
    careful: &str,
    spec: &PageSpec,
    body: &str,
    client: &SourceClient,
    checkpoint: serde_json::Value,
) -> Result<PageLoad, String> {
    let attempt = |sql: &str| {
        tx(|| {
            Spi::run("SET LOCAL synchronous_commit = off").map_err(spi_err)?;
            let load = store::load_page(sql, spec, body).map_err(spi_err)?;
            store::record_page(&Progress {
                run_id: spec.run_id,
                page: &load,
                requests: client.stats.requests as i64,
                retries: client.stats.retries as i64,
                bytes: client.stats.bytes as i64,
                checkpoint: checkpoint.clone(),
            })
            .map_err(spi_err)?;
            Ok(load)
        })
    };
    match attempt(fast) {
        Ok(l) => Ok(l),
        Err(first) => attempt(careful).map_err(|e| if e == first { e } else { format!("{e} (fast path: {first})") }),
    }
}
