//! JSON text as PostgreSQL's `jsonb_in` reads it: a strict RFC 8259 parser into [`Value`], and a
//! [`Scanner`] that walks a document without building it (how an export page is split into
//! items in one pass). Objects come out as jsonb holds them: members sorted by [`key_order`], the
//! last duplicate key kept. Text that jsonb cannot hold (`\u0000`, lone surrogates) is refused
//! with PostgreSQL's wording. Encoding the result into jsonb's binary format is
//! `encode::jsonb`.
//!
//! No PostgreSQL calls: this module is unit-tested without a database.

use std::borrow::Cow;
use std::fmt;

/// A parsed JSON value borrowing from the source text where no unescaping was needed.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// The number's token text, exactly as received (jsonb stores it as `numeric`).
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Members as jsonb holds them: sorted by key (byte length, then bytes), one per key (the
    /// last received, as `jsonb_in` keeps).
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

impl<'a> Value<'a> {
    /// The member named `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(m) => m.binary_search_by(|(k, _)| key_order(k, key)).ok().map(|i| &m[i].1),
            _ => None,
        }
    }
}

/// Why a text cannot become jsonb; the wording follows PostgreSQL's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonbError {
    pub message: String,
    /// Not JSON at all (as opposed to JSON that jsonb refuses, such as `\u0000`).
    pub syntax: bool,
    /// The text ends in the middle of a value: a cut answer.
    pub truncated: bool,
    /// Over one of gn2pg's limits ([`MAX_DEPTH`], [`MAX_CONTAINER`], [`MAX_STRING`], or memory):
    /// about the whole document, never one item's problem.
    pub limit: bool,
}

impl fmt::Display for JsonbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JsonbError {}

/// JSON that jsonb cannot hold.
fn err<T>(msg: impl Into<String>) -> Result<T, JsonbError> {
    Err(JsonbError { message: msg.into(), syntax: false, truncated: false, limit: false })
}

fn syntax_err<T>(msg: impl Into<String>, truncated: bool) -> Result<T, JsonbError> {
    Err(JsonbError { message: msg.into(), syntax: true, truncated, limit: false })
}

/// Over a limit of gn2pg (not an error of the text itself).
pub fn limit_err<T>(msg: impl Into<String>) -> Result<T, JsonbError> {
    Err(JsonbError { message: msg.into(), syntax: false, truncated: false, limit: true })
}

/// Memory for a value could not be had: refused like a limit, never an abort of the process.
fn out_of_memory<T>(what: &str) -> Result<T, JsonbError> {
    limit_err(format!("out of memory while reading {what}"))
}

/// Bytes that end the plain run of a string: the quote, the backslash and control characters.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Length of the plain run of string bytes at the start of `s` (up to the first quote, backslash
/// or control character), eight bytes at a time.
fn plain_run(s: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i + 8 <= s.len() {
        let x = u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or_default());
        // Per byte: zero after xor with the quote or the backslash, or below 0x20. The lowest
        // flagged byte is exact, which is the one we want.
        let q = x ^ (LO * b'"' as u64);
        let b = x ^ (LO * b'\\' as u64);
        let hit = (q.wrapping_sub(LO) & !q) | (b.wrapping_sub(LO) & !b) | (x.wrapping_sub(LO * 0x20) & !x);
        let hit = hit & HI;
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < s.len() && !STRING_STOP[s[i] as usize] {
        i += 1;
    }
    i
}

/// Objects with at least this many members remember how their keys sort: the items of an
/// export all have the same columns in the same order, so the order is computed once.
const CACHED_ORDER_MIN: usize = 16;

/// Deeper documents are refused rather than risking the helper thread's stack. Real GeoNature
/// items nest 3 or 4 levels (a FeatureCollection page about 8).
pub const MAX_DEPTH: usize = 512;

