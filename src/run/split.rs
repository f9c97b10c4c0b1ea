//! The key ranges of a fresh keyset full run (`plan::split` decides how many).

use std::time::Instant;

use super::on_helper;
use super::pages::{fetch_rows, fields_of, load_page};
use super::plan::{self, Split, Stop};
use super::{Setup, WorkerHost};
use crate::bgw::tx;
use crate::error::spi_err;
use crate::loader::{Loader, PageSpec};
use crate::pacing_run::Pace;
use crate::source::client::SourceClient;
use crate::source::config::PagingMode;
use crate::source::page::parse_page;
use crate::source::paging::{split_key_space, Pager, Step};
use crate::source::SourceError;

/// The key ranges of a fresh keyset full run. With streams paced to the source, its first page
/// is loaded first: it tells how large the export is, and only a large one is split (which
/// costs one more request, for its largest key).
pub(super) fn split_full_run(
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
    match plan::split(o.workers, o.streams, o.paging, pace.max()) {
        Split::Into(n) => split(client, 0, n),
        Split::BySize => {
            let Some((next, rows)) = first_page(run_id, setup, client, host, pace)? else { return Ok(vec![]) };
            let pieces = plan::pieces(rows, o.page_size, pace.max());
            if pieces > 1 {
                split(client, next, pieces)
            } else {
                Ok(vec![(next, None)])
            }
        }
        Split::Whole => Ok(vec![(0, None)]),
    }
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
    let rest = plan::checkpoint_json([(&pager, done)], false);
    let spec = PageSpec { source: &setup.cfg.name, run_id, key_column: &o.key_column, sweep };
    load_page(&loader, &spec, &rows, &client.stats, source_wait_ms, rest, None)
        .map_err(|e| Stop::Failed(e.context("page 1 could not be loaded")))?;
    Ok((!done).then(|| (pager.next_key(), summary.total_filtered.or(summary.total))))
}
