//! What a run does, decided from plain facts with no PostgreSQL call: full or incremental,
//! where it starts (the checkpoint of an interrupted full run), how a fresh full run is split
//! into key ranges and parts, what removes the rows gone from the source, and how it ends. The
//! engine reads the facts (earlier runs in `run_log`, the source's options), asks here, then
//! acts with SQL.

use serde_json::json;

use crate::error::{Error, Reason, SqlState};
use crate::source::config::{PagingMode, Streams};
use crate::source::paging::Pager;
use crate::source::SourceError;

/// The mode a caller asked for.
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

/// The mode a run runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Incremental,
}

impl Mode {
    /// As `run_log.mode` records it.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
        }
    }
}

/// Where a run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Keyset key ranges `[next, upper]` still to fetch (one per stream); empty = fresh start.
    Ranges(Vec<(i64, Option<i64>)>),
    /// Offset paging from this page index.
    Page(u64),
}

/// Auto mode runs a reconciling full harvest this often by default (`explicit`: the option
/// `full_every_hours`): login sources weekly (rows can leave an export without being deleted:
/// permissions, sensitivity, a filter change); sources whose incremental runs reconcile by
/// counts every 30 days, as a safety net; other sources without a deletion log daily.
pub fn full_every_hours(explicit: Option<u64>, login: bool, reconciles: bool) -> u64 {
    explicit.unwrap_or(match () {
        _ if login => 24 * 7,
        _ if reconciles => 24 * 30,
        _ => 24,
    })
}

/// What decides a run's mode and start: the request, the source's paging, and what earlier
/// runs of the source left (`store::history`). Only runs that ended `success` count as
/// successful: a failed, cancelled or abandoned run neither opens a window nor counts as a full
/// run done.
pub struct Facts<'a> {
    pub requested: Requested,
    pub paging: PagingMode,
    /// `full_every_hours` of the source; 0 = never.
    pub full_every_hours: u64,
    /// A run of the source succeeded.
    pub has_success: bool,
    /// The latest finished full run succeeded (no interrupted full run since).
    pub last_full_ok: bool,
    /// A successful run recorded the source's newest action: an incremental window can start.
    pub has_window: bool,
    /// Hours since the last successful full run ended.
    pub hours_since_full: Option<f64>,
    /// The latest finished run, if it is an interrupted full run with a checkpoint: (id, checkpoint).
    pub interrupted_full: Option<(i64, &'a serde_json::Value)>,
}

/// What a run does: its mode, where it starts, and the run it continues.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub mode: Mode,
    pub start: Start,
    /// The interrupted full run this one continues from its checkpoint (`run_log.resumed_from`).
    pub resumed_from: Option<i64>,
}

/// Full or incremental, and where to start.
pub fn decide(f: &Facts) -> Plan {
    let incremental_possible = f.has_success && f.has_window;
    let every = f.full_every_hours;
    let reconcile_due = every > 0 && f.hours_since_full.is_none_or(|h| h >= every as f64);
    let mode = match f.requested {
        Requested::Full => Mode::Full,
        // Without a successful run there is no window to start from: a full run it is.
        Requested::Incremental if incremental_possible => Mode::Incremental,
        Requested::Auto if incremental_possible && f.last_full_ok && !reconcile_due => Mode::Incremental,
        _ => Mode::Full,
    };
    // An interrupted full run is continued from its last committed page, not started over.
    let resume = match (mode, f.interrupted_full) {
        (Mode::Full, Some((id, cp))) => start_from_checkpoint(cp).map(|st| (id, st)),
        _ => None,
    };
    // A checkpoint of the other paging (the option changed since) is not resumed.
    let start = match (&resume, f.paging) {
        (Some((_, st @ Start::Ranges(_))), PagingMode::Keyset) => st.clone(),
        (Some((_, st @ Start::Page(_))), PagingMode::Offset) => st.clone(),
        (_, PagingMode::Keyset) => Start::Ranges(vec![]),
        (_, PagingMode::Offset) => Start::Page(0),
    };
    let resumed_from = resume.as_ref().filter(|(_, st)| *st == start).map(|(id, _)| *id);
    Plan { mode, start, resumed_from }
}

