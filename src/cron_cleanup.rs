//! pg_cron jobs of databases that no longer have gn2pg. Jobs live in the cron database, apart
//! from the database they run in, so `DROP EXTENSION gn2pg` or `DROP DATABASE` would leave
//! `gn2pg:<source>` firing forever against a function that is gone, and blocking the name for
//! every other database.
//!
//! Wording: an *orphan* is a job named `gn2pg:…` whose database no longer has gn2pg; the
//! *maintenance jobs* are gn2pg's own jobs of the cron database (`gn2pg:purge-cron-log`,
//! `gn2pg:housekeeping`), which only make sense while gn2pg has other jobs.
//!
//! The cron database cannot look into another database, but the shared catalogs tell enough:
//! every database with gn2pg has tables and functions granted to the gn2pg roles
//! (sql/operations.sql), and PostgreSQL records each such grant in `pg_shdepend`. A database
//! without any such record does not have gn2pg (dropped, or the database itself is gone). The
//! schema gn2pg does not count: `DROP EXTENSION` leaves it, with its grant. A database where an
//! administrator granted a gn2pg role another table or function keeps its jobs: the test errs
//! on the side of keeping.
//!
//! Orphans are removed (one statement, `REMOVE_ORPHANS`):
//! - right after a transaction that may have dropped gn2pg commits: an event trigger on
//!   `DROP EXTENSION`, `DROP SCHEMA` and `DROP OWNED` (sql/lifecycle.sql) starts a worker that
//!   waits for that transaction, so a rolled-back or failed drop removes nothing;
//! - whenever gn2pg schedules or unschedules anything (schedule.rs);
//! - by the job `gn2pg:housekeeping` of the cron database, for `DROP DATABASE` (no trigger fires
//!   for it) and for drops that happened while pg_cron could not be reached.

use pgrx::pg_sys;
use pgrx::prelude::*;

use std::sync::atomic::{AtomicU32, Ordering};

use crate::cron_jobs::{PURGE_COMMAND, PURGE_JOB, PURGE_SCHEDULE};

pub const HOUSEKEEPING_JOB: &str = "gn2pg:housekeeping";
pub const HOUSEKEEPING_SCHEDULE: &str = "*/10 * * * *";

/// The statement, run in the cron database without needing gn2pg there. The maintenance jobs go
/// with the last other gn2pg job.
/// A database where gn2pg_schedule runs holds this advisory lock (shared, until its transaction
/// ends): a job made in the transaction that creates the extension is not an orphan while that
/// transaction is open, though its grants are not visible yet. Keys: `'gn2p'` as an integer, 1.
const CLAIM_KEYS: (i32, i32) = (0x676e_3270, 1);

macro_rules! remove_orphans {
    () => {
        "WITH gn2pg_db AS (
                SELECT d.datname::text AS datname
                  FROM pg_catalog.pg_shdepend s JOIN pg_catalog.pg_database d ON d.oid = s.dbid
                 WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
                   AND s.classid IN ('pg_catalog.pg_class'::pg_catalog.regclass, 'pg_catalog.pg_proc'::pg_catalog.regclass)
                   AND s.refobjid IN (SELECT r.oid FROM pg_catalog.pg_roles r
                                       WHERE r.rolname IN ('gn2pg_reader', 'gn2pg_operator', 'gn2pg_admin'))
                UNION
                SELECT d.datname::text
                  FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_database d ON d.oid = l.database
                 WHERE l.locktype = 'advisory' AND l.classid = 1735275120 AND l.objid = 1 AND l.objsubid = 2),
              flow_job AS (
                SELECT j.jobid, j.database FROM cron.job j
                 WHERE j.jobname LIKE 'gn2pg:%' AND j.jobname NOT IN ('gn2pg:purge-cron-log', 'gn2pg:housekeeping')),
              orphan AS (
                SELECT f.jobid FROM flow_job f WHERE f.database NOT IN (SELECT datname FROM gn2pg_db)),
              unneeded AS (
                SELECT j.jobid FROM cron.job j
                 WHERE j.jobname IN ('gn2pg:purge-cron-log', 'gn2pg:housekeeping')
                   AND NOT EXISTS (SELECT 1 FROM flow_job f WHERE f.jobid NOT IN (SELECT jobid FROM orphan)))
         SELECT pg_catalog.count(cron.unschedule(x.jobid))
           FROM (SELECT jobid FROM orphan UNION ALL SELECT jobid FROM unneeded) x"
    };
}

/// Run by gn2pg's workers in the cron database, which hold the schedule lock already.
const REMOVE_ORPHANS: &str = remove_orphans!();

/// What `gn2pg:housekeeping` runs: the same statement after the lock gn2pg takes for every
/// change of its jobs (schedule.rs `cron_op`), so that it never races a schedule being made.
/// Two statements: the second one's snapshot is taken after the lock is granted.
pub const HOUSEKEEPING_COMMAND: &str = concat!(
    "SET LOCAL lock_timeout = '5s'; LOCK TABLE cron.job IN SHARE ROW EXCLUSIVE MODE; SET LOCAL lock_timeout = 0; ",
    remove_orphans!()
);

/// Removes the orphans and, when nothing else of gn2pg is scheduled, the maintenance jobs; returns
/// how many jobs were removed. In a transaction of the cron database, with pg_cron there.
pub fn remove_orphan_jobs() -> Result<i64, String> {
    Spi::get_one::<i64>(REMOVE_ORPHANS).map(|n| n.unwrap_or(0)).map_err(|e| e.to_string())
}

