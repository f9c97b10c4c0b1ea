//! The harvest engine, run inside a background worker: it fetches each page outside any
//! transaction and loads it, with the run log progress and the checkpoint, in one transaction.
//! A crash therefore loses at most the page in flight, and other sessions watch `run_log` move.
//!
//! Wording: *setup* is the first transaction (lock the source, decide full or incremental,
//! create the run_log row); *pages* are then loaded one transaction each; *finish* records the
//! final status.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::bgw::{self, tx};
use crate::encode::rows::{self, Encoding, PageRows};
use crate::error::{spi_err, Error, Reason, SqlState};
use crate::guc;
use crate::loader::{self, Loader, PageLoad, PageSpec};
use crate::pacing_run::{Lanes, Pace};
use crate::reconcile_run;
use crate::source::client::{CancelFlag, Host, Pipeline, SourceClient, Stats};
use crate::source::clock;
use crate::source::config::{api_root, auth_from_parts, Auth, PagingMode, SourceConfig, SourceOptions, Streams};
use crate::source::error::{redact_url, Scrubber};
use crate::source::pacing::Sample;
use crate::source::page::{parse_page, Fields, PageSummary, Shape};
use crate::source::paging::{split_key_space, KeyRange, Pager, SeenKeys, Step};
use crate::source::SourceError;
use crate::store::{self, Progress, RunStart};
use crate::window::{self, RunClock};

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
    pub fn label(self) -> &'static str {
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
pub(crate) enum Stop {
    Cancelled(String),
    Failed(Error),
}

impl From<SourceError> for Stop {
    fn from(e: SourceError) -> Stop {
        match e {
            SourceError::Cancelled(m) => Stop::Cancelled(m),
            other => Stop::Failed(other.into()),
        }
    }
}

impl Stop {
    /// The status a run (or part) stopped so ends with, and what it records.
    fn outcome(self) -> (&'static str, Error) {
        match self {
            Stop::Cancelled(m) => ("cancelled", Error::new(Reason::Cancelled, SqlState::QUERY_CANCELED, m)),
            Stop::Failed(e) => ("failed", e),
        }
    }
}

/// Hard bound on pages in one run (a billion rows at 1000 per page): a runaway source cannot
/// keep a worker busy forever.
const MAX_PAGES: u64 = 1_000_000;

/// Bound on pages of a metadata export (one item per acquisition framework).
const MAX_METADATA_PAGES: u64 = 10_000;

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

/// Where a run starts.
#[derive(Debug, Clone, PartialEq)]
enum Start {
    /// Keyset key ranges `[next, upper]` still to fetch (one per stream); empty = fresh start.
    Ranges(Vec<(i64, Option<i64>)>),
    /// Offset paging from this page index.
    Page(u64),
}

struct Setup {
    cfg: SourceConfig,
    mode: Mode,
    since: Option<String>,
    postgis: String,
    start: Start,
}

/// Auto mode runs a reconciling full harvest this often by default: login sources weekly
/// (rows can leave an export without being deleted: permissions, sensitivity, a filter change);
/// sources whose incremental runs reconcile by counts every 30 days, as a safety net; other
/// sources without a deletion log daily.
fn full_every_hours(cfg: &SourceConfig) -> u64 {
    cfg.options.full_every_hours.unwrap_or(match cfg.auth {
        Auth::Login { .. } => 24 * 7,
        _ if reconcile_run::reconciles(cfg) => 24 * 30,
        _ => 24,
    })
}

