//! One page of the export API turned into rows ready to load, on the HTTP helper thread: every
//! item validated, de-duplicated, encoded (jsonb, EWKB) and hashed, so that the backend only
//! compares hashes with what it holds and copies bytes. No PostgreSQL calls.
//!
//! What is decided here, and why it can be: a key, a uuid, CA/JDD uuids and timestamps are
//! checked exactly as the SQL casts would check them; items PostgreSQL could not store as jsonb
//! are refused with its message; geometries are converted when the result is byte-identical to
//! PostGIS's, and otherwise left to PostGIS (`Geom::Defer`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hasher;

use super::array::{Aligned, ArrayBuilder, Elem};
use super::geometry::{self, Converted};
use super::jsonb::{self, Value};
use super::varlena;
use crate::calendar::{civil_from_days, days_from_civil};
use crate::source::page::{
    is_uuid, item_key, key_of, read_page, summary, Fields, PageLimits, PageSummary, ParsedItem, OVER_LIMIT,
};

/// About what the other columns of a gn2pg.observation row take on disk: an item bigger than
/// the TOAST threshold minus this makes PostgreSQL compress it.
const ROW_WITHOUT_ITEM: usize = 200;

/// Nested metadata objects (view `synthese_with_metadata`) are kept once in gn2pg.metadata, not
/// in every row.
pub const NESTED_METADATA: [&str; 2] = ["ca_data", "jdd_data"];

#[derive(Debug, Clone, PartialEq)]
pub enum Geom {
    None,
    /// EWKB, SRID 4326, byte-identical to what PostGIS makes of the text.
    Ewkb(Vec<u8>),
    /// Converted by PostGIS in the backend (3D, other SRIDs, anything unusual or invalid).
    Defer {
        geojson: Option<String>,
        wkt: Option<String>,
    },
}

/// An accepted row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: i64,
    pub uuid: Option<[u8; 16]>,
    /// The stored item: a jsonb varlena, lz4-compressed (inline TOAST) when PostgreSQL would
    /// compress it.
    pub item: Vec<u8>,
    pub geom: Geom,
    /// `derniere_action` in microseconds since 2000-01-01 (PostgreSQL's timestamp).
    pub updated: Option<i64>,
    /// CA and JDD as received.
    pub ca: Option<[u8; 16]>,
    pub jdd: Option<[u8; 16]>,
    /// Of everything stored from the source (item, geometry, CA, JDD): equal hashes mean the
    /// stored row needs no rewrite.
    pub hash: i64,
}

/// An item that is not loaded, with the reason, for gn2pg.run_error.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Option<i64>,
    pub uuid: Option<String>,
    /// The item as jsonb, when it can be one.
    pub item: Option<Vec<u8>>,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Ca,
    Jdd,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Ca => "ca",
            Level::Jdd => "jdd",
        }
    }
}

/// A CA or JDD carried by the page's rows, as the last accepted row carrying it describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub level: Level,
    pub uuid: [u8; 16],
    pub name: Option<String>,
    /// The CA of a JDD.
    pub parent: Option<[u8; 16]>,
    /// The nested `ca_data` / `jdd_data` object, as jsonb.
    pub item: Option<Vec<u8>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct PageRows {
    /// Items in the page.
    pub received: usize,
    /// Accepted rows, one per key (the last copy of a repeated key wins), in page order.
    pub rows: Vec<Row>,
    pub rejected: Vec<Rejected>,
    /// Every key the page holds, accepted or not: a keyset page proves nothing else exists in
    /// its key range.
    pub keys: Vec<i64>,
    pub meta: Vec<Meta>,
    /// Latest `derniere_action` of the accepted items.
    pub max_updated: Option<i64>,
    /// The accepted rows as the INSERT's arrays, ready for the usual case of a page of new rows.
    pub columns: Option<Columns>,
}

/// Element type oids of the INSERT's arrays (fixed, built-in: pg_type.dat).
mod oid {
    pub const INT8: u32 = 20;
    pub const BYTEA: u32 = 17;
    pub const JSONB: u32 = 3802;
    pub const TIMESTAMP: u32 = 1114;
}

/// Every accepted row of a page, one array per column of the loader's INSERT (src/loader.rs),
/// built on the helper thread. Deferred geometries are NULL here.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub id: Aligned,
    pub uuid: Aligned,
    pub item: Aligned,
    pub geom: Aligned,
    pub source_ca: Aligned,
    pub source_jdd: Aligned,
    pub updated: Aligned,
    pub hash: Aligned,
}

