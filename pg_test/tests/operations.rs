//! Operating flows, end to end on the test cluster (scripts/test-cluster.sh: pg_cron preloaded,
//! `cron.database_name = 'gn2pg_cron'`): pg_cron schedules, alerts (table, NOTIFY, webhook),
//! roles and secrets, `gn2pg.allowed_hosts`, and the `gn2pg.flow_status` dashboard.
//!
//! Roles and pg_cron jobs belong to the whole cluster, unlike test databases: every test uses
//! login roles and source names of its own and removes them, even when it fails.

use std::time::{Duration, Instant};

use gn2pg_pg_test::db::{connect, connect_with_notices, error_text, Client, DbError, TestDb};
use gn2pg_pg_test::fixture::{Faults, FixtureConfig, FixtureServer};
use gn2pg_pg_test::hook::{next_alert, Hook};
use gn2pg_pg_test::roles::{allow_loopback_hosts, connect_as, unique, Roles};
use serde_json::Value;

const CRON_DB: &str = "gn2pg_cron";

fn fixture(rows: u64) -> FixtureServer {
    FixtureServer::start(FixtureConfig { rows, ..Default::default() }).expect("fixture server starts")
}

/// Unschedules a source at the end of a test, so that no job outlives its database.
struct Unschedule<'a>(&'a TestDb, String);

impl Drop for Unschedule<'_> {
    fn drop(&mut self) {
        let mut c = self.0.session();
        let _ = c.execute("SELECT gn2pg_unschedule($1)", &[&self.1]);
    }
}

