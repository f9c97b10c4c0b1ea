//! Reading one answer of the export API: the envelope and its items in one pass, and each item's
//! key (for paging). Turning items into rows is `encode::rows`.

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::json::{JsonbError, Scanner, Value};

/// `items` is a plain array (views without `geometry_field`) or a GeoJSON FeatureCollection
/// (export module >= 1.7.2 or GeoNature >= 2.16 with `geometry_field`), docs/source-api.md §3.2.
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
    /// Unreliable across versions (docs/source-api.md §4.3): a progress hint, never a stop rule.
    pub total_filtered: Option<u64>,
    /// Largest key in the page; drives keyset paging.
    pub max_key: Option<i64>,
    /// Smallest key in the page.
    pub min_key: Option<i64>,
    /// Items whose key is absent or not an integer.
    pub missing_keys: usize,
}

/// The numbers of a page's envelope (docs/source-api.md §3.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Envelope {
    pub shape: Shape,
    pub limit: Option<u64>,
    pub total: Option<u64>,
    pub total_filtered: Option<u64>,
}

/// An item as the walk parsed it (a feature's `properties`), or, for JSON that jsonb refuses
/// (`\u0000`, lone surrogates), the error with the item's text.
pub type ParsedItem<'a> = Result<Value<'a>, (JsonbError, &'a str)>;

/// Items in one answer, whatever `max_page_bytes` (GeoNature serves 1000 per page by default).
pub const MAX_ITEMS: usize = 100_000;
/// An item takes at least this much of `max_page_bytes` (real items take 1 to 3 KB)...
const BYTES_PER_ITEM: usize = 256;
/// ...a JSON value or object key of the items this much (real items: about 15 bytes each)...
const BYTES_PER_NODE: usize = 16;
/// ...and one item's values and keys this much, so one item cannot hold a whole page's share.
const BYTES_PER_ITEM_NODE: usize = 64;
/// What encoding a page may build (jsonb, EWKB, metadata), in multiples of `max_page_bytes`
/// (real pages: about 1.3 times their size).
const ENCODED_PER_PAGE_BYTE: usize = 2;
/// The largest accepted `max_page_bytes`: keeps every datum built from a page far below
/// PostgreSQL's 1 GB limit, and a worker's memory within a few GB.
pub const MAX_PAGE_BYTES_CAP: usize = 256 << 20;

/// What gn2pg accepts in one answer of a source: every count follows from `max_page_bytes`,
/// so that the memory spent on a page is a small multiple of it, whatever the source sends
/// (README, "Limits on what a source may send").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    pub max_page_bytes: usize,
}

impl PageLimits {
    pub fn new(max_page_bytes: usize) -> PageLimits {
        PageLimits { max_page_bytes: max_page_bytes.min(MAX_PAGE_BYTES_CAP) }
    }

    pub fn items(&self) -> usize {
        MAX_ITEMS.min(self.max_page_bytes / BYTES_PER_ITEM).max(1)
    }

    /// JSON values and object keys in all the items of a page.
    pub fn nodes(&self) -> usize {
        (self.max_page_bytes / BYTES_PER_NODE).max(64)
    }

    /// JSON values and object keys in one item.
    pub fn item_nodes(&self) -> usize {
        (self.max_page_bytes / BYTES_PER_ITEM_NODE).max(64)
    }

    /// Bytes that encoding the page's items may build.
    pub fn encoded_bytes(&self) -> usize {
        ENCODED_PER_PAGE_BYTE * self.max_page_bytes
    }

    fn exceeded(&self, what: String) -> String {
        format!("{OVER_LIMIT}{what} (max_page_bytes = {})", self.max_page_bytes)
    }
}

/// How every page error over a limit of gn2pg begins (as opposed to a malformed page): the
/// source layer tells the two apart by it (`SourceError::class`).
pub const OVER_LIMIT: &str = "the answer exceeds a limit of gn2pg: ";

/// What a page holds, counted in a pass that builds nothing, before anything is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Census {
    pub items: usize,
    /// JSON values and object keys of the items (a feature's `properties`).
    pub nodes: usize,
}

