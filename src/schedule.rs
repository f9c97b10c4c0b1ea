//! Scheduling with pg_cron 1.4.2. pg_cron lives in one database (`cron.database_name`) and
//! only there can `cron.schedule_in_database` be called; gn2pg usually lives elsewhere. So
//! `gn2pg_schedule` hands the call to a short-lived background worker connected to the cron
//! database as the extension owner (a superuser, who may create jobs for any role), and
//! waits for it. The request and the answer travel through a small dynamic shared memory
//! segment; the job itself runs in this database as the role that scheduled it.
//!
//! Wording: a *job* is the pg_cron row `gn2pg:<source>` (one per source and database); a
//! *schedule* is gn2pg's own record of it (`gn2pg.schedule`), which `gn2pg.flow_status` shows.
//! The cron side takes effect at once and is not undone if the calling transaction rolls back.

use std::sync::atomic::{AtomicU32, Ordering};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{json, Value};

use crate::access;
use crate::bgw::{self, ConnectArgs, WorkerArgs};
use crate::cron_jobs::{lock_cron_jobs, preloads};
use crate::error::{Error, Reason, SqlState};

fn raise(code: PgSqlErrorCode, msg: String, hint: Option<&str>) -> ! {
    crate::error::raise(code, msg, None, hint)
}

/// The cron database, or a clear error when pg_cron cannot be used.
fn cron_database() -> (String, pg_sys::Oid) {
    let spl = Spi::get_one::<String>("SELECT pg_catalog.current_setting('shared_preload_libraries')")
        .ok()
        .flatten()
        .unwrap_or_default();
    if !preloads(&spl, "pg_cron") {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "gn2pg: pg_cron is not loaded, so gn2pg cannot schedule harvests".into(),
            Some("Install pg_cron (Debian: postgresql-15-cron), add pg_cron to shared_preload_libraries, set cron.database_name, restart PostgreSQL, then run CREATE EXTENSION pg_cron in that database."),
        );
    }
    let db =
        Spi::get_one::<String>("SELECT coalesce(pg_catalog.current_setting('cron.database_name', true), 'postgres')")
            .ok()
            .flatten()
            .unwrap_or_else(|| "postgres".into());
    let oid = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT (SELECT oid FROM pg_catalog.pg_database WHERE datname = $1)",
        &[db.as_str().into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("gn2pg: the pg_cron database \"{db}\" (cron.database_name) does not exist"),
            Some(&format!("CREATE DATABASE \"{db}\"; then CREATE EXTENSION pg_cron; in it.")),
        )
    });
    (db, oid)
}

// The mailbox: [state u32][request length u32][reply length u32][pad u32][request][reply].
const HEADER: usize = 16;
const HALF: usize = 8192;
const MAILBOX: usize = HEADER + 2 * HALF;
/// `state` once the worker has written its answer (0 before).
const ANSWERED: u32 = 1;

/// One call to the cron worker: `request` and the answer are JSON objects.
fn call_cron_worker(cron_db: pg_sys::Oid, request: &Value) -> Value {
    let req = request.to_string();
    if req.len() > HALF {
        raise(PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "gn2pg: schedule request too long".into(), None);
    }
    // SAFETY: a fresh segment of MAILBOX bytes, attached to the current resource owner (so an
    // ERROR below detaches it); we only write inside it.
    let (seg, base) = unsafe {
        let seg = pg_sys::dsm_create(MAILBOX, 0);
        let base = pg_sys::dsm_segment_address(seg) as *mut u8;
        std::ptr::write_bytes(base, 0, HEADER);
        std::ptr::copy_nonoverlapping(req.as_ptr(), base.add(HEADER), req.len());
        *(base.add(4) as *mut u32) = req.len() as u32;
        (seg, base)
    };
    // SAFETY: reading backend globals.
    let (handle, pid) = unsafe { (pg_sys::dsm_segment_handle(seg), pg_sys::MyProcPid) };
    let owner = access::extension_owner();
    let extra = ConnectArgs { database: u32::from(cron_db), role: u32::from(owner) }.encode().unwrap_or_else(|e| {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("gn2pg: pg_cron helper worker arguments: {e}"), None)
    });
    let worker = BackgroundWorkerBuilder::new("gn2pg cron")
        .set_type("gn2pg cron")
        .set_library("gn2pg")
        .set_function("gn2pg_cron_worker")
        .enable_spi_access()
        .set_argument(i64::from(handle).into_datum())
        .set_extra(&extra)
        .set_notify_pid(pid)
        .load_dynamic()
        .unwrap_or_else(|_| {
            raise(
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                "gn2pg: no free background worker slot to reach pg_cron".into(),
                Some("Raise max_worker_processes (and restart), or try again when harvests end."),
            )
        });
    if let Err(e) = bgw::wait(worker) {
        raise(
            PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
            format!("gn2pg: the pg_cron helper worker: {e}"),
            None,
        );
    }
    // SAFETY: the worker has exited; the answer (if any) is complete when state says so.
    let answer = unsafe {
        let state = (*(base as *const AtomicU32)).load(Ordering::SeqCst);
        let len = (*(base.add(8) as *const u32) as usize).min(HALF);
        let text = if state == ANSWERED {
            Some(String::from_utf8_lossy(std::slice::from_raw_parts(base.add(HEADER + HALF), len)).into_owned())
        } else {
            None
        };
        pg_sys::dsm_detach(seg);
        text
    };
    let Some(answer) = answer else {
        raise(
            PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
            "gn2pg: the pg_cron helper worker stopped without answering".into(),
            Some("See the server log (it could not connect to the cron database?)."),
        );
    };
    let v: Value = serde_json::from_str(&answer).unwrap_or_else(|_| json!({"ok": false, "error": answer}));
    if v["ok"].as_bool() != Some(true) {
        let msg = v["error"].as_str().unwrap_or("unknown error");
        // A refusal the cron worker classified keeps its SQLSTATE; an error of pg_cron itself is
        // an external routine's (38000).
        let state = v["sqlstate"].as_str().and_then(SqlState::parse).unwrap_or(SqlState::EXTERNAL_ROUTINE_EXCEPTION);
        let mut e = Error::new(Reason::Config, state, format!("gn2pg: pg_cron refused: {msg}"));
        e.hint = v["hint"].as_str().map(str::to_string);
        e.raise();
    }
    v
}