/// Elements of one array or members of one object. Real items have about a hundred members
/// and a page's `items` array at most a few thousand elements.
pub const MAX_CONTAINER: usize = 100_000;

/// Bytes of one string token, as written (escapes included). Real values are at most a few KB
/// (a detailed WKT polygon a few hundred); jsonb itself stops at 256 MB.
pub const MAX_STRING: usize = 16 << 20;

/// Parses one JSON document (RFC 8259, as strict as PostgreSQL's parser).
pub fn parse(text: &str) -> Result<Value<'_>, JsonbError> {
    let mut p = Parser::new(text);
    p.skip_ws();
    let v = p.value(0)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return p.syntax("unexpected data after the value");
    }
    Ok(v)
}

/// Values and object keys of one document, counted without building anything (syntax and
/// limits checked on the way).
pub fn count_nodes(text: &str) -> Result<usize, JsonbError> {
    let mut p = Parser::new(text);
    p.skip_ws();
    p.skip(0)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return p.syntax("unexpected data after the value");
    }
    Ok(p.nodes)
}

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
    /// Members of the objects being parsed, innermost last, with their received position: one
    /// buffer reused for every object of a page instead of a growing vector per object.
    members: Vec<(u32, Cow<'a, str>, Value<'a>)>,
    /// Elements of the arrays being parsed, likewise.
    elems: Vec<Value<'a>>,
    /// The keys, in received order, of the last large object, and where each goes in jsonb
    /// order (see [`CACHED_ORDER_MIN`]).
    order: Option<(Vec<&'a str>, Vec<u32>)>,
    /// Values and object keys read so far, built or skipped: what a page's census counts.
    nodes: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        Parser { s: text.as_bytes(), src: text, i: 0, members: Vec::new(), elems: Vec::new(), order: None, nodes: 0 }
    }

    /// The received keys of `members[base..]` when they are all borrowed from the text.
    fn borrowed_keys(&self, base: usize) -> Option<Vec<&'a str>> {
        self.members[base..]
            .iter()
            .map(|(_, k, _)| match k {
                Cow::Borrowed(k) => Some(*k),
                Cow::Owned(_) => None,
            })
            .collect()
    }
}

