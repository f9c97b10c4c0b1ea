//! End-to-end harvests: the gn2pg extension, installed in the test cluster, pulls the fixture
//! GeoNature over HTTP and the rows in PostgreSQL are compared with what the source serves.

use gn2pg_pg_test::checks::{
    add_source, assert_equal_to_source, harvest, harvest_failure, last_run_class, n, run_rows,
};
use gn2pg_pg_test::db::{error_text, Client, TestDb};
use gn2pg_pg_test::fixture::{
    Access, ExportConfig, Faults, FixtureConfig, FixtureServer, Mutation, Shape, TotalFiltered, View,
};

fn fixture(rows: u64) -> FixtureServer {
    FixtureServer::start(FixtureConfig { rows, ..Default::default() }).expect("fixture server starts")
}

#[test]
fn public_array_export_is_harvested_exactly() {
    let fx = fixture(2500);
    let mut db = TestDb::new("public_array");
    add_source(&mut db.client, "pub", &fx, 3, "public", "{}");
    let run = harvest(&mut db.client, "pub", "auto").unwrap();
    assert_eq!(run["status"], "success");
    assert_eq!(run["mode"], "full");
    assert_eq!(n(&run, "rows_received"), 2500);
    assert_eq!(n(&run, "rows_upserted"), 2500);
    assert_eq!(n(&run, "rows_failed"), 0);
    assert_eq!(n(&run, "pages_done"), 3, "1000 + 1000 + 500 rows: the short page ends the run");
    assert!(n(&run, "bytes_received") > 0 && n(&run, "http_requests") >= 3);
    assert_equal_to_source(&mut db.client, "pub", &fx, 3);
}

#[test]
fn login_mode_uses_a_session_and_discovers_the_module() {
    let fx = fixture(1200);
    let mut db = TestDb::new("login");
    add_source(&mut db.client, "withlogin", &fx, 1, "login", "{}");
    let run = harvest(&mut db.client, "withlogin", "full").unwrap();
    assert_eq!(run["status"], "success");
    let stats = fx.stats();
    assert!(stats.logins >= 1, "{stats:?}");
    assert_equal_to_source(&mut db.client, "withlogin", &fx, 1);
}

#[test]
fn login_mode_follows_a_custom_module_path() {
    let fx = FixtureServer::start(FixtureConfig { rows: 300, module_path: "export_pne".into(), ..Default::default() })
        .unwrap();
    let mut db = TestDb::new("module_path");
    add_source(&mut db.client, "oldgn", &fx, 1, "login", "{}");
    harvest(&mut db.client, "oldgn", "full").unwrap();
    assert_equal_to_source(&mut db.client, "oldgn", &fx, 1);
}

#[test]
fn token_mode_with_feature_collection_and_null_geometries() {
    let fx = FixtureServer::start(FixtureConfig { rows: 1500, null_geometry_every: 7, ..Default::default() }).unwrap();
    let mut db = TestDb::new("token_fc");
    add_source(&mut db.client, "tok", &fx, 2, "token", "{}");
    let run = harvest(&mut db.client, "tok", "full").unwrap();
    assert_eq!(run["status"], "success");
    // FeatureCollections drop rows without geometry (docs/source-api.md §3.2).
    let expected = fx.expected_rows(2).len() as i64;
    assert!(expected < 1500 && expected > 1200, "{expected}");
    assert_eq!(n(&run, "rows_upserted"), expected);
    assert_equal_to_source(&mut db.client, "tok", &fx, 2);
    let polygons: i64 = db
        .client
        .query_one("SELECT count(*) FROM gn2pg.observation WHERE GeometryType(geom) <> 'POINT'", &[])
        .unwrap()
        .get(0);
    assert!(polygons > 0, "non-point geometries must survive the trip");
}

