//! Entry points of the harvest workers. PostgreSQL looks them up in gn2pg.so by the names given
//! to `set_function` (bgw.rs), so the names must not change. What a worker needs travels in
//! `bgw_extra` (bgw.rs: [`HarvestArgs`], [`PartArgs`]) and the run id in the main argument.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::bgw::{self, HarvestArgs, PartArgs};
use crate::run::{self, Requested};

/// Entry point of a run's own worker.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gn2pg_harvest_worker(arg: pg_sys::Datum) {
    let args: HarvestArgs = bgw::begin();
    let run_id = bgw::main_arg(arg);
    bgw::connect(args.database, args.role);
    if !bgw::launcher_committed(args.launcher_xid) {
        pgrx::log!("gn2pg: the launch of run {run_id} was rolled back; nothing to do");
        return;
    }
    run::execute(run_id, &args.source, Requested::parse(&args.mode).unwrap_or(Requested::Auto));
}

/// Entry point of a part worker of a parallel run.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gn2pg_part_worker(arg: pg_sys::Datum) {
    let args: PartArgs = bgw::begin();
    let run_id = bgw::main_arg(arg);
    bgw::connect(args.database, args.role);
    run::execute_part(run_id, args.part as i32, &args.source);
}
