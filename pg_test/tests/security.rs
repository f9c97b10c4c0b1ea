//! Attacks by gn2pg roles that are not superusers (issue 9): each test fails if its attack
//! works. Code running with the extension owner's rights (a superuser) must not call anything
//! the caller planted (functions, operators, relations on the caller's search_path, pg_temp
//! types), on behalf of a caller or in a background worker.
//!
//! Roles belong to the cluster: every test creates login roles of its own (`Roles`) and source
//! names unique in the cluster (pg_cron job names are shared), and drops them at the end.

use std::time::{Duration, Instant};

use gn2pg_pg_test::attack::{is_superuser, plant_schema_shadows, plant_temp_shadows, schema_trap_hits};
use gn2pg_pg_test::checks::wait_run;
use gn2pg_pg_test::db::{connect, error_text, Client, TestDb};
use gn2pg_pg_test::fixture::{Faults, FixtureConfig, FixtureServer};
use gn2pg_pg_test::roles::{allow_loopback_hosts, connect_as, unique, Roles};

fn fixture(rows: u64) -> FixtureServer {
    FixtureServer::start(FixtureConfig { rows, ..Default::default() }).expect("fixture server starts")
}

/// WARNINGs sent by traps (see gn2pg_pg_test::attack) to a session.
fn trap_warnings(notices: &std::sync::Mutex<Vec<String>>) -> Vec<String> {
    notices.lock().unwrap().iter().filter(|n| n.contains("trap ")).cloned().collect()
}

/// Waits until the source has no running run (workers started by the attack have ended).
fn wait_idle(su: &mut Client, source: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running: i64 = su
            .query_one(
                "SELECT count(*) FROM gn2pg.run_log r WHERE r.source = $1 AND r.status IN ('running')
                    AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.worker_pid)",
                &[&source],
            )
            .unwrap()
            .get(0);
        if running == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "runs of {source} did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unschedules a source at the end of a test, so that no pg_cron job outlives its database.
struct Unschedule(String, String);

impl Drop for Unschedule {
    fn drop(&mut self) {
        let mut c = connect(&self.0);
        let _ = c.execute("SELECT gn2pg_unschedule($1)", &[&self.1]);
        let _ = c.execute("SELECT gn2pg_unschedule_check_flows()", &[]);
    }
}

/// The first attack of issue 9, as written there: an operator who may create a schema puts
/// its own `nextval` and `to_jsonb` first on its search_path and starts harvests.
#[test]
fn an_operator_shadowing_nextval_and_to_jsonb_stays_an_operator() {
    let mut roles = Roles::default();
    let db = TestDb::new("sec_schema");
    let alice = roles.create("alice", Some("gn2pg_operator"));
    let mut su = db.session();
    su.batch_execute(&format!("GRANT CREATE ON DATABASE {} TO {alice}", db.name)).unwrap();
    let fx = fixture(300);
    su.execute("SELECT gn2pg_add_source('p', $1, 3)", &[&fx.base_url()]).unwrap();
    let (mut a, notices) = connect_as(&db.name, &alice);
    a.batch_execute(&format!(
        "CREATE SCHEMA me;
         CREATE SEQUENCE me.hits;
         CREATE FUNCTION me.nextval(regclass) RETURNS bigint LANGUAGE plpgsql AS
           $$BEGIN PERFORM pg_catalog.nextval('me.hits'); EXECUTE 'ALTER ROLE {alice} SUPERUSER'; RETURN pg_catalog.nextval($1); END$$;
         CREATE FUNCTION me.to_jsonb(anyelement) RETURNS jsonb LANGUAGE plpgsql AS
           $$BEGIN PERFORM pg_catalog.nextval('me.hits'); EXECUTE 'ALTER ROLE {alice} SUPERUSER'; RETURN pg_catalog.to_jsonb($1); END$$;
         SET search_path = me, pg_catalog, public;"
    ))
    .unwrap();
    let run: i64 = a.query_one("SELECT gn2pg_harvest_async('p')", &[]).unwrap().get(0);
    wait_run(&mut su, run, Duration::from_secs(60), "the end of the run", |r| r["status"] != "running");
    let sync = a.query_one("SELECT gn2pg_harvest('p', 'incremental')::text", &[]).map_err(|e| error_text(&e));
    assert!(sync.is_ok(), "the harvest itself works: {sync:?}");
    assert!(!is_superuser(&mut su, &alice), "the operator became a superuser");
    // alice's own functions, when they run as alice, fail on ALTER ROLE: they did not run at all.
    let hits: i64 =
        a.query_one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM me.hits", &[]).unwrap().get(0);
    assert_eq!(hits, 0, "gn2pg called the operator's nextval / to_jsonb");
    assert!(trap_warnings(&notices).is_empty());
}

