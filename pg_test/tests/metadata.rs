//! CA/JDD metadata and mapping (issue 4): metadata from every export shape lands in
//! gn2pg.metadata with its latest content, rows carry the destination CA/JDD chosen by the
//! mappings, and remapping rewrites harvested rows without asking the source anything.
//!
//! The fixture has 3 acquisition frameworks (CA) and 10 datasets (JDD): row `id` belongs to
//! JDD `id % 10`, JDD `j` to CA `j % 3`. Its export 4 (one row per CA with nested datasets)
//! tells the tests what every CA and JDD looks like.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use gn2pg_pg_test::db::{error_text, Client, TestDb};
use gn2pg_pg_test::fixture::{ExpectedRow, Faults, FixtureConfig, FixtureServer};
use serde_json::Value;

fn fixture(rows: u64) -> FixtureServer {
    FixtureServer::start(FixtureConfig { rows, ..Default::default() }).expect("fixture server starts")
}

fn add_source(db: &mut Client, name: &str, fx: &FixtureServer, export: i32, auth: &str, options: &str) {
    let cfg = FixtureConfig::default();
    let (login, password): (Option<&str>, Option<&str>) = match auth {
        "login" => (Some(&cfg.login), Some(&cfg.password)),
        _ => (None, None),
    };
    db.execute(
        "SELECT gn2pg_add_source(name => $1, url => $2, export_id => $3, auth => $4,
                                 login => $5, password => $6, options => $7::text::jsonb)",
        &[&name, &fx.base_url(), &export, &auth, &login, &password, &options],
    )
    .unwrap();
}

fn harvest(db: &mut Client, source: &str, mode: &str) -> Result<Value, String> {
    db.query_one("SELECT gn2pg_harvest($1, $2)::text", &[&source, &mode])
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .map_err(|e| error_text(&e))
}

fn n(v: &Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

/// One CA or JDD as the fixture describes it.
#[derive(Debug, Clone, PartialEq)]
struct Meta {
    name: String,
    /// The CA of a JDD.
    parent: Option<String>,
    /// `ca_data` / `jdd_data`.
    item: Value,
}

/// What the source knows, from its metadata export (4): CA uuids in `id_ca` order, and
/// every CA and JDD keyed by (level, uuid).
struct Catalog {
    cas: Vec<String>,
    /// JDD uuids of each CA, in the order of the CA's `datasets`.
    jdds_of: Vec<Vec<String>>,
    all: BTreeMap<(String, String), Meta>,
}

fn catalog(fx: &FixtureServer) -> Catalog {
    let mut c = Catalog { cas: vec![], jdds_of: vec![], all: BTreeMap::new() };
    for row in fx.expected_rows(4) {
        let it = &row.item;
        let ca = it["ca_uuid"].as_str().unwrap().to_string();
        c.all.insert(
            ("ca".into(), ca.clone()),
            Meta { name: it["ca_nom"].as_str().unwrap().into(), parent: None, item: it["ca_data"].clone() },
        );
        let mut jdds = vec![];
        for d in it["datasets"].as_array().unwrap() {
            let j = d["jdd_uuid"].as_str().unwrap().to_string();
            c.all.insert(
                ("jdd".into(), j.clone()),
                Meta {
                    name: d["jdd_nom"].as_str().unwrap().into(),
                    parent: Some(ca.clone()),
                    item: d["jdd_data"].clone(),
                },
            );
            jdds.push(j);
        }
        c.cas.push(ca);
        c.jdds_of.push(jdds);
    }
    assert_eq!((c.cas.len(), c.all.len()), (3, 13), "the fixture has 3 CA and 10 JDD");
    c
}

/// A gn2pg.metadata row: (name, parent, item, xmin).
type MetaRow = (Option<String>, Option<String>, Option<Value>, String);

/// gn2pg.metadata of a source, keyed by (level, uuid).
fn metadata(db: &mut Client, source: &str) -> BTreeMap<(String, String), MetaRow> {
    db.query(
        "SELECT level, uuid::text, name, parent_uuid::text, item::text, xmin::text FROM gn2pg.metadata WHERE source = $1",
        &[&source],
    )
    .unwrap()
    .iter()
    .map(|r| {
        let item: Option<String> = r.get(4);
        (
            (r.get(0), r.get(1)),
            (r.get(2), r.get(3), item.map(|s| serde_json::from_str(&s).unwrap()), r.get(5)),
        )
    })
    .collect()
}

/// Asserts the metadata of a source: every CA/JDD of `expected` with its name and parent, and
/// the nested object when `with_items` (NULL otherwise: flat columns carry no object).
fn assert_metadata(
    db: &mut Client,
    source: &str,
    cat: &Catalog,
    expected: &BTreeSet<(String, String)>,
    with_items: bool,
) {
    let got = metadata(db, source);
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), *expected, "one row per (source, level, uuid)");
    for (k, (name, parent, item, _)) in &got {
        let want = &cat.all[k];
        assert_eq!(name.as_deref(), Some(want.name.as_str()), "{k:?}");
        assert_eq!(parent, &want.parent, "{k:?}");
        if with_items {
            assert_eq!(item.as_ref(), Some(&want.item), "{k:?}: the nested object");
        } else {
            assert_eq!(item, &None, "{k:?}: flat columns give no object");
        }
    }
}

