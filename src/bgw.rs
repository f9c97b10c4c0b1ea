//! Background-worker plumbing shared by every gn2pg worker: typed worker arguments (what travels
//! in `bgw_extra`), launching, waiting for a worker, waiting for the launcher's commit,
//! transactions inside a worker ([`tx`]), signal handlers and the connection (confined like
//! every worker, `access::confine_worker`). The entry points stay where their work is
//! (worker.rs, alert.rs, cron_cleanup.rs, schedule.rs) and only call into this module.

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

use crate::error::Error;
use crate::guc;

/// `bgw_extra` holds 128 bytes, the terminating NUL included.
const EXTRA_MAX: usize = 127;

/// Arguments of a worker kind, carried in `bgw_extra` as space-separated fields; the last field
/// (a source name) takes the rest of the text, spaces included.
pub trait WorkerArgs: Sized {
    fn encode(&self) -> Result<String, String>;
    fn decode(extra: &str) -> Result<Self, String>;
}

/// A harvest worker (`gn2pg_harvest_worker`): "database role xid mode source".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarvestArgs {
    pub database: u32,
    pub role: u32,
    /// The launching transaction to wait for; 0: none.
    pub launcher_xid: u32,
    /// As given to the SQL function (`auto`, `full`, `incremental`), checked there.
    pub mode: String,
    pub source: String,
}

/// A part worker of a parallel run (`gn2pg_part_worker`): "database role part source".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartArgs {
    pub database: u32,
    pub role: u32,
    pub part: u32,
    pub source: String,
}

/// A worker whose launcher waits for it (the pg_cron helper, `gn2pg_cron_worker`): "database role".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectArgs {
    pub database: u32,
    pub role: u32,
}

/// A worker that acts for its launcher's transaction once it commits (alert delivery, cron
/// cleanup): "database role xid".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterCommitArgs {
    pub database: u32,
    pub role: u32,
    /// 0: no transaction to wait for.
    pub launcher_xid: u32,
}

fn fits(extra: String) -> Result<String, String> {
    if extra.len() > EXTRA_MAX {
        return Err(format!("worker arguments longer than {EXTRA_MAX} bytes: {extra}"));
    }
    Ok(extra)
}

fn word(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.contains(' ') {
        return Err(format!("{field} must be one non-empty word: {value:?}"));
    }
    Ok(())
}

/// Splits `extra` into `numbers` unsigned fields, then `words` single words, then the rest.
struct Fields<'a> {
    parts: std::str::SplitN<'a, char>,
}

impl<'a> Fields<'a> {
    fn new(extra: &'a str, count: usize) -> Self {
        Fields { parts: extra.splitn(count, ' ') }
    }

    fn text(&mut self, field: &str) -> Result<&'a str, String> {
        match self.parts.next() {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(format!("missing {field}")),
        }
    }

    fn number(&mut self, field: &str) -> Result<u32, String> {
        let s = self.text(field)?;
        s.parse::<u32>().map_err(|_| format!("{field} is not an unsigned number: {s:?}"))
    }

    fn end(mut self) -> Result<(), String> {
        match self.parts.next() {
            None => Ok(()),
            Some(rest) => Err(format!("unexpected trailing text {rest:?}")),
        }
    }
}

impl WorkerArgs for HarvestArgs {
    fn encode(&self) -> Result<String, String> {
        word("mode", &self.mode)?;
        if self.source.is_empty() {
            return Err("empty source name".into());
        }
        fits(format!("{} {} {} {} {}", self.database, self.role, self.launcher_xid, self.mode, self.source))
    }

    fn decode(extra: &str) -> Result<Self, String> {
        let mut f = Fields::new(extra, 5);
        let args = HarvestArgs {
            database: f.number("database")?,
            role: f.number("role")?,
            launcher_xid: f.number("launcher xid")?,
            mode: f.text("mode")?.to_string(),
            source: f.text("source")?.to_string(),
        };
        f.end()?;
        Ok(args)
    }
}

impl WorkerArgs for PartArgs {
    fn encode(&self) -> Result<String, String> {
        if self.source.is_empty() {
            return Err("empty source name".into());
        }
        fits(format!("{} {} {} {}", self.database, self.role, self.part, self.source))
    }