impl<'a> Parser<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn syntax<T>(&self, what: &str) -> Result<T, JsonbError> {
        if self.i >= self.s.len() {
            syntax_err(format!("invalid input syntax for type json: the input ends unexpectedly ({what})"), true)
        } else {
            syntax_err(format!("invalid input syntax for type json: {what} at byte {}", self.i), false)
        }
    }

    fn too_deep<T>(&self) -> Result<T, JsonbError> {
        limit_err(format!("JSON nested deeper than {MAX_DEPTH} levels at byte {}", self.i))
    }

    /// Refuses the `n`th element of a container that started at byte `at`.
    fn check_container(&self, n: usize, at: usize, what: &str) -> Result<(), JsonbError> {
        if n > MAX_CONTAINER {
            return limit_err(format!("{what} with more than {MAX_CONTAINER} elements at byte {at}"));
        }
        Ok(())
    }

    /// Refuses a string token that started at byte `start` and is not finished at `self.i`.
    fn check_string(&self, start: usize) -> Result<(), JsonbError> {
        if self.i - start > MAX_STRING {
            return limit_err(format!("string longer than {MAX_STRING} bytes at byte {}", start - 1));
        }
        Ok(())
    }

    fn expect(&mut self, lit: &[u8]) -> Result<(), JsonbError> {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            self.syntax("invalid literal")
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, JsonbError> {
        if depth >= MAX_DEPTH {
            return self.too_deep();
        }
        self.nodes += 1;
        match self.s.get(self.i) {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.expect(b"true").map(|_| Value::Bool(true)),
            Some(b'f') => self.expect(b"false").map(|_| Value::Bool(false)),
            Some(b'n') => self.expect(b"null").map(|_| Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.syntax("expected a JSON value"),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value<'a>, JsonbError> {
        let base = self.members.len();
        let r = self.object_members(depth, base);
        if r.is_err() {
            self.members.truncate(base);
            return r.map(|_| Value::Null);
        }
        let n = self.members.len() - base;
        if n >= CACHED_ORDER_MIN {
            if let Some((keys, perm)) = &self.order {
                let same =
                    keys.len() == n && self.members[base..].iter().zip(keys).all(|((_, k, _), c)| k.as_ref() == *c);
                if same {
                    let placeholder = || (0, Cow::Borrowed(""), Value::Null);
                    let out = perm.iter().map(|&p| {
                        let (_, k, v) = std::mem::replace(&mut self.members[base + p as usize], placeholder());
                        (k, v)
                    });
                    let mut object: Vec<(Cow<'a, str>, Value<'a>)> = Vec::new();
                    if object.try_reserve_exact(n).is_err() {
                        return out_of_memory("an object");
                    }
                    object.extend(out);
                    self.members.truncate(base);
                    return Ok(Value::Object(object));
                }
            }
        }
        let received = if n >= CACHED_ORDER_MIN { self.borrowed_keys(base) } else { None };
        // jsonb order: by key, the last received of equal keys kept (`uniqueifyJsonbObject`).
        self.members[base..].sort_unstable_by(|a, b| key_order(&a.1, &b.1).then(a.0.cmp(&b.0)));
        let perm: Vec<u32> = self.members[base..].iter().map(|m| m.0).collect();
        let mut out: Vec<(Cow<'a, str>, Value<'a>)> = Vec::new();
        if out.try_reserve_exact(n).is_err() {
            self.members.truncate(base);
            return out_of_memory("an object");
        }
        for (_, k, v) in self.members.drain(base..) {
            match out.last_mut() {
                Some(last) if key_order(&last.0, &k).is_eq() => *last = (k, v),
                _ => out.push((k, v)),
            }
        }
        // Only an order without duplicate keys is a plain permutation worth remembering.
        if let Some(keys) = received.filter(|_| out.len() == n) {
            self.order = Some((keys, perm));
        }
        Ok(Value::Object(out))
    }

    fn object_members(&mut self, depth: usize, base: usize) -> Result<(), JsonbError> {
        let at = self.i;
        self.i += 1;
        self.skip_ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.s.get(self.i) != Some(&b'"') {
                return self.syntax("expected an object key");
            }
            let k = self.string()?;
            self.nodes += 1;
            self.skip_ws();
            if self.s.get(self.i) != Some(&b':') {
                return self.syntax("expected \":\"");
            }
            self.i += 1;
            self.skip_ws();
            let v = self.value(depth + 1)?;
            let ord = self.members.len() - base;
            self.check_container(ord + 1, at, "object")?;
            if self.members.try_reserve(1).is_err() {
                return out_of_memory("an object");
            }
            self.members.push((ord as u32, k, v));
            self.skip_ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.syntax("expected \",\" or \"}\""),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value<'a>, JsonbError> {
        let base = self.elems.len();
        match self.array_elems(depth) {
            Ok(()) => {
                let mut out = Vec::new();
                if out.try_reserve_exact(self.elems.len() - base).is_err() {
                    self.elems.truncate(base);
                    return out_of_memory("an array");
                }
                out.extend(self.elems.drain(base..));
                Ok(Value::Array(out))
            }
            Err(e) => {
                self.elems.truncate(base);
                Err(e)
            }
        }
    }

    fn array_elems(&mut self, depth: usize) -> Result<(), JsonbError> {
        let (at, base) = (self.i, self.elems.len());
        self.i += 1;
        self.skip_ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            let v = self.value(depth + 1)?;
            self.check_container(self.elems.len() - base + 1, at, "array")?;
            if self.elems.try_reserve(1).is_err() {
                return out_of_memory("an array");
            }
            self.elems.push(v);
            self.skip_ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.syntax("expected \",\" or \"]\""),
            }
        }
    }

    fn number(&mut self) -> Result<Value<'a>, JsonbError> {
        let start = self.i;
        let digits = |p: &mut Parser| {
            let d = p.i;
            while let Some(b'0'..=b'9') = p.s.get(p.i) {
                p.i += 1;
            }
            p.i - d
        };
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return self.syntax("invalid number"),
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return self.syntax("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return self.syntax("invalid number");
            }
        }
        // A number glued to letters ("1x") is one bad token for PostgreSQL.
        if let Some(c) = self.s.get(self.i) {
            if c.is_ascii_alphanumeric() || *c == b'_' {
                return self.syntax("invalid number");
            }
        }
        Ok(Value::Number(&self.src[start..self.i]))
    }

    fn hex4(&mut self) -> Result<u32, JsonbError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let c = match self.s.get(self.i) {
                Some(c) => *c,
                None => return self.syntax("unterminated string"),
            };
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return self.syntax("\"\\u\" must be followed by four hexadecimal digits"),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    /// A string token, unescaped. Borrowed when it holds no escape.
    fn string(&mut self) -> Result<Cow<'a, str>, JsonbError> {
        self.i += 1;
        let start = self.i;
        // Fast scan: most strings have no escape.
        self.i += plain_run(&self.s[self.i..]);
        loop {
            self.check_string(start)?;
            match self.s.get(self.i) {
                None => return self.syntax("unterminated string"),
                Some(b'"') => {
                    let s = &self.src[start..self.i];
                    self.i += 1;
                    return Ok(Cow::Borrowed(s));
                }
                Some(b'\\') => break,
                Some(c) if *c < 0x20 => return self.syntax(&format!("character with value 0x{c:02x} must be escaped")),
                Some(_) => self.i += 1,
            }
        }
        // Never longer than the escaped text, which is at most MAX_STRING.
        let mut out = String::new();
        if out.try_reserve(self.i - start + 16).is_err() {
            return out_of_memory("a string");
        }
        out.push_str(&self.src[start..self.i]);
        let mut high: Option<u32> = None;
        let low_missing =
            || err("unsupported Unicode escape sequence: a Unicode high surrogate must be followed by a low surrogate");
        loop {
            let run = self.i;
            self.i += plain_run(&self.s[self.i..]);
            self.check_string(start)?;
            if self.i > run {
                if high.is_some() {
                    return low_missing();
                }
                if out.try_reserve(self.i - run).is_err() {
                    return out_of_memory("a string");
                }
                out.push_str(&self.src[run..self.i]);
            }
            match self.s.get(self.i) {
                None => return self.syntax("unterminated string"),
                Some(b'"') => {
                    if high.is_some() {
                        return low_missing();
                    }
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(c) if *c < 0x20 => return self.syntax(&format!("character with value 0x{c:02x} must be escaped")),
                _ => {}
            }
            // A backslash.
            self.i += 1;
            let e = match self.s.get(self.i) {
                Some(e) => *e,
                None => return self.syntax("unterminated string"),
            };
            self.i += 1;
            if e == b'u' {
                let cp = self.hex4()?;
                if (0xD800..0xDC00).contains(&cp) {
                    if high.is_some() {
                        return err("unsupported Unicode escape sequence: a Unicode high surrogate must not follow a high surrogate");
                    }
                    high = Some(cp);
                    continue;
                }
                let cp = if (0xDC00..0xE000).contains(&cp) {
                    match high.take() {
                        Some(h) => 0x10000 + ((h - 0xD800) << 10) + (cp - 0xDC00),
                        None => return err(
                            "unsupported Unicode escape sequence: a Unicode low surrogate must follow a high surrogate",
                        ),
                    }
                } else {
                    if high.is_some() {
                        return low_missing();
                    }
                    cp
                };
                if cp == 0 {
                    return err("unsupported Unicode escape sequence: \\u0000 cannot be converted to text");
                }
                match char::from_u32(cp) {
                    Some(ch) => out.push(ch),
                    None => return err("unsupported Unicode escape sequence"),
                }
                continue;
            }
            if high.is_some() {
                return low_missing();
            }
            out.push(match e {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                _ => return self.syntax(&format!("escape sequence \"\\{}\" is invalid", e as char)),
            });
        }
    }
}