/// Reads a checkpoint written by `checkpoint_json`.
fn start_from_checkpoint(cp: &serde_json::Value) -> Option<Start> {
    if let Some(ranges) = cp.get("ranges").and_then(|r| r.as_array()) {
        let parsed: Option<Vec<(i64, Option<i64>)>> =
            ranges.iter().map(|r| Some((r.get(0)?.as_i64()?, r.get(1).and_then(|u| u.as_i64())))).collect();
        return parsed.filter(|v| !v.is_empty()).map(Start::Ranges);
    }
    cp.get("page_index").and_then(|p| p.as_u64()).filter(|p| *p > 0).map(Start::Page)
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
    // The launcher claimed the source (api.rs): this run is pending, or the caller of
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
    let incremental_possible = hist.has_success && hist.max_source_action.is_some();
    let every = full_every_hours(&cfg);
    let reconcile_due = every > 0 && hist.hours_since_full.is_none_or(|h| h >= every as f64);
    let mode = match requested {
        Requested::Full => Mode::Full,
        // Without a successful run there is no window to start from: a full run it is.
        Requested::Incremental if incremental_possible => Mode::Incremental,
        Requested::Auto if incremental_possible && hist.last_full_ok && !reconcile_due => Mode::Incremental,
        _ => Mode::Full,
    };
    let since = match mode {
        Mode::Incremental => {
            let overlap = guc::incremental_overlap(&cfg.options).as_secs() as i64;
            window::since(name, run_id, overlap).map_err(spi_err)?
        }
        Mode::Full => None,
    };
    // An interrupted full run is continued from its last committed page, not started over.
    let resume = match (mode, &hist.resumable) {
        (Mode::Full, Some((id, cp))) => start_from_checkpoint(cp).map(|st| (*id, st)),
        _ => None,
    };
    let start = match (&resume, cfg.options.paging) {
        (Some((_, st @ Start::Ranges(_))), PagingMode::Keyset) => st.clone(),
        (Some((_, st @ Start::Page(_))), PagingMode::Offset) => st.clone(),
        (_, PagingMode::Keyset) => Start::Ranges(vec![]),
        (_, PagingMode::Offset) => Start::Page(0),
    };
    let resumed_from = resume.as_ref().filter(|(_, st)| *st == start).map(|(id, _)| *id);
    let paging = match cfg.options.paging {
        PagingMode::Keyset => "keyset",
        PagingMode::Offset => "offset",
    };
    let started = store::begin_run(&RunStart {
        run_id,
        resumed_from,
        source: name,
        source_id: Some(row.id),
        mode: if mode == Mode::Full { "full" } else { "incremental" },
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
    Ok(Some(Setup { cfg, mode, since, postgis, start }))
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
    let (status, error) = match result {
        Ok(()) => ("success", None),
        Err(stop) => scrubbed(stop, &scrubber),
    };
    if let Err(e) = tx(|| store::finish_part(run_id, part, status, error.as_ref()).map_err(spi_err)) {
        pgrx::warning!("gn2pg: could not record the end of part {part} of run {run_id}: {e}");
    }
}

/// The status a stopped run or part ends with, and its error with the source's secrets masked.
fn scrubbed(stop: Stop, scrubber: &Scrubber) -> (&'static str, Option<Error>) {
    let (status, mut e) = stop.outcome();
    e.message = scrubber.scrub(&e.message);
    (status, Some(e))
}

/// Records the end of a run; its error goes through `scrubber` (the source's secrets).
fn finish(run_id: i64, name: &str, result: Result<(), Stop>, stats: Stats, scrubber: &Scrubber) {
    let (status, error) = match result {
        Ok(()) => ("success", None),
        Err(stop) => scrubbed(stop, scrubber),
    };
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

/// One key range (or the single offset walk) harvested page after page.
struct Stream {
    /// Position after the last page loaded (not the producer's, which runs ahead).
    pager: Pager,
    done: bool,
}

/// The ranges still to fetch, written with every page: a resumed run starts from here.
fn checkpoint_json(streams: &[Stream], offset: bool) -> serde_json::Value {
    if offset {
        let p = streams.first().map_or(0, |s| s.pager.page_index());
        return json!({ "page_index": p });
    }
    let ranges: Vec<serde_json::Value> =
        streams.iter().filter(|s| !s.done).map(|s| json!([s.pager.next_key(), s.pager.upper()])).collect();
    json!({ "ranges": ranges })
}

/// Largest key of the export, for splitting it into parallel streams (`orderby=<key>:DESC`).
fn max_key(client: &mut SourceClient, key: &str, host: &WorkerHost) -> Result<Option<i64>, SourceError> {
    let key = key.to_string();
    on_helper(client, host, move |c, flag| {
        let params = vec![
            ("limit".to_string(), "1".to_string()),
            ("offset".to_string(), "0".to_string()),
            ("orderby".to_string(), format!("{key}:DESC")),
        ];
        let body = c.fetch_export_page(&params, flag)?;
        Ok(parse_page(&body, &key, &c.page_limits()).ok().and_then(|p| p.max_key))
    })
}

/// Fetches a page through the run's gate, records what it took, and prepares its rows
/// (checked, encoded, hashed) after leaving the gate, all on the helper thread.
fn fetch_rows(
    c: &mut SourceClient,
    lanes: &Lanes,
    params: &[(String, String)],
    fields: &Fields,
    encoding: Encoding,
    flag: &CancelFlag,
) -> Result<(PageSummary, PageRows), SourceError> {
    let permit = lanes.gate.enter(flag)?;
    let (started, retries) = (Instant::now(), c.stats.retries);
    let body = c.fetch_export_page(params, flag);
    let finished = Instant::now();
    drop(permit);
    let trouble = c.stats.retries > retries || body.is_err();
    let prepared = body.and_then(|body| {
        rows::prepare(&body, fields, encoding, &c.page_limits())
            .map_err(|cause| SourceError::BadAnswer { url: redact_url(c.export_url(params).as_str()), cause })
    });
    let rows = prepared.as_ref().map_or(0, |(s, _)| s.len as u64);
    lanes.recorder.record(Sample { started, finished, rows, trouble });
    prepared
}

/// Pages a stream's producer may have ready before the backend takes them: enough to keep both
/// sides busy, few enough to keep memory flat (a 1000-row page is a few MB).
const PAGES_AHEAD: usize = 2;

/// A page of one key range, fetched and prepared by a producer thread.
struct Produced {
    /// The key range (index in the run's list).
    stream: usize,
    /// The producer that fetched it, and its client's transport counters after this page.
    producer: usize,
    stats: Stats,
    page: Result<Ready, SourceError>,
}

struct Ready {
    rows: PageRows,
    /// `count(*)` of the whole view at this request (docs/source-api.md §3.1).
    total: Option<u64>,
    /// The key range this page proves complete (keyset full runs).
    sweep: Option<KeyRange>,
    /// The stream's position after this page, for the checkpoint written with it.
    pager: Pager,
    done: bool,
}

/// What a producer needs; it never touches PostgreSQL. Producers take key ranges from a shared
/// queue, one at a time, and page through each; the gate bounds their requests in flight.
struct StreamJob {
    producer: usize,
    queue: Arc<Mutex<VecDeque<(usize, Pager)>>>,
    client: SourceClient,
    lanes: Lanes,
    window: Vec<(String, String)>,
    fields: Fields,
    encoding: Encoding,
    full: bool,
}

/// A producer: the pages of each range it takes in order, each request built from the previous
/// answer, until the queue is empty, a page fails, or the backend goes away.
fn produce(mut job: StreamJob, flag: &CancelFlag, emit: &dyn Fn(Produced) -> bool) {
    // Bounded: the queue only shrinks, and each range ends within MAX_PAGES pages.
    loop {
        let next = job.queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        let Some((stream, mut pager)) = next else { return };
        for _ in 0..=MAX_PAGES {
            let mut params = pager.params();
            params.extend(job.window.iter().cloned());
            let page = fetch_rows(&mut job.client, &job.lanes, &params, &job.fields, job.encoding, flag).and_then(
                |(summary, rows)| {
                    let step = pager.step_for(&summary).map_err(SourceError::Paging)?;
                    let sweep = if job.full { pager.covered_range(&summary, &step) } else { None };
                    pager.advance(&summary);
                    Ok(Ready { rows, total: summary.total, sweep, pager: pager.clone(), done: step == Step::Done })
                },
            );
            let (failed, done) = (page.is_err(), page.as_ref().is_ok_and(|r| r.done));
            let produced = Produced { stream, producer: job.producer, stats: job.client.stats.clone(), page };
            if !emit(produced) || failed {
                return;
            }
            if done {
                break;
            }
        }
    }
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

/// Which share of a run a worker loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The run's own worker: setup, its key range(s), the deletion log, the final status.
    Lead,
    /// A helper worker of a parallel run, loading one key range (`gn2pg.run_part`).
    Part(i32),
}

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
            harvest_metadata(run_id, setup, client, host, export_id)?;
        }
    }
    let offset = o.paging == PagingMode::Offset;
    let ranges: Vec<(i64, Option<i64>)> = match &setup.start {
        Start::Page(_) => vec![],
        Start::Ranges(r) if !r.is_empty() => r.clone(),
        Start::Ranges(_) if setup.mode == Mode::Full && role == Role::Lead => {
            split_full_run(run_id, setup, client, host, &flow.pace)?
        }
        Start::Ranges(_) => vec![(0, None)],
    };
    // Several workers: this one keeps range 0 and supervises one part worker per other range.
    let parallel = role == Role::Lead
        && setup.mode == Mode::Full
        && !offset
        && o.workers > 1
        && ranges.len() > 1
        && ranges.len() <= o.workers as usize
        // gn2pg.max_harvest_workers leaves no room: this worker loads every range itself.
        && bgw::room_for_parts(ranges.len() - 1);
    let mut parts = Vec::new();
    let (ranges, part) = if parallel {
        tx(|| store::create_parts(run_id, &ranges).map_err(spi_err)).map_err(Stop::Failed)?;
        for k in 1..ranges.len() {
            match bgw::launch_part(run_id, k as i32, &setup.cfg.name) {
                Ok(w) => parts.push(w),
                Err(e) => {
                    stop_parts(parts);
                    return Err(Stop::Failed(Error::new(Reason::Limit, SqlState::CONFIGURATION_LIMIT_EXCEEDED, e)));
                }
            }
        }
        (vec![ranges[0]], Some(0))
    } else {
        match role {
            Role::Part(k) => (ranges, Some(k)),
            Role::Lead => (ranges, None),
        }
    };
    let result = load_ranges(run_id, setup, client, host, flow, &ranges, part);
    if parallel {
        let result = match result {
            Ok(()) => wait_parts(run_id, parts, host),
            Err(e) => {
                stop_parts(parts);
                Err(e)
            }
        };
        let (status, error) = match result {
            Ok(()) => ("success", None),
            Err(stop) => scrubbed(stop, &client.scrubber()),
        };
        let _ = tx(|| store::finish_part(run_id, 0, status, error.as_ref()).map_err(spi_err));
        if let Some(e) = error {
            return Err(Stop::Failed(e));
        }
    } else {
        result?;
    }
    let Some(clock) = clock else { return Ok(()) };
    deletions(run_id, setup, client, host)?;
    after_pages(run_id, setup, client, host, flow, clock)
}

