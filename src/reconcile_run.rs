//! Reconciliation on the backend side (the planner is `source::reconcile`): after the pages of
//! an incremental run, the probe of the whole export, the local counts and keys the planner
//! asks for, the count requests (concurrent, within the run's streams), and the local rows of
//! ranges proven empty. The ranges left to page through go back to the engine, which pages them
//! like a keyset full run (each page deletes the local keys of its range it does not hold).
//!
//! Which method a run used, and why, goes to `run_log.reconcile`:
//! - `counts`: bisection by range counts;
//! - `pages: ...`: `total_filtered` is capped at the page size (GeoNature 2.13.0,
//!   2.16.0-2.16.2), so ranges of at most one page are paged; or nothing was deleted according
//!   to the view's `total`;
//! - `sweep: <why>`: no usable count, or the export holds rows gn2pg cannot see (a
//!   FeatureCollection drops rows without geometry but counts them): every page.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pgrx::prelude::*;

use crate::bgw::tx;
use crate::encode::rows::{self, timestamp_text, Encoding};
use crate::error::{spi_err, Error, Reason, SqlState};
use crate::loader;
use crate::pacing_run::{Lanes, Pace};
use crate::run::plan::Stop;
use crate::source::client::{CancelFlag, Host, Pipeline, SourceClient, Stats};
use crate::source::config::{Auth, PagingMode, SourceConfig};
use crate::source::error::redact_url;
use crate::source::pacing::Sample;
use crate::source::page::parse_page;
use crate::source::reconcile::{counting, join_adjacent, one_page_ranges, CountAnswer, Counting, Planner, Range, Task};
use crate::source::SourceError;

type SpiResult<T> = Result<T, pgrx::spi::Error>;

/// Bound on planning rounds: each round goes one level down the bisection (at most 64).
const MAX_ROUNDS: usize = 1000;
/// Stored keys deleted per transaction when a range is proven empty.
const CLEAR_BATCH: i64 = 50_000;

/// Whether incremental runs of a source look for deletions by counts: by default the sources
/// without a deletion log (token, public), and only with keyset paging (ranges are key ranges).
pub fn reconciles(cfg: &SourceConfig) -> bool {
    let o = &cfg.options;
    o.paging == PagingMode::Keyset && o.reconcile.unwrap_or(!matches!(cfg.auth, Auth::Login { .. }))
}

/// What the probe of the whole export answered, once the run's pages were loaded.
pub struct Probe {
    pub answer: CountAnswer,
    /// The newest action of the export (source clock), if the export sorts by it.
    pub newest: Option<String>,
    /// The answer's HTTP `Date`.
    pub date: Option<String>,
}

fn count_params(key: &str, r: Range, order: String) -> Vec<(String, String)> {
    let mut p = vec![
        ("limit".to_string(), "1".to_string()),
        ("offset".to_string(), "0".to_string()),
        ("orderby".to_string(), order),
        (format!("filter_n_up_{key}"), r.lo.to_string()),
    ];
    if let Some(hi) = r.upper() {
        p.push((format!("filter_n_lo_{key}"), hi.to_string()));
    }
    p
}

/// One request through the run's gate, recorded (`units`: what it brought, for the pacer).
fn gated(
    c: &mut SourceClient,
    lanes: &Lanes,
    params: &[(String, String)],
    flag: &dyn Host,
) -> Result<String, SourceError> {
    let permit = lanes.gate.enter(flag)?;
    let started = Instant::now();
    let retries = c.stats.retries;
    let body = c.fetch_export_page(params, flag);
    let finished = Instant::now();
    drop(permit);
    let trouble = c.stats.retries > retries || body.is_err();
    lanes.recorder.record(Sample { started, finished, rows: 1, trouble });
    body
}