/// CA/JDD pairs the rows of an export use.
fn seen_in_rows(rows: &[ExpectedRow]) -> BTreeSet<(String, String)> {
    rows.iter().flat_map(|r| [("ca".to_string(), r.ca_uuid.clone()), ("jdd".to_string(), r.jdd_uuid.clone())]).collect()
}

/// Checks every local row of a source against the export: the item as received minus the
/// nested objects, `source_*` as received, and `ca_uuid`/`jdd_uuid` as `dest` says.
fn assert_rows(db: &mut Client, source: &str, exp: &[ExpectedRow], dest: &dyn Fn(&str, &str) -> (String, String)) {
    let ids: Vec<i64> = exp.iter().map(|r| r.id_synthese).collect();
    let items: Vec<String> = exp.iter().map(|r| r.item.to_string()).collect();
    let cas: Vec<String> = exp.iter().map(|r| r.ca_uuid.clone()).collect();
    let jdds: Vec<String> = exp.iter().map(|r| r.jdd_uuid.clone()).collect();
    let (dca, djdd): (Vec<String>, Vec<String>) = exp.iter().map(|r| dest(&r.ca_uuid, &r.jdd_uuid)).unzip();
    let row = db
        .query_one(
            "WITH e AS (SELECT id, item, ca::uuid, jdd::uuid, dca::uuid, djdd::uuid
                          FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
                               AS e(id, item, ca, jdd, dca, djdd)),
                  o AS (SELECT * FROM gn2pg.observation WHERE source = $1),
                  bad AS (
                    SELECT coalesce(e.id, o.id_data) AS id,
                           CASE WHEN o.id_data IS NULL THEN 'missing locally'
                                WHEN e.id IS NULL THEN 'extra locally'
                                WHEN o.item ? 'ca_data' OR o.item ? 'jdd_data' THEN 'nested metadata kept in item'
                                WHEN o.item IS DISTINCT FROM e.item::jsonb - '{ca_data,jdd_data}'::text[] THEN 'item differs'
                                WHEN o.source_ca_uuid IS DISTINCT FROM e.ca THEN 'source_ca_uuid ' || o.source_ca_uuid
                                WHEN o.source_jdd_uuid IS DISTINCT FROM e.jdd THEN 'source_jdd_uuid ' || o.source_jdd_uuid
                                WHEN o.ca_uuid IS DISTINCT FROM e.dca THEN format('ca_uuid %s, expected %s', o.ca_uuid, e.dca)
                                WHEN o.jdd_uuid IS DISTINCT FROM e.djdd THEN format('jdd_uuid %s, expected %s', o.jdd_uuid, e.djdd)
                           END AS why
                      FROM e FULL JOIN o ON o.id_data = e.id)
             SELECT (SELECT count(*) FROM bad WHERE why IS NOT NULL),
                    (SELECT string_agg(id || ': ' || why, ', ') FROM (SELECT * FROM bad WHERE why IS NOT NULL ORDER BY id LIMIT 5) x)",
            &[&source, &ids, &items, &cas, &jdds, &dca, &djdd],
        )
        .unwrap();
    let bad: i64 = row.get(0);
    let sample: Option<String> = row.get(1);
    assert!(!exp.is_empty());
    assert_eq!(bad, 0, "source {source}: {bad} of {} rows differ: {sample:?}", exp.len());
}