#[test]
fn every_total_filtered_profile_is_harvested_completely() {
    let fx = fixture(1050);
    let mut db = TestDb::new("total_filtered");
    for (i, profile) in [TotalFiltered::Exact, TotalFiltered::Page, TotalFiltered::MinusOffset, TotalFiltered::NoLimit]
        .into_iter()
        .enumerate()
    {
        let export = 10 + i as u32;
        fx.set_export(
            export,
            ExportConfig {
                access: Access::Public,
                shape: Shape::Array,
                view: View::CdNomenclature,
                total_filtered: profile,
                max_page_size: 1000,
            },
        );
        for paging in ["keyset", "offset"] {
            let name = format!("tf{i}{}", &paging[..1]);
            add_source(
                &mut db.client,
                &name,
                &fx,
                export as i32,
                "public",
                &format!(r#"{{"page_size": 100, "paging": "{paging}"}}"#),
            );
            let run = harvest(&mut db.client, &name, "full").unwrap_or_else(|e| panic!("{profile:?}/{paging}: {e}"));
            assert_eq!(n(&run, "rows_upserted"), 1050, "{profile:?}/{paging}");
            assert_equal_to_source(&mut db.client, &name, &fx, export);
            // The next source serves the same uuids: free them (a uuid belongs to one source).
            db.client.execute("SELECT gn2pg_remove_source($1, drop_data => true)", &[&name]).unwrap();
        }
    }
}

#[test]
fn second_full_harvest_leaves_the_same_rows_and_rewrites_nothing() {
    let fx = fixture(1500);
    let mut db = TestDb::new("second_full");
    add_source(&mut db.client, "twice", &fx, 3, "public", "{}");
    harvest(&mut db.client, "twice", "full").unwrap();
    let before: Vec<(i64, String)> = db
        .client
        .query("SELECT id_data, xmin::text FROM gn2pg.observation ORDER BY id_data", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let run = harvest(&mut db.client, "twice", "full").unwrap();
    assert_eq!(n(&run, "rows_upserted"), 0);
    assert_eq!(n(&run, "rows_unchanged"), 1500);
    assert_eq!(n(&run, "rows_deleted"), 0);
    let after: Vec<(i64, String)> = db
        .client
        .query("SELECT id_data, xmin::text FROM gn2pg.observation ORDER BY id_data", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(before, after, "unchanged rows must not be rewritten (same xmin)");
    assert_equal_to_source(&mut db.client, "twice", &fx, 3);
}

#[test]
fn full_harvest_applies_source_inserts_updates_and_deletes() {
    // Keyset runs sweep each page's key range; an offset walk sweeps once it is complete.
    for paging in ["keyset", "offset"] {
        let fx = fixture(3000);
        let mut db = TestDb::new("full_changes");
        add_source(&mut db.client, "chg", &fx, 3, "public", &format!(r#"{{"paging": "{paging}"}}"#));
        harvest(&mut db.client, "chg", "full").unwrap();
        let m = fx.mutate(Mutation { insert: 20, update: 30, delete: 50, ..Default::default() });
        assert_eq!((m.inserted.len(), m.updated.len(), m.deleted.len()), (20, 30, 50));
        let run = harvest(&mut db.client, "chg", "full").unwrap();
        assert_eq!(n(&run, "rows_deleted"), 50, "{paging}: {run}");
        assert_eq!(n(&run, "rows_upserted"), 50, "{paging}");
        assert_equal_to_source(&mut db.client, "chg", &fx, 3);
        // Nothing changed: nothing rewritten, nothing removed.
        let again = harvest(&mut db.client, "chg", "full").unwrap();
        assert_eq!((n(&again, "rows_upserted"), n(&again, "rows_deleted")), (0, 0), "{paging}: {again}");
    }
}

#[test]
fn auto_mode_goes_incremental_and_fetches_only_changes() {
    let fx = fixture(5000);
    let mut db = TestDb::new("incremental");
    add_source(&mut db.client, "inc", &fx, 1, "login", "{}");
    let first = harvest(&mut db.client, "inc", "auto").unwrap();
    assert_eq!(first["mode"], "full");
    let m = fx.mutate(Mutation { insert: 10, update: 40, delete: 25, ..Default::default() });
    let run = harvest(&mut db.client, "inc", "auto").unwrap();
    assert_eq!(run["mode"], "incremental");
    assert_eq!(run["status"], "success");
    assert!(n(&run, "rows_received") < 500, "incremental fetched {} rows", n(&run, "rows_received"));
    assert_eq!(n(&run, "rows_upserted"), (m.inserted.len() + m.updated.len()) as i64);
    assert_eq!(n(&run, "rows_deleted"), 25, "deletions come from /synthese/log");
    assert_equal_to_source(&mut db.client, "inc", &fx, 1);
}

/// A failed run: the caller got `class` (SQLSTATE, reason: README, "Errors") and an error naming
/// the source and the cause, and the run log recorded the same.
fn assert_failed_run(db: &mut Client, source: &str, failure: &(String, String), needles: &[&str], class: (&str, &str)) {
    let (code, err) = failure;
    assert_eq!(code, class.0, "SQLSTATE of {err}");
    assert!(err.starts_with(&format!("gn2pg: source \"{source}\": ")), "error must name the source first: {err}");
    assert!(err.contains(&format!("(reason {})", class.1)), "the DETAIL gives the reason: {err}");
    let (sqlstate, reason) = last_run_class(db, source);
    assert_eq!((sqlstate.as_deref(), reason.as_deref()), (Some(class.0), Some(class.1)), "run_log of {err}");
    for n in needles {
        assert!(err.contains(n), "error must mention {n:?}: {err}");
    }
    let runs = run_rows(db, source);
    let last = runs.last().expect("a failed run leaves a run_log row");
    assert_eq!(last.1, "failed", "{runs:?}");
    let logged = last.2.clone().unwrap_or_default();
    for n in needles {
        assert!(logged.contains(n), "run_log.error must mention {n:?}: {logged}");
    }
}

#[test]
fn unreachable_source_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut db = TestDb::new("unreachable");
    db.client
        .execute(
            "SELECT gn2pg_add_source('down', $1, 1, options => '{\"max_retries\": 1}')",
            &[&format!("http://127.0.0.1:{port}/geonature")],
        )
        .unwrap();
    let failure = harvest_failure(&mut db.client, "down", "auto");
    let needles = ["cannot connect", &format!("127.0.0.1:{port}")];
    assert_failed_run(&mut db.client, "down", &failure, &needles, ("08001", "http"));
}

#[test]
fn bad_credentials_fail_without_leaking_them() {
    let fx = fixture(100);
    let mut db = TestDb::new("bad_login");
    db.client
        .execute("SELECT gn2pg_add_source('badpw', $1, 1, 'login', 'harvester', 'wrong-pass-xyz')", &[&fx.base_url()])
        .unwrap();
    let failure = harvest_failure(&mut db.client, "badpw", "auto");
    assert_failed_run(&mut db.client, "badpw", &failure, &["login refused", "401"], ("28000", "auth"));
    assert!(!failure.1.contains("wrong-pass-xyz"));
    let leaks: i64 = db
        .client
        .query_one("SELECT count(*) FROM gn2pg.run_log WHERE error LIKE '%wrong-pass-xyz%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(leaks, 0);
}

#[test]
fn wrong_token_and_unknown_export_fail_clearly() {
    let fx = fixture(100);
    let mut db = TestDb::new("bad_export");
    db.client
        .execute(
            "SELECT gn2pg_add_source('badtok', $1, 2, token => 'deadbeefdeadbeefdeadbeefdeadbeef')",
            &[&fx.base_url()],
        )
        .unwrap();
    let failure = harvest_failure(&mut db.client, "badtok", "auto");
    assert_failed_run(&mut db.client, "badtok", &failure, &["denied", "403"], ("28000", "auth"));
    assert!(!failure.1.contains("deadbeef"), "the token must not appear: {}", failure.1);

    db.client.execute("SELECT gn2pg_add_source('noexport', $1, 999)", &[&fx.base_url()]).unwrap();
    let failure = harvest_failure(&mut db.client, "noexport", "auto");
    assert_failed_run(&mut db.client, "noexport", &failure, &["not found", "404", "/api/999"], ("22023", "config"));
}

#[test]
fn non_json_answer_fails_and_keeps_loaded_rows() {
    let fx = fixture(1000);
    let mut db = TestDb::new("html");
    add_source(&mut db.client, "proxy", &fx, 3, "public", "{}");
    harvest(&mut db.client, "proxy", "full").unwrap();
    fx.faults(Faults { html_ok_next: 1000, ..Default::default() });
    let failure = harvest_failure(&mut db.client, "proxy", "full");
    let needles = ["did not answer JSON", "text/html"];
    assert_failed_run(&mut db.client, "proxy", &failure, &needles, ("22000", "protocol"));
    let kept: i64 = db.client.query_one("SELECT count(*) FROM gn2pg.observation", &[]).unwrap().get(0);
    assert_eq!(kept, 1000, "a failed run loses nothing already loaded");
}

#[test]
fn a_run_that_fails_mid_way_keeps_committed_pages() {
    let fx = fixture(3000);
    let mut db = TestDb::new("midway");
    add_source(&mut db.client, "mid", &fx, 3, "public", r#"{"max_retries": 0}"#);
    // Every second data request fails: page 1 loads, page 2 fails (no retries allowed).
    fx.faults(Faults { error_every: 2, error_status: 500, ..Default::default() });
    let failure = harvest_failure(&mut db.client, "mid", "full");
    assert_failed_run(&mut db.client, "mid", &failure, &["HTTP 500"], ("08000", "http"));
    let (pages, kept): (i32, i64) = {
        let r = db
            .client
            .query_one("SELECT pages_done, (SELECT count(*) FROM gn2pg.observation) FROM gn2pg.run_log", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((pages, kept), (1, 1000));
}

#[test]
fn a_resumed_offset_walk_leaves_deletions_to_the_next_complete_one() {
    let fx = fixture(3000);
    let mut db = TestDb::new("offset_resume");
    add_source(&mut db.client, "off", &fx, 3, "public", r#"{"paging": "offset", "max_retries": 0}"#);
    harvest(&mut db.client, "off", "full").unwrap();
    // A walk interrupted after its first page, then resumed after a deletion at the source:
    // the resumed walk never saw page 0, so it cannot tell which keys are gone.
    fx.faults(Faults { error_every: 2, error_status: 500, ..Default::default() });
    harvest(&mut db.client, "off", "full").unwrap_err();
    fx.faults(Faults::default());
    fx.mutate(Mutation { delete: 10, ..Default::default() });
    let resumed = harvest(&mut db.client, "off", "full").unwrap();
    assert!(resumed["resumed_from"].is_i64(), "{resumed}");
    assert_eq!(n(&resumed, "rows_deleted"), 0, "{resumed}");
    let complete = harvest(&mut db.client, "off", "full").unwrap();
    assert_eq!(n(&complete, "rows_deleted"), 10, "{complete}");
    assert_equal_to_source(&mut db.client, "off", &fx, 3);
}

#[test]
fn a_run_that_cannot_start_says_why() {
    let fx = fixture(10);
    let mut db = TestDb::new("cannot_start");
    add_source(&mut db.client, "off", &fx, 3, "public", "{}");
    db.client.batch_execute("UPDATE gn2pg.source SET enabled = false WHERE name = 'off'").unwrap();
    let failure = harvest_failure(&mut db.client, "off", "auto");
    assert_failed_run(&mut db.client, "off", &failure, &["the source is disabled"], ("55000", "config"));
    // Options a registration refuses, written behind gn2pg_add_source's back.
    db.client
        .batch_execute(
            "UPDATE gn2pg.source SET enabled = true, options = '{\"max_page_bytes\": 1000000000}' WHERE name = 'off'",
        )
        .unwrap();
    let failure = harvest_failure(&mut db.client, "off", "auto");
    assert_failed_run(&mut db.client, "off", &failure, &["max_page_bytes"], ("22023", "config"));
}

#[test]
fn bad_registrations_are_refused_with_the_reason() {
    let mut db = TestDb::new("registration");
    let cases = [
        ("SELECT gn2pg_add_source('Bad Name', 'http://h/gn', 1)", "invalid source name"),
        ("SELECT gn2pg_add_source('s', 'ftp://h/gn', 1)", "http or https"),
        ("SELECT gn2pg_add_source('s', 'not a url', 1)", "not a valid URL"),
        ("SELECT gn2pg_add_source('s', 'http://h/gn', 0)", "export_id must be positive"),
        ("SELECT gn2pg_add_source('s', 'http://h/gn', 1, 'login', 'me')", "needs login and password"),
        ("SELECT gn2pg_add_source('s', 'http://h/gn', 1, 'token')", "needs token"),
        ("SELECT gn2pg_add_source('s', 'http://h/gn', 1, options => '{\"pagesize\": 10}')", "unknown option"),
        ("SELECT gn2pg_add_source('s', 'http://h/gn', 1, options => '{\"paging\": \"cursor\"}')", "keyset"),
        ("SELECT gn2pg_harvest('nosuch')", "does not exist"),
        ("SELECT gn2pg_harvest('nosuch', 'sometimes')", "does not exist"),
    ];
    for (sql, needle) in cases {
        let err = db.client.batch_execute(sql).map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
        assert!(err.contains(needle), "{sql}: expected {needle:?}, got {err:?}");
    }
    let n: i64 = db.client.query_one("SELECT count(*) FROM gn2pg.source", &[]).unwrap().get(0);
    assert_eq!(n, 0);
}

#[test]
fn add_source_updates_in_place_and_remove_keeps_data_unless_asked() {
    let fx = fixture(200);
    let mut db = TestDb::new("registry");
    let id1: i32 = db.client.query_one("SELECT gn2pg_add_source('r', $1, 3)", &[&fx.base_url()]).unwrap().get(0);
    let id2: i32 = db
        .client
        .query_one("SELECT gn2pg_add_source('r', $1, 3, options => '{\"page_size\": 50}')", &[&fx.base_url()])
        .unwrap()
        .get(0);
    assert_eq!(id1, id2);
    let url: String = db.client.query_one("SELECT url FROM gn2pg.source WHERE name = 'r'", &[]).unwrap().get(0);
    assert!(url.ends_with("/geonature/api"), "{url}");
    let run = harvest(&mut db.client, "r", "full").unwrap();
    assert_eq!(n(&run, "pages_done"), 5, "page_size 50 over 200 rows: 4 full pages and an empty one");
    let removed: bool = db.client.query_one("SELECT gn2pg_remove_source('r')", &[]).unwrap().get(0);
    assert!(removed);
    let kept: i64 = db.client.query_one("SELECT count(*) FROM gn2pg.observation", &[]).unwrap().get(0);
    assert_eq!(kept, 200);
    db.client.query_one("SELECT gn2pg_add_source('r', $1, 3)", &[&fx.base_url()]).unwrap();
    db.client.query_one("SELECT gn2pg_remove_source('r', drop_data => true)", &[]).unwrap();
    let kept: i64 = db.client.query_one("SELECT count(*) FROM gn2pg.observation", &[]).unwrap().get(0);
    assert_eq!(kept, 0);
}
