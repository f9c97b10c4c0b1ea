//! What gn2pg's pg_cron jobs share, whoever changes them (schedule.rs for the jobs of the
//! sources, cron_cleanup.rs for the orphans and the maintenance jobs): whether pg_cron is
//! loaded, the lock every change takes, and the job that prunes pg_cron's log.

use pgrx::prelude::*;

/// Job that keeps `cron.job_run_details` small (pg_cron never prunes it); created once, in the
/// cron database, the first time gn2pg schedules something. Change it there with cron.schedule.
pub const PURGE_JOB: &str = "gn2pg:purge-cron-log";
pub const PURGE_SCHEDULE: &str = "17 3 * * *";
pub const PURGE_COMMAND: &str = "DELETE FROM cron.job_run_details WHERE end_time < now() - interval '14 days'";

/// Whether a `shared_preload_libraries` value lists `lib` (quoted or not, with or without a path).
pub fn preloads(list: &str, lib: &str) -> bool {
    list.split(',')
        .map(|s| s.trim().trim_matches('"').trim())
        .map(|s| s.rsplit('/').next().unwrap_or(s).trim_end_matches(".so"))
        .any(|s| s == lib)
}

/// Whether pg_cron can be reached at all (for gn2pg_remove_source, which must work without it).
pub fn cron_available() -> bool {
    let spl = Spi::get_one::<String>("SELECT pg_catalog.current_setting('shared_preload_libraries')")
        .ok()
        .flatten()
        .unwrap_or_default();
    preloads(&spl, "pg_cron")
}

/// Serialises every change of gn2pg's pg_cron jobs (`cron_op`, the cleanup worker and the
/// housekeeping job take it): a lock on cron.job itself, not an advisory lock any role could hold
/// to block this. Only roles allowed to write cron.job (pg_cron users, in a transaction left open)
/// conflict, and only for 5 seconds. In a transaction of the cron database.
pub fn lock_cron_jobs() -> Result<(), String> {
    Spi::run(LOCK_CRON_JOBS).map_err(|e| e.to_string())
}

/// The statements of [`lock_cron_jobs`], also the start of the housekeeping job's command.
pub const LOCK_CRON_JOBS: &str = "SET LOCAL lock_timeout = '5s'; \
LOCK TABLE cron.job IN SHARE ROW EXCLUSIVE MODE; SET LOCAL lock_timeout = 0";

#[cfg(test)]
mod tests {
    use super::preloads;

    #[test]
    fn shared_preload_libraries_parsing() {
        assert!(preloads("pg_cron", "pg_cron"));
        assert!(preloads("pg_stat_statements, pg_cron", "pg_cron"));
        assert!(preloads("\"pg_cron\",auto_explain", "pg_cron"));
        assert!(preloads("$libdir/pg_cron.so", "pg_cron"));
        assert!(!preloads("", "pg_cron"));
        assert!(!preloads("pg_cron_x, xpg_cron", "pg_cron"));
    }
}