/// The second attack of issue 9: an admin without any CREATE privilege shadows `text` with a
/// pg_temp domain whose CHECK runs its own function, and schedules a source.
#[test]
fn an_admin_shadowing_types_in_pg_temp_stays_an_admin() {
    let mut roles = Roles::default();
    let db = TestDb::new("sec_temp");
    allow_loopback_hosts();
    let alice = roles.create("tadmin", Some("gn2pg_admin"));
    let fx = fixture(100);
    let src = unique("ptemp");
    let mut su = db.session();
    su.execute("SELECT gn2pg_add_source($1, $2, 3)", &[&src, &fx.base_url()]).unwrap();
    let _cleanup = Unschedule(db.name.clone(), src.clone());
    let (mut a, notices) = connect_as(&db.name, &alice);
    a.batch_execute(&format!(
        "CREATE FUNCTION pg_temp.pwn(pg_catalog.text) RETURNS bool LANGUAGE plpgsql AS
           $$BEGIN EXECUTE 'ALTER ROLE {alice} SUPERUSER'; RETURN true; END$$;
         CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (pg_temp.pwn(VALUE));"
    ))
    .unwrap();
    let r = a.query_one("SELECT gn2pg_schedule($1, '0 3 * * *')", &[&src]).map_err(|e| error_text(&e));
    assert!(r.is_ok(), "scheduling works: {r:?}");
    assert!(!is_superuser(&mut su, &alice), "the admin became a superuser through pg_temp.text");
    // Every other type, and relations, in pg_temp too.
    plant_temp_shadows(&mut a, &alice);
    for sql in [
        format!("SELECT gn2pg_schedule('{src}', '0 4 * * *')"),
        format!("SELECT gn2pg_add_source('{src}', '{}', 3)", fx.base_url()),
        format!("SELECT gn2pg_harvest('{src}')"),
        format!("SELECT gn2pg_unschedule('{src}')"),
    ] {
        let r = a.batch_execute(&sql).map_err(|e| error_text(&e));
        assert!(r.is_ok(), "{sql}: {r:?}");
    }
    assert!(!is_superuser(&mut su, &alice), "the admin became a superuser through a pg_temp shadow");
    assert!(trap_warnings(&notices).is_empty(), "{:?}", trap_warnings(&notices));
}