/// The checkpoint written with every page (`run_log.checkpoint`): where a resumed run starts.
/// An offset walk records the index of its next page; a keyset run the key ranges still to
/// fetch, `[next key, upper bound or null]`, one per stream not done (`streams`: each stream's
/// position after its last loaded page, and whether its range is done).
pub fn checkpoint_json<'a>(streams: impl IntoIterator<Item = (&'a Pager, bool)>, offset: bool) -> serde_json::Value {
    let mut streams = streams.into_iter();
    if offset {
        let p = streams.next().map_or(0, |(pager, _)| pager.page_index());
        return json!({ "page_index": p });
    }
    let ranges: Vec<serde_json::Value> =
        streams.filter(|(_, done)| !done).map(|(p, _)| json!([p.next_key(), p.upper()])).collect();
    json!({ "ranges": ranges })
}

/// Reads a checkpoint written by `checkpoint_json`; None when there is nothing to resume.
pub fn start_from_checkpoint(cp: &serde_json::Value) -> Option<Start> {
    if let Some(ranges) = cp.get("ranges").and_then(|r| r.as_array()) {
        let parsed: Option<Vec<(i64, Option<i64>)>> =
            ranges.iter().map(|r| Some((r.get(0)?.as_i64()?, r.get(1).and_then(|u| u.as_i64())))).collect();
        return parsed.filter(|v| !v.is_empty()).map(Start::Ranges);
    }
    cp.get("page_index").and_then(|p| p.as_u64()).filter(|p| *p > 0).map(Start::Page)
}

/// Which share of a run a worker loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The run's own worker: setup, its key range(s), the deletion log, the final status.
    Lead,
    /// A helper worker of a parallel run, loading one key range (`gn2pg.run_part`).
    Part(i32),
}

/// The key ranges a worker loads, before any request.
#[derive(Debug, Clone, PartialEq)]
pub enum Ranges {
    /// These (resumed, or a part's).
    Given(Vec<(i64, Option<i64>)>),
    /// A fresh keyset full run: the lead splits the key space (`split`).
    Split,
    /// The whole key space in one range (an incremental run), or the offset walk (none).
    Whole(Vec<(i64, Option<i64>)>),
}

pub fn ranges(start: &Start, mode: Mode, role: Role) -> Ranges {
    match start {
        Start::Page(_) => Ranges::Whole(vec![]),
        Start::Ranges(r) if !r.is_empty() => Ranges::Given(r.clone()),
        Start::Ranges(_) if mode == Mode::Full && role == Role::Lead => Ranges::Split,
        Start::Ranges(_) => Ranges::Whole(vec![(0, None)]),
    }
}

/// Pages of a keyset full run fetched as one piece per key range: how many ranges a fresh run
/// splits the key space into. One per worker or per fixed stream; with streams paced to the
/// source, pieces of about this many pages, which the streams take in turn.
pub const PIECE_PAGES: u64 = 16;

/// How a fresh keyset full run splits the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Into this many ranges (one more request, for the largest key).
    Into(u32),
    /// By the export's size, which its first page, loaded first, tells (`pieces`).
    BySize,
    /// Not at all.
    Whole,
}

/// `pace_max`: the most requests the streams may have in flight at once.
pub fn split(workers: u32, streams: Streams, paging: PagingMode, pace_max: u32) -> Split {
    match (workers, streams) {
        (w, _) if w > 1 => Split::Into(w),
        (_, Streams::Fixed(n)) if n > 1 => Split::Into(n),
        (_, Streams::Auto) if pace_max > 1 && paging == PagingMode::Keyset => Split::BySize,
        _ => Split::Whole,
    }
}

/// Pieces of about `PIECE_PAGES` pages for an export of `rows` rows (unknown: one piece), at
/// most four per stream.
pub fn pieces(rows: Option<u64>, page_size: u32, pace_max: u32) -> u32 {
    let pages = rows.unwrap_or(0) / u64::from(page_size.max(1));
    (pages / PIECE_PAGES).clamp(1, 4 * u64::from(pace_max)) as u32
}