impl<'a> Parser<'a> {
    /// Checks the syntax of one value and moves past it, building nothing. Unlike [`Self::value`]
    /// it accepts what only jsonb refuses (`\u0000`, lone surrogates), so that such an item can
    /// be reported on its own while the rest of the page loads.
    fn skip(&mut self, depth: usize) -> Result<(), JsonbError> {
        if depth >= MAX_DEPTH {
            return self.too_deep();
        }
        match self.s.get(self.i) {
            Some(b'{') | Some(b'[') => {
                self.nodes += 1;
                let close = if self.s[self.i] == b'{' { b'}' } else { b']' };
                let (at, what) = (self.i, if close == b'}' { "object" } else { "array" });
                let mut n = 0;
                self.i += 1;
                self.skip_ws();
                if self.s.get(self.i) == Some(&close) {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    n += 1;
                    self.check_container(n, at, what)?;
                    self.skip_ws();
                    if close == b'}' {
                        if self.s.get(self.i) != Some(&b'"') {
                            return self.syntax("expected an object key");
                        }
                        self.skip_string()?;
                        self.nodes += 1;
                        self.skip_ws();
                        if self.s.get(self.i) != Some(&b':') {
                            return self.syntax("expected \":\"");
                        }
                        self.i += 1;
                        self.skip_ws();
                    }
                    self.skip(depth + 1)?;
                    self.skip_ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(c) if *c == close => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return self.syntax("expected \",\" or the end of the container"),
                    }
                }
            }
            Some(b'"') => {
                self.nodes += 1;
                self.skip_string()
            }
            // Scalars: nothing is allocated for them.
            _ => self.value(depth).map(drop),
        }
    }

    fn skip_string(&mut self) -> Result<(), JsonbError> {
        self.i += 1;
        let start = self.i;
        loop {
            self.i += plain_run(&self.s[self.i..]);
            self.check_string(start)?;
            match self.s.get(self.i) {
                None => return self.syntax("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.s.get(self.i) {
                        Some(b'u') => {
                            self.i += 1;
                            self.hex4()?;
                        }
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(e) => return self.syntax(&format!("escape sequence \"\\{}\" is invalid", *e as char)),
                        None => return self.syntax("unterminated string"),
                    }
                }
                Some(c) if *c < 0x20 => return self.syntax(&format!("character with value 0x{c:02x} must be escaped")),
                Some(_) => self.i += 1,
            }
        }
    }
}

