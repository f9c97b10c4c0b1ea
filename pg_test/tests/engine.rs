//! The harvest engine under stress: changes during a run, a killed worker, faults, cancel,
//! concurrent calls, incremental cost, parallel streams and item-level errors.
//! Each scenario reproduced against GN2PG in docs/peer-gn2pg.md §3/§5.5 has a test here.

use std::time::{Duration, Instant};

use gn2pg_pg_test::canned::{one_page_source, pages_source};
use gn2pg_pg_test::checks::{
    add_source, assert_equal_to_source, harvest, harvest_failure, last_run_class, n, run_class, run_ended, run_rows,
    wait_run,
};
use gn2pg_pg_test::db::{connect, error_text, Client, TestDb};
use gn2pg_pg_test::fixture::{Faults, FixtureConfig, FixtureServer, Mutation};

fn fixture(rows: u64) -> FixtureServer {
    FixtureServer::start(FixtureConfig { rows, ..Default::default() }).expect("fixture server starts")
}

fn harvest_async(db: &mut Client, source: &str, mode: &str) -> i64 {
    db.query_one("SELECT gn2pg_harvest_async($1, $2)", &[&source, &mode]).unwrap().get(0)
}

/// GN2PG 1.10.1 loses rows when the source changes during a full run (docs/peer-gn2pg.md §3.2
/// item 6, reproduced in §5.5). Keyset paging plus a source-clock window must not.
#[test]
fn changes_during_a_full_run_are_not_lost() {
    let fx = fixture(20_000);
    let mut db = TestDb::new("race");
    add_source(&mut db.client, "race", &fx, 1, "login", "{}");
    fx.faults(Faults { slow_ms: 150, ..Default::default() });
    let run = harvest_async(&mut db.client, "race", "full");
    wait_run(&mut db.client, run, Duration::from_secs(60), "5 pages", |r| n(r, "pages_done") >= 5 || run_ended(r));
    let m = fx.mutate(Mutation { update: 3000, delete: 500, ..Default::default() });
    assert_eq!((m.updated.len(), m.deleted.len()), (3000, 500));
    let full = wait_run(&mut db.client, run, Duration::from_secs(120), "end", run_ended);
    assert_eq!(full["status"], "success", "{full}");
    fx.faults(Faults::default());
    let inc = harvest(&mut db.client, "race", "auto").unwrap();
    assert_eq!(inc["mode"], "incremental");
    assert_equal_to_source(&mut db.client, "race", &fx, 1);
}

