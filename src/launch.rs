//! Starting, waiting for and stopping runs from SQL (`gn2pg_harvest`, `gn2pg_harvest_async`,
//! `gn2pg_harvest_scheduled`, `gn2pg_cancel`): checks the caller's role and the arguments,
//! claims the source, then hands over to a harvest worker (bgw.rs).

use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

use crate::access::{self, OPERATOR};
use crate::bgw;
use crate::error::Error;
use crate::registry::{parse_mode, raise, refuse_busy, require_current_schema, require_source, spi};
use crate::store::{self, Busy};

fn next_run_id() -> i64 {
    spi(Spi::get_one::<i64>("SELECT pg_catalog.nextval('gn2pg.run_log_id_seq')")).unwrap_or(0)
}

fn start_worker(
    run_id: i64,
    source: &str,
    mode: &str,
    wait_for_commit: bool,
) -> pgrx::bgworkers::DynamicBackgroundWorker {
    bgw::launch(run_id, source, mode, wait_for_commit).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!("gn2pg: cannot start the harvest of \"{source}\": {e}"),
            None,
        )
    })
}

pub fn harvest(source: &str, mode: &str) -> JsonB {
    access::require(OPERATOR, "gn2pg_harvest()");
    access::as_owner(|| harvest_owned(source, mode))
}

fn harvest_owned(source: &str, mode: &str) -> JsonB {
    require_current_schema();
    require_source(source);
    parse_mode(mode);
    // The source's registry row stays locked by this transaction until the run ends (the
    // worker cannot see an uncommitted pending row, and must not wait for this transaction).
    if let Err(busy) = spi(store::claim_source(source)) {
        refuse_busy(source, busy);
    }
    let run_id = next_run_id();
    let w = start_worker(run_id, source, mode, false);
    if let Err(e) = bgw::wait(w) {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("gn2pg: run {run_id} of \"{source}\": {e}"), None);
    }
    let row = spi(Spi::get_one_with_args::<JsonB>(
        "SELECT (SELECT pg_catalog.to_jsonb(r) FROM gn2pg.run_log r WHERE r.id = $1)",
        &[run_id.into()],
    ));
    let Some(row) = row else {
        // The worker records nothing when another run took the source first.
        if let Some(busy) = spi(store::active_run(source, None)) {
            refuse_busy(source, busy);
        }
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("gn2pg: run {run_id} of \"{source}\" left no trace in gn2pg.run_log"),
            Some("Its worker crashed (see the server log), or this transaction is REPEATABLE READ or SERIALIZABLE and cannot see it; use gn2pg_harvest_async() there."),
        );
    };
    ended(source, run_id, &row.0);
    row
}

/// What the caller of gn2pg_harvest learns of a run that ended: a WARNING when it rejected rows,
/// an ERROR with the run's SQLSTATE when it did not succeed.
fn ended(source: &str, run_id: i64, run: &serde_json::Value) {
    let text = |k: &str| run.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let count = |k: &str| run.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
    let status = text("status").unwrap_or_default();
    let look = format!(
        "SELECT * FROM gn2pg.run_log WHERE id = {run_id}; SELECT * FROM gn2pg.run_error WHERE run_id = {run_id};"
    );
    let rejected = count("rows_failed");
    if rejected > 0 {
        crate::error::warn(
            &format!(
                "gn2pg: source \"{source}\": run {run_id} rejected {rejected} of the {} rows received",
                count("rows_received")
            ),
            Some(&format!(
                "The run ended {status}; rejected rows are not stored, each is in gn2pg.run_error with the reason."
            )),
            Some(&format!("See them with SELECT id_data, uuid, error FROM gn2pg.run_error WHERE run_id = {run_id};")),
        );
    }
    if status == "running" {
        Error::internal(format!("gn2pg: run {run_id} of source \"{source}\" ended without recording its end"))
            .with_hint(format!(
                "See the server log. The next run of the source or gn2pg_check_flows() marks it abandoned. {look}"
            ))
            .raise();
    }
    if status != "success" {
        let failed = crate::store::recorded_error(
            text("error").unwrap_or_else(|| format!("source \"{source}\": no error recorded")),
            text("sqlstate"),
            text("reason"),
        );
        let reason = failed.reason;
        Error { message: format!("gn2pg: {}", failed.message), ..failed }
            .with_detail(format!("Run {run_id} ended {status} (reason {reason}) after {} pages.", count("pages_done")))
            .with_hint(format!("{} {look}", reason.advice(source)))
            .raise();
    }
}