/// pg_cron jobs named `job`, from the cron database: (jobid, schedule, command, database, username).
fn cron_jobs(job: &str) -> Vec<(i64, String, String, String, String)> {
    connect(CRON_DB)
        .query(
            "SELECT jobid, schedule, command, database, username FROM cron.job WHERE jobname = $1 ORDER BY jobid",
            &[&job],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

fn harvest(db: &mut Client, source: &str) -> Result<Value, String> {
    db.query_one("SELECT gn2pg_harvest($1)::text", &[&source])
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .map_err(|e| error_text(&e))
}

fn flow(db: &mut Client, source: &str) -> Value {
    let t: String =
        db.query_one("SELECT to_jsonb(f)::text FROM gn2pg.flow_status f WHERE source = $1", &[&source]).unwrap().get(0);
    serde_json::from_str(&t).unwrap()
}

fn count(db: &mut Client, sql: &str, source: &str) -> i64 {
    db.query_one(sql, &[&source]).unwrap().get(0)
}

#[test]
fn a_schedule_is_one_cron_job_and_rescheduling_replaces_it() {
    let db = TestDb::new("schedule");
    let mut c = db.session();
    let fx = fixture(50);
    let src = unique("sched");
    let job = format!("gn2pg:{src}");
    c.execute("SELECT gn2pg_add_source($1, $2, 3)", &[&src, &fx.base_url()]).unwrap();
    let _cleanup = Unschedule(&db, src.clone());

    let id1: i64 = c.query_one("SELECT gn2pg_schedule($1, '*/30 * * * *')", &[&src]).unwrap().get(0);
    let jobs = cron_jobs(&job);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (jobid, schedule, command, database, username) = jobs[0].clone();
    assert_eq!(
        (jobid, schedule.as_str(), database.as_str(), username.as_str()),
        (id1, "*/30 * * * *", db.name.as_str(), "postgres")
    );
    assert_eq!(command, format!("SELECT public.gn2pg_harvest_scheduled('{src}', 'auto')"));

    // The dashboard shows the schedule and when it fires next (a :00 or :30 in UTC).
    let f = flow(&mut c, &src);
    assert_eq!(f["schedule"], "*/30 * * * *");
    let next: bool = c
        .query_one(
            "SELECT next_run_at > now() AND next_run_at <= now() + interval '30 minutes'
                    AND extract(minute FROM next_run_at AT TIME ZONE 'UTC') IN (0, 30)
                    AND extract(second FROM next_run_at) = 0
               FROM gn2pg.flow_status WHERE source = $1",
            &[&src],
        )
        .unwrap()
        .get(0);
    assert!(next, "next_run_at: {}", f["next_run_at"]);

    // Rescheduling replaces the job: still exactly one, with the new schedule and mode.
    let id2: i64 = c.query_one("SELECT gn2pg_schedule($1, '0 3 * * *', 'full')", &[&src]).unwrap().get(0);
    let jobs = cron_jobs(&job);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!((jobs[0].0, jobs[0].1.as_str()), (id2, "0 3 * * *"));
    assert!(jobs[0].2.contains("'full'"), "{}", jobs[0].2);
    let rows: i64 = count(&mut c, "SELECT count(*) FROM gn2pg.schedule WHERE source = $1", &src);
    assert_eq!(rows, 1);
    // pg_cron never prunes its run log: gn2pg ships a job that does.
    assert_eq!(cron_jobs("gn2pg:purge-cron-log").len(), 1);

    // Bad schedules and unknown sources are refused before pg_cron is asked.
    for (sql, needle) in [
        ("SELECT gn2pg_schedule($1, '*/30 * * *')", "five"),
        ("SELECT gn2pg_schedule($1, '30 seconds')", "invalid schedule"),
        ("SELECT gn2pg_schedule($1, '61 * * * *')", "out of range"),
        ("SELECT gn2pg_schedule($1 || 'x', '0 3 * * *')", "does not exist"),
        ("SELECT gn2pg_schedule($1, '0 3 * * *', 'sometimes')", "invalid mode"),
    ] {
        let e = c.query_one(sql, &[&src]).map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
        assert!(e.contains(needle), "{sql}: expected {needle:?}, got {e:?}");
    }
    assert_eq!(cron_jobs(&job).len(), 1);

    let removed: bool = c.query_one("SELECT gn2pg_unschedule($1)", &[&src]).unwrap().get(0);
    assert!(removed);
    assert!(cron_jobs(&job).is_empty());
    assert_eq!(count(&mut c, "SELECT count(*) FROM gn2pg.schedule WHERE source = $1", &src), 0);
    let again: bool = c.query_one("SELECT gn2pg_unschedule($1)", &[&src]).unwrap().get(0);
    assert!(!again);

    // Job names are cut at 63 bytes by pg_cron; a long source name still gets exactly one job.
    let long = format!("{}_{}", unique("long"), "x".repeat(63)).chars().take(63).collect::<String>();
    c.execute("SELECT gn2pg_add_source($1, $2, 4)", &[&long, &fx.base_url()]).unwrap();
    let _cleanup_long = Unschedule(&db, long.clone());
    let cut: String = format!("gn2pg:{long}").chars().take(63).collect();
    for expr in ["0 1 * * *", "0 2 * * *"] {
        c.execute("SELECT gn2pg_schedule($1, $2)", &[&long, &expr]).unwrap();
        let jobs = cron_jobs(&cut);
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!(jobs[0].1, expr);
    }
    assert!(c.query_one("SELECT gn2pg_unschedule($1)", &[&long]).unwrap().get::<_, bool>(0));
    assert!(cron_jobs(&cut).is_empty());

    // The staleness check has its job too, one per database.
    let check_job = format!("gn2pg:check-flows:{}", db.name);
    let check_id: i64 = c.query_one("SELECT gn2pg_schedule_check_flows()", &[]).unwrap().get(0);
    let again_id: i64 = c.query_one("SELECT gn2pg_schedule_check_flows('*/5 * * * *')", &[]).unwrap().get(0);
    let jobs = cron_jobs(&check_job);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(again_id > check_id);
    assert_eq!((jobs[0].1.as_str(), jobs[0].2.as_str()), ("*/5 * * * *", "SELECT public.gn2pg_check_flows()"));
    assert!(c.query_one("SELECT gn2pg_unschedule_check_flows()", &[]).unwrap().get::<_, bool>(0));
    assert!(cron_jobs(&check_job).is_empty());
    assert!(!c.query_one("SELECT gn2pg_unschedule_check_flows()", &[]).unwrap().get::<_, bool>(0));

    // Removing a scheduled source removes its job too.
    c.execute("SELECT gn2pg_schedule($1, '0 4 * * *')", &[&src]).unwrap();
    assert_eq!(cron_jobs(&job).len(), 1);
    c.execute("SELECT gn2pg_remove_source($1)", &[&src]).unwrap();
    assert!(cron_jobs(&job).is_empty(), "the job of a removed source must go");
}

/// pg_cron job names are shared by every database of the cluster: a name another database holds
/// is refused with a SQLSTATE of its own (duplicate_object), not pg_cron's generic 38000.
#[test]
fn a_job_name_held_by_another_database_is_refused_as_a_duplicate() {
    let (a, b) = (TestDb::new("cron_a"), TestDb::new("cron_b"));
    let (mut ca, mut cb) = (a.session(), b.session());
    let fx = fixture(10);
    let src = unique("dup");
    for c in [&mut ca, &mut cb] {
        c.execute("SELECT gn2pg_add_source($1, $2, 3)", &[&src, &fx.base_url()]).unwrap();
    }
    let _cleanup = Unschedule(&a, src.clone());
    ca.execute("SELECT gn2pg_schedule($1, '0 5 * * *')", &[&src]).unwrap();
    let e = cb.execute("SELECT gn2pg_schedule($1, '0 6 * * *')", &[&src]).unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42710"), "{}", error_text(&e));
    assert!(error_text(&e).contains(&format!("already exists for database {}", a.name)), "{}", error_text(&e));
    assert_eq!(cron_jobs(&format!("gn2pg:{src}")).len(), 1);
}

#[test]
fn pg_cron_runs_a_scheduled_harvest() {
    let db = TestDb::new("cron_fires");
    let mut c = db.session();
    let fx = fixture(1500);
    let src = unique("fires");
    c.execute("SELECT gn2pg_add_source($1, $2, 3)", &[&src, &fx.base_url()]).unwrap();
    let _cleanup = Unschedule(&db, src.clone());
    let jobid: i64 = c.query_one("SELECT gn2pg_schedule($1, '* * * * *')", &[&src]).unwrap().get(0);
    // pg_cron 1.4 fires on minute boundaries: at most ~60 s, plus the run.
    let deadline = Instant::now() + Duration::from_secs(90);
    let run = loop {
        let r = c
            .query_opt("SELECT id, status, rows_upserted FROM gn2pg.run_log WHERE source = $1 AND status NOT IN ('pending', 'running') ORDER BY id LIMIT 1", &[&src])
            .unwrap();
        if let Some(r) = r {
            break (r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, i64>(2));
        }
        assert!(Instant::now() < deadline, "pg_cron did not start a harvest within 90 s");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!((run.1.as_str(), run.2), ("success", 1500), "run {run:?}");
    let unscheduled: bool = c.query_one("SELECT gn2pg_unschedule($1)", &[&src]).unwrap().get(0);
    assert!(unscheduled);
    // pg_cron recorded the job's command as succeeded, in the cron database.
    let (status, command): (String, String) = {
        let r = connect(CRON_DB)
            .query_one(
                "SELECT status, command FROM cron.job_run_details WHERE jobid = $1 ORDER BY runid LIMIT 1",
                &[&jobid],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(status, "succeeded");
    assert!(command.contains("gn2pg_harvest_scheduled"), "{command}");
    assert_equal_rows(&mut c, &src, 1500);
}

fn assert_equal_rows(c: &mut Client, src: &str, n: i64) {
    assert_eq!(count(c, "SELECT count(*) FROM gn2pg.observation WHERE source = $1", src), n);
}

#[test]
fn scheduled_runs_skip_a_source_that_is_still_running() {
    let db = TestDb::new("no_overlap");
    let mut c = db.session();
    let fx = fixture(600);
    c.execute("SELECT gn2pg_add_source('slow', $1, 3, options => '{\"page_size\": 100}')", &[&fx.base_url()]).unwrap();
    fx.faults(Faults { slow_ms: 700, ..Default::default() });
    let first: i64 = c.query_one("SELECT gn2pg_harvest_async('slow')", &[]).unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&mut c, "SELECT count(*) FROM gn2pg.run_log WHERE source = $1 AND status = 'running'", "slow") == 0 {
        assert!(Instant::now() < deadline, "the first run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // What the cron job runs: the source is busy, so nothing starts and nothing fails.
    let skipped: Option<i64> = c.query_one("SELECT gn2pg_harvest_scheduled('slow')", &[]).unwrap().get(0);
    assert_eq!(skipped, None);
    assert_eq!(count(&mut c, "SELECT count(*) FROM gn2pg.run_log WHERE source = $1", "slow"), 1);
    assert_eq!(flow(&mut c, "slow")["running_run_id"], first);
    // A manual run at the same time is refused by the engine, without an alert.
    let e = harvest(&mut c, "slow").unwrap_err();
    assert!(e.contains("is being harvested by run"), "{e}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM gn2pg.alert WHERE source = $1", "slow"), 0);
    while count(&mut c, "SELECT count(*) FROM gn2pg.run_log WHERE source = $1 AND status = 'running'", "slow") > 0 {
        assert!(Instant::now() < deadline + Duration::from_secs(30), "the first run did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    let f = flow(&mut c, "slow");
    assert_eq!(
        (f["last_run_id"].as_i64(), f["health"].as_str()),
        (Some(first), Some("ok")),
        "the refused run is not the last run: {f}"
    );
    fx.faults(Faults::default());
    let next: Option<i64> = c.query_one("SELECT gn2pg_harvest_scheduled('slow')", &[]).unwrap().get(0);
    assert!(next.is_some_and(|n| n > first));
    // Disabled sources are skipped too.
    c.batch_execute("UPDATE gn2pg.source SET enabled = false WHERE name = 'slow'").unwrap();
    let disabled: Option<i64> = c.query_one("SELECT gn2pg_harvest_scheduled('slow')", &[]).unwrap().get(0);
    assert_eq!(disabled, None);
}

#[test]
fn a_failing_source_raises_an_alert_notify_and_webhook_and_recovery_clears_it() {
    let db = TestDb::new("alerts");
    let mut c = db.session();
    let mut listener = db.session();
    listener.batch_execute("LISTEN gn2pg_alert").unwrap();
    let fx = fixture(300);
    // The first webhook request gets a 500: gn2pg must retry.
    let hook = Hook::start(1);
    let hook_url = format!("{}/hooks/T000/s3cr3t-path", hook.base);
    c.execute(
        "SELECT gn2pg_add_source('flaky', $1, 3, options => '{\"max_retries\": 0, \"organism\": \"PN Écrins\", \"organism_id\": \"1234\"}', alert_webhook => $2)",
        &[&fx.base_url(), &hook_url],
    )
    .unwrap();
    assert_eq!(flow(&mut c, "flaky")["health"], "never_run");
    fx.faults(Faults { error_every: 1, error_status: 503, ..Default::default() });
    let err = harvest(&mut c, "flaky").unwrap_err();
    assert!(err.contains("HTTP 503"), "{err}");
    let run1: i64 = c.query_one("SELECT max(id) FROM gn2pg.run_log", &[]).unwrap().get(0);

    // The alert row.
    let (kind, run_id, message, resolved): (String, i64, String, Option<String>) = {
        let r = c
            .query_one("SELECT kind, run_id, message, resolved_at::text FROM gn2pg.alert WHERE source = 'flaky'", &[])
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!((kind.as_str(), run_id, resolved), ("failed", run1, None));
    assert!(message.contains("HTTP 503"), "{message}");

    // NOTIFY gn2pg_alert, received by a listener.
    let note = next_alert(&mut listener, 10).expect("a NOTIFY gn2pg_alert");
    assert_eq!(
        (note["event"].as_str(), note["source"].as_str(), note["kind"].as_str()),
        (Some("raised"), Some("flaky"), Some("failed"))
    );
    assert_eq!(note["run_id"], run1);
    assert_eq!(note["database"], db.name.as_str());

    // The webhook: the same JSON, POSTed to the source's URL, retried after a 500.
    let (path, body, status) = hook.next(15).expect("a webhook request");
    assert_eq!((path.as_str(), status), ("/hooks/T000/s3cr3t-path", 500));
    assert_eq!(body, note);
    let (_, body2, status2) = hook.next(15).expect("a retry of the webhook");
    assert_eq!((body2, status2), (note.clone(), 200));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .query_one("SELECT webhook_state, webhook_attempts FROM gn2pg.alert_event WHERE event = 'raised'", &[])
            .unwrap();
        let (state, attempts): (Option<String>, i32) = (r.get(0), r.get(1));
        if state.as_deref() == Some("sent") {
            assert_eq!(attempts, 2);
            break;
        }
        assert!(Instant::now() < deadline, "delivery not recorded: {state:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let f = flow(&mut c, "flaky");
    assert_eq!(
        (f["health"].as_str(), f["open_alerts"].as_i64(), f["last_run_status"].as_str()),
        (Some("failing"), Some(1), Some("failed"))
    );
    assert_eq!(f["open_alert_kinds"], serde_json::json!(["failed"]));
    assert_eq!((f["organism"].as_str(), f["organism_id"].as_str()), (Some("PN Écrins"), Some("1234")));

    // A second failure is a repeat of the open alert: counted, not notified again.
    harvest(&mut c, "flaky").unwrap_err();
    let (open, occurrences): (i64, i32) = {
        let r = c
            .query_one(
                "SELECT count(*), max(occurrences) FROM gn2pg.alert WHERE source = 'flaky' AND resolved_at IS NULL",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((open, occurrences), (1, 2));
    assert!(next_alert(&mut listener, 2).is_none(), "a repeat does not notify");

    // Recovery: the next successful run resolves the alert, and says so.
    fx.faults(Faults::default());
    let ok = harvest(&mut c, "flaky").unwrap();
    let run3 = ok["id"].as_i64().unwrap();
    let (resolved_by, open): (Option<i64>, i64) = {
        let r = c
            .query_one("SELECT max(resolved_by_run), count(*) FILTER (WHERE resolved_at IS NULL) FROM gn2pg.alert WHERE source = 'flaky'", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((resolved_by, open), (Some(run3), 0));
    let note = next_alert(&mut listener, 10).expect("a NOTIFY for the resolution");
    assert_eq!((note["event"].as_str(), note["resolved_by_run"].as_i64()), (Some("resolved"), Some(run3)));
    let (_, body, status) = hook.next(15).expect("a webhook for the resolution");
    assert_eq!((body, status), (note, 200));
    let f = flow(&mut c, "flaky");
    assert_eq!(
        (f["health"].as_str(), f["open_alerts"].as_i64(), f["local_rows"].as_i64()),
        (Some("ok"), Some(0), Some(300))
    );
    assert_eq!((f["last_run_rows"].as_i64(), f["last_success_run_id"].as_i64()), (Some(300), Some(run3)));

    // Nothing of the webhook URL's secret path is stored or shown.
    let leaks: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM gn2pg.alert_event e WHERE e::text LIKE '%s3cr3t%')
                  + (SELECT count(*) FROM gn2pg.alert a WHERE a::text LIKE '%s3cr3t%')
                  + (SELECT count(*) FROM gn2pg.source s WHERE s::text LIKE '%s3cr3t%')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaks, 0);
}

/// Issue 10, item 4: a run whose rows are all rejected (every uuid belongs to another source)
/// still ends `success`, but its caller gets a WARNING with the count and where to look,
/// flow_status shows it, and an alert of kind 'rejected' is raised, which a failed run leaves
/// open and a successful run rejecting nothing resolves.
#[test]
fn a_run_that_rejects_rows_warns_shows_and_alerts_until_a_clean_run() {
    let db = TestDb::new("rejected");
    let (mut c, notices) = connect_with_notices(&db.name);
    let mut listener = db.session();
    listener.batch_execute("LISTEN gn2pg_alert").unwrap();
    let fx = fixture(300);
    let warnings =
        || -> Vec<DbError> { notices.lock().unwrap().drain(..).filter(|n| n.severity() == "WARNING").collect() };
    // Two sources of the same export: the second one's uuids all belong to the first.
    c.execute("SELECT gn2pg_add_source('first', $1, 3)", &[&fx.base_url()]).unwrap();
    c.execute("SELECT gn2pg_add_source('second', $1, 3, options => '{\"max_retries\": 0}')", &[&fx.base_url()])
        .unwrap();
    harvest(&mut c, "first").unwrap();
    assert!(warnings().is_empty());
    let run = harvest(&mut c, "second").unwrap();
    let run_id = run["id"].as_i64().unwrap();
    let counts = (run["status"].as_str(), run["rows_upserted"].as_i64(), run["rows_failed"].as_i64());
    assert_eq!(counts, (Some("success"), Some(0), Some(300)), "the status semantics stay: {run}");

    // The caller is told how many, and where to look.
    let w = warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].code().code(), "01000");
    assert_eq!(w[0].message(), format!("gn2pg: source \"second\": run {run_id} rejected 300 of the 300 rows received"));
    assert!(w[0].detail().is_some_and(|d| d.contains("ended success")), "{w:?}");
    let look = format!("SELECT id_data, uuid, error FROM gn2pg.run_error WHERE run_id = {run_id};");
    assert!(w[0].hint().is_some_and(|h| h.contains(&look)), "{w:?}");
    let listed: i64 = c.query_one("SELECT count(*) FROM gn2pg.run_error WHERE run_id = $1", &[&run_id]).unwrap().get(0);
    assert_eq!(listed, 300, "the query of the hint lists them");

    // flow_status and the alert.
    let f = flow(&mut c, "second");
    assert_eq!(
        (f["last_rows_rejected"].as_i64(), f["last_rejected_run_id"].as_i64(), f["health"].as_str()),
        (Some(300), Some(run_id), Some("ok"))
    );
    assert_eq!(f["open_alert_kinds"], serde_json::json!(["rejected"]));
    assert_eq!(flow(&mut c, "first")["last_rows_rejected"], 0);
    let note = next_alert(&mut listener, 10).expect("a NOTIFY for the rejections");
    assert_eq!(
        (note["event"].as_str(), note["source"].as_str(), note["kind"].as_str(), note["run_id"].as_i64()),
        (Some("raised"), Some("second"), Some("rejected"), Some(run_id))
    );
    let message = note["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("rejected 300 of the 300 rows received") && message.contains(&format!("run_id = {run_id}"))
    );

    // A failed run proves nothing about the rows: the rejection stands.
    fx.faults(Faults { error_every: 1, error_status: 503, ..Default::default() });
    harvest(&mut c, "second").unwrap_err();
    let f = flow(&mut c, "second");
    assert_eq!((f["last_rows_rejected"].as_i64(), f["last_rejected_run_id"].as_i64()), (Some(300), Some(run_id)));
    assert_eq!(f["open_alert_kinds"], serde_json::json!(["failed", "rejected"]));
    assert_eq!(next_alert(&mut listener, 10).expect("the failure")["kind"], "failed");

    // Once the first source gives the uuids back, a full run loads the rows and rejects none.
    fx.faults(Faults::default());
    c.execute("SELECT gn2pg_remove_source('first', drop_data => true)", &[]).unwrap();
    let clean: String = c.query_one("SELECT gn2pg_harvest('second', 'full')::text", &[]).unwrap().get(0);
    let clean: Value = serde_json::from_str(&clean).unwrap();
    assert_eq!((clean["rows_upserted"].as_i64(), clean["rows_failed"].as_i64()), (Some(300), Some(0)), "{clean}");
    assert!(warnings().is_empty(), "no rejection, no warning");
    let resolved_by: Vec<(String, Option<i64>)> = c
        .query("SELECT kind, resolved_by_run FROM gn2pg.alert WHERE source = 'second' ORDER BY kind", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let clean_id = clean["id"].as_i64();
    assert_eq!(resolved_by, vec![("failed".to_string(), clean_id), ("rejected".to_string(), clean_id)]);
    let f = flow(&mut c, "second");
    assert_eq!(
        (f["last_rows_rejected"].as_i64(), f["last_rejected_run_id"].as_i64(), f["open_alerts"].as_i64()),
        (Some(0), None, Some(0))
    );
    let mut resolved: Vec<String> = (0..2)
        .map(|_| next_alert(&mut listener, 10).expect("a NOTIFY per resolution"))
        .map(|n| format!("{} {}", n["event"].as_str().unwrap_or(""), n["kind"].as_str().unwrap_or("")))
        .collect();
    resolved.sort();
    assert_eq!(resolved, vec!["resolved failed", "resolved rejected"]);
}

#[test]
fn an_abandoned_run_raises_an_alert_that_the_next_success_resolves() {
    let db = TestDb::new("abandoned");
    let mut c = db.session();
    let mut listener = db.session();
    listener.batch_execute("LISTEN gn2pg_alert").unwrap();
    let fx = fixture(100);
    c.execute("SELECT gn2pg_add_source('crash', $1, 3)", &[&fx.base_url()]).unwrap();
    // A run whose worker died (server crash, kill -9): still 'running', with a pid that is gone.
    let dead: i64 = c
        .query_one(
            "INSERT INTO gn2pg.run_log (id, source, mode, status, worker_pid)
             VALUES (nextval('gn2pg.run_log_id_seq'), 'crash', 'full', 'running', 2147483000) RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(flow(&mut c, "crash")["health"], "never_run");
    // The next run marks it abandoned (alert), then succeeds (resolution).
    let run = harvest(&mut c, "crash").unwrap();
    let (kind, run_id, resolved_by): (String, i64, Option<i64>) = {
        let r =
            c.query_one("SELECT kind, run_id, resolved_by_run FROM gn2pg.alert WHERE source = 'crash'", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((kind.as_str(), run_id, resolved_by), ("abandoned", dead, run["id"].as_i64()));
    let r = c.query_one("SELECT status, sqlstate, reason FROM gn2pg.run_log WHERE id = $1", &[&dead]).unwrap();
    let (status, sqlstate, reason): (String, Option<String>, Option<String>) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(
        (status.as_str(), sqlstate.as_deref(), reason.as_deref()),
        ("abandoned", Some("XX000"), Some("internal")),
        "an abandoned run says why in the columns alerting reads"
    );
    let raised = next_alert(&mut listener, 10).expect("raised");
    let resolved = next_alert(&mut listener, 10).expect("resolved");
    assert_eq!((raised["event"].as_str(), raised["kind"].as_str()), (Some("raised"), Some("abandoned")));
    assert_eq!((resolved["event"].as_str(), resolved["kind"].as_str()), (Some("resolved"), Some("abandoned")));
    assert!(raised["message"].as_str().unwrap().contains("ended without finishing"), "{raised}");
    assert_eq!(flow(&mut c, "crash")["health"], "ok");
}

#[test]
fn check_flows_reports_stale_sources_to_the_default_webhook() {
    let db = TestDb::new("stale");
    let hook = Hook::start(0);
    // The setting every worker of this database reads (superuser-only: it may hold a secret).
    connect("postgres")
        .batch_execute(&format!("ALTER DATABASE {} SET gn2pg.alert_webhook = '{}/default-hook'", db.name, hook.base))
        .unwrap();
    let mut c = db.session();
    let fx = fixture(100);
    c.execute("SELECT gn2pg_add_source('daily', $1, 3, options => '{\"stale_after_hours\": 24}')", &[&fx.base_url()])
        .unwrap();
    // Another fixture: a uuid belongs to one source, and the same seed serves the same uuids.
    let fx2 = FixtureServer::start(FixtureConfig { rows: 100, seed: 7, ..Default::default() }).unwrap();
    c.execute("SELECT gn2pg_add_source('fresh', $1, 3)", &[&fx2.base_url()]).unwrap();
    harvest(&mut c, "daily").unwrap();
    harvest(&mut c, "fresh").unwrap();
    let raised: i32 = c.query_one("SELECT gn2pg_check_flows()", &[]).unwrap().get(0);
    assert_eq!(raised, 0);
    // Two days pass without a successful run of 'daily'.
    c.batch_execute(
        "UPDATE gn2pg.run_log SET started_at = started_at - interval '2 days', finished_at = finished_at - interval '2 days' WHERE source = 'daily';
         UPDATE gn2pg.source SET created_at = created_at - interval '2 days' WHERE name = 'daily'",
    )
    .unwrap();
    let f = flow(&mut c, "daily");
    assert_eq!((f["health"].as_str(), f["stale_after"].as_str()), (Some("late"), Some("24:00:00")));
    assert_eq!(flow(&mut c, "fresh")["stale_after"], "48:00:00", "gn2pg.stale_after defaults to 2 days");
    let raised: i32 = c.query_one("SELECT gn2pg_check_flows()", &[]).unwrap().get(0);
    assert_eq!(raised, 1);
    let raised: i32 = c.query_one("SELECT gn2pg_check_flows()", &[]).unwrap().get(0);
    assert_eq!(raised, 0, "an open stale alert is not raised twice");
    let (kind, occurrences, message): (String, i32, String) = {
        let r = c
            .query_one(
                "SELECT kind, occurrences, message FROM gn2pg.alert WHERE source = 'daily' AND resolved_at IS NULL",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((kind.as_str(), occurrences), ("stale", 2));
    assert!(message.contains("no successful run since"), "{message}");
    let (path, body, _) = hook.next(15).expect("the default webhook receives the stale alert");
    assert_eq!(path, "/default-hook");
    assert_eq!(
        (body["event"].as_str(), body["kind"].as_str(), body["source"].as_str()),
        (Some("raised"), Some("stale"), Some("daily"))
    );
    // The next success resolves it.
    harvest(&mut c, "daily").unwrap();
    let (_, body, _) = hook.next(15).expect("the resolution reaches the webhook");
    assert_eq!((body["event"].as_str(), body["kind"].as_str()), (Some("resolved"), Some("stale")));
    assert_eq!(flow(&mut c, "daily")["health"], "ok");
}

#[test]
fn roles_separate_readers_operators_and_admins() {
    let mut roles = Roles::default();
    let db = TestDb::new("roles");
    allow_loopback_hosts();
    let reader = roles.create("reader", Some("gn2pg_reader"));
    let operator = roles.create("operator", Some("gn2pg_operator"));
    let admin = roles.create("admin", Some("gn2pg_admin"));
    let nobody = roles.create("nobody", None);
    let fx = fixture(200);
    let mut su = db.session();
    su.execute("SELECT gn2pg_add_source('pne', $1, 1, 'login', 'harvester', 'secret')", &[&fx.base_url()]).unwrap();

    let denied = |c: &mut Client, sql: &str, needle: &str| {
        let e = c.batch_execute(sql).map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
        assert!(
            e.contains("permission denied") && e.contains(needle),
            "{sql}: expected permission denied ({needle}), got {e:?}"
        );
    };
    let add = |name: &str| format!("SELECT gn2pg_add_source('{name}', '{}', 3)", fx.base_url());

    // Reader: status and data, nothing else.
    let (mut r, _) = connect_as(&db.name, &reader);
    r.batch_execute("SELECT * FROM gn2pg.flow_status; SELECT * FROM gn2pg.run_log; SELECT * FROM gn2pg.observation; SELECT * FROM gn2pg.source; SELECT * FROM gn2pg.alert")
        .unwrap();
    denied(&mut r, "SELECT * FROM gn2pg.source_secret", "source_secret");
    denied(&mut r, &add("x"), "gn2pg_add_source");
    denied(&mut r, "SELECT gn2pg_harvest('pne')", "gn2pg_harvest");
    denied(&mut r, "SELECT gn2pg_cancel(1)", "gn2pg_cancel");
    denied(&mut r, "SELECT gn2pg_schedule('pne', '0 3 * * *')", "gn2pg_schedule");
    denied(&mut r, "DELETE FROM gn2pg.run_log", "run_log");

    // Operator: runs and cancels harvests (the worker reads the secrets it cannot read).
    let (mut o, _) = connect_as(&db.name, &operator);
    let run = harvest(&mut o, "pne").unwrap();
    assert_eq!(run["status"], "success");
    let not_running: bool = o.query_one("SELECT gn2pg_cancel(0)", &[]).unwrap().get(0);
    assert!(!not_running);
    let raised: i32 = o.query_one("SELECT gn2pg_check_flows()", &[]).unwrap().get(0);
    assert_eq!(raised, 0);
    o.batch_execute("SELECT * FROM gn2pg.flow_status").unwrap();
    denied(&mut o, "SELECT * FROM gn2pg.source_secret", "source_secret");
    denied(&mut o, &add("y"), "gn2pg_add_source");
    denied(&mut o, "SELECT gn2pg_remove_source('pne')", "gn2pg_remove_source");
    denied(&mut o, "SELECT gn2pg_schedule('pne', '0 3 * * *')", "gn2pg_schedule");
    denied(&mut o, "UPDATE gn2pg.source SET url = 'http://evil.example/api'", "source");
    let ca = "5e4d3c2b-1a09-4f8e-b7d6-c5b4a3928170";
    denied(&mut o, &format!("SELECT gn2pg_map_ca('pne', NULL, '{ca}')"), "gn2pg_map_ca");
    denied(&mut o, "SELECT gn2pg_remap('pne')", "gn2pg_remap");
    denied(&mut o, &format!("SELECT gn2pg._map('pne', 'ca', NULL, '{ca}')"), "_map");
    o.batch_execute("SELECT * FROM gn2pg.metadata_mapping; SELECT * FROM gn2pg.mapping").unwrap();

    // Admin: manages sources and reads secrets.
    let (mut a, _) = connect_as(&db.name, &admin);
    a.batch_execute(&add("byadmin")).unwrap();
    let pw: String = a
        .query_one(
            "SELECT password FROM gn2pg.source_secret k JOIN gn2pg.source s ON s.id = k.source_id WHERE s.name = 'pne'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pw, "secret");
    assert!(a.query_one("SELECT gn2pg_remove_source('byadmin')", &[]).unwrap().get::<_, bool>(0));
    // Admin: manages mappings, through functions only.
    a.query_one(&format!("SELECT gn2pg_map_ca('pne', NULL, '{ca}', target_name => 'Partenaires')"), &[]).unwrap();
    let moved: i64 = a.query_one("SELECT gn2pg_remap('pne')", &[]).unwrap().get(0);
    assert_eq!(moved, 200);
    assert!(a.query_one("SELECT gn2pg_unmap_ca('pne', NULL)", &[]).unwrap().get::<_, bool>(0));
    denied(&mut a, "DELETE FROM gn2pg.mapping", "mapping");
    denied(&mut a, "INSERT INTO gn2pg.source (name, url, export_id, auth) VALUES ('direct', 'http://evil.example/api', 1, 'public')", "source");

    // A role outside the three can do nothing at all.
    let (mut n, _) = connect_as(&db.name, &nobody);
    denied(&mut n, "SELECT * FROM gn2pg.flow_status", "gn2pg");
    denied(&mut n, "SELECT gn2pg_harvest('pne')", "gn2pg_harvest");

    // EXECUTE granted by mistake is not enough: the functions check the role themselves.
    su.batch_execute(&format!("GRANT EXECUTE ON FUNCTION gn2pg_add_source(text, text, integer, text, text, text, text, jsonb, text) TO {reader}"))
        .unwrap();
    let e = r.batch_execute(&add("z")).map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
    assert!(e.contains("gn2pg: permission denied for gn2pg_add_source()") && e.contains("gn2pg_admin"), "{e}");
    let n: i64 = su.query_one("SELECT count(*) FROM gn2pg.source", &[]).unwrap().get(0);
    assert_eq!(n, 1);
}

#[test]
fn hosts_not_in_allowed_hosts_are_refused() {
    let mut roles = Roles::default();
    let db = TestDb::new("allowed_hosts");
    allow_loopback_hosts();
    let admin = roles.create("hostadmin", Some("gn2pg_admin"));
    let (mut a, _) = connect_as(&db.name, &admin);
    let refused = |a: &mut Client, sql: &str, needle: &str| {
        let e = a.batch_execute(sql).map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
        assert!(e.contains("is not allowed by gn2pg.allowed_hosts") && e.contains(needle), "{sql}: {e:?}");
    };
    refused(
        &mut a,
        "SELECT gn2pg_add_source('far', 'https://geonature.forbidden.example/', 1)",
        "\"geonature.forbidden.example\"",
    );
    refused(&mut a, "SELECT gn2pg_add_source('meta', 'http://169.254.169.254/latest', 1)", "169.254.169.254");
    refused(
        &mut a,
        "SELECT gn2pg_add_source('hook', 'http://127.0.0.1:9/geonature', 1, alert_webhook => 'https://hooks.forbidden.example/x')",
        "alert_webhook",
    );
    // Allowed hosts pass, for the source and for its webhook.
    a.batch_execute(
        "SELECT gn2pg_add_source('near', 'http://127.0.0.1:9/geonature', 1, alert_webhook => 'http://localhost:9/h')",
    )
    .unwrap();
    let n: i64 = a.query_one("SELECT count(*) FROM gn2pg.source", &[]).unwrap().get(0);
    assert_eq!(n, 1);
    // The list is superuser-only: a session cannot widen it, even before gn2pg is loaded.
    let (mut fresh, _) = connect_as(&db.name, &admin);
    let _ = fresh.batch_execute("SET gn2pg.allowed_hosts = '*'");
    refused(&mut fresh, "SELECT gn2pg_add_source('far', 'https://geonature.forbidden.example/', 1)", "forbidden");
    let e =
        fresh.batch_execute("SET gn2pg.allowed_hosts = '*'").map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
    assert!(e.contains("permission denied to set parameter"), "{e}");
    // A superuser decides the list, and is not bound by it.
    db.session().batch_execute("SELECT gn2pg_add_source('su', 'https://geonature.forbidden.example/', 1)").unwrap();
}

#[test]
fn secrets_stay_out_of_every_log_after_a_failed_login() {
    let db = TestDb::new("secrets");
    connect("postgres").batch_execute(&format!("ALTER DATABASE {} SET log_min_messages = 'debug1'", db.name)).unwrap();
    let fx = fixture(100);
    let tag = format!("{}{}", std::process::id(), Instant::now().elapsed().as_nanos());
    let password = format!("pw-{tag}-Zq9");
    let token = format!("deadbeef{tag}cafe");
    let hook_secret = format!("hook-{tag}-Xk2");
    let (mut c, notices) = connect_as(&db.name, "postgres");
    let mut listener = db.session();
    listener.batch_execute("LISTEN gn2pg_alert").unwrap();
    // Secrets travel as bind parameters: PostgreSQL itself logs the text of a failing statement.
    c.execute(
        "SELECT gn2pg_add_source('pw', $1, 1, 'login', 'harvester', $2, alert_webhook => $3)",
        &[&fx.base_url(), &password, &format!("http://127.0.0.1:9/{hook_secret}")],
    )
    .unwrap();
    c.execute("SELECT gn2pg_add_source('tok', $1, 2, token => $2)", &[&fx.base_url(), &token]).unwrap();
    let mut errors = Vec::new();
    for s in ["pw", "tok"] {
        errors.push(harvest(&mut c, s).unwrap_err());
    }
    assert!(errors[0].contains("login refused"), "{}", errors[0]);
    assert!(errors[1].contains("403"), "{}", errors[1]);
    let mut notes = Vec::new();
    while let Some(n) = next_alert(&mut listener, 5) {
        notes.push(n.to_string());
    }
    assert_eq!(notes.len(), 2, "{notes:?}");
    // The webhook (unreachable) has been tried and recorded as failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state: Option<String> = c
            .query_one("SELECT (SELECT webhook_state FROM gn2pg.alert_event e JOIN gn2pg.alert a ON a.id = e.alert_id WHERE a.source = 'pw')", &[])
            .unwrap()
            .get(0);
        if state.as_deref() == Some("failed") {
            break;
        }
        assert!(Instant::now() < deadline, "webhook delivery not finished: {state:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.execute("SELECT gn2pg_cancel(0)", &[]).unwrap();
    let dump: String = c
        .query_one(
            "SELECT concat_ws(E'\\n',
                    (SELECT string_agg(r::text, E'\\n') FROM gn2pg.run_log r),
                    (SELECT string_agg(e::text, E'\\n') FROM gn2pg.run_error e),
                    (SELECT string_agg(a::text, E'\\n') FROM gn2pg.alert a),
                    (SELECT string_agg(e::text, E'\\n') FROM gn2pg.alert_event e),
                    (SELECT string_agg(f::text, E'\\n') FROM gn2pg.flow_status f),
                    (SELECT string_agg(s::text, E'\\n') FROM gn2pg.source s))",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(dump.contains("login refused") && dump.contains("127.0.0.1:9"), "the dump must hold the failures: {dump}");
    let notices = notices.lock().unwrap().join("\n");
    assert!(notices.contains("is not running"), "{notices}");
    let log_path =
        format!("{}/server.log", std::env::var("GN2PG_TEST_DIR").unwrap_or_else(|_| "/tmp/gn2pg-test".into()));
    let log = std::fs::read_to_string(&log_path).unwrap_or_else(|e| panic!("read {log_path}: {e}"));
    assert!(
        log.contains("alert event"),
        "gn2pg's own LOG lines must be in {log_path} for this check to mean something"
    );
    for secret in [&password, &token, &hook_secret] {
        for (place, text) in [
            ("tables", &dump),
            ("errors", &errors.join("\n")),
            ("notifications", &notes.join("\n")),
            ("notices", &notices),
            ("server log", &log),
        ] {
            assert!(!text.contains(secret.as_str()), "{secret} found in {place}");
        }
    }
}