/// Walks a document's structure without building it, and parses chosen values in the same pass:
/// how an export page is split into items without reading it twice.
pub struct Scanner<'a> {
    p: Parser<'a>,
    /// One entry per open container: its members read so far and where it starts.
    open: Vec<(usize, usize)>,
}

impl<'a> Scanner<'a> {
    pub fn new(text: &'a str) -> Scanner<'a> {
        let mut p = Parser::new(text);
        p.skip_ws();
        Scanner { p, open: Vec::new() }
    }

    /// The first byte of the next value.
    pub fn peek(&mut self) -> Option<u8> {
        self.p.skip_ws();
        self.p.s.get(self.p.i).copied()
    }

    fn enter(&mut self, open: u8, what: &str) -> Result<(), JsonbError> {
        if self.peek() != Some(open) {
            return self.p.syntax(&format!("expected {what}"));
        }
        if self.open.len() >= MAX_DEPTH {
            return self.p.too_deep();
        }
        self.open.push((0, self.p.i));
        self.p.i += 1;
        self.p.nodes += 1;
        Ok(())
    }

    /// Whether the open container has another member, its separator consumed.
    fn more(&mut self, close: u8) -> Result<bool, JsonbError> {
        let (read, at) = self.open.last().copied().unwrap_or_default();
        match self.peek() {
            Some(c) if c == close => {
                self.p.i += 1;
                self.open.pop();
                return Ok(false);
            }
            Some(b',') if read > 0 => {
                self.p.i += 1;
                self.p.skip_ws();
            }
            Some(_) if read == 0 => {}
            _ => return self.p.syntax("expected \",\" or the end of the container"),
        }
        self.p.check_container(read + 1, at, if close == b'}' { "object" } else { "array" })?;
        if let Some(top) = self.open.last_mut() {
            top.0 += 1;
        }
        Ok(true)
    }

    pub fn begin_object(&mut self) -> Result<(), JsonbError> {
        self.enter(b'{', "an object")
    }

    /// The next member's key, its `:` consumed; None at the end of the object.
    pub fn next_key(&mut self) -> Result<Option<Cow<'a, str>>, JsonbError> {
        if !self.more(b'}')? {
            return Ok(None);
        }
        if self.p.s.get(self.p.i) != Some(&b'"') {
            return self.p.syntax("expected an object key");
        }
        let k = self.p.string()?;
        self.p.nodes += 1;
        self.p.skip_ws();
        if self.p.s.get(self.p.i) != Some(&b':') {
            return self.p.syntax("expected \":\"");
        }
        self.p.i += 1;
        self.p.skip_ws();
        Ok(Some(k))
    }

