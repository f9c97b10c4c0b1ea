//! Self-checks callable from SQL, for the test suite and for operators who want to see, on
//! their own server, that gn2pg builds values exactly as PostgreSQL and PostGIS do:
//! `gn2pg._jsonb_selftest(text)`, `gn2pg._geometry_selftest(text)`, and `gn2pg._selfcheck()`,
//! which runs both over a small built-in corpus and is called by `CREATE EXTENSION` and
//! `ALTER EXTENSION … UPDATE`. Superusers only: they parse what the caller gives them, and their
//! input is capped (`SELFTEST_MAX_BYTES`).

use std::ffi::CString;
use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

use crate::encode::geometry::{self, Converted};
use crate::encode::jsonb;

/// The largest document or geometry the self-checks take: items are a few KB.
const SELFTEST_MAX_BYTES: usize = 1 << 20;
/// Values and object keys a checked document may hold (one per 16 bytes of the cap, as pages):
/// keeps the memory of both parsers within a few MB.
const SELFTEST_MAX_NODES: usize = SELFTEST_MAX_BYTES / 16;

/// Refuses an input over the caps, as a program limit (SQLSTATE 54000).
fn check_input(function: &str, text: &str) {
    let refuse = |msg: String| {
        crate::error::raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            msg,
            None,
            Some("Check one item or one geometry at a time."),
        )
    };
    if text.len() > SELFTEST_MAX_BYTES {
        refuse(format!("{function}: input of {} bytes exceeds the {SELFTEST_MAX_BYTES} bytes it takes", text.len()));
    }
    match crate::json::count_nodes(text) {
        Ok(n) if n > SELFTEST_MAX_NODES => refuse(format!(
            "{function}: input holds more than {SELFTEST_MAX_NODES} JSON values and keys, more than it takes"
        )),
        Err(e) if e.limit => refuse(format!("{function}: input exceeds a limit of gn2pg: {e}")),
        _ => {}
    }
}

/// Encodes `doc` with gn2pg's jsonb encoder and with PostgreSQL's `jsonb_in`, and compares the
/// bytes. NULL when they are identical or when both refuse the text; otherwise a description of
/// the difference. Raises an error for a document over 1 MB.
#[pg_extern(strict, parallel_safe)]
fn _jsonb_selftest(doc: &str) -> Option<String> {
    check_input("gn2pg._jsonb_selftest", doc);
    jsonb_difference(doc)
}

fn jsonb_difference(doc: &str) -> Option<String> {
    let ours = jsonb::parse(doc).and_then(|v| jsonb::encode(&v));
    let theirs: Result<Vec<u8>, String> = match CString::new(doc) {
        Err(_) => Err("text holds a NUL byte".into()),
        Ok(c) => PgTryBuilder::new(AssertUnwindSafe(|| {
            // SAFETY: jsonb_in takes one cstring and returns a palloc'd jsonb varlena.
            unsafe {
                let d = pgrx::fcinfo::direct_function_call_as_datum(
                    pg_sys::jsonb_in,
                    &[Some(pg_sys::Datum::from(c.as_ptr()))],
                )
                .expect("jsonb_in returns a value");
                let p = d.cast_mut_ptr::<pg_sys::varlena>();
                let len = pgrx::varlena::varsize_any(p);
                Ok(std::slice::from_raw_parts(p as *const u8, len).to_vec())
            }
        }))
        .catch_others(|e| Err(crate::error::Error::caught(&e).message))
        .execute(),
    };
    match (ours, theirs) {
        (Ok(a), Ok(b)) => bytes_difference(&a, &b, "jsonb_in"),
        (Err(_), Err(_)) => None,
        (Ok(_), Err(e)) => Some(format!("jsonb_in refuses it ({e}) but gn2pg accepts it")),
        (Err(e), Ok(_)) => Some(format!("gn2pg refuses it ({e}) but jsonb_in accepts it")),
    }
}

fn bytes_difference(a: &[u8], b: &[u8], theirs: &str) -> Option<String> {
    if a == b {
        return None;
    }
    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    Some(format!(
        "bytes differ at offset {at} (gn2pg {} bytes, {theirs} {} bytes): gn2pg {:02x?}, {theirs} {:02x?}",
        a.len(),
        b.len(),
        &a[at..(at + 16).min(a.len())],
        &b[at..(at + 16).min(b.len())]
    ))
}

