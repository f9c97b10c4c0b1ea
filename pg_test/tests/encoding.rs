//! Values gn2pg builds in Rust instead of letting PostgreSQL parse text (src/encode/) must be
//! exactly what PostgreSQL and PostGIS would have built: jsonb byte for byte, geometries
//! byte for byte, and what Rust leaves to PostGIS converted by PostGIS.

use gn2pg_pg_test::checks::{add_source, assert_equal_to_source, harvest, n};
use gn2pg_pg_test::db::{Client, TestDb};
use gn2pg_pg_test::fixture::{FixtureConfig, FixtureServer};

/// (documents, documents both encoders accept, first differences) for `docs`.
fn selftest(db: &mut Client, docs: &[String]) -> (i64, i64, Option<String>) {
    let r = db
        .query_one(
            "WITH d AS (SELECT doc, gn2pg._jsonb_selftest(doc) AS diff FROM unnest($1::text[]) AS doc)
             SELECT count(*),
                    count(*) FILTER (WHERE diff IS NULL AND pg_temp.is_jsonb(doc)),
                    string_agg(left(doc, 120) || ' => ' || diff, E'\\n') FILTER (WHERE diff IS NOT NULL)
               FROM d",
            &[&docs],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn define_is_jsonb(db: &mut Client) {
    db.batch_execute(
        "CREATE FUNCTION pg_temp.is_jsonb(t text) RETURNS boolean LANGUAGE plpgsql AS
         $$ BEGIN PERFORM t::jsonb; RETURN true; EXCEPTION WHEN OTHERS THEN RETURN false; END $$",
    )
    .unwrap();
}

/// A small deterministic generator of JSON texts, valid or not, aimed at jsonb's corners:
/// numbers of every scale, escapes, non-ASCII text, duplicate keys, wide containers (JEntry
/// offsets every 32 children), nesting.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn number(&mut self) -> String {
        let mut s = String::new();
        if self.below(3) == 0 {
            s.push('-');
        }
        let digits = self.below(14) + 1;
        let first = self.below(10);
        s.push_str(&first.to_string());
        if first != 0 {
            for _ in 1..digits {
                s.push_str(&self.below(10).to_string());
            }
        }
        if self.below(2) == 0 {
            s.push('.');
            for _ in 0..self.below(20) + 1 {
                s.push_str(&self.below(10).to_string());
            }
        }
        if self.below(3) == 0 {
            s.push_str(self.pick(&["e", "E", "e+", "e-", "E-"]));
            s.push_str(&self.below(420).to_string());
        }
        s
    }
    fn string(&mut self) -> String {
        let mut s = String::from("\"");
        for _ in 0..self.below(10) {
            s.push_str(self.pick(&[
                "a",
                "é",
                "中",
                "😀",
                " ",
                "Δ",
                "zz",
                "\\n",
                "\\t",
                "\\\"",
                "\\\\",
                "\\/",
                "\\b",
                "\\f",
                "\\r",
                "\\u00e9",
                "\\u4e2d",
                "\\ud83d\\ude00",
                "\\u0041",
            ]));
            // Rarely, what only jsonb refuses.
            if self.below(400) == 0 {
                s.push_str(self.pick(&["\\u0000", "\\ud83d", "\\ude00"]));
            }
        }
        s.push('"');
        s
    }
    fn value(&mut self, depth: u32) -> String {
        match self.below(if depth > 3 { 3 } else { 6 }) {
            0 => self.number(),
            1 => self.string(),
            2 => self.pick(&["true", "false", "null"]).to_string(),
            3 => {
                let n = if depth < 2 && self.below(4) == 0 { 40 } else { self.below(4) };
                let items: Vec<String> = (0..n).map(|_| self.value(depth + 1)).collect();
                format!("[{}]", items.join(","))
            }
            _ => {
                let n = if depth < 2 && self.below(4) == 0 { 45 } else { self.below(5) };
                let members: Vec<String> = (0..n)
                    .map(|_| {
                        let k = match self.below(4) {
                            0 => format!("k{}", self.below(60)),
                            1 => self.pick(&["a", "b", "ab", "ba", "é", "id_synthese"]).to_string(),
                            _ => "x".repeat(self.below(6) as usize + 1),
                        };
                        format!("\"{k}\":{}", self.value(depth + 1))
                    })
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        }
    }
}

#[test]
fn jsonb_built_in_rust_is_byte_identical_to_jsonb_in() {
    let mut db = TestDb::new("jsonb_selftest");
    define_is_jsonb(&mut db.client);
    let mut docs: Vec<String> = [
        "1",
        "-0",
        "0.000",
        "-0.00e5",
        "1e-5",
        "123456789012345678901234567890.123456789",
        "1e300",
        "1E+2",
        "-1.5e-300",
        "99999999",
        "100000000",
        "1e63",
        "1e64",
        "1e-63",
        "1e-64",
        "1e-65",
        "1e-16383",
        "1e-16384",
        "0e-16384",
        "1e400000",
        "\"\"",
        "true",
        "null",
        "[]",
        "{}",
        "[[]]",
        "{\"\":\"\"}",
        "{\"b\":1,\"a\":2,\"ab\":3,\"a\":4}",
        "\"\\u00e9\\ud83d\\ude00\\n\\t\\\"\\\\\\/\"",
        "\"\\u0000\"",
        "\"\\ud83d\"",
        "\"\\ude00\"",
        "{\"a\":1,\"a\":{\"x\":1},\"a\":[1]}",
        "  {  \"spaces\" :  [ 1 , 2 ]  }  ",
        "[1,]",
        "01",
        "{\"a\" 1}",
        "1.",
        ".5",
        "+1",
        "[1] 2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    docs.extend((0..4000).map(|_| g.value(0)));
    let (total, accepted, diff) = selftest(&mut db.client, &docs);
    assert_eq!(diff, None);
    assert_eq!(total, docs.len() as i64);
    assert!(accepted > 1000 && accepted < total, "both valid and invalid documents were tried ({accepted} of {total})");

    // Every item the fixture serves, in every view.
    let fx = FixtureServer::start(FixtureConfig { rows: 600, ..Default::default() }).unwrap();
    for export in [1, 2, 3, 4, 5] {
        let items: Vec<String> = fx.expected_rows(export).iter().map(|r| r.item.to_string()).collect();
        let (total, accepted, diff) = selftest(&mut db.client, &items);
        assert_eq!(diff, None, "export {export}");
        assert!(total > 0 && accepted == total, "export {export}: {accepted} of {total}");
    }
}

#[test]
fn fast_path_geometries_are_identical_to_what_postgis_makes_of_the_text() {
    let fx = FixtureServer::start(FixtureConfig { rows: 3000, ..Default::default() }).unwrap();
    // Export 1 sends WKT (array items), export 2 GeoJSON features; both carry the same uuids, so
    // each goes to its own database. assert_equal_to_source compares EWKB byte for byte.
    for (export, auth) in [(1, "login"), (2, "token")] {
        let mut db = TestDb::new("geometry_exact");
        add_source(&mut db.client, "src", &fx, export, auth, "{}");
        let run = harvest(&mut db.client, "src", "full").unwrap();
        assert_eq!(n(&run, "rows_failed"), 0, "{run}");
        assert_equal_to_source(&mut db.client, "src", &fx, export as u32);
        let kinds: i64 = db
            .client
            .query_one("SELECT count(DISTINCT GeometryType(geom)) FROM gn2pg.observation", &[])
            .unwrap()
            .get(0);
        assert!(kinds >= 2, "export {export}: points and other types were compared");
    }
}

#[test]
fn geometries_rust_leaves_to_postgis_are_converted_or_reported() {
    let item = |id: i64, wkt: &str| {
        format!(
            r#"{{"id_synthese":{id},"id_perm_sinp":"00000000-0000-4000-8000-{id:012}","wkt_4326":"{wkt}","derniere_action":"2025-01-01 10:00:00"}}"#
        )
    };
    let items = [
        item(1, "POINT(6.1 45.2)"),
        item(2, "SRID=2154;POINT(950000 6450000)"),
        item(3, "POINT Z (6.1 45.2 1200)"),
        item(4, "LINESTRING(6 45)"),
        item(5, "POLYGON((6 45,7 45,7 46,6 45))"),
        item(6, "GEOMETRYCOLLECTION EMPTY"),
        item(7, "CIRCULARSTRING(0 0,1 1,2 0)"),
    ];
    let body = format!(r#"{{"items":[{}],"limit":1000,"page":0,"total":7,"total_filtered":7}}"#, items.join(","));
    let (url, server) = gn2pg_pg_test::canned::one_page_source(body);
    let mut db = TestDb::new("deferred_geometry");
    db.client.execute("SELECT gn2pg_add_source('canned', $1, 1)", &[&url]).unwrap();
    let run = harvest(&mut db.client, "canned", "full").unwrap();
    assert_eq!((n(&run, "rows_upserted"), n(&run, "rows_failed")), (6, 1), "{run}");
    let mismatches: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM gn2pg.observation o
              WHERE ST_AsEWKB(o.geom) IS DISTINCT FROM ST_AsEWKB(ST_Force2D(
                        CASE WHEN o.item ->> 'wkt_4326' ~* '^SRID=' THEN ST_Transform((o.item ->> 'wkt_4326')::geometry, 4326)
                             ELSE ST_SetSRID((o.item ->> 'wkt_4326')::geometry, 4326) END))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mismatches, 0);
    let r = db
        .client
        .query_one("SELECT ST_SRID(geom), ST_NDims(geom)::int FROM gn2pg.observation WHERE id_data = 3", &[])
        .unwrap();
    assert_eq!(
        (r.get::<_, i32>(0), r.get::<_, i32>(1)),
        (4326, 2),
        "the column is 2D: Z is dropped, the item keeps the WKT"
    );
    let (id, error): (i64, String) = {
        let r = db.client.query_one("SELECT id_data, error FROM gn2pg.run_error", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(id, 4);
    assert!(error.contains("invalid geometry"), "{error}");
    drop(server);
}

/// `gn2pg._geometry_selftest` compares the Rust EWKB encoder with PostGIS on this server: every
/// geometry the fixture serves (WKT and GeoJSON) and the built-in corpus agree.
#[test]
fn the_geometry_selftest_agrees_with_postgis() {
    let fx = FixtureServer::start(FixtureConfig { rows: 600, ..Default::default() }).unwrap();
    let mut db = TestDb::new("geometry_selftest");
    let mut texts: Vec<String> = [1, 2].iter().flat_map(|e| fx.expected_rows(*e)).filter_map(|r| r.wkt).collect();
    // The same geometries as GeoJSON.
    let geojson: Vec<String> = db
        .client
        .query("SELECT ST_AsGeoJSON(ST_GeomFromText(t, 4326))::text FROM unnest($1::text[]) AS t", &[&texts])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    texts.extend(geojson);
    let r = db
        .client
        .query_one(
            "SELECT count(*), string_agg(t || ' => ' || d, E'\\n') FILTER (WHERE d IS NOT NULL)
               FROM (SELECT t, gn2pg._geometry_selftest(t) AS d FROM unnest($1::text[]) AS t) x",
            &[&texts],
        )
        .unwrap();
    let (n, diff): (i64, Option<String>) = (r.get(0), r.get(1));
    assert!(n > 1000, "{n}");
    assert_eq!(diff, None);
    let found: i32 = db.client.query_one("SELECT gn2pg._selfcheck()", &[]).unwrap().get(0);
    assert_eq!(found, 0, "the built-in corpus agrees with jsonb_in and PostGIS");
    // Left to PostGIS (3D): nothing to compare. Converted by gn2pg but refused by PostGIS: said.
    let deferred: Option<String> =
        db.client.query_one("SELECT gn2pg._geometry_selftest('POINT Z (1 2 3)')", &[]).unwrap().get(0);
    assert_eq!(deferred, None);
}

/// The self-checks are for superusers, and refuse inputs over 1 MB with SQLSTATE 54000.
#[test]
fn selftests_are_for_superusers_and_capped() {
    let mut db = TestDb::new("selftest_rights");
    let role = format!("reader_{}", std::process::id());
    db.client.batch_execute(&format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} IN ROLE gn2pg_reader")).unwrap();
    for call in ["gn2pg._jsonb_selftest('1')", "gn2pg._geometry_selftest('POINT(1 2)')", "gn2pg._selfcheck()"] {
        let e = db
            .client
            .batch_execute(&format!("SET ROLE {role}; SELECT {call}"))
            .expect_err("a reader may not call the self-checks");
        db.client.batch_execute("RESET ROLE").unwrap();
        assert!(gn2pg_pg_test::db::error_text(&e).contains("permission denied for function"), "{call}: {e}");
    }
    db.client.batch_execute(&format!("DROP ROLE {role}")).unwrap();
    let big = format!("[{}0]", "0,".repeat(600_000));
    let e = db.client.query_one("SELECT gn2pg._jsonb_selftest($1)", &[&big]).unwrap_err();
    assert_eq!(e.code(), Some(&postgres::error::SqlState::PROGRAM_LIMIT_EXCEEDED));
    assert!(gn2pg_pg_test::db::error_text(&e).contains("exceeds the 1048576 bytes it takes"), "{e}");
    let dense = format!("[{}0]", "0,".repeat(80_000));
    let e = db.client.query_one("SELECT gn2pg._jsonb_selftest($1)", &[&dense]).unwrap_err();
    assert!(gn2pg_pg_test::db::error_text(&e).contains("more than 65536 JSON values"), "{e}");
    let e = db.client.query_one("SELECT gn2pg._geometry_selftest($1)", &[&big]).unwrap_err();
    assert_eq!(e.code(), Some(&postgres::error::SqlState::PROGRAM_LIMIT_EXCEEDED));
}

/// With `gn2pg.fast_geometry = off` (as on PostgreSQL or PostGIS versions the encoder was not
/// verified with) PostGIS converts every geometry: the same bytes, and every row is rewritten
/// once because its hash now covers the geometry's text instead of its EWKB.
#[test]
fn without_the_fast_path_postgis_converts_every_geometry() {
    let fx = FixtureServer::start(FixtureConfig { rows: 1500, ..Default::default() }).unwrap();
    let mut db = TestDb::new("geometry_gate");
    add_source(&mut db.client, "src", &fx, 2, "token", "{}");
    let fast = harvest(&mut db.client, "src", "full").unwrap();
    assert_eq!(n(&fast, "rows_failed"), 0, "{fast}");
    db.client.batch_execute(&format!("ALTER DATABASE {} SET gn2pg.fast_geometry = off", db.name)).unwrap();
    let slow = harvest(&mut db.client, "src", "full").unwrap();
    assert_eq!(n(&slow, "rows_upserted"), n(&fast, "rows_upserted"), "every row was written by the other path: {slow}");
    assert_eq!(n(&slow, "rows_failed"), 0, "{slow}");
    assert_equal_to_source(&mut db.client, "src", &fx, 2);
    let again = harvest(&mut db.client, "src", "full").unwrap();
    assert_eq!(n(&again, "rows_upserted"), 0, "the same path twice rewrites nothing: {again}");
}
