//! Background workers: launching a harvest from SQL, waiting for it, and the worker's entry
//! point. The worker runs in the calling database as the extension owner; what it needs
//! travels in `bgw_extra` (< 128 bytes) and the run id in the main argument.

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

use crate::error::Error;
use crate::guc;
use crate::run::{self, Requested};

/// Harvest workers (runs and parts) running in the cluster now.
fn harvest_workers_running() -> i64 {
    let _ = Spi::run("SELECT pg_catalog.pg_stat_clear_snapshot()");
    Spi::get_one::<i64>(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity
          WHERE backend_type IN ('gn2pg harvest', 'gn2pg harvest part')",
    )
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// Refuses a start that would exceed `gn2pg.max_harvest_workers`. Checked when launching:
/// launches at the very same moment may each see room for themselves.
fn check_worker_cap(more: i64) -> Result<(), String> {
    let (running, max) = (harvest_workers_running(), guc::max_harvest_workers());
    if running + more > max {
        return Err(format!(
            "{running} gn2pg harvest workers are running and gn2pg.max_harvest_workers is {max}: \
             wait for runs to end, or raise gn2pg.max_harvest_workers (and max_worker_processes)"
        ));
    }
    Ok(())
}

/// Whether `parts` more workers fit under `gn2pg.max_harvest_workers` (worker context, outside
/// a transaction).
pub fn room_for_parts(parts: usize) -> bool {
    tx::<_, String>(|| Ok(check_worker_cap(parts as i64).is_ok())).unwrap_or(false)
}

/// Starts a harvest worker in the caller's database. With `wait_for_commit` the worker first waits for the caller's
/// transaction to end, so that `BEGIN; gn2pg_add_source(...); gn2pg_harvest_async(...); COMMIT`
/// works and a rolled-back launch does nothing.
pub fn launch(run_id: i64, source: &str, mode: &str, wait_for_commit: bool) -> Result<DynamicBackgroundWorker, String> {
    check_worker_cap(1)?;
    // SAFETY: reading backend globals of the current session.
    let (db, pid) = unsafe { (pg_sys::MyDatabaseId, pg_sys::MyProcPid) };
    // The worker runs as the extension's owner: it must read credentials that the calling role
    // (an operator) may not. Who may start a run is checked by the SQL function, before this.
    let user =
        Spi::get_one::<pg_sys::Oid>("SELECT (SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'gn2pg')")
            .ok()
            .flatten()
            .ok_or_else(|| "extension gn2pg is not installed in this database".to_string())?;
    let xid: u32 = if wait_for_commit {
        // SAFETY: assigns (or returns) the top-level xid of the current transaction.
        u32::from(unsafe { pg_sys::GetTopTransactionId() })
    } else {
        0
    };
    let extra = format!("{} {} {} {} {}", u32::from(db), u32::from(user), xid, mode, source);
    if extra.len() > 127 {
        return Err(format!("source name too long for a worker: {source}"));
    }
    start_worker(&format!("gn2pg harvest {source}"), "gn2pg harvest", "gn2pg_harvest_worker", run_id, &extra, pid)
        .ok_or_else(|| {
            "no free background worker slot: raise max_worker_processes (and restart) \
         or wait for running harvests to end"
                .to_string()
        })
}

/// Registers a dynamic worker of this library that receives a run id and `extra` (at most 127
/// bytes: `bgw_extra`) and notifies `notify_pid` of its start and end. None: no free slot.
fn start_worker(
    name: &str,
    kind: &str,
    function: &str,
    run_id: i64,
    extra: &str,
    notify_pid: i32,
) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(name)
        .set_type(kind)
        .set_library("gn2pg")
        .set_function(function)
        .enable_spi_access()
        .set_argument(run_id.into_datum())
        .set_extra(extra)
        .set_notify_pid(notify_pid)
        .load_dynamic()
        .ok()
}

/// Sleeps on this backend's latch for at most `ms` (the postmaster sets it when a worker this
/// backend launched starts or stops).
fn wait_latch(ms: i64) {
    // SAFETY: standard latch wait on this backend's own latch.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// Waits until a launched worker has connected (it is then in pg_stat_activity, where other
/// sessions see that its run is alive) and returns its pid.
pub fn wait_until_connected(w: &DynamicBackgroundWorker) -> Result<i32, String> {
    let pid = w.wait_for_startup().map_err(|s| format!("the worker did not start ({s:?})"))?;
    // Bounded: a worker connects within milliseconds; 30 s means something is wrong.
    for _ in 0..3000 {
        let _ = Spi::run("SELECT pg_catalog.pg_stat_clear_snapshot()");
        let seen = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1)",
            &[pid.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if seen {
            return Ok(pid);
        }
        if w.pid().is_err() {
            return Err("the worker stopped before it connected (see the server log)".into());
        }
        wait_latch(10);
        pg_sys::check_for_interrupts!();
    }
    Err("the worker did not connect within 30 s".into())
}

/// Starts a part worker of a parallel run, from the run's own worker (same database and role).
pub fn launch_part(run_id: i64, part: i32, source: &str) -> Result<DynamicBackgroundWorker, String> {
    tx(|| check_worker_cap(1)).map_err(|e| format!("part {part}: {e}"))?;
    // SAFETY: reading backend globals of this worker.
    let (db, user, pid) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetUserId(), pg_sys::MyProcPid) };
    let extra = format!("{} {} {} {}", u32::from(db), u32::from(user), part, source);
    start_worker(
        &format!("gn2pg harvest {source} part {part}"),
        "gn2pg harvest part",
        "gn2pg_part_worker",
        run_id,
        &extra,
        pid,
    )
    .ok_or_else(|| {
        format!("no free background worker slot for part {part}: lower options.workers or raise max_worker_processes")
    })
}