/// Whether the lead runs one part worker per other key range (`workers` > 1), subject to room
/// in `gn2pg.max_harvest_workers`; otherwise it loads every range itself.
pub fn in_parts(role: Role, mode: Mode, paging: PagingMode, workers: u32, ranges: usize) -> bool {
    role == Role::Lead
        && mode == Mode::Full
        && paging == PagingMode::Keyset
        && workers > 1
        && ranges > 1
        && ranges <= workers as usize
}

/// Whether a run looks the source's deletion log up (incremental runs of login sources).
pub fn reads_deletion_log(mode: Mode, login: bool) -> bool {
    mode == Mode::Incremental && login
}

/// Whether a run looks for deletions by range counts (incremental runs of sources that
/// reconcile, `reconcile_run::reconciles`).
pub fn counts_deletions(mode: Mode, reconciles: bool) -> bool {
    mode == Mode::Incremental && reconciles
}

/// Whether an offset run may sweep (delete the stored keys its walk did not see): full runs only.
pub fn may_sweep(mode: Mode, paging: PagingMode) -> bool {
    mode == Mode::Full && paging == PagingMode::Offset
}

/// Whether a sweeping walk keeps the keys it sees: only one started at the first page.
pub fn keeps_seen_keys(start: &Start) -> bool {
    *start == Start::Page(0)
}