impl Columns {
    /// The INSERT's arrays of `rows`, in order. Sizes are computed first and memory asked for
    /// fallibly; no array may exceed PostgreSQL's 1 GB limit.
    pub fn of<'r>(rows: impl Iterator<Item = &'r Row> + Clone) -> Result<Columns, String> {
        let n = rows.clone().count();
        // Elements of a varlena array start 4-aligned: at most 3 bytes of padding each.
        let items: usize = rows.clone().map(|r| r.item.len() + 3).sum();
        fn ewkb(r: &Row) -> Option<&[u8]> {
            match &r.geom {
                Geom::Ewkb(b) => Some(&b[..]),
                _ => None,
            }
        }
        let geoms: usize = rows.clone().map(|r| ewkb(r).map_or(0, |b| b.len() + 4 + 3)).sum();
        let array = |elem, oid, bytes, push: &dyn Fn(&mut ArrayBuilder, &Row)| -> Result<Aligned, String> {
            let mut a = ArrayBuilder::try_with_capacity(elem, oid, n, bytes)?;
            rows.clone().for_each(|r| push(&mut a, r));
            a.finish_aligned()
        };
        Ok(Columns {
            id: array(Elem::Int8, oid::INT8, 8 * n, &|a, r| a.push_i64(r.id))?,
            uuid: array(Elem::Uuid, UUID, 16 * n, &|a, r| a.push_opt_uuid(r.uuid.as_ref()))?,
            item: array(Elem::Varlena, oid::JSONB, items, &|a, r| a.push_varlena(&r.item))?,
            geom: array(Elem::Varlena, oid::BYTEA, geoms, &|a, r| a.push_opt_bytes(ewkb(r)))?,
            source_ca: array(Elem::Uuid, UUID, 16 * n, &|a, r| a.push_opt_uuid(r.ca.as_ref()))?,
            source_jdd: array(Elem::Uuid, UUID, 16 * n, &|a, r| a.push_opt_uuid(r.jdd.as_ref()))?,
            updated: array(Elem::Int8, oid::TIMESTAMP, 8 * n, &|a, r| a.push_opt_i64(r.updated))?,
            hash: array(Elem::Int8, oid::INT8, 8 * n, &|a, r| a.push_i64(r.hash))?,
        })
    }
}

/// `uuid`'s type oid (built in, pg_type.dat).
const UUID: u32 = 2950;

/// How a run encodes its pages, decided once per run by the loader's preparation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// Compress items as PostgreSQL's TOAST would (the column uses lz4).
    pub compress: bool,
    /// Build EWKB in Rust (`encode::geometry`); otherwise every geometry goes to PostGIS.
    pub fast_geometry: bool,
}

/// What encoding a page may still build, in bytes ([`PageLimits::encoded_bytes`]): charged as
/// items are encoded, so a page that would build too much is refused while memory is still
/// about its size.
struct Budget<'l> {
    left: usize,
    limits: &'l PageLimits,
}

impl Budget<'_> {
    fn charge(&mut self, bytes: usize) -> Result<(), String> {
        self.left = self.left.checked_sub(bytes).ok_or_else(|| {
            format!(
                "{OVER_LIMIT}its items take more than {} bytes once encoded (twice max_page_bytes = {})",
                self.limits.encoded_bytes(),
                self.limits.max_page_bytes
            )
        })?;
        Ok(())
    }
}

/// Splits, checks and encodes a page in one pass over its text (after a census that builds
/// nothing, see `read_page`). Errors concern the page itself (not an export answer, malformed or
/// cut JSON, over a limit); item problems become [`Rejected`] entries. Memory stays within a
/// small multiple of `limits.max_page_bytes` (README, "Limits on what a source may send").
pub fn prepare(body: &str, f: &Fields, enc: Encoding, limits: &PageLimits) -> Result<(PageSummary, PageRows), String> {
    // A bug must fail the page, not end the helper thread without a word.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prepare_page(body, f, enc, limits))).unwrap_or_else(|p| {
        let why = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        Err(format!("internal error while preparing the page: {}", why.unwrap_or_else(|| "panic".into())))
    })
}

