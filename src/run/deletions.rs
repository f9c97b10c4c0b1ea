//! Rows gone from the source: the sweep after a complete offset walk, and the deletion log of
//! login sources. (Keyset full runs delete by the key ranges their pages cover, in the loader;
//! incremental runs of other sources by range counts, `reconcile_run`.)

use super::plan::{self, Stop};
use super::{on_helper, Setup, WorkerHost, MAX_PAGES};
use crate::bgw::tx;
use crate::error::{spi_err, Error};
use crate::loader;
use crate::source::client::{Host, SourceClient};
use crate::source::config::Auth;
use crate::source::paging::SeenKeys;
use crate::source::SourceError;

/// After a full offset walk (`seen`: the keys it received, if it started at the first page;
/// `view_totals`: the sizes of the view its pages reported): sweeps, or logs why not.
pub(super) fn after_offset_walk(
    run_id: i64,
    source: &str,
    seen: Option<SeenKeys>,
    view_totals: &[Option<u64>],
    host: &WorkerHost,
) -> Result<(), Stop> {
    if let Some(why_not) = plan::sweep_refusal(seen.is_some(), view_totals) {
        pgrx::log!(
            "gn2pg: run {run_id} of source \"{source}\" did not remove rows gone from the source: {why_not}; a later complete offset walk or a keyset run will"
        );
        return Ok(());
    }
    match seen {
        Some(seen) => sweep_unseen(run_id, source, &seen.finish(), host),
        None => Ok(()),
    }
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
pub(super) fn from_log(run_id: i64, setup: &Setup, client: &mut SourceClient, host: &WorkerHost) -> Result<(), Stop> {
    if !plan::reads_deletion_log(setup.mode, matches!(setup.cfg.auth, Auth::Login { .. })) {
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