    pub fn begin_array(&mut self) -> Result<(), JsonbError> {
        self.enter(b'[', "an array")
    }

    /// Whether the array has another element, its `,` consumed.
    pub fn next_element(&mut self) -> Result<bool, JsonbError> {
        self.more(b']')
    }

    /// Skips the next value, returning its text.
    pub fn skip(&mut self) -> Result<&'a str, JsonbError> {
        self.p.skip_ws();
        let start = self.p.i;
        self.p.skip(0)?;
        Ok(&self.p.src[start..self.p.i])
    }

    /// Parses the next value. When jsonb refuses it (`\u0000`, ...) the value is skipped and the
    /// error returned as `Ok(Err(_))` with the value's text, so the caller can go on.
    #[allow(clippy::type_complexity)]
    pub fn value(&mut self) -> Result<Result<Value<'a>, (JsonbError, &'a str)>, JsonbError> {
        self.p.skip_ws();
        let start = self.p.i;
        match self.p.value(0) {
            Ok(v) => Ok(Ok(v)),
            Err(e) if e.syntax || e.limit => Err(e),
            Err(e) => {
                self.p.i = start;
                let text = self.skip()?;
                Ok(Err((e, text)))
            }
        }
    }

    /// Values and object keys read so far, built or skipped.
    pub fn nodes(&self) -> usize {
        self.p.nodes
    }

    /// Only whitespace may follow the document.
    pub fn finish(&mut self) -> Result<(), JsonbError> {
        if self.peek().is_some() {
            return self.p.syntax("unexpected data after the value");
        }
        Ok(())
    }
}