fn prepare_page(body: &str, f: &Fields, enc: Encoding, limits: &PageLimits) -> Result<(PageSummary, PageRows), String> {
    let mut budget = Budget { left: limits.encoded_bytes(), limits };
    let mut scratch = Vec::new();
    let (env, parsed) =
        read_page(body, limits, |item, geometry| parse_item(item, geometry, f, enc, &mut budget, &mut scratch))?;
    drop(scratch);
    let summary = summary(&env, parsed.iter().map(|p| p.id));
    let mut rows = assemble(parsed)?;
    if enc.compress {
        let mut scratch = Vec::new();
        for r in rows.rows.iter_mut() {
            if r.item.len() + ROW_WITHOUT_ITEM > varlena::TOAST_TUPLE_THRESHOLD {
                if let Some(c) = varlena::lz4_compressed(&r.item, &mut scratch) {
                    r.item = c;
                }
            }
        }
    }
    rows.columns = Some(Columns::of(rows.rows.iter())?);
    Ok((summary, rows))
}

/// One item after parsing: either a row candidate or a rejection.
struct Parsed {
    id: Option<i64>,
    outcome: Result<Candidate, Rejected>,
}

struct Candidate {
    row: Row,
    /// What the row says of its CA and JDD, for the metadata of the rows that win (the item's
    /// parsed value is dropped as soon as it is encoded).
    ca: Option<Described>,
    jdd: Option<Described>,
}

/// A CA or JDD as one row describes it.
#[derive(Default)]
struct Described {
    name: Option<String>,
    /// The nested `ca_data` / `jdd_data` object, as jsonb.
    item: Option<Vec<u8>>,
}

fn reject(id: Option<i64>, uuid: Option<String>, item: Option<Vec<u8>>, reason: String) -> Rejected {
    Rejected { id, uuid, item, reason }
}

/// The text of a scalar member: strings unescaped, numbers and booleans as written, JSON null as
/// absent; an object or array is kept as a marker so that it fails validation visibly.
fn member_text<'v>(v: Option<&'v Value>) -> Option<Cow<'v, str>> {
    Some(match v? {
        Value::Null => return None,
        Value::String(s) => Cow::Borrowed(s.as_ref()),
        Value::Number(n) => Cow::Borrowed(n),
        Value::Bool(true) => Cow::Borrowed("true"),
        Value::Bool(false) => Cow::Borrowed("false"),
        Value::Array(_) => Cow::Borrowed("[…]"),
        Value::Object(_) => Cow::Borrowed("{…}"),
    })
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

