//! The harvest engine, run inside a background worker: it fetches each page outside any
//! transaction and loads it, with the run log progress and the checkpoint, in one transaction.
//! A crash therefore loses at most the page in flight, and other sessions watch `run_log` move.
//!
//! Wording: *setup* is the first transaction (lock the source, decide full or incremental,
//! create the run_log row); *pages* are then loaded one transaction each; *finish* records the
//! final status.
//!
//! This module holds the entry points and the order of a run's steps; `plan` the decisions
//! (pure), `pages` the producer pipeline and page loading, `split` the key ranges of a fresh
//! full run, `parts` parallel parts, `deletions` the offset sweep and the deletion log,
//! `metadata` the metadata export.

mod deletions;
mod metadata;
pub(crate) mod pages;
mod parts;
pub(crate) mod plan;
mod split;

use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;

use crate::bgw::tx;
use crate::error::{spi_err, Error, Reason, SqlState};
use crate::guc;
use crate::loader;
use crate::pacing_run::Pace;
use crate::reconcile_run;
use crate::source::client::{CancelFlag, Host, Pipeline, SourceClient, Stats};
use crate::source::clock;
use crate::source::config::{api_root, auth_from_parts, Auth, PagingMode, SourceConfig, SourceOptions};
use crate::source::error::Scrubber;
use crate::source::SourceError;
use crate::store::{self, RunStart};
use crate::window::{self, RunClock};

use pages::load_ranges;
pub use plan::Requested;
pub(crate) use plan::Stop;
use plan::{Facts, Mode, Ranges, Role, Start};

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

/// What a run (or a part) works with once set up: the source, the plan's mode and start, the
/// incremental window's start and PostGIS's schema.
struct Setup {
    cfg: SourceConfig,
    mode: Mode,
    since: Option<String>,
    postgis: String,
    start: Start,
}

/// The source as the engine uses it, checked again before each run: transport rules, and
/// `gn2pg.allowed_hosts` for sources registered by a role that is not a superuser (the list
/// may have narrowed since).
pub fn build_config(row: &store::SourceRow) -> Result<SourceConfig, SourceError> {
    let cfg = SourceConfig {
        name: row.name.clone(),
        api_root: api_root(&row.url)?,
        export_id: row.export_id,
        auth: auth_from_parts(&row.auth, row.login.as_deref(), row.password.as_deref(), row.token.as_deref())?,
        options: SourceOptions::from_json(&row.options)?,
    };
    cfg.check_transport()?;
    if row.restricted {
        if let Some(why) = crate::access::host_refusal(&cfg.api_root, "source URL") {
            return Err(SourceError::Config(format!(
                "{why} (the list changed since the source was registered by a role that is not a superuser); \
                 a superuser can allow it there, or register the source again"
            )));
        }
    }
    Ok(cfg)
}

