//! A hostile or broken source cannot crash or exhaust the database (issue 9, item 3). Each test
//! serves one good row and then an attack (pg_test/src/hostile.rs), harvests it through the
//! SQL API with a small `max_page_bytes`, and checks that the run fails with an error naming
//! the source and the limit, that the cluster did not restart, that the good row stayed, and
//! that the worker's memory (VmHWM, sampled from /proc while the run goes) stayed within the
//! bound README gives: 10 times `max_page_bytes` above the worker's size when first seen (the
//! body, and at most 8 times `max_page_bytes` to prepare it), plus 64 MB for what any run
//! loads (PostGIS's libraries, TLS, thread stacks).

use std::time::{Duration, Instant};

use gn2pg_pg_test::checks::{run_ended, run_row};
use gn2pg_pg_test::db::{Client, TestDb};
use gn2pg_pg_test::hostile::{memory_of, Attack, HostileSource};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// What the run log records of an answer over a limit, and of one that is not an export answer.
const LIMIT: (&str, &str) = ("54000", "limit");
const PROTOCOL: (&str, &str) = ("22000", "protocol");

struct Outcome {
    run: Value,
    /// The worker's resident size when first seen, and its peak (VmHWM).
    baseline: u64,
    peak: u64,
    max_page_bytes: u64,
}

impl Outcome {
    fn error(&self) -> String {
        self.run["error"].as_str().unwrap_or_default().to_string()
    }

    /// The run failed with an error naming the source and saying `what`, of class `class`
    /// (SQLSTATE, reason); memory stayed within the bound.
    fn assert_failed_with(&self, what: &str, class: (&str, &str)) {
        assert_eq!(self.run["status"], "failed", "{}", self.run);
        let e = self.error();
        assert!(e.starts_with("source \"h\": "), "the error names the source: {e}");
        assert!(e.contains(what), "the error says {what:?}: {e}");
        let recorded = (self.run["sqlstate"].as_str(), self.run["reason"].as_str());
        assert_eq!(recorded, (Some(class.0), Some(class.1)), "{e}");
        self.assert_memory_bounded();
    }

    fn assert_memory_bounded(&self) {
        let bound = self.baseline + 10 * self.max_page_bytes + 64 * MIB;
        eprintln!(
            "worker memory: {} MB when first seen, peak {} MB, bound {} MB (max_page_bytes {} MB)",
            self.baseline / MIB,
            self.peak / MIB,
            bound / MIB,
            self.max_page_bytes / MIB
        );
        assert!(self.baseline > 0, "the worker was sampled");
        assert!(self.peak <= bound, "peak {} MB over the bound {} MB", self.peak / MIB, bound / MIB);
    }
}

fn postmaster_start(db: &mut Client) -> String {
    db.query_one("SELECT pg_postmaster_start_time()::text", &[]).unwrap().get(0)
}