/// Walks an answer of the export API in one pass, handing each item and a feature's geometry
/// text to `item` as it is parsed; the results come back in page order. The answer is first
/// counted ([`census`]) and refused if it exceeds `limits`. Errors concern the page itself (not
/// an export answer, malformed or cut JSON, over a limit, or what `item` returns) and are plain
/// strings: the caller wraps them with the (redacted) URL.
pub fn read_page<'a, T>(
    body: &'a str,
    limits: &PageLimits,
    item: impl FnMut(ParsedItem<'a>, Option<&'a str>) -> Result<T, String>,
) -> Result<(Envelope, Vec<T>), String> {
    let counted = census(body, limits)?;
    let mut out = Vec::new();
    out.try_reserve_exact(counted.items)
        .map_err(|_| limits.exceeded(format!("out of memory for {} items", counted.items)))?;
    let mut build = Build { item, out };
    let envelope = walk(body, &mut build)?;
    Ok((envelope, build.out))
}

/// Counts a page's items and values, and checks every limit, without building anything.
pub fn census(body: &str, limits: &PageLimits) -> Result<Census, String> {
    let mut count = Count { limits, census: Census::default() };
    walk(body, &mut count)?;
    Ok(count.census)
}

/// What the walk does with each item; `Props` is what it reads of an item (a feature's
/// `properties`).
trait Items<'a> {
    type Props;
    fn props(&mut self, sc: &mut Scanner<'a>) -> Result<Self::Props, JsonbError>;
    /// A feature without `properties`.
    fn no_props(&self) -> Self::Props;
    fn item(&mut self, props: Self::Props, geometry: Option<&'a str>) -> Result<(), String>;
    /// A repeated `items` member: the last one counts, as in jsonb.
    fn restart(&mut self);
    /// Refuses another item, before the array says it has one (`next` is its next byte).
    fn room(&self, _next: Option<u8>) -> Result<(), String> {
        Ok(())
    }
}

struct Build<T, F> {
    item: F,
    out: Vec<T>,
}

impl<'a, T, F: FnMut(ParsedItem<'a>, Option<&'a str>) -> Result<T, String>> Items<'a> for Build<T, F> {
    type Props = ParsedItem<'a>;
    fn props(&mut self, sc: &mut Scanner<'a>) -> Result<ParsedItem<'a>, JsonbError> {
        sc.value()
    }
    fn no_props(&self) -> ParsedItem<'a> {
        Ok(Value::Null)
    }
    fn item(&mut self, props: ParsedItem<'a>, geometry: Option<&'a str>) -> Result<(), String> {
        let v = (self.item)(props, geometry)?;
        // Reserved from the census; a repeated `items` member may need more.
        self.out.try_reserve(1).map_err(|_| "out of memory for the page's items".to_string())?;
        self.out.push(v);
        Ok(())
    }
    fn restart(&mut self) {
        self.out.clear();
    }
}

struct Count<'l> {
    limits: &'l PageLimits,
    census: Census,
}

impl<'a> Items<'a> for Count<'_> {
    /// The item's values and keys.
    type Props = usize;
    fn props(&mut self, sc: &mut Scanner<'a>) -> Result<usize, JsonbError> {
        let before = sc.nodes();
        sc.skip()?;
        Ok(sc.nodes() - before)
    }
    fn no_props(&self) -> usize {
        1
    }
    fn item(&mut self, nodes: usize, _: Option<&'a str>) -> Result<(), String> {
        let (l, c) = (self.limits, &mut self.census);
        c.items += 1;
        c.nodes += nodes;
        if c.items > l.items() {
            return self.room(Some(b','));
        }
        if nodes > l.item_nodes() {
            return Err(l.exceeded(format!(
                "item {} holds more than {} JSON values and keys (one per {BYTES_PER_ITEM_NODE} bytes of max_page_bytes)",
                c.items,
                l.item_nodes()
            )));
        }
        if c.nodes > l.nodes() {
            return Err(l.exceeded(format!(
                "the page's items hold more than {} JSON values and keys (one per {BYTES_PER_NODE} bytes of max_page_bytes)",
                l.nodes()
            )));
        }
        Ok(())
    }
    fn restart(&mut self) {}
    fn room(&self, next: Option<u8>) -> Result<(), String> {
        let l = self.limits;
        if self.census.items >= l.items() && next == Some(b',') {
            return Err(l.exceeded(format!(
                "more than {} items in one page (at most {MAX_ITEMS}, and one per {BYTES_PER_ITEM} bytes of max_page_bytes)",
                l.items()
            )));
        }
        Ok(())
    }
}

