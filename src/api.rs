//! The SQL API (docs/sql-api.md): thin `#[pg_extern]` wrappers. Functions are created in
//! `public` so that `SELECT gn2pg_harvest('pne')` works with the default search_path; tables stay
//! in schema gn2pg. The work is done by sources.rs (registry), launch.rs (runs), schedule.rs
//! (pg_cron jobs) and alert.rs, each of which validates its arguments (registry.rs).
//!
//! Permissions (access.rs): each function checks the caller's role, then works as the
//! extension owner: the tables are read-only for the gn2pg roles, and these functions are the
//! only way to change them.

use pgrx::prelude::*;

#[pg_schema]
mod public {
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// Registers a source, or updates it when the name exists. Returns the source id.
    #[allow(clippy::too_many_arguments)]
    #[pg_extern]
    fn gn2pg_add_source(
        name: &str,
        url: &str,
        export_id: i32,
        auth: default!(Option<&str>, "NULL"),
        login: default!(Option<&str>, "NULL"),
        password: default!(Option<&str>, "NULL"),
        token: default!(Option<&str>, "NULL"),
        options: default!(Option<JsonB>, "'{}'"),
        alert_webhook: default!(Option<&str>, "NULL"),
    ) -> i32 {
        crate::sources::add_source(name, url, export_id, auth, login, password, token, options, alert_webhook)
    }

    /// Removes a source (refused while it runs). Harvested rows are kept unless drop_data.
    #[pg_extern]
    fn gn2pg_remove_source(name: &str, drop_data: default!(bool, false)) -> bool {
        crate::sources::remove_source(name, drop_data)
    }

    /// Harvests a source in a background worker and waits: returns the run_log row as jsonb,
    /// raises if the run did not succeed.
    #[pg_extern]
    fn gn2pg_harvest(source: &str, mode: default!(&str, "'auto'")) -> JsonB {
        crate::launch::harvest(source, mode)
    }

    /// Starts a harvest in a background worker after this transaction commits; returns the run id.
    #[pg_extern]
    fn gn2pg_harvest_async(source: &str, mode: default!(&str, "'auto'")) -> i64 {
        crate::launch::harvest_async(source, mode)
    }

    /// Stops a running harvest; pages already loaded stay. Returns false if it was not running.
    #[pg_extern]
    fn gn2pg_cancel(run_id: i64) -> bool {
        crate::launch::cancel(run_id)
    }

    /// What the pg_cron job of a source runs: starts a harvest like gn2pg_harvest_async, or
    /// returns NULL without a run when the source is disabled or still being harvested.
    #[pg_extern]
    fn gn2pg_harvest_scheduled(source: &str, mode: default!(&str, "'auto'")) -> Option<i64> {
        crate::launch::harvest_scheduled(source, mode)
    }

    /// Creates or replaces the pg_cron job gn2pg:<source> (UTC cron format); returns its job id.
    #[pg_extern]
    fn gn2pg_schedule(source: &str, schedule: &str, mode: default!(&str, "'auto'")) -> i64 {
        crate::schedule::schedule(source, schedule, mode)
    }

    /// Removes the pg_cron job of a source. Returns false if it had none.
    #[pg_extern]
    fn gn2pg_unschedule(source: &str) -> bool {
        crate::schedule::unschedule(source)
    }

    /// Creates or replaces the pg_cron job gn2pg:check-flows:<database>, which runs
    /// gn2pg_check_flows(); returns its job id.
    #[pg_extern]
    fn gn2pg_schedule_check_flows(schedule: default!(&str, "'*/15 * * * *'")) -> i64 {
        crate::schedule::schedule_check_flows(schedule)
    }

    /// Removes the job created by gn2pg_schedule_check_flows(); false if there was none.
    #[pg_extern]
    fn gn2pg_unschedule_check_flows() -> bool {
        crate::schedule::unschedule_check_flows()
    }

    /// Raises 'stale' alerts for sources without a recent successful run (schedule it with
    /// pg_cron); returns the number of alerts raised.
    #[pg_extern]
    fn gn2pg_check_flows() -> i32 {
        crate::alert::check_flows()
    }
}