/// Pages of a keyset full run fetched as one piece per key range: how many ranges a fresh run
/// splits the key space into. One per worker or per fixed stream; with streams paced to the
/// source, pieces of about this many pages, which the streams take in turn.
const PIECE_PAGES: u64 = 16;

/// The key ranges of a fresh keyset full run. With streams paced to the source, its first page
/// is loaded first: it tells how large the export is, and only a large one is split (which
/// costs one more request, for its largest key).
fn split_full_run(
    run_id: i64,
    setup: &Setup,
    client: &mut SourceClient,
    host: &WorkerHost,
    pace: &Pace,
) -> Result<Vec<(i64, Option<i64>)>, Stop> {
    let o = &setup.cfg.options;
    let split = |client: &mut SourceClient, from: i64, n: u32| -> Result<Vec<(i64, Option<i64>)>, Stop> {
        Ok(match max_key(client, &o.key_column, host)? {
            Some(max) if n > 1 && max >= from => split_key_space(from, max, n),
            _ => vec![(from, None)],
        })
    };
    match (o.workers, o.streams) {
        (w, _) if w > 1 => split(client, 0, w),
        (_, Streams::Fixed(n)) if n > 1 => split(client, 0, n),
        (_, Streams::Auto) if pace.max() > 1 && o.paging == PagingMode::Keyset => {
            let Some((next, rows)) = first_page(run_id, setup, client, host, pace)? else { return Ok(vec![]) };
            let pages = rows.unwrap_or(0) / u64::from(o.page_size.max(1));
            let pieces = (pages / PIECE_PAGES).clamp(1, 4 * u64::from(pace.max())) as u32;
            if pieces > 1 {
                split(client, next, pieces)
            } else {
                Ok(vec![(next, None)])
            }
        }
        _ => Ok(vec![(0, None)]),
    }
}

