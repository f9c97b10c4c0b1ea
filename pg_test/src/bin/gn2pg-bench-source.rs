//! Benchmark of issue 12 (large real sources), against the fixture charging what a real
//! GeoNature charges: every request costs time proportional to the size of the view, and a
//! gunicorn-like pool serves a few requests at once. Prints, asserts nothing:
//!   (a) requests and time of an `auto` run after 10 deletions (reconciliation by range counts)
//!       vs a full run;
//!   (b) full harvest time with 1, 2, 4 and 'auto' streams, on a source serving 2 requests at
//!       once and on one serving 8.
//!
//! Usage (see bench/source.sh): gn2pg-bench-source [--rows-a 1000000] [--cost-a 0.2]
//!   [--rows-b 200000] [--cost-b 1] (costs in microseconds per row of the view)

use std::io::Write;
use std::time::{Duration, Instant};

use gn2pg_pg_test::db::TestDb;
use gn2pg_pg_test::fixture::{FixtureConfig, FixtureServer, Mutation};
use serde_json::Value;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn out(s: String) {
    println!("{s}");
    let _ = std::io::stdout().flush();
}

fn register(db: &mut postgres::Client, name: &str, fx: &FixtureServer, options: &str) {
    db.execute(
        "SELECT gn2pg_add_source(name => $1, url => $2, export_id => 3, auth => 'public', options => $3::text::jsonb)",
        &[&name, &fx.base_url(), &options],
    )
    .unwrap();
}

/// Runs a harvest, returns its run_log row and its wall time.
fn harvest(db: &mut postgres::Client, source: &str, mode: &str) -> (Value, Duration) {
    let t = Instant::now();
    let row = db.query_one("SELECT gn2pg_harvest($1, $2)::text", &[&source, &mode]).unwrap_or_else(|e| {
        panic!("harvest of {source} failed: {}", gn2pg_pg_test::db::error_text(&e));
    });
    (serde_json::from_str(row.get::<_, &str>(0)).unwrap(), t.elapsed())
}

fn n(v: &Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or(0)
}

fn main() {
    let rows_a: u64 = arg("--rows-a", 1_000_000);
    let cost_a: f64 = arg("--cost-a", 0.2);
    let rows_b: u64 = arg("--rows-b", 200_000);
    let cost_b: f64 = arg("--cost-b", 1.0);
    let mut db = TestDb::new("bench_source");

    // (a) Deletions without re-downloading.
    let fx = FixtureServer::start(FixtureConfig {
        rows: rows_a,
        cost_us_per_row: cost_a,
        max_concurrent: 4,
        ..Default::default()
    })
    .unwrap();
    out(format!(
        "(a) {rows_a} rows, each request costs {:.2} s ({cost_a} us per row of the view), 4 requests served at once",
        rows_a as f64 * cost_a / 1e6
    ));
    register(&mut db.client, "a", &fx, "{}");
    let (first, took) = harvest(&mut db.client, "a", "full");
    out(format!("    first full harvest: {} requests, {:.1} s", n(&first, "http_requests"), took.as_secs_f64()));
    let (full, full_took) = harvest(&mut db.client, "a", "full");
    out(format!(
        "    full run (reconciling by download): {} requests, {:.1} s, {} streams",
        n(&full, "http_requests"),
        full_took.as_secs_f64(),
        n(&full, "streams")
    ));
    let m = fx.mutate(Mutation { delete: 10, ..Default::default() });
    let (auto, auto_took) = harvest(&mut db.client, "a", "auto");
    out(format!(
        "    auto after {} deletions: {} ({}), {} rows deleted, {} requests ({} for reconciliation), {:.1} s",
        m.deleted.len(),
        auto["mode"].as_str().unwrap_or("?"),
        auto["reconcile"].as_str().unwrap_or("-"),
        n(&auto, "rows_deleted"),
        n(&auto, "http_requests"),
        n(&auto, "reconcile_requests"),
        auto_took.as_secs_f64()
    ));
    out(format!(
        "    ratio full / auto: {:.1}x fewer requests, {:.1}x less time",
        n(&full, "http_requests") as f64 / n(&auto, "http_requests").max(1) as f64,
        full_took.as_secs_f64() / auto_took.as_secs_f64().max(1e-3)
    ));
    drop(fx);
    db.client.execute("SELECT gn2pg_remove_source('a', drop_data => true)", &[]).unwrap();

    // (b) Streams against sources of different capacity.
    for workers in [2u32, 8] {
        let fx = FixtureServer::start(FixtureConfig {
            rows: rows_b,
            cost_us_per_row: cost_b,
            max_concurrent: workers,
            ..Default::default()
        })
        .unwrap();
        out(format!(
            "(b) {rows_b} rows, each request costs {:.2} s, the source serves {workers} requests at once (others wait)",
            rows_b as f64 * cost_b / 1e6
        ));
        for streams in ["1", "2", "4", "\"auto\""] {
            let name = format!("b{workers}_{}", streams.trim_matches('"'));
            register(&mut db.client, &name, &fx, &format!("{{\"streams\": {streams}}}"));
            fx.reset_stats();
            let (run, took) = harvest(&mut db.client, &name, "full");
            let s = fx.stats();
            out(format!(
                "    streams {:>6}: {:>6.1} s  {:>7.0} rows/s  {} streams used, source latency p50 {} ms p95 {} ms, {} at once at the source, {} answers 503",
                streams.trim_matches('"'),
                took.as_secs_f64(),
                n(&run, "rows_upserted") as f64 / took.as_secs_f64(),
                n(&run, "streams"),
                n(&run, "latency_p50_ms"),
                n(&run, "latency_p95_ms"),
                s.max_concurrent_requests,
                s.overloaded
            ));
            db.client.execute("SELECT gn2pg_remove_source($1, drop_data => true)", &[&name]).unwrap();
        }
    }
}
