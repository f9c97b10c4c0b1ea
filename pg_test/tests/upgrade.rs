//! `ALTER EXTENSION gn2pg UPDATE` from every released version (sql/released/) gives exactly the
//! objects of a fresh install, and a database left at an older version says what to do.

use gn2pg_pg_test::checks::{add_source, harvest, n};
use gn2pg_pg_test::db::{error_text, Client, TestDb};
use gn2pg_pg_test::fixture::{FixtureConfig, FixtureServer};

/// Everything about the extension's objects that an upgrade must reproduce, one line each.
fn catalog(db: &mut Client) -> Vec<String> {
    let queries = [
        // Membership: every object the extension owns.
        "SELECT 'member ' || pg_describe_object(classid, objid, objsubid)
           FROM pg_depend WHERE refobjid = (SELECT oid FROM pg_extension WHERE extname = 'gn2pg') AND deptype = 'e'",
        // Columns, with types, defaults, nullability, compression and comments.
        "SELECT format('column %s.%s #%s %s notnull=%s default=%s compression=%s comment=%s', c.relname, a.attname,
                       a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
                       a.attcompression, col_description(c.oid, a.attnum))
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace s ON s.oid = c.relnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE s.nspname = 'gn2pg' AND a.attnum > 0 AND NOT a.attisdropped",
        "SELECT format('relation %s kind=%s acl=%s comment=%s', c.relname, c.relkind, c.relacl, obj_description(c.oid, 'pg_class'))
           FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = 'gn2pg'",
        "SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'gn2pg'",
        "SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid))
           FROM pg_constraint WHERE connamespace = 'gn2pg'::regnamespace",
        "SELECT format('function %s acl=%s comment=%s %s', p.oid::regprocedure, p.proacl, obj_description(p.oid, 'pg_proc'),
                       pg_get_functiondef(p.oid))
           FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace
          WHERE p.prokind <> 'a' AND (s.nspname = 'gn2pg' OR p.proname LIKE 'gn2pg\\_%')",
        "SELECT format('view %s %s', viewname, definition) FROM pg_views WHERE schemaname = 'gn2pg'",
        "SELECT format('trigger %s', pg_get_triggerdef(t.oid)) FROM pg_trigger t
           JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = 'gn2pg'::regnamespace AND NOT t.tgisinternal",
        "SELECT format('config %s', unnest(extconfig)::regclass) FROM pg_extension WHERE extname = 'gn2pg'",
    ];
    let mut lines: Vec<String> = Vec::new();
    for q in queries {
        for r in db.query(q, &[]).unwrap() {
            lines.push(r.get(0));
        }
    }
    lines.sort();
    lines
}

