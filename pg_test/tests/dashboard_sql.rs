//! What the web dashboard needs from the database (issue 13), through SQL on the test cluster:
//! `gn2pg_check_source` against the fixture GeoNature (answers, failures, permissions,
//! cancellation), row counts kept by triggers, alert acknowledgement, GeoNature accounts.
//! The dashboard itself is tested in a browser (dashboard/tests/browser.rs).

use std::time::{Duration, Instant};

use gn2pg_pg_test::checks::{add_source, harvest, kept_counts};
use gn2pg_pg_test::db::{connect, ensure_template, error_text, Client, TestDb};
use gn2pg_pg_test::fixture::{Faults, FixtureConfig, FixtureServer, Mutation};
use serde_json::Value;

fn fixture(rows: u64) -> FixtureServer {
    FixtureServer::start(FixtureConfig { rows, ..Default::default() }).expect("fixture server starts")
}

fn check(db: &mut Client, sql: &str) -> Result<Value, String> {
    db.query_one(&format!("SELECT ({sql})::text"), &[])
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .map_err(|e| error_text(&e))
}

/// NOLOGIN roles of one test, used with SET ROLE, dropped at the end (declare before the TestDb).
struct Roles(Vec<String>);

impl Roles {
    fn create(&mut self, member_of: &str) -> String {
        ensure_template();
        let name = format!("dq_{}_{}_{}", member_of.trim_start_matches("gn2pg_"), std::process::id(), self.0.len());
        connect("postgres").batch_execute(&format!("CREATE ROLE {name}; GRANT {member_of} TO {name}")).unwrap();
        self.0.push(name.clone());
        name
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let mut admin = connect("postgres");
        for r in &self.0 {
            let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {r}"));
        }
    }
}