/// Every public function of the extension, called by a non-superuser gn2pg role whose
/// search_path starts with a schema shadowing every function, operator and relation of
/// pg_catalog, and whose pg_temp shadows every type: nothing planted runs as the owner.
/// A public function missing from the list below fails the test: add a call that exercises it.
#[test]
fn no_public_function_runs_what_the_caller_planted() {
    let mut roles = Roles::default();
    let db = TestDb::new("sec_all");
    allow_loopback_hosts();
    let alice = roles.create("alladmin", Some("gn2pg_admin"));
    let fx = fixture(600);
    let src = unique("pall");
    let mut su = db.session();
    su.batch_execute(&format!("GRANT CREATE ON DATABASE {} TO {alice}", db.name)).unwrap();
    let _cleanup = Unschedule(db.name.clone(), src.clone());
    let (mut a, notices) = connect_as(&db.name, &alice);
    plant_schema_shadows(&mut a, &alice);
    plant_temp_shadows(&mut a, &alice);
    a.batch_execute("SET search_path = me, pg_catalog, public").unwrap();

    let url = fx.base_url();
    let ca = "5e4d3c2b-1a09-4f8e-b7d6-c5b4a3928170";
    let jdd = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    // (function, statement): in this order, each must succeed.
    let calls: Vec<(&str, String)> = vec![
        (
            "gn2pg_add_source(text,text,integer,text,text,text,text,jsonb,text)",
            format!(
                "SELECT gn2pg_add_source('{src}', '{url}', 1, 'login', 'harvester', 'secret', \
                 options => '{{\"page_size\": 100}}', alert_webhook => 'http://127.0.0.1:9/hook')"
            ),
        ),
        ("gn2pg_harvest_async(text,text)", format!("SELECT gn2pg_harvest_async('{src}', 'full')")),
        ("gn2pg_cancel(bigint)", "SELECT gn2pg_cancel(@RUN@)".into()),
        ("gn2pg_harvest(text,text)", format!("SELECT gn2pg_harvest('{src}')")),
        ("gn2pg_harvest_scheduled(text,text)", format!("SELECT gn2pg_harvest_scheduled('{src}', 'incremental')")),
        ("gn2pg_check_flows()", "SELECT gn2pg_check_flows()".into()),
        ("gn2pg_schedule(text,text,text)", format!("SELECT gn2pg_schedule('{src}', '0 3 * * *', 'auto')")),
        ("gn2pg_unschedule(text)", format!("SELECT gn2pg_unschedule('{src}')")),
        ("gn2pg_schedule_check_flows(text)", "SELECT gn2pg_schedule_check_flows('*/20 * * * *')".into()),
        ("gn2pg_unschedule_check_flows()", "SELECT gn2pg_unschedule_check_flows()".into()),
        (
            "gn2pg_describe_target(text,text,text,text,text)",
            format!("SELECT gn2pg_describe_target('ca', '{ca}', 'Partenaires', 'desc')"),
        ),
        ("gn2pg_map_ca(text,text,text,text,text)", format!("SELECT gn2pg_map_ca('{src}', NULL, '{ca}')")),
        (
            "gn2pg_map_jdd(text,text,text,text,text,text)",
            format!("SELECT gn2pg_map_jdd('{src}', NULL, '{jdd}', '{ca}', 'JDD')"),
        ),
        ("gn2pg_remap(text)", format!("SELECT gn2pg_remap('{src}')")),
        ("gn2pg_unmap_jdd(text,text)", format!("SELECT gn2pg_unmap_jdd('{src}', NULL)")),
        ("gn2pg_unmap_ca(text,text)", format!("SELECT gn2pg_unmap_ca('{src}', NULL)")),
        ("gn2pg_remove_source(text,boolean)", format!("SELECT gn2pg_remove_source('{src}', true)")),
    ];
    let public: Vec<String> = su
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
              WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e' AND p.pronamespace = 'public'::regnamespace
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'gn2pg') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&String> = public.iter().filter(|f| !calls.iter().any(|(name, _)| name == f)).collect();
    assert!(missing.is_empty(), "public functions this test does not call: {missing:?}");

    let mut run = 0i64;
    for (name, sql) in &calls {
        if name.starts_with("gn2pg_cancel") {
            // Cancel a run that is really running: a slow source keeps it busy.
            fx.faults(Faults { slow_ms: 500, ..Default::default() });
            let slow: i64 = a.query_one(&format!("SELECT gn2pg_harvest_async('{src}', 'full')"), &[]).unwrap().get(0);
            wait_run(&mut su, slow, Duration::from_secs(30), "running", |r| r["status"] == "running");
            run = slow;
        }
        let sql = sql.replace("@RUN@", &run.to_string());
        if name.starts_with("gn2pg_harvest_async") || name.starts_with("gn2pg_harvest_scheduled") {
            let id: Option<i64> = a.query_one(&sql, &[]).map_err(|e| error_text(&e)).unwrap().get(0);
            let id = id.unwrap_or_else(|| panic!("{sql} started no run"));
            wait_run(&mut su, id, Duration::from_secs(60), "the end", |r| r["status"] != "running");
        } else {
            let r = a.simple_query(&sql).map_err(|e| error_text(&e));
            assert!(r.is_ok(), "{name}: {sql}: {r:?}");
        }
        if name.starts_with("gn2pg_cancel") {
            fx.faults(Faults::default());
            wait_run(&mut su, run, Duration::from_secs(30), "cancelled", |r| r["status"] == "cancelled");
        }
        wait_idle(&mut su, &src);
    }
    assert!(!is_superuser(&mut su, &alice), "the admin became a superuser");
    assert_eq!(schema_trap_hits(&mut a), 0, "shadows ran as a superuser: {:?}", trap_warnings(&notices));
    assert!(trap_warnings(&notices).is_empty(), "{:?}", trap_warnings(&notices));
}