/// The columns of an item the engine reads, from the source's options.
pub(crate) fn fields_of(o: &SourceOptions) -> Fields {
    Fields {
        key: o.key_column.clone(),
        uuid: o.uuid_column.clone(),
        wkt: o.wkt_column.clone(),
        updated: o.updated_column.clone(),
    }
}

/// The first page of a fresh keyset full run, fetched and loaded on its own. Returns where the
/// rest starts and the export's size, or None when this page was all of it.
fn first_page(
    run_id: i64,
    setup: &Setup,
    client: &mut SourceClient,
    host: &WorkerHost,
    pace: &Pace,
) -> Result<Option<(i64, Option<u64>)>, Stop> {
    let o = &setup.cfg.options;
    let loader = tx(|| Loader::prepare(&setup.postgis).map_err(spi_err)).map_err(Stop::Failed)?;
    let mut pager = Pager::new(PagingMode::Keyset, &o.key_column, o.page_size, 0, 0);
    let (params, lanes, encoding) = (pager.params(), pace.lanes.clone(), loader.encoding);
    let fields = fields_of(o);
    let waited = Instant::now();
    let (summary, rows) =
        on_helper(client, host, move |c, flag| fetch_rows(c, &lanes, &params, &fields, encoding, flag))?;
    let source_wait_ms = waited.elapsed().as_millis() as i64;
    let step = pager.step_for(&summary).map_err(SourceError::Paging)?;
    let sweep = pager.covered_range(&summary, &step);
    pager.advance(&summary);
    let done = step == Step::Done;
    let rest = if done { json!({ "ranges": [] }) } else { json!({ "ranges": [[pager.next_key(), null]] }) };
    let spec = PageSpec { source: &setup.cfg.name, run_id, key_column: &o.key_column, sweep };
    load_page(&loader, &spec, &rows, &client.stats, source_wait_ms, rest, None)
        .map_err(|e| Stop::Failed(e.context("page 1 could not be loaded")))?;
    Ok((!done).then(|| (pager.next_key(), summary.total_filtered.or(summary.total))))
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
    if setup.mode != Mode::Incremental || !reconcile_run::reconciles(&setup.cfg) {
        return Ok(());
    }
    let plan = reconcile_run::plan(run_id, &setup.cfg, client, host, &mut flow.pace, &probe)?;
    if !plan.pages.is_empty() {
        let walk = Setup {
            cfg: setup.cfg.clone(),
            mode: Mode::Full,
            since: None,
            postgis: setup.postgis.clone(),
            start: Start::Ranges(plan.pages.clone()),
        };
        load_ranges(run_id, &walk, client, host, flow, &plan.pages, None)?;
    }
    let spent = flow.totals.sum(&client.stats).requests.saturating_sub(before);
    reconcile_run::record(run_id, &plan.label, spent as i64).map_err(Stop::Failed)
}