fn parse_item(
    item: ParsedItem,
    geojson: Option<&str>,
    f: &Fields,
    enc: Encoding,
    budget: &mut Budget,
    scratch: &mut Vec<u8>,
) -> Result<Parsed, String> {
    let value = match item {
        Ok(v) => v,
        Err((e, text)) => {
            // Valid JSON that jsonb refuses (\u0000, lone surrogates): the key can still be read
            // for the report.
            let id = item_key(text, &[&f.key]);
            let reason = format!("item cannot be stored as jsonb: {e}");
            budget.charge(reason.len())?;
            return Ok(Parsed { id, outcome: Err(reject(id, None, None, reason)) });
        }
    };
    if !matches!(value, Value::Object(_)) {
        let item = encode_exact(&value, &[], scratch).ok();
        budget.charge(item.as_ref().map_or(0, Vec::len))?;
        return Ok(Parsed { id: None, outcome: Err(reject(None, None, item, "item is not a JSON object".into())) });
    }
    let id = key_of(value.get(&f.key));
    let text = |name: &str| member_text(value.get(name));
    let nested = |object: &str| member_text(value.get(object).and_then(|o| o.get("uuid")));
    let uuid = text(&f.uuid);
    let ca = text("ca_uuid").or_else(|| nested("ca_data"));
    let jdd = text("jdd_uuid").or_else(|| nested("jdd_data"));
    let updated = text(&f.updated);
    let (uuid_b, ca_b, jdd_b) =
        (uuid.as_deref().map(uuid_bytes), ca.as_deref().map(uuid_bytes), jdd.as_deref().map(uuid_bytes));
    let updated_us = updated.as_deref().map(timestamp_micros);
    let reason = if id.is_none() {
        Some(format!("missing or non-integer key {}", f.key))
    } else if let (Some(u), Some(None)) = (uuid.as_deref(), uuid_b) {
        Some(format!("invalid uuid {} in {}", short(u), f.uuid))
    } else if let (Some(c), Some(None)) = (ca.as_deref(), ca_b) {
        Some(format!("invalid acquisition framework uuid {}", short(c)))
    } else if let (Some(j), Some(None)) = (jdd.as_deref(), jdd_b) {
        Some(format!("invalid dataset uuid {}", short(j)))
    } else if let (Some(t), Some(None)) = (updated.as_deref(), updated_us) {
        Some(format!("invalid timestamp {} in {}", short(t), f.updated))
    } else {
        None
    };
    let item = match encode_exact(&value, &NESTED_METADATA, scratch) {
        Ok(item) => item,
        Err(e) if e.limit => return Err(format!("{OVER_LIMIT}{e}")),
        Err(e) => {
            let uuid = uuid.map(Cow::into_owned);
            let reason = format!("item cannot be stored as jsonb: {e}");
            budget.charge(reason.len())?;
            return Ok(Parsed { id, outcome: Err(reject(id, uuid, None, reason)) });
        }
    };
    budget.charge(item.len())?;
    if let Some(reason) = reason {
        let uuid = uuid.map(Cow::into_owned);
        budget.charge(reason.len())?;
        return Ok(Parsed { id, outcome: Err(reject(id, uuid, Some(item), reason)) });
    }
    let wkt = text(&f.wkt).filter(|w| !w.trim().is_empty());
    let geom = match (geojson, wkt) {
        (Some(g), _) => match enc.fast_geometry.then(|| geometry::from_geojson(g)) {
            Some(Converted::Ewkb(b)) => Geom::Ewkb(b),
            _ => Geom::Defer { geojson: Some(g.to_string()), wkt: None },
        },
        (None, Some(w)) => match enc.fast_geometry.then(|| geometry::from_wkt(&w)) {
            Some(Converted::Ewkb(b)) => Geom::Ewkb(b),
            _ => Geom::Defer { geojson: None, wkt: Some(w.into_owned()) },
        },
        (None, None) => Geom::None,
    };
    budget.charge(match &geom {
        Geom::None => 0,
        Geom::Ewkb(b) => b.len(),
        Geom::Defer { geojson, wkt } => geojson.as_ref().or(wkt.as_ref()).map_or(0, String::len),
    })?;
    let (ca, jdd) = (ca_b.flatten(), jdd_b.flatten());
    let described_ca = ca.map(|_| describe(&value, Level::Ca, scratch));
    let described_jdd = jdd.map(|_| describe(&value, Level::Jdd, scratch));
    for d in [&described_ca, &described_jdd].into_iter().flatten() {
        budget.charge(d.name.as_ref().map_or(0, String::len) + d.item.as_ref().map_or(0, Vec::len))?;
    }
    let hash = content_hash(&item, &geom, ca.as_ref(), jdd.as_ref());
    let row = Row {
        id: id.unwrap_or_default(),
        uuid: uuid_b.flatten(),
        item,
        geom,
        updated: updated_us.flatten(),
        ca,
        jdd,
        hash,
    };
    Ok(Parsed { id, outcome: Ok(Candidate { row, ca: described_ca, jdd: described_jdd }) })
}

/// `value` as jsonb without the root members named in `skip`, in a vector of exactly its size
/// (what the page keeps is then what the budget counts); `scratch` is reused across items.
fn encode_exact(value: &Value, skip: &[&str], scratch: &mut Vec<u8>) -> Result<Vec<u8>, jsonb::JsonbError> {
    scratch.clear();
    jsonb::encode_into_without(value, skip, scratch)?;
    let mut out = Vec::new();
    if out.try_reserve_exact(scratch.len()).is_err() {
        return crate::json::limit_err("out of memory while encoding an item");
    }
    out.extend_from_slice(scratch);
    Ok(out)
}

/// The name and nested object a row gives its CA or JDD.
fn describe(value: &Value, level: Level, scratch: &mut Vec<u8>) -> Described {
    let (flat, object) = match level {
        Level::Ca => ("ca_nom", "ca_data"),
        Level::Jdd => ("jdd_nom", "jdd_data"),
    };
    let nested = value.get(object);
    let name =
        member_text(value.get(flat)).or_else(|| member_text(nested.and_then(|o| o.get("name")))).map(Cow::into_owned);
    let item = match nested {
        Some(o @ Value::Object(_)) => encode_exact(o, &[], scratch).ok(),
        _ => None,
    };
    Described { name, item }
}