/// Launches a run that starts when this transaction commits: claims the source, closes its
/// runs whose worker is gone, starts the worker and records the run as pending. Err: what keeps
/// the source busy (nothing launched).
fn launch_pending(source: &str, mode: &str) -> Result<i64, Busy> {
    require_current_schema();
    let source_id = spi(store::claim_source(source))?;
    spi(store::abandon_dead_runs(Some(source), None));
    let run_id = next_run_id();
    let w = start_worker(run_id, source, mode, true);
    let pid = bgw::wait_until_connected(&w).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("gn2pg: cannot start the harvest of \"{source}\": {e}"),
            None,
        )
    });
    spi(store::insert_pending(run_id, source, source_id, parse_mode(mode).label(), pid));
    Ok(run_id)
}

pub fn harvest_async(source: &str, mode: &str) -> i64 {
    access::require(OPERATOR, "gn2pg_harvest_async()");
    access::as_owner(|| {
        require_source(source);
        parse_mode(mode);
        launch_pending(source, mode).unwrap_or_else(|busy| refuse_busy(source, busy))
    })
}

/// What a pg_cron job runs: like gn2pg_harvest_async, but a source that is disabled or still
/// being harvested (by the previous scheduled run, or by hand) is skipped quietly (NULL), so
/// scheduled runs never overlap and a long run is not reported as a failure.
pub fn harvest_scheduled(source: &str, mode: &str) -> Option<i64> {
    access::require(OPERATOR, "gn2pg_harvest_scheduled()");
    access::as_owner(|| {
        require_source(source);
        parse_mode(mode);
        let enabled = spi(Spi::get_one_with_args::<bool>(
            "SELECT (SELECT enabled FROM gn2pg.source WHERE name = $1)",
            &[source.into()],
        ))
        .unwrap_or(false);
        if !enabled {
            pgrx::log!("gn2pg: scheduled harvest of \"{source}\" skipped: the source is disabled");
            return None;
        }
        match launch_pending(source, mode) {
            Ok(run_id) => Some(run_id),
            Err(busy) => {
                pgrx::log!("gn2pg: scheduled harvest of \"{source}\" skipped: it is busy ({busy:?})");
                None
            }
        }
    })
}

pub fn cancel(run_id: i64) -> bool {
    access::require(OPERATOR, "gn2pg_cancel()");
    access::as_owner(|| cancel_owned(run_id))
}

fn cancel_owned(run_id: i64) -> bool {
    spi(Spi::run("SELECT pg_catalog.pg_stat_clear_snapshot()"));
    let pid = spi(Spi::get_one_with_args::<i32>(
        "SELECT (SELECT r.worker_pid FROM gn2pg.run_log r
                  WHERE r.id = $1 AND r.status IN ('pending', 'running')
                    AND gn2pg._run_alive(r.worker_pid, r.started_at))",
        &[run_id.into()],
    ));
    match pid {
        Some(pid) => {
            // A pending run never gets to record its end: record it here.
            spi(Spi::run_with_args(
                "UPDATE gn2pg.run_log
                    SET status = 'cancelled', finished_at = now(), sqlstate = '57014', reason = 'cancelled',
                        error = pg_catalog.format('source \"%s\": cancelled before it started', source)
                  WHERE id = $1 AND status = 'pending'",
                &[run_id.into()],
            ));
            spi(Spi::get_one_with_args::<bool>("SELECT pg_catalog.pg_terminate_backend($1)", &[pid.into()]))
                .unwrap_or(false)
        }
        None => {
            pgrx::notice!("gn2pg: run {run_id} is not running");
            false
        }
    }
}