/// What the cron worker does, in one transaction of the cron database.
fn cron_op(req: &Value) -> Result<Value, String> {
    let s = |k: &str| req[k].as_str().unwrap_or("").to_string();
    let (op, job, db) = (s("op"), s("job"), s("database"));
    let has_cron =
        Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron')")
            .map_err(|e| e.to_string())?
            .unwrap_or(false);
    if !has_cron {
        return Ok(json!({
            "ok": false,
            "sqlstate": SqlState::NOT_IN_PREREQUISITE_STATE.as_str(),
            "error": "pg_cron is loaded but its extension is not created in the cron database",
            "hint": "Run CREATE EXTENSION pg_cron; in the database named by cron.database_name.",
        }));
    }
    // One gn2pg schedule change at a time, whatever the database: keeps one job per name.
    lock_cron_jobs()?;
    // Jobs of databases without gn2pg go first: they must not block a name (cron_cleanup.rs).
    crate::cron_cleanup::remove_orphan_jobs()?;
    // Jobs of this name for this database, or for a database that was dropped since.
    let remove = "SELECT count(cron.unschedule(j.jobid))::bigint FROM cron.job j
                   WHERE j.jobname = $1::name
                     AND (j.database = $2 OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.datname = j.database))";
    match op.as_str() {
        "schedule" => {
            let other = Spi::get_one_with_args::<String>(
                "SELECT (SELECT j.database::text FROM cron.job j
                          WHERE j.jobname = $1::name AND j.database <> $2
                            AND EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.datname = j.database) LIMIT 1)",
                &[job.as_str().into(), db.as_str().into()],
            )
            .map_err(|e| e.to_string())?;
            if let Some(other) = other {
                return Ok(json!({
                    "ok": false,
                    "sqlstate": SqlState::DUPLICATE_OBJECT.as_str(),
                    "error": format!("job {job} already exists for database {other}"),
                    "hint": "pg_cron job names are shared by every database of the cluster: give this source another name, or unschedule it in the other database.",
                }));
            }
            Spi::get_one_with_args::<i64>(remove, &[job.as_str().into(), db.as_str().into()])
                .map_err(|e| e.to_string())?;
            let jobid = Spi::get_one_with_args::<i64>(
                "SELECT cron.schedule_in_database($1, $2, $3, $4, $5, true)",
                &[
                    job.as_str().into(),
                    s("schedule").as_str().into(),
                    s("command").as_str().into(),
                    db.as_str().into(),
                    s("username").as_str().into(),
                ],
            )
            .map_err(|e| e.to_string())?;
            crate::cron_cleanup::ensure_maintenance_jobs()?;
            Ok(json!({"ok": true, "jobid": jobid}))
        }
        "unschedule" => {
            let n = Spi::get_one_with_args::<i64>(remove, &[job.as_str().into(), db.as_str().into()])
                .map_err(|e| e.to_string())?
                .unwrap_or(0);
            Ok(json!({"ok": true, "removed": n}))
        }
        other => Ok(
            json!({"ok": false, "sqlstate": SqlState::INTERNAL_ERROR.as_str(), "error": format!("unknown operation {other}")}),
        ),
    }
}

