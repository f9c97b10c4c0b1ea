//! Large real sources (issue 12): deletions found by range counts instead of full downloads,
//! incremental windows that advance with the source's clock, streams paced to the source, and
//! the fixture's model of what a real GeoNature charges per request.

use std::time::{Duration, Instant};

use gn2pg_pg_test::checks::{add_source, assert_equal_to_source, harvest, n, run_ended, run_rows, wait_run};
use gn2pg_pg_test::db::{Client, TestDb};
use gn2pg_pg_test::fixture::{ExportConfig, Faults, FixtureConfig, FixtureServer, Mutation, TotalFiltered};
use serde_json::Value;

fn fixture(cfg: FixtureConfig) -> FixtureServer {
    FixtureServer::start(cfg).expect("fixture server starts")
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// The bound of the issue: `d · log2(N / limit)` count requests, plus a page per deletion and
/// the one whole-export count.
fn bound(rows: u64, limit: u64, deleted: u64) -> i64 {
    let levels = (rows as f64 / limit as f64).log2().ceil() as u64;
    (1 + deleted * (levels + 1)) as i64
}

fn modes(db: &mut Client, source: &str) -> Vec<String> {
    run_rows(db, source).into_iter().map(|(mode, _, _)| mode).collect()
}

/// A token source of 100,000 rows: scattered then clustered deletions are removed by `auto`
/// runs, incremental ones, with a few requests, and a quiet source costs one request.
#[test]
fn deletions_at_a_token_source_are_found_by_range_counts() {
    let fx = fixture(FixtureConfig { rows: 100_000, ..Default::default() });
    let mut db = TestDb::new("counts");
    add_source(&mut db.client, "tok", &fx, 2, "token", "{}");
    let full = harvest(&mut db.client, "tok", "auto").unwrap();
    assert_eq!((full["mode"].as_str(), n(&full, "rows_upserted")), (Some("full"), 100_000), "{full}");

    let quiet = harvest(&mut db.client, "tok", "auto").unwrap();
    assert_eq!(text(&quiet, "mode"), "incremental");
    assert_eq!((text(&quiet, "reconcile"), n(&quiet, "reconcile_requests")), ("counts", 1), "{quiet}");

    let scattered = fx.mutate(Mutation { delete: 10, ..Default::default() });
    let run = harvest(&mut db.client, "tok", "auto").unwrap();
    assert_eq!(text(&run, "mode"), "incremental");
    assert_eq!(n(&run, "rows_deleted"), scattered.deleted.len() as i64, "{run}");
    assert_eq!(text(&run, "reconcile"), "counts");
    let spent = n(&run, "reconcile_requests");
    assert!(spent <= bound(100_000, 1000, 10), "{spent} requests for 10 deletions: {run}");
    assert!(spent < 100, "a full run is 100 pages: {spent}");

    // A partner removes a whole dataset's worth of consecutive rows, and a few others.
    let mut ids: Vec<i64> = (40_001..=42_500).collect();
    ids.extend([7, 99_999]);
    let clustered = fx.mutate(Mutation { delete_ids: ids, ..Default::default() });
    let run = harvest(&mut db.client, "tok", "auto").unwrap();
    assert_eq!(n(&run, "rows_deleted"), clustered.deleted.len() as i64, "{run}");
    let spent = n(&run, "reconcile_requests");
    assert!(spent <= 40, "a cluster is found at its edges and cleared, not paged: {spent} requests: {run}");

    assert!(modes(&mut db.client, "tok")[1..].iter().all(|m| m == "incremental"), "no full run after the first");
    assert_equal_to_source(&mut db.client, "tok", &fx, 2);
}

/// The count runs start from is the dashboard's count table (no scan of the stored rows), trusted
/// only when it agrees with the source: a table gone wrong (rows written with triggers disabled)
/// costs a count of the rows and is rebuilt, and deletions are still found exactly.
#[test]
fn a_wrong_count_table_is_recounted_and_misleads_no_reconciliation() {
    let fx = fixture(FixtureConfig { rows: 5000, ..Default::default() });
    let mut db = TestDb::new("recount");
    add_source(&mut db.client, "tok", &fx, 2, "token", r#"{"page_size": 500}"#);
    harvest(&mut db.client, "tok", "full").unwrap();
    let kept = |db: &mut TestDb| -> i64 {
        db.client
            .query_one("SELECT sum(rows)::bigint FROM gn2pg.observation_count WHERE source = 'tok'", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(kept(&mut db), 5000);
    db.client.batch_execute("INSERT INTO gn2pg.observation_count VALUES ('tok', NULL, NULL, 3)").unwrap();
    let m = fx.mutate(Mutation { delete: 2, ..Default::default() });
    let run = harvest(&mut db.client, "tok", "auto").unwrap();
    assert_eq!((text(&run, "mode"), text(&run, "reconcile")), ("incremental", "counts"), "{run}");
    assert_eq!(n(&run, "rows_deleted"), m.deleted.len() as i64, "{run}");
    assert_eq!(kept(&mut db), 4998, "rebuilt from the stored rows");
    assert_equal_to_source(&mut db.client, "tok", &fx, 2);
    let quiet = harvest(&mut db.client, "tok", "auto").unwrap();
    assert_eq!((n(&quiet, "rows_deleted"), n(&quiet, "reconcile_requests")), (0, 1), "{quiet}");
}

#[test]
fn an_insert_and_a_delete_in_the_same_range_are_both_handled() {
    let fx = fixture(FixtureConfig { rows: 5000, ..Default::default() });
    let mut db = TestDb::new("insdel");
    add_source(&mut db.client, "pub", &fx, 3, "public", r#"{"page_size": 100}"#);
    harvest(&mut db.client, "pub", "full").unwrap();
    // The new row takes the next key, in the last range, where the deleted one was: the counts
    // of that range stay equal to the stored rows only if the insert is ignored.
    let m = fx.mutate(Mutation { delete_ids: vec![4990], insert: 1, ..Default::default() });
    let run = harvest(&mut db.client, "pub", "auto").unwrap();
    assert_eq!(text(&run, "mode"), "incremental");
    assert_eq!((n(&run, "rows_upserted"), n(&run, "rows_deleted")), (1, 1), "{run}");
    assert_eq!(m.inserted, vec![5001]);
    assert_equal_to_source(&mut db.client, "pub", &fx, 3);
    // And both in one range at once, with an update elsewhere.
    fx.mutate(Mutation { delete_ids: vec![2500], update_ids: vec![10], insert: 2, ..Default::default() });
    let run = harvest(&mut db.client, "pub", "auto").unwrap();
    assert_eq!((n(&run, "rows_upserted"), n(&run, "rows_deleted")), (3, 1), "{run}");
    assert_equal_to_source(&mut db.client, "pub", &fx, 3);
}

/// GeoNature 2.13.0 and 2.16.0-2.16.2 report `total_filtered` capped at the page size: no range
/// can be counted, so ranges of one page are paged; the view's total still shows in one request
/// that nothing was deleted. GeoNature >= 2.16.3 counts minus the offset, exact at offset 0.
#[test]
fn capped_total_filtered_takes_the_documented_fallback() {
    let fx = fixture(FixtureConfig { rows: 12_000, ..Default::default() });
    fx.set_export(3, ExportConfig { total_filtered: TotalFiltered::Page, ..Default::default() });
    // Another partner's rows (another seed: other uuids), on GeoNature >= 2.16.3.
    let fx2 = fixture(FixtureConfig { rows: 12_000, seed: 7, ..Default::default() });
    fx2.set_export(3, ExportConfig { total_filtered: TotalFiltered::MinusOffset, ..Default::default() });
    let mut db = TestDb::new("capped");
    add_source(&mut db.client, "capped", &fx, 3, "public", "{}");
    add_source(&mut db.client, "minus", &fx2, 3, "public", "{}");
    harvest(&mut db.client, "capped", "full").unwrap();
    harvest(&mut db.client, "minus", "full").unwrap();

    let quiet = harvest(&mut db.client, "capped", "auto").unwrap();
    assert!(text(&quiet, "reconcile").starts_with("pages: total_filtered is capped"), "{quiet}");
    assert!(text(&quiet, "reconcile").ends_with("the view's total shows no deletion"), "{quiet}");
    assert_eq!(n(&quiet, "reconcile_requests"), 1);

    fx.mutate(Mutation { delete: 7, ..Default::default() });
    let run = harvest(&mut db.client, "capped", "auto").unwrap();
    assert_eq!((text(&run, "mode"), n(&run, "rows_deleted")), ("incremental", 7), "{run}");
    assert!(text(&run, "reconcile").ends_with("ranges of one page"), "{run}");
    // Every range of at most one page is one request: 13 ranges of 999 stored rows, and the probe.
    assert!((13..=15).contains(&n(&run, "reconcile_requests")), "{run}");
    assert_equal_to_source(&mut db.client, "capped", &fx, 3);

    let m = fx2.mutate(Mutation { delete: 7, ..Default::default() });
    let run = harvest(&mut db.client, "minus", "auto").unwrap();
    assert_eq!((text(&run, "reconcile"), n(&run, "rows_deleted")), ("counts", m.deleted.len() as i64), "{run}");
    assert!(n(&run, "reconcile_requests") <= bound(12_000, 1000, 7), "{run}");
    assert_equal_to_source(&mut db.client, "minus", &fx2, 3);
}

/// A FeatureCollection drops rows without geometry but counts them: the counts cannot be
/// trusted, and the export is swept page by page.
#[test]
fn rows_the_harvest_cannot_see_make_a_sweep() {
    let fx = fixture(FixtureConfig { rows: 3000, null_geometry_every: 50, ..Default::default() });
    let mut db = TestDb::new("unseen");
    add_source(&mut db.client, "fc", &fx, 2, "token", "{}");
    harvest(&mut db.client, "fc", "full").unwrap();
    let m = fx.mutate(Mutation { delete: 5, ..Default::default() });
    let run = harvest(&mut db.client, "fc", "auto").unwrap();
    assert!(text(&run, "reconcile").starts_with("sweep: the export counts rows gn2pg does not hold"), "{run}");
    // Those of the deleted rows that had a geometry, and were stored.
    let stored = m.deleted.iter().filter(|k| *k % 50 != 0).count() as i64;
    assert_eq!(n(&run, "rows_deleted"), stored, "{run}");
    assert_equal_to_source(&mut db.client, "fc", &fx, 2);
}

/// Issue 12 item 3: after a bulk update, 0.2.0 re-read it on every run until a newer change
/// came. Now a row is re-read only while it lies within the overlap of a run's start, even when
/// the source's database clock is two hours behind its web server's.
#[test]
fn windows_advance_with_the_source_clock_on_a_quiet_source() {
    let fx = fixture(FixtureConfig { rows: 3000, ..Default::default() });
    let mut db = TestDb::new("windows");
    add_source(&mut db.client, "pub", &fx, 3, "public", r#"{"overlap_seconds": 2}"#);
    fx.faults(Faults { clock_offset_secs: -7200, ..Default::default() });
    harvest(&mut db.client, "pub", "full").unwrap();
    let bulk = fx.mutate(Mutation { update: 300, ..Default::default() });
    let first = harvest(&mut db.client, "pub", "auto").unwrap();
    assert_eq!(n(&first, "rows_upserted"), 300, "{first}");
    std::thread::sleep(Duration::from_millis(4000));
    // The bulk lies within the overlap of the previous run's start: read once more.
    let second = harvest(&mut db.client, "pub", "auto").unwrap();
    assert_eq!(n(&second, "rows_upserted"), 0, "{second}");
    std::thread::sleep(Duration::from_millis(4000));
    let third = harvest(&mut db.client, "pub", "auto").unwrap();
    assert_eq!(n(&third, "rows_received"), 0, "the window moved past the bulk: {third}");
    assert!(text(&third, "since") > text(&second, "since"), "{second}\n{third}");
    // Two hours behind: the window ends on the source's clock, not on its Date header.
    assert!(text(&third, "window_end") < fx.now().as_str(), "{third}");
    // Nothing is lost: changes made now, in the skewed clock, are all read.
    let later = fx.mutate(Mutation { update: 40, insert: 3, ..Default::default() });
    let run = harvest(&mut db.client, "pub", "auto").unwrap();
    assert_eq!(n(&run, "rows_upserted"), (later.updated.len() + later.inserted.len()) as i64, "{run}");
    assert_equal_to_source(&mut db.client, "pub", &fx, 3);
    assert_eq!(bulk.updated.len(), 300);
}

/// A server without a `Date` header: windows fall back to the newest timestamp seen minus the
/// overlap (and re-read the newest changes), still without losing any.
#[test]
fn a_source_without_a_date_header_keeps_the_former_window() {
    let fx = fixture(FixtureConfig { rows: 2000, ..Default::default() });
    let mut db = TestDb::new("nodate");
    add_source(&mut db.client, "pub", &fx, 3, "public", "{}");
    fx.faults(Faults { no_date_header: true, ..Default::default() });
    harvest(&mut db.client, "pub", "full").unwrap();
    let m = fx.mutate(Mutation { update: 25, ..Default::default() });
    let run = harvest(&mut db.client, "pub", "auto").unwrap();
    assert_eq!(n(&run, "rows_upserted"), m.updated.len() as i64, "{run}");
    assert!(run["window_end"].is_null(), "{run}");
    assert_equal_to_source(&mut db.client, "pub", &fx, 3);
}

fn set_host_maximum(db: &mut TestDb, max: u32) {
    db.client.batch_execute(&format!("ALTER DATABASE {} SET gn2pg.max_streams_per_host = {max}", db.name)).unwrap();
}

fn harvest_async(db: &mut Client, source: &str, mode: &str) -> i64 {
    db.query_one("SELECT gn2pg_harvest_async($1, $2)", &[&source, &mode]).unwrap().get(0)
}

/// Two sources of one host, harvested at once with `streams => 'auto'` on a source that serves
/// many requests well: together they never have more requests in flight than the maximum.
#[test]
fn auto_streams_stay_within_the_host_maximum() {
    // Two GeoNature instances of one server (127.0.0.1, two ports): one host. Their rows differ
    // (seeds), as two partners' would.
    let cfg = |seed| FixtureConfig { rows: 40_000, seed, cost_us_per_row: 5.0, ..Default::default() };
    let (fx, fx2) = (fixture(cfg(1)), fixture(cfg(2)));
    let mut db = TestDb::new("host_max");
    set_host_maximum(&mut db, 3);
    add_source(&mut db.client, "a", &fx, 3, "public", r#"{"page_size": 500}"#);
    add_source(&mut db.client, "b", &fx2, 2, "token", r#"{"page_size": 500}"#);
    let (ra, rb) = (harvest_async(&mut db.client, "a", "full"), harvest_async(&mut db.client, "b", "full"));
    let done = run_ended;
    let ra = wait_run(&mut db.client, ra, Duration::from_secs(180), "end", done);
    let rb = wait_run(&mut db.client, rb, Duration::from_secs(180), "end", done);
    assert_eq!((text(&ra, "status"), text(&rb, "status")), ("success", "success"), "{ra}\n{rb}");
    // Each fixture counts its own requests in flight: together they can only be compared as a
    // sum of maxima, which bounds the real sum from above.
    let most = fx.stats().max_concurrent_requests + fx2.stats().max_concurrent_requests;
    assert!(most <= 3, "{most} requests at once against one host (maximum 3)");
    assert!(n(&ra, "streams") <= 3 && n(&rb, "streams") <= 3, "{ra}\n{rb}");
    assert!(n(&ra, "latency_p95_ms") >= n(&ra, "latency_p50_ms") && n(&ra, "latency_p50_ms") >= 80, "{ra}");
    assert_equal_to_source(&mut db.client, "a", &fx, 3);
    assert_equal_to_source(&mut db.client, "b", &fx2, 2);

    // Alone, a run on this source uses the whole budget.
    let alone = harvest(&mut db.client, "a", "full").unwrap();
    assert_eq!(n(&alone, "streams"), 3, "{alone}");
}

/// A source behind a gunicorn with two workers, whose proxy answers 503 at once when both are
/// busy: the run probes a third stream, backs off, and stays at two.
#[test]
fn auto_streams_back_off_on_503_and_429() {
    let cfg = FixtureConfig {
        rows: 60_000,
        cost_us_per_row: 3.0,
        max_concurrent: 2,
        queue_timeout_ms: 0,
        ..Default::default()
    };
    let fx = fixture(cfg);
    let mut db = TestDb::new("backoff");
    set_host_maximum(&mut db, 6);
    add_source(&mut db.client, "busy", &fx, 3, "public", r#"{"page_size": 500}"#);
    let t = Instant::now();
    let run = harvest(&mut db.client, "busy", "full").unwrap();
    let overloaded = fx.stats().overloaded;
    assert!(n(&run, "streams") >= 3, "it tried more than two: {run}");
    // 121 pages: a source saturated all along would have answered 503 to about a third.
    assert!((1..=12).contains(&overloaded), "{overloaded} answers 503 in {:?}: {run}", t.elapsed());
    assert_eq!(n(&run, "http_retries") as u64, overloaded, "{run}");
    assert_equal_to_source(&mut db.client, "busy", &fx, 3);

    // 429 on every fifth request of a source that would take more: one or two streams at most.
    let fx = fixture(FixtureConfig { rows: 20_000, seed: 5, cost_us_per_row: 5.0, ..Default::default() });
    add_source(&mut db.client, "limited", &fx, 3, "public", r#"{"page_size": 500}"#);
    fx.faults(Faults { error_every: 5, error_status: 429, ..Default::default() });
    let run = harvest(&mut db.client, "limited", "full").unwrap();
    assert!(n(&run, "streams") <= 2, "{run}");
    assert!(fx.stats().max_concurrent_requests <= 2, "{:?}", fx.stats());
    fx.faults(Faults::default());
    assert_equal_to_source(&mut db.client, "limited", &fx, 3);
}