/// The envelope of an answer (docs/source-api.md §3.1), its items handed to `items`.
fn walk<'a, I: Items<'a>>(body: &'a str, items: &mut I) -> Result<Envelope, String> {
    let page_error = |e: JsonbError| {
        if e.limit {
            format!("{OVER_LIMIT}{e}")
        } else if e.truncated {
            // Truncated bodies are common behind proxies; say so plainly.
            format!("truncated JSON ({} bytes received): {e}", body.len())
        } else {
            format!("malformed JSON: {e}; body starts with {:?}", snippet(body, 80))
        }
    };
    let number = |v: Value| match v {
        Value::Number(t) => t.parse::<u64>().ok(),
        _ => None,
    };
    let mut sc = Scanner::new(body);
    sc.begin_object().map_err(page_error)?;
    let (mut shape, mut limit, mut total, mut total_filtered) = (None, None, None, None);
    while let Some(k) = sc.next_key().map_err(page_error)? {
        match k.as_ref() {
            "items" => {
                items.restart();
                shape = Some(read_items(&mut sc, items, &page_error)?);
            }
            "limit" | "total" | "total_filtered" => {
                // Only a number is read; anything else is skipped unbuilt, whatever its size.
                let v = match sc.peek() {
                    Some(b'-' | b'0'..=b'9') => sc.value().map_err(page_error)?.ok().and_then(number),
                    _ => sc.skip().map(|_| None).map_err(page_error)?,
                };
                match k.as_ref() {
                    "limit" => limit = v,
                    "total" => total = v,
                    _ => total_filtered = v,
                }
            }
            _ => {
                sc.skip().map_err(page_error)?;
            }
        }
    }
    sc.finish().map_err(page_error)?;
    let shape = shape.ok_or_else(|| "the answer has no \"items\" (not an export API answer)".to_string())?;
    Ok(Envelope { shape, limit, total, total_filtered })
}

/// `items`: a plain array, or a GeoJSON FeatureCollection (docs/source-api.md §3.2).
fn read_items<'a, I: Items<'a>>(
    sc: &mut Scanner<'a>,
    items: &mut I,
    page_error: &dyn Fn(JsonbError) -> String,
) -> Result<Shape, String> {
    match sc.peek() {
        Some(b'[') => {
            sc.begin_array().map_err(page_error)?;
            while items.room(sc.peek()).and_then(|_| sc.next_element().map_err(page_error))? {
                let props = items.props(sc).map_err(page_error)?;
                items.item(props, None)?;
            }
            Ok(Shape::Array)
        }
        Some(b'{') => {
            sc.begin_object().map_err(page_error)?;
            let (mut feature_collection, mut features) = (false, false);
            while let Some(k) = sc.next_key().map_err(page_error)? {
                match k.as_ref() {
                    "type" => feature_collection = is_feature_collection(sc.skip().map_err(page_error)?),
                    "features" => {
                        features = true;
                        if sc.peek() != Some(b'[') {
                            return Err("items is a FeatureCollection whose features are not an array".into());
                        }
                        sc.begin_array().map_err(page_error)?;
                        while items.room(sc.peek()).and_then(|_| sc.next_element().map_err(page_error))? {
                            read_feature(sc, items, page_error)?;
                        }
                    }
                    _ => {
                        sc.skip().map_err(page_error)?;
                    }
                }
            }
            if !feature_collection || !features {
                return Err("items is an object but not a FeatureCollection".into());
            }
            Ok(Shape::FeatureCollection)
        }
        _ => {
            let text = sc.skip().map_err(page_error)?;
            Err(format!("items must be an array or a FeatureCollection, got {}", snippet(text, 40)))
        }
    }
}

/// Whether the text of a `type` member says FeatureCollection (read without building it).
fn is_feature_collection(raw: &str) -> bool {
    raw == "\"FeatureCollection\""
        || (raw.len() < 128
            && raw.contains('\\')
            && crate::json::parse(raw).is_ok_and(|v| v == Value::String("FeatureCollection".into())))
}