fn stop_parts(parts: Vec<pgrx::bgworkers::DynamicBackgroundWorker>) {
    for p in parts {
        let _ = p.terminate();
    }
}

/// Waits for the part workers of a parallel run; the first failure fails the run.
fn wait_parts(
    run_id: i64,
    parts: Vec<pgrx::bgworkers::DynamicBackgroundWorker>,
    host: &WorkerHost,
) -> Result<(), Stop> {
    use pgrx::bgworkers::BackgroundWorkerStatus;
    // Bounded by the parts themselves: each turn sleeps on the latch, which the postmaster sets
    // when a part stops (bgw_notify_pid).
    loop {
        if let Err(e) = host.check_interrupts() {
            stop_parts(parts);
            return Err(e.into());
        }
        let statuses = tx(|| store::parts_status(run_id).map_err(spi_err)).map_err(Stop::Failed)?;
        if let Some(p) = statuses.iter().find(|p| p.status == "failed" || p.status == "cancelled") {
            stop_parts(parts);
            let failed = p.error.clone().unwrap_or_else(|| Error::internal("stopped"));
            return Err(Stop::Failed(failed.context(format_args!("part {}", p.part))));
        }
        if statuses.iter().all(|p| p.status == "success") {
            return Ok(());
        }
        let stopped = parts.iter().all(|p| matches!(p.pid(), Err(BackgroundWorkerStatus::Stopped)));
        if stopped {
            // Every part process ended, yet one did not record an end: it died.
            let statuses = tx(|| store::parts_status(run_id).map_err(spi_err)).map_err(Stop::Failed)?;
            if let Some(p) = statuses.iter().find(|p| p.status == "running") {
                return Err(Stop::Failed(Error::internal(format!(
                    "the worker of part {} exited without finishing (see the server log)",
                    p.part
                ))));
            }
            continue;
        }
        BackgroundWorker::wait_latch(Some(Duration::from_millis(200)));
    }
}

