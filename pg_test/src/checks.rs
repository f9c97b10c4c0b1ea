//! Assertions and helpers shared by the integration tests: register a fixture source, run a
//! harvest through SQL, wait for asynchronous runs, and compare local rows with the source.

use std::time::{Duration, Instant};

use postgres::Client;
use serde_json::Value;

use crate::db::{connect, error_text};
use crate::fixture::{FixtureConfig, FixtureServer};

/// Registers `fx`'s export under `name` with the credentials its access mode needs.
pub fn add_source(db: &mut Client, name: &str, fx: &FixtureServer, export: i32, auth: &str, options: &str) {
    let cfg = FixtureConfig::default();
    let (login, password, token): (Option<&str>, Option<&str>, Option<&str>) = match auth {
        "login" => (Some(&cfg.login), Some(&cfg.password), None),
        "token" => (None, None, Some(&cfg.token)),
        _ => (None, None, None),
    };
    db.execute(
        "SELECT gn2pg_add_source(name => $1, url => $2, export_id => $3, auth => $4,
                                 login => $5, password => $6, token => $7, options => $8::text::jsonb)",
        &[&name, &fx.base_url(), &export, &auth, &login, &password, &token, &options],
    )
    .unwrap();
}

/// Runs gn2pg_harvest and returns its run_log row, or the error text.
pub fn harvest(db: &mut Client, source: &str, mode: &str) -> Result<Value, String> {
    db.query_one("SELECT gn2pg_harvest($1, $2)::text", &[&source, &mode])
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .map_err(|e| error_text(&e))
}

/// A gn2pg_harvest that must fail: the SQLSTATE its caller gets, and the error text.
pub fn harvest_failure(db: &mut Client, source: &str, mode: &str) -> (String, String) {
    match db.query_one("SELECT gn2pg_harvest($1, $2)::text", &[&source, &mode]) {
        Ok(r) => panic!("the run of {source} succeeded: {}", r.get::<_, &str>(0)),
        Err(e) => (e.code().map(|c| c.code().to_string()).unwrap_or_default(), error_text(&e)),
    }
}

/// The (sqlstate, reason) a run recorded (README, "Errors").
pub fn run_class(db: &mut Client, run_id: i64) -> (Option<String>, Option<String>) {
    let r = db.query_one("SELECT sqlstate, reason FROM gn2pg.run_log WHERE id = $1", &[&run_id]).unwrap();
    (r.get(0), r.get(1))
}

/// The (sqlstate, reason) of the latest run of a source.
pub fn last_run_class(db: &mut Client, source: &str) -> (Option<String>, Option<String>) {
    let id: i64 = db.query_one("SELECT max(id) FROM gn2pg.run_log WHERE source = $1", &[&source]).unwrap().get(0);
    run_class(db, id)
}

/// An integer field of a run_log row.
pub fn n(v: &Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// The run_log row of `run_id` as JSON (None until the worker created it).
pub fn run_row(db: &mut Client, run_id: i64) -> Option<Value> {
    db.query_opt("SELECT to_jsonb(r)::text FROM gn2pg.run_log r WHERE id = $1", &[&run_id])
        .unwrap()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
}

/// Whether a run is over: neither waiting for its worker ('pending') nor in progress.
pub fn run_ended(r: &Value) -> bool {
    !matches!(r["status"].as_str(), Some("pending" | "running"))
}

/// Polls until `cond` holds on the run's row; panics after `limit`.
pub fn wait_run(db: &mut Client, run_id: i64, limit: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(r) = run_row(db, run_id) {
            if cond(&r) {
                return r;
            }
            if start.elapsed() > limit {
                panic!("run {run_id}: {what} not reached after {limit:?}: {r}");
            }
        } else if start.elapsed() > limit {
            panic!("run {run_id}: no run_log row after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that the source's local rows are exactly what the export serves: same keys, uuids,
/// items (without the nested `ca_data` / `jdd_data`, kept in gn2pg.metadata) and geometries
/// (byte-identical EWKB).
pub fn assert_equal_to_source(db: &mut Client, source: &str, fx: &FixtureServer, export: u32) {
    let exp = fx.expected_rows(export);
    let ids: Vec<i64> = exp.iter().map(|r| r.id_synthese).collect();
    let uuids: Vec<String> = exp.iter().map(|r| r.uuid.clone()).collect();
    let wkts: Vec<Option<String>> = exp.iter().map(|r| r.wkt.clone()).collect();
    let items: Vec<String> = exp.iter().map(|r| r.item.to_string()).collect();
    let row = db
        .query_one(
            "WITH e AS (SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) AS e(id, uuid, wkt, item)),
                  o AS (SELECT * FROM gn2pg.observation WHERE source = $1),
                  bad AS (
                    SELECT coalesce(e.id, o.id_data) AS id,
                           CASE WHEN o.id_data IS NULL THEN 'missing locally'
                                WHEN e.id IS NULL THEN 'extra locally'
                                WHEN o.uuid::text IS DISTINCT FROM e.uuid THEN 'uuid differs'
                                WHEN o.item IS DISTINCT FROM e.item::jsonb - '{ca_data,jdd_data}'::text[] THEN 'item differs'
                                -- Byte for byte: what gn2pg builds in Rust must be what PostGIS makes of the text.
                                WHEN ST_AsEWKB(o.geom) IS DISTINCT FROM ST_AsEWKB(ST_GeomFromText(e.wkt, 4326)) THEN 'geometry differs'
                           END AS why
                      FROM e FULL JOIN o ON o.id_data = e.id)
             SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM o),
                    (SELECT count(*) FROM bad WHERE why IS NOT NULL),
                    (SELECT string_agg(id || ': ' || why, ', ') FROM (SELECT * FROM bad WHERE why IS NOT NULL ORDER BY id LIMIT 5) x)",
            &[&source, &ids, &uuids, &wkts, &items],
        )
        .unwrap();
    let (expected, local, bad): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let sample: Option<String> = row.get(3);
    assert!(expected > 0, "the export serves no row: the comparison would prove nothing");
    assert_eq!(bad, 0, "source {source}: {bad} rows differ (expected {expected}, local {local}): {sample:?}");
    assert_eq!(expected, local);
}

/// The dashboard's row counts, as `gn2pg.observation_count` keeps them: one line
/// "source ca jdd rows" per (source, CA, JDD) group with rows.
pub fn kept_counts(db: &mut Client) -> Vec<String> {
    db.query(
        "SELECT format('%s %s %s %s', source, source_ca_uuid, source_jdd_uuid, sum(rows)) FROM gn2pg.observation_count
          GROUP BY source, source_ca_uuid, source_jdd_uuid HAVING sum(rows) <> 0 ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// (mode, status, error) of every run of a source, oldest first.
pub fn run_rows(db: &mut Client, source: &str) -> Vec<(String, String, Option<String>)> {
    db.query("SELECT mode, status, error FROM gn2pg.run_log WHERE source = $1 ORDER BY id", &[&source])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// A new connection to database `db` after a backend was killed: the postmaster then restarts
/// every backend, so this waits (bounded) for the cluster to accept connections again.
pub fn reconnect_after_crash(db: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(mut c) = std::panic::catch_unwind(|| connect(db)) {
            if c.simple_query("SELECT 1").is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "the cluster did not come back");
    }
}
