//! A worker killed with SIGKILL while it writes a GeoNature destination: the synthese and
//! gn2pg.observation stay consistent (a page and its synthese rows commit together), and the
//! next run resumes and makes the synthese equal to the source. The postmaster restarts every
//! backend after the kill, so this test lives in its own test binary.

use std::time::Duration;

use gn2pg_pg_test::checks::{add_source, harvest, n, reconnect_after_crash, run_ended, wait_run};
use gn2pg_pg_test::db::TestDb;
use gn2pg_pg_test::fixture::{Faults, FixtureConfig, FixtureServer};
use gn2pg_pg_test::geonature::{self, assert_consistent, assert_synthese_matches_source};

#[test]
fn a_killed_worker_leaves_the_synthese_consistent_and_the_next_run_completes_it() {
    let fx = FixtureServer::start(FixtureConfig { rows: 5000, ..Default::default() }).unwrap();
    let mut db = TestDb::new("dest_kill");
    geonature::load(&mut db.client, geonature::LAMBERT_93);
    add_source(&mut db.client, "kill", &fx, 3, "public", r#"{"destination": "geonature", "page_size": 500}"#);
    fx.faults(Faults { slow_ms: 100, ..Default::default() });
    let run: i64 = db.client.query_one("SELECT gn2pg_harvest_async('kill', 'full')", &[]).unwrap().get(0);
    let r =
        wait_run(&mut db.client, run, Duration::from_secs(120), "4 pages", |r| n(r, "pages_done") >= 4 || run_ended(r));
    assert_eq!(r["status"], "running", "{r}");
    let killed = std::process::Command::new("kill").args(["-9", &n(&r, "worker_pid").to_string()]).status().unwrap();
    assert!(killed.success());
    let mut db2 = reconnect_after_crash(&db.name);
    let (harvested, in_synthese): (i64, i64) = {
        let r = db2
            .query_one(
                "SELECT (SELECT count(*) FROM gn2pg.observation), (SELECT count(*) FROM gn_synthese.synthese)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    // Pages commit asynchronously (a lost one is fetched again): the last ones may be gone.
    assert!((500..5000).contains(&harvested), "{harvested}");
    assert_eq!(in_synthese, harvested, "every committed page is in the synthese, and nothing else");
    assert_consistent(&mut db2, "kill");
    fx.faults(Faults::default());
    let next = harvest(&mut db2, "kill", "auto").unwrap();
    assert_eq!(next["resumed_from"], run, "{next}");
    let (written, pending) = assert_synthese_matches_source(&mut db2, "kill", &fx, 3, false);
    assert_eq!((written, pending), (5000, 0));
    assert_consistent(&mut db2, "kill");
}