fn released_versions(db: &mut Client) -> Vec<String> {
    db.query(
        "SELECT version FROM pg_available_extension_versions
          WHERE name = 'gn2pg' AND version <> (SELECT default_version FROM pg_available_extensions WHERE name = 'gn2pg')
          ORDER BY string_to_array(version, '.')::int[]",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn updating_from_every_released_version_gives_a_fresh_install() {
    let mut fresh = TestDb::empty("fresh", "");
    fresh.client.batch_execute("CREATE EXTENSION gn2pg CASCADE").unwrap();
    let expected = catalog(&mut fresh.client);
    assert!(expected.iter().any(|l| l.contains("content_hash")), "the catalog query sees the columns");
    assert!(
        expected.iter().any(|l| l.starts_with("function gn2pg_harvest(text,text)") && l.contains("comment=Harvests")),
        "the catalog query sees the comments of functions"
    );
    let versions = released_versions(&mut fresh.client);
    assert!(versions.contains(&"0.1.0".to_string()), "released scripts are installed: {versions:?}");
    for v in versions {
        let mut old = TestDb::empty("old", "");
        old.client.batch_execute(&format!("CREATE EXTENSION gn2pg VERSION '{v}' CASCADE")).unwrap();
        old.client.batch_execute("ALTER EXTENSION gn2pg UPDATE").unwrap();
        let got = catalog(&mut old.client);
        let missing: Vec<&String> = expected.iter().filter(|l| !got.contains(l)).collect();
        let extra: Vec<&String> = got.iter().filter(|l| !expected.contains(l)).collect();
        assert!(missing.is_empty() && extra.is_empty(), "update from {v}: missing {missing:#?}\nextra {extra:#?}");
    }
}

/// Every function, table, view and column of the extension says what it is in `\df+` and `\d+`.
/// A new object without a COMMENT fails here, by name: add the COMMENT next to its definition
/// (sql/*.sql; sql/comments.sql for functions pgrx generates) and in the upgrade script.
#[test]
fn every_function_table_view_and_column_has_a_comment() {
    let mut db = TestDb::empty("comments", "");
    db.client.batch_execute("CREATE EXTENSION gn2pg CASCADE").unwrap();
    let missing: Vec<String> = db
        .client
        .query(
            "WITH member AS (
                 SELECT d.classid, d.objid FROM pg_depend d
                  WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                    AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'gn2pg'))
             SELECT 'function ' || p.oid::regprocedure::text FROM member m JOIN pg_proc p ON p.oid = m.objid
              WHERE m.classid = 'pg_proc'::regclass AND obj_description(p.oid, 'pg_proc') IS NULL
             UNION ALL
             SELECT 'relation ' || c.oid::regclass::text FROM member m JOIN pg_class c ON c.oid = m.objid
              WHERE m.classid = 'pg_class'::regclass AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
                AND obj_description(c.oid, 'pg_class') IS NULL
             UNION ALL
             SELECT 'column ' || c.oid::regclass::text || '.' || a.attname FROM member m JOIN pg_class c ON c.oid = m.objid
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              WHERE m.classid = 'pg_class'::regclass AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
                AND col_description(c.oid, a.attnum) IS NULL
             ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let counted: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND c.relkind IN ('r', 'v')
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'gn2pg')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(counted > 200, "the query sees the extension's columns: {counted}");
    assert!(missing.is_empty(), "{} objects of gn2pg have no COMMENT:\n{}", missing.len(), missing.join("\n"));
}

#[test]
fn an_old_schema_with_the_new_library_says_to_update_then_rows_are_rehashed_once() {
    let fx = FixtureServer::start(FixtureConfig { rows: 1500, ..Default::default() }).unwrap();
    let mut db = TestDb::empty("at_010", "");
    db.client.batch_execute("CREATE EXTENSION gn2pg VERSION '0.1.0' CASCADE").unwrap();
    let e = db
        .client
        .execute("SELECT gn2pg_add_source('pub', $1, 3)", &[&fx.base_url()])
        .map(|_| String::new())
        .unwrap_or_else(|e| error_text(&e));
    assert!(e.contains("this database has gn2pg 0.1.0: run ALTER EXTENSION gn2pg UPDATE"), "{e}");
    // A source registered when 0.1.0 was current.
    db.client
        .execute(
            "INSERT INTO gn2pg.source (name, url, export_id, auth) VALUES ('pub', $1 || '/api', 3, 'public')",
            &[&fx.base_url()],
        )
        .unwrap();
    let e = harvest(&mut db.client, "pub", "full").unwrap_err();
    assert!(e.contains("this database has gn2pg 0.1.0: run ALTER EXTENSION gn2pg UPDATE"), "{e}");

    // Rows harvested by 0.1.0 carry no content hash.
    db.client.batch_execute("ALTER EXTENSION gn2pg UPDATE").unwrap();
    let first = harvest(&mut db.client, "pub", "full").unwrap();
    assert_eq!(n(&first, "rows_upserted"), 1500);
    db.client.batch_execute("UPDATE gn2pg.observation SET content_hash = NULL WHERE id_data % 3 = 0").unwrap();
    let again = harvest(&mut db.client, "pub", "full").unwrap();
    assert_eq!((n(&again, "rows_upserted"), n(&again, "rows_unchanged")), (500, 1000), "{again}");
    let third = harvest(&mut db.client, "pub", "full").unwrap();
    assert_eq!((n(&third, "rows_upserted"), n(&third, "rows_unchanged")), (0, 1500), "{third}");
    let unhashed: i64 =
        db.client.query_one("SELECT count(*) FROM gn2pg.observation WHERE content_hash IS NULL", &[]).unwrap().get(0);
    assert_eq!(unhashed, 0);
}

