//! The metadata export (`options.metadata_export_id`): one row per acquisition framework with
//! its datasets, read in full at the start of every run into `gn2pg.metadata`.

use super::plan::Stop;
use super::{on_helper, Setup, WorkerHost};
use crate::bgw::tx;
use crate::error::{spi_err, Error};
use crate::loader;
use crate::source::client::{Host, SourceClient};
use crate::source::error::redact_url;
use crate::source::page::{parse_page, Shape};
use crate::source::paging::{Pager, Step};
use crate::source::SourceError;
use crate::store;

/// Bound on pages of a metadata export (one item per acquisition framework).
const MAX_METADATA_PAGES: u64 = 10_000;

/// The metadata export (`options.metadata_export_id`: one row per CA with its datasets) is
/// small, so every run reads it in full, before the data, into gn2pg.metadata.
pub(super) fn harvest_metadata(
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