/// The newest action of the export, with its count: `orderby=<updated>:DESC&limit=1`. An
/// export that cannot sort by it (another view, an old server) is counted in key order, and
/// then shows nothing of the source's clock.
pub fn probe(cfg: &SourceConfig, c: &mut SourceClient, lanes: &Lanes, flag: &CancelFlag) -> Result<Probe, SourceError> {
    let o = &cfg.options;
    let fields = crate::run::pages::fields_of(o);
    let keyset = o.paging == PagingMode::Keyset;
    let params = |order: String| {
        let mut p = count_params(&o.key_column, Range::ALL, order);
        if !keyset {
            p.retain(|(k, _)| !k.starts_with("filter_n_"));
        }
        p
    };
    let by_time = params(format!("{}:DESC", o.updated_column));
    match gated(c, lanes, &by_time, flag) {
        Ok(body) => {
            let date = c.last_date.clone();
            let (summary, page) =
                rows::prepare(&body, &fields, Encoding { compress: false, fast_geometry: false }, &c.page_limits())
                    .map_err(|cause| SourceError::BadAnswer {
                        url: redact_url(c.export_url(&by_time).as_str()),
                        cause,
                    })?;
            Ok(Probe { answer: answer_of(&summary), newest: page.max_updated.map(timestamp_text), date })
        }
        Err(e @ (SourceError::Cancelled(_) | SourceError::Connect { .. } | SourceError::Timeout { .. })) => Err(e),
        Err(first) => {
            let by_key = params(o.key_column.clone());
            let body = gated(c, lanes, &by_key, flag).map_err(|e| match e {
                SourceError::Cancelled(_) => e,
                e => SourceError::Paging(format!("{e} (and in order of {}: {first})", o.updated_column)),
            })?;
            let summary = parse_page(&body, &o.key_column, &c.page_limits())
                .map_err(|cause| SourceError::BadAnswer { url: redact_url(c.export_url(&by_key).as_str()), cause })?;
            pgrx::debug1!("gn2pg: source \"{}\": the export does not sort by {}: {first}", cfg.name, o.updated_column);
            Ok(Probe { answer: answer_of(&summary), newest: None, date: None })
        }
    }
}

fn answer_of(s: &crate::source::page::PageSummary) -> CountAnswer {
    CountAnswer { total_filtered: s.total_filtered, items: s.len, total: s.total }
}

/// What reconciliation leaves to the engine: ranges to page, and how it was decided.
pub struct Plan {
    pub pages: Vec<(i64, Option<i64>)>,
    pub label: String,
}

/// Plans the reconciliation of `source` from the probe: counts, splits and clears are done
/// here; the ranges to page through are returned.
pub fn plan(
    run_id: i64,
    cfg: &SourceConfig,
    client: &mut SourceClient,
    host: &dyn Host,
    pace: &mut Pace,
    probe: &Probe,
) -> Result<Plan, Stop> {
    let name = cfg.name.as_str();
    let limit = cfg.options.page_size.clamp(1, 1000);
    let local = stored_count(name, cfg, probe)?;
    // Pieces of one row less than a page: a piece nothing was deleted from still ends on a short
    // page, in one request.
    let piece = i64::from(limit.saturating_sub(1).max(1));
    let pages_of = |range: Range| -> Result<Vec<Range>, Stop> {
        let keys = tx(|| local_keys_every(name, range, piece).map_err(spi_err)).map_err(Stop::Failed)?;
        Ok(one_page_ranges(range, &keys))
    };
    let (ranges, label) = match counting(&probe.answer) {
        Counting::Unusable(why) => (pages_of(Range::ALL)?, format!("sweep: {why}")),
        Counting::Capped => {
            const CAPPED: &str = "pages: total_filtered is capped at the page size (GeoNature 2.13.0, 2.16.0-2.16.2)";
            // The view's total is exact on every version: equal to what is stored, nothing left.
            if cfg.options.query.is_empty() && probe.answer.total == Some(local) {
                (vec![], format!("{CAPPED}; the view's total shows no deletion"))
            } else {
                (pages_of(Range::ALL)?, format!("{CAPPED}: ranges of one page"))
            }
        }
        Counting::Exact => {
            let source = probe.answer.total_filtered.unwrap_or(0);
            let mut planner = Planner::new(limit, Range::ALL, local, source, probe.answer.items == 0);
            let mut leaves = Vec::new();
            let mut rounds = 0;
            pace.new_phase();
            loop {
                rounds += 1;
                if rounds > MAX_ROUNDS {
                    // The source's counts contradict each other.
                    let e = Error::new(Reason::Protocol, SqlState::DATA_EXCEPTION, "reconciliation did not converge");
                    return Err(Stop::Failed(e));
                }
                host.check_interrupts()?;
                let tasks = planner.tasks();
                if tasks.is_empty() {
                    break;
                }
                let mut counts = Vec::new();
                for t in tasks {
                    match t {
                        Task::Count { node, range } => counts.push((node, range)),
                        Task::Split { node, range, rank } => {
                            let key = tx(|| local_key_at(name, range, rank).map_err(spi_err)).map_err(Stop::Failed)?;
                            planner.split_at(node, key);
                        }
                        Task::Clear(range) => clear(run_id, name, range, host)?,
                        Task::Page(range) => leaves.push(range),
                    }
                }
                for (node, answer) in count_all(run_id, cfg, client, host, pace, counts)? {
                    planner.counted(node, &answer);
                }
            }
            let whole = leaves.contains(&Range::ALL);
            // A large range to page goes in pieces of one page, which streams share.
            let mut ranges = Vec::new();
            for r in join_adjacent(leaves) {
                if tx(|| local_count(name, r).map_err(spi_err)).map_err(Stop::Failed)? > piece as u64 {
                    ranges.extend(pages_of(r)?);
                } else {
                    ranges.push(r);
                }
            }
            let label = match &planner.anomaly {
                Some(a) if whole => {
                    format!("sweep: the export counts rows gn2pg does not hold ({a}): rows without geometry?")
                }
                Some(a) => format!("counts; more rows at the source than stored, paged ({a})"),
                None => "counts".to_string(),
            };
            (ranges, label)
        }
    };
    pace.new_phase();
    Ok(Plan { pages: ranges.iter().map(|r| (r.lo, r.upper())).collect(), label })
}