#[test]
fn a_database_that_is_not_utf8_is_refused_at_create_extension() {
    let mut db = TestDb::empty("latin1", "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
    let e = db.client.batch_execute("CREATE EXTENSION gn2pg CASCADE").map_err(|e| error_text(&e)).unwrap_err();
    assert!(e.contains("gn2pg needs a database with UTF8 encoding, this one is LATIN1"), "{e}");
}

#[test]
fn duplicate_uuids_left_by_an_old_version_keep_the_uuid_index_plain() {
    let fx = FixtureServer::start(FixtureConfig { rows: 1200, ..Default::default() }).unwrap();
    let mut db = TestDb::empty("dup_uuids", "");
    db.client.batch_execute("CREATE EXTENSION gn2pg VERSION '0.1.0' CASCADE").unwrap();
    // What two sources harvested at once could leave under 0.1.0.
    db.client
        .batch_execute(
            "INSERT INTO gn2pg.observation (source, id_data, uuid, item) VALUES
               ('x', 1, '99999999-9999-4999-8999-999999999999', '{}'),
               ('y', 1, '99999999-9999-4999-8999-999999999999', '{}')",
        )
        .unwrap();
    db.client.batch_execute("ALTER EXTENSION gn2pg UPDATE").unwrap();
    let unique: bool = db
        .client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'observation_uuid_key')", &[])
        .unwrap()
        .get(0);
    assert!(!unique, "the constraint would have failed the update");
    // Harvests still refuse a uuid stored under another key, by looking it up.
    let first = fx.expected_rows(3)[0].uuid.clone();
    db.client
        .execute(
            "INSERT INTO gn2pg.observation (source, id_data, uuid, item) VALUES ('z', 7, $1::text::uuid, '{}')",
            &[&first],
        )
        .unwrap();
    add_source(&mut db.client, "pub", &fx, 3, "public", "{}");
    let run = harvest(&mut db.client, "pub", "full").unwrap();
    assert_eq!((n(&run, "rows_upserted"), n(&run, "rows_failed")), (1199, 1), "{run}");
}

/// 0.2.0 recorded a start refused because its source was busy as a failed run, told apart only
/// by its text. The update gives such rows their reason once (busy, 55006): flow_status then
/// skips them by reason, and nothing reads the text any more.
#[test]
fn busy_refusals_recorded_by_0_2_0_get_their_reason() {
    let mut db = TestDb::empty("busy_020", "");
    db.client.batch_execute("CREATE EXTENSION gn2pg VERSION '0.2.0' CASCADE").unwrap();
    db.client
        .batch_execute(
            "INSERT INTO gn2pg.source (name, url, export_id, auth) VALUES ('p', 'http://127.0.0.1:9/api', 3, 'public');
             INSERT INTO gn2pg.run_log (id, source, mode, status, finished_at, error) VALUES
               (1, 'p', 'full', 'success', now(), NULL),
               (2, 'p', 'full', 'failed', now(), 'source \"p\" is already being harvested by run 1 (pid 4242)')",
        )
        .unwrap();
    db.client.batch_execute("ALTER EXTENSION gn2pg UPDATE").unwrap();
    let classes: Vec<(i64, Option<String>, Option<String>)> = db
        .client
        .query("SELECT id, sqlstate, reason FROM gn2pg.run_log ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(classes, vec![(1, None, None), (2, Some("55006".into()), Some("busy".into()))]);
    let r = db
        .client
        .query_one("SELECT last_run_id, last_run_status, last_run_reason, health FROM gn2pg.flow_status", &[])
        .unwrap();
    let flow: (Option<i64>, Option<String>, Option<String>, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!(flow, (Some(1), Some("success".into()), None, "ok".into()), "the refusal is not the last run");
    let left: i64 =
        db.client.query_one("SELECT count(*) FROM pg_proc WHERE proname = '_busy_refusal'", &[]).unwrap().get(0);
    assert_eq!(left, 0, "no function matches message text any more");
}