/// De-duplication (views joining several protocols repeat a row, docs/source-api.md §3.4: the last
/// copy of a key wins), one uuid per key within the page, and the page's CA/JDD. Every
/// collection holds at most one entry per item, reserved fallibly.
fn assemble(parsed: Vec<Parsed>) -> Result<PageRows, String> {
    let n = parsed.len();
    let oom = |_| format!("out of memory while assembling a page of {n} items");
    let mut out = PageRows { received: n, ..Default::default() };
    out.keys.try_reserve_exact(n).map_err(oom)?;
    out.rejected.try_reserve(n).map_err(oom)?;
    let mut last_of: HashMap<i64, usize> = HashMap::new();
    last_of.try_reserve(n).map_err(oom)?;
    for (i, p) in parsed.iter().enumerate() {
        if let Some(id) = p.id {
            out.keys.push(id);
            last_of.insert(id, i);
        }
    }
    let mut winners: Vec<Candidate> = Vec::new();
    winners.try_reserve_exact(n).map_err(oom)?;
    for (i, p) in parsed.into_iter().enumerate() {
        if p.id.is_some_and(|id| last_of.get(&id) != Some(&i)) {
            continue;
        }
        match p.outcome {
            Ok(c) => winners.push(c),
            Err(r) => out.rejected.push(r),
        }
    }
    drop(last_of);
    // Two keys with one uuid: the smaller key keeps it, the others are reported.
    let mut owner: HashMap<[u8; 16], i64> = HashMap::new();
    owner.try_reserve(winners.len()).map_err(oom)?;
    for c in &winners {
        if let Some(u) = c.row.uuid {
            let e = owner.entry(u).or_insert(c.row.id);
            *e = (*e).min(c.row.id);
        }
    }
    let mut accepted: Vec<Candidate> = Vec::new();
    accepted.try_reserve_exact(winners.len()).map_err(oom)?;
    for c in winners {
        match c.row.uuid {
            Some(u) if owner.get(&u) != Some(&c.row.id) => {
                let text = uuid_text(&u);
                out.rejected.push(reject(
                    Some(c.row.id),
                    Some(text.clone()),
                    Some(c.row.item),
                    format!("uuid {text} appears under two keys in the same page"),
                ));
            }
            _ => accepted.push(c),
        }
    }
    drop(owner);
    // Each CA and JDD of the page once, described by the last accepted row carrying it.
    let mut last_carrier: HashMap<(Level, [u8; 16]), usize> = HashMap::new();
    let mut order: Vec<(Level, [u8; 16])> = Vec::new();
    for (i, c) in accepted.iter().enumerate() {
        for key in [c.row.ca.map(|u| (Level::Ca, u)), c.row.jdd.map(|u| (Level::Jdd, u))].into_iter().flatten() {
            if last_carrier.insert(key, i).is_none() {
                order.try_reserve(1).map_err(oom)?;
                order.push(key);
            }
        }
    }
    out.meta.try_reserve_exact(order.len()).map_err(oom)?;
    for key @ (level, uuid) in order {
        let c = &mut accepted[last_carrier[&key]];
        let (described, parent) = match level {
            Level::Ca => (c.ca.take(), None),
            Level::Jdd => (c.jdd.take(), c.row.ca),
        };
        let Described { name, item } = described.unwrap_or_default();
        out.meta.push(Meta { level, uuid, name, parent, item });
    }
    out.rows.try_reserve_exact(accepted.len()).map_err(oom)?;
    for c in accepted {
        if let Some(t) = c.row.updated {
            out.max_updated = Some(out.max_updated.map_or(t, |m| m.max(t)));
        }
        out.rows.push(c.row);
    }
    Ok(out)
}

fn content_hash(item: &[u8], geom: &Geom, ca: Option<&[u8; 16]>, jdd: Option<&[u8; 16]>) -> i64 {
    let mut h = twox_hash::XxHash3_64::with_seed(0);
    h.write(item);
    match geom {
        Geom::None => h.write_u8(0),
        Geom::Ewkb(b) => {
            h.write_u8(1);
            h.write(b);
        }
        Geom::Defer { geojson, wkt } => {
            h.write_u8(2);
            h.write(geojson.as_deref().or(wkt.as_deref()).unwrap_or_default().as_bytes());
        }
    }
    for u in [ca, jdd] {
        match u {
            Some(u) => {
                h.write_u8(1);
                h.write(u);
            }
            None => h.write_u8(0),
        }
    }
    h.finish() as i64
}

pub fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    if !is_uuid(s) {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = s.bytes().filter(|c| *c != b'-').map(|c| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    });
    for b in out.iter_mut() {
        *b = (nibbles.next()? << 4) | nibbles.next()?;
    }
    Some(out)
}

