//! JSON text to PostgreSQL's on-disk `jsonb` format, built in Rust on the HTTP helper thread.
//!
//! Why: parsing text into `jsonb` (`jsonb_in`) was the largest single cost of loading a page in
//! the backend (a third of a COPY of the same rows). Building the binary form here moves that
//! work to the other core; the backend copies bytes.
//!
//! The contract is byte identity with `jsonb_in` of the same text on a UTF8 database: same key
//! order (by byte length, then bytes), last duplicate key wins, a JEntry offset every 32nd child,
//! int-aligned numerics in `numeric_in`'s short or long format, raw scalars wrapped in a one-element
//! array. The format is PostgreSQL's stable on-disk format (pg_upgrade keeps jsonb files as they
//! are), see `src/include/utils/jsonb.h` and `jsonb_util.c:convertJsonbValue`. Inputs `jsonb_in`
//! rejects are rejected here with its message. `gn2pg._jsonb_selftest` (src/diagnostics.rs) compares
//! this encoder with `jsonb_in` byte for byte, and the test suite runs it over a corpus.
//!
//! No PostgreSQL calls: this module is unit-tested without a database.

use std::borrow::Cow;

use super::varlena::{header as varlena_header, MAX_VARLENA};
use crate::json::{key_order, limit_err};
pub use crate::json::{parse, JsonbError, Value};

/// JSON that jsonb cannot hold.
fn err<T>(msg: impl Into<String>) -> Result<T, JsonbError> {
    Err(JsonbError { message: msg.into(), syntax: false, truncated: false, limit: false })
}

/// Room for `n` more bytes, or a refusal: the sizes here come from the network, so memory is
/// asked for fallibly, before every write (the writes below then never reallocate).
fn reserve(buf: &mut Vec<u8>, n: usize) -> Result<(), JsonbError> {
    if buf.len().saturating_add(n) > MAX_VARLENA {
        return err("jsonb value too large");
    }
    buf.try_reserve(n).or_else(|_| limit_err("out of memory while encoding jsonb"))
}

// jsonb.h
const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;
const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;
const JENTRY_ISCONTAINER: u32 = 0x5000_0000;
const JB_OFFSET_STRIDE: usize = 32;

/// Appends `v` as one complete jsonb varlena (4-byte header included) to `out`, which must end
/// on a 4-byte boundary: jsonb pads numerics and containers relative to the datum's start.
pub fn encode_into(v: &Value, out: &mut Vec<u8>) -> Result<(), JsonbError> {
    encode_into_without(v, &[], out)
}