/// Loads key ranges (or the offset walk) page by page; `part` is set in a parallel run.
fn load_ranges(
    run_id: i64,
    setup: &Setup,
    client: &mut SourceClient,
    host: &WorkerHost,
    flow: &mut Flow,
    ranges: &[(i64, Option<i64>)],
    part: Option<i32>,
) -> Result<(), Stop> {
    let Flow { pace, totals } = flow;
    let o = &setup.cfg.options;
    let offset = o.paging == PagingMode::Offset;
    let mut streams: Vec<Stream> = match setup.start {
        Start::Page(p) => vec![Stream { pager: Pager::new(o.paging, &o.key_column, o.page_size, 0, p), done: false }],
        Start::Ranges(_) => ranges
            .iter()
            .map(|(lo, hi)| Stream {
                pager: Pager::new(o.paging, &o.key_column, o.page_size, *lo, 0).with_upper(*hi),
                done: false,
            })
            .collect(),
    };
    let producers = pace.producers(streams.len());
    totals.streams = vec![Stats::default(); producers];
    let loader = tx(|| Loader::prepare(&setup.postgis).map_err(spi_err)).map_err(Stop::Failed)?;
    let window: Vec<(String, String)> = match &setup.since {
        Some(since) => vec![(format!("filter_d_up_{}", o.updated_column), since.clone())],
        None => vec![],
    };
    let fields = fields_of(o);
    // Producers take the ranges in turn, fetch and prepare ahead, as many requests in flight
    // as the gate lets through; PostgreSQL work stays on this thread.
    let queue: VecDeque<(usize, Pager)> = streams.iter().enumerate().map(|(i, s)| (i, s.pager.clone())).collect();
    let queue = Arc::new(Mutex::new(queue));
    let mut pipeline: Pipeline<Produced> = Pipeline::new(PAGES_AHEAD * producers);
    for producer in 0..producers {
        let mut c = client.clone();
        c.stats = Stats::default();
        let job = StreamJob {
            producer,
            queue: queue.clone(),
            client: c,
            lanes: pace.lanes.clone(),
            window: window.clone(),
            fields: fields.clone(),
            encoding: loader.encoding,
            full: setup.mode == Mode::Full,
        };
        pipeline.spawn(move |flag, emit| produce(job, flag, emit))?;
    }
    // An offset walk proves nothing page by page; a complete one, started at the first page,
    // over a view whose size did not change meanwhile, proves that the keys it did not see are
    // gone (a view that changes shifts rows between pages, and the walk can miss some).
    let sweeps = offset && setup.mode == Mode::Full;
    let mut seen = (sweeps && setup.start == Start::Page(0)).then(SeenKeys::new);
    let mut view_totals: Vec<Option<u64>> = Vec::new();
    let mut pages = 0u64;
    loop {
        let waited = Instant::now();
        let Some(produced) = pipeline.next(host)? else { break };
        let source_wait_ms = waited.elapsed().as_millis() as i64;
        let i = produced.stream;
        totals.streams[produced.producer] = produced.stats;
        let ready = produced.page?;
        streams[i].pager = ready.pager;
        streams[i].done = ready.done;
        pages += 1;
        if pages > MAX_PAGES {
            return Err(Stop::Failed(Error::limit(format!("more than {MAX_PAGES} pages: stopping a runaway run"))));
        }
        let spec = PageSpec { source: &setup.cfg.name, run_id, key_column: &o.key_column, sweep: ready.sweep };
        let checkpoint = checkpoint_json(&streams, offset);
        let position =
            part.map(|p| store::PartPosition { part: p, next_key: streams[i].pager.next_key(), done: streams[i].done });
        let stats = totals.sum(&client.stats);
        load_page(&loader, &spec, &ready.rows, &stats, source_wait_ms, checkpoint, position)
            .map_err(|e| Stop::Failed(e.context(format_args!("page {pages} could not be loaded"))))?;
        if let Some(seen) = seen.as_mut() {
            ready.rows.keys.iter().for_each(|k| seen.add(*k));
            if !view_totals.contains(&ready.total) {
                view_totals.push(ready.total);
            }
        }
        pace.tick(run_id).map_err(Stop::Failed)?;
    }
    // The producers are done: their counters join the run's, for the passes that follow.
    client.stats = totals.sum(&client.stats);
    totals.streams.clear();
    if let Some(i) = streams.iter().position(|s| !s.done) {
        return Err(Stop::Failed(Error::internal(format!("stream {i} stopped before the end of its key range"))));
    }
    if !sweeps {
        return Ok(());
    }
    let why_not = match (seen, view_totals.as_slice()) {
        (Some(seen), [Some(_)]) => return sweep_unseen(run_id, &setup.cfg.name, &seen.finish(), host),
        (None, _) => "it resumed an interrupted walk".to_string(),
        (Some(_), [None]) => "the source does not report the size of the view (total)".to_string(),
        (Some(_), totals) => format!(
            "the view changed size during the walk (total: {})",
            totals.iter().map(|t| t.map_or("none".into(), |t| t.to_string())).collect::<Vec<_>>().join(", ")
        ),
    };
    pgrx::log!(
        "gn2pg: run {run_id} of source \"{}\" did not remove rows gone from the source: {why_not}; a later complete offset walk or a keyset run will",
        setup.cfg.name
    );
    Ok(())
}

