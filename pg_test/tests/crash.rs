//! A worker killed with SIGKILL. The postmaster then restarts every backend of the cluster,
//! so this test lives in its own test binary: nothing else runs while it does.

use std::time::Duration;

use gn2pg_pg_test::checks::{
    add_source, assert_equal_to_source, harvest, n, reconnect_after_crash, run_ended, run_row, wait_run,
};
use gn2pg_pg_test::db::{Client, TestDb};
use gn2pg_pg_test::fixture::{Faults, FixtureConfig, FixtureServer};

fn harvest_async(db: &mut Client, source: &str, mode: &str) -> i64 {
    db.query_one("SELECT gn2pg_harvest_async($1, $2)", &[&source, &mode]).unwrap().get(0)
}

/// GN2PG leaves a killed run 'importing data' forever and starts over (§3.3 item 14).
#[test]
fn a_killed_worker_is_marked_abandoned_and_the_next_run_resumes() {
    let fx = FixtureServer::start(FixtureConfig { rows: 20_000, ..Default::default() }).unwrap();
    let mut db = TestDb::new("kill");
    add_source(&mut db.client, "kill", &fx, 3, "public", "{}");
    fx.faults(Faults { slow_ms: 100, ..Default::default() });
    let run = harvest_async(&mut db.client, "kill", "full");
    let r =
        wait_run(&mut db.client, run, Duration::from_secs(60), "6 pages", |r| n(r, "pages_done") >= 6 || run_ended(r));
    assert_eq!(r["status"], "running", "{r}");
    let pid = n(&r, "worker_pid");
    let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let mut db2 = reconnect_after_crash(&db.name);
    let done_before: i64 = db2.query_one("SELECT count(*) FROM gn2pg.observation", &[]).unwrap().get(0);
    assert!((1000..20_000).contains(&done_before), "{done_before}");
    fx.faults(Faults::default());
    fx.reset_stats();
    let next = harvest(&mut db2, "kill", "auto").unwrap();
    let first = run_row(&mut db2, run).unwrap();
    assert_eq!(first["status"], "abandoned", "{first}");
    assert_eq!(next["status"], "success");
    assert_eq!(next["resumed_from"], run, "{next}");
    let pages = fx.stats().data_pages;
    assert!(pages < 20, "a resumed run fetches fewer pages than a fresh full (21): {pages}");
    assert_eq!(n(&next, "rows_upserted") + done_before, 20_000);
    assert_equal_to_source(&mut db2, "kill", &fx, 3);
}
