//! Parallel parts of a keyset full run (`workers` > 1): the lead worker loads range 0 and
//! launches and supervises one part worker per other range (`gn2pg.run_part`); the first
//! failure stops them all.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerStatus, DynamicBackgroundWorker};

use super::plan::Stop;
use super::WorkerHost;
use crate::bgw::{self, tx};
use crate::error::{spi_err, Error, Reason, SqlState};
use crate::source::client::Host;
use crate::source::error::Scrubber;
use crate::store;

/// Records the parts of `ranges` and launches a worker for each but the first (the lead's).
pub(super) fn launch(
    run_id: i64,
    source: &str,
    ranges: &[(i64, Option<i64>)],
) -> Result<Vec<DynamicBackgroundWorker>, Stop> {
    tx(|| store::create_parts(run_id, ranges).map_err(spi_err)).map_err(Stop::Failed)?;
    let mut parts = Vec::new();
    for k in 1..ranges.len() {
        match bgw::launch_part(run_id, k as i32, source) {
            Ok(w) => parts.push(w),
            Err(e) => {
                stop_parts(parts);
                return Err(Stop::Failed(Error::new(Reason::Limit, SqlState::CONFIGURATION_LIMIT_EXCEEDED, e)));
            }
        }
    }
    Ok(parts)
}

/// Once the lead loaded its own range (`lead`): waits for the other parts (or stops them if it
/// failed) and records part 0's end. The run fails with the first failure of any part.
pub(super) fn supervise(
    run_id: i64,
    lead: Result<(), Stop>,
    parts: Vec<DynamicBackgroundWorker>,
    host: &WorkerHost,
    scrubber: &Scrubber,
) -> Result<(), Stop> {
    let result = match lead {
        Ok(()) => wait_parts(run_id, parts, host),
        Err(e) => {
            stop_parts(parts);
            Err(e)
        }
    };
    let (status, error) = super::ended(result, scrubber);
    let _ = tx(|| store::finish_part(run_id, 0, status, error.as_ref()).map_err(spi_err));
    match error {
        Some(e) => Err(Stop::Failed(e)),
        None => Ok(()),
    }
}

fn stop_parts(parts: Vec<DynamicBackgroundWorker>) {
    for p in parts {
        let _ = p.terminate();
    }
}

/// Waits for the part workers of a parallel run; the first failure fails the run.
fn wait_parts(run_id: i64, parts: Vec<DynamicBackgroundWorker>, host: &WorkerHost) -> Result<(), Stop> {
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