/// After a full offset walk (`complete`: it started at the first page; `view_totals`: the
/// distinct sizes the pages reported): None when it may delete the keys it did not see, else
/// why not. An offset walk proves nothing page by page; a complete one over a view whose size
/// did not change meanwhile proves that the keys it did not see are gone (a view that changes
/// shifts rows between pages, and the walk can miss some).
pub fn sweep_refusal(complete: bool, view_totals: &[Option<u64>]) -> Option<String> {
    match (complete, view_totals) {
        (true, [Some(_)]) => None,
        (false, _) => Some("it resumed an interrupted walk".to_string()),
        (true, [None]) => Some("the source does not report the size of the view (total)".to_string()),
        (true, totals) => Some(format!(
            "the view changed size during the walk (total: {})",
            totals.iter().map(|t| t.map_or("none".into(), |t| t.to_string())).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Why a run stopped early.
pub enum Stop {
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

/// How a run (or a part) ends: its status and what it records. Only `success` counts as a
/// successful run for the next decision (`Facts`); a run that rejected rows still ends
/// `success` (they are in `run_error`).
pub fn ending(result: Result<(), Stop>) -> (&'static str, Option<Error>) {
    match result {
        Ok(()) => ("success", None),
        Err(Stop::Cancelled(m)) => ("cancelled", Some(Error::new(Reason::Cancelled, SqlState::QUERY_CANCELED, m))),
        Err(Stop::Failed(e)) => ("failed", Some(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source with a successful full run an hour ago, `auto` requested, keyset paging.
    fn settled() -> Facts<'static> {
        Facts {
            requested: Requested::Auto,
            paging: PagingMode::Keyset,
            full_every_hours: 720,
            has_success: true,
            last_full_ok: true,
            has_window: true,
            hours_since_full: Some(1.0),
            interrupted_full: None,
        }
    }

    fn first_run() -> Facts<'static> {
        Facts { has_success: false, last_full_ok: false, has_window: false, hours_since_full: None, ..settled() }
    }

    fn mode(f: Facts) -> Mode {
        decide(&f).mode
    }

    #[test]
    fn requested_modes_parse() {
        assert_eq!(Requested::parse("auto"), Some(Requested::Auto));
        assert_eq!(Requested::parse("full"), Some(Requested::Full));
        assert_eq!(Requested::parse("incremental"), Some(Requested::Incremental));
        assert_eq!(Requested::parse("Full"), None);
        assert_eq!(Requested::parse(""), None);
        assert_eq!(Requested::Auto.label(), "full");
        assert_eq!(Requested::Incremental.label(), "incremental");
        assert_eq!(Mode::Full.label(), "full");
        assert_eq!(Mode::Incremental.label(), "incremental");
    }

    #[test]
    fn first_run_is_full_whatever_is_requested() {
        for requested in [Requested::Auto, Requested::Full, Requested::Incremental] {
            let plan = decide(&Facts { requested, ..first_run() });
            assert_eq!(plan, Plan { mode: Mode::Full, start: Start::Ranges(vec![]), resumed_from: None });
        }
        let offset = decide(&Facts { paging: PagingMode::Offset, ..first_run() });
        assert_eq!(offset.start, Start::Page(0));
    }

    #[test]
    fn incremental_needs_a_window_from_a_successful_run() {
        assert_eq!(mode(Facts { requested: Requested::Incremental, ..settled() }), Mode::Incremental);
        // A success that recorded no source timestamp leaves no window.
        assert_eq!(mode(Facts { requested: Requested::Incremental, has_window: false, ..settled() }), Mode::Full);
        assert_eq!(mode(Facts { has_window: false, ..settled() }), Mode::Full);
        // An explicit incremental run does not care about the last full run.
        let after_failed_full = Facts { requested: Requested::Incremental, last_full_ok: false, ..settled() };
        assert_eq!(mode(after_failed_full), Mode::Incremental);
        let due = Facts { requested: Requested::Incremental, hours_since_full: Some(1e6), ..settled() };
        assert_eq!(mode(due), Mode::Incremental);
    }

    #[test]
    fn full_requested_is_full() {
        assert_eq!(mode(Facts { requested: Requested::Full, ..settled() }), Mode::Full);
    }

    #[test]
    fn auto_is_incremental_between_full_runs() {
        assert_eq!(mode(settled()), Mode::Incremental);
        assert_eq!(decide(&settled()).start, Start::Ranges(vec![]));
        assert_eq!(decide(&Facts { paging: PagingMode::Offset, ..settled() }).start, Start::Page(0));
    }

    #[test]
    fn auto_runs_full_after_a_failed_or_abandoned_full_run() {
        assert_eq!(mode(Facts { last_full_ok: false, ..settled() }), Mode::Full);
    }

    #[test]
    fn auto_runs_full_every_full_every_hours() {
        assert_eq!(mode(Facts { hours_since_full: Some(719.9), ..settled() }), Mode::Incremental);
        assert_eq!(mode(Facts { hours_since_full: Some(720.0), ..settled() }), Mode::Full);
        assert_eq!(mode(Facts { hours_since_full: Some(721.0), ..settled() }), Mode::Full);
        // No successful full run on record (e.g. only incremental runs kept): due.
        assert_eq!(mode(Facts { hours_since_full: None, ..settled() }), Mode::Full);
        // 0 = never.
        assert_eq!(mode(Facts { full_every_hours: 0, hours_since_full: Some(1e6), ..settled() }), Mode::Incremental);
        assert_eq!(mode(Facts { full_every_hours: 0, hours_since_full: None, ..settled() }), Mode::Incremental);
    }

    #[test]
    fn full_every_hours_defaults() {
        assert_eq!(full_every_hours(None, true, false), 168);
        assert_eq!(full_every_hours(None, true, true), 168);
        assert_eq!(full_every_hours(None, false, true), 720);
        assert_eq!(full_every_hours(None, false, false), 24);
        assert_eq!(full_every_hours(Some(5), true, false), 5);
        assert_eq!(full_every_hours(Some(0), false, true), 0);
    }

    #[test]
    fn an_interrupted_full_run_is_resumed_from_its_checkpoint() {
        let cp = json!({ "ranges": [[500, 999], [1500, null]] });
        let interrupted = Facts { last_full_ok: false, interrupted_full: Some((7, &cp)), ..settled() };
        let plan = decide(&interrupted);
        let ranges = Start::Ranges(vec![(500, Some(999)), (1500, None)]);
        assert_eq!(plan, Plan { mode: Mode::Full, start: ranges, resumed_from: Some(7) });

        let cp = json!({ "page_index": 12 });
        let offset = Facts { paging: PagingMode::Offset, interrupted_full: Some((8, &cp)), ..first_run() };
        assert_eq!(decide(&offset), Plan { mode: Mode::Full, start: Start::Page(12), resumed_from: Some(8) });
    }

    #[test]
    fn what_is_not_resumed() {
        // The paging option changed since: start over.
        let cp = json!({ "ranges": [[500, null]] });
        let f = Facts { paging: PagingMode::Offset, interrupted_full: Some((7, &cp)), ..first_run() };
        assert_eq!(decide(&f), Plan { mode: Mode::Full, start: Start::Page(0), resumed_from: None });
        let cp = json!({ "page_index": 3 });
        let f = Facts { interrupted_full: Some((7, &cp)), ..first_run() };
        assert_eq!(decide(&f), Plan { mode: Mode::Full, start: Start::Ranges(vec![]), resumed_from: None });
        // Nothing left, or nothing done yet.
        for cp in [json!({ "ranges": [] }), json!({ "page_index": 0 }), json!({}), json!({ "ranges": [["x"]] })] {
            let f = Facts { interrupted_full: Some((7, &cp)), ..first_run() };
            assert_eq!(decide(&f).resumed_from, None, "{cp}");
        }
        // An incremental run does not continue an interrupted full one.
        let cp = json!({ "ranges": [[500, null]] });
        let f = Facts { requested: Requested::Incremental, interrupted_full: Some((7, &cp)), ..settled() };
        assert_eq!(decide(&f), Plan { mode: Mode::Incremental, start: Start::Ranges(vec![]), resumed_from: None });
    }

    #[test]
    fn checkpoints_read_back_as_written() {
        let a = Pager::new(PagingMode::Keyset, "id", 100, 500, 0).with_upper(Some(999));
        let b = Pager::new(PagingMode::Keyset, "id", 100, 1000, 0).with_upper(Some(1999));
        let c = Pager::new(PagingMode::Keyset, "id", 100, 2000, 0);
        let cp = checkpoint_json([(&a, false), (&b, true), (&c, false)], false);
        assert_eq!(cp, json!({ "ranges": [[500, 999], [2000, null]] }));
        assert_eq!(start_from_checkpoint(&cp), Some(Start::Ranges(vec![(500, Some(999)), (2000, None)])));
        // Every range done: nothing to resume.
        let done = checkpoint_json([(&a, true)], false);
        assert_eq!(done, json!({ "ranges": [] }));
        assert_eq!(start_from_checkpoint(&done), None);

        let walk = Pager::new(PagingMode::Offset, "id", 100, 0, 4);
        let cp = checkpoint_json([(&walk, false)], true);
        assert_eq!(cp, json!({ "page_index": 4 }));
        assert_eq!(start_from_checkpoint(&cp), Some(Start::Page(4)));
        assert_eq!(checkpoint_json([], true), json!({ "page_index": 0 }));
    }

    #[test]
    fn which_ranges_a_worker_loads() {
        let given = vec![(5, Some(9))];
        assert_eq!(ranges(&Start::Ranges(given.clone()), Mode::Full, Role::Lead), Ranges::Given(given.clone()));
        assert_eq!(ranges(&Start::Ranges(given.clone()), Mode::Full, Role::Part(2)), Ranges::Given(given));
        assert_eq!(ranges(&Start::Ranges(vec![]), Mode::Full, Role::Lead), Ranges::Split);
        assert_eq!(ranges(&Start::Ranges(vec![]), Mode::Incremental, Role::Lead), Ranges::Whole(vec![(0, None)]));
        assert_eq!(ranges(&Start::Page(3), Mode::Full, Role::Lead), Ranges::Whole(vec![]));
    }

    #[test]
    fn how_a_fresh_full_run_splits() {
        let keyset = PagingMode::Keyset;
        assert_eq!(split(4, Streams::Auto, keyset, 8), Split::Into(4));
        assert_eq!(split(4, Streams::Fixed(2), keyset, 2), Split::Into(4));
        assert_eq!(split(1, Streams::Fixed(3), keyset, 3), Split::Into(3));
        assert_eq!(split(1, Streams::Fixed(1), keyset, 1), Split::Whole);
        assert_eq!(split(1, Streams::Auto, keyset, 4), Split::BySize);
        assert_eq!(split(1, Streams::Auto, keyset, 1), Split::Whole);
        assert_eq!(split(1, Streams::Auto, PagingMode::Offset, 4), Split::Whole);

        assert_eq!(pieces(None, 1000, 4), 1);
        assert_eq!(pieces(Some(15_999), 1000, 4), 1);
        assert_eq!(pieces(Some(32_000), 1000, 4), 2);
        assert_eq!(pieces(Some(10_000_000), 1000, 4), 16);
        assert_eq!(pieces(Some(32), 0, 4), 2, "a page size of 0 counts as 1");
    }

    #[test]
    fn when_a_run_has_parts() {
        let keyset = PagingMode::Keyset;
        assert!(in_parts(Role::Lead, Mode::Full, keyset, 4, 4));
        assert!(in_parts(Role::Lead, Mode::Full, keyset, 4, 2));
        assert!(!in_parts(Role::Lead, Mode::Full, keyset, 4, 5), "more ranges than workers (resumed)");
        assert!(!in_parts(Role::Lead, Mode::Full, keyset, 4, 1));
        assert!(!in_parts(Role::Lead, Mode::Full, keyset, 1, 4));
        assert!(!in_parts(Role::Part(1), Mode::Full, keyset, 4, 4));
        assert!(!in_parts(Role::Lead, Mode::Incremental, keyset, 4, 4));
        assert!(!in_parts(Role::Lead, Mode::Full, PagingMode::Offset, 4, 4));
    }

    #[test]
    fn what_removes_rows_gone_from_the_source() {
        assert!(reads_deletion_log(Mode::Incremental, true));
        assert!(!reads_deletion_log(Mode::Incremental, false));
        assert!(!reads_deletion_log(Mode::Full, true));
        assert!(counts_deletions(Mode::Incremental, true));
        assert!(!counts_deletions(Mode::Incremental, false));
        assert!(!counts_deletions(Mode::Full, true));
        assert!(may_sweep(Mode::Full, PagingMode::Offset));
        assert!(!may_sweep(Mode::Full, PagingMode::Keyset));
        assert!(!may_sweep(Mode::Incremental, PagingMode::Offset));
        assert!(keeps_seen_keys(&Start::Page(0)));
        assert!(!keeps_seen_keys(&Start::Page(2)));
    }

    #[test]
    fn when_an_offset_walk_sweeps() {
        assert_eq!(sweep_refusal(true, &[Some(10)]), None);
        assert_eq!(sweep_refusal(false, &[Some(10)]).as_deref(), Some("it resumed an interrupted walk"));
        let unknown = sweep_refusal(true, &[None]);
        assert_eq!(unknown.as_deref(), Some("the source does not report the size of the view (total)"));
        let changed = sweep_refusal(true, &[Some(10), None, Some(11)]);
        assert_eq!(changed.as_deref(), Some("the view changed size during the walk (total: 10, none, 11)"));
    }

    #[test]
    fn how_a_run_ends() {
        assert_eq!(ending(Ok(())), ("success", None));
        let (status, e) = ending(Err(Stop::Cancelled("stopped on request".into())));
        assert_eq!(status, "cancelled");
        let e = e.unwrap();
        assert_eq!(
            (e.reason, e.sqlstate, e.message.as_str()),
            (Reason::Cancelled, SqlState::QUERY_CANCELED, "stopped on request")
        );
        let failed = Error::limit("too many pages");
        assert_eq!(ending(Err(Stop::Failed(failed.clone()))), ("failed", Some(failed)));
        // A source's cancellation is a cancelled run, its other errors failures.
        let (status, _) = ending(Err(Stop::from(SourceError::Cancelled("x".into()))));
        assert_eq!(status, "cancelled");
        let (status, e) = ending(Err(Stop::from(SourceError::Paging("bad".into()))));
        assert_eq!((status, e.map(|e| e.reason)), ("failed", Some(Reason::Protocol)));
    }
}