fn unmapped(ca: &str, jdd: &str) -> (String, String) {
    (ca.to_string(), jdd.to_string())
}

/// The metadata_mapping view of a source, keyed by (level, uuid): (rows, mapped_by, target CA, target JDD).
#[allow(clippy::type_complexity)]
fn mapping_view(
    db: &mut Client,
    source: &str,
) -> BTreeMap<(String, String), (i64, Option<String>, Option<String>, Option<String>)> {
    db.query(
        "SELECT level, source_uuid::text, rows, mapped, mapped_by, target_ca_uuid::text, target_jdd_uuid::text
           FROM gn2pg.metadata_mapping WHERE source = $1",
        &[&source],
    )
    .unwrap()
    .iter()
    .map(|r| {
        let mapped: bool = r.get(3);
        let by: Option<String> = r.get(4);
        assert_eq!(mapped, by.is_some());
        ((r.get(0), r.get(1)), (r.get(2), by, r.get(5), r.get(6)))
    })
    .collect()
}

const T_ALL: &str = "a0000000-0000-4000-8000-000000000001";
const T_CA1: &str = "a0000000-0000-4000-8000-000000000002";
const T_J2: &str = "b0000000-0000-4000-8000-000000000003";
const T_J2_CA: &str = "a0000000-0000-4000-8000-000000000004";
const T_J4: &str = "b0000000-0000-4000-8000-000000000005";

#[test]
fn flat_columns_fill_metadata_and_keep_the_rows_as_received() {
    let fx = fixture(1200);
    let cat = catalog(&fx);
    let mut db = TestDb::new("meta_flat");
    add_source(&mut db.client, "flat", &fx, 1, "login", "{}");
    harvest(&mut db.client, "flat", "full").unwrap();
    let exp = fx.expected_rows(1);
    assert_metadata(&mut db.client, "flat", &cat, &seen_in_rows(&exp), false);
    assert_rows(&mut db.client, "flat", &exp, &unmapped);
    // Flat views keep ca_nom, jdd_nom, jdd_acteurs in the item, as received.
    let flat =
        count(&mut db.client, "SELECT count(*) FROM gn2pg.observation WHERE item ? 'ca_nom' AND item ? 'jdd_acteurs'");
    assert_eq!(flat, 1200);
}

#[test]
fn nested_metadata_is_stored_once_not_in_every_row() {
    let fx = fixture(2500);
    let cat = catalog(&fx);
    let mut db = TestDb::new("meta_nested");
    for (name, export) in [("nested", 3), ("nestedfc", 5)] {
        add_source(&mut db.client, name, &fx, export, "public", "{}");
        harvest(&mut db.client, name, "full").unwrap();
        let exp = fx.expected_rows(export as u32);
        assert_metadata(&mut db.client, name, &cat, &seen_in_rows(&exp), true);
        assert_rows(&mut db.client, name, &exp, &unmapped);

        // A second run rewrites neither rows nor metadata (same xmin).
        let before = metadata(&mut db.client, name);
        let run = harvest(&mut db.client, name, "full").unwrap();
        assert_eq!(n(&run, "rows_upserted"), 0, "{name}");
        assert_eq!(before, metadata(&mut db.client, name), "{name}: unchanged metadata is not rewritten");
        // The next export serves the same observation uuids (a uuid belongs to one source).
        db.client.execute("SELECT gn2pg_remove_source($1, drop_data => true)", &[&name]).unwrap();
    }
}