#[test]
fn check_source_reports_what_a_source_answers_and_stores_nothing() {
    let fx = fixture(500);
    let mut db = TestDb::new("check_ok");
    add_source(&mut db.client, "pne", &fx, 1, "login", "{}");
    add_source(&mut db.client, "tok", &fx, 2, "token", "{}");
    let r = check(&mut db.client, "gn2pg_check_source('pne')").unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        (r["reachable"].clone(), r["authenticated"].clone(), r["export_found"].clone()),
        (true.into(), true.into(), true.into())
    );
    assert_eq!(r["item_shape"], "array");
    assert_eq!(r["row_count"], 500);
    assert_eq!(r["geonature_version"], "2.16.4");
    assert_eq!(r["module_path"], "exports");
    assert_eq!(r["key_column_found"], true);
    assert_eq!(r["uuid_column_found"], true);
    assert_eq!(r["geometry"], "wkt_4326");
    assert!(r["columns"].as_array().unwrap().iter().any(|c| c == "id_synthese"), "{r}");
    assert_eq!(r["source"], "pne");
    assert_eq!(r["auth"], "login");
    let steps: Vec<&str> = r["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["config", "sign-in", "export"], "{r}");
    assert!(!r.to_string().contains("secret"), "no credential in the report: {r}");

    let r = check(&mut db.client, "gn2pg_check_source('tok')").unwrap();
    assert_eq!(
        (r["ok"].clone(), r["item_shape"].clone(), r["geometry"].clone()),
        (true.into(), "FeatureCollection".into(), "feature geometry".into()),
        "{r}"
    );
    assert!(!r.to_string().contains(&FixtureConfig::default().token), "{r}");

    // A source not saved yet, described by the arguments; and one with a metadata export.
    let sql = format!(
        "gn2pg_check_source(url => '{}', export_id => 3, options => '{{\"metadata_export_id\": 4}}')",
        fx.base_url()
    );
    let r = check(&mut db.client, &sql).unwrap();
    assert_eq!(
        (r["ok"].clone(), r["auth"].clone(), r["source"].clone()),
        (true.into(), "public".into(), Value::Null),
        "{r}"
    );
    assert_eq!(r["metadata_export_found"], true, "{r}");
    let counts: (i64, i64) = {
        let row = db
            .client
            .query_one("SELECT (SELECT count(*) FROM gn2pg.source), (SELECT count(*) FROM gn2pg.run_log)", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(counts, (2, 0), "checking stores nothing");
}

#[test]
fn check_source_says_precisely_why_a_source_fails() {
    let fx = fixture(100);
    let mut db = TestDb::new("check_bad");
    add_source(&mut db.client, "pne", &fx, 1, "login", "{}");
    // The saved source with another password, as the edit form tests it.
    let r = check(&mut db.client, "gn2pg_check_source('pne', password => 'not-it-at-all')").unwrap();
    assert_eq!((r["ok"].clone(), r["failed_step"].clone()), (false.into(), "sign-in".into()), "{r}");
    assert_eq!((r["reachable"].clone(), r["authenticated"].clone()), (true.into(), false.into()), "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("login refused") && e.contains("401"), "{e}");
    assert!(!r.to_string().contains("not-it-at-all"), "{r}");

    let base = fx.base_url();
    let r = check(&mut db.client, &format!("gn2pg_check_source(url => '{base}', export_id => 99)")).unwrap();
    assert_eq!((r["export_found"].clone(), r["failed_step"].clone()), (false.into(), "export".into()), "{r}");
    assert!(r["error"].as_str().unwrap().contains("export 99 not found"), "{r}");

    let r = check(&mut db.client, &format!("gn2pg_check_source(url => '{base}', export_id => 2, token => 'ffff')"))
        .unwrap();
    assert_eq!((r["authenticated"].clone(), r["failed_step"].clone()), (false.into(), "export".into()), "{r}");
    assert!(r["error"].as_str().unwrap().contains("403"), "{r}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r = check(&mut db.client, &format!("gn2pg_check_source(url => 'http://127.0.0.1:{port}/gn', export_id => 1)"))
        .unwrap();
    assert_eq!(
        (r["reachable"].clone(), r["failed_step"].clone(), r["transient"].clone()),
        (false.into(), "config".into(), true.into()),
        "{r}"
    );
    assert!(r["error"].as_str().unwrap().contains("cannot connect"), "{r}");

    let e = check(&mut db.client, "gn2pg_check_source()").unwrap_err();
    assert!(e.contains("give the name of a registered source, or url and export_id") && e.contains("HINT"), "{e}");
    let e = check(&mut db.client, "gn2pg_check_source('nope')").unwrap_err();
    assert!(e.contains("source \"nope\" does not exist"), "{e}");
    let e = check(&mut db.client, &format!("gn2pg_check_source(url => '{base}', export_id => 1, auth => 'login')"))
        .unwrap_err();
    assert!(e.contains("needs login and password"), "{e}");
}

#[test]
fn check_source_needs_operator_for_saved_sources_and_admin_for_anything_else() {
    let fx = fixture(100);
    let mut roles = Roles(Vec::new());
    let (reader, operator, admin) =
        (roles.create("gn2pg_reader"), roles.create("gn2pg_operator"), roles.create("gn2pg_admin"));
    let mut db = TestDb::new("check_roles");
    add_source(&mut db.client, "pub", &fx, 3, "public", "{}");
    let base = fx.base_url();
    let as_role = |db: &mut Client, role: &str, sql: &str| -> Result<Value, String> {
        db.batch_execute(&format!("SET ROLE {role}")).unwrap();
        let r = check(db, sql);
        db.batch_execute("RESET ROLE").unwrap();
        r
    };
    let e = as_role(&mut db.client, &reader, "gn2pg_check_source('pub')").unwrap_err();
    assert!(e.contains("permission denied for function gn2pg_check_source"), "{e}");
    assert_eq!(as_role(&mut db.client, &operator, "gn2pg_check_source('pub')").unwrap()["ok"], true);
    let e = as_role(&mut db.client, &operator, "gn2pg_check_source('pub', export_id => 1)").unwrap_err();
    assert!(e.contains("gn2pg_admin"), "{e}");
    // An admin who is not a superuser may only make the server reach allowed hosts.
    let e =
        as_role(&mut db.client, &admin, &format!("gn2pg_check_source(url => '{base}', export_id => 3)")).unwrap_err();
    assert!(e.contains("is not allowed by gn2pg.allowed_hosts"), "{e}");
    assert_eq!(
        as_role(&mut db.client, &admin, "gn2pg_check_source('pub', export_id => 5)").unwrap()["item_shape"],
        "FeatureCollection"
    );
}

#[test]
fn a_check_of_a_silent_source_is_cancelled_by_statement_timeout() {
    let fx = fixture(100);
    fx.faults(Faults { slow_ms: 20_000, ..Default::default() });
    let mut db = TestDb::new("check_cancel");
    add_source(&mut db.client, "slow", &fx, 3, "public", "{}");
    db.client.batch_execute("SET statement_timeout = '700ms'").unwrap();
    let t = Instant::now();
    // The configuration request is not slowed; the export request is.
    let e = check(&mut db.client, "gn2pg_check_source('slow')").unwrap_err();
    assert!(e.contains("canceling statement due to statement timeout"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "cancelled in {:?}", t.elapsed());
}

/// Counts kept by the triggers against a fresh count of gn2pg.observation.
fn counts_match(db: &mut Client) {
    let q = |db: &mut Client, sql: &str| -> Vec<String> {
        db.query(sql, &[]).unwrap().iter().map(|r| r.get::<_, String>(0)).collect()
    };
    let counted = q(
        db,
        "SELECT format('%s %s %s %s', source, source_ca_uuid, source_jdd_uuid, count(*)) FROM gn2pg.observation
          GROUP BY source, source_ca_uuid, source_jdd_uuid ORDER BY 1",
    );
    assert_eq!(counted, kept_counts(db));
    let views: (i64, i64) = {
        let r = db
            .query_one(
                "SELECT (SELECT coalesce(sum(local_rows), 0)::bigint FROM gn2pg.flow_status),
                        (SELECT coalesce(sum(rows), 0)::bigint FROM gn2pg.metadata_mapping WHERE level = 'jdd')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let r = db.query_one("SELECT count(*), count(source_jdd_uuid) FROM gn2pg.observation", &[]).unwrap();
    let (total, with_jdd): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!(views, (total, with_jdd), "flow_status and metadata_mapping read the counts");
}

#[test]
fn row_counts_follow_every_change_of_observations() {
    let fx = fixture(3000);
    let mut db = TestDb::new("counts");
    add_source(&mut db.client, "a", &fx, 1, "login", r#"{"page_size": 500}"#);
    add_source(&mut db.client, "b", &fx, 3, "public", r#"{"page_size": 1000}"#);
    harvest(&mut db.client, "a", "full").unwrap();
    counts_match(&mut db.client);
    let groups = |db: &mut Client, s: &str| -> (i64, i64) {
        let r = db
            .query_one(
                "SELECT (SELECT count(*) FROM gn2pg.observation_count WHERE source = $1),
                        (SELECT count(DISTINCT (source_ca_uuid, source_jdd_uuid)) FROM gn2pg.observation WHERE source = $1)",
                &[&s],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (rows, distinct) = groups(&mut db.client, "a");
    assert_eq!(rows, distinct, "the deltas of a finished run are folded, one row per (CA, JDD)");
    // Source "b" serves the same uuids: the loader reports them instead of storing them twice.
    let _ = harvest(&mut db.client, "b", "full");
    counts_match(&mut db.client);
    fx.mutate(Mutation { insert: 120, update: 200, delete: 75, ..Default::default() });
    harvest(&mut db.client, "a", "incremental").unwrap();
    counts_match(&mut db.client);
    harvest(&mut db.client, "a", "full").unwrap();
    counts_match(&mut db.client);
    // A mapping moves ca_uuid / jdd_uuid, not what was received.
    db.client
        .batch_execute(
            "SELECT gn2pg_map_ca('a', NULL, '5e4d3c2b-1a09-4f8e-b7d6-c5b4a3928170'); SELECT gn2pg_remap('a');",
        )
        .unwrap();
    counts_match(&mut db.client);
    // Direct changes made by hand (a superuser) keep them right too.
    db.client
        .batch_execute(
            "UPDATE gn2pg.observation SET source_jdd_uuid = NULL WHERE source = 'a' AND id_data % 7 = 0;
             DELETE FROM gn2pg.observation WHERE source = 'a' AND id_data % 11 = 0;",
        )
        .unwrap();
    counts_match(&mut db.client);
    db.client.batch_execute("SELECT gn2pg_remove_source('a', drop_data => true)").unwrap();
    counts_match(&mut db.client);
    assert_eq!(groups(&mut db.client, "a").0, 0, "a removed source leaves no count rows");
    db.client.batch_execute("TRUNCATE gn2pg.observation").unwrap();
    counts_match(&mut db.client);
    // The repair after a restore made without triggers.
    harvest(&mut db.client, "b", "full").unwrap();
    db.client.batch_execute("DELETE FROM gn2pg.observation_count").unwrap();
    let n: i64 = db.client.query_one("SELECT gn2pg._recount()", &[]).unwrap().get(0);
    assert!(n > 0);
    counts_match(&mut db.client);
}

#[test]
fn operators_acknowledge_open_alerts() {
    let mut roles = Roles(Vec::new());
    let (reader, operator) = (roles.create("gn2pg_reader"), roles.create("gn2pg_operator"));
    let mut db = TestDb::new("ack");
    db.client
        .batch_execute("SELECT gn2pg_add_source('down', 'http://127.0.0.1:9/gn', 3, options => '{\"max_retries\": 0}')")
        .unwrap();
    assert!(harvest(&mut db.client, "down", "full").is_err());
    let id: i64 = db.client.query_one("SELECT id FROM gn2pg.alert WHERE source = 'down'", &[]).unwrap().get(0);
    db.client.batch_execute(&format!("SET ROLE {reader}")).unwrap();
    let e = db.client.query_one("SELECT gn2pg_acknowledge_alert($1)", &[&id]).map(|_| ()).unwrap_err();
    assert!(error_text(&e).contains("permission denied"), "{}", error_text(&e));
    db.client.batch_execute(&format!("RESET ROLE; SET ROLE {operator}")).unwrap();
    let done: bool = db.client.query_one("SELECT gn2pg_acknowledge_alert($1, '  on it  ')", &[&id]).unwrap().get(0);
    assert!(done);
    let none: bool = db.client.query_one("SELECT gn2pg_acknowledge_alert(-1)", &[]).unwrap().get(0);
    assert!(!none, "an unknown alert is not acknowledged");
    db.client.batch_execute("RESET ROLE").unwrap();
    let r = db
        .client
        .query_one(
            "SELECT acknowledged_by, acknowledgement, acknowledged_at IS NOT NULL FROM gn2pg.alert WHERE id = $1",
            &[&id],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, bool>(2)),
        (operator.clone(), "on it".into(), true)
    );
    // A repeat keeps the acknowledgement; the dashboard names the GeoNature account it acts for.
    assert!(harvest(&mut db.client, "down", "full").is_err());
    let kept: bool = db
        .client
        .query_one("SELECT acknowledged_at IS NOT NULL FROM gn2pg.alert WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert!(kept);
    db.client
        .batch_execute(
            "SELECT gn2pg_add_source('down2', 'http://127.0.0.1:9/gn', 3, options => '{\"max_retries\": 0}')",
        )
        .unwrap();
    assert!(harvest(&mut db.client, "down2", "full").is_err());
    db.client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE {operator}; SET LOCAL gn2pg_dashboard.account = 'jdupont';
             SELECT gn2pg_acknowledge_alert((SELECT id FROM gn2pg.alert WHERE source = 'down2')); COMMIT;"
        ))
        .unwrap();
    let by: String =
        db.client.query_one("SELECT acknowledged_by FROM gn2pg.alert WHERE source = 'down2'", &[]).unwrap().get(0);
    assert_eq!(by, format!("{operator} (GeoNature account jdupont)"));
}

#[test]
fn geonature_accounts_are_mapped_to_one_gn2pg_role() {
    let mut db = TestDb::new("gn_accounts");
    let e =
        db.client.query_one("SELECT gn2pg_map_geonature_account('x', 'gn2pg_reader')", &[]).map(|_| ()).unwrap_err();
    assert!(error_text(&e).contains("no GeoNature accounts"), "{}", error_text(&e));
    let none: i64 = db.client.query_one("SELECT count(*) FROM gn2pg._geonature_sign_in('x')", &[]).unwrap().get(0);
    assert_eq!(none, 0, "no UsersHub, no account");
    db.client
        .batch_execute(
            "CREATE SCHEMA utilisateurs;
             CREATE TABLE utilisateurs.t_roles (groupe boolean NOT NULL DEFAULT false, id_role serial PRIMARY KEY,
                                                identifiant varchar(100), pass_plus text, active boolean DEFAULT true);
             INSERT INTO utilisateurs.t_roles (identifiant, pass_plus, groupe, active) VALUES
                 ('jdupont', '$2b$04$abcdefghijklmnopqrstuu', false, true),
                 ('Grp_admin', NULL, true, true),
                 ('twin', 'x', false, true), ('twin', 'y', false, true),
                 ('off', 'z', false, false);",
        )
        .unwrap();
    let id: i32 =
        db.client.query_one("SELECT gn2pg_map_geonature_account('jdupont', 'gn2pg_operator')", &[]).unwrap().get(0);
    assert_eq!(id, 1);
    let again: i32 =
        db.client.query_one("SELECT gn2pg_map_geonature_account('jdupont', 'gn2pg_admin')", &[]).unwrap().get(0);
    assert_eq!(again, 1, "mapping again changes the role");
    let r = db
        .client
        .query_one("SELECT id_role, login, password_hash, active, role FROM gn2pg._geonature_sign_in('jdupont')", &[])
        .unwrap();
    assert_eq!(r.get::<_, String>(4), "gn2pg_admin");
    assert_eq!(r.get::<_, String>(2), "$2b$04$abcdefghijklmnopqrstuu");
    for (login, role, expect) in [
        ("Grp_admin", "gn2pg_reader", "no GeoNature user account"),
        ("twin", "gn2pg_reader", "several GeoNature accounts"),
        ("nobody", "gn2pg_reader", "no GeoNature user account"),
        ("jdupont", "postgres", "is not a gn2pg role"),
    ] {
        let e = db
            .client
            .query_one("SELECT gn2pg_map_geonature_account($1, $2)", &[&login, &role])
            .map(|_| ())
            .unwrap_err();
        assert!(error_text(&e).contains(expect), "{login}: {}", error_text(&e));
    }
    db.client.batch_execute("SELECT gn2pg_map_geonature_account('off', 'gn2pg_reader')").unwrap();
    let active: bool = db.client.query_one("SELECT active FROM gn2pg._geonature_sign_in('off')", &[]).unwrap().get(0);
    assert!(!active, "a disabled account is returned as such (the dashboard refuses it)");
    let unmapped: i64 =
        db.client.query_one("SELECT count(*) FROM gn2pg._geonature_sign_in('twin')", &[]).unwrap().get(0);
    assert_eq!(unmapped, 0);
    assert!(db.client.query_one("SELECT gn2pg_unmap_geonature_account('jdupont')", &[]).unwrap().get::<_, bool>(0));
    assert!(!db.client.query_one("SELECT gn2pg_unmap_geonature_account('jdupont')", &[]).unwrap().get::<_, bool>(0));
    let gone: i64 =
        db.client.query_one("SELECT count(*) FROM gn2pg._geonature_sign_in('jdupont')", &[]).unwrap().get(0);
    assert_eq!(gone, 0, "no mapping, no access");
}
