//! gn2pg: harvests GeoNature Export API sources into PostgreSQL.
//!
//! - `source`: the remote API (HTTP, auth, pages, paging); no PostgreSQL calls.
//! - `store`: every SQL statement of the engine, including the set-based page loader.
//! - `run`: the harvest engine executed by a background worker.
//! - `worker`: launching, waiting for and entering background workers.
//! - `api`: the SQL functions users call.
//! - `guc`: `gn2pg.*` settings.

use pgrx::prelude::*;

mod api;
mod guc;
mod run;
mod source;
mod store;
mod worker;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/metadata.sql", name = "metadata", requires = ["schema"]);
extension_sql_file!("../sql/operations.sql", name = "operations", requires = ["schema", "metadata"]);

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