/// Harvests a hostile source (`max_page_bytes` and other options) and samples its worker's
/// memory until it exits. Bounded: 90 s.
fn harvest_hostile(db: &mut TestDb, attack: Attack, max_page_bytes: u64, options: &str) -> (HostileSource, Outcome) {
    let src = HostileSource::start(attack);
    let options = format!(r#"{{"max_page_bytes": {max_page_bytes}, "max_retries": 0, "page_size": 1{options}}}"#);
    db.client
        .execute(
            "SELECT gn2pg_add_source(name => 'h', url => $1, export_id => 1, options => $2::text::jsonb)",
            &[&src.url(), &options],
        )
        .unwrap();
    let started = postmaster_start(&mut db.client);
    let run_id: i64 = db.client.query_one("SELECT gn2pg_harvest_async('h', 'full')", &[]).unwrap().get(0);
    let (mut baseline, mut peak, mut pid) = (0u64, 0u64, None);
    let deadline = Instant::now() + Duration::from_secs(90);
    let run = loop {
        assert!(Instant::now() < deadline, "run {run_id} did not end within 90 s");
        let row = run_row(&mut db.client, run_id);
        if pid.is_none() {
            pid = row.as_ref().and_then(|r| r["worker_pid"].as_i64());
        }
        if let Some((hwm, rss)) = pid.and_then(memory_of) {
            if baseline == 0 {
                baseline = rss;
            }
            peak = peak.max(hwm);
        }
        match row {
            // The run is over and its worker gone (its memory was sampled until then).
            Some(r) if run_ended(&r) && pid.and_then(memory_of).is_none() => break r,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    assert_eq!(postmaster_start(&mut db.client), started, "the cluster restarted");
    let kept: i64 = db
        .client
        .query_one("SELECT count(*) FROM gn2pg.observation WHERE source = 'h' AND id_data = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the row loaded before the attack stays");
    (src, Outcome { run, baseline, peak, max_page_bytes })
}

#[test]
fn ten_million_empty_objects() {
    let mut db = TestDb::new("hostile_objects");
    // 30 MB: 10 M items, a hundred times what a page may hold.
    let (src, out) = harvest_hostile(&mut db, Attack::EmptyObjects(10_000_000), 32 * MIB, "");
    out.assert_failed_with("more than 100000 items in one page", LIMIT);
    assert!(src.bytes_written() > 30_000_000, "the whole page was sent");
}

#[test]
fn forty_million_array_elements() {
    let mut db = TestDb::new("hostile_elements");
    // 80 MB: one item with 40 M elements in one array.
    let (_src, out) = harvest_hostile(&mut db, Attack::ArrayElements(40_000_000), 96 * MIB, "");
    out.assert_failed_with("array with more than 100000 elements", LIMIT);
}

#[test]
fn nesting_two_hundred_thousand_deep() {
    let mut db = TestDb::new("hostile_nesting");
    let (_src, out) = harvest_hostile(&mut db, Attack::Nesting(200_000), MIB, "");
    out.assert_failed_with("JSON nested deeper than 512 levels", LIMIT);
}

#[test]
fn a_two_hundred_megabyte_string() {
    let mut db = TestDb::new("hostile_string");
    // The answer is cut at max_page_bytes: the rest is never read.
    let (src, out) = harvest_hostile(&mut db, Attack::LongString(200_000_000), 32 * MIB, "");
    out.assert_failed_with("exceeds 33554432 bytes", LIMIT);
    assert!(src.bytes_written() < 100_000_000, "gn2pg hung up early: {} bytes written", src.bytes_written());
}

#[test]
fn a_string_over_the_string_limit() {
    let mut db = TestDb::new("hostile_string_limit");
    let (_src, out) = harvest_hostile(&mut db, Attack::LongString(20_000_000), 32 * MIB, "");
    out.assert_failed_with("string longer than 16777216 bytes", LIMIT);
}

#[test]
fn a_body_that_is_not_utf8() {
    let mut db = TestDb::new("hostile_utf8");
    let (_src, out) = harvest_hostile(&mut db, Attack::InvalidUtf8, MIB, "");
    out.assert_failed_with("body is not UTF-8", PROTOCOL);
}

#[test]
fn nan_is_not_json() {
    let mut db = TestDb::new("hostile_nan");
    let (_src, out) = harvest_hostile(&mut db, Attack::NaN, MIB, "");
    out.assert_failed_with("malformed JSON", PROTOCOL);
    assert!(out.error().contains("expected a JSON value at byte"), "{}", out.error());
}

/// `1e999` is JSON, and numeric holds it: stored as jsonb_in stores it. `1e999999` is JSON that
/// numeric cannot hold: that item is reported, the others load. Neither fails the run.
#[test]
fn numbers_out_of_range() {
    let mut db = TestDb::new("hostile_numbers");
    let (_src, out) = harvest_hostile(&mut db, Attack::HugeNumbers, MIB, "");
    assert_eq!(out.run["status"], "success", "{}", out.run);
    out.assert_memory_bounded();
    let same: bool = db
        .client
        .query_one("SELECT item -> 'v' = '1e999'::jsonb FROM gn2pg.observation WHERE id_data = 2", &[])
        .unwrap()
        .get(0);
    assert!(same);
    let error: String = db.client.query_one("SELECT error FROM gn2pg.run_error WHERE id_data = 3", &[]).unwrap().get(0);
    assert!(error.contains("value overflows numeric format"), "{error}");
}

#[test]
fn a_body_that_never_ends() {
    let mut db = TestDb::new("hostile_endless");
    let (src, out) = harvest_hostile(&mut db, Attack::Endless, 8 * MIB, "");
    out.assert_failed_with("exceeds 8388608 bytes", LIMIT);
    assert!(src.bytes_written() < 64 * MIB, "gn2pg hung up: {} bytes written", src.bytes_written());
}

#[test]
fn a_body_that_trickles_forever() {
    let mut db = TestDb::new("hostile_trickle");
    // Each read comes within the timeout; the whole answer must come within ten of them.
    let t = Instant::now();
    let (_src, out) = harvest_hostile(&mut db, Attack::Trickle, MIB, r#", "timeout_ms": 300"#);
    out.assert_failed_with("the answer did not end within 3 s (10 times the timeout)", ("08006", "timeout"));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}
