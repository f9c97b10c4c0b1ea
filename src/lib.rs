//! gn2pg: harvests GeoNature Export API sources into PostgreSQL.
//!
//! - `source`: the remote API (HTTP, auth, pages, paging); no PostgreSQL calls.
//! - `json`: JSON text as `jsonb_in` reads it (parser, page scanner); no PostgreSQL calls.
//! - `encode`: a page's items as PostgreSQL values (jsonb, EWKB, arrays), built off the
//!   backend thread; no PostgreSQL calls.
//! - `loader`: every statement that writes harvested rows, metadata and rejections.
//! - `store`: the engine's bookkeeping statements (registry, run log, parts).
//! - `run`: the harvest engine executed by a background worker.
//! - `worker`: launching, waiting for and entering background workers.
//! - `api`: the SQL functions users call.
//! - `guc`: `gn2pg.*` settings.
//! - `access`: roles, running as the extension owner, `gn2pg.allowed_hosts`.
//! - `cron`: cron expressions (validation, next run time); no PostgreSQL calls.
//! - `schedule`: pg_cron jobs, created through a worker connected to the cron database.
//! - `cron_cleanup`: pg_cron jobs of databases without gn2pg (drop, housekeeping).
//! - `alert`: alert webhooks, delivered by a worker after commit.
//! - `diagnostics`: self-checks callable from SQL (`gn2pg._jsonb_selftest`).

use pgrx::prelude::*;

mod access;
mod alert;
mod api;
mod cron;
mod cron_cleanup;
mod diagnostics;
mod encode;
mod guc;
mod json;
mod loader;
mod run;
mod schedule;
mod source;
mod store;
mod worker;

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

extension_sql_file!(
    "../sql/lifecycle.sql",
    name = "lifecycle",
    requires = ["operations", cron_cleanup::cron_cleanup_after_commit]
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