/// Ok(None): the run does not start and leaves no record (another run holds the source, or it
/// was cancelled before it started).
fn setup(run_id: i64, name: &str, requested: Requested) -> Result<Option<Setup>, Error> {
    let unprepared = |m: String| Error::new(Reason::Config, SqlState::NOT_IN_PREREQUISITE_STATE, m);
    // Items are turned into jsonb from their UTF-8 text in Rust (encode::jsonb).
    // SAFETY: reads a backend-global set at connection.
    if unsafe { pg_sys::GetDatabaseEncoding() } != pg_sys::pg_enc::PG_UTF8 as i32 {
        return Err(unprepared("gn2pg needs a database with UTF8 encoding (CREATE DATABASE … ENCODING 'UTF8')".into()));
    }
    // After a package upgrade the library is new but the tables are not, until ALTER EXTENSION.
    let installed = store::extension_version().map_err(spi_err)?.unwrap_or_default();
    if installed != env!("CARGO_PKG_VERSION") {
        return Err(unprepared(format!(
            "the gn2pg library is version {} but this database has gn2pg {installed}: run ALTER EXTENSION gn2pg UPDATE",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let row = store::load_source(name).map_err(spi_err)?.ok_or_else(|| {
        Error::new(
            Reason::Config,
            SqlState::UNDEFINED_OBJECT,
            "the source does not exist (if it was added in the same transaction, commit first)",
        )
    })?;
    if !row.enabled {
        return Err(unprepared("the source is disabled".into()));
    }
    let cfg = build_config(&row)?;
    // The launcher claimed the source (launch.rs): this run is pending, or the caller of
    // gn2pg_harvest keeps the source's registry row until the run ends. Runs whose worker is
    // gone are closed first; a live one means a launch raced this one (nothing is recorded).
    store::abandon_dead_runs(Some(name), Some(run_id)).map_err(spi_err)?;
    if let Some(store::Busy::Run { id, .. }) = store::active_run(name, Some(run_id)).map_err(spi_err)? {
        pgrx::log!("gn2pg: run {run_id} of source \"{name}\" not started: run {id} holds the source");
        return Ok(None);
    }
    // Mappings changed since the last remap move already harvested rows first.
    let remapped = store::remap_if_pending(name).map_err(spi_err)?;
    if remapped > 0 {
        pgrx::log!("gn2pg: source \"{name}\": {remapped} harvested rows remapped to the current mappings");
    }
    let hist = store::history(name, run_id).map_err(spi_err)?;
    let login = matches!(cfg.auth, Auth::Login { .. });
    let plan = plan::decide(&Facts {
        requested,
        paging: cfg.options.paging,
        full_every_hours: plan::full_every_hours(cfg.options.full_every_hours, login, reconcile_run::reconciles(&cfg)),
        has_success: hist.has_success,
        last_full_ok: hist.last_full_ok,
        has_window: hist.max_source_action.is_some(),
        hours_since_full: hist.hours_since_full,
        interrupted_full: hist.resumable.as_ref().map(|(id, cp)| (*id, cp)),
    });
    let since = match plan.mode {
        Mode::Incremental => {
            let overlap = guc::incremental_overlap(&cfg.options).as_secs() as i64;
            window::since(name, run_id, overlap).map_err(spi_err)?
        }
        Mode::Full => None,
    };
    let paging = match cfg.options.paging {
        PagingMode::Keyset => "keyset",
        PagingMode::Offset => "offset",
    };
    let started = store::begin_run(&RunStart {
        run_id,
        resumed_from: plan.resumed_from,
        source: name,
        source_id: Some(row.id),
        mode: plan.mode.label(),
        paging: Some(paging),
        since: since.as_deref(),
    })
    .map_err(spi_err)?;
    if !started {
        pgrx::log!("gn2pg: run {run_id} of source \"{name}\" was cancelled before it started");
        return Ok(None);
    }
    let postgis =
        store::postgis_schema().map_err(|_| unprepared("PostGIS is not installed in this database".into()))?;
    Ok(Some(Setup { cfg, mode: plan.mode, since, postgis, start: plan.start }))
}

/// Entry point of a harvest worker once connected to its database.
pub fn execute(run_id: i64, name: &str, requested: Requested) {
    let setup = match tx(|| setup(run_id, name, requested)) {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(failed) => {
            let msg = format!("source \"{name}\": {}", failed.message);
            let recorded =
                tx(|| store::record_failed_start(run_id, name, requested.label(), &msg, &failed).map_err(spi_err));
            if let Err(e) = recorded {
                pgrx::warning!("gn2pg: run {run_id} of source \"{name}\" failed ({msg}) and could not be logged: {e}");
            }
            crate::alert::after_run();
            return;
        }
    };
    let host = WorkerHost;
    let limits = guc::limits(&setup.cfg.options);
    let mut client = match SourceClient::new(setup.cfg.clone(), limits) {
        Ok(c) => c,
        Err(e) => {
            finish(run_id, name, Err(Stop::from(e)), Stats::default(), &Scrubber::default());
            return;
        }
    };
    let pace = match Pace::start(&setup.cfg, &host) {
        Ok(p) => p,
        Err(stop) => {
            finish(run_id, name, Err(stop), Stats::default(), &client.scrubber());
            return;
        }
    };
    let mut flow = Flow { pace, totals: Totals::default() };
    let result = harvest(run_id, &setup, &mut client, &host, &mut flow, Role::Lead);
    flow.pace.record(run_id);
    // The GeoNature destination: CA/JDD refreshed, rows pending since earlier runs retried.
    let result = result.and_then(|()| match setup.cfg.options.destination {
        Some(_) => tx(|| loader::finish_destination(name, run_id).map_err(spi_err))
            .map_err(|e| Stop::Failed(e.context("GeoNature destination"))),
        None => Ok(()),
    });
    finish(run_id, name, result, flow.totals.sum(&client.stats), &client.scrubber());
}

/// Entry point of a part worker of a parallel run: loads its key range, records its end.
pub fn execute_part(run_id: i64, part: i32, name: &str) {
    let prepared = tx(|| {
        let row = store::load_source(name)
            .map_err(spi_err)?
            .ok_or_else(|| Error::new(Reason::Config, SqlState::UNDEFINED_OBJECT, "the source does not exist"))?;
        let cfg = build_config(&row)?;
        let postgis = store::postgis_schema().map_err(|_| {
            Error::new(Reason::Config, SqlState::NOT_IN_PREREQUISITE_STATE, "PostGIS is not installed in this database")
        })?;
        let range = store::part_range(run_id, part)
            .map_err(spi_err)?
            .ok_or_else(|| Error::internal(format!("run {run_id} has no part {part}")))?;
        Ok(Setup { cfg, mode: Mode::Full, since: None, postgis, start: Start::Ranges(vec![range]) })
    });
    let mut scrubber = Scrubber::default();
    let result = match prepared {
        Err(m) => Err(Stop::Failed(m)),
        Ok(setup) => match SourceClient::new(setup.cfg.clone(), guc::limits(&setup.cfg.options)) {
            Err(e) => Err(Stop::from(e)),
            Ok(mut client) => {
                let mut flow = Flow { pace: Pace::fixed(1), totals: Totals::default() };
                let r = harvest(run_id, &setup, &mut client, &WorkerHost, &mut flow, Role::Part(part));
                scrubber = client.scrubber();
                r
            }
        },
    };
    let (status, error) = ended(result, &scrubber);
    if let Err(e) = tx(|| store::finish_part(run_id, part, status, error.as_ref()).map_err(spi_err)) {
        pgrx::warning!("gn2pg: could not record the end of part {part} of run {run_id}: {e}");
    }
}

/// The status a run or part ends with, and its error with the source's secrets masked.
fn ended(result: Result<(), Stop>, scrubber: &Scrubber) -> (&'static str, Option<Error>) {
    let (status, error) = plan::ending(result);
    (status, error.map(|e| Error { message: scrubber.scrub(&e.message), ..e }))
}

/// Records the end of a run; its error goes through `scrubber` (the source's secrets).
fn finish(run_id: i64, name: &str, result: Result<(), Stop>, stats: Stats, scrubber: &Scrubber) {
    let (status, error) = ended(result, scrubber);
    // Stored texts name the source first (README, "Errors").
    let error = error.map(|e| e.context(format_args!("source \"{name}\"")));
    let s = stats;
    let recorded = tx(|| {
        store::finish_run(run_id, status, error.as_ref(), s.requests as i64, s.retries as i64, s.bytes as i64)
            .map_err(spi_err)
    });
    if let Err(e) = recorded {
        pgrx::warning!("gn2pg: could not record the end of run {run_id}: {e}");
        // What can still be recorded; if even this fails, the run stays 'running' with a
        // worker that is gone, and the next run or gn2pg_check_flows() marks it abandoned.
        let why = format!("source \"{name}\": the end of the run could not be recorded ({e}); it ended {status}");
        if let Err(e) = tx(|| store::finish_run_minimal(run_id, status, &why, error.as_ref()).map_err(spi_err)) {
            pgrx::warning!("gn2pg: run {run_id} stays 'running' until it is marked abandoned: {e}");
        }
    }
    // Alerts were recorded with the status (trigger on run_log); their webhooks go out now.
    crate::alert::after_run();
}

/// A run's streams: how many requests they may have in flight, and their transport counters.
struct Flow {
    pace: Pace,
    totals: Totals,
}

/// Transport counters of the stream clients, summed for the run log.
#[derive(Default)]
struct Totals {
    streams: Vec<Stats>,
}

impl Totals {
    fn sum(&self, base: &Stats) -> Stats {
        let mut t = base.clone();
        for s in &self.streams {
            t.requests += s.requests;
            t.retries += s.retries;
            t.bytes += s.bytes;
        }
        t
    }
}

/// A run's work in its worker (`role`): the clock and the metadata export (lead), its key
/// ranges (split, or shared with part workers), then deletions and the closing probe (lead).
fn harvest(
    run_id: i64,
    setup: &Setup,
    client: &mut SourceClient,
    host: &WorkerHost,
    flow: &mut Flow,
    role: Role,
) -> Result<(), Stop> {
    on_helper(client, host, |c, flag| c.prepare(flag))?;
    let clock = if role == Role::Lead { Some(start_clock(run_id, setup, client, host)?) } else { None };
    let o = &setup.cfg.options;
    if role == Role::Lead {
        if let Some(export_id) = o.metadata_export_id {
            metadata::harvest_metadata(run_id, setup, client, host, export_id)?;
        }
    }
    let ranges = match plan::ranges(&setup.start, setup.mode, role) {
        Ranges::Given(r) | Ranges::Whole(r) => r,
        Ranges::Split => split::split_full_run(run_id, setup, client, host, &flow.pace)?,
    };
    // Several workers: this one keeps range 0 and supervises one part worker per other range.
    let parallel = plan::in_parts(role, setup.mode, o.paging, o.workers, ranges.len())
        // gn2pg.max_harvest_workers leaves no room: this worker loads every range itself.
        && crate::bgw::room_for_parts(ranges.len() - 1);
    if parallel {
        let workers = parts::launch(run_id, &setup.cfg.name, &ranges)?;
        let result = load_ranges(run_id, setup, client, host, flow, &ranges[..1], Some(0));
        parts::supervise(run_id, result, workers, host, &client.scrubber())?;
    } else {
        let part = match role {
            Role::Part(k) => Some(k),
            Role::Lead => None,
        };
        load_ranges(run_id, setup, client, host, flow, &ranges, part)?;
    }
    let Some(clock) = clock else { return Ok(()) };
    deletions::from_log(run_id, setup, client, host)?;
    after_pages(run_id, setup, client, host, flow, clock)
}

/// The source's clock at the start of the run (its first answer's `Date`), recorded at once as
/// this run's window end from the evidence of recent runs: an interrupted run keeps it.
fn start_clock(run_id: i64, setup: &Setup, client: &mut SourceClient, host: &WorkerHost) -> Result<RunClock, Stop> {
    let date = match client.last_date.clone() {
        Some(d) => Some(d),
        None => on_helper(client, host, |c, flag| c.server_date(flag))?,
    };
    let started = date.as_deref().and_then(clock::parse_http_date);
    let offsets = tx(|| window::recent_offsets(&setup.cfg.name, run_id).map_err(spi_err)).map_err(Stop::Failed)?;
    let clock = RunClock { started, offsets };
    tx(|| window::record(run_id, clock.window_end(), None).map_err(spi_err)).map_err(Stop::Failed)?;
    Ok(clock)
}

/// After the pages: one request for the newest action of the export and its count. It shows
/// the source's clock (this run's window end, for the next window), and an incremental run of a
/// source without a deletion log then looks for deletions by range counts.
fn after_pages(
    run_id: i64,
    setup: &Setup,
    client: &mut SourceClient,
    host: &WorkerHost,
    flow: &mut Flow,
    mut clock: RunClock,
) -> Result<(), Stop> {
    let before = flow.totals.sum(&client.stats).requests;
    let (cfg, lanes) = (setup.cfg.clone(), flow.pace.lanes.clone());
    let probe = on_helper(client, host, move |c, flag| reconcile_run::probe(&cfg, c, &lanes, flag))?;
    let offset = match (&probe.newest, &probe.date) {
        (Some(newest), Some(date)) => clock::offset_evidence(newest, date),
        _ => None,
    };
    clock.offsets.extend(offset);
    tx(|| window::record(run_id, clock.window_end(), offset).map_err(spi_err)).map_err(Stop::Failed)?;
    if !plan::counts_deletions(setup.mode, reconcile_run::reconciles(&setup.cfg)) {
        return Ok(());
    }
    let counts = reconcile_run::plan(run_id, &setup.cfg, client, host, &mut flow.pace, &probe)?;
    if !counts.pages.is_empty() {
        let walk = Setup {
            cfg: setup.cfg.clone(),
            mode: Mode::Full,
            since: None,
            postgis: setup.postgis.clone(),
            start: Start::Ranges(counts.pages.clone()),
        };
        load_ranges(run_id, &walk, client, host, flow, &counts.pages, None)?;
    }
    let spent = flow.totals.sum(&client.stats).requests.saturating_sub(before);
    reconcile_run::record(run_id, &counts.label, spent as i64).map_err(Stop::Failed)
}

/// Runs one protocol step on a helper thread (see `Pipeline`), so the backend stays cancellable.
fn on_helper<T: Send + 'static>(
    client: &mut SourceClient,
    host: &WorkerHost,
    f: impl FnOnce(&mut SourceClient, &CancelFlag) -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    let mut step = Pipeline::new(1);
    let mut c = client.clone();
    step.spawn(move |flag, emit| {
        let r = f(&mut c, flag);
        emit((c, r));
    })?;
    let (c, r) =
        step.next(host)?.ok_or_else(|| SourceError::Paging("an HTTP thread ended without an answer".into()))?;
    *client = c;
    r
}