fn read_feature<'a, I: Items<'a>>(
    sc: &mut Scanner<'a>,
    items: &mut I,
    page_error: &dyn Fn(JsonbError) -> String,
) -> Result<(), String> {
    if sc.peek() != Some(b'{') {
        let text = sc.skip().map_err(page_error)?;
        return Err(format!("feature: not a JSON object: {}", snippet(text, 40)));
    }
    sc.begin_object().map_err(page_error)?;
    let (mut geometry, mut properties) = (None, None);
    while let Some(k) = sc.next_key().map_err(page_error)? {
        match k.as_ref() {
            "geometry" => geometry = Some(sc.skip().map_err(page_error)?).filter(|g| *g != "null"),
            // A repeated member: the last one counts.
            "properties" => properties = Some(items.props(sc).map_err(page_error)?),
            _ => {
                sc.skip().map_err(page_error)?;
            }
        }
    }
    let props = properties.unwrap_or_else(|| items.no_props());
    items.item(props, geometry)
}

/// A page's summary from its envelope and its items' keys.
pub(crate) fn summary(env: &Envelope, keys: impl Iterator<Item = Option<i64>>) -> PageSummary {
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
    let Envelope { shape, limit, total, total_filtered } = *env;
    PageSummary { shape, len, limit, total, total_filtered, max_key, min_key, missing_keys: missing }
}