/// Converts `geometry` (GeoJSON when it starts with `{`, WKT otherwise) with gn2pg's EWKB
/// encoder and with PostGIS, as the loader would (`gn2pg._parse_geometry`, then
/// `ST_AsEWKB(ST_Force2D(…))`), and compares the bytes. NULL when they are identical, or when
/// gn2pg leaves the text to PostGIS anyway; otherwise a description of the difference. The
/// comparison runs whatever `gn2pg.fast_geometry` and the server's versions say.
#[pg_extern(strict)]
fn _geometry_selftest(geometry: &str) -> Option<String> {
    check_input("gn2pg._geometry_selftest", geometry);
    geometry_difference(geometry)
}

fn geometry_difference(text: &str) -> Option<String> {
    let geojson = text.trim_start().starts_with('{');
    let ours = match if geojson { geometry::from_geojson(text) } else { geometry::from_wkt(text) } {
        Converted::Ewkb(b) => b,
        Converted::Defer => return None,
    };
    // The loader casts GeoJSON to jsonb first; text jsonb refuses never gets this far there.
    if geojson {
        if let Err(e) = jsonb::parse(text) {
            return Some(format!("gn2pg converts it but jsonb refuses the text ({e})"));
        }
    }
    let postgis = crate::store::postgis_schema().unwrap_or_else(|_| error!("gn2pg: PostGIS is not installed"));
    let pg = quote_identifier(&postgis);
    let sql = format!(
        "SELECT {pg}.ST_AsEWKB({pg}.ST_Force2D(g.geom)), g.error
           FROM gn2pg._parse_geometry($1::pg_catalog.jsonb, $2) AS g"
    );
    let (json_arg, wkt_arg) = if geojson { (Some(text), None) } else { (None, Some(text)) };
    let (theirs, error) = Spi::get_two_with_args::<Vec<u8>, String>(&sql, &[json_arg.into(), wkt_arg.into()])
        .unwrap_or_else(|e| error!("gn2pg._geometry_selftest: {e}"));
    match (theirs, error) {
        (Some(b), _) => bytes_difference(&ours, &b, "PostGIS"),
        (None, Some(e)) => Some(format!("PostGIS refuses it ({e}) but gn2pg converts it")),
        (None, None) => Some("PostGIS makes no geometry of it but gn2pg converts it".into()),
    }
}

/// Documents the jsonb encoder must encode as `jsonb_in` does, whatever the server: its corners
/// (numbers of every scale, escapes, key order and duplicates, JEntry offsets) and a real item.
const JSONB_CORPUS: &[&str] = &[
    "0",
    "-0.00e5",
    "123456789012345678901234567890.123456789",
    "1e-16383",
    "1e300",
    "-1.5e-300",
    "\"\\u00e9\\ud83d\\ude00\\n\\t\\\"\\\\\\/\"",
    "[]",
    "{}",
    "{\"b\":1,\"a\":2,\"ab\":3,\"a\":4}",
    "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34]",
    "{\"a\":[true,false,null,{\"x\":[[]]}],\"é\":\"中文\"}",
    r#"{"id_synthese":4521987,"id_perm_sinp":"3f1c7c5e-0000-4000-8000-00000000000a","cd_nom":60612,
        "nom_cite":"Lynx lynx","date_min":"2023-05-12 08:30:00","altitude_min":1250,"count_min":1,
        "observateurs":"Dupont Martin, Bernard Lucie","wkt_4326":"POINT(6.1234567 45.1234567)",
        "precision":12.5,"derniere_action":"2023-05-13 10:02:11.482312","ca_data":{"uuid":
        "57b7d0f2-4183-4b7b-8f08-6e105d476dc5","name":"Suivi"},"comment":null}"#,
];