/// PostgreSQL's text form of a uuid (lower case).
pub fn uuid_text(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// 2000-01-01, PostgreSQL's timestamp epoch, in days since 1970-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const US_PER_DAY: i64 = 86_400_000_000;

/// `YYYY-MM-DD[( |T)HH:MM[:SS[.f{1,6}]]]` with real calendar bounds, as microseconds since
/// 2000-01-01: the value `::timestamp` gives for these forms. Other forms are refused, so that no
/// cast can fail in SQL.
pub fn timestamp_micros(s: &str) -> Option<i64> {
    if !crate::source::page::is_timestamp(s) {
        return None;
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> i64 { b[r].iter().fold(0i64, |a, c| a * 10 + i64::from(c - b'0')) };
    let days = days_from_civil(num(0..4), num(5..7) as u32, num(8..10) as u32) - PG_EPOCH_DAYS;
    let mut us = days * US_PER_DAY;
    if b.len() >= 16 {
        us += (num(11..13) * 3600 + num(14..16) * 60) * 1_000_000;
    }
    if b.len() >= 19 {
        us += num(17..19) * 1_000_000;
    }
    if b.len() > 20 {
        let frac = &b[20..];
        let mut v = num(20..b.len());
        for _ in frac.len()..6 {
            v *= 10;
        }
        us += v;
    }
    Some(us)
}

/// `to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US')`: fixed width, so text order is time order.
pub fn timestamp_text(us: i64) -> String {
    let days = us.div_euclid(US_PER_DAY);
    let rem = us.rem_euclid(US_PER_DAY);
    let (y, m, d) = civil_from_days(days + PG_EPOCH_DAYS);
    let secs = rem / 1_000_000;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}", secs / 3600, secs / 60 % 60, secs % 60, rem % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::page::Shape;

    const PLAIN: Encoding = Encoding { compress: false, fast_geometry: true };
    const LIMITS: PageLimits = PageLimits { max_page_bytes: 64 << 20 };

    fn fields() -> Fields {
        Fields {
            key: "id_synthese".into(),
            uuid: "id_perm_sinp".into(),
            wkt: "wkt_4326".into(),
            updated: "derniere_action".into(),
        }
    }

    #[test]
    fn timestamps_as_postgres_reads_them() {
        assert_eq!(timestamp_micros("2000-01-01"), Some(0));
        assert_eq!(timestamp_micros("2000-01-02 00:00:01.5"), Some(US_PER_DAY + 1_500_000));
        assert_eq!(timestamp_micros("1999-12-31T23:59"), Some(-60_000_000));
        // SELECT extract(epoch FROM '2023-05-13 10:02:11.482312'::timestamp - '2000-01-01') * 1e6
        assert_eq!(timestamp_micros("2023-05-13 10:02:11.482312"), Some(737_287_331_482_312));
        assert_eq!(timestamp_micros("2024-02-29 12:00"), Some(762_523_200_000_000));
        assert_eq!(timestamp_micros("2023-02-29"), None);
        for us in [0, 737_287_331_482_312, -60_000_000, 762_523_200_000_000, -3_000_000_000_000_000] {
            assert_eq!(timestamp_micros(&timestamp_text(us)), Some(us), "{}", timestamp_text(us));
        }
        assert_eq!(timestamp_text(737_287_331_482_312), "2023-05-13 10:02:11.482312");
    }

    #[test]
    fn uuids_round_trip() {
        let t = "3F1C7C5E-0000-4000-8000-00000000000a";
        let b = uuid_bytes(t).unwrap();
        assert_eq!(b[0], 0x3f);
        assert_eq!(b[15], 0x0a);
        assert_eq!(uuid_text(&b), t.to_lowercase());
        assert_eq!(uuid_bytes("nope"), None);
    }

    #[test]
    fn page_rows_are_checked_deduplicated_and_encoded() {
        let body = r#"{"items":[
            {"id_synthese":1,"id_perm_sinp":"3f1c7c5e-0000-4000-8000-000000000001","wkt_4326":"POINT(5 45)","derniere_action":"2023-05-13 10:02:11.482312","ca_data":{"uuid":"57b7d0f2-4183-4b7b-8f08-6e105d476dc5","name":"x"},"jdd_uuid":"9b2a0c1e-5f4d-4e3c-8b7a-6d5c4b3a2f10","jdd_nom":"J","nom":"l'\"é"},
            {"id_perm_sinp":"3f1c7c5e-0000-4000-8000-000000000002"},
            {"id_synthese":3,"id_perm_sinp":"nope"},
            {"id_synthese":4,"derniere_action":"2023-02-30 10:00:00"},
            {"id_synthese":5,"ca_uuid":"bad"},
            "scalar",
            {"id_synthese":6,"id_perm_sinp":"3f1c7c5e-0000-4000-8000-000000000001"},
            {"id_synthese":7,"x":"\u0000"},
            {"id_synthese":8,"v":1},
            {"id_synthese":8,"v":2}
        ],"limit":1000}"#;
        let (summary, p) = prepare(body, &fields(), PLAIN, &LIMITS).unwrap();
        assert_eq!(summary.len, 10);
        assert_eq!((summary.min_key, summary.max_key, summary.missing_keys), (Some(1), Some(8), 2));
        assert_eq!(p.received, 10);
        assert_eq!(p.keys, vec![1, 3, 4, 5, 6, 7, 8, 8]);
        let ids: Vec<i64> = p.rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 8], "accepted rows; the last copy of key 8 wins");
        let v8 = jsonb::encode(&jsonb::parse(r#"{"id_synthese":8,"v":2}"#).unwrap()).unwrap();
        assert_eq!(p.rows[1].item, v8);
        let r1 = &p.rows[0];
        let stored = jsonb::encode(
            &jsonb::parse(r#"{"id_synthese":1,"id_perm_sinp":"3f1c7c5e-0000-4000-8000-000000000001","wkt_4326":"POINT(5 45)","derniere_action":"2023-05-13 10:02:11.482312","jdd_uuid":"9b2a0c1e-5f4d-4e3c-8b7a-6d5c4b3a2f10","jdd_nom":"J","nom":"l'\"é"}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(r1.item, stored, "ca_data is kept in gn2pg.metadata, not in the row");
        assert_eq!(r1.updated, Some(737_287_331_482_312));
        assert_eq!(r1.ca, uuid_bytes("57b7d0f2-4183-4b7b-8f08-6e105d476dc5"));
        assert!(matches!(r1.geom, Geom::Ewkb(_)));
        let reasons: Vec<(Option<i64>, &str)> = p.rejected.iter().map(|r| (r.id, r.reason.as_str())).collect();
        let has = |id: Option<i64>, text: &str| reasons.iter().any(|(i, r)| *i == id && r.contains(text));
        assert!(has(None, "missing or non-integer key id_synthese"), "{reasons:?}");
        assert!(has(Some(3), "invalid uuid nope"));
        assert!(has(Some(4), "invalid timestamp 2023-02-30"));
        assert!(has(Some(5), "invalid acquisition framework uuid bad"));
        assert!(has(None, "not a JSON object"));
        assert!(has(Some(6), "appears under two keys in the same page"), "{reasons:?}");
        assert!(has(Some(7), "\\u0000 cannot be converted to text"), "{reasons:?}");
        assert_eq!(p.rejected.len(), 7);
        let ca = p.meta.iter().find(|m| m.level == Level::Ca).unwrap();
        assert_eq!(ca.name.as_deref(), Some("x"));
        assert!(ca.item.is_some());
        let jdd = p.meta.iter().find(|m| m.level == Level::Jdd).unwrap();
        assert_eq!((jdd.name.as_deref(), jdd.parent), (Some("J"), r1.ca));
        assert_eq!(p.max_updated, Some(737_287_331_482_312));
    }

    #[test]
    fn hash_follows_content() {
        let body = |v: &str| format!(r#"{{"items":[{{"id_synthese":1,"v":{v}}}],"limit":1000}}"#);
        let h = |v: &str| prepare(&body(v), &fields(), PLAIN, &LIMITS).unwrap().1.rows[0].hash;
        assert_eq!(h("1"), h("1"));
        assert_eq!(h("1"), h(" 1 "), "same jsonb, same hash");
        assert_ne!(h("1"), h("2"));
    }

    #[test]
    fn page_errors_name_the_cause() {
        let e = |body: &str| prepare(body, &fields(), PLAIN, &LIMITS).unwrap_err();
        assert!(
            e(r#"{"items":[{"id_synthese":1},{"id_sy"#).contains("truncated JSON (35 bytes received)"),
            "{}",
            e(r#"{"items":[{"id_synthese":1},{"id_sy"#)
        );
        assert!(e("<html><body>502 Bad Gateway</body></html>").contains("malformed JSON"));
        assert!(e(r#"{"message":"no"}"#).contains("no \"items\""));
        assert!(e(r#"{"items":{"type":"Feature"}}"#).contains("not a FeatureCollection"));
        assert!(e(r#"{"items":"x"}"#).contains("must be an array or a FeatureCollection"));
        assert!(e(r#"{"items":[1,]}"#).contains("malformed JSON"));
        assert!(e(r#"{"items":[]} trailing"#).contains("malformed JSON"));
        let (s, p) =
            prepare(r#"{"items":[],"limit":1000,"total":0,"total_filtered":0}"#, &fields(), PLAIN, &LIMITS).unwrap();
        assert_eq!((s.len, s.limit, s.total, s.total_filtered), (0, Some(1000), Some(0), Some(0)));
        assert!(p.rows.is_empty());
    }

    #[test]
    fn an_item_jsonb_refuses_does_not_stop_the_page() {
        let body = r#"{"items":{"type":"FeatureCollection","features":[
            {"type":"Feature","properties":{"id_synthese":1,"t":"a\u0000b"},"geometry":null},
            {"type":"Feature","properties":{"id_synthese":2},"geometry":{"type":"Point","coordinates":[1,2]}}]},"limit":1000}"#;
        let (summary, p) = prepare(body, &fields(), PLAIN, &LIMITS).unwrap();
        assert_eq!((summary.len, summary.max_key), (2, Some(2)));
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rejected[0].id, Some(1));
        assert!(p.rejected[0].reason.contains("cannot be stored as jsonb"));
    }

    #[test]
    fn features_take_their_geometry() {
        let body = r#"{"items":{"type":"FeatureCollection","features":[
            {"type":"Feature","geometry":{"type":"Point","coordinates":[4.8,45.7]},"properties":{"id_synthese":12}},
            {"type":"Feature","geometry":null,"properties":{"id_synthese":"15"}}]}}"#;
        let (summary, p) = prepare(body, &fields(), PLAIN, &LIMITS).unwrap();
        assert_eq!(summary.shape, Shape::FeatureCollection);
        assert_eq!(p.rows.len(), 2);
        assert!(matches!(p.rows[0].geom, Geom::Ewkb(_)));
        assert_eq!(p.rows[1].geom, Geom::None);
        assert_eq!(p.rows[1].id, 15);
    }
}

#[cfg(test)]
pub(crate) mod properties {
    use super::*;
    use crate::alloc_count::peak_of;
    use crate::testgen::{edits, hostile_page, mutate, page};
    use proptest::prelude::*;

    /// The memory one page may take to prepare, in multiples of max_page_bytes (README, "Limits on
    /// what a source may send"), plus what any page costs (error texts, empty tables).
    pub const PAGE_BOUND: usize = 8;
    const FIXED: usize = 64 << 10;

    fn fields() -> Fields {
        Fields {
            key: "id_synthese".into(),
            uuid: "id_perm_sinp".into(),
            wkt: "wkt_4326".into(),
            updated: "derniere_action".into(),
        }
    }

    fn check(body: &str, max_page_bytes: usize, compress: bool) -> Result<(), TestCaseError> {
        let limits = PageLimits::new(max_page_bytes);
        let enc = Encoding { compress, fast_geometry: true };
        let (result, peak) = peak_of(|| prepare(body, &fields(), enc, &limits).map(drop));
        let bound = PAGE_BOUND * limits.max_page_bytes + FIXED;
        prop_assert!(
            peak <= bound,
            "{peak} bytes for a page of {} bytes (max_page_bytes {max_page_bytes}, bound {bound}): {:?}",
            body.len(),
            result
        );
        if std::env::var_os("GN2PG_SHOW_PEAKS").is_some() {
            eprintln!(
                "peak {:.2} x max_page_bytes ({} bytes, {:?}) {}",
                peak as f64 / max_page_bytes as f64,
                body.len(),
                result.err(),
                &body[..body.len().min(150)]
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Generated and mutated pages: an answer or an error, never a panic, and memory within
        /// the bound whatever max_page_bytes is (from the body's size to four times it).
        #[test]
        fn pages_never_panic_and_stay_within_their_bound(
            body in page(), e in edits(), times in 2usize..8, compress in any::<bool>()
        ) {
            let body = mutate(&body, &e);
            check(&body, (body.len() * times / 2).max(1024), compress)?;
        }

        /// Hostile pages exactly at max_page_bytes, where the limits bite.
        #[test]
        fn hostile_pages_at_the_limit_stay_within_their_bound(body in hostile_page()) {
            check(&body, body.len().max(1024), true)?;
        }
    }
}