/// An item's key: an integer, or a string holding one (keys serialised as strings, "4521987",
/// still identify the row); anything else is no key.
pub(crate) fn key_of(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(t) => t.parse().ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The envelope and each item's key.
pub fn parse_page(body: &str, key: &str, limits: &PageLimits) -> Result<PageSummary, String> {
    let (env, keys) = item_keys(body, key, limits)?;
    Ok(summary(&env, keys.into_iter()))
}

/// The envelope and the key of each item, in page order.
pub fn item_keys(body: &str, key: &str, limits: &PageLimits) -> Result<(Envelope, Vec<Option<i64>>), String> {
    read_page(body, limits, |item, _| {
        Ok(match item {
            Ok(v) => key_of(v.get(key)),
            Err((_, text)) => item_key(text, &[key]),
        })
    })
}

pub(crate) fn snippet(s: &str, max: usize) -> String {
    let t: String = s.chars().take(max).collect();
    if s.chars().count() > max {
        format!("{t}…")
    } else {
        t
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

    const LIMITS: PageLimits = PageLimits { max_page_bytes: 64 << 20 };

    #[test]
    fn array_page() {
        let body = r#"{"items":[{"id_synthese":3,"x":"é\"q"},{"id_synthese":7},{"nokey":1}],
                      "limit":1000,"page":0,"total":10,"total_filtered":3,"license":{}}"#;
        let p = parse_page(body, "id_synthese", &LIMITS).unwrap();
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
        let p = parse_page(body, "id_synthese", &LIMITS).unwrap();
        assert_eq!(p.shape, Shape::FeatureCollection);
        assert_eq!((p.len, p.max_key, p.missing_keys), (2, Some(15), 0));
    }

    #[test]
    fn empty_and_errors() {
        let p =
            parse_page(r#"{"items":[],"limit":1000,"total":0,"total_filtered":0}"#, "id_synthese", &LIMITS).unwrap();
        assert_eq!((p.len, p.max_key), (0, None));
        let e = parse_page(r#"{"items":[{"id_synthese":1},{"id_sy"#, "id_synthese", &LIMITS).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = parse_page("<html><body>502 Bad Gateway</body></html>", "id_synthese", &LIMITS).unwrap_err();
        assert!(e.contains("malformed"), "{e}");
        let e = parse_page(r#"{"message":"no"}"#, "id_synthese", &LIMITS).unwrap_err();
        assert!(e.contains("no \"items\""), "{e}");
        assert!(parse_page(r#"{"items":{"type":"Feature"}}"#, "id_synthese", &LIMITS).is_err());
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
        for ok in [
            "2024-02-29",
            "2023-05-12 08:30",
            "2023-05-12 08:30:00",
            "2023-05-12T08:30:00.5",
            "2023-05-12 08:30:00.123456",
        ] {
            assert!(is_timestamp(ok), "{ok}");
        }
        for bad in [
            "2023-02-29",
            "2023-13-01",
            "2023-05-12 24:00:00",
            "2023-05-12 08:30:00.1234567",
            "12/05/2023",
            "2023-05-12 08:30:00+02",
            "",
        ] {
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

#[cfg(test)]
mod properties {
    use super::*;
    use crate::alloc_count::peak_of;
    use crate::encode::rows::properties::PAGE_BOUND;
    use crate::testgen::{edits, hostile_page, mutate, page};
    use proptest::prelude::*;

    fn check(body: &str, max_page_bytes: usize) -> Result<(), TestCaseError> {
        let limits = PageLimits::new(max_page_bytes);
        let (census_result, peak) = peak_of(|| census(body, &limits));
        prop_assert!(peak <= 4096, "the census allocated {peak} bytes (an error message at most)");
        let (result, peak) = peak_of(|| parse_page(body, "id_synthese", &limits).map(drop));
        prop_assert!(peak <= PAGE_BOUND * max_page_bytes + (64 << 10), "{peak} bytes for {} bytes", body.len());
        // The census refuses exactly the pages that are refused for a limit.
        if let Err(e) = &census_result {
            prop_assert_eq!(result.as_ref().unwrap_err(), e);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Generated and mutated pages: never a panic; nothing built by the census, and reading
        /// the keys within the page bound.
        #[test]
        fn reading_pages_never_panics_and_stays_within_its_bound(body in page(), e in edits(), times in 2usize..8) {
            let body = mutate(&body, &e);
            check(&body, (body.len() * times / 2).max(1024))?;
        }

        #[test]
        fn hostile_pages_are_refused_by_the_census(body in hostile_page()) {
            check(&body, body.len().max(1024))?;
        }
    }

    /// Found by the fuzzer: the envelope's numbers and a FeatureCollection's type were built
    /// whatever they held, in the census too.
    #[test]
    fn the_census_builds_nothing_whatever_the_envelope_holds() {
        let big = format!("{{\"type\":\"FeatureCollection\",\"features\":[{}]}}", "{},".repeat(2000) + "{}");
        for body in [
            format!(r#"{{"limit":{big},"items":[]}}"#),
            format!(r#"{{"total":[{big}],"total_filtered":"{}","items":[]}}"#, "x\\n".repeat(1000)),
            format!(r#"{{"items":{{"type":{big},"features":[]}}}}"#),
        ] {
            let (r, peak) = peak_of(|| census(&body, &PageLimits::new(1 << 20)));
            assert!(peak <= 1024, "{peak} bytes: {r:?}");
        }
        let escaped = r#"{"items":{"type":"Feature\u0043ollection","features":[]}}"#;
        assert_eq!(
            parse_page(escaped, "id_synthese", &PageLimits::new(1 << 20)).unwrap().shape,
            Shape::FeatureCollection
        );
    }

    #[test]
    fn each_limit_is_named() {
        let limits = PageLimits::new(64 << 10);
        let e = census(&format!(r#"{{"items":[{}{{}}]}}"#, "{},".repeat(256)), &limits).unwrap_err();
        assert!(e.contains("more than 256 items in one page"), "{e}");
        let e = census(&format!(r#"{{"items":[{}{{}}]}}"#, "{},".repeat(100_000)), &PageLimits::new(64 << 20));
        assert!(e.unwrap_err().contains("more than 100000 items in one page"));
        let e = census(&format!(r#"{{"items":[[{}0]]}}"#, "0,".repeat(1100)), &limits).unwrap_err();
        assert!(e.contains("item 1 holds more than 1024 JSON values"), "{e}");
        let many = vec![format!("[{}0]", "0,".repeat(900)); 5].join(",");
        let e = census(&format!(r#"{{"items":[{many}]}}"#), &limits).unwrap_err();
        assert!(e.contains("the page's items hold more than 4096 JSON values"), "{e}");
        let e = census(&format!(r#"{{"items":[{}]}}"#, "[".repeat(600)), &limits).unwrap_err();
        assert!(e.contains("nested deeper than 512 levels"), "{e}");
        assert!(census(r#"{"items":[{"id_synthese":1}]}"#, &limits).is_ok());
        assert_eq!(PageLimits::new(1 << 40).max_page_bytes, MAX_PAGE_BYTES_CAP);
        assert_eq!(PageLimits::new(64 << 20).items(), MAX_ITEMS);
    }
}