    fn decode(extra: &str) -> Result<Self, String> {
        let mut f = Fields::new(extra, 4);
        let args = PartArgs {
            database: f.number("database")?,
            role: f.number("role")?,
            part: f.number("part")?,
            source: f.text("source")?.to_string(),
        };
        f.end()?;
        Ok(args)
    }
}

impl WorkerArgs for ConnectArgs {
    fn encode(&self) -> Result<String, String> {
        fits(format!("{} {}", self.database, self.role))
    }

    fn decode(extra: &str) -> Result<Self, String> {
        let mut f = Fields::new(extra, 3);
        let args = ConnectArgs { database: f.number("database")?, role: f.number("role")? };
        f.end()?;
        Ok(args)
    }
}

impl WorkerArgs for AfterCommitArgs {
    fn encode(&self) -> Result<String, String> {
        fits(format!("{} {} {}", self.database, self.role, self.launcher_xid))
    }

    fn decode(extra: &str) -> Result<Self, String> {
        // One more split than fields, so that trailing text is seen and refused.
        let mut f = Fields::new(extra, 4);
        let args = AfterCommitArgs {
            database: f.number("database")?,
            role: f.number("role")?,
            launcher_xid: f.number("launcher xid")?,
        };
        f.end()?;
        Ok(args)
    }
}

/// The start of every gn2pg worker: signal handlers (SIGTERM sets the latch and
/// `sigterm_received`), then its arguments. Malformed arguments are a bug of the launcher: the
/// worker stops with an ERROR in the server log.
pub fn begin<A: WorkerArgs>() -> A {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let extra = BackgroundWorker::get_extra();
    A::decode(extra).unwrap_or_else(|e| pgrx::error!("gn2pg: malformed worker arguments {extra:?}: {e}"))
}

/// The worker's main argument (a run id, a segment handle): an int8 by value.
pub fn main_arg(arg: pg_sys::Datum) -> i64 {
    // SAFETY: every launcher of this module passes an int8 by value.
    unsafe { i64::from_datum(arg, false) }.unwrap_or(0)
}

/// Connects the worker to `database` as `role`, then confines it like every worker.
pub fn connect(database: u32, role: u32) {
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(database)), Some(pg_sys::Oid::from(role)));
    crate::access::confine_worker();
}

/// The start of a worker that acts for its launcher's transaction ([`AfterCommitArgs`]):
/// signal handlers, the connection, then the wait for that transaction. False: it rolled back,
/// there is nothing to do.
pub fn connect_after_commit() -> bool {
    let args: AfterCommitArgs = begin();
    connect(args.database, args.role);
    launcher_committed(args.launcher_xid)
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

/// The top-level xid of the caller's transaction (assigned if needed) when the worker must wait
/// for it, else 0.
fn launcher_xid(wait_for_commit: bool) -> u32 {
    if wait_for_commit {
        // SAFETY: assigns (or returns) the top-level xid of the current transaction.
        u32::from(unsafe { pg_sys::GetTopTransactionId() })
    } else {
        0
    }
}

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
    let args = HarvestArgs {
        database: u32::from(db),
        role: u32::from(user),
        launcher_xid: launcher_xid(wait_for_commit),
        mode: mode.to_string(),
        source: source.to_string(),
    };
    let extra = args.encode().map_err(|_| format!("source name too long for a worker: {source}"))?;
    start_worker(&format!("gn2pg harvest {source}"), "gn2pg harvest", "gn2pg_harvest_worker", run_id, &extra, pid)
        .ok_or_else(|| {
            "no free background worker slot: raise max_worker_processes (and restart) \
         or wait for running harvests to end"
                .to_string()
        })
}

/// Starts a part worker of a parallel run, from the run's own worker (same database and role).
pub fn launch_part(run_id: i64, part: i32, source: &str) -> Result<DynamicBackgroundWorker, String> {
    tx(|| check_worker_cap(1)).map_err(|e| format!("part {part}: {e}"))?;
    // SAFETY: reading backend globals of this worker.
    let (db, user, pid) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetUserId(), pg_sys::MyProcPid) };
    let args =
        PartArgs { database: u32::from(db), role: u32::from(user), part: part as u32, source: source.to_string() };
    let extra = args.encode().map_err(|e| format!("part {part}: {e}"))?;
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

