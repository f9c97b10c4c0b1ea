//! gn2pg: harvests GeoNature Export API sources into PostgreSQL.
//!
//! - `error`: gn2pg's one error type (SQLSTATE, message, DETAIL, HINT, reason) and the one
//!   place errors and warnings are reported to PostgreSQL.
//! - `source`: the remote API (HTTP, auth, pages, paging); no PostgreSQL calls.
//! - `json`: JSON text as `jsonb_in` reads it (parser, page scanner); no PostgreSQL calls.
//! - `encode`: a page's items as PostgreSQL values (jsonb, EWKB, arrays), built off the
//!   backend thread; no PostgreSQL calls.
//! - `loader`: every statement that writes harvested rows, metadata and rejections.
//! - `store`: the engine's bookkeeping statements (registry, run log, parts).
//! - `run`: the harvest engine executed by a background worker.
//! - `window`, `reconcile_run`, `pacing_run`: the engine's side of incremental windows on the
//!   source's clock, reconciliation by range counts and streams paced to the source (their
//!   decisions are in `source::clock`, `source::reconcile`, `source::pacing`).
//! - `bgw`: background-worker plumbing (typed worker arguments, launch, wait, the launcher's
//!   commit, transactions in a worker, connect and confine); `worker`: the harvest workers'
//!   entry points.
//! - `api`: the SQL functions users call, as thin wrappers of `sources` (add, remove), `launch`
//!   (harvest, cancel), `schedule` and `alert`; `registry`: the checks they share.
//! - `guc`: `gn2pg.*` settings.
//! - `access`: roles, running as the extension owner, `gn2pg.allowed_hosts`.
//! - `cron`: cron expressions (validation, next run time); no PostgreSQL calls.
//! - `schedule`: pg_cron jobs, created through a worker connected to the cron database.
//! - `cron_cleanup`: pg_cron jobs of databases without gn2pg (drop, housekeeping); `cron_jobs`:
//!   what it shares with `schedule` (pg_cron loaded, the lock on cron.job, the log purge job).
//! - `alert`: alert webhooks, delivered by a worker after commit.
//! - `diagnostics`: self-checks callable from SQL (`gn2pg._jsonb_selftest`).
//! - `check`: `gn2pg_check_source`, one probe of a source from the database.
//! - `dashboard`: what the web dashboard calls besides the harvest API (acknowledging alerts,
//!   GeoNature accounts).

use pgrx::prelude::*;

mod access;
mod alert;
mod api;
mod bgw;
mod calendar;
mod check;
mod cron;
mod cron_cleanup;
mod cron_jobs;
mod dashboard;
mod diagnostics;
mod encode;
mod error;
mod guc;
mod json;
mod launch;
mod loader;
mod pacing_run;
mod reconcile_run;
mod registry;
mod run;
mod schedule;
mod source;
mod sources;
mod store;
mod window;
mod worker;

#[cfg(test)]
mod alloc_count;
#[cfg(test)]
mod module_graph;
#[cfg(test)]
mod testgen;
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/metadata.sql", name = "metadata", requires = ["schema"]);
extension_sql_file!(
    "../sql/operations.sql",
    name = "operations",
    requires = [
        "schema",
        "metadata",
        // Granted or used by sql/operations.sql.
        api::public::gn2pg_add_source,
        api::public::gn2pg_remove_source,
        api::public::gn2pg_harvest,
        api::public::gn2pg_harvest_async,
        api::public::gn2pg_cancel,
        api::public::gn2pg_harvest_scheduled,
        api::public::gn2pg_schedule,
        api::public::gn2pg_unschedule,
        api::public::gn2pg_check_flows,
        api::public::gn2pg_schedule_check_flows,
        api::public::gn2pg_unschedule_check_flows,
        schedule::cron_next,
        alert::stale_after_minutes,
    ]
);

// The GeoNature destination uses the roles and helpers of operations.sql and metadata.sql.
extension_sql_file!("../sql/destination.sql", name = "destination", requires = ["operations"]);
extension_sql_file!(
    "../sql/dashboard.sql",
    name = "dashboard",
    requires = [
        "operations",
        // dashboard.sql replaces views that destination.sql leaves alone; a fixed order keeps
        // a fresh install and the upgrade script alike.
        "destination",
        // Granted by sql/dashboard.sql.
        check::public::gn2pg_check_source,
        dashboard::public::gn2pg_acknowledge_alert,
        dashboard::public::gn2pg_map_geonature_account,
        dashboard::public::gn2pg_unmap_geonature_account,
    ]
);

// Least privilege: no function of the extension is executable by PUBLIC unless
// sql/operations.sql grants it to a gn2pg role, whatever file or module defines it.
extension_sql!(
    r#"
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT d.objid FROM pg_catalog.pg_depend d
              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'gn2pg')
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
"#,
    name = "revoke_public_execute",
    finalize
);

extension_sql_file!(
    "../sql/lifecycle.sql",
    name = "lifecycle",
    requires = ["operations", "dashboard", cron_cleanup::cron_cleanup_after_commit]
);

// COMMENTs of the functions pgrx generates; after every other file, so that they all exist.
extension_sql_file!(
    "../sql/comments.sql",
    name = "comments",
    requires = ["schema", "metadata", "operations", "destination", "dashboard", "lifecycle"]
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