#[test]
fn metadata_export_gives_every_ca_and_jdd_in_full_at_each_run() {
    // 5 rows use JDDs 1..5 only: the metadata export still lists all of them.
    let fx = fixture(5);
    let cat = catalog(&fx);
    let mut db = TestDb::new("meta_export");
    add_source(&mut db.client, "withmeta", &fx, 1, "login", r#"{"metadata_export_id": 4}"#);
    let run = harvest(&mut db.client, "withmeta", "auto").unwrap();
    assert_eq!((n(&run, "rows_upserted"), n(&run, "rows_failed")), (5, 0));
    let all: BTreeSet<_> = cat.all.keys().cloned().collect();
    // Flat data rows come after the metadata export: their names do not erase its objects.
    assert_metadata(&mut db.client, "withmeta", &cat, &all, true);
    assert_rows(&mut db.client, "withmeta", &fx.expected_rows(1), &unmapped);
    let view = mapping_view(&mut db.client, "withmeta");
    assert_eq!(view.len(), 13);
    assert_eq!(
        view.values().filter(|v| v.0 == 0).count(),
        13 - seen_in_rows(&fx.expected_rows(1)).len(),
        "CA/JDD without rows are listed with 0 rows"
    );

    // Re-read at every run, rewritten only if changed: a CA renamed at the source is updated.
    let before = metadata(&mut db.client, "withmeta");
    fx.reset_stats();
    let run = harvest(&mut db.client, "withmeta", "auto").unwrap();
    assert_eq!(run["mode"], "incremental");
    assert!(fx.stats().data_requests >= 2, "the metadata export is read again: {:?}", fx.stats());
    assert_eq!(before, metadata(&mut db.client, "withmeta"));
    fx.rename_ca(2, "Inventaire renommé à la source");
    harvest(&mut db.client, "withmeta", "auto").unwrap();
    let after = metadata(&mut db.client, "withmeta");
    let ca2 = &after[&("ca".to_string(), cat.cas[2].clone())];
    assert_eq!(ca2.0.as_deref(), Some("Inventaire renommé à la source"));
    assert_eq!(ca2.2.as_ref().unwrap()["name"], "Inventaire renommé à la source");
    let changed: Vec<_> = after.iter().filter(|(k, v)| before[*k].3 != v.3).map(|(k, _)| k.clone()).collect();
    assert_eq!(changed, vec![("ca".to_string(), cat.cas[2].clone())], "only the renamed CA is rewritten");

    // A wrong metadata export fails the run and says which export.
    add_source(&mut db.client, "withmeta", &fx, 1, "login", r#"{"metadata_export_id": 99}"#);
    let err = harvest(&mut db.client, "withmeta", "auto").unwrap_err();
    assert!(err.contains("metadata export 99") && err.contains("404"), "{err}");
}

#[test]
fn a_ca_renamed_at_the_source_is_updated_on_the_next_incremental_run() {
    let fx = fixture(3000);
    let cat = catalog(&fx);
    for (export, auth) in [(3, "public"), (1, "login")] {
        let mut db = TestDb::new("meta_rename");
        add_source(&mut db.client, "ren", &fx, export, auth, "{}");
        harvest(&mut db.client, "ren", "auto").unwrap();
        let before = metadata(&mut db.client, "ren");
        let new_name = format!("Cadre renommé (export {export})");
        fx.rename_ca(1, &new_name);
        let run = harvest(&mut db.client, "ren", "auto").unwrap();
        assert_eq!(run["mode"], "incremental");
        assert!(n(&run, "rows_received") < 1500, "only the renamed CA's rows come back: {run}");
        let after = metadata(&mut db.client, "ren");
        let key = ("ca".to_string(), cat.cas[1].clone());
        assert_eq!(after[&key].0.as_deref(), Some(new_name.as_str()), "export {export}");
        if export == 3 {
            assert_eq!(after[&key].2.as_ref().unwrap()["name"], new_name.as_str());
        }
        for (k, v) in &after {
            if *k != key {
                assert_eq!(before[k], *v, "export {export}: {k:?} did not change and is not rewritten");
            }
        }
        assert_rows(&mut db.client, "ren", &fx.expected_rows(export as u32), &unmapped);
    }
}

#[test]
fn ca_and_jdd_mappings_apply_with_jdd_first_then_ca_then_source() {
    let fx = fixture(2000);
    let cat = catalog(&fx);
    let mut db = TestDb::new("meta_mapping");
    add_source(&mut db.client, "map", &fx, 3, "public", "{}");
    // CA 1 as a whole; JDD 2 (of CA 2) with its own target CA; JDD 4 (of CA 1) without one.
    let (ca1, j2, j4) = (cat.cas[1].clone(), cat.jdds_of[2][0].clone(), cat.jdds_of[1][1].clone());
    assert_eq!(cat.all[&("jdd".into(), j4.clone())].parent.as_deref(), Some(ca1.as_str()));
    let c = &mut db.client;
    let id: i32 = c
        .query_one("SELECT gn2pg_map_ca('map', $1, $2, target_name => 'CA régional')", &[&ca1, &T_CA1])
        .unwrap()
        .get(0);
    let again: i32 =
        c.query_one("SELECT gn2pg_map_ca('map', source_ca => $1, target_ca => $2)", &[&ca1, &T_CA1]).unwrap().get(0);
    assert_eq!(id, again, "mapping again is idempotent");
    c.execute(
        "SELECT gn2pg_map_jdd('map', $1, $2, target_ca => $3, target_name => 'JDD partenaire')",
        &[&j2, &T_J2, &T_J2_CA],
    )
    .unwrap();
    c.execute("SELECT gn2pg_map_jdd('map', $1, $2)", &[&j4, &T_J4]).unwrap();

    // The loader applies mappings while harvesting.
    harvest(c, "map", "full").unwrap();
    let exp = fx.expected_rows(3);
    let specific = |ca: &str, jdd: &str| -> (String, String) {
        if jdd == j2 {
            (T_J2_CA.into(), T_J2.into())
        } else if jdd == j4 {
            (T_CA1.into(), T_J4.into()) // JDD mapped, its target has no CA: the CA mapping applies
        } else if ca == ca1 {
            (T_CA1.into(), jdd.into())
        } else {
            (ca.into(), jdd.into())
        }
    };
    assert_rows(c, "map", &exp, &specific);

    // The view: rows per CA/JDD, where they land, and what is not mapped.
    let view = mapping_view(c, "map");
    assert_eq!(view.len(), 13, "every CA and JDD received is listed");
    let rows_of = |level: &str, uuid: &str| {
        exp.iter().filter(|r| if level == "ca" { r.ca_uuid == uuid } else { r.jdd_uuid == uuid }).count() as i64
    };
    for ((level, uuid), (rows, by, tca, tjdd)) in &view {
        assert_eq!(*rows, rows_of(level, uuid), "{level} {uuid}");
        let parent = cat.all[&(level.clone(), uuid.clone())].parent.clone();
        let (want_by, want_ca, want_jdd) = match (level.as_str(), uuid.as_str()) {
            ("ca", u) if u == ca1 => (Some("ca mapping"), T_CA1.to_string(), None),
            ("ca", u) => (None, u.to_string(), None),
            (_, u) if u == j2 => (Some("jdd mapping"), T_J2_CA.to_string(), Some(T_J2.to_string())),
            (_, u) if u == j4 => (Some("jdd mapping"), T_CA1.to_string(), Some(T_J4.to_string())),
            (_, u) if parent.as_deref() == Some(ca1.as_str()) => {
                (Some("ca mapping"), T_CA1.to_string(), Some(u.to_string()))
            }
            (_, u) => (None, parent.clone().unwrap(), Some(u.to_string())),
        };
        assert_eq!(
            (by.as_deref(), tca.as_deref(), tjdd.clone()),
            (want_by, Some(want_ca.as_str()), want_jdd),
            "{level} {uuid}"
        );
    }
    let unmapped_cas =
        count(c, "SELECT count(*) FROM gn2pg.metadata_mapping WHERE source = 'map' AND level = 'ca' AND NOT mapped");
    assert_eq!(unmapped_cas, 2, "CA 0 and CA 2 are visibly unmapped");
    let names: Vec<(String, Option<String>)> = c
        .query("SELECT source_uuid::text, target_name FROM gn2pg.metadata_mapping WHERE source = 'map' AND source_uuid = ANY($1::text[]::uuid[]) ORDER BY level",
               &[&vec![ca1.clone(), j2.clone()]])
        .unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(names, vec![(ca1.clone(), Some("CA régional".into())), (j2.clone(), Some("JDD partenaire".into()))]);

    // A source-wide CA mapping catches every other CA; the specific mappings still win.
    c.execute("SELECT gn2pg_map_ca('map', NULL, $1)", &[&T_ALL]).unwrap();
    let changed: i64 = c.query_one("SELECT gn2pg_remap('map')", &[]).unwrap().get(0);
    let others = exp.iter().filter(|r| r.ca_uuid != ca1 && r.jdd_uuid != j2).count() as i64;
    assert_eq!(changed, others);
    let with_wide = |ca: &str, jdd: &str| -> (String, String) {
        let (dca, djdd) = specific(ca, jdd);
        if dca == ca {
            (T_ALL.into(), djdd)
        } else {
            (dca, djdd)
        }
    };
    assert_rows(c, "map", &exp, &with_wide);
    assert_eq!(count(c, "SELECT count(*) FROM gn2pg.metadata_mapping WHERE source = 'map' AND NOT mapped"), 0);
    // The described target JDD's CA wins over every CA mapping.
    let j2_rows = count(
        c,
        &format!("SELECT count(*) FROM gn2pg.observation WHERE ca_uuid = '{T_J2_CA}' AND jdd_uuid = '{T_J2}'"),
    );
    assert_eq!(j2_rows, rows_of("jdd", &j2));
}

#[test]
fn remap_of_100000_rows_makes_no_http_request_and_unmap_restores_source_values() {
    let fx = fixture(100_000);
    let mut db = TestDb::new("meta_remap_100k");
    add_source(&mut db.client, "big", &fx, 3, "public", "{}");
    let t = Instant::now();
    let run = harvest(&mut db.client, "big", "full").unwrap();
    assert_eq!(n(&run, "rows_upserted"), 100_000);
    eprintln!("harvest of 100000 rows: {:?}", t.elapsed());
    let c = &mut db.client;

    fx.reset_stats();
    c.execute("SELECT gn2pg_map_ca('big', NULL, $1)", &[&T_ALL]).unwrap();
    c.execute("SELECT gn2pg_map_jdd('big', NULL, $1)", &[&T_J4]).unwrap();
    let pending = count(c, "SELECT count(*) FROM gn2pg.metadata_mapping WHERE source = 'big' AND remap_pending");
    assert_eq!(pending, 13, "the view shows mappings not yet applied");
    let t = Instant::now();
    let changed: i64 = c.query_one("SELECT gn2pg_remap('big')", &[]).unwrap().get(0);
    eprintln!("remap of 100000 rows: {:?}", t.elapsed());
    assert_eq!(changed, 100_000);
    let moved = count(
        c,
        &format!(
            "SELECT count(*) FROM gn2pg.observation WHERE ca_uuid = '{T_ALL}' AND jdd_uuid = '{T_J4}'
                                      AND source_ca_uuid <> ca_uuid AND source_jdd_uuid <> jdd_uuid"
        ),
    );
    assert_eq!(moved, 100_000);
    assert_eq!(count(c, "SELECT count(*) FROM gn2pg.metadata_mapping WHERE remap_pending"), 0);
    let again: i64 = c.query_one("SELECT gn2pg_remap('big')", &[]).unwrap().get(0);
    assert_eq!(again, 0, "nothing left to move");

    assert!(c.query_one("SELECT gn2pg_unmap_ca('big', NULL)", &[]).unwrap().get::<_, bool>(0));
    assert!(c.query_one("SELECT gn2pg_unmap_jdd('big', NULL)", &[]).unwrap().get::<_, bool>(0));
    let changed: i64 = c.query_one("SELECT gn2pg_remap('big')", &[]).unwrap().get(0);
    assert_eq!(changed, 100_000);
    let restored = count(
        c,
        "SELECT count(*) FROM gn2pg.observation WHERE ca_uuid = source_ca_uuid AND jdd_uuid = source_jdd_uuid",
    );
    assert_eq!(restored, 100_000, "unmap gives every row its source values back");
    assert_eq!(fx.stats().requests, 0, "remapping never contacts the source: {:?}", fx.stats());
}

#[test]
fn the_next_run_applies_pending_mappings_and_remap_waits_for_a_running_harvest() {
    let fx = fixture(1500);
    let mut db = TestDb::new("meta_next_run");
    add_source(&mut db.client, "next", &fx, 3, "public", "{}");
    harvest(&mut db.client, "next", "auto").unwrap();
    let c = &mut db.client;
    // "1 API = 1 JDD défini au niveau du collecteur" (GeoNature #789).
    c.execute(
        "SELECT gn2pg_map_jdd('next', NULL, $1, target_ca => $2, target_name => 'Flux partenaire')",
        &[&T_J2, &T_J2_CA],
    )
    .unwrap();
    assert_eq!(
        count(c, &format!("SELECT count(*) FROM gn2pg.observation WHERE jdd_uuid = '{T_J2}'")),
        0,
        "nothing moves before a remap"
    );
    let run = harvest(c, "next", "auto").unwrap();
    assert_eq!(run["mode"], "incremental");
    assert!(n(&run, "rows_received") < 1500, "{run}");
    let exp = fx.expected_rows(3);
    assert_rows(c, "next", &exp, &|_: &str, _: &str| (T_J2_CA.to_string(), T_J2.to_string()));

    // gn2pg_remap refuses to run beside a harvest of the same source, and says which run.
    c.execute("SELECT gn2pg_unmap_jdd('next', NULL)", &[]).unwrap();
    fx.faults(Faults { slow_ms: 3000, ..Default::default() });
    let run_id: i64 = c.query_one("SELECT gn2pg_harvest_async('next', 'full')", &[]).unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(c, &format!("SELECT count(*) FROM gn2pg.run_log WHERE id = {run_id} AND status = 'running'")) == 0 {
        assert!(Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = c.query_one("SELECT gn2pg_remap('next')", &[]).map(|_| ()).unwrap_err();
    let err = error_text(&err);
    assert!(err.contains(&format!("source \"next\" is being harvested by run {run_id}")), "{err}");
    while count(c, &format!("SELECT count(*) FROM gn2pg.run_log WHERE id = {run_id} AND status = 'running'")) == 1 {
        assert!(Instant::now() < deadline + Duration::from_secs(60), "the run did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    fx.faults(Faults::default());
    // The run remapped first: the source values are back.
    assert_rows(c, "next", &exp, &unmapped);
}

#[test]
fn invalid_mapping_arguments_are_rejected_with_a_clear_error() {
    let fx = fixture(10);
    let mut db = TestDb::new("meta_invalid");
    add_source(&mut db.client, "src", &fx, 3, "public", "{}");
    let ok = "c0000000-0000-4000-8000-000000000001";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("SELECT gn2pg_map_ca('src', 'not-a-uuid', '{ok}')"),
            "gn2pg_map_ca: source_ca \"not-a-uuid\" is not a valid UUID",
        ),
        ("SELECT gn2pg_map_ca('src', NULL, '1234')".into(), "gn2pg_map_ca: target_ca \"1234\" is not a valid UUID"),
        ("SELECT gn2pg_map_ca('src', NULL, '')".into(), "target_ca \"\" is not a valid UUID"),
        ("SELECT gn2pg_map_ca('src', NULL, NULL)".into(), "gn2pg_map_ca: target_ca must not be NULL"),
        (format!("SELECT gn2pg_map_jdd('src', '{ok}x', '{ok}')"), "gn2pg_map_jdd: source_jdd"),
        (format!("SELECT gn2pg_map_jdd('src', NULL, 'zz{ok}')"), "gn2pg_map_jdd: target_jdd"),
        (
            format!("SELECT gn2pg_map_jdd('src', NULL, '{ok}', target_ca => 'ca?')"),
            "gn2pg_map_jdd: target_ca \"ca?\" is not a valid UUID",
        ),
        ("SELECT gn2pg_unmap_ca('src', 'nope')".into(), "gn2pg_unmap_ca: source_ca \"nope\" is not a valid UUID"),
        ("SELECT gn2pg_unmap_jdd('src', 'nope')".into(), "gn2pg_unmap_jdd: source_jdd"),
        (format!("SELECT gn2pg_map_ca('nosuch', NULL, '{ok}')"), "gn2pg_map_ca: source \"nosuch\" does not exist"),
        (format!("SELECT gn2pg_map_jdd(NULL, NULL, '{ok}')"), "gn2pg_map_jdd: source must not be NULL"),
        ("SELECT gn2pg_remap('nosuch')".into(), "gn2pg_remap: source \"nosuch\" does not exist"),
        (
            "SELECT gn2pg_describe_target('ca', 'x')".into(),
            "gn2pg_describe_target: target_uuid \"x\" is not a valid UUID",
        ),
        (format!("SELECT gn2pg_describe_target('af', '{ok}')"), "level must be 'ca' or 'jdd'"),
        (format!("SELECT gn2pg_describe_target('ca', '{ok}', parent_ca => '{ok}')"), "parent_ca is for a JDD"),
    ];
    for (sql, needle) in &cases {
        let err = db.client.batch_execute(sql).map(|_| String::new()).unwrap_or_else(|e| error_text(&e));
        assert!(err.contains(needle), "{sql}: expected {needle:?}, got {err:?}");
        assert!(err.contains("HINT:"), "{sql}: a hint says what to do: {err}");
    }
    let invalid = db.client.batch_execute("SELECT gn2pg_map_ca('src', NULL, 'bad')").unwrap_err();
    assert_eq!(invalid.code().map(|c| c.code()), Some("22023"), "invalid_parameter_value");
    let unknown = db.client.batch_execute(&format!("SELECT gn2pg_map_ca('nosuch', NULL, '{ok}')")).unwrap_err();
    assert_eq!(unknown.code().map(|c| c.code()), Some("42704"), "undefined_object");
    assert_eq!(count(&mut db.client, "SELECT count(*) FROM gn2pg.mapping"), 0);
    assert_eq!(count(&mut db.client, "SELECT count(*) FROM gn2pg.target_metadata"), 0);
    // Removing what does not exist is not an error.
    assert!(!db.client.query_one("SELECT gn2pg_unmap_ca('src', NULL)", &[]).unwrap().get::<_, bool>(0));
    // Upper case, braces and surrounding spaces are accepted as PostgreSQL reads uuids.
    db.client.execute(&format!("SELECT gn2pg_map_ca('src', ' {{{}}} ', '{ok}')", ok.to_uppercase()), &[]).unwrap();
    let stored: String = db.client.query_one("SELECT source_uuid::text FROM gn2pg.mapping", &[]).unwrap().get(0);
    assert_eq!(stored, ok);
}
