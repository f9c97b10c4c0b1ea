//! Reading one answer of the export API: the envelope, the items split without decoding them,
//! and each item's key (for paging). Turning items into rows is `encode::rows`.

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// `items` is a plain array (views without `geometry_field`) or a GeoJSON FeatureCollection
/// (export module >= 1.7.2 or GeoNature >= 2.16 with `geometry_field`), source-api.md §3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Array,
    FeatureCollection,
}

/// What the engine needs to know about a page before loading it.
#[derive(Debug, Clone, PartialEq)]
pub struct PageSummary {
    pub shape: Shape,
    /// Number of items (features) in the page.
    pub len: usize,
    /// Effective page size echoed by the server (capped at `max_page_size_api`).
    pub limit: Option<u64>,
    pub total: Option<u64>,
    /// Unreliable across versions (source-api.md §4.3): a progress hint, never a stop rule.
    pub total_filtered: Option<u64>,
    /// Largest key in the page; drives keyset paging.
    pub max_key: Option<i64>,
    /// Smallest key in the page.
    pub min_key: Option<i64>,
    /// Items whose key is absent or not an integer.
    pub missing_keys: usize,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    items: Option<&'a RawValue>,
    limit: Option<serde_json::Number>,
    total: Option<serde_json::Number>,
    total_filtered: Option<serde_json::Number>,
}

#[derive(Deserialize)]
struct FeatureCollection<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow)]
    features: Vec<&'a RawValue>,
}

/// The envelope of a page with its items split, not yet decoded.
struct Items<'a> {
    shape: Shape,
    raw: Vec<&'a RawValue>,
    limit: Option<u64>,
    total: Option<u64>,
    total_filtered: Option<u64>,
}

fn split_items(body: &str) -> Result<Items<'_>, String> {
    let env: Envelope = serde_json::from_str(body).map_err(|e| describe_json_error(body, &e))?;
    let items = env
        .items
        .ok_or_else(|| "the answer has no \"items\" (not an export API answer)".to_string())?;
    let text = items.get().trim_start();
    let (shape, raw): (Shape, Vec<&RawValue>) = if text.starts_with('[') {
        (Shape::Array, serde_json::from_str(items.get()).map_err(|e| format!("items: {e}"))?)
    } else if text.starts_with('{') {
        let fc: FeatureCollection =
            serde_json::from_str(items.get()).map_err(|e| format!("items is an object but not a FeatureCollection: {e}"))?;
        if fc.kind.as_deref() != Some("FeatureCollection") {
            return Err("items is an object but not a FeatureCollection".into());
        }
        (Shape::FeatureCollection, fc.features)
    } else {
        return Err(format!("items must be an array or a FeatureCollection, got {}", snippet(text, 40)));
    };
    let n = |x: Option<serde_json::Number>| x.and_then(|n| n.as_u64());
    Ok(Items { shape, raw, limit: n(env.limit), total: n(env.total), total_filtered: n(env.total_filtered) })
}

/// The summary of a page whose items have the given keys (None: absent or not an integer).
fn summarize(items: &Items, keys: impl Iterator<Item = Option<i64>>) -> PageSummary {
    summary(items.shape, items.limit, items.total, items.total_filtered, keys)
}

/// A page's summary from its envelope numbers and its items' keys.
pub(crate) fn summary(
    shape: Shape,
    limit: Option<u64>,
    total: Option<u64>,
    total_filtered: Option<u64>,
    keys: impl Iterator<Item = Option<i64>>,
) -> PageSummary {
    let (mut len, mut max_key, mut min_key, mut missing) = (0usize, None::<i64>, None::<i64>, 0usize);
    for k in keys {
        len += 1;
        match k {
            Some(k) => {
                max_key = Some(max_key.map_or(k, |m| m.max(k)));
                min_key = Some(min_key.map_or(k, |m| m.min(k)));
            }
            None => missing += 1,
        }
    }
    PageSummary { shape, len, limit, total, total_filtered, max_key, min_key, missing_keys: missing }
}

/// Reads only the envelope and each item's key. Errors are plain strings: the caller wraps them
/// with the (redacted) URL.
pub fn parse_page(body: &str, key: &str) -> Result<PageSummary, String> {
    let items = split_items(body)?;
    let path_props = ["properties", key];
    let path_flat = [key];
    let path: &[&str] = if items.shape == Shape::FeatureCollection { &path_props } else { &path_flat };
    Ok(summarize(&items, items.raw.iter().map(|it| item_key(it.get(), path))))
}

pub(crate) fn snippet(s: &str, max: usize) -> String {
    let t: String = s.chars().take(max).collect();
    if s.chars().count() > max { format!("{t}…") } else { t }
}

/// Truncated bodies are common behind proxies; say so plainly rather than "EOF at line 1".
fn describe_json_error(body: &str, e: &serde_json::Error) -> String {
    if e.is_eof() {
        format!("truncated JSON ({} bytes received): {e}", body.len())
    } else {
        format!("malformed JSON: {e}; body starts with {:?}", snippet(body, 80))
    }
}

/// Reads an integer at `path` inside one item, skipping every other field unparsed.
pub fn item_key(item: &str, path: &[&str]) -> Option<i64> {
    let mut de = serde_json::Deserializer::from_str(item);
    match (Probe { path }).deserialize(&mut de) {
        Ok(Found::Int(k)) => Some(k),
        _ => None,
    }
}

enum Found {
    Int(i64),
    Other,
}