/// Entry point of the cron helper worker: reads the request from the mailbox, connects to the
/// cron database, runs `cron_op`, writes the answer.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gn2pg_cron_worker(arg: pg_sys::Datum) {
    let args: ConnectArgs = bgw::begin();
    let handle = bgw::main_arg(arg) as u32;
    // SAFETY: attaches the launcher's segment (session lifetime: no resource owner yet); NULL
    // when the launcher gave up and the segment is gone.
    let seg = unsafe { pg_sys::dsm_attach(handle) };
    if seg.is_null() {
        return;
    }
    // SAFETY: the segment holds MAILBOX bytes laid out by call_cron_worker.
    let base = unsafe { pg_sys::dsm_segment_address(seg) as *mut u8 };
    let request: Value = unsafe {
        let len = (*(base.add(4) as *const u32) as usize).min(HALF);
        serde_json::from_slice(std::slice::from_raw_parts(base.add(HEADER), len)).unwrap_or(Value::Null)
    };
    bgw::connect(args.database, args.role);
    let answer =
        PgTryBuilder::new(std::panic::AssertUnwindSafe(|| BackgroundWorker::transaction(|| cron_op(&request))))
            .catch_others(|e| {
                // SAFETY: BackgroundWorker::transaction re-raised without closing the transaction.
                unsafe { pg_sys::AbortCurrentTransaction() };
                use pg_sys::panic::CaughtError::*;
                Err(match &e {
                    PostgresError(r) | ErrorReport(r) | RustPanic { ereport: r, .. }
                        if r.sql_error_code() == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE =>
                    {
                        "another session kept cron.job locked for more than 5 s \
                         (a pg_cron job change in a transaction left open?): try again"
                            .to_string()
                    }
                    PostgresError(r) | ErrorReport(r) | RustPanic { ereport: r, .. } => r.message().to_string(),
                })
            })
            .execute();
    let answer = match answer {
        Ok(v) => v,
        Err(e) => json!({"ok": false, "error": e}),
    }
    .to_string();
    let bytes = &answer.as_bytes()[..answer.len().min(HALF)];
    // SAFETY: writes inside the mailbox, then publishes; the launcher reads after we exit.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(HEADER + HALF), bytes.len());
        *(base.add(8) as *mut u32) = bytes.len() as u32;
        (*(base as *const AtomicU32)).store(ANSWERED, Ordering::SeqCst);
        pg_sys::dsm_detach(seg);
    }
}

/// pg_cron job names are of type name: longer ones are cut at 63 bytes (queries compare
/// with `$1::name`, which cuts the same way).
fn job_name(source: &str) -> String {
    format!("gn2pg:{source}")
}

/// The job that runs gn2pg_check_flows() for this database.
fn check_job_name(db: &str) -> String {
    format!("gn2pg:check-flows:{db}")
}

fn check_schedule_expr(expr: &str) -> &str {
    let expr = expr.trim();
    if let Err(e) = crate::cron::parse(expr) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("gn2pg: invalid schedule {expr:?}: {e}"),
            Some("Use cron format in UTC, e.g. '*/30 * * * *' (every 30 minutes) or '0 3 * * *' (03:00 UTC daily); pg_cron 1.4 has minute granularity."),
        );
    }
    expr
}

/// The role a job created now runs as: a login role (a background worker cannot connect as a
/// NOLOGIN role on PostgreSQL 15), which needs gn2pg_operator to run harvests. That is the
/// current role when it can log in (the web dashboard acts with SET ROLE as the signed-in
/// role), else the session's. Call it before switching to the extension owner.
fn job_role() -> String {
    // Still the caller's rights, but not its search_path: a pg_temp.text domain would run a
    // CHECK of the caller's in the middle of gn2pg_schedule.
    access::pinned(|| {
        Spi::get_one::<String>(
            "SELECT CASE WHEN r.rolcanlogin THEN current_user ELSE session_user END::pg_catalog.text
               FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user",
        )
        .ok()
        .flatten()
        .unwrap_or_default()
    })
}

/// Creates or replaces job `job` of this database, running `command` as `run_as`; returns
/// (job id, cron database). Runs as the extension owner.
fn schedule_job(job: &str, expr: &str, command: &str, run_as: &str) -> (i64, String) {
    let (cron_db, cron_oid) = cron_database();
    let db = current_database();
    crate::cron_cleanup::claim_database();
    let answer = call_cron_worker(
        cron_oid,
        &json!({"op": "schedule", "job": job, "schedule": expr, "command": command, "database": db, "username": run_as}),
    );
    (answer["jobid"].as_i64().unwrap_or(0), cron_db)
}