/// `lengthCompareJsonbStringValue`: shorter keys first, then bytewise (eight bytes at a time:
/// this runs for every member of every item).
pub fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return a.len().cmp(&b.len());
    }
    let mut i = 0;
    while i + 8 <= a.len() {
        let x = u64::from_be_bytes(a[i..i + 8].try_into().unwrap_or_default());
        let y = u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
        if x != y {
            return x.cmp(&y);
        }
        i += 8;
    }
    a[i..].cmp(&b[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_unescape_like_postgres() {
        let v = parse(r#""a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00""#).unwrap();
        assert_eq!(v, Value::String("a\"b\\c/d\u{8}\u{c}\n\r\té😀".into()));
        assert!(matches!(parse(r#""plain""#).unwrap(), Value::String(Cow::Borrowed("plain"))));
        for bad in
            [r#""\u0000""#, r#""\ud83d""#, r#""\ude00""#, r#""\ud83dx""#, r#""\ud83d\ud83d""#, r#""\x""#, "\"a\u{1}\""]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(r#""\u0000""#).unwrap_err().message.contains("\\u0000 cannot be converted to text"));
    }

    #[test]
    fn syntax_is_strict() {
        for bad in
            ["", "{", "[1,]", "{\"a\":}", "01", "1.", ".5", "-", "1e", "+1", "NaN", "tru", "{\"a\" 1}", "[1] x", "1x"]
        {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        for ok in ["0", "-0", "1e5", "1E+5", "1.5e-3", " {\n\t\"a\" : [ 1 , { } , [ ] ] } "] {
            assert!(parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn plain_runs_stop_at_quotes_backslashes_and_controls() {
        for (s, n) in [
            ("abcdefghij\"", 10),
            ("ab\\c", 2),
            ("abcdefgh\u{1}", 8),
            ("é中文", "é中文".len()),
            ("", 0),
            ("0123456\"", 7),
        ] {
            assert_eq!(plain_run(s.as_bytes()), n, "{s:?}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let at_limit = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&at_limit).is_ok() && count_nodes(&at_limit).is_ok(), "512 levels are accepted");
        let over = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(&over).unwrap_err().limit && count_nodes(&over).unwrap_err().limit, "513 are not");
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(parse(&deep).is_err());
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&ok).is_ok());
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

        /// Any text: a value or an error, never a panic; a parsed tree takes at most 64 bytes
        /// per byte of text (a value or key per two bytes at most, each under 128 bytes with
        /// the parser's buffers), and counting builds nothing.
        #[test]
        fn parsing_never_panics_and_stays_within_its_bound(text in value(), e in edits()) {
            let text = mutate(&text, &e);
            let (_, peak) = peak_of(|| parse(&text).map(drop));
            prop_assert!(peak <= 64 * text.len() + 4096, "{peak} bytes for {} bytes: {text:?}", text.len());
            let (counted, peak) = peak_of(|| count_nodes(&text));
            prop_assert!(peak <= 1024, "counting allocated {peak} bytes");
            if let Ok(v) = parse(&text) {
                prop_assert!(counted.is_ok());
                prop_assert!(counted.unwrap_or(0) >= 1 && !matches!(v, Value::Null) || text.trim() == "null");
            }
        }

        /// Deep, wide and long inputs stop at the limits with an error that says so.
        #[test]
        fn limits_are_errors_that_name_the_limit(depth in 513usize..5000, width in 100_001usize..101_000) {
            let deep = "[".repeat(depth) + &"]".repeat(depth);
            let e = parse(&deep).unwrap_err();
            prop_assert!(e.limit && e.message.contains("nested deeper than 512 levels"), "{e}");
            let wide = format!("[{}0]", "0,".repeat(width - 1));
            let e = count_nodes(&wide).unwrap_err();
            prop_assert!(e.limit && e.message.contains("more than 100000 elements"), "{e}");
        }
    }

    #[test]
    fn long_strings_are_refused_before_they_are_copied() {
        let long = format!("\"\\n{}\"", "x".repeat(MAX_STRING));
        let (r, peak) = peak_of(|| parse(&long).map(drop));
        let e = r.unwrap_err();
        assert!(e.limit && e.message.contains("string longer than 16777216 bytes"), "{e}");
        assert!(peak < 2 * MAX_STRING, "{peak}");
        let e = parse(&format!("\"{}\"", "x".repeat(MAX_STRING + 1))).unwrap_err();
        assert!(e.limit, "{e}");
        assert!(parse(&format!("\"{}\"", "x".repeat(MAX_STRING - 2))).is_ok());
    }
}