/// Stored keys read per transaction when sweeping after an offset walk.
const SWEEP_BATCH: i64 = 50_000;

/// After a complete offset walk: deletes the source's stored rows whose keys the walk did not
/// receive, a batch of keys per transaction.
fn sweep_unseen(run_id: i64, source: &str, seen: &SeenKeys, host: &WorkerHost) -> Result<(), Stop> {
    let mut after = i64::MIN;
    // Bounded: each turn moves past SWEEP_BATCH stored keys, or ends.
    for _ in 0..=(MAX_PAGES * 1000 / SWEEP_BATCH as u64) {
        host.check_interrupts()?;
        let done = tx(|| {
            let keys = loader::stored_keys_after(source, after, SWEEP_BATCH).map_err(spi_err)?;
            let gone: Vec<i64> = keys.iter().copied().filter(|k| !seen.contains(*k)).collect();
            if !gone.is_empty() {
                loader::delete_keys(source, run_id, &gone).map_err(spi_err)?;
            }
            after = keys.last().copied().unwrap_or(i64::MAX);
            Ok((keys.len() as i64) < SWEEP_BATCH)
        })
        .map_err(|e: Error| Stop::Failed(e.context("removing rows gone from the source")))?;
        if done {
            return Ok(());
        }
    }
    Err(Stop::Failed(Error::limit("removing rows gone from the source: too many stored rows")))
}