enum Counted {
    Answer(usize, Result<CountAnswer, SourceError>),
    Done(Stats),
}

/// Count requests of one planning round, concurrently within the run's streams.
fn count_all(
    run_id: i64,
    cfg: &SourceConfig,
    client: &mut SourceClient,
    host: &dyn Host,
    pace: &mut Pace,
    counts: Vec<(usize, Range)>,
) -> Result<Vec<(usize, CountAnswer)>, Stop> {
    if counts.is_empty() {
        return Ok(vec![]);
    }
    let wanted = counts.len();
    let producers = pace.producers(wanted);
    let queue = Arc::new(Mutex::new(VecDeque::from(counts)));
    let mut pipeline: Pipeline<Counted> = Pipeline::new(2 * producers);
    for _ in 0..producers {
        let (queue, lanes, key) = (queue.clone(), pace.lanes.clone(), cfg.options.key_column.clone());
        let mut c = client.clone();
        c.stats = Stats::default();
        pipeline.spawn(move |flag, emit| {
            // Bounded by the queue, which only shrinks.
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some((node, range)) = next else { break };
                let params = count_params(&key, range, key.clone());
                let answer = gated(&mut c, &lanes, &params, flag).and_then(|body| {
                    parse_page(&body, &key, &c.page_limits()).map(|s| answer_of(&s)).map_err(|cause| {
                        SourceError::BadAnswer { url: redact_url(c.export_url(&params).as_str()), cause }
                    })
                });
                let failed = answer.is_err();
                if !emit(Counted::Answer(node, answer)) || failed {
                    return;
                }
            }
            emit(Counted::Done(c.stats.clone()));
        })?;
    }
    let mut out = Vec::with_capacity(wanted);
    while let Some(msg) = pipeline.next(host)? {
        match msg {
            Counted::Answer(node, answer) => {
                out.push((node, answer?));
                pace.tick(run_id).map_err(Stop::Failed)?;
            }
            Counted::Done(s) => {
                client.stats.requests += s.requests;
                client.stats.retries += s.retries;
                client.stats.bytes += s.bytes;
            }
        }
    }
    if out.len() != wanted {
        let missing = wanted - out.len();
        return Err(Stop::Failed(Error::internal(format!("{missing} of {wanted} count requests got no answer"))));
    }
    Ok(out)
}

/// Deletes every local row of a range the source proved empty, a batch per transaction.
fn clear(run_id: i64, source: &str, range: Range, host: &dyn Host) -> Result<(), Stop> {
    let mut after = range.lo.saturating_sub(1);
    // Bounded: each turn moves past CLEAR_BATCH stored keys, or ends.
    loop {
        host.check_interrupts()?;
        let done = tx(|| {
            let keys = loader::stored_keys_after(source, after, CLEAR_BATCH).map_err(spi_err)?;
            let inside: Vec<i64> = keys.iter().copied().filter(|k| *k <= range.hi).collect();
            if !inside.is_empty() {
                loader::delete_keys(source, run_id, &inside).map_err(spi_err)?;
            }
            after = keys.last().copied().unwrap_or(i64::MAX);
            Ok(inside.len() < keys.len() || (keys.len() as i64) < CLEAR_BATCH || after >= range.hi)
        })
        .map_err(|e: Error| Stop::Failed(e.context("removing rows deleted at the source")))?;
        if done {
            return Ok(());
        }
    }
}