/// Entry point of a part worker.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gn2pg_part_worker(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SAFETY: the launcher passed an int8 by value.
    let run_id = unsafe { i64::from_datum(arg, false) }.unwrap_or(0);
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.splitn(4, ' ');
    let mut num = || parts.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    let (db, user, part) = (num(), num(), num());
    let source = parts.next().unwrap_or("").to_string();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), Some(pg_sys::Oid::from(user)));
    crate::access::confine_worker();
    run::execute_part(run_id, part as i32, &source);
}

/// Waits for a worker to exit. A cancel of the caller (Ctrl-C, statement_timeout,
/// pg_cancel_backend) stops the worker too, then raises the usual cancel error.
pub fn wait(worker: DynamicBackgroundWorker) -> Result<(), String> {
    // Bounded only by the run itself; each turn sleeps on the latch, which the postmaster sets
    // when the worker stops (bgw_notify_pid).
    loop {
        match worker.pid() {
            Err(BackgroundWorkerStatus::Stopped) => return Ok(()),
            Err(BackgroundWorkerStatus::PostmasterDied) => return Err("the postmaster died".into()),
            _ => {}
        }
        wait_latch(200);
        // SAFETY: reading sig_atomic_t flags of this process.
        let cancelled = unsafe { pg_sys::QueryCancelPending != 0 || pg_sys::ProcDiePending != 0 };
        if cancelled {
            let _stopping = worker.terminate();
            // Raises "canceling statement due to user request" (or terminates the session).
            pg_sys::check_for_interrupts!();
            return Err("interrupted".into());
        }
        pg_sys::check_for_interrupts!();
    }
}

/// Entry point named in `set_function`; PostgreSQL looks it up in gn2pg.so by name.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gn2pg_harvest_worker(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SAFETY: the launcher passed an int8 by value.
    let run_id = unsafe { i64::from_datum(arg, false) }.unwrap_or(0);
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.splitn(5, ' ');
    let mut num = || parts.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    let (db, user, xid) = (num(), num(), num());
    let mode = parts.next().and_then(Requested::parse).unwrap_or(Requested::Auto);
    let source = parts.next().unwrap_or("").to_string();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), Some(pg_sys::Oid::from(user)));
    crate::access::confine_worker();
    if !launcher_committed(xid) {
        pgrx::log!("gn2pg: the launch of run {run_id} was rolled back; nothing to do");
        return;
    }
    run::execute(run_id, &source, mode);
}

/// What a failed transaction of [`tx`] gives back when PostgreSQL raised an ERROR in it.
pub trait TxFailure {
    fn caught(e: &pg_sys::panic::CaughtError) -> Self;
}

impl TxFailure for String {
    fn caught(e: &pg_sys::panic::CaughtError) -> String {
        caught_message(e)
    }
}

/// The SQLSTATE of PostgreSQL's ERROR is kept.
impl TxFailure for Error {
    fn caught(e: &pg_sys::panic::CaughtError) -> Error {
        Error::caught(e)
    }
}

/// Runs `f` in its own transaction. Any ERROR (or an `Err`) rolls the transaction back and
/// comes back as `Err` (the closure's own, or the ERROR as `E`), so the engine can record it and
/// carry on.
pub fn tx<R, E: TxFailure>(f: impl FnOnce() -> Result<R, E>) -> Result<R, E> {
    let failed: Cell<Option<E>> = Cell::new(None);
    let failed_here = AssertUnwindSafe(&failed);
    let f = AssertUnwindSafe(f);
    PgTryBuilder::new(AssertUnwindSafe(|| {
        Ok(BackgroundWorker::transaction(AssertUnwindSafe(|| match (f.0)() {
            Ok(v) => v,
            Err(e) => {
                failed.set(Some(e));
                // Only to roll back: the caller gets `e` itself.
                pgrx::error!("gn2pg: transaction rolled back")
            }
        })))
    }))
    .catch_others(move |e| {
        // SAFETY: BackgroundWorker::transaction re-raised without closing the transaction.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(failed_here.take().unwrap_or_else(|| E::caught(&e)))
    })
    .execute()
}

pub fn caught_message(e: &pg_sys::panic::CaughtError) -> String {
    Error::caught(e).message
}

/// The start of a worker that acts for its launcher's transaction: signal handlers, then a
/// connection to the database and as the role given in `bgw_extra` ("<database oid> <role oid>
/// <xid>"), confined like every worker (`access::confine_worker`), then the wait for that transaction. False: it rolled back, there is nothing to do.
pub fn connect_after_commit() -> bool {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.split(' ').map(|s| s.parse::<u32>().unwrap_or(0));
    let (db, user, xid) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), Some(pg_sys::Oid::from(user)));
    crate::access::confine_worker();
    launcher_committed(xid)
}

/// Waits for the launching transaction `xid` (0: none to wait for) and tells whether it
/// committed: a worker launched from a transaction that rolled back must do nothing.
pub fn launcher_committed(xid: u32) -> bool {
    if xid == 0 {
        return true;
    }
    let xid = pg_sys::TransactionId::from(xid);
    BackgroundWorker::transaction(|| unsafe {
        // SAFETY: waits on the launcher's xid lock, then reads the commit log.
        pg_sys::XactLockTableWait(xid, std::ptr::null_mut(), std::ptr::null_mut(), pg_sys::XLTW_Oper::XLTW_None);
        pg_sys::TransactionIdDidCommit(xid)
    })
}