/// Deletions of an incremental run of a login source, from the deletion log.
fn deletions(run_id: i64, setup: &Setup, client: &mut SourceClient, host: &WorkerHost) -> Result<(), Stop> {
    if setup.mode != Mode::Incremental || !matches!(setup.cfg.auth, Auth::Login { .. }) {
        return Ok(());
    }
    let Some(since) = setup.since.clone() else { return Ok(()) };
    match on_helper(client, host, move |c, flag| c.fetch_deletions(&since, flag)) {
        Ok(ids) if !ids.is_empty() => {
            tx(|| loader::delete_keys(&setup.cfg.name, run_id, &ids).map_err(spi_err)).map_err(Stop::Failed)?;
        }
        Ok(_) => {}
        // GeoNature < 2.12 has no deletion log; full runs still reconcile deletions.
        Err(SourceError::NotFound { .. }) => {
            pgrx::log!(
                "gn2pg: source \"{}\" has no /synthese/log; deletions wait for the next full run",
                setup.cfg.name
            );
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The metadata export (`options.metadata_export_id`: one row per CA with its datasets) is
/// small, so every run reads it in full, before the data, into gn2pg.metadata.
fn harvest_metadata(
    run_id: i64,
    setup: &Setup,
    client: &mut SourceClient,
    host: &WorkerHost,
    export_id: i32,
) -> Result<(), Stop> {
    let o = &setup.cfg.options;
    let key = o.metadata_key_column.as_str();
    let failed = |e: Error| Stop::Failed(e.context(format_args!("metadata export {export_id}")));
    let mut pager = Pager::new(o.paging, key, o.page_size, 0, 0);
    let sql = loader::load_metadata_page_sql();
    for _ in 0..MAX_METADATA_PAGES {
        host.check_interrupts()?;
        let params = pager.params();
        let fetch_params = params.clone();
        let fetched = on_helper(client, host, move |c, flag| c.fetch_other_export_page(export_id, &fetch_params, flag));
        let body = fetched.map_err(|e| match e {
            SourceError::Cancelled(m) => Stop::Cancelled(m),
            other => failed(other.into()),
        })?;
        let summary = parse_page(&body, key, &client.page_limits()).map_err(|cause| {
            let url = redact_url(client.other_export_url(export_id, &params).as_str());
            failed(SourceError::BadAnswer { url, cause }.into())
        })?;
        let step = pager.step_for(&summary).map_err(|m| failed(SourceError::Paging(m).into()))?;
        pager.advance(&summary);
        let spec = loader::MetadataPageSpec {
            source: &setup.cfg.name,
            run_id,
            key_column: key,
            feature_collection: summary.shape == Shape::FeatureCollection,
        };
        let s = &client.stats;
        tx(|| {
            let load = loader::load_metadata_page(&sql, &spec, &body).map_err(spi_err)?;
            pgrx::debug1!(
                "gn2pg: run {run_id}: metadata page: {} items, {} CA/JDD rows written, {} rejected",
                load.received,
                load.written,
                load.failed
            );
            store::record_metadata_page(run_id, load.failed, s.requests as i64, s.retries as i64, s.bytes as i64)
                .map_err(spi_err)
        })
        .map_err(|e| failed(e.context("page could not be loaded")))?;
        if step == Step::Done {
            return Ok(());
        }
    }
    Err(failed(Error::limit(format!("more than {MAX_METADATA_PAGES} pages"))))
}

/// Loads a page with its progress row and checkpoint in one transaction.
fn load_page(
    loader: &Loader,
    spec: &PageSpec,
    page: &PageRows,
    stats: &Stats,
    source_wait_ms: i64,
    checkpoint: serde_json::Value,
    part: Option<store::PartPosition>,
) -> Result<PageLoad, Error> {
    let attempt = |careful: bool| {
        tx(|| {
            // A lost commit loses a page that the next run fetches again.
            Spi::run("SET LOCAL synchronous_commit = off").map_err(spi_err)?;
            // The loader's statements are all driven by the page's keys: their generic plans
            // (index lookups per key) suit any table size, whereas a custom plan for a 1000-key
            // array can pick a hash join over the whole table while it is still small, and
            // replans every page.
            Spi::run("SET LOCAL plan_cache_mode = force_generic_plan").map_err(spi_err)?;
            let load = loader.load(spec, page, careful).map_err(spi_err)?;
            store::record_page(&Progress {
                run_id: spec.run_id,
                part,
                page: &load,
                requests: stats.requests as i64,
                retries: stats.retries as i64,
                bytes: stats.bytes as i64,
                source_wait_ms,
                checkpoint: checkpoint.clone(),
            })
            .map_err(spi_err)?;
            Ok(load)
        })
    };
    let first = match attempt(false) {
        Ok(l) => return Ok(l),
        Err(e) if loader.uuid_unique => e,
        Err(e) => return Err(e),
    };
    // A uuid stored under another key: the careful load reports that row and loads the others.
    // Another source harvested at the same time may still hold uncommitted rows with the same
    // uuids (or a deadlock may pick this page): a few careful attempts see them committed.
    let mut last = first.clone();
    for _ in 0..CAREFUL_ATTEMPTS {
        match attempt(true) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(if last == first {
        last
    } else {
        let message = format!("{} (first attempt: {})", last.message, first.message);
        Error { message, ..last }
    })
}

/// Careful loads of a page whose fast load failed.
const CAREFUL_ATTEMPTS: usize = 3;