/// The rows stored for a source. Counting them scans the source's rows (0.3-0.4 s at a million,
/// most of an incremental run); gn2pg.observation_count holds the same number, kept by the
/// loader's INSERT and statement triggers in the transactions that write the rows, so it is exact
/// under one snapshot and costs a lookup per (CA, JDD). It is trusted only to say what almost
/// every run finds, that nothing is missing: whenever it differs from the source's count the rows
/// are counted, and a count table found wrong (rows inserted by hand, or changed with triggers
/// disabled) is rebuilt, with a WARNING.
fn stored_count(name: &str, cfg: &SourceConfig, probe: &Probe) -> Result<u64, Stop> {
    let source = match counting(&probe.answer) {
        Counting::Exact => probe.answer.total_filtered,
        Counting::Capped if cfg.options.query.is_empty() => probe.answer.total,
        _ => None,
    };
    tx(|| {
        let kept = match source {
            Some(_) => Some(kept_count(name).map_err(spi_err)?),
            None => None,
        };
        if let (Some(kept), Some(source)) = (kept, source) {
            if kept == source {
                return Ok(source);
            }
        }
        let stored = local_count(name, Range::ALL).map_err(spi_err)?;
        if let Some(kept) = kept.filter(|k| *k != stored) {
            pgrx::warning!(
                "gn2pg: source {name}: gn2pg.observation_count said {kept} rows, {stored} are stored: counts rebuilt"
            );
            Spi::run_with_args("SELECT gn2pg._recount($1)", &[name.into()]).map_err(spi_err)?;
        }
        Ok(stored)
    })
    .map_err(Stop::Failed)
}

fn kept_count(source: &str) -> SpiResult<u64> {
    Ok(Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.sum(c.rows)::pg_catalog.int8 FROM gn2pg.observation_count c WHERE c.source = $1",
        &[source.into()],
    )?
    .unwrap_or(0)
    .max(0) as u64)
}

fn local_count(source: &str, r: Range) -> SpiResult<u64> {
    Ok(Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM gn2pg.observation o WHERE o.source = $1 AND o.id_data BETWEEN $2 AND $3",
        &[source.into(), r.lo.into(), r.hi.into()],
    )?
    .unwrap_or(0)
    .max(0) as u64)
}

fn local_key_at(source: &str, r: Range, rank: u64) -> SpiResult<Option<i64>> {
    Spi::get_one_with_args::<i64>(
        "SELECT o.id_data FROM gn2pg.observation o WHERE o.source = $1 AND o.id_data BETWEEN $2 AND $3
          ORDER BY o.id_data OFFSET $4 LIMIT 1",
        &[source.into(), r.lo.into(), r.hi.into(), (rank.min(i64::MAX as u64) as i64).into()],
    )
}

/// Every `step`-th local key of a range, from its smallest.
fn local_keys_every(source: &str, r: Range, step: i64) -> SpiResult<Vec<i64>> {
    Ok(Spi::get_one_with_args::<Vec<i64>>(
        "SELECT coalesce(array_agg(k.id_data ORDER BY k.id_data), '{}')
           FROM (SELECT o.id_data, pg_catalog.row_number() OVER (ORDER BY o.id_data) - 1 AS rn
                   FROM gn2pg.observation o WHERE o.source = $1 AND o.id_data BETWEEN $2 AND $3) k
          WHERE k.rn % $4 = 0",
        &[source.into(), r.lo.into(), r.hi.into(), step.into()],
    )?
    .unwrap_or_default())
}

/// How the run looked for deletions, and what it cost.
pub fn record(run_id: i64, label: &str, requests: i64) -> Result<(), Error> {
    tx(|| {
        Spi::run_with_args(
            "UPDATE gn2pg.run_log SET reconcile = $2, reconcile_requests = $3 WHERE id = $1",
            &[run_id.into(), label.into(), (requests.clamp(0, i32::MAX as i64) as i32).into()],
        )
        .map_err(spi_err)
    })
}