/// Geometries the EWKB encoder converts itself, as exporters write them, in both forms.
const GEOMETRY_CORPUS: &[&str] = &[
    "POINT(6.1234567 45.1234567)",
    "point (-0.5 1e-3)",
    "SRID=4326;POINT(5 45)",
    "LINESTRING(6 45,6.5 45.5,7 46)",
    "POLYGON((6 45,7 45,7 46,6 46,6 45),(6.2 45.2,6.4 45.2,6.4 45.4,6.2 45.2))",
    "MULTIPOINT(6 45,(7 46))",
    "MULTILINESTRING((6 45,7 46),(8 47,9 48))",
    "MULTIPOLYGON(((6 45,7 45,7 46,6 45)),((8 45,9 45,9 46,8 45)))",
    "GEOMETRYCOLLECTION(POINT(6 45),LINESTRING(6 45,7 46))",
    r#"{"type":"Point","coordinates":[6.1234567,45.1234567]}"#,
    r#"{"type":"LineString","coordinates":[[6,45],[7,46.25]]}"#,
    r#"{"type":"Polygon","coordinates":[[[6,45],[7,45],[7,46],[6,45]]],"bbox":[6,45,7,46]}"#,
    r#"{"coordinates":[[6,45],[7,46]],"type":"MultiPoint"}"#,
    r#"{"type":"MultiPolygon","coordinates":[[[[6,45],[7,45],[7,46],[6,45]]]]}"#,
    r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[6,45]}]}"#,
];

/// Runs both self-checks over the built-in corpus and warns about each difference; returns
/// how many there are. Called by `CREATE EXTENSION` and `ALTER EXTENSION gn2pg UPDATE`.
#[pg_extern]
fn _selfcheck() -> i32 {
    let mut differences = 0;
    for doc in JSONB_CORPUS {
        if let Some(d) = jsonb_difference(doc) {
            differences += 1;
            crate::error::warn(
                &format!("gn2pg: its jsonb encoder differs from jsonb_in on this server: {d}"),
                Some(&format!("document: {doc}")),
                Some("gn2pg stores items with this encoder: report it before harvesting."),
            );
        }
    }
    for text in GEOMETRY_CORPUS {
        if let Some(d) = geometry_difference(text) {
            differences += 1;
            crate::error::warn(
                &format!("gn2pg: its EWKB encoder differs from PostGIS on this server: {d}"),
                Some(&format!("geometry: {text}")),
                Some("ALTER SYSTEM SET gn2pg.fast_geometry = off; SELECT pg_reload_conf(); makes PostGIS convert every geometry."),
            );
        }
    }
    differences
}

extension_sql!(
    r#"
-- Superusers only: they parse what the caller passes (memory) and report server internals.
REVOKE ALL ON FUNCTION gn2pg._jsonb_selftest(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._geometry_selftest(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gn2pg._selfcheck() FROM PUBLIC;
COMMENT ON FUNCTION gn2pg._jsonb_selftest(text) IS
    'NULL when gn2pg''s jsonb encoder gives the bytes of jsonb_in for this document (at most 1 MB); else the difference. Superusers only.';
COMMENT ON FUNCTION gn2pg._geometry_selftest(text) IS
    'NULL when gn2pg''s EWKB encoder gives the bytes of PostGIS for this GeoJSON or WKT (or leaves it to PostGIS); else the difference. Superusers only.';
COMMENT ON FUNCTION gn2pg._selfcheck() IS
    'Both self-checks over a built-in corpus: warns about each difference and returns their number. Run by CREATE EXTENSION and ALTER EXTENSION UPDATE.';
-- gn2pg's encoders against PostgreSQL's and PostGIS's own parsers on this server (warns on a difference).
SELECT gn2pg._selfcheck();
"#,
    name = "diagnostics",
    requires = ["schema", _jsonb_selftest, _geometry_selftest, _selfcheck]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_geometry_corpus_stays_on_the_fast_path() {
        for text in GEOMETRY_CORPUS {
            let c = if text.starts_with('{') { geometry::from_geojson(text) } else { geometry::from_wkt(text) };
            assert!(matches!(c, Converted::Ewkb(_)), "{text} would not test the encoder");
        }
    }

    #[test]
    fn the_jsonb_corpus_is_accepted() {
        for doc in JSONB_CORPUS {
            assert!(jsonb::parse(doc).and_then(|v| jsonb::encode(&v)).is_ok(), "{doc}");
        }
    }
}