/// Creates the maintenance jobs that are missing (when gn2pg schedules something); an
/// administrator may change them, so existing ones are left as they are. In a transaction of the
/// cron database.
pub fn ensure_maintenance_jobs() -> Result<(), String> {
    for (job, schedule, command) in
        [(PURGE_JOB, PURGE_SCHEDULE, PURGE_COMMAND), (HOUSEKEEPING_JOB, HOUSEKEEPING_SCHEDULE, HOUSEKEEPING_COMMAND)]
    {
        let missing = Spi::get_one_with_args::<bool>(
            "SELECT NOT EXISTS (SELECT 1 FROM cron.job WHERE jobname = $1)",
            &[job.into()],
        )
        .map_err(|e| e.to_string())?
        .unwrap_or(false);
        if missing {
            Spi::run_with_args(
                "SELECT cron.schedule_in_database($1, $2, $3, current_database(), NULL, true)",
                &[job.into(), schedule.into(), command.into()],
            )
            .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Marks this database as having gn2pg until the end of the transaction (see `CLAIM_KEYS`);
/// called by gn2pg_schedule before it asks for a job.
pub fn claim_database() {
    if let Err(e) = Spi::run_with_args(
        "SELECT pg_catalog.pg_advisory_xact_lock_shared($1, $2)",
        &[CLAIM_KEYS.0.into(), CLAIM_KEYS.1.into()],
    ) {
        pgrx::error!("gn2pg: SPI failed: {e}");
    }
}

/// The last transaction that started a cleanup worker: one worker per transaction is enough.
static LAST_XID: AtomicU32 = AtomicU32::new(0);

/// Starts a worker that removes the orphans once this transaction has committed. Called by the
/// event trigger `gn2pg_drop_cleanup` (sql/lifecycle.sql) at the start of a statement that may
/// drop gn2pg, and by the update from 0.2.0 (jobs of databases dropped before). Never waits for
/// the worker and never fails for want of pg_cron: without pg_cron there is nothing to remove;
/// without a worker slot the housekeeping job does it later.
#[pg_extern(name = "_cron_cleanup_after_commit", volatile)]
#[search_path(pg_catalog, pg_temp)]
fn cron_cleanup_after_commit() {
    if !crate::cron_jobs::cron_available() {
        return;
    }
    let owner =
        Spi::get_one::<pg_sys::Oid>("SELECT (SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'gn2pg')")
            .ok()
            .flatten();
    let cron_db = Spi::get_one::<pg_sys::Oid>(
        "SELECT (SELECT oid FROM pg_catalog.pg_database
                  WHERE datname = coalesce(pg_catalog.current_setting('cron.database_name', true), 'postgres'))",
    )
    .ok()
    .flatten();
    let (Some(owner), Some(cron_db)) = (owner, cron_db) else { return };
    // SAFETY: assigns (or returns) the top-level xid of this transaction; reads a backend global.
    let xid = u32::from(unsafe { pg_sys::GetTopTransactionId() });
    if LAST_XID.swap(xid, Ordering::SeqCst) == xid {
        return;
    }
    let started =
        crate::bgw::launch_after_commit("gn2pg cron cleanup", "gn2pg_cron_cleanup_worker", cron_db, owner, true);
    if started.is_err() {
        pgrx::warning!(
            "gn2pg: no free background worker slot to remove the pg_cron jobs of this database now; \
             job {HOUSEKEEPING_JOB} of the cron database removes them within 10 minutes"
        );
    }
}

/// Entry point of the cleanup worker: connects to the cron database as the extension owner,
/// waits for the launching transaction, and removes the orphans if it committed.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gn2pg_cron_cleanup_worker(_arg: pg_sys::Datum) {
    if !crate::bgw::connect_after_commit() {
        return;
    }
    let removed = crate::bgw::tx(|| {
        let has_cron =
            Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron')")
                .map_err(|e| e.to_string())?
                .unwrap_or(false);
        if !has_cron {
            return Ok(0);
        }
        crate::cron_jobs::lock_cron_jobs()?;
        remove_orphan_jobs()
    });
    match removed {
        Ok(0) => {}
        Ok(n) => pgrx::log!("gn2pg: removed {n} pg_cron jobs of databases without gn2pg"),
        Err(e) => pgrx::warning!(
            "gn2pg: could not remove the pg_cron jobs of databases without gn2pg: {e}; \
             job {HOUSEKEEPING_JOB} tries again within 10 minutes"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{CLAIM_KEYS, HOUSEKEEPING_COMMAND, HOUSEKEEPING_JOB, REMOVE_ORPHANS};
    use crate::cron_jobs::PURGE_JOB;

    #[test]
    fn maintenance_job_names_match_the_statement() {
        // The statement is a literal (it is also the job's command): it must name the same jobs.
        for job in [PURGE_JOB, HOUSEKEEPING_JOB] {
            assert!(REMOVE_ORPHANS.contains(&format!("'{job}'")), "{job}");
        }
        let claim = format!("l.classid = {} AND l.objid = {} AND l.objsubid = 2", CLAIM_KEYS.0, CLAIM_KEYS.1);
        assert!(REMOVE_ORPHANS.contains(&claim), "{claim}");
        assert!(HOUSEKEEPING_COMMAND.starts_with(crate::cron_jobs::LOCK_CRON_JOBS));
        assert!(HOUSEKEEPING_COMMAND.ends_with(REMOVE_ORPHANS));
    }
}