/// Removes job `job` of this database; returns how many jobs were removed.
fn unschedule_job(job: &str) -> i64 {
    let (_, cron_oid) = cron_database();
    let db = current_database();
    call_cron_worker(cron_oid, &json!({"op": "unschedule", "job": job, "database": db}))["removed"]
        .as_i64()
        .unwrap_or(0)
}

fn current_database() -> String {
    Spi::get_one::<String>("SELECT current_database()::text").ok().flatten().unwrap_or_default()
}

/// `gn2pg_schedule`: creates or replaces the pg_cron job of a source; returns its job id.
pub fn schedule(source: &str, expr: &str, mode: &str) -> i64 {
    access::require(access::ADMIN, "gn2pg_schedule()");
    crate::registry::parse_mode(mode);
    let expr = check_schedule_expr(expr);
    let run_as = job_role();
    access::as_owner(|| {
        crate::registry::require_source(source);
        let command = Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.format('SELECT public.gn2pg_harvest_scheduled(%L, %L)', $1::text, $2::text)",
            &[source.into(), mode.into()],
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let (jobid, cron_db) = schedule_job(&job_name(source), expr, &command, &run_as);
        Spi::run_with_args(
            "INSERT INTO gn2pg.schedule (source, schedule, mode, job_name, cron_jobid, cron_database, run_as)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (source) DO UPDATE
                SET schedule = EXCLUDED.schedule, mode = EXCLUDED.mode, job_name = EXCLUDED.job_name,
                    cron_jobid = EXCLUDED.cron_jobid, cron_database = EXCLUDED.cron_database,
                    run_as = EXCLUDED.run_as, scheduled_at = now()",
            &[
                source.into(),
                expr.into(),
                mode.into(),
                job_name(source).as_str().into(),
                jobid.into(),
                cron_db.as_str().into(),
                run_as.as_str().into(),
            ],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("gn2pg: SPI failed: {e}"), None));
        jobid
    })
}

/// Removes the pg_cron job of a source (and gn2pg's record of it). Returns whether there was one.
/// Runs as the extension owner; the caller checked the role.
pub fn unschedule_unchecked(source: &str) -> bool {
    let had_row = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM gn2pg.schedule WHERE source = $1)",
        &[source.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    let removed = unschedule_job(&job_name(source));
    let _ = Spi::run_with_args("DELETE FROM gn2pg.schedule WHERE source = $1", &[source.into()]);
    had_row || removed > 0
}

/// `gn2pg_unschedule`.
pub fn unschedule(source: &str) -> bool {
    access::require(access::ADMIN, "gn2pg_unschedule()");
    crate::registry::check_name(source);
    let removed = access::as_owner(|| unschedule_unchecked(source));
    if !removed {
        pgrx::notice!("gn2pg: source \"{source}\" has no schedule, nothing removed");
    }
    removed
}

/// `gn2pg_schedule_check_flows`: creates or replaces the job `gn2pg:check-flows:<database>`
/// that runs gn2pg_check_flows(); returns its job id.
pub fn schedule_check_flows(expr: &str) -> i64 {
    access::require(access::ADMIN, "gn2pg_schedule_check_flows()");
    let expr = check_schedule_expr(expr);
    let run_as = job_role();
    access::as_owner(|| {
        schedule_job(&check_job_name(&current_database()), expr, "SELECT public.gn2pg_check_flows()", &run_as).0
    })
}

/// `gn2pg_unschedule_check_flows`: removes that job; false if there was none.
pub fn unschedule_check_flows() -> bool {
    access::require(access::ADMIN, "gn2pg_unschedule_check_flows()");
    access::as_owner(|| unschedule_job(&check_job_name(&current_database())) > 0)
}

/// Next time a cron expression fires after `after` (UTC, as pg_cron 1.4 runs); NULL for an
/// invalid expression or `@reboot`.
#[pg_extern(name = "_cron_next", immutable, parallel_safe)]
fn cron_next(expr: &str, after: pgrx::datum::TimestampWithTimeZone) -> Option<pgrx::datum::TimestampWithTimeZone> {
    const PG_EPOCH_UNIX: i64 = 946_684_800;
    let us = pg_sys::TimestampTz::from(after);
    let unix = us.div_euclid(1_000_000) + PG_EPOCH_UNIX;
    let next = crate::cron::parse(expr).ok()?.next_after(unix)?;
    pgrx::datum::TimestampWithTimeZone::try_from((next - PG_EPOCH_UNIX) * 1_000_000).ok()
}
