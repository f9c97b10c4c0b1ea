//! Attacks by gn2pg roles that are not superusers (issue 9): each test fails if its attack
//! works. Code running with the extension owner's rights (a superuser) must not call anything
//! the caller planted (functions, operators, relations on the caller's search_path, pg_temp
//! types), on behalf of a caller or in a background worker.
//!
//! Roles belong to the cluster: every test creates login roles of its own (`Roles`) and source
//! names unique in the cluster (pg_cron job names are shared), and drops them at the end.

use std::time::{Duration, Instant};

use gn2pg_pg_test::attack::{is_superuser, plant_schema_shadows, plant_temp_shadows, schema_trap_hits};
use gn2pg_pg_test::checks::{run_ended, wait_run};
use gn2pg_pg_test::db::{connect, error_text, Client, TestDb};
use gn2pg_pg_test::echo::{Echo, EchoSource};
use gn2pg_pg_test::fixture::{Faults, FixtureConfig, FixtureServer, Mutation};
use gn2pg_pg_test::hook::{next_alert, Hook};
use gn2pg_pg_test::roles::{allow_loopback_hosts, connect_as, unique, Roles};
use gn2pg_pg_test::tls::{another_ca_pem, TlsFront};

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
                "SELECT count(*) FROM gn2pg.run_log r WHERE r.source = $1 AND r.status IN ('pending', 'running')
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
    wait_run(&mut su, run, Duration::from_secs(60), "the end of the run", run_ended);
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
        (
            "gn2pg_check_source(text,text,integer,text,text,text,text,jsonb)",
            format!("SELECT gn2pg_check_source('{src}')"),
        ),
        (
            "gn2pg_check_source(text,text,integer,text,text,text,text,jsonb)",
            format!("SELECT gn2pg_check_source(url => '{url}', export_id => 3)"),
        ),
        ("gn2pg_acknowledge_alert(bigint,text)", "SELECT gn2pg_acknowledge_alert(1, 'seen')".into()),
        (
            "gn2pg_map_geonature_account(text,text)",
            "SELECT gn2pg_map_geonature_account('someone', 'gn2pg_reader')".into(),
        ),
        ("gn2pg_unmap_geonature_account(text)", "SELECT gn2pg_unmap_geonature_account('someone')".into()),
        (
            "gn2pg_map_nomenclature(text,text,text,text)",
            format!("SELECT gn2pg_map_nomenclature('{src}', 'SEXE', 'M', '3')"),
        ),
        ("gn2pg_unmap_nomenclature(text,text,text)", format!("SELECT gn2pg_unmap_nomenclature('{src}', 'SEXE', 'M')")),
        ("gn2pg_sync_destination(text)", format!("SELECT gn2pg_sync_destination('{src}')")),
        ("gn2pg_disable_destination(text,text)", format!("SELECT gn2pg_disable_destination('{src}', 'keep')")),
        ("gn2pg_remove_source(text,boolean)", format!("SELECT gn2pg_remove_source('{src}', true)")),
    ];
    // This database has no GeoNature: these run their checks as the owner, then refuse.
    let refusals: &[(&str, &str)] = &[
        ("gn2pg_map_geonature_account(", "GeoNature"),
        ("gn2pg_unmap_geonature_account(", "GeoNature"),
        ("gn2pg_map_nomenclature(", "GeoNature"),
        ("gn2pg_unmap_nomenclature(", "GeoNature"),
        ("gn2pg_sync_destination(", "GeoNature"),
        ("gn2pg_disable_destination(", "GeoNature"),
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
            wait_run(&mut su, id, Duration::from_secs(60), "the end", run_ended);
        } else {
            let r = a.simple_query(&sql).map_err(|e| error_text(&e));
            let refused = refusals.iter().any(|(f, why)| {
                name.starts_with(f) && r.as_ref().err().is_some_and(|e| e.contains(why) && !e.contains("superuser"))
            });
            assert!(r.is_ok() || refused, "{name}: {sql}: {r:?}");
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

/// Every function of the extension, whether SECURITY DEFINER, and the roles (besides its owner)
/// that may execute it, as reviewed. A function missing here, or granted otherwise, fails the
/// test: review it and add it. The views call the gn2pg_reader functions with the reader's
/// rights; see sql/operations.sql for why each is safe.
const REVIEWED: &[(&str, bool, &str)] = &[
    ("gn2pg._abandon_dead_runs(text,bigint)", false, ""),
    ("gn2pg._active_run(text,bigint)", false, ""),
    ("gn2pg._alert_event(gn2pg.alert,text)", false, ""),
    ("gn2pg._check_source(text,text)", false, "gn2pg_admin"),
    ("gn2pg._check_stale()", false, ""),
    ("gn2pg._claim_idle_source(text,text,text)", false, ""),
    ("gn2pg._claim_source(text)", false, ""),
    ("gn2pg._cron_next(text,timestamp with time zone)", false, "gn2pg_reader"),
    ("gn2pg._describe(text,uuid,text,text,uuid)", true, "gn2pg_admin"),
    // Superusers only: it allocates in proportion to its input (issue 9, item 2).
    ("gn2pg._jsonb_selftest(text)", false, ""),
    ("gn2pg._geometry_selftest(text)", false, ""),
    // Removal of pg_cron jobs when gn2pg is dropped (sql/lifecycle.sql, src/cron_cleanup.rs):
    // the event trigger calls its function without an EXECUTE check.
    ("gn2pg._cron_cleanup_after_commit()", false, ""),
    ("gn2pg._drop_cleanup()", false, ""),
    ("gn2pg._selfcheck()", false, ""),
    ("gn2pg._level_arg(text,text)", false, "gn2pg_admin"),
    ("gn2pg._map(text,text,uuid,uuid)", true, "gn2pg_admin"),
    ("gn2pg._mapping_changed(text)", true, ""),
    ("gn2pg._parse_geometry(jsonb,text)", false, ""),
    ("gn2pg._raise_alert(text,text,bigint,text)", false, ""),
    ("gn2pg._remap(text)", true, ""),
    ("gn2pg._remap_idle(text)", true, "gn2pg_admin"),
    ("gn2pg._remap_if_pending(text)", false, ""),
    ("gn2pg._require(text,text)", false, "gn2pg_admin"),
    ("gn2pg._resolve_alerts(text,bigint,text[])", false, ""),
    ("gn2pg._resolve_mapping(text,uuid[],uuid[])", false, "gn2pg_reader"),
    ("gn2pg._run_alive(integer,timestamp with time zone)", true, "gn2pg_reader"),
    ("gn2pg._run_ended()", false, ""),
    ("gn2pg._scrub(text)", false, ""),
    ("gn2pg._scrub_error()", false, ""),
    ("gn2pg._source_removed()", false, ""),
    ("gn2pg._stale_after_minutes()", false, "gn2pg_reader"),
    ("gn2pg._unmap(text,text,text,uuid)", true, "gn2pg_admin"),
    ("gn2pg._uuid_arg(text,text,text)", false, "gn2pg_admin"),
    ("gn2pg_add_source(text,text,integer,text,text,text,text,jsonb,text)", false, "gn2pg_admin"),
    ("gn2pg_cancel(bigint)", false, "gn2pg_operator"),
    ("gn2pg_check_flows()", false, "gn2pg_operator"),
    ("gn2pg_describe_target(text,text,text,text,text)", false, "gn2pg_admin"),
    ("gn2pg_harvest(text,text)", false, "gn2pg_operator"),
    ("gn2pg_harvest_async(text,text)", false, "gn2pg_operator"),
    ("gn2pg_harvest_scheduled(text,text)", false, "gn2pg_operator"),
    ("gn2pg_map_ca(text,text,text,text,text)", false, "gn2pg_admin"),
    ("gn2pg_map_jdd(text,text,text,text,text,text)", false, "gn2pg_admin"),
    ("gn2pg_remap(text)", false, "gn2pg_admin"),
    ("gn2pg_remove_source(text,boolean)", false, "gn2pg_admin"),
    ("gn2pg_schedule(text,text,text)", false, "gn2pg_admin"),
    ("gn2pg_schedule_check_flows(text)", false, "gn2pg_admin"),
    ("gn2pg_unmap_ca(text,text)", false, "gn2pg_admin"),
    ("gn2pg_unmap_jdd(text,text)", false, "gn2pg_admin"),
    ("gn2pg_unschedule(text)", false, "gn2pg_admin"),
    ("gn2pg_unschedule_check_flows()", false, "gn2pg_admin"),
    // The GeoNature destination (sql/destination.sql): the admin entry points write through
    // SECURITY DEFINER helpers; everything else runs inside the harvest worker, as the owner.
    ("gn2pg._destination_actors(text,jsonb,text)", false, ""),
    ("gn2pg._destination_apply(text,bigint,bigint[],boolean)", false, ""),
    ("gn2pg._destination_before_remove(text)", false, ""),
    ("gn2pg._destination_ca(text,bigint,uuid)", false, ""),
    ("gn2pg._destination_code(text,text)", false, ""),
    ("gn2pg._destination_configure(text)", false, ""),
    ("gn2pg._destination_date(text)", false, ""),
    ("gn2pg._destination_delete(text,bigint,bigint[])", false, ""),
    ("gn2pg._destination_fields()", false, ""),
    ("gn2pg._destination_finish(text,bigint)", false, ""),
    ("gn2pg._destination_geometries(text,integer,bigint)", false, ""),
    ("gn2pg._destination_geonature_path()", false, ""),
    ("gn2pg._destination_insert(integer,bigint[])", false, ""),
    ("gn2pg._destination_jdd(text,bigint,uuid,uuid,text)", false, ""),
    ("gn2pg._destination_meta_code(text,bigint,text,text,text)", false, ""),
    ("gn2pg._destination_missing()", false, ""),
    ("gn2pg._destination_organism(uuid,text)", false, ""),
    ("gn2pg._destination_page(text,bigint,bigint[],bigint[])", false, ""),
    ("gn2pg._destination_postgis()", false, ""),
    ("gn2pg._destination_refresh_metadata(text,bigint)", false, ""),
    ("gn2pg._destination_refused(bigint,text,text)", false, ""),
    ("gn2pg._destination_remapped(text,bigint[])", false, ""),
    ("gn2pg._destination_report(text,bigint,text,text,text,text,bigint)", false, ""),
    ("gn2pg._destination_set_actors(text,integer,jsonb,text,bigint)", false, ""),
    ("gn2pg._destination_set_list(bigint)", false, ""),
    ("gn2pg._destination_srid()", false, ""),
    ("gn2pg._destination_stage(text,bigint[],boolean)", false, ""),
    ("gn2pg._destination_update(bigint,bigint[])", false, ""),
    ("gn2pg._destination_work()", false, ""),
    ("gn2pg._destination_disable(text,text)", true, "gn2pg_admin"),
    ("gn2pg._destination_map_nomenclature(text,text,text,text)", true, "gn2pg_admin"),
    ("gn2pg._destination_sync(text)", true, "gn2pg_admin"),
    ("gn2pg._destination_unmap_nomenclature(text,text,text)", true, "gn2pg_admin"),
    // Takes the source lock with the caller's rights (it fails for roles that cannot).
    ("gn2pg._destination_lock(text,text)", true, "gn2pg_admin"),
    ("gn2pg_disable_destination(text,text)", false, "gn2pg_admin"),
    ("gn2pg_map_nomenclature(text,text,text,text)", false, "gn2pg_admin"),
    ("gn2pg_sync_destination(text)", false, "gn2pg_admin"),
    ("gn2pg_unmap_nomenclature(text,text,text)", false, "gn2pg_admin"),
    // The dashboard (sql/dashboard.sql, src/check.rs): row counts kept by trigger functions
    // (owner only), the GeoNature sign-in lookup (granted by the admin to the dashboard's login role).
    ("gn2pg._count_deleted()", true, ""),
    ("gn2pg._count_truncated()", true, ""),
    ("gn2pg._count_updated()", true, ""),
    ("gn2pg._fold_counts(text)", true, ""),
    ("gn2pg._fold_counts_after_removal()", true, ""),
    ("gn2pg._fold_counts_after_run()", true, ""),
    ("gn2pg._geonature_sign_in(text)", true, ""),
    ("gn2pg._recount(text)", true, ""),
    ("gn2pg_acknowledge_alert(bigint,text)", false, "gn2pg_operator"),
    // Checks a registered source as saved for operators; anything else needs gn2pg_admin inside.
    ("gn2pg_check_source(text,text,integer,text,text,text,text,jsonb)", false, "gn2pg_operator"),
    ("gn2pg_map_geonature_account(text,text)", false, "gn2pg_admin"),
    ("gn2pg_unmap_geonature_account(text)", false, "gn2pg_admin"),
];

/// A function of the extension as the catalog says: signature, SECURITY DEFINER, grantees other
/// than the owner, language, proconfig.
type Function = (String, bool, String, String, Option<Vec<String>>);

fn extension_functions(c: &mut Client) -> Vec<Function> {
    c.query(
        "SELECT p.oid::regprocedure::text, p.prosecdef,
                coalesce(string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, ','
                                    ORDER BY a.grantee::regrole::text) FILTER (WHERE a.grantee <> p.proowner), ''),
                l.lanname::text, p.proconfig
           FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid JOIN pg_language l ON l.oid = p.prolang
           LEFT JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                  ON a.privilege_type = 'EXECUTE'
          WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
            AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'gn2pg')
          GROUP BY p.oid, l.lanname ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

#[test]
fn every_function_is_granted_on_purpose_and_pins_its_search_path() {
    let mut db = TestDb::new("sec_grants");
    let found = extension_functions(&mut db.client);
    let mut problems = Vec::new();
    for (sig, definer, grantees, lang, config) in &found {
        match REVIEWED.iter().find(|(s, _, _)| s == sig) {
            None => problems.push(format!("{sig}: not reviewed (definer {definer}, granted to {grantees:?})")),
            Some((_, d, g)) if (d, *g) != (definer, grantees.as_str()) => problems
                .push(format!("{sig}: SECURITY DEFINER {definer}, granted to {grantees:?}; reviewed: {d}, {g:?}")),
            Some(_) => {}
        }
        // SQL and PL/pgSQL functions resolve names when they run: each pins pg_temp last
        // (_resolve_mapping is inlined into its callers instead, and qualifies everything).
        let pinned = config.iter().flatten().any(|c| c.starts_with("search_path=pg_catalog") && c.ends_with("pg_temp"));
        if lang != "c" && !pinned && !sig.starts_with("gn2pg._resolve_mapping(") {
            problems.push(format!("{sig}: search_path not pinned to pg_catalog, …, pg_temp: {config:?}"));
        }
    }
    for (sig, _, _) in REVIEWED {
        if !found.iter().any(|f| f.0 == *sig) {
            problems.push(format!("{sig}: reviewed but not in the extension"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A reader, an operator, an admin and a login role without any gn2pg role call every function
/// of the extension they were not granted, with arguments that are not NULL (a strict function
/// called with NULL constants is folded away before any privilege check): each call is refused
/// before it does anything.
#[test]
fn no_role_can_call_a_function_not_granted_to_it() {
    let mut roles = Roles::default();
    let db = TestDb::new("sec_calls");
    let mut su = db.session();
    let args: Vec<(String, String)> = su
        .query(
            "SELECT p.oid::regprocedure::text,
                    format('SELECT %s(%s)', p.oid::regproc,
                           (SELECT string_agg(CASE WHEN a.t = 'uuid'::regtype THEN quote_literal(gen_random_uuid()) || '::uuid'
                                                   WHEN a.t = 'timestamptz'::regtype THEN 'now()'
                                                   WHEN ty.typtype = 'c' THEN 'NULL::' || format_type(a.t, NULL)
                                                   WHEN ty.typcategory = 'A' THEN '''{}''::' || format_type(a.t, NULL)
                                                   ELSE '''0''::' || format_type(a.t, NULL) END, ', ' ORDER BY a.i)
                              FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, i)
                              JOIN pg_type ty ON ty.oid = a.t))
               FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
              WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'gn2pg')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Which gn2pg roles a member of each role has, through the role hierarchy.
    let ladder: [(&str, &[&str]); 4] = [
        ("nobody", &[]),
        ("gn2pg_reader", &["gn2pg_reader"]),
        ("gn2pg_operator", &["gn2pg_reader", "gn2pg_operator"]),
        ("gn2pg_admin", &["gn2pg_reader", "gn2pg_operator", "gn2pg_admin"]),
    ];
    let mut refused = 0;
    for (role, has) in ladder {
        let login = roles.create(&role.replace("gn2pg_", ""), (role != "nobody").then_some(role));
        let (mut c, _) = connect_as(&db.name, &login);
        c.batch_execute("SET search_path = gn2pg, public").unwrap();
        for (sig, call) in &args {
            let granted = REVIEWED.iter().find(|(s, _, _)| s == sig).map_or("", |r| r.2);
            if !granted.is_empty() && has.contains(&granted) {
                continue;
            }
            let e = c.batch_execute(call).map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
            assert!(
                e.contains("permission denied") || e.contains("can only be called as triggers"),
                "{login} ({role}) ran {call}: {e:?}"
            );
            refused += 1;
        }
    }
    assert!(refused > 100, "only {refused} calls tried");
}

/// Tests that change pg_cron jobs or hold its table's lock run one at a time.
static CRON: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cron_guard() -> std::sync::MutexGuard<'static, ()> {
    CRON.lock().unwrap_or_else(|p| p.into_inner())
}

fn run_count(c: &mut Client, source: &str) -> i64 {
    c.query_one("SELECT count(*) FROM gn2pg.run_log WHERE source = $1", &[&source]).unwrap().get(0)
}

/// Advisory locks are open to every role: holding the keys gn2pg 0.2.0 used, or the keys of the
/// per-host stream slots, must not keep a source from being harvested, remapped or removed, nor
/// schedules from being changed.
#[test]
fn advisory_locks_held_by_other_roles_block_nothing() {
    let _cron = cron_guard();
    let mut roles = Roles::default();
    let db = TestDb::new("sec_advisory");
    allow_loopback_hosts();
    let reader = roles.create("lockreader", Some("gn2pg_reader"));
    let stranger = roles.create("stranger", None);
    let admin = roles.create("lockadmin", Some("gn2pg_admin"));
    let fx = fixture(200);
    let src = unique("plock");
    let mut su = db.session();
    let id: i32 = su.query_one("SELECT gn2pg_add_source($1, $2, 3)", &[&src, &fx.base_url()]).unwrap().get(0);
    let _cleanup = Unschedule(db.name.clone(), src.clone());
    // 0.2.0's per-source lock, by a reader; 0.2.0's cron lock, by a role with no gn2pg role at all.
    let (mut r, _) = connect_as(&db.name, &reader);
    r.execute("SELECT pg_advisory_lock(hashtext('gn2pg.source'), $1)", &[&id]).unwrap();
    // Every stream slot of the source's host, as (key, slot) pairs: a slot is a lock of a kind
    // no SQL function can take, so these are other locks and the run still gets its streams.
    r.execute("SELECT count(pg_advisory_lock(hashtext('gn2pg.host 127.0.0.1'), s)) FROM generate_series(0, 64) s", &[])
        .unwrap();
    let (mut s, _) = connect_as("gn2pg_cron", &stranger);
    s.batch_execute("SELECT pg_advisory_lock(hashtext('gn2pg:cron'))").unwrap();
    // Row locks need the UPDATE privilege, which no gn2pg role has; nor stronger table locks.
    for sql in [
        "SELECT * FROM gn2pg.source FOR KEY SHARE",
        "SELECT * FROM gn2pg.run_log FOR SHARE",
        "LOCK TABLE gn2pg.source IN ROW SHARE MODE",
    ] {
        let e = r
            .batch_execute(&format!("BEGIN; {sql}; ROLLBACK"))
            .map(|_| String::new())
            .unwrap_or_else(|e| error_text(&e));
        r.batch_execute("ROLLBACK").unwrap();
        assert!(e.contains("permission denied"), "{sql}: {e:?}");
    }
    let (mut a, _) = connect_as(&db.name, &admin);
    a.batch_execute("SET statement_timeout = '60s'").unwrap();
    let run = a.query_one("SELECT gn2pg_harvest($1) ->> 'status'", &[&src]).map_err(|e| error_text(&e));
    assert_eq!(run.map(|r| r.get::<_, String>(0)), Ok("success".to_string()));
    let remapped = a.query_one("SELECT gn2pg_remap($1)", &[&src]).map_err(|e| error_text(&e));
    assert!(remapped.is_ok(), "{remapped:?}");
    let scheduled = a.query_one("SELECT gn2pg_schedule($1, '0 3 * * *')", &[&src]).map_err(|e| error_text(&e));
    assert!(scheduled.is_ok(), "{scheduled:?}");
    let unscheduled = a.query_one("SELECT gn2pg_unschedule($1)", &[&src]).map_err(|e| error_text(&e));
    assert!(unscheduled.is_ok(), "{unscheduled:?}");
    let removed = a.query_one("SELECT gn2pg_remove_source($1)", &[&src]).map_err(|e| error_text(&e));
    assert!(removed.is_ok(), "{removed:?}");
}

/// pg_cron's job table itself can only be locked by pg_cron users and superusers: even then, a
/// schedule change waits a bounded time and says why.
#[test]
fn a_locked_cron_job_table_fails_a_schedule_change_clearly_in_bounded_time() {
    let _cron = cron_guard();
    let db = TestDb::new("sec_cronlock");
    let fx = fixture(10);
    let src = unique("pcron");
    let mut su = db.session();
    su.execute("SELECT gn2pg_add_source($1, $2, 3)", &[&src, &fx.base_url()]).unwrap();
    let _cleanup = Unschedule(db.name.clone(), src.clone());
    let mut holder = connect("gn2pg_cron");
    holder.batch_execute("BEGIN; LOCK TABLE cron.job IN ROW EXCLUSIVE MODE").unwrap();
    let started = Instant::now();
    let e = su
        .query_one("SELECT gn2pg_schedule($1, '0 3 * * *')", &[&src])
        .map(|_| String::new())
        .unwrap_or_else(|e| error_text(&e));
    let waited = started.elapsed();
    holder.batch_execute("ROLLBACK").unwrap();
    assert!(e.contains("kept cron.job locked"), "{e}");
    assert!(waited < Duration::from_secs(30), "waited {waited:?}");
    su.query_one("SELECT gn2pg_schedule($1, '0 3 * * *')", &[&src]).unwrap();
}

/// Issue 9: an operator's gn2pg_harvest_async called 10 times in one open transaction held 10
/// workers. Now the second call for a source is refused (the transaction can go on after a
/// savepoint), another session is refused at once, and gn2pg.max_harvest_workers caps the rest.
#[test]
fn async_starts_in_an_open_transaction_take_one_worker_per_source_within_the_cap() {
    let mut roles = Roles::default();
    let db = TestDb::new("sec_slots");
    let op = roles.create("slots", Some("gn2pg_operator"));
    let fx = fixture(300);
    let mut su = db.session();
    for k in 0..5 {
        su.execute(&format!("SELECT gn2pg_add_source('s{k}', $1, 3)"), &[&fx.base_url()]).unwrap();
    }
    let workers = |su: &mut Client| -> i64 {
        su.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'gn2pg harvest'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let (mut o, _) = connect_as(&db.name, &op);
    o.batch_execute("BEGIN").unwrap();
    let first: i64 = o.query_one("SELECT gn2pg_harvest_async('s0')", &[]).unwrap().get(0);
    for _ in 0..9 {
        o.batch_execute("SAVEPOINT again").unwrap();
        let e = o
            .query_one("SELECT gn2pg_harvest_async('s0')", &[])
            .map(|_| String::new())
            .unwrap_or_else(|e| error_text(&e));
        assert!(e.contains("is being harvested by run") && e.contains("pending"), "{e}");
        o.batch_execute("ROLLBACK TO SAVEPOINT again").unwrap();
    }
    assert_eq!(workers(&mut su), 1, "one worker for the pending run, none for the refused calls");
    // Another session: refused at once, not made to wait for this transaction.
    let (mut other, _) = connect_as(&db.name, &op);
    other.batch_execute("SET statement_timeout = '10s'").unwrap();
    for sql in ["SELECT gn2pg_harvest_async('s0')", "SELECT gn2pg_harvest('s0')"] {
        let e = other.query_one(sql, &[]).map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
        assert!(e.contains("being started, changed or removed by another transaction"), "{sql}: {e}");
    }
    let skipped: Option<i64> = other.query_one("SELECT gn2pg_harvest_scheduled('s0')", &[]).unwrap().get(0);
    assert_eq!(skipped, None);
    // Changing the source meanwhile is refused too, rather than left waiting.
    su.batch_execute("SET statement_timeout = '10s'").unwrap();
    let e = su
        .execute("SELECT gn2pg_add_source('s0', $1, 3)", &[&fx.base_url()])
        .map(|_| String::new())
        .unwrap_or_else(|e| error_text(&e));
    assert!(e.contains("being started, changed or removed by another transaction"), "{e}");
    o.batch_execute("COMMIT").unwrap();
    wait_run(&mut su, first, Duration::from_secs(60), "the end", run_ended);
    assert_eq!(run_count(&mut su, "s0"), 1, "exactly one run of s0");

    // The cap counts the harvest workers of the whole cluster.
    connect("postgres")
        .batch_execute(&format!("ALTER DATABASE {} SET gn2pg.max_harvest_workers = 2", db.name))
        .unwrap();
    let (mut o, _) = connect_as(&db.name, &op);
    o.batch_execute("BEGIN").unwrap();
    let (mut started, mut capped) = (Vec::new(), 0);
    for k in 1..5 {
        o.batch_execute("SAVEPOINT next").unwrap();
        match o.query_one(&format!("SELECT gn2pg_harvest_async('s{k}')"), &[]) {
            Ok(r) => started.push(r.get::<_, i64>(0)),
            Err(e) => {
                let e = error_text(&e);
                assert!(e.contains("gn2pg.max_harvest_workers is 2"), "{e}");
                capped += 1;
                o.batch_execute("ROLLBACK TO SAVEPOINT next").unwrap();
            }
        }
    }
    assert!(started.len() <= 2 && capped >= 2, "started {started:?}, capped {capped}");
    o.batch_execute("COMMIT").unwrap();
    for run in started {
        wait_run(&mut su, run, Duration::from_secs(60), "the end", run_ended);
    }
}

/// Issue 9: a second gn2pg_harvest while a run was going on was recorded as a failed full run;
/// the next auto run was then a full one and a 'failed' alert was raised. A refused start is an
/// ERROR of the call (object_in_use, naming the run, its worker and since when) and no run.
#[test]
fn a_refused_start_is_not_a_run_and_changes_nothing_for_the_next_one() {
    let db = TestDb::new("sec_refused");
    let fx = fixture(2000);
    let mut su = db.session();
    su.execute("SELECT gn2pg_add_source('p', $1, 3, options => '{\"page_size\": 200}')", &[&fx.base_url()]).unwrap();
    assert_eq!(harvest_status(&mut su, "p"), "success");
    fx.mutate(Mutation { update: 3, ..Default::default() });
    fx.faults(Faults { slow_ms: 1500, ..Default::default() });
    let busy: i64 = su.query_one("SELECT gn2pg_harvest_async('p')", &[]).unwrap().get(0);
    wait_run(&mut su, busy, Duration::from_secs(30), "running", |r| r["status"] == "running");
    let pid: i32 = su.query_one("SELECT worker_pid FROM gn2pg.run_log WHERE id = $1", &[&busy]).unwrap().get(0);
    let before = run_count(&mut su, "p");
    for sql in ["SELECT gn2pg_harvest('p')", "SELECT gn2pg_harvest_async('p')", "SELECT gn2pg_remove_source('p')"] {
        let e = su.batch_execute(sql).unwrap_err();
        assert_eq!(e.code(), Some(&postgres::error::SqlState::OBJECT_IN_USE), "{sql}: {e}");
        let t = error_text(&e);
        assert!(
            t.contains(&format!("is being harvested by run {busy}"))
                && t.contains(&format!("worker process {pid} since"))
                && t.contains(&format!("gn2pg_cancel({busy})")),
            "{sql}: {t}"
        );
    }
    let e = su.batch_execute("SELECT gn2pg_remap('p')").unwrap_err();
    assert_eq!(e.code(), Some(&postgres::error::SqlState::OBJECT_IN_USE), "{e}");
    let skipped: Option<i64> = su.query_one("SELECT gn2pg_harvest_scheduled('p')", &[]).unwrap().get(0);
    assert_eq!(skipped, None);
    assert_eq!(run_count(&mut su, "p"), before, "a refused start records no run");
    fx.faults(Faults::default());
    let r = wait_run(&mut su, busy, Duration::from_secs(60), "the end", run_ended);
    assert_eq!(r["mode"], "incremental");
    // The next auto run is still incremental, and nothing was alerted.
    let next: String = su.query_one("SELECT gn2pg_harvest('p') ->> 'mode'", &[]).unwrap().get(0);
    assert_eq!(next, "incremental");
    let alerts: i64 = su.query_one("SELECT count(*) FROM gn2pg.alert", &[]).unwrap().get(0);
    assert_eq!(alerts, 0);
    let health: String = su.query_one("SELECT health FROM gn2pg.flow_status WHERE source = 'p'", &[]).unwrap().get(0);
    assert_eq!(health, "ok");
}

fn harvest_status(c: &mut Client, source: &str) -> String {
    c.query_one("SELECT gn2pg_harvest($1) ->> 'status'", &[&source]).unwrap().get(0)
}

/// A run whose end cannot be recorded (here: the final UPDATE fails) does not stay 'running':
/// the worker records what it can, and gn2pg_check_flows() closes it as abandoned, with why.
#[test]
fn a_run_whose_end_cannot_be_recorded_is_closed_as_abandoned() {
    let db = TestDb::new("sec_unrecorded");
    let fx = fixture(100);
    let mut su = db.session();
    su.execute("SELECT gn2pg_add_source('p', $1, 3)", &[&fx.base_url()]).unwrap();
    su.batch_execute(
        "CREATE FUNCTION public.refuse_end() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN RAISE EXCEPTION 'the disk is full (simulated)'; END$$;
         CREATE TRIGGER refuse_end BEFORE UPDATE OF status ON gn2pg.run_log
           FOR EACH ROW WHEN (NEW.status NOT IN ('pending', 'running')) EXECUTE FUNCTION public.refuse_end();",
    )
    .unwrap();
    let e = su.batch_execute("SELECT gn2pg_harvest('p')").map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
    assert!(e.contains("ended without recording its end") && e.contains("marks it abandoned"), "{e}");
    let (id, status): (i64, String) = {
        let r = su.query_one("SELECT id, status FROM gn2pg.run_log WHERE source = 'p'", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(status, "running");
    su.batch_execute("DROP TRIGGER refuse_end ON gn2pg.run_log").unwrap();
    su.query_one("SELECT gn2pg_check_flows()", &[]).unwrap();
    let (status, error): (String, String) = {
        let r = su.query_one("SELECT status, error FROM gn2pg.run_log WHERE id = $1", &[&id]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(status, "abandoned");
    assert!(error.contains("ended without finishing the run"), "{error}");
    let kind: String = su.query_one("SELECT kind FROM gn2pg.alert WHERE source = 'p'", &[]).unwrap().get(0);
    assert_eq!(kind, "abandoned");
    assert_eq!(harvest_status(&mut su, "p"), "success");
}

/// Issue 9, item 6: a source that echoes the password, the session cookie and the token (in an
/// error body, an HTML page, a redirect URL, an item's value) gets none of them stored or sent
/// by gn2pg: run_log, run_part, run_error, alerts, NOTIFY payloads, webhooks, the errors of
/// gn2pg_harvest, its server log lines. Nor does a URL refused at registration.
#[test]
fn secrets_a_source_echoes_reach_no_reader() {
    let db = TestDb::new("sec_echo");
    connect("postgres").batch_execute(&format!("ALTER DATABASE {} SET log_min_messages = 'debug1'", db.name)).unwrap();
    let hook = Hook::start(0);
    let mut su = db.session();
    let mut listener = db.session();
    listener.batch_execute("LISTEN gn2pg_alert").unwrap();
    let tag = format!("{}x{}", std::process::id(), Instant::now().elapsed().as_nanos() % 1_000_000);
    let password = format!("pw @{tag}\"Zq9");
    let token = format!("deadbeef{tag}cafe");
    let sources = [
        ("lg", Echo::ErrorBody, "login", r#"{"workers": 2, "max_retries": 0}"#),
        ("tk", Echo::ForbiddenPage, "token", r#"{"max_retries": 0}"#),
        ("rd", Echo::Redirect, "login", r#"{"max_retries": 0}"#),
        ("it", Echo::BadItem, "token", "{}"),
    ];
    let mut servers = Vec::new();
    for (name, mode, auth, options) in sources {
        let echo = EchoSource::start(mode, 40);
        let (pw, tok): (Option<&str>, Option<&str>) =
            if auth == "login" { (Some(&password), None) } else { (None, Some(&token)) };
        su.execute(
            "SELECT gn2pg_add_source($1, $2, 1, $3, login => CASE WHEN $3 = 'login' THEN 'harvester' END,
                                     password => $4, token => $5, options => $6::text::jsonb, alert_webhook => $7)",
            &[&name, &echo.url, &auth, &pw, &tok, &options, &format!("{}/hook", hook.base)],
        )
        .unwrap();
        servers.push(echo);
    }
    let mut errors = Vec::new();
    for (name, ..) in sources {
        match su.query_one("SELECT gn2pg_harvest($1)::text", &[&name]) {
            Ok(r) => errors.push(r.get::<_, String>(0)),
            Err(e) => errors.push(error_text(&e)),
        }
    }
    let cookies: Vec<String> = servers.iter().flat_map(|s| s.cookies.lock().unwrap().clone()).collect();
    assert!(cookies.len() >= 3, "the login sources logged in (the lead and the part of lg, and rd): {cookies:?}");
    // A URL refused at registration does not quote its secret either (a bind parameter: the
    // statement's text, which PostgreSQL logs with the error, holds no secret).
    let refused = su
        .execute("SELECT gn2pg_add_source('bad', $1, 1)", &[&format!("http://h/geonature?token={token}")])
        .map(|_| String::new())
        .unwrap_or_else(|e| error_text(&e));
    assert!(refused.contains("must not have a query"), "{refused}");
    errors.push(refused);

    let mut notes = Vec::new();
    while let Some(n) = next_alert(&mut listener, 5) {
        notes.push(n.to_string());
    }
    let mut hooks = Vec::new();
    while let Some((_, body, _)) = hook.next(5) {
        hooks.push(body.to_string());
    }
    let dump: String = su
        .query_one(
            "SELECT concat_ws(E'\\n',
                    (SELECT string_agg(r::text, E'\\n') FROM gn2pg.run_log r),
                    (SELECT string_agg(p::text, E'\\n') FROM gn2pg.run_part p),
                    (SELECT string_agg(e.error, E'\\n') FROM gn2pg.run_error e),
                    (SELECT string_agg(a::text, E'\\n') FROM gn2pg.alert a),
                    (SELECT string_agg(e::text, E'\\n') FROM gn2pg.alert_event e),
                    (SELECT string_agg(f::text, E'\\n') FROM gn2pg.flow_status f))",
            &[],
        )
        .unwrap()
        .get(0);
    let parts: String =
        su.query_one("SELECT string_agg(error, E'\\n') FROM gn2pg.run_part WHERE part = 1", &[]).unwrap().get(0);
    // The echoes did arrive, masked: what is checked below is not vacuous.
    for (place, text, needle) in [
        ("run_log", &dump, "cannot serve user with password ***"),
        ("run_log", &dump, "Denied: user with password"),
        ("run_log", &dump, "unexpected redirect to http://elsewhere.example/moved"),
        ("run_log", &dump, "part 1: "),
        ("run_part", &parts, "cannot serve user with password ***"),
        ("run_error", &dump, "invalid uuid ***"),
        ("notifications", &notes.join("\n"), "cannot serve"),
        ("webhooks", &hooks.join("\n"), "cannot serve"),
    ] {
        assert!(text.contains(needle), "{needle:?} not in {place}: {text}");
    }
    let log_path =
        format!("{}/server.log", std::env::var("GN2PG_TEST_DIR").unwrap_or_else(|_| "/tmp/gn2pg-test".into()));
    let log = std::fs::read_to_string(&log_path).unwrap_or_else(|e| panic!("read {log_path}: {e}"));
    let encoded = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut secrets = vec![password.clone(), encoded(&password), token.clone()];
    secrets.extend(cookies);
    for secret in &secrets {
        for (place, text) in [
            ("tables", &dump),
            ("errors", &errors.join("\n")),
            ("notifications", &notes.join("\n")),
            ("webhooks", &hooks.join("\n")),
            ("server log", &log),
        ] {
            assert!(!text.contains(secret.as_str()), "{secret} found in {place}");
        }
    }
}

/// Issue 9, item 5: TLS is always verified; a source behind a private CA works once its CA is
/// given (options.ca_certificate, checked at registration), and fails without it or with
/// another CA.
#[test]
fn an_https_source_with_a_private_ca_needs_its_ca_certificate() {
    let db = TestDb::new("sec_tls");
    let fx = fixture(700);
    let backend: std::net::SocketAddr = format!("127.0.0.1:{}", fx.port()).parse().unwrap();
    let front = TlsFront::start(backend, 200);
    let url = format!("{}/geonature", front.origin);
    let mut su = db.session();
    let add = |su: &mut Client, name: &str, options: serde_json::Value| {
        su.execute(
            "SELECT gn2pg_add_source($1, $2, 1, 'login', 'harvester', 'secret', options => $3::text::jsonb)",
            &[&name, &url, &options.to_string()],
        )
        .map(|_| ())
        .map_err(|e| error_text(&e))
    };
    add(&mut su, "untrusted", serde_json::json!({"max_retries": 0})).unwrap();
    let e =
        su.batch_execute("SELECT gn2pg_harvest('untrusted')").map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
    assert!(e.contains("cannot connect") && e.to_lowercase().contains("certificate"), "{e}");
    add(&mut su, "otherca", serde_json::json!({"max_retries": 0, "ca_certificate": another_ca_pem()})).unwrap();
    let e =
        su.batch_execute("SELECT gn2pg_harvest('otherca')").map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    add(&mut su, "trusted", serde_json::json!({"ca_certificate": front.ca_pem})).unwrap();
    assert_eq!(harvest_status(&mut su, "trusted"), "success");
    gn2pg_pg_test::checks::assert_equal_to_source(&mut su, "trusted", &fx, 1);
    // Refused at registration: not a certificate.
    for bad in
        [serde_json::json!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), serde_json::json!(7)]
    {
        let e = add(&mut su, "bad", serde_json::json!({ "ca_certificate": bad })).unwrap_err();
        assert!(e.contains("option ca_certificate"), "{e}");
    }
}

/// Issue 9, item 5: a login or a token over plain http:// to another machine is refused, at
/// registration and before every run, unless the source opts in; this machine is exempt.
#[test]
fn credentials_over_plain_http_need_an_opt_in() {
    let db = TestDb::new("sec_http");
    let mut su = db.session();
    let add = |su: &mut Client, name: &str, url: &str, options: &str| {
        su.execute(
            "SELECT gn2pg_add_source($1, $2, 1, token => 'tok-3f9a8b7c', options => $3::text::jsonb)",
            &[&name, &url, &options],
        )
        .map(|_| ())
        .map_err(|e| error_text(&e))
    };
    let e = add(&mut su, "far", "http://geonature.example.org", "{}").unwrap_err();
    assert!(e.contains("plain http://") && e.contains("allow_insecure_http") && !e.contains("tok-3f9a8b7c"), "{e}");
    add(&mut su, "far", "http://geonature.example.org", r#"{"allow_insecure_http": true}"#).unwrap();
    add(&mut su, "near", "http://127.0.0.1:9/geonature", "{}").unwrap();
    su.execute("SELECT gn2pg_add_source('open', 'http://geonature.example.org', 3)", &[]).unwrap();
    // Before every run too: the opt-in removed behind gn2pg's back fails the next run, before
    // any request.
    su.batch_execute("UPDATE gn2pg.source SET options = '{}' WHERE name = 'far'").unwrap();
    let e = su.batch_execute("SELECT gn2pg_harvest('far')").map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
    assert!(e.contains("failed") && e.contains("plain http://"), "{e}");
}

/// Issue 9, item 5: gn2pg.allowed_hosts matches ports, and applies at every run and webhook
/// delivery of what a role that is not a superuser registered (the list may narrow later);
/// superusers' sources are not bound by it.
#[test]
fn allowed_hosts_match_ports_and_apply_at_every_run() {
    let mut roles = Roles::default();
    let db = TestDb::new("sec_hosts");
    allow_loopback_hosts();
    let admin = roles.create("hostsadmin", Some("gn2pg_admin"));
    let fx = fixture(100);
    let hook = Hook::start(0);
    let (mut a, _) = connect_as(&db.name, &admin);
    a.execute(
        "SELECT gn2pg_add_source('byadmin', $1, 3, options => '{\"max_retries\": 0}', alert_webhook => $2)",
        &[&fx.base_url(), &format!("{}/h", hook.base)],
    )
    .unwrap();
    let mut su = db.session();
    su.execute("SELECT gn2pg_add_source('bysu', $1, 3)", &[&fx.base_url()]).unwrap();
    assert_eq!(harvest_status(&mut a, "byadmin"), "success");
    // The list narrows to the default port of 127.0.0.1 (the database's own setting).
    connect("postgres")
        .batch_execute(&format!(
            "ALTER DATABASE {} SET gn2pg.allowed_hosts = '127.0.0.1, localhost:{}'",
            db.name,
            fx.port() + 1
        ))
        .unwrap();
    let (mut a, _) = connect_as(&db.name, &admin);
    let e =
        a.batch_execute("SELECT gn2pg_harvest('byadmin')").map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
    assert!(
        e.contains(&format!("source URL host \"127.0.0.1:{}\" is not allowed by gn2pg.allowed_hosts", fx.port())),
        "{e}"
    );
    let mut su = db.session();
    assert_eq!(harvest_status(&mut su, "bysu"), "success", "a superuser's source is not bound by the list");
    // The failure's alert is not sent to a webhook the list no longer allows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let webhook_error = loop {
        let r: Option<String> = su
            .query_one(
                "SELECT (SELECT webhook_error FROM gn2pg.alert_event WHERE webhook_state = 'failed' LIMIT 1)",
                &[],
            )
            .unwrap()
            .get(0);
        if let Some(r) = r {
            break r;
        }
        assert!(Instant::now() < deadline, "the webhook delivery was not decided");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(webhook_error.contains("alert_webhook host") && webhook_error.contains("not allowed"), "{webhook_error}");
    assert!(hook.next(1).is_none(), "the webhook received nothing");
    // Registration matches ports too.
    let e = a
        .execute("SELECT gn2pg_add_source('other', $1, 3)", &[&fx.base_url()])
        .map(|_| String::new())
        .unwrap_or_else(|e| error_text(&e));
    assert!(e.contains(&format!("\"127.0.0.1:{}\" is not allowed", fx.port())), "{e}");
    a.execute("SELECT gn2pg_add_source('other', $1, 3)", &[&format!("http://localhost:{}/geonature", fx.port() + 1)])
        .unwrap();
}