/// A database owner is not a superuser either: the search_path it sets for its database must
/// not reach the background workers, which run as the extension owner (harvest, parallel
/// parts, alert delivery).
#[test]
fn workers_ignore_a_search_path_set_by_the_database_owner() {
    let mut roles = Roles::default();
    let db = TestDb::new("sec_dbowner");
    let owner = roles.create("dbowner", Some("gn2pg_operator"));
    let fx = fixture(3000);
    let mut su = db.session();
    su.execute(
        "SELECT gn2pg_add_source('p', $1, 3, options => '{\"workers\": 2, \"page_size\": 500, \"max_retries\": 0}',
                                 alert_webhook => 'http://127.0.0.1:9/hook')",
        &[&fx.base_url()],
    )
    .unwrap();
    su.batch_execute(&format!("ALTER DATABASE {} OWNER TO {owner}", db.name)).unwrap();
    let (mut o, notices) = connect_as(&db.name, &owner);
    plant_schema_shadows(&mut o, &owner);
    o.batch_execute(&format!("ALTER DATABASE {} SET search_path = me, pg_catalog, public", db.name)).unwrap();
    // New sessions, workers included, start with that search_path; the test's own superuser
    // sessions leave it at once.
    let mut su = db.session();
    su.batch_execute("SET search_path = pg_catalog, public").unwrap();
    let (mut o, _) = connect_as(&db.name, &owner);
    // Without the fix, the caller and the worker both run a trap and wait for each other.
    o.batch_execute("SET statement_timeout = '90s'").unwrap();
    let full = o.query_one("SELECT gn2pg_harvest('p', 'full')::text", &[]).map_err(|e| error_text(&e));
    assert!(full.is_ok(), "{full:?}");
    let parts: i64 = su.query_one("SELECT count(*) FROM gn2pg.run_part", &[]).unwrap().get(0);
    assert!(parts >= 2, "the run was loaded by several workers");
    o.query_one("SELECT gn2pg_harvest('p', 'incremental')::text", &[]).unwrap();
    // A failing run: an alert whose webhook a delivery worker tries.
    fx.faults(Faults { error_every: 1, error_status: 503, ..Default::default() });
    let failed = o.query_one("SELECT gn2pg_harvest('p')::text", &[]).map_err(|e| error_text(&e));
    assert!(failed.is_err_and(|e| e.contains("503")));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state: Option<String> = su
            .query_one("SELECT (SELECT webhook_state FROM gn2pg.alert_event ORDER BY id DESC LIMIT 1)", &[])
            .unwrap()
            .get(0);
        if state.as_deref() == Some("failed") {
            break;
        }
        assert!(Instant::now() < deadline, "the webhook was not tried: {state:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!is_superuser(&mut su, &owner), "the database owner became a superuser");
    let hits: i64 =
        su.query_one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM me.trap_hits", &[]).unwrap().get(0);
    assert_eq!(hits, 0, "a worker ran the database owner's shadows");
    assert!(trap_warnings(&notices).is_empty());
}
