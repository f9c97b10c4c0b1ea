//! A run's pages: producer threads fetch and prepare them (no PostgreSQL), the backend loads
//! each with its progress and checkpoint in one transaction, retrying a page whose fast load
//! failed; and one protocol step at a time on a helper thread.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pgrx::prelude::*;

use super::plan::{self, Mode, Start, Stop};
use super::{deletions, Flow, Setup, WorkerHost, MAX_PAGES};
use crate::bgw::tx;
use crate::encode::rows::{self, Encoding, PageRows};
use crate::error::{spi_err, Error};
use crate::loader::{Loader, PageLoad, PageSpec};
use crate::pacing_run::Lanes;
use crate::source::client::{CancelFlag, Pipeline, SourceClient, Stats};
use crate::source::config::{PagingMode, SourceOptions};
use crate::source::error::redact_url;
use crate::source::pacing::{Held, Sample};
use crate::source::page::{Fields, PageSummary};
use crate::source::paging::{KeyRange, Pager, SeenKeys, Step};
use crate::source::SourceError;
use crate::store::{self, Progress};

/// One key range (or the single offset walk) harvested page after page.
struct Stream {
    /// Position after the last page loaded (not the producer's, which runs ahead).
    pager: Pager,
    done: bool,
}

/// Loads key ranges (or the offset walk) page by page; `part` is set in a parallel run.
pub(super) fn load_ranges(
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
    let mut pipeline: Pipeline<Produced> = Pipeline::new(PAGES_AHEAD as usize * producers);
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
    // The keys an offset walk sees may prove others gone (`plan::sweep_refusal`).
    let sweeps = plan::may_sweep(setup.mode, o.paging);
    let mut seen = (sweeps && plan::keeps_seen_keys(&setup.start)).then(SeenKeys::new);
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
        let checkpoint = plan::checkpoint_json(streams.iter().map(|s| (&s.pager, s.done)), offset);
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
    deletions::after_offset_walk(run_id, &setup.cfg.name, seen, &view_totals, host)
}

/// Fetches a page through the run's gate, records what it took, and prepares its rows
/// (checked, encoded, hashed) after leaving the gate, all on the helper thread.
pub(super) fn fetch_rows(
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

/// Pages the producers may hold beyond the requests the run has in flight (`Gate::hold`): enough
/// to keep both sides busy, few enough to keep memory flat (a 1000-row page is a few MB).
const PAGES_AHEAD: u32 = 2;

/// A page of one key range, fetched and prepared by a producer thread.
struct Produced {
    /// The key range (index in the run's list).
    stream: usize,
    /// The producer that fetched it, and its client's transport counters after this page.
    producer: usize,
    stats: Stats,
    page: Result<Ready, SourceError>,
    /// The page's place among those the run holds, given back once it is loaded (dropped).
    _held: Option<Held>,
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
            // A cancel while waiting for room ends the range as a failed page does.
            let (held, page) = match job.lanes.gate.hold(PAGES_AHEAD, flag) {
                Ok(held) => {
                    (Some(held), fetch_rows(&mut job.client, &job.lanes, &params, &job.fields, job.encoding, flag))
                }
                Err(e) => (None, Err(e)),
            };
            let page = page.and_then(|(summary, rows)| {
                let step = pager.step_for(&summary).map_err(SourceError::Paging)?;
                let sweep = if job.full { pager.covered_range(&summary, &step) } else { None };
                pager.advance(&summary);
                Ok(Ready { rows, total: summary.total, sweep, pager: pager.clone(), done: step == Step::Done })
            });
            let (failed, done) = (page.is_err(), page.as_ref().is_ok_and(|r| r.done));
            let produced =
                Produced { stream, producer: job.producer, stats: job.client.stats.clone(), page, _held: held };
            if !emit(produced) || failed {
                return;
            }
            if done {
                break;
            }
        }
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

/// Loads a page with its progress row and checkpoint in one transaction.
pub(super) fn load_page(
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