/// Starts a worker (`name` is also its type) in `database` that runs `function` as `role` once
/// the caller's transaction commits (at once when `wait_for_commit` is false); nobody waits for
/// it. Err: no free worker slot.
pub fn launch_after_commit(
    name: &str,
    function: &str,
    database: pg_sys::Oid,
    role: pg_sys::Oid,
    wait_for_commit: bool,
) -> Result<(), String> {
    let args = AfterCommitArgs {
        database: u32::from(database),
        role: u32::from(role),
        launcher_xid: launcher_xid(wait_for_commit),
    };
    BackgroundWorkerBuilder::new(name)
        .set_type(name)
        .set_library("gn2pg")
        .set_function(function)
        .enable_spi_access()
        .set_extra(&args.encode()?)
        .load_dynamic()
        .map(|_| ())
        .map_err(|_| "no free background worker slot".to_string())
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

/// What a failed transaction of [`tx`] gives back when PostgreSQL raised an ERROR in it.
pub trait TxFailure {
    fn caught(e: &pg_sys::panic::CaughtError) -> Self;
}

impl TxFailure for String {
    fn caught(e: &pg_sys::panic::CaughtError) -> String {
        Error::caught(e).message
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

#[cfg(test)]
mod tests {
    use super::*;

    fn harvest(source: &str) -> HarvestArgs {
        HarvestArgs {
            database: 16384,
            role: 10,
            launcher_xid: 4_000_000_000,
            mode: "incremental".into(),
            source: source.into(),
        }
    }

    #[test]
    fn harvest_args_round_trip() {
        for args in [harvest("pne"), harvest("a source with spaces"), HarvestArgs { launcher_xid: 0, ..harvest("x") }] {
            let extra = args.encode().unwrap();
            assert_eq!(HarvestArgs::decode(&extra), Ok(args));
        }
        assert_eq!(harvest("pne").encode().unwrap(), "16384 10 4000000000 incremental pne");
    }

    #[test]
    fn part_args_round_trip() {
        for source in ["pne", "  spaced  name ", "x-y_z"] {
            let args = PartArgs { database: 1, role: u32::MAX, part: 3, source: source.into() };
            assert_eq!(PartArgs::decode(&args.encode().unwrap()), Ok(args));
        }
    }

    #[test]
    fn after_commit_args_round_trip() {
        for xid in [0, 1, u32::MAX] {
            let args = AfterCommitArgs { database: 5, role: 10, launcher_xid: xid };
            assert_eq!(AfterCommitArgs::decode(&args.encode().unwrap()), Ok(args));
        }
        let args = ConnectArgs { database: 5, role: 10 };
        assert_eq!(ConnectArgs::decode(&args.encode().unwrap()), Ok(args));
    }

    #[test]
    fn encoding_refuses_what_would_not_decode_or_fit() {
        assert!(harvest("").encode().is_err());
        assert!(HarvestArgs { mode: "".into(), ..harvest("pne") }.encode().is_err());
        assert!(HarvestArgs { mode: "two words".into(), ..harvest("pne") }.encode().is_err());
        assert!(PartArgs { database: 1, role: 2, part: 0, source: String::new() }.encode().is_err());
        // 127 bytes fit, 128 do not (bgw_extra keeps a NUL).
        let head = "16384 10 4000000000 incremental ".len();
        assert!(harvest(&"s".repeat(127 - head)).encode().is_ok());
        let long = harvest(&"s".repeat(128 - head)).encode().unwrap_err();
        assert!(long.contains("longer than 127 bytes"), "{long}");
    }

    #[test]
    fn malformed_input_refused() {
        for bad in [
            "",
            "16384",
            "16384 10 7 auto",
            "16384 10 7 auto ",
            "x 10 7 auto pne",
            "16384 -10 7 auto pne",
            "16384 10 99999999999 auto pne",
            "16384  10 7 auto pne",
        ] {
            assert!(HarvestArgs::decode(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "1 2 3", "1 2 three pne", "1 2 3 "] {
            assert!(PartArgs::decode(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "1 2", "1 2 3 4", "1 2 3 ", "1 two 3"] {
            assert!(AfterCommitArgs::decode(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "1", "1 2 3", "1 2 ", "1 x"] {
            assert!(ConnectArgs::decode(bad).is_err(), "{bad:?}");
        }
        let e = HarvestArgs::decode("16384 10 x auto pne").unwrap_err();
        assert!(e.contains("launcher xid"), "{e}");
    }
}