#[test]
fn an_offset_walk_over_a_changing_view_removes_nothing_until_a_stable_one() {
    let fx = fixture(6000);
    let mut db = TestDb::new("offset_race");
    add_source(&mut db.client, "off", &fx, 3, "public", r#"{"paging": "offset"}"#);
    harvest(&mut db.client, "off", "full").unwrap();
    // Deletions at the source during an offset walk shift the later pages: the walk misses rows
    // that still exist, so it must not take their absence for a deletion.
    fx.faults(Faults { slow_ms: 150, ..Default::default() });
    let run = harvest_async(&mut db.client, "off", "full");
    wait_run(&mut db.client, run, Duration::from_secs(60), "2 pages", |r| n(r, "pages_done") >= 2 || run_ended(r));
    fx.mutate(Mutation { delete: 300, ..Default::default() });
    let walked = wait_run(&mut db.client, run, Duration::from_secs(60), "end", run_ended);
    assert_eq!((walked["status"].as_str(), n(&walked, "rows_deleted")), (Some("success"), 0), "{walked}");
    let local: i64 = db.client.query_one("SELECT count(*) FROM gn2pg.observation", &[]).unwrap().get(0);
    assert_eq!(local, 6000, "nothing removed on an unstable walk");
    fx.faults(Faults::default());
    let stable = harvest(&mut db.client, "off", "full").unwrap();
    assert_eq!(n(&stable, "rows_deleted"), 300, "{stable}");
    assert_equal_to_source(&mut db.client, "off", &fx, 3);
}

#[test]
fn bursts_of_5xx_and_cut_answers_are_retried() {
    let fx = fixture(3000);
    let mut db = TestDb::new("retry");
    add_source(&mut db.client, "retry", &fx, 3, "public", "{}");
    fx.faults(Faults { fail_next: 3, error_status: 502, html_errors: true, ..Default::default() });
    let run = harvest(&mut db.client, "retry", "full").unwrap();
    assert!(n(&run, "http_retries") >= 3, "{run}");
    fx.faults(Faults { truncate_next: 2, ..Default::default() });
    let run = harvest(&mut db.client, "retry", "full").unwrap();
    assert!(n(&run, "http_retries") >= 2, "{run}");
    fx.faults(Faults { fail_next: 1, error_status: 429, ..Default::default() });
    let run = harvest(&mut db.client, "retry", "full").unwrap();
    assert!(n(&run, "http_retries") >= 1, "{run}");
    assert_equal_to_source(&mut db.client, "retry", &fx, 3);
}

#[test]
fn an_expired_session_is_renewed_once() {
    let fx = fixture(5000);
    let mut db = TestDb::new("relogin");
    add_source(&mut db.client, "sess", &fx, 1, "login", "{}");
    fx.faults(Faults { slow_ms: 200, ..Default::default() });
    let run = harvest_async(&mut db.client, "sess", "full");
    wait_run(&mut db.client, run, Duration::from_secs(30), "2 pages", |r| n(r, "pages_done") >= 2 || run_ended(r));
    fx.expire_sessions();
    let r = wait_run(&mut db.client, run, Duration::from_secs(60), "end", run_ended);
    assert_eq!(r["status"], "success", "{r}");
    assert!(fx.stats().logins >= 2, "logged in again: {:?}", fx.stats());
    assert_equal_to_source(&mut db.client, "sess", &fx, 1);
}

#[test]
fn persistent_faults_fail_clearly_and_load_nothing_from_the_bad_page() {
    let fx = fixture(2000);
    let mut db = TestDb::new("faults");
    add_source(&mut db.client, "cut", &fx, 3, "public", r#"{"max_retries": 1}"#);
    fx.faults(Faults { truncate_next: 100, ..Default::default() });
    let (code, err) = harvest_failure(&mut db.client, "cut", "full");
    assert!(err.contains("source \"cut\"") && err.contains("cut short"), "{err}");
    // A cut answer is not an export answer; the connection failed while it came.
    assert_eq!(code, "08006", "{err}");
    assert_eq!(last_run_class(&mut db.client, "cut"), (Some("08006".into()), Some("protocol".into())));
    let rows: i64 = db.client.query_one("SELECT count(*) FROM gn2pg.observation", &[]).unwrap().get(0);
    assert_eq!(rows, 0, "nothing may be loaded from a truncated page");

    add_source(&mut db.client, "slow", &fx, 3, "public", r#"{"max_retries": 1, "timeout_ms": 300}"#);
    fx.faults(Faults { slow_ms: 2000, ..Default::default() });
    let t = Instant::now();
    let (code, err) = harvest_failure(&mut db.client, "slow", "full");
    assert!(err.contains("timeout"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(code, "08006", "{err}");
    assert_eq!(last_run_class(&mut db.client, "slow"), (Some("08006".into()), Some("timeout".into())));

    add_source(&mut db.client, "burst", &fx, 3, "public", r#"{"max_retries": 2}"#);
    fx.faults(Faults { fail_next: 100, error_status: 503, html_errors: true, ..Default::default() });
    let (code, err) = harvest_failure(&mut db.client, "burst", "full");
    assert!(err.contains("HTTP 503") && err.contains("after 2 retries"), "{err}");
    assert_eq!(code, "08000", "{err}");
    assert_eq!(last_run_class(&mut db.client, "burst"), (Some("08000".into()), Some("http".into())));
    let statuses: Vec<String> =
        ["cut", "slow", "burst"].iter().map(|s| run_rows(&mut db.client, s)[0].1.clone()).collect();
    assert_eq!(statuses, vec!["failed"; 3]);
}

#[test]
fn cancel_stops_a_run_within_two_seconds_and_keeps_loaded_pages() {
    let fx = fixture(5000);
    let mut db = TestDb::new("cancel");
    add_source(&mut db.client, "slowbody", &fx, 3, "public", "{}");
    // After the first page, bodies trickle in (16 KiB every 100 ms: ~20 s per page).
    let run = harvest_async(&mut db.client, "slowbody", "full");
    wait_run(&mut db.client, run, Duration::from_secs(30), "running", |r| r["status"] == "running");
    fx.faults(Faults { drip_ms: 100, ..Default::default() });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let ok: bool = db.client.query_one("SELECT gn2pg_cancel($1)", &[&run]).unwrap().get(0);
    assert!(ok);
    let r = wait_run(&mut db.client, run, Duration::from_secs(10), "end", run_ended);
    let took = t.elapsed();
    assert_eq!(r["status"], "cancelled", "{r}");
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
    assert_eq!(run_class(&mut db.client, run), (Some("57014".into()), Some("cancelled".into())));
    let kept: i64 = db.client.query_one("SELECT count(*) FROM gn2pg.observation", &[]).unwrap().get(0);
    assert_eq!(kept, 1000 * n(&r, "pages_done"));
    let not_running: bool = db.client.query_one("SELECT gn2pg_cancel($1)", &[&run]).unwrap().get(0);
    assert!(!not_running);

    // Cancelling the caller of gn2pg_harvest (here statement_timeout) stops its worker too.
    db.client.batch_execute("SET statement_timeout = '1s'").unwrap();
    let err = harvest(&mut db.client, "slowbody", "full").unwrap_err();
    assert!(err.contains("statement timeout"), "{err}");
    db.client.batch_execute("RESET statement_timeout").unwrap();
    let last: i64 = db.client.query_one("SELECT max(id) FROM gn2pg.run_log", &[]).unwrap().get(0);
    let r = wait_run(&mut db.client, last, Duration::from_secs(3), "end", run_ended);
    assert_eq!(r["status"], "cancelled", "{r}");

    // The caller of gn2pg_harvest whose run another session cancels gets query_canceled.
    let name = db.name.clone();
    let caller = std::thread::spawn(move || harvest_failure(&mut connect(&name), "slowbody", "full"));
    let start = Instant::now();
    let running = loop {
        let r: Option<i64> = db
            .client
            .query_one("SELECT max(id) FROM gn2pg.run_log WHERE status = 'running' AND id > $1", &[&last])
            .unwrap()
            .get(0);
        if let Some(r) = r {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the third run did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ok: bool = db.client.query_one("SELECT gn2pg_cancel($1)", &[&running]).unwrap().get(0);
    assert!(ok);
    let (code, err) = caller.join().unwrap();
    assert_eq!(code, "57014", "{err}");
    assert!(
        err.starts_with("gn2pg: source \"slowbody\": stopped on request") && err.contains("(reason cancelled)"),
        "{err}"
    );
    assert_eq!(run_class(&mut db.client, running), (Some("57014".into()), Some("cancelled".into())));
}

#[test]
fn a_source_is_never_harvested_twice_at_once() {
    let fx = fixture(3000);
    let mut db = TestDb::new("concurrent");
    add_source(&mut db.client, "busy", &fx, 3, "public", "{}");
    fx.faults(Faults { slow_ms: 300, ..Default::default() });
    let name = db.name.clone();
    let first = std::thread::spawn(move || harvest(&mut connect(&name), "busy", "full"));
    let start = Instant::now();
    while run_rows(&mut db.client, "busy").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, err) = harvest_failure(&mut db.client, "busy", "full");
    assert!(err.contains("is being harvested by run"), "{err}");
    assert_eq!(code, "55006", "object_in_use: {err}");
    let err2 = db.client.batch_execute("SELECT gn2pg_remove_source('busy')").unwrap_err();
    assert!(error_text(&err2).contains("is being harvested"), "{}", error_text(&err2));
    let run = first.join().unwrap().unwrap();
    assert_eq!(run["status"], "success");
    assert_eq!(n(&run, "rows_upserted"), 3000);
}

#[test]
fn an_incremental_run_after_one_percent_of_changes_fetches_only_those() {
    let fx = fixture(10_000);
    let mut db = TestDb::new("inc1pc");
    add_source(&mut db.client, "inc", &fx, 3, "public", "{}");
    let full = harvest(&mut db.client, "inc", "auto").unwrap();
    let m = fx.mutate(Mutation { update: 100, ..Default::default() });
    fx.reset_stats();
    let inc = harvest(&mut db.client, "inc", "auto").unwrap();
    assert_eq!(inc["mode"], "incremental");
    assert_eq!(n(&inc, "rows_upserted"), m.updated.len() as i64);
    // The overlap margin re-reads a few rows stamped just before the window start.
    assert!(n(&inc, "rows_received") < 150, "{inc}");
    assert!(fx.stats().data_rows < 150);
    assert!(n(&inc, "bytes_received") * 20 < n(&full, "bytes_received"));
    assert_equal_to_source(&mut db.client, "inc", &fx, 3);
}

#[test]
fn parallel_streams_harvest_the_same_rows() {
    let fx = fixture(12_345);
    let mut db = TestDb::new("streams");
    add_source(&mut db.client, "par", &fx, 2, "token", r#"{"streams": 4}"#);
    let run = harvest(&mut db.client, "par", "full").unwrap();
    assert_eq!(n(&run, "rows_upserted"), 12_345);
    assert_equal_to_source(&mut db.client, "par", &fx, 2);
    let m = fx.mutate(Mutation { insert: 30, delete: 40, ..Default::default() });
    let run = harvest(&mut db.client, "par", "full").unwrap();
    assert_eq!(n(&run, "rows_deleted"), m.deleted.len() as i64);
    assert_equal_to_source(&mut db.client, "par", &fx, 2);
}

#[test]
fn parallel_workers_load_key_ranges_and_the_run_adds_them_up() {
    let fx = fixture(10_500);
    let mut db = TestDb::new("workers");
    add_source(&mut db.client, "multi", &fx, 3, "public", r#"{"workers": 3}"#);
    let run = harvest(&mut db.client, "multi", "full").unwrap();
    assert_eq!(n(&run, "rows_upserted"), 10_500, "{run}");
    assert!(n(&run, "http_requests") >= 12, "the parts' requests are counted: {run}");
    let parts: Vec<(i32, String)> = db
        .client
        .query("SELECT part, status FROM gn2pg.run_part WHERE run_id = $1 ORDER BY part", &[&n(&run, "id")])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(parts, vec![(0, "success".into()), (1, "success".into()), (2, "success".into())]);
    assert_equal_to_source(&mut db.client, "multi", &fx, 3);
    // Deletions anywhere in the key space are swept by the part that owns the range.
    let m = fx.mutate(Mutation { delete: 30, insert: 5, ..Default::default() });
    let run = harvest(&mut db.client, "multi", "full").unwrap();
    assert_eq!(n(&run, "rows_deleted"), m.deleted.len() as i64);
    assert_equal_to_source(&mut db.client, "multi", &fx, 3);
}

#[test]
fn a_failing_part_fails_the_parallel_run() {
    let fx = fixture(6000);
    let mut db = TestDb::new("workers_fail");
    add_source(&mut db.client, "multi", &fx, 3, "public", r#"{"workers": 2, "max_retries": 0}"#);
    fx.faults(Faults { error_every: 3, error_status: 500, ..Default::default() });
    let (code, err) = harvest_failure(&mut db.client, "multi", "full");
    assert!(err.contains("source \"multi\"") && err.contains("HTTP 500"), "{err}");
    let rows = run_rows(&mut db.client, "multi");
    assert_eq!(rows.last().unwrap().1, "failed");
    // The class of the part's error is the run's.
    assert_eq!(code, "08000", "{err}");
    assert_eq!(last_run_class(&mut db.client, "multi"), (Some("08000".into()), Some("http".into())));
}

#[test]
fn auto_mode_reconciles_with_a_periodic_full_run() {
    let fx = fixture(2000);
    let mut db = TestDb::new("reconcile");
    // Reconciliation by counts off: the periodic full run is then what finds deletions.
    add_source(&mut db.client, "pub", &fx, 3, "public", r#"{"full_every_hours": 1, "reconcile": false}"#);
    harvest(&mut db.client, "pub", "auto").unwrap();
    // A public export has no deletion log: an incremental run cannot see this deletion...
    fx.mutate(Mutation { delete: 10, ..Default::default() });
    let inc = harvest(&mut db.client, "pub", "auto").unwrap();
    assert_eq!((inc["mode"].as_str(), n(&inc, "rows_deleted")), (Some("incremental"), 0));
    // ...so once the last full run is older than full_every_hours, auto mode runs a full one.
    db.client
        .execute("UPDATE gn2pg.run_log SET finished_at = finished_at - interval '2 hours' WHERE mode = 'full'", &[])
        .unwrap();
    let run = harvest(&mut db.client, "pub", "auto").unwrap();
    assert_eq!((run["mode"].as_str(), n(&run, "rows_deleted")), (Some("full"), 10));
    assert_equal_to_source(&mut db.client, "pub", &fx, 3);
}

#[test]
fn a_uuid_may_move_between_two_rows_of_a_page() {
    let page = |a: &str, b: &str| {
        let item =
            |id: i64, uuid: &str| format!(r#"{{"id_synthese":{id},"id_perm_sinp":"{uuid}","wkt_4326":"POINT(5 45)"}}"#);
        format!(r#"{{"items":[{},{}],"limit":1000,"page":0,"total":2,"total_filtered":2}}"#, item(1, a), item(2, b))
    };
    let (x, y) = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222");
    let (url, server) = pages_source(vec![page(x, y), page(y, x)]);
    let mut db = TestDb::new("uuid_swap");
    db.client.execute("SELECT gn2pg_add_source('canned', $1, 1)", &[&url]).unwrap();
    harvest(&mut db.client, "canned", "full").unwrap();
    // The unique check is deferred to the end of the page: swapping is no conflict.
    let run = harvest(&mut db.client, "canned", "full").unwrap();
    assert_eq!((n(&run, "rows_upserted"), n(&run, "rows_failed")), (2, 0), "{run}");
    let stored: Vec<(i64, String)> = db
        .client
        .query("SELECT id_data, uuid::text FROM gn2pg.observation ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored, vec![(1, y.to_string()), (2, x.to_string())]);
    drop(server);
}

#[test]
fn two_sources_sharing_uuids_harvested_at_once_store_each_uuid_once() {
    // Two partners publishing the same observations (same SINP ids), harvested together.
    let a = fixture(4000);
    let b = fixture(4000);
    let mut db = TestDb::new("shared_uuids");
    add_source(&mut db.client, "a", &a, 3, "public", "{}");
    add_source(&mut db.client, "b", &b, 3, "public", "{}");
    // Slow answers make the two runs' pages interleave.
    for fx in [&a, &b] {
        fx.faults(Faults { slow_ms: 100, ..Default::default() });
    }
    let ra = harvest_async(&mut db.client, "a", "full");
    let rb = harvest_async(&mut db.client, "b", "full");
    let ra = wait_run(&mut db.client, ra, Duration::from_secs(120), "end", run_ended);
    let rb = wait_run(&mut db.client, rb, Duration::from_secs(120), "end", run_ended);
    assert_eq!((ra["status"].as_str(), rb["status"].as_str()), (Some("success"), Some("success")), "{ra}\n{rb}");
    let r = db.client.query_one("SELECT count(*), count(DISTINCT uuid) FROM gn2pg.observation", &[]).unwrap();
    let (rows, uuids): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!((rows, uuids), (4000, 4000), "every uuid stored once");
    assert_eq!(n(&ra, "rows_upserted") + n(&rb, "rows_upserted"), 4000);
    assert_eq!(n(&ra, "rows_failed") + n(&rb, "rows_failed"), 4000, "the other copy of each is reported");
    let unexplained: i64 = db
        .client
        .query_one("SELECT count(*) FROM gn2pg.run_error WHERE error NOT LIKE '%already belongs to source%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(unexplained, 0);
}

#[test]
fn bad_items_go_to_run_error_and_the_rest_of_the_page_loads() {
    let good = |id: i64, uuid: &str| {
        format!(
            r#"{{"id_synthese":{id},"id_perm_sinp":"{uuid}","wkt_4326":"POINT(5 45)","derniere_action":"2025-01-01 10:00:00"}}"#
        )
    };
    let items = [
        good(1, "11111111-1111-4111-8111-111111111111"),
        r#"{"id_perm_sinp":"22222222-2222-4222-8222-222222222222","wkt_4326":"POINT(5 45)"}"#.to_string(),
        good(3, "not-a-uuid"),
        r#"{"id_synthese":4,"id_perm_sinp":"44444444-4444-4444-8444-444444444444","wkt_4326":"POINT(oops)"}"#
            .to_string(),
        good(5, "55555555-5555-4555-8555-555555555555"),
        good(6, "11111111-1111-4111-8111-111111111111"),
        good(7, "77777777-7777-4777-8777-777777777777"),
    ];
    let page = format!(r#"{{"items":[{}],"limit":1000,"page":0,"total":7,"total_filtered":7}}"#, items.join(","));
    let (url, server) = one_page_source(page);
    let mut db = TestDb::new("bad_items");
    // Another source already owns uuid 7777...: the row is reported, not silently skipped.
    db.client
        .batch_execute(
            "INSERT INTO gn2pg.observation (source, id_data, uuid, item)
             VALUES ('other', 70, '77777777-7777-4777-8777-777777777777', '{}')",
        )
        .unwrap();
    db.client.execute("SELECT gn2pg_add_source('canned', $1, 1)", &[&url]).unwrap();
    let run = harvest(&mut db.client, "canned", "full").unwrap();
    assert_eq!(n(&run, "rows_received"), 7);
    assert_eq!(n(&run, "rows_upserted"), 2, "{run}");
    assert_eq!(n(&run, "rows_failed"), 5, "{run}");
    let errors: Vec<(Option<i64>, String)> = db
        .client
        .query("SELECT id_data, error FROM gn2pg.run_error ORDER BY id_data NULLS FIRST", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect = [
        (None, "missing or non-integer key id_synthese"),
        (Some(3), "invalid uuid not-a-uuid"),
        (Some(4), "invalid geometry"),
        (Some(6), "appears under two keys"),
        (Some(7), "already belongs to source other"),
    ];
    assert_eq!(errors.len(), expect.len(), "{errors:?}");
    for ((id, msg), (eid, needle)) in errors.iter().zip(expect) {
        assert_eq!(*id, eid);
        assert!(msg.contains(needle), "{id:?}: {msg}");
    }
    let loaded: Vec<i64> = db
        .client
        .query("SELECT id_data FROM gn2pg.observation WHERE source = 'canned' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(loaded, vec![1, 5]);
    drop(server);
}