/// As [`encode_into`], leaving out the root object's members named in `skip` (what
/// `jsonb - text[]` would do after parsing).
pub fn encode_into_without(v: &Value, skip: &[&str], out: &mut Vec<u8>) -> Result<(), JsonbError> {
    debug_assert_eq!(out.len() % 4, 0, "a jsonb datum starts int-aligned");
    let start = out.len();
    reserve(out, 4)?;
    out.extend_from_slice(&[0; 4]);
    let r = match v {
        Value::Object(members) => write_object(out, members, skip).map(|_| ()),
        Value::Array(_) => write_value(out, v).map(|_| ()),
        scalar => write_array(out, std::slice::from_ref(scalar), true).map(|_| ()),
    };
    if let Err(e) = r {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start;
    if len > MAX_VARLENA {
        out.truncate(start);
        return err("jsonb value too large");
    }
    out[start..start + 4].copy_from_slice(&varlena_header(len as u32));
    Ok(())
}

/// A jsonb varlena of `v`.
pub fn encode(v: &Value) -> Result<Vec<u8>, JsonbError> {
    let mut out = Vec::new();
    reserve(&mut out, 256)?;
    encode_into(v, &mut out)?;
    Ok(out)
}

fn pad_to_int(buf: &mut Vec<u8>) -> u32 {
    let pad = (4 - buf.len() % 4) % 4;
    buf.extend_from_slice(&[0, 0, 0][..pad]);
    pad as u32
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn check_len(total: usize) -> Result<u32, JsonbError> {
    if total > JENTRY_OFFLENMASK as usize {
        return err("total size of jsonb array elements exceeds the maximum of 268435455 bytes");
    }
    Ok(total as u32)
}

fn write_string(buf: &mut Vec<u8>, s: &str) -> Result<u32, JsonbError> {
    if s.len() > JENTRY_OFFLENMASK as usize {
        return err("string too long to represent as jsonb string");
    }
    reserve(buf, s.len())?;
    buf.extend_from_slice(s.as_bytes());
    Ok(JENTRY_ISSTRING | s.len() as u32)
}

/// Appends the value's data and returns its JEntry (`convertJsonbValue`).
fn write_value(buf: &mut Vec<u8>, v: &Value) -> Result<u32, JsonbError> {
    match v {
        Value::Null => Ok(JENTRY_ISNULL),
        Value::Bool(true) => Ok(JENTRY_ISBOOL_TRUE),
        Value::Bool(false) => Ok(JENTRY_ISBOOL_FALSE),
        Value::String(s) => write_string(buf, s),
        Value::Number(t) => {
            reserve(buf, 3)?;
            let pad = pad_to_int(buf);
            let len = write_numeric(buf, t)?;
            Ok(JENTRY_ISNUMERIC | (pad + len))
        }
        Value::Array(elems) => write_array(buf, elems, false),
        Value::Object(members) => write_object(buf, members, &[]),
    }
}

/// `convertJsonbArray`: header, one JEntry per element (every 32nd holding an end offset
/// instead of a length), then the elements' data.
fn write_array(buf: &mut Vec<u8>, elems: &[Value], raw_scalar: bool) -> Result<u32, JsonbError> {
    let base = buf.len();
    reserve(buf, 3 + 4 + 4 * elems.len())?;
    pad_to_int(buf);
    let mut header = elems.len() as u32 | JB_FARRAY;
    if raw_scalar {
        header |= JB_FSCALAR;
    }
    buf.extend_from_slice(&header.to_ne_bytes());
    let entries = buf.len();
    buf.resize(entries + 4 * elems.len(), 0);
    let mut total = 0usize;
    for (i, e) in elems.iter().enumerate() {
        let mut meta = write_value(buf, e)?;
        total += (meta & JENTRY_OFFLENMASK) as usize;
        let t = check_len(total)?;
        if i.is_multiple_of(JB_OFFSET_STRIDE) {
            meta = (meta & JENTRY_TYPEMASK) | t | JENTRY_HAS_OFF;
        }
        put_u32(buf, entries + 4 * i, meta);
    }
    Ok(JENTRY_ISCONTAINER | check_len(buf.len() - base)?)
}

/// `convertJsonbObject`: all key JEntries then all value JEntries; the members are already in
/// jsonb order (see [`Value::Object`]).
fn write_object(buf: &mut Vec<u8>, members: &[(Cow<str>, Value)], skip: &[&str]) -> Result<u32, JsonbError> {
    let skipped: Vec<usize> =
        skip.iter().filter_map(|name| members.binary_search_by(|(k, _)| key_order(k, name)).ok()).collect();
    let kept = || members.iter().enumerate().filter(|(i, _)| !skipped.contains(i)).map(|(_, m)| m);
    let n = kept().count();
    let base = buf.len();
    reserve(buf, 3 + 4 + 8 * n)?;
    pad_to_int(buf);
    buf.extend_from_slice(&(n as u32 | JB_FOBJECT).to_ne_bytes());
    let entries = buf.len();
    buf.resize(entries + 8 * n, 0);
    let mut total = 0usize;
    for (i, (k, _)) in kept().enumerate() {
        let mut meta = write_string(buf, k)?;
        total += (meta & JENTRY_OFFLENMASK) as usize;
        let t = check_len(total)?;
        if i.is_multiple_of(JB_OFFSET_STRIDE) {
            meta = (meta & JENTRY_TYPEMASK) | t | JENTRY_HAS_OFF;
        }
        put_u32(buf, entries + 4 * i, meta);
    }
    for (i, (_, v)) in kept().enumerate() {
        let mut meta = write_value(buf, v)?;
        total += (meta & JENTRY_OFFLENMASK) as usize;
        let t = check_len(total)?;
        if (i + n).is_multiple_of(JB_OFFSET_STRIDE) {
            meta = (meta & JENTRY_TYPEMASK) | t | JENTRY_HAS_OFF;
        }
        put_u32(buf, entries + 4 * (n + i), meta);
    }
    Ok(JENTRY_ISCONTAINER | check_len(buf.len() - base)?)
}

// numeric.c
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_SHORT: u16 = 0x8000;
const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
const NUMERIC_SHORT_DSCALE_SHIFT: u32 = 7;
const NUMERIC_SHORT_DSCALE_MAX: i64 = 0x3F;
const NUMERIC_SHORT_WEIGHT_SIGN_MASK: u16 = 0x0040;
const NUMERIC_SHORT_WEIGHT_MASK: u16 = 0x003F;
const NUMERIC_SHORT_WEIGHT_MAX: i64 = 63;
const NUMERIC_SHORT_WEIGHT_MIN: i64 = -64;
const NUMERIC_DSCALE_MAX: i64 = 0x3FFF;
const DEC_DIGITS: i64 = 4;

/// Appends the `numeric` varlena `numeric_in` makes of a JSON number token, returns its length.
/// Mirrors `set_var_from_str` + `make_result`: decimal digits grouped by 4 around the decimal
/// point into base-10000 digits, leading and trailing zero digits stripped, display scale kept.
fn write_numeric(buf: &mut Vec<u8>, tok: &str) -> Result<u32, JsonbError> {
    let b = tok.as_bytes();
    let neg = b.first() == Some(&b'-');
    let start = usize::from(neg);
    let int_end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
    let (frac_start, frac_end) = if b.get(int_end) == Some(&b'.') {
        let f = int_end + 1;
        (f, f + b[f..].iter().take_while(|c| c.is_ascii_digit()).count())
    } else {
        (int_end, int_end)
    };
    let (int, frac) = (&b[start..int_end], &b[frac_start..frac_end]);
    let mut dweight = int.len() as i64 - 1;
    let mut dscale = frac.len() as i64;
    if let Some(b'e' | b'E') = b.get(frac_end) {
        let mut i = frac_end + 1;
        let eneg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        // strtol saturates; anything this large overflows numeric anyway.
        let mut e: i64 = 0;
        for &c in &b[i..] {
            e = (e * 10 + i64::from(c - b'0')).min(i64::from(i32::MAX));
        }
        let e = if eneg { -e } else { e };
        if e >= i64::from(i32::MAX / 2) || e <= -i64::from(i32::MAX / 2) {
            return err(format!("value overflows numeric format: {tok}"));
        }
        dweight += e;
        dscale -= e;
    }
    dscale = dscale.max(0);
    let ddigits = (int.len() + frac.len()) as i64;
    let weight =
        if dweight >= 0 { (dweight + 1 + DEC_DIGITS - 1) / DEC_DIGITS - 1 } else { -((-dweight - 1) / DEC_DIGITS + 1) };
    let offset = (weight + 1) * DEC_DIGITS - (dweight + 1);
    let ndigits = (ddigits + offset + DEC_DIGITS - 1) / DEC_DIGITS;
    // Decimal digit k of the number (integer then fraction digits), 0 outside: the padded
    // buffer of set_var_from_str, without building it.
    let dec = |k: i64| -> u16 {
        if k < 0 || k >= ddigits {
            0
        } else if (k as usize) < int.len() {
            u16::from(int[k as usize] - b'0')
        } else {
            u16::from(frac[k as usize - int.len()] - b'0')
        }
    };
    let digit = |d: i64| -> u16 {
        let p = d * DEC_DIGITS - offset;
        ((dec(p) * 10 + dec(p + 1)) * 10 + dec(p + 2)) * 10 + dec(p + 3)
    };
    // Leading and trailing zero digits are dropped (strip_var); the display scale stays.
    let first = (0..ndigits).find(|&d| digit(d) != 0);
    let (first, last) = match first {
        Some(f) => (f, (f..ndigits).rev().find(|&d| digit(d) != 0).unwrap_or(f)),
        None => (0, -1),
    };
    let count = (last - first + 1).max(0);
    let weight = if count == 0 { 0 } else { weight - first };
    let neg = neg && count > 0;
    if dscale > NUMERIC_DSCALE_MAX || weight > i64::from(i16::MAX) || weight < i64::from(i16::MIN) {
        return err(format!("value overflows numeric format: {tok}"));
    }
    let short =
        dscale <= NUMERIC_SHORT_DSCALE_MAX && (NUMERIC_SHORT_WEIGHT_MIN..=NUMERIC_SHORT_WEIGHT_MAX).contains(&weight);
    let len = 4 + if short { 2 } else { 4 } + 2 * count as usize;
    reserve(buf, len)?;
    buf.extend_from_slice(&varlena_header(len as u32));
    if short {
        let mut h = NUMERIC_SHORT
            | ((dscale as u16) << NUMERIC_SHORT_DSCALE_SHIFT)
            | (weight as u16 & NUMERIC_SHORT_WEIGHT_MASK);
        if neg {
            h |= NUMERIC_SHORT_SIGN_MASK;
        }
        if weight < 0 {
            h |= NUMERIC_SHORT_WEIGHT_SIGN_MASK;
        }
        buf.extend_from_slice(&h.to_ne_bytes());
    } else {
        let sign_dscale = if neg { NUMERIC_NEG } else { 0 } | dscale as u16;
        buf.extend_from_slice(&sign_dscale.to_ne_bytes());
        buf.extend_from_slice(&(weight as i16).to_ne_bytes());
    }
    for d in first..=last {
        buf.extend_from_slice(&digit(d).to_ne_bytes());
    }
    Ok(len as u32)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Scanner;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn enc(s: &str) -> Vec<u8> {
        encode(&parse(s).unwrap()).unwrap()
    }

    fn numeric(tok: &str) -> String {
        let mut b = Vec::new();
        write_numeric(&mut b, tok).unwrap();
        hex(&b)
    }

    #[test]
    fn numerics_match_numeric_in() {
        // Layout: 4-byte varlena header, then the short header (u16) or sign/dscale + weight
        // (u16, i16), then base-10000 digits (u16), all native-endian.
        assert_eq!(numeric("1"), "20000000".to_owned() + "0080" + "0100");
        assert_eq!(numeric("0"), "18000000".to_owned() + "0080", "zero has no digits");
        // -0.00: zero keeps its display scale (2 << 7) and loses its sign.
        assert_eq!(numeric("-0.00"), "18000000".to_owned() + "0081");
        // 12345.678: digits 1 2345 6780, weight 1, dscale 3: header 0x8181.
        assert_eq!(numeric("12345.678"), "30000000".to_owned() + "8181" + "0100" + "2909" + "7c1a");
        // -12: sign bit 0x2000.
        assert_eq!(numeric("-12"), "20000000".to_owned() + "00a0" + "0c00");
        // 1e-5 = 1000 x 10000^-2: weight -2 (0x40 | 0x3e), dscale 5 (0x280): header 0x82fe.
        assert_eq!(numeric("1e-5"), "20000000".to_owned() + "fe82" + "e803");
        // 1e300: weight 75 does not fit the short format.
        assert_eq!(numeric("1e300"), "28000000".to_owned() + "0000" + "4b00" + "0100");
        // Leading and trailing zeros never become digits.
        assert_eq!(numeric("000.5000e1"), numeric("5.000"));
    }

    #[test]
    fn numeric_overflow_is_an_error() {
        assert!(write_numeric(&mut Vec::new(), "1e-20000").is_err());
        assert!(write_numeric(&mut Vec::new(), "1e200000").is_err());
        assert!(write_numeric(&mut Vec::new(), "1e99999999999999999999").is_err());
        assert!(write_numeric(&mut Vec::new(), "1e16000").is_ok(), "weight 4000 fits int16");
    }

    #[test]
    fn scalars_are_wrapped() {
        // A raw scalar is a one-element array flagged JB_FSCALAR; its only JEntry holds an offset.
        assert_eq!(hex(&enc("true")), "30000000".to_owned() + "01000050" + "000000b0");
        assert_eq!(hex(&enc("\"ab\"")), "38000000".to_owned() + "01000050" + "02000080" + "6162");
        assert_eq!(hex(&enc("null")), "30000000".to_owned() + "01000050" + "000000c0");
    }

    #[test]
    fn keys_are_sorted_by_length_then_bytes_last_duplicate_wins() {
        let v = parse(r#"{"bb":1,"a":2,"ab":3,"a":4}"#).unwrap();
        let b = encode(&v).unwrap();
        // header: 3 pairs, object flag.
        assert_eq!(u32::from_ne_bytes(b[4..8].try_into().unwrap()), 3 | JB_FOBJECT);
        let data = String::from_utf8_lossy(&b[8 + 24..8 + 24 + 5]).to_string();
        assert_eq!(data, "aabbb", "keys a, ab, bb in that order");
        assert_eq!(v.get("a"), Some(&Value::Number("4")));
    }

    #[test]
    fn offsets_every_32nd_entry() {
        let items: Vec<String> = (0..70).map(|i| format!("\"s{i}\"")).collect();
        let b = enc(&format!("[{}]", items.join(",")));
        let entry = |i: usize| u32::from_ne_bytes(b[8 + 4 * i..12 + 4 * i].try_into().unwrap());
        let mut end = 0;
        for i in 0..70 {
            end += format!("s{i}").len() as u32;
            if i % 32 == 0 {
                assert_eq!(entry(i), JENTRY_HAS_OFF | end, "entry {i}");
            } else {
                assert_eq!(entry(i), format!("s{i}").len() as u32, "entry {i}");
            }
        }
    }

    #[test]
    fn errors_leave_the_buffer_as_it_was() {
        let mut out = vec![1, 2, 3, 4];
        let v = Value::Array(vec![Value::Number("1e-99999")]);
        assert!(encode_into(&v, &mut out).is_err());
        assert_eq!(out, vec![1, 2, 3, 4]);
    }

    #[test]
    fn skipped_members_are_left_out() {
        let v = parse(r#"{"a":1,"ca_data":{"x":2},"b":true,"ca_data":3}"#).unwrap();
        let mut out = Vec::new();
        encode_into_without(&v, &["ca_data"], &mut out).unwrap();
        assert_eq!(out, enc(r#"{"b":true,"a":1}"#));
    }

    #[test]
    fn the_cached_key_order_gives_the_same_bytes() {
        let object = |order: &[usize], dup: bool, escaped: bool| {
            let mut members: Vec<String> =
                order.iter().map(|i| format!("\"k{i}_{}\":{i}", "x".repeat(i % 5))).collect();
            if dup {
                members.push("\"k3_xxx\":\"again\"".into());
            }
            if escaped {
                members[0] = "\"k\\u0030_\":0".into();
            }
            format!("{{{}}}", members.join(","))
        };
        let fwd: Vec<usize> = (0..40).collect();
        let rev: Vec<usize> = (0..40).rev().collect();
        let docs = [
            object(&fwd, false, false),
            object(&fwd, false, false),
            object(&rev, false, false),
            object(&fwd, true, false),
            object(&fwd, false, false),
            object(&fwd, false, true),
            object(&fwd, false, false),
        ];
        // One scanner over an array of them (the cache at work) against each parsed alone.
        let page = format!("[{}]", docs.join(","));
        let mut sc = Scanner::new(&page);
        sc.begin_array().unwrap();
        for d in &docs {
            assert!(sc.next_element().unwrap());
            let v = sc.value().unwrap().unwrap();
            assert_eq!(encode(&v).unwrap(), enc(d), "{d}");
        }
        assert!(!sc.next_element().unwrap());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::alloc_count::peak_of;
    use crate::testgen::{edits, mutate, value};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Whatever parses encodes or is refused, never panics, and the encoding takes at most
        /// 16 bytes per byte of text (a bare `0,` becomes a 4-byte JEntry and an 8-byte
        /// padded numeric; the output vector may double once).
        #[test]
        fn encoding_never_panics_and_stays_within_its_bound(text in value(), e in edits()) {
            let text = mutate(&text, &e);
            if let Ok(v) = parse(&text) {
                let (out, peak) = peak_of(|| encode(&v));
                prop_assert!(peak <= 16 * text.len() + 1024, "{peak} bytes for {} bytes: {text:?}", text.len());
                if let Ok(out) = out {
                    // A complete varlena: its header holds its length.
                    prop_assert_eq!(&out[..4], &varlena_header(out.len() as u32)[..]);
                }
            }
        }
    }
}