struct Probe<'p> {
    path: &'p [&'p str],
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = Found;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = Found;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_i64<E>(self, v: i64) -> Result<Found, E> {
        Ok(if self.path.is_empty() { Found::Int(v) } else { Found::Other })
    }
    fn visit_u64<E>(self, v: u64) -> Result<Found, E> {
        Ok(match i64::try_from(v) {
            Ok(v) if self.path.is_empty() => Found::Int(v),
            _ => Found::Other,
        })
    }
    fn visit_f64<E>(self, _: f64) -> Result<Found, E> {
        Ok(Found::Other)
    }
    fn visit_str<E>(self, v: &str) -> Result<Found, E> {
        // Keys serialised as strings ("4521987") still identify the row.
        Ok(match v.parse::<i64>() {
            Ok(k) if self.path.is_empty() => Found::Int(k),
            _ => Found::Other,
        })
    }
    fn visit_bool<E>(self, _: bool) -> Result<Found, E> {
        Ok(Found::Other)
    }
    fn visit_unit<E>(self) -> Result<Found, E> {
        Ok(Found::Other)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut found = Found::Other;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !self.path.is_empty() && k == self.path[0] {
                found = map.next_value_seed(Probe { path: &self.path[1..] })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_page() {
        let body = r#"{"items":[{"id_synthese":3,"x":"é\"q"},{"id_synthese":7},{"nokey":1}],
                      "limit":1000,"page":0,"total":10,"total_filtered":3,"license":{}}"#;
        let p = parse_page(body, "id_synthese").unwrap();
        assert_eq!(p.shape, Shape::Array);
        assert_eq!(p.len, 3);
        assert_eq!(p.max_key, Some(7));
        assert_eq!(p.min_key, Some(3));
        assert_eq!(p.missing_keys, 1);
        assert_eq!(p.limit, Some(1000));
    }

    #[test]
    fn feature_collection_page() {
        let body = r#"{"items":{"type":"FeatureCollection","features":[
            {"type":"Feature","geometry":{"type":"Point","coordinates":[4.8,45.7]},"properties":{"id_synthese":12}},
            {"type":"Feature","geometry":null,"properties":{"id_synthese":"15"}}]},
            "limit":2,"page":0,"total":2,"total_filtered":2}"#;
        let p = parse_page(body, "id_synthese").unwrap();
        assert_eq!(p.shape, Shape::FeatureCollection);
        assert_eq!((p.len, p.max_key, p.missing_keys), (2, Some(15), 0));
    }

    #[test]
    fn empty_and_errors() {
        let p = parse_page(r#"{"items":[],"limit":1000,"total":0,"total_filtered":0}"#, "id_synthese").unwrap();
        assert_eq!((p.len, p.max_key), (0, None));
        let e = parse_page(r#"{"items":[{"id_synthese":1},{"id_sy"#, "id_synthese").unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = parse_page("<html><body>502 Bad Gateway</body></html>", "id_synthese").unwrap_err();
        assert!(e.contains("malformed"), "{e}");
        let e = parse_page(r#"{"message":"no"}"#, "id_synthese").unwrap_err();
        assert!(e.contains("no \"items\""), "{e}");
        assert!(parse_page(r#"{"items":{"type":"Feature"}}"#, "id_synthese").is_err());
    }

    #[test]
    fn key_probe_ignores_nested_namesakes() {
        assert_eq!(item_key(r#"{"a":{"id_synthese":9},"id_synthese":4}"#, &["id_synthese"]), Some(4));
        assert_eq!(item_key(r#"{"a":{"id_synthese":9}}"#, &["id_synthese"]), None);
        assert_eq!(item_key(r#"{"id_synthese":1.5}"#, &["id_synthese"]), None);
        assert_eq!(item_key(r#"{"id_synthese":null}"#, &["id_synthese"]), None);
    }
}

/// Names of the fields the loader needs from each item.
#[derive(Debug, Clone)]
pub struct Fields {
    pub key: String,
    pub uuid: String,
    pub wkt: String,
    pub updated: String,
}

pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `YYYY-MM-DD[( |T)HH:MM[:SS[.f{1,6}]]]` with real calendar bounds, so that the cast to
/// `timestamp` in SQL cannot fail and take the whole page down.
pub fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else { return false };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !(1..=12).contains(&m) || y == 0 {
        return false;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 1];
    if !(1..=days).contains(&d) {
        return false;
    }
    if b.len() == 10 {
        return true;
    }
    if !matches!(b.get(10), Some(b' ') | Some(b'T')) || b.get(13) != Some(&b':') {
        return false;
    }
    match (num(11..13), num(14..16)) {
        (Some(h), Some(mi)) if h < 24 && mi < 60 => {}
        _ => return false,
    }
    if b.len() == 16 {
        return true;
    }
    if b.get(16) != Some(&b':') || num(17..19).is_none_or(|sec| sec >= 60) {
        return false;
    }
    match b.len() {
        19 => true,
        n if n > 20 && n <= 26 => b[19] == b'.' && b[20..].iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

#[cfg(test)]
mod column_tests {
    use super::*;

    #[test]
    fn timestamps() {
        for ok in ["2024-02-29", "2023-05-12 08:30", "2023-05-12 08:30:00", "2023-05-12T08:30:00.5", "2023-05-12 08:30:00.123456"] {
            assert!(is_timestamp(ok), "{ok}");
        }
        for bad in ["2023-02-29", "2023-13-01", "2023-05-12 24:00:00", "2023-05-12 08:30:00.1234567", "12/05/2023", "2023-05-12 08:30:00+02", ""] {
            assert!(!is_timestamp(bad), "{bad}");
        }
    }

    #[test]
    fn uuids() {
        assert!(is_uuid("3f1c7c5e-0000-4000-8000-00000000000A"));
        assert!(!is_uuid("3f1c7c5e00004000800000000000000A"));
        assert!(!is_uuid("3f1c7c5e-0000-4000-8000-00000000000G"));
    }
}
