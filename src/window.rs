//! Incremental windows on the source's clock (`source::clock`): where a run's window starts,
//! the source's clock when a run starts, and what a run records for the next one.
//!
//! Each run records `window_end`, the source's clock when it started (its first answer's `Date`
//! plus the offset recent runs have shown), and `clock_offset`, what its own probe of the
//! newest action showed. The next incremental run starts at `window_end` minus the overlap.
//! Runs without a `window_end` (a source without a `Date` header, or runs of gn2pg < 0.3) leave
//! the next one to the former rule: the newest source timestamp seen minus the overlap.

use pgrx::prelude::*;

use crate::source::clock;

type SpiResult<T> = Result<T, pgrx::spi::Error>;

/// Evidence about a source's clock is used for this long (and the latest run's always): a
/// clock that jumps back (daylight saving time ending) spoils older evidence.
const EVIDENCE_HOURS: i32 = 48;

/// Window start of an incremental run of `source`.
pub fn since(source: &str, run_id: i64, overlap_secs: i64) -> SpiResult<Option<String>> {
    Spi::get_one_with_args::<String>(
        "WITH last AS (
            SELECT r.window_end, (SELECT max(p.max_source_action) FROM gn2pg.run_log p
                                   WHERE p.source = $1 AND p.id <> $2 AND p.status = 'success') AS newest
              FROM gn2pg.run_log r
             WHERE r.source = $1 AND r.id <> $2 AND r.status = 'success'
             ORDER BY r.id DESC LIMIT 1)
         SELECT pg_catalog.to_char(coalesce(window_end, newest)::timestamp - pg_catalog.make_interval(secs => $3),
                                   'YYYY-MM-DD HH24:MI:SS.US')
           FROM last",
        &[source.into(), run_id.into(), (overlap_secs as f64).into()],
    )
}

/// Offsets (microseconds) recent successful runs of `source` have shown.
pub fn recent_offsets(source: &str, run_id: i64) -> SpiResult<Vec<i64>> {
    Ok(Spi::get_one_with_args::<Vec<i64>>(
        "SELECT coalesce(array_agg((extract(epoch FROM r.clock_offset) * 1000000)::bigint), '{}')
           FROM gn2pg.run_log r
          WHERE r.source = $1 AND r.id <> $2 AND r.status = 'success' AND r.clock_offset IS NOT NULL
            AND (r.finished_at > now() - pg_catalog.make_interval(hours => $3)
                 OR r.id = (SELECT max(l.id) FROM gn2pg.run_log l
                             WHERE l.source = $1 AND l.id <> $2 AND l.status = 'success'))",
        &[source.into(), run_id.into(), EVIDENCE_HOURS.into()],
    )?
    .unwrap_or_default())
}

/// Records the run's window end (None: unknown) and the offset its probe showed. A run that
/// resumes an interrupted one read part of the export then: its window ends no later.
pub fn record(run_id: i64, window_end: Option<i64>, offset_us: Option<i64>) -> SpiResult<()> {
    Spi::run_with_args(
        "UPDATE gn2pg.run_log r
            SET window_end = CASE WHEN r.resumed_from IS NULL THEN $2
                                  -- Unknown for the interrupted run: unknown for this one.
                                  ELSE (SELECT CASE WHEN p.window_end IS NOT NULL THEN
                                                   pg_catalog.to_char(least(p.window_end::timestamp, $2::timestamp),
                                                                      'YYYY-MM-DD HH24:MI:SS.US') END
                                          FROM gn2pg.run_log p WHERE p.id = r.resumed_from) END,
                clock_offset = coalesce(pg_catalog.make_interval(secs => $3::float8 / 1000000), r.clock_offset)
          WHERE r.id = $1",
        &[run_id.into(), window_end.map(clock::format_timestamp).into(), offset_us.into()],
    )
}

/// The source's clock at the start of a run: its `Date` plus the best recent evidence.
pub struct RunClock {
    /// `Date` of the run's first answer (UTC, microseconds); None without a `Date` header.
    pub started: Option<i64>,
    pub offsets: Vec<i64>,
}

impl RunClock {
    pub fn window_end(&self) -> Option<i64> {
        clock::window_end(self.started?, &self.offsets)
    }
}
