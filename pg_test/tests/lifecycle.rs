//! A database's life around gn2pg (issue 14): everything survives a `pg_dump` / `pg_restore`
//! round trip and the restored database goes on working; dropping gn2pg (`DROP EXTENSION`,
//! `DROP DATABASE`) leaves no pg_cron job behind (src/cron_cleanup.rs).
//!
//! The test cluster has pg_cron, with its jobs in database `gn2pg_cron` (scripts/test-cluster.sh).
//! Job names are shared by the whole cluster: scheduled sources get names of their own, and the
//! tests of this file that touch jobs run one at a time (`CRON`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gn2pg_pg_test::canned::one_page_source;
use gn2pg_pg_test::checks::{add_source, harvest, kept_counts, n};
use gn2pg_pg_test::db::{connect, Client, TestDb};
use gn2pg_pg_test::fixture::{Faults, FixtureConfig, FixtureServer};

const CRON_DB: &str = "gn2pg_cron";
const MAINTENANCE_JOBS: [&str; 2] = ["gn2pg:purge-cron-log", "gn2pg:housekeeping"];

static CRON: Mutex<()> = Mutex::new(());

fn cron_lock() -> std::sync::MutexGuard<'static, ()> {
    CRON.lock().unwrap_or_else(|e| e.into_inner())
}

/// A name unique in the cluster (source names become pg_cron job names).
fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst))
}

/// Names of the pg_cron jobs whose command runs in `db`, sorted.
fn jobs_of(db: &str) -> Vec<String> {
    connect(CRON_DB)
        .query("SELECT jobname FROM cron.job WHERE database = $1 ORDER BY jobname", &[&db])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every job named gn2pg:…, as "name@database".
fn gn2pg_jobs() -> Vec<String> {
    connect(CRON_DB)
        .query("SELECT jobname || '@' || database FROM cron.job WHERE jobname LIKE 'gn2pg:%' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Runs what the job gn2pg:housekeeping runs, in the cron database.
fn run_housekeeping() {
    let mut cron = connect(CRON_DB);
    let command: String = cron
        .query_one("SELECT command FROM cron.job WHERE jobname = 'gn2pg:housekeeping'", &[])
        .expect("gn2pg schedules a housekeeping job in the cron database")
        .get(0);
    cron.batch_execute(&command).unwrap();
}

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No cleanup worker is running (they end once the transaction they wait for has ended).
fn cleanup_workers_done() {
    let mut admin = connect("postgres");
    wait_until("cleanup workers end", 30, || {
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'gn2pg cron cleanup'", &[])
            .unwrap()
            .get(0);
        n == 0
    });
}

fn schedule(c: &mut Client, source: &str) {
    c.execute("SELECT gn2pg_schedule($1, '0 3 * * *')", &[&source]).unwrap();
}

#[test]
fn dropping_gn2pg_removes_the_jobs_of_its_database_once_the_drop_commits() {
    let _cron = cron_lock();
    let fx = FixtureServer::start(FixtureConfig { rows: 10, ..Default::default() }).unwrap();
    let dropped = TestDb::new("drop_ext");
    let kept = TestDb::new("drop_ext_other");
    let (mut c, mut other) = (dropped.session(), kept.session());
    let (src, other_src) = (unique("dropx"), unique("keepx"));
    add_source(&mut c, &src, &fx, 3, "public", "{}");
    add_source(&mut other, &other_src, &fx, 3, "public", "{}");
    schedule(&mut c, &src);
    c.execute("SELECT gn2pg_schedule_check_flows()", &[]).unwrap();
    schedule(&mut other, &other_src);
    let expected = vec![format!("gn2pg:{src}"), format!("gn2pg:check-flows:{}", dropped.name)];
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(jobs_of(&dropped.name), sorted);

    // A drop that fails or is rolled back removes nothing.
    c.batch_execute("BEGIN; DROP EXTENSION gn2pg CASCADE; ROLLBACK").unwrap();
    cleanup_workers_done();
    assert_eq!(jobs_of(&dropped.name), sorted, "a rolled-back drop keeps the jobs");
    assert!(c.batch_execute("DROP EXTENSION postgis").is_err(), "gn2pg depends on postgis");
    cleanup_workers_done();
    assert_eq!(jobs_of(&dropped.name), sorted, "a failed drop keeps the jobs");

    c.batch_execute("DROP EXTENSION gn2pg CASCADE").unwrap();
    wait_until("the jobs of the database go", 30, || jobs_of(&dropped.name).is_empty());
    assert_eq!(jobs_of(&kept.name), vec![format!("gn2pg:{other_src}")], "other databases keep theirs");
    // The name is free again, for any database.
    add_source(&mut other, &src, &fx, 3, "public", "{}");
    schedule(&mut other, &src);

    // DROP SCHEMA gn2pg CASCADE takes the extension along: its jobs go too.
    other.batch_execute("DROP SCHEMA gn2pg CASCADE").unwrap();
    wait_until("the jobs go after DROP SCHEMA", 30, || jobs_of(&kept.name).is_empty());
    // With no gn2pg job left anywhere, gn2pg's maintenance jobs of the cron database go too.
    let left = gn2pg_jobs();
    assert!(left.is_empty(), "left: {left:?}");
}

/// Keeps the real gn2pg:housekeeping job from firing (every 10 minutes) during a test that runs
/// its command itself; puts it back on drop.
struct HousekeepingPaused;

impl HousekeepingPaused {
    fn new() -> HousekeepingPaused {
        connect(CRON_DB)
            .batch_execute("UPDATE cron.job SET active = false WHERE jobname = 'gn2pg:housekeeping'")
            .unwrap();
        HousekeepingPaused
    }
}

impl Drop for HousekeepingPaused {
    fn drop(&mut self) {
        let _ =
            connect(CRON_DB).batch_execute("UPDATE cron.job SET active = true WHERE jobname = 'gn2pg:housekeeping'");
    }
}

#[test]
fn jobs_of_a_dropped_database_or_of_a_drop_missed_by_the_trigger_are_removed_by_housekeeping() {
    let _cron = cron_lock();
    let fx = FixtureServer::start(FixtureConfig { rows: 10, ..Default::default() }).unwrap();
    let mut databases = Vec::new();
    let mut sources = Vec::new();
    for what in ["kept", "gone", "missed"] {
        let db = TestDb::new(&format!("hk_{what}"));
        let mut c = db.session();
        let src = unique(&format!("hk{what}"));
        add_source(&mut c, &src, &fx, 3, "public", "{}");
        schedule(&mut c, &src);
        databases.push(db);
        sources.push(src);
    }
    let _paused = HousekeepingPaused::new();
    let missed = databases.pop().unwrap();
    let gone = databases.pop().unwrap();
    let kept = databases.pop().unwrap();
    let gone_name = gone.name.clone();
    // DROP DATABASE fires no trigger.
    drop(gone);
    // A drop the trigger did not see (here it is disabled; a drop while pg_cron could not be
    // reached would leave the same).
    let mut m = missed.session();
    m.batch_execute("ALTER EVENT TRIGGER gn2pg_drop_cleanup DISABLE").unwrap();
    m.batch_execute("DROP EXTENSION gn2pg CASCADE").unwrap();
    cleanup_workers_done();
    assert_eq!(jobs_of(&gone_name), vec![format!("gn2pg:{}", sources[1])]);
    assert_eq!(jobs_of(&missed.name), vec![format!("gn2pg:{}", sources[2])]);

    // What the gn2pg:housekeeping job runs removes both, and only them.
    run_housekeeping();
    assert!(jobs_of(&gone_name).is_empty(), "{:?}", jobs_of(&gone_name));
    assert!(jobs_of(&missed.name).is_empty(), "{:?}", jobs_of(&missed.name));
    assert_eq!(jobs_of(&kept.name), vec![format!("gn2pg:{}", sources[0])]);
    for job in MAINTENANCE_JOBS {
        assert!(gn2pg_jobs().iter().any(|j| j.starts_with(&format!("{job}@"))), "{job} stays while jobs remain");
    }

    // A job made in the transaction that creates gn2pg is not an orphan while that transaction
    // is open, though the cron database cannot see its grants yet.
    let fresh = TestDb::empty("hk_fresh", "");
    let mut f = fresh.session();
    let fresh_src = unique("hkfresh");
    f.batch_execute("BEGIN; CREATE EXTENSION gn2pg CASCADE").unwrap();
    f.execute("SELECT gn2pg_add_source($1, $2, 3)", &[&fresh_src, &fx.base_url()]).unwrap();
    schedule(&mut f, &fresh_src);
    run_housekeeping();
    assert_eq!(jobs_of(&fresh.name), vec![format!("gn2pg:{fresh_src}")], "the job of an open transaction stays");
    f.batch_execute("COMMIT").unwrap();
    run_housekeeping();
    assert_eq!(jobs_of(&fresh.name), vec![format!("gn2pg:{fresh_src}")]);

    // When the last jobs go, so do gn2pg's maintenance jobs of the cron database.
    let mut k = kept.session();
    for (c, s) in [(&mut k, &sources[0]), (&mut f, &fresh_src)] {
        assert!(c.query_one("SELECT gn2pg_unschedule($1)", &[s]).unwrap().get::<_, bool>(0));
    }
    run_housekeeping();
    let left = gn2pg_jobs();
    assert!(left.is_empty(), "left: {left:?}");
}

/// `pg_config --bindir` of the PostgreSQL the tests use (pg_dump and pg_restore of that version).
fn pg_bindir() -> PathBuf {
    let pg_config = std::env::var("GN2PG_PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = Command::new(&pg_config).arg("--bindir").output().expect("pg_config runs");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn run_tool(tool: &str, args: &[&str]) {
    let host = std::env::var("GN2PG_TEST_PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("GN2PG_TEST_PGPORT").unwrap_or_else(|_| "55432".into());
    let out = Command::new(pg_bindir().join(tool))
        .args(["-h", &host, "-p", &port, "-U", "postgres"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Every table and sequence the extension marks for pg_dump, with its content: (name, rows,
/// md5 of the sorted rows) for a table, (name, last_value, is_called) for a sequence.
fn dumped_content(c: &mut Client) -> Vec<(String, String)> {
    let relations: Vec<(String, String)> = c
        .query(
            "SELECT r::regclass::text, c.relkind::text
               FROM pg_extension e, unnest(e.extconfig) r JOIN pg_class c ON c.oid = r
              WHERE e.extname = 'gn2pg' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    relations
        .into_iter()
        .map(|(rel, kind)| {
            let sql = if kind == "S" {
                format!("SELECT last_value || ' ' || is_called FROM {rel}")
            } else {
                format!("SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {rel} t")
            };
            let v: String = c.query_one(&sql, &[]).unwrap().get(0);
            (rel, v)
        })
        .collect()
}

fn max_id(c: &mut Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT coalesce(max(id), 0)::bigint FROM gn2pg.{table}"), &[]).unwrap().get(0)
}

/// A page with one good item (uuid `good`) and two rejected ones (bad uuid, bad geometry).
fn bad_items_page(good: &str) -> String {
    let item = |id: i64, uuid: &str, wkt: &str| {
        format!(
            r#"{{"id_synthese":{id},"id_perm_sinp":"{uuid}","wkt_4326":"{wkt}","derniere_action":"2025-01-01 10:00:00"}}"#
        )
    };
    let items = [
        item(1, good, "POINT(5 45)"),
        item(2, "not-a-uuid", "POINT(5 45)"),
        item(3, "33333333-3333-4333-8333-333333333333", "POINT(oops)"),
    ];
    format!(r#"{{"items":[{}],"limit":1000,"page":0,"total":3,"total_filtered":3}}"#, items.join(","))
}

#[test]
fn a_dump_restored_into_a_new_database_keeps_every_table_and_works_on() {
    let _cron = cron_lock();
    // One fixture per source: a uuid is stored once across sources.
    let fixture = |seed| FixtureServer::start(FixtureConfig { rows: 400, seed, ..Default::default() }).unwrap();
    let (fx1, fx2, fx, fx4, fx5) = (fixture(1), fixture(2), fixture(3), fixture(4), fixture(5));
    let (canned_url, _canned) = one_page_source(bad_items_page("11111111-1111-4111-8111-111111111111"));
    let orig = TestDb::new("dump_from");
    let mut c = orig.session();
    let scheduled = unique("bk");
    // Sources of every access mode, a parallel run (run_part), metadata (export 4), secrets.
    add_source(&mut c, &scheduled, &fx1, 1, "login", "{}");
    add_source(&mut c, "tok", &fx2, 2, "token", r#"{"workers": 2}"#);
    add_source(&mut c, "meta", &fx, 3, "public", r#"{"metadata_export_id": 4, "max_retries": 0}"#);
    for s in [scheduled.as_str(), "tok", "meta"] {
        let run = harvest(&mut c, s, "full").unwrap();
        assert_eq!(n(&run, "rows_upserted"), 400, "{s}: {run}");
    }
    // An alert raised and resolved, one left open; rejected items (run_error).
    fx.faults(Faults { error_every: 1, error_status: 503, ..Default::default() });
    assert!(harvest(&mut c, "meta", "incremental").is_err());
    fx.faults(Faults::default());
    harvest(&mut c, "meta", "incremental").unwrap();
    c.execute("SELECT gn2pg_add_source('down', 'http://127.0.0.1:9/gn', 3, options => '{\"max_retries\": 0}')", &[])
        .unwrap();
    assert!(harvest(&mut c, "down", "full").is_err());
    c.execute("SELECT gn2pg_add_source('bad', $1, 1)", &[&canned_url]).unwrap();
    assert_eq!(n(&harvest(&mut c, "bad", "full").unwrap(), "rows_failed"), 2);
    // Mappings and a schedule.
    c.execute(
        "SELECT gn2pg_map_ca('meta', NULL, '5e4d3c2b-1a09-4f8e-b7d6-c5b4a3928170', target_name => 'Partenaires')",
        &[],
    )
    .unwrap();
    c.execute("SELECT gn2pg_remap('meta')", &[]).unwrap();
    schedule(&mut c, &scheduled);

    let before = dumped_content(&mut c);
    let counts_before = kept_counts(&mut c);
    assert!(!counts_before.is_empty());
    let rows_of = |t: &str| before.iter().find(|(r, _)| r == t).map(|(_, v)| v.clone()).unwrap_or_default();
    for t in
        ["gn2pg.run_part", "gn2pg.run_error", "gn2pg.alert", "gn2pg.alert_event", "gn2pg.mapping", "gn2pg.schedule"]
    {
        assert!(!rows_of(t).starts_with("0 "), "the test must fill {t}: {}", rows_of(t));
    }
    for seq in ["gn2pg.source_id_seq", "gn2pg.run_error_id_seq", "gn2pg.alert_id_seq", "gn2pg.alert_event_id_seq"] {
        assert!(before.iter().any(|(r, _)| r == seq), "{seq} is marked for pg_dump: {before:?}");
    }

    let dump = std::env::temp_dir().join(format!("gn2pg-{}.dump", orig.name));
    let dump_path = dump.to_str().unwrap().to_string();
    run_tool("pg_dump", &["-Fc", "-d", &orig.name, "-f", &dump_path]);
    let restored = TestDb::empty("dump_into", "TEMPLATE template0");
    run_tool("pg_restore", &["--exit-on-error", "-d", &restored.name, &dump_path]);
    let _ = std::fs::remove_file(&dump);
    let mut r = restored.session();
    let after = dumped_content(&mut r);
    assert_eq!(after, before, "every table and sequence of gn2pg comes back as it was");
    assert_eq!(kept_counts(&mut r), counts_before, "the dashboard's row counts are rebuilt once, not twice");
    let secret: Option<String> = r
        .query_one(
            "SELECT k.password FROM gn2pg.source_secret k JOIN gn2pg.source s ON s.id = k.source_id WHERE s.name = $1",
            &[&scheduled],
        )
        .unwrap()
        .get(0);
    assert_eq!(secret.as_deref(), Some("secret"), "pg_dump includes the credentials");

    // As if restored on another server: the original database is gone, its job an orphan.
    let (max_source, max_run, max_alert, max_event, max_error) = (
        max_id(&mut c, "source"),
        max_id(&mut c, "run_log"),
        max_id(&mut c, "alert"),
        max_id(&mut c, "alert_event"),
        max_id(&mut c, "run_error"),
    );
    let max_mapping = max_id(&mut c, "mapping");
    drop(c);
    drop(orig);

    // The restored database works on: registering, harvesting, raising and resolving alerts,
    // rejecting items, mapping, scheduling all get new ids.
    let id: i32 = r.query_one("SELECT gn2pg_add_source('new', $1, 5)", &[&fx4.base_url()]).unwrap().get(0);
    assert_eq!(i64::from(id), max_source + 1);
    let run = harvest(&mut r, "new", "auto").unwrap();
    assert_eq!((run["status"].as_str(), n(&run, "rows_upserted")), (Some("success"), 400));
    assert!(n(&run, "id") > max_run);
    let incremental = harvest(&mut r, &scheduled, "auto").unwrap();
    assert_eq!(incremental["mode"], "incremental", "the restored run log drives the next run: {incremental}");
    r.execute("SELECT gn2pg_add_source('down', $1, 3)", &[&fx5.base_url()]).unwrap();
    harvest(&mut r, "down", "full").unwrap();
    let resolved: bool = r
        .query_one("SELECT resolved_at IS NOT NULL FROM gn2pg.alert WHERE source = 'down' AND kind = 'failed'", &[])
        .unwrap()
        .get(0);
    assert!(resolved, "a success resolves the alert restored open");
    r.execute("SELECT gn2pg_add_source('down2', 'http://127.0.0.1:9/gn', 3, options => '{\"max_retries\": 0}')", &[])
        .unwrap();
    assert!(harvest(&mut r, "down2", "full").is_err());
    assert!(max_id(&mut r, "alert") > max_alert);
    let events: Vec<String> = r
        .query(
            "SELECT e.event || ' ' || a.source || ' ' || a.kind FROM gn2pg.alert_event e
               JOIN gn2pg.alert a ON a.id = e.alert_id WHERE e.id > $1 ORDER BY e.id",
            &[&max_event],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(events, ["resolved down failed", "raised down2 failed"]);
    let runs: Vec<String> = r
        .query("SELECT status FROM gn2pg.run_log WHERE id > $1 ORDER BY id", &[&max_run])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(runs, ["success", "success", "success", "failed"], "every run recorded its end");
    r.execute(
        "SELECT gn2pg_add_source('bad2', $1, 1)",
        &[&one_page_source(bad_items_page("22222222-2222-4222-8222-222222222222")).0],
    )
    .unwrap();
    assert_eq!(n(&harvest(&mut r, "bad2", "full").unwrap(), "rows_failed"), 2);
    assert!(max_id(&mut r, "run_error") > max_error);
    let mapping: i32 =
        r.query_one("SELECT gn2pg_map_jdd('new', NULL, '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d')", &[]).unwrap().get(0);
    assert!(i64::from(mapping) > max_mapping);
    schedule(&mut r, &scheduled);
    assert_eq!(jobs_of(&restored.name), vec![format!("gn2pg:{scheduled}")]);
    assert!(r.query_one("SELECT gn2pg_unschedule($1)", &[&scheduled]).unwrap().get::<_, bool>(0));
}

#[test]
fn every_table_and_sequence_of_gn2pg_is_marked_for_pg_dump() {
    let mut db = TestDb::new("config_dump");
    let missing: Vec<String> = db
        .client
        .query(
            "SELECT c.oid::regclass::text FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
              WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'gn2pg')
                AND c.relkind IN ('r', 'p', 'S')
                AND c.oid <> ALL ((SELECT extconfig FROM pg_extension WHERE extname = 'gn2pg')::oid[])
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(missing.is_empty(), "not kept by pg_dump: {missing:?}");
    // Sequences that belong to a table but not to the extension (identity columns) are never
    // dumped for an extension's table.
    let identities: Vec<String> = db
        .client
        .query(
            "SELECT a.attrelid::regclass || '.' || a.attname FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
              WHERE c.relnamespace = 'gn2pg'::regnamespace AND a.attidentity <> ''",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(identities.is_empty(), "identity columns: {identities:?}");
}
