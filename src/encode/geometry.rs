//! Observation geometries (GeoJSON or WKT text) converted to EWKB in Rust, so that the database
//! only runs the cheap `ST_GeomFromEWKB` instead of parsing text for every row of a harvest.
//!
//! The contract: [`Converted::Ewkb`] is byte-identical to what PostGIS 3.3 gives for the
//! expression the loader would otherwise evaluate,
//!
//! * GeoJSON: `ST_AsEWKB(ST_SetSRID(ST_GeomFromGeoJSON(geojson::jsonb), 4326))`,
//! * WKT: `ST_AsEWKB(ST_SetSRID(wkt::geometry, 4326))`, or
//!   `ST_AsEWKB(ST_Transform(wkt::geometry, 4326))` when the text starts with `SRID=`,
//!
//! and anything uncertain is [`Converted::Defer`]: the loader then hands the text to PostGIS,
//! which converts it or reports the error exactly as before. The fast path is deliberately
//! narrow (plain 2D geometries written the way exporters write them); widening it must be
//! checked against a real PostGIS first, because a wrong byte here is silent data corruption.
//!
//! Output layout, checked against `ST_AsEWKB`: little-endian EWKB; the outermost type word
//! carries the SRID flag and is followed by SRID 4326; members of Multi* and collections have
//! their own byte-order byte and a plain type word (no flag, no SRID).
//!
//! Both parsers work on the bytes of the input and write straight into the output `Vec`; the
//! only allocation is that `Vec`.

/// The versions the encoder was compared with, byte for byte, for the README and the log.
pub const VERIFIED_ON: &str = "PostgreSQL 15 with PostGIS 3.3";

/// Whether [`Converted::Ewkb`] may be used on this server: only on the PostgreSQL and PostGIS
/// versions it was verified against (`server_version_num`, `postgis_lib_version()`). Elsewhere
/// the loader leaves every geometry to PostGIS's own parsers; `gn2pg._geometry_selftest`
/// compares the two on any server.
pub fn verified_on(server_version_num: i32, postgis_lib_version: &str) -> bool {
    let postgis_minor = postgis_lib_version.split(['.', ' ']).take(2).collect::<Vec<_>>();
    server_version_num / 10_000 == 15 && postgis_minor == ["3", "3"]
}

/// What the loader does with one item's geometry.
#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    /// Little-endian EWKB with SRID 4326 (type word has the 0x20000000 SRID flag, then SRID 4326),
    /// byte-identical to what PostGIS 3.3 `ST_AsEWKB(...)` gives for the same input.
    Ewkb(Vec<u8>),
    /// Input this fast path does not handle or that PostGIS may reject: the loader hands the text
    /// to PostGIS, which converts it or reports the error.
    Defer,
}

/// `text` is the JSON text of a GeoJSON geometry object (the `geometry` member of a Feature,
/// never "null").
pub fn from_geojson(text: &str) -> Converted {
    let Ok(mut out) = Ewkb::with_capacity(text.len()) else { return Converted::Defer };
    let mut p = Json(Cursor::new(text));
    p.ws();
    if p.geometry(&mut out, true, 0).is_err() {
        return Converted::Defer;
    }
    p.ws();
    if p.i != p.s.len() {
        return Converted::Defer;
    }
    Converted::Ewkb(out.buf)
}

/// `text` is WKT (GeoNature's `wkt_4326` column, e.g. `POINT(6.1 45.2)`), possibly with
/// `SRID=n;` prefix.
pub fn from_wkt(text: &str) -> Converted {
    let Ok(mut out) = Ewkb::with_capacity(text.len()) else { return Converted::Defer };
    let mut p = Wkt(Cursor::new(text));
    if p.wkt(&mut out).is_err() {
        return Converted::Defer;
    }
    Converted::Ewkb(out.buf)
}

/// Internal "give up, let PostGIS do it" signal; carries nothing because the caller only needs
/// to know that the fast path does not apply.
struct Bail;
type R<T> = Result<T, Bail>;

const SRID_FLAG: u32 = 0x2000_0000;
const SRID_4326: u32 = 4326;

/// json-c (used by `ST_GeomFromGeoJSON`) refuses documents nested deeper than 32 containers;
/// staying well below keeps us on inputs it certainly accepts, and bounds our recursion.
const MAX_JSON_DEPTH: usize = 24;
/// Containers a geometry object opens below itself at most (MultiPolygon: object,
/// coordinates, polygon, ring, position).
const GEOMETRY_JSON_DEPTH: usize = 5;
/// Bounds the recursion of nested WKT GEOMETRYCOLLECTIONs; real data never nests this deep.
const MAX_WKT_DEPTH: usize = 16;

/// The loader casts GeoJSON text to jsonb, which stores numbers as `numeric`: that type
/// refuses more than 16383 fractional digits or a 131072-digit integer part, and prints
/// `1e30` as a 31-digit integer that json-c then saturates to 2^64. Short numbers with
/// moderate exponents stay far from the `numeric` limits...
const MAX_JSON_NUMBER_LEN: usize = 128;
const MAX_JSON_EXPONENT: u32 = 400;
/// ...and coordinates below 1e18 stay inside json-c's int64 range even when jsonb prints
/// them as integers, so json-c reads the same double as `str::parse`.
const MAX_JSON_COORDINATE: f64 = 1e18;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Point = 1,
    LineString = 2,
    Polygon = 3,
    MultiPoint = 4,
    MultiLineString = 5,
    MultiPolygon = 6,
    Collection = 7,
}

impl Kind {
    /// GeoJSON `type` values and WKT keywords name the same seven types, and PostGIS compares
    /// both case-insensitively (`strcasecmp` for GeoJSON, a case-insensitive lexer for WKT).
    fn from_name(name: &[u8]) -> R<Kind> {
        const NAMES: [(&[u8], Kind); 7] = [
            (b"Point", Kind::Point),
            (b"LineString", Kind::LineString),
            (b"Polygon", Kind::Polygon),
            (b"MultiPoint", Kind::MultiPoint),
            (b"MultiLineString", Kind::MultiLineString),
            (b"MultiPolygon", Kind::MultiPolygon),
            (b"GeometryCollection", Kind::Collection),
        ];
        NAMES.iter().find(|(known, _)| name.eq_ignore_ascii_case(known)).map(|&(_, kind)| kind).ok_or(Bail)
    }
}

/// The EWKB being written.
struct Ewkb {
    buf: Vec<u8>,
    /// The most it may grow to (see [`Ewkb::with_capacity`]).
    cap: usize,
}

impl Ewkb {
    /// Text of `n` bytes rarely describes more than `n / 2` bytes of EWKB (a coordinate pair
    /// is 16 bytes and takes 30-40 characters with the usual 15-17 significant digits); a
    /// point (25 bytes) always fits without growing. Memory is asked for fallibly: the text
    /// comes from the network, and without memory PostGIS gets the text instead.
    ///
    /// Real coordinates take more characters than their 16 bytes, so EWKB is shorter than its
    /// text; text like `0 0,0 0,…` would describe five times its size. Output is therefore capped
    /// at twice the text (plus a header's worth): beyond, PostGIS gets the text, and a page's
    /// geometries never take more than about twice what they took as text.
    fn with_capacity(text_len: usize) -> R<Ewkb> {
        let mut buf = Vec::new();
        buf.try_reserve_exact(25 + text_len / 2).map_err(|_| Bail)?;
        let cap = text_len.saturating_mul(2).saturating_add(64).min(super::varlena::MAX_VARLENA);
        Ok(Ewkb { buf, cap })
    }

    fn put(&mut self, bytes: &[u8]) -> R<()> {
        let need = self.buf.len() + bytes.len();
        if need > self.cap {
            return Err(Bail);
        }
        if need > self.buf.capacity() {
            // Doubling, but never past the cap.
            let want = (2 * self.buf.capacity()).max(need).min(self.cap);
            self.buf.try_reserve_exact(want - self.buf.len()).map_err(|_| Bail)?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn header(&mut self, kind: Kind, outer: bool) -> R<()> {
        self.put(&[1])?;
        if outer {
            self.u32(kind as u32 | SRID_FLAG)?;
            self.u32(SRID_4326)
        } else {
            self.u32(kind as u32)
        }
    }

    fn u32(&mut self, v: u32) -> R<()> {
        self.put(&v.to_le_bytes())
    }

    fn point(&mut self, x: f64, y: f64) -> R<()> {
        self.put(&x.to_le_bytes())?;
        self.put(&y.to_le_bytes())
    }

    /// Reserves a count that is only known once its elements are parsed.
    fn count_slot(&mut self) -> R<usize> {
        let at = self.buf.len();
        self.u32(0)?;
        Ok(at)
    }

    fn set_count(&mut self, at: usize, n: usize) -> R<()> {
        let n = u32::try_from(n).map_err(|_| Bail)?;
        let slot = self.buf.get_mut(at..at + 4).ok_or(Bail)?;
        slot.copy_from_slice(&n.to_le_bytes());
        Ok(())
    }

    /// Whether the first point written at `start` equals the last point written, bit for bit:
    /// PostGIS checks closure with `memcmp`, so `0` and `-0` do not close a ring.
    fn ring_closed(&self, start: usize) -> bool {
        let end = self.buf.len();
        match (self.buf.get(start..start + 16), end.checked_sub(16).and_then(|l| self.buf.get(l..end))) {
            (Some(first), Some(last)) => first == last,
            _ => false,
        }
    }
}

/// A position in the text, with what both readers need to move through it.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor { s: text.as_bytes(), text, i: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// JSON's whitespace, and exactly the WKT lexer's `[ \t\n\r]` (`\f` or `\v` is a WKT parse
    /// error).
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> R<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(Bail)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }
}

/// What the GeoJSON and WKT readers share: lists, point arrays and rings. They differ in their
/// brackets and in how one point is written.
trait PointLists<'a>: std::ops::DerefMut<Target = Cursor<'a>> + Sized {
    const OPEN: u8;
    const CLOSE: u8;

    /// One point, written into `out`.
    fn point(&mut self, out: &mut Ewkb) -> R<()>;

    /// `(item, item, ...)` in WKT, `[item, item, ...]` in GeoJSON; an empty list is an error in
    /// PostGIS's WKT and EMPTY is not on the fast path either way.
    fn list(&mut self, mut item: impl FnMut(&mut Self) -> R<()>) -> R<usize> {
        self.expect(Self::OPEN)?;
        self.ws();
        let mut n = 0;
        loop {
            item(self)?;
            n += 1;
            self.ws();
            if !self.eat(b',') {
                self.expect(Self::CLOSE)?;
                return Ok(n);
            }
            self.ws();
        }
    }

    /// A point array. PostGIS's WKT reader refuses lines under 2 points, rings under 4 points
    /// and unclosed rings ("geometry requires more points", "geometry contains non-closed
    /// rings"); its GeoJSON reader checks neither, but such geometries are invalid GeoJSON:
    /// keeping them on the PostGIS path keeps both inputs alike and leaves oddities to PostGIS.
    fn points(&mut self, out: &mut Ewkb, min: usize, ring: bool) -> R<()> {
        let slot = out.count_slot()?;
        let first = out.buf.len();
        let n = self.list(|p| p.point(out))?;
        if n < min || (ring && !out.ring_closed(first)) {
            return Err(Bail);
        }
        out.set_count(slot, n)
    }

    fn rings(&mut self, out: &mut Ewkb) -> R<()> {
        let slot = out.count_slot()?;
        let n = self.list(|p| p.points(out, 4, true))?;
        out.set_count(slot, n)
    }
}

/// A strict JSON reader for GeoJSON geometry objects.
struct Json<'a>(Cursor<'a>);

impl<'a> std::ops::Deref for Json<'a> {
    type Target = Cursor<'a>;
    fn deref(&self) -> &Cursor<'a> {
        &self.0
    }
}

impl std::ops::DerefMut for Json<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> PointLists<'a> for Json<'a> {
    const OPEN: u8 = b'[';
    const CLOSE: u8 = b']';

    /// `[x, y]`: PostGIS reads a third number as Z, skips `[]` and rejects a single number.
    fn point(&mut self, out: &mut Ewkb) -> R<()> {
        self.expect(b'[')?;
        self.ws();
        let x = self.coordinate()?;
        self.ws();
        self.expect(b',')?;
        self.ws();
        let y = self.coordinate()?;
        self.ws();
        self.expect(b']')?;
        out.point(x, y)
    }
}

impl<'a> Json<'a> {
    /// A string's raw bytes between the quotes, and whether it contained escapes.
    fn string(&mut self) -> R<(&'a [u8], bool)> {
        self.expect(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.peek() {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    match self.s.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        // `\u`: jsonb refuses `\u0000` and unpaired surrogates, which json-c
                        // accepts; not worth telling apart.
                        _ => return Err(Bail),
                    }
                }
                // Raw control characters are invalid JSON.
                Some(0..=0x1f) | None => return Err(Bail),
                Some(_) => self.i += 1,
            }
        }
        let raw = self.s.get(start..self.i).ok_or(Bail)?;
        self.i += 1;
        Ok((raw, escaped))
    }

    /// The text of a number in strict JSON syntax, within the limits jsonb's `numeric` takes.
    fn number(&mut self) -> R<&'a str> {
        let start = self.i;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Bail),
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(Bail);
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            let mut exponent: u32 = 0;
            let digits_start = self.i;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                exponent = exponent.saturating_mul(10).saturating_add(u32::from(d - b'0'));
                self.i += 1;
            }
            if self.i == digits_start || exponent > MAX_JSON_EXPONENT {
                return Err(Bail);
            }
        }
        if self.i - start > MAX_JSON_NUMBER_LEN {
            return Err(Bail);
        }
        self.text.get(start..self.i).ok_or(Bail)
    }

    fn coordinate(&mut self) -> R<f64> {
        let v: f64 = self.number()?.parse().map_err(|_| Bail)?;
        // Negative zero: jsonb's numeric has none, so the loader's path yields +0 for `-0.0`
        // while ST_GeomFromGeoJSON on the raw text keeps -0; whichever path the deferred text
        // takes decides.
        if !v.is_finite() || v.abs() >= MAX_JSON_COORDINATE || (v == 0.0 && v.is_sign_negative()) {
            return Err(Bail);
        }
        Ok(v)
    }

    /// Validates and skips any JSON value; `depth` counts the containers around it.
    fn skip_value(&mut self, depth: usize) -> R<()> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => {
                if depth >= MAX_JSON_DEPTH {
                    return Err(Bail);
                }
                self.i += 1;
                self.ws();
                if self.eat(b'}') {
                    return Ok(());
                }
                loop {
                    self.string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    if !self.eat(b',') {
                        return self.expect(b'}');
                    }
                    self.ws();
                }
            }
            Some(b'[') => {
                if depth >= MAX_JSON_DEPTH {
                    return Err(Bail);
                }
                self.i += 1;
                self.ws();
                if self.eat(b']') {
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    self.ws();
                    if !self.eat(b',') {
                        return self.expect(b']');
                    }
                    self.ws();
                }
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => self.number().map(|_| ()),
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.s.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// `[item, item, ...]` with at least one item (an empty array is an EMPTY geometry).
    fn coordinates(&mut self, kind: Kind, out: &mut Ewkb, outer: bool) -> R<()> {
        out.header(kind, outer)?;
        match kind {
            Kind::Point => self.point(out),
            Kind::LineString => self.points(out, 2, false),
            Kind::Polygon => self.rings(out),
            Kind::MultiPoint | Kind::MultiLineString | Kind::MultiPolygon => {
                let slot = out.count_slot()?;
                let n = self.list(|p| match kind {
                    Kind::MultiPoint => {
                        out.header(Kind::Point, false)?;
                        p.point(out)
                    }
                    Kind::MultiLineString => {
                        out.header(Kind::LineString, false)?;
                        p.points(out, 2, false)
                    }
                    _ => {
                        out.header(Kind::Polygon, false)?;
                        p.rings(out)
                    }
                })?;
                out.set_count(slot, n)
            }
            Kind::Collection => Err(Bail),
        }
    }

    fn collection(&mut self, out: &mut Ewkb, outer: bool, depth: usize) -> R<()> {
        out.header(Kind::Collection, outer)?;
        let slot = out.count_slot()?;
        let n = self.list(|p| p.geometry(out, false, depth + 2))?;
        out.set_count(slot, n)
    }

    /// One geometry object; `depth` counts the containers around it. Members may come in any
    /// order. `coordinates` before `type` is validated, then read again once the type is known.
    /// `geometries` before `type` is read at once as if the object were a collection (and the
    /// output dropped if it is not): reading it again would be exponential in the nesting.
    fn geometry(&mut self, out: &mut Ewkb, outer: bool, depth: usize) -> R<()> {
        if depth + GEOMETRY_JSON_DEPTH > MAX_JSON_DEPTH {
            return Err(Bail);
        }
        self.expect(b'{')?;
        self.ws();
        let mut kind = None;
        let mut coordinates = None;
        let mut geometries = false;
        let mut written = false;
        // Output length before a collection read ahead of its `type`.
        let mut speculative = None;
        loop {
            let (key, escaped) = self.string()?;
            // An escaped key might spell one of the members PostGIS looks for.
            if escaped {
                return Err(Bail);
            }
            self.ws();
            self.expect(b':')?;
            self.ws();
            match key {
                b"type" => {
                    let (name, escaped) = self.string()?;
                    if kind.is_some() || escaped {
                        return Err(Bail);
                    }
                    let k = Kind::from_name(name)?;
                    kind = Some(k);
                    if let Some(len) = speculative.take() {
                        if k == Kind::Collection {
                            written = true;
                        } else {
                            out.buf.truncate(len);
                        }
                    }
                }
                b"coordinates" => {
                    if coordinates.is_some() {
                        return Err(Bail);
                    }
                    coordinates = Some(self.i);
                    match kind {
                        Some(k) if k != Kind::Collection => {
                            self.coordinates(k, out, outer)?;
                            written = true;
                        }
                        // Ignored by PostGIS on a collection, or read again below.
                        _ => self.skip_value(depth + 1)?,
                    }
                }
                b"geometries" => {
                    if geometries {
                        return Err(Bail);
                    }
                    geometries = true;
                    match kind {
                        Some(Kind::Collection) => {
                            self.collection(out, outer, depth)?;
                            written = true;
                        }
                        None => {
                            speculative = Some(out.buf.len());
                            // A member PostGIS would ignore may make us defer: harmless.
                            self.collection(out, outer, depth)?;
                        }
                        // Ignored by PostGIS on other types.
                        Some(_) => self.skip_value(depth + 1)?,
                    }
                }
                // A crs would make ST_GeomFromGeoJSON look up an SRID (and fail on unknown
                // ones); no exporter sends one for 4326 data.
                b"crs" => return Err(Bail),
                // PostGIS finds members with strcasecmp, first match wins: `Type` or
                // `COORDINATES` would count, and we would have to mimic json-c's member order.
                _ if [&b"type"[..], b"coordinates", b"geometries", b"crs"]
                    .iter()
                    .any(|name| key.eq_ignore_ascii_case(name)) =>
                {
                    return Err(Bail)
                }
                // `bbox` and anything else: ST_GeomFromGeoJSON ignores them (checked).
                _ => self.skip_value(depth + 1)?,
            }
            self.ws();
            if !self.eat(b',') {
                self.expect(b'}')?;
                break;
            }
            self.ws();
        }
        match (kind, coordinates) {
            _ if written => Ok(()),
            (Some(k), Some(at)) if k != Kind::Collection => Json(Cursor { i: at, ..self.0 }).coordinates(k, out, outer),
            // No type, or no coordinates / geometries: PostGIS errors out.
            _ => Err(Bail),
        }
    }
}

/// A WKT reader accepting the subset of PostGIS's grammar (`lwin_wkt_lex.l`,
/// `lwin_wkt_parse.y`) that describes plain 2D geometries.
struct Wkt<'a>(Cursor<'a>);

impl<'a> std::ops::Deref for Wkt<'a> {
    type Target = Cursor<'a>;
    fn deref(&self) -> &Cursor<'a> {
        &self.0
    }
}

impl std::ops::DerefMut for Wkt<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> PointLists<'a> for Wkt<'a> {
    const OPEN: u8 = b'(';
    const CLOSE: u8 = b')';

    /// `x y`; a third number would make the geometry 3D.
    fn point(&mut self, out: &mut Ewkb) -> R<()> {
        let x = self.number()?;
        let before = self.i;
        self.ws();
        if self.i == before {
            return Err(Bail);
        }
        let y = self.number()?;
        self.ws();
        if !matches!(self.peek(), Some(b',' | b')')) {
            return Err(Bail);
        }
        out.point(x, y)
    }
}

impl<'a> Wkt<'a> {
    fn wkt(&mut self, out: &mut Ewkb) -> R<()> {
        // The loader transforms `SRID=n;` texts to 4326, a no-op for 4326 itself (checked:
        // identical bytes, whatever the case of `SRID`). Other SRIDs need PROJ; a prefix after
        // leading spaces takes the loader's ST_SetSRID branch instead, which is not worth
        // mimicking.
        if self.s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case(b"SRID=")) {
            if self.s.get(5..9) != Some(b"4326") {
                return Err(Bail);
            }
            self.i = 9;
            self.ws();
            self.expect(b';')?;
        }
        self.ws();
        self.geometry(out, true, 0)?;
        self.ws();
        if self.i == self.s.len() {
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// A number token. The lexer only ends one at `[ ,)\t\n\r]`, so the whole run of number
    /// characters must match its pattern `-?(([0-9]+\.?)|([0-9]*\.?[0-9]+)([eE][-+]?[0-9]+)?)`
    /// (no `+1`, no `1.e5`, no hex; `1.`, `.5` and `01` are fine) and be followed by one of
    /// those. PostGIS converts it with `atof`, correctly rounded like `str::parse`.
    fn number(&mut self) -> R<f64> {
        let start = self.i;
        while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') = self.peek() {
            self.i += 1;
        }
        if !matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b')')) {
            return Err(Bail);
        }
        let token = self.text.get(start..self.i).ok_or(Bail)?;
        if !wkt_number_syntax(token.as_bytes()) {
            return Err(Bail);
        }
        let v: f64 = token.parse().map_err(|_| Bail)?;
        // `1e400` parses to infinity in PostGIS as well, but no observation lies there.
        if !v.is_finite() {
            return Err(Bail);
        }
        Ok(v)
    }

    fn geometry(&mut self, out: &mut Ewkb, outer: bool, depth: usize) -> R<()> {
        if depth > MAX_WKT_DEPTH {
            return Err(Bail);
        }
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            self.i += 1;
        }
        // The whole word must be the keyword: `POINTZ` is POINT plus a dimension, curves,
        // TIN and the like are other keywords.
        let kind = Kind::from_name(self.s.get(start..self.i).ok_or(Bail)?)?;
        self.ws();
        // Anything but `(` here is `Z`, `M`, `ZM`, `EMPTY` or an error.
        if self.peek() != Some(b'(') {
            return Err(Bail);
        }
        out.header(kind, outer)?;
        match kind {
            Kind::Point => {
                self.expect(b'(')?;
                self.ws();
                self.point(out)?;
                self.expect(b')')
            }
            Kind::LineString => self.points(out, 2, false),
            Kind::Polygon => self.rings(out),
            Kind::MultiPoint => {
                let slot = out.count_slot()?;
                // Both `MULTIPOINT(1 2,3 4)` and `MULTIPOINT((1 2),(3 4))`, mixed freely.
                let n = self.list(|p| {
                    out.header(Kind::Point, false)?;
                    if p.eat(b'(') {
                        p.ws();
                        p.point(out)?;
                        p.expect(b')')
                    } else {
                        p.point(out)
                    }
                })?;
                out.set_count(slot, n)
            }
            Kind::MultiLineString => {
                let slot = out.count_slot()?;
                let n = self.list(|p| {
                    out.header(Kind::LineString, false)?;
                    p.points(out, 2, false)
                })?;
                out.set_count(slot, n)
            }
            Kind::MultiPolygon => {
                let slot = out.count_slot()?;
                let n = self.list(|p| {
                    out.header(Kind::Polygon, false)?;
                    p.rings(out)
                })?;
                out.set_count(slot, n)
            }
            Kind::Collection => {
                let slot = out.count_slot()?;
                let n = self.list(|p| p.geometry(out, false, depth + 1))?;
                out.set_count(slot, n)
            }
        }
    }
}

/// The lexer's number pattern `-?(([0-9]+\.?)|([0-9]*\.?[0-9]+)([eE][-+]?[0-9]+)?)`.
fn wkt_number_syntax(t: &[u8]) -> bool {
    let mut i = usize::from(t.first() == Some(&b'-'));
    let count_digits = |i: &mut usize| {
        let start = *i;
        while t.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let int_digits = count_digits(&mut i);
    let dot = t.get(i) == Some(&b'.');
    if dot {
        i += 1;
    }
    let frac_digits = count_digits(&mut i);
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i == t.len() {
        return true;
    }
    // An exponent needs the second alternative: `1.e5` matches neither.
    if !matches!(t.get(i), Some(b'e' | b'E')) || (dot && frac_digits == 0) {
        return false;
    }
    i += 1;
    if let Some(b'+' | b'-') = t.get(i) {
        i += 1;
    }
    count_digits(&mut i) > 0 && i == t.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn ewkb_hex(c: &Converted) -> Option<String> {
        match c {
            Converted::Ewkb(b) => Some(hex(b)),
            Converted::Defer => None,
        }
    }

    // The tables below were produced by running every input through PostGIS 3.3.2 (json-c 0.16,
    // PostgreSQL 15) with the loader's expressions.

    /// (input, `encode(ST_AsEWKB(ST_SetSRID(ST_GeomFromGeoJSON(input::jsonb), 4326)), 'hex')`)
    const GEOJSON_EWKB: &[(&str, &str)] = &[
        (
            r#"{"type":"Point","coordinates":[6.1,45.2]}"#,
            "0101000020e610000066666666666618409a99999999994640",
        ),
        (
            r#"{"type": "Point", "coordinates": [1, 2]}"#,
            "0101000020e6100000000000000000f03f0000000000000040",
        ),
        (
            r#"{"coordinates":[-1.5,-45.25],"type":"Point"}"#,
            "0101000020e6100000000000000000f8bf0000000000a046c0",
        ),
        (
            r#"{"type":"Point","coordinates":[6.123456789012345,45.98765432109876]}"#,
            "0101000020e6100000d91bdd746b7e1840a66ff0746bfe4640",
        ),
        (
            r#"{"type":"Point","coordinates":[1e-3,1E+2]}"#,
            "0101000020e6100000fca9f1d24d62503f0000000000005940",
        ),
        (
            r#"{"type":"Point","coordinates":[1.5e2,-2.5E-5]}"#,
            "0101000020e61000000000000000c062402d431cebe236fabe",
        ),
        (
            r#"{"type":"Point","coordinates":[-1e5,1E5]}"#,
            "0101000020e610000000000000006af8c000000000006af840",
        ),
        (
            r#"{"type":"Point","coordinates":[123456789012345678,-9e17]}"#,
            "0101000020e6100000350f63bab4697b4300b49376e2faa8c3",
        ),
        (
            r#"{"type":"Point","coordinates":[5e-324,2.2250738585072011e-308]}"#,
            "0101000020e61000000100000000000000ffffffffffff0f00",
        ),
        (
            r#"{"type":"Point","coordinates":[1e-400,0]}"#,
            "0101000020e610000000000000000000000000000000000000",
        ),
        (
            r#"{"type":"Point","coordinates":[0.1000000000000000055511151231257827021181583404541015625,-179.99999999999997]}"#,
            "0101000020e61000009a9999999999b93fffffffffff7f66c0",
        ),
        (
            r#"{"type":"Point","coordinates":[9007199254740993,0.30000000000000004]}"#,
            "0101000020e61000000000000000004043343333333333d33f",
        ),
        (
            " \n{ \"type\" :\t\"Point\" ,\r\n \"coordinates\" : [ 1 , 2 ] }\n ",
            "0101000020e6100000000000000000f03f0000000000000040",
        ),
        (
            r#"{"type":"Point","bbox":[1,2,1,2],"coordinates":[1,2]}"#,
            "0101000020e6100000000000000000f03f0000000000000040",
        ),
        (
            r#"{"bbox":"garbage","type":"Point","coordinates":[1,2]}"#,
            "0101000020e6100000000000000000f03f0000000000000040",
        ),
        (
            r#"{"type":"Point","coordinates":[3,4],"id":1,"properties":{"a":[1,{"b":null}],"c":-0.0},"foo":true,"bar":false,"s":"x\"y\\n\/\t"}"#,
            "0101000020e610000000000000000008400000000000001040",
        ),
        (
            r#"{"type":"Point","a":1,"a":2,"coordinates":[1,2]}"#,
            "0101000020e6100000000000000000f03f0000000000000040",
        ),
        (
            r#"{"type":"point","coordinates":[1,2]}"#,
            "0101000020e6100000000000000000f03f0000000000000040",
        ),
        (
            r#"{"type":"POINT","coordinates":[1,2]}"#,
            "0101000020e6100000000000000000f03f0000000000000040",
        ),
        (
            r#"{"type":"linestring","coordinates":[[1,2],[3,4]]}"#,
            "0102000020e610000002000000000000000000f03f000000000000004000000000000008400000000000001040",
        ),
        (
            r#"{"type":"LineString","coordinates":[[6.1,45.2],[6.2,45.3],[-6.3,-45.4]]}"#,
            "0102000020e61000000300000066666666666618409a99999999994640cdcccccccccc18406666666666a6464033333333333319c03333333333b346c0",
        ),
        (
            r#"{"type":"LineString","coordinates":[[1,1],[1,1]]}"#,
            "0102000020e610000002000000000000000000f03f000000000000f03f000000000000f03f000000000000f03f",
        ),
        (
            r#"{"type":"Polygon","coordinates":[[[0,0],[10,0],[10,10],[0,10],[0,0]],[[1,1],[2,1],[2,2],[1,1]]]}"#,
            "0103000020e61000000200000005000000000000000000000000000000000000000000000000002440000000000000000000000000000024400000000000002440000000000000000000000000000024400000000000000000000000000000000004000000000000000000f03f000000000000f03f0000000000000040000000000000f03f00000000000000400000000000000040000000000000f03f000000000000f03f",
        ),
        (
            r#"{"coordinates":[[[6.1,45.1],[6.2,45.1],[6.2,45.2],[6.1,45.1]]],"type":"Polygon"}"#,
            "0103000020e610000001000000040000006666666666661840cdcccccccc8c4640cdcccccccccc1840cdcccccccc8c4640cdcccccccccc18409a999999999946406666666666661840cdcccccccc8c4640",
        ),
        (
            r#"{"type":"MultiPoint","coordinates":[[1,2],[3,4],[-5.5,6e1]]}"#,
            "0104000020e6100000030000000101000000000000000000f03f0000000000000040010100000000000000000008400000000000001040010100000000000000000016c00000000000004e40",
        ),
        (
            r#"{"type":"MultiPoint","coordinates":[[1,2]]}"#,
            "0104000020e6100000010000000101000000000000000000f03f0000000000000040",
        ),
        (
            r#"{"type":"MultiLineString","coordinates":[[[1,2],[3,4]],[[5,6],[7,8],[9,10]]]}"#,
            "0105000020e610000002000000010200000002000000000000000000f03f000000000000004000000000000008400000000000001040010200000003000000000000000000144000000000000018400000000000001c40000000000000204000000000000022400000000000002440",
        ),
        (
            r#"{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]],[[[5,5],[6,5],[6,6],[5,5]],[[5.1,5.1],[5.2,5.1],[5.2,5.2],[5.1,5.1]]]]}"#,
            "0106000020e6100000020000000103000000010000000400000000000000000000000000000000000000000000000000f03f0000000000000000000000000000f03f000000000000f03f0000000000000000000000000000000001030000000200000004000000000000000000144000000000000014400000000000001840000000000000144000000000000018400000000000001840000000000000144000000000000014400400000066666666666614406666666666661440cdcccccccccc14406666666666661440cdcccccccccc1440cdcccccccccc144066666666666614406666666666661440",
        ),
        (
            r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2]},{"type":"LineString","coordinates":[[1,2],[3,4]]},{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,0]]]},{"type":"MultiPoint","coordinates":[[1,2]]},{"type":"MultiLineString","coordinates":[[[1,2],[3,4]]]},{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]]]}]}"#,
            "0107000020e6100000060000000101000000000000000000f03f0000000000000040010200000002000000000000000000f03f0000000000000040000000000000084000000000000010400103000000010000000400000000000000000000000000000000000000000000000000f03f0000000000000000000000000000f03f000000000000f03f000000000000000000000000000000000104000000010000000101000000000000000000f03f0000000000000040010500000001000000010200000002000000000000000000f03f0000000000000040000000000000084000000000000010400106000000010000000103000000010000000400000000000000000000000000000000000000000000000000f03f0000000000000000000000000000f03f000000000000f03f00000000000000000000000000000000",
        ),
        (
            r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2]},{"type":"GeometryCollection","geometries":[{"coordinates":[3,4],"type":"Point"}]}]}"#,
            "0107000020e6100000020000000101000000000000000000f03f0000000000000040010700000001000000010100000000000000000008400000000000001040",
        ),
        (
            r#"{"geometries":[{"type":"Point","coordinates":[1,2]}],"type":"GeometryCollection"}"#,
            "0107000020e6100000010000000101000000000000000000f03f0000000000000040",
        ),
        (
            r#"{"type":"GeometryCollection","coordinates":[1,2],"geometries":[{"type":"Point","coordinates":[1,2],"geometries":5}]}"#,
            "0107000020e6100000010000000101000000000000000000f03f0000000000000040",
        ),
        (
            r#"{"type":"Point","coordinates":[-180,-90]}"#,
            "0101000020e610000000000000008066c000000000008056c0",
        ),
        (
            r#"{"type":"Point","coordinates":[1.7976931348623157e17,-0.5]}"#,
            "0101000020e6100000c1e6bee759f58343000000000000e0bf",
        ),
        (
            r#"{"geometries":[{"type":"Point","coordinates":[9,9]}],"type":"Point","coordinates":[1,2]}"#,
            "0101000020e6100000000000000000f03f0000000000000040",
        ),
        (
            r#"{"geometries":[{"type":"Point","coordinates":[9,9]}],"coordinates":[1,2],"type":"Point"}"#,
            "0101000020e6100000000000000000f03f0000000000000040",
        ),
        (
            r#"{"coordinates":[1,2],"geometries":[{"coordinates":[3,4],"type":"Point"}],"type":"GeometryCollection"}"#,
            "0107000020e610000001000000010100000000000000000008400000000000001040",
        ),
        (
            r#"{"geometries":[{"geometries":[{"geometries":[{"coordinates":[[1,2],[3,4]],"type":"LineString"}],"type":"GeometryCollection"}],"type":"GeometryCollection"},{"type":"Point","coordinates":[5,6]}],"type":"GeometryCollection"}"#,
            "0107000020e610000002000000010700000001000000010700000001000000010200000002000000000000000000f03f000000000000004000000000000008400000000000001040010100000000000000000014400000000000001840",
        ),
        (
            r#"{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]]],"geometries":[]}"#,
            "0106000020e6100000010000000103000000010000000400000000000000000000000000000000000000000000000000f03f0000000000000000000000000000f03f000000000000f03f00000000000000000000000000000000",
        ),
        (
            r#"{"type": "MultiPolygon", "coordinates": [[[[6.123456789012345, 45.1], [6.2, 45.1], [6.2, 45.98765432109876], [6.123456789012345, 45.1]]], [[[-61.5, 16.2], [-61.4, 16.2], [-61.4, 16.3], [-61.5, 16.2]]]]}"#,
            "0106000020e61000000200000001030000000100000004000000d91bdd746b7e1840cdcccccccc8c4640cdcccccccccc1840cdcccccccc8c4640cdcccccccccc1840a66ff0746bfe4640d91bdd746b7e1840cdcccccccc8c4640010300000001000000040000000000000000c04ec033333333333330403333333333b34ec033333333333330403333333333b34ec0cdcccccccc4c30400000000000c04ec03333333333333040",
        ),
        (
            r#"{"type":"Polygon","coordinates":[[[5.76327514648437,45.2150523981867],[5.76465606689453,45.2150523981867],[5.76465606689453,45.2161415227453],[5.76327514648437,45.2161415227453],[5.76327514648437,45.2150523981867]]]}"#,
            "0103000020e61000000100000005000000faffffff970d1740b29144d6869b4640ffffffff010f1740b29144d6869b4640ffffffff010f1740d6bf8186aa9b4640faffffff970d1740d6bf8186aa9b4640faffffff970d1740b29144d6869b4640",
        ),
        (
            r#"{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2]}]}]}]}]}]}]}]}]}]}"#,
            "0107000020e6100000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000101000000000000000000f03f0000000000000040",
        ),
    ];

    /// (input, hex of `ST_AsEWKB` of ST_Transform(input::geometry, 4326) for `SRID=` texts, else ST_SetSRID(input::geometry, 4326))
    const WKT_EWKB: &[(&str, &str)] = &[
        ("POINT(6.1 45.2)", "0101000020e610000066666666666618409a99999999994640"),
        ("point(1 2)", "0101000020e6100000000000000000f03f0000000000000040"),
        ("Point (1 2)", "0101000020e6100000000000000000f03f0000000000000040"),
        ("  POINT ( 1   2 )  ", "0101000020e6100000000000000000f03f0000000000000040"),
        ("\tPOINT\t(1\t2)\r\n", "0101000020e6100000000000000000f03f0000000000000040"),
        ("POINT(1\n2)", "0101000020e6100000000000000000f03f0000000000000040"),
        ("POINT(1.5e3 -2E-3)", "0101000020e61000000000000000709740fca9f1d24d6260bf"),
        ("POINT(1e-3 1E+2)", "0101000020e6100000fca9f1d24d62503f0000000000005940"),
        ("POINT(1. .5)", "0101000020e6100000000000000000f03f000000000000e03f"),
        ("POINT(-.5 -1.)", "0101000020e6100000000000000000e0bf000000000000f0bf"),
        ("POINT(01 002.50)", "0101000020e6100000000000000000f03f0000000000000440"),
        ("POINT(-0 -0.0)", "0101000020e610000000000000000000800000000000000080"),
        (
            "POINT(6.123456789012345 45.98765432109876)",
            "0101000020e6100000d91bdd746b7e1840a66ff0746bfe4640",
        ),
        ("POINT(1e30 -1e300)", "0101000020e6100000ea8ca039593e29469c7500883ce437fe"),
        ("POINT(5e-324 1e-400)", "0101000020e610000001000000000000000000000000000000"),
        (
            "POINT(-1e-400 2.2250738585072011e-308)",
            "0101000020e61000000000000000000080ffffffffffff0f00",
        ),
        (
            "POINT(123456789012345678 0.1000000000000000055511151231257827021181583404541015625)",
            "0101000020e6100000350f63bab4697b439a9999999999b93f",
        ),
        (
            "LINESTRING(1 2,3 4)",
            "0102000020e610000002000000000000000000f03f000000000000004000000000000008400000000000001040",
        ),
        (
            "LINESTRING(1 2,1 2)",
            "0102000020e610000002000000000000000000f03f0000000000000040000000000000f03f0000000000000040",
        ),
        (
            "linestring ( 6.1 45.2 , 6.2 45.3 ,-6.3 -45.4 )",
            "0102000020e61000000300000066666666666618409a99999999994640cdcccccccccc18406666666666a6464033333333333319c03333333333b346c0",
        ),
        (
            "POLYGON((0 0,10 0,10 10,0 10,0 0),(1 1,2 1,2 2,1 1))",
            "0103000020e61000000200000005000000000000000000000000000000000000000000000000002440000000000000000000000000000024400000000000002440000000000000000000000000000024400000000000000000000000000000000004000000000000000000f03f000000000000f03f0000000000000040000000000000f03f00000000000000400000000000000040000000000000f03f000000000000f03f",
        ),
        (
            "POLYGON((-0 0,1 0,1 1,-0 0))",
            "0103000020e6100000010000000400000000000000000000800000000000000000000000000000f03f0000000000000000000000000000f03f000000000000f03f00000000000000800000000000000000",
        ),
        (
            "MULTIPOINT(1 2,3 4)",
            "0104000020e6100000020000000101000000000000000000f03f0000000000000040010100000000000000000008400000000000001040",
        ),
        (
            "MULTIPOINT((1 2),(3 4))",
            "0104000020e6100000020000000101000000000000000000f03f0000000000000040010100000000000000000008400000000000001040",
        ),
        (
            "MULTIPOINT((1 2),3 4)",
            "0104000020e6100000020000000101000000000000000000f03f0000000000000040010100000000000000000008400000000000001040",
        ),
        (
            "MULTIPOINT( ( 1 2 ) , ( 3 4 ) )",
            "0104000020e6100000020000000101000000000000000000f03f0000000000000040010100000000000000000008400000000000001040",
        ),
        (
            "MultiLineString((1 2,3 4),(5 6,7 8,9 10))",
            "0105000020e610000002000000010200000002000000000000000000f03f000000000000004000000000000008400000000000001040010200000003000000000000000000144000000000000018400000000000001c40000000000000204000000000000022400000000000002440",
        ),
        (
            "MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((5 5,6 5,6 6,5 5),(5.1 5.1,5.2 5.1,5.2 5.2,5.1 5.1)))",
            "0106000020e6100000020000000103000000010000000400000000000000000000000000000000000000000000000000f03f0000000000000000000000000000f03f000000000000f03f0000000000000000000000000000000001030000000200000004000000000000000000144000000000000014400000000000001840000000000000144000000000000018400000000000001840000000000000144000000000000014400400000066666666666614406666666666661440cdcccccccccc14406666666666661440cdcccccccccc1440cdcccccccccc144066666666666614406666666666661440",
        ),
        (
            "GEOMETRYCOLLECTION(POINT(1 2),LINESTRING(1 2,3 4),POLYGON((0 0,1 0,1 1,0 0)),MULTIPOINT(1 2),MULTILINESTRING((1 2,3 4)),MULTIPOLYGON(((0 0,1 0,1 1,0 0))))",
            "0107000020e6100000060000000101000000000000000000f03f0000000000000040010200000002000000000000000000f03f0000000000000040000000000000084000000000000010400103000000010000000400000000000000000000000000000000000000000000000000f03f0000000000000000000000000000f03f000000000000f03f000000000000000000000000000000000104000000010000000101000000000000000000f03f0000000000000040010500000001000000010200000002000000000000000000f03f0000000000000040000000000000084000000000000010400106000000010000000103000000010000000400000000000000000000000000000000000000000000000000f03f0000000000000000000000000000f03f000000000000f03f00000000000000000000000000000000",
        ),
        (
            "GEOMETRYCOLLECTION(POINT(1 2),GEOMETRYCOLLECTION(POINT(3 4)))",
            "0107000020e6100000020000000101000000000000000000f03f0000000000000040010700000001000000010100000000000000000008400000000000001040",
        ),
        (
            "geometrycollection ( point ( 1 2 ) , multipoint ( ( 3 4 ) ) )",
            "0107000020e6100000020000000101000000000000000000f03f0000000000000040010400000001000000010100000000000000000008400000000000001040",
        ),
        (
            "SRID=4326;POINT(6.123456789012345 45.98765432109876)",
            "0101000020e6100000d91bdd746b7e1840a66ff0746bfe4640",
        ),
        ("srid=4326;POINT(1 2)", "0101000020e6100000000000000000f03f0000000000000040"),
        ("SRID=4326; POINT(1 2)", "0101000020e6100000000000000000f03f0000000000000040"),
        ("SRID=4326 ;POINT(1 2)", "0101000020e6100000000000000000f03f0000000000000040"),
        (
            "SRID=4326;POLYGON((6.123456789012345 45.1,6.2 45.1,6.2 45.98765432109876,6.123456789012345 45.1))",
            "0103000020e61000000100000004000000d91bdd746b7e1840cdcccccccc8c4640cdcccccccccc1840cdcccccccc8c4640cdcccccccccc1840a66ff0746bfe4640d91bdd746b7e1840cdcccccccc8c4640",
        ),
        (
            "SRID=4326;GEOMETRYCOLLECTION(POINT(-179.99999999999997 89.99999999999999),LINESTRING(0.1 0.2,0.3 0.4))",
            "0107000020e6100000020000000101000000ffffffffff7f66c0ffffffffff7f56400102000000020000009a9999999999b93f9a9999999999c93f333333333333d33f9a9999999999d93f",
        ),
        (
            "SRID=4326;MULTIPOINT(-0 -0)",
            "0104000020e610000001000000010100000000000000000000800000000000000080",
        ),
        (
            "MULTIPOINT(\n  1 2,\n  3 4\n)",
            "0104000020e6100000020000000101000000000000000000f03f0000000000000040010100000000000000000008400000000000001040",
        ),
        (
            "POLYGON((5.76327514648437 45.2150523981867,5.76465606689453 45.2150523981867,5.76465606689453 45.2161415227453,5.76327514648437 45.2161415227453,5.76327514648437 45.2150523981867))",
            "0103000020e61000000100000005000000faffffff970d1740b29144d6869b4640ffffffff010f1740b29144d6869b4640ffffffff010f1740d6bf8186aa9b4640faffffff970d1740d6bf8186aa9b4640faffffff970d1740b29144d6869b4640",
        ),
        (
            "GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(POINT(1 2)))))))))))))))))",
            "0107000020e6100000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000107000000010000000101000000000000000000f03f0000000000000040",
        ),
    ];

    /// (input, what PostGIS does with it through the loader's expression)
    const GEOJSON_DEFER: &[(&str, &str)] = &[
        (
            r#"{"geometries":[[1]],"type":"Point","coordinates":[1,2]}"#,
            "accepted as POINT(1 2): geometries ignored on a Point",
        ),
        (
            r#"{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2]}]}]}]}]}]}]}]}]}]}]}"#,
            "accepted (json-c allows 32 levels); deeper than our bound",
        ),
        (r#"{"type":"Point","coordinates":[1,2,3]}"#, "accepted as POINT Z (3D, off the fast path)"),
        (r#"{"type":"Point","coordinates":[1,2,3,4]}"#, "accepted as POINT Z, 4th number dropped"),
        (r#"{"type":"Point","coordinates":[1]}"#, "error: Too few ordinates in GeoJSON"),
        (r#"{"type":"Point","coordinates":[]}"#, "accepted as POINT EMPTY"),
        (
            r#"{"type":"Point","coordinates":[1,2],"crs":{"type":"name","properties":{"name":"EPSG:4326"}}}"#,
            "accepted; a crs makes PostGIS look the SRID up",
        ),
        (
            r#"{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2],"crs":{"type":"name","properties":{"name":"EPSG:2154"}}}]}"#,
            "accepted; nested crs ignored",
        ),
        (
            r#"{"type":"Feature","geometry":{"type":"Point","coordinates":[1,2]}}"#,
            "error: invalid GeoJson representation",
        ),
        (r#"{"type":"Curve","coordinates":[1,2]}"#, "error: invalid GeoJson representation"),
        (r#"{"type":"Point"}"#, "error: Unable to find 'coordinates' in GeoJSON string"),
        (r#"{"coordinates":[1,2]}"#, "error: unknown GeoJSON type"),
        (r#"{"type":"Point","coordinates":"1 2"}"#, "error: The 'coordinates' in GeoJSON are not an array"),
        (r#"{"type":"Point","coordinates":null}"#, "error: Unable to find 'coordinates' in GeoJSON string"),
        (r#"{"type":"LineString","coordinates":[]}"#, "accepted as LINESTRING EMPTY"),
        (r#"{"type":"Polygon","coordinates":[]}"#, "accepted as POLYGON EMPTY"),
        (r#"{"type":"Polygon","coordinates":[[]]}"#, "accepted as POLYGON EMPTY"),
        (r#"{"type":"MultiPoint","coordinates":[]}"#, "accepted as MULTIPOINT EMPTY"),
        (r#"{"type":"MultiPolygon","coordinates":[[]]}"#, "accepted as MULTIPOLYGON EMPTY"),
        (r#"{"type":"GeometryCollection","geometries":[]}"#, "accepted as GEOMETRYCOLLECTION EMPTY"),
        (r#"{"type":"LineString","coordinates":[[1,2]]}"#, "accepted: 1-point LINESTRING (invalid; WKT refuses it)"),
        (
            r#"{"type":"LineString","coordinates":[[1,2],[]]}"#,
            "accepted: the [] position is skipped, 1-point LINESTRING",
        ),
        (
            r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}"#,
            "accepted: 3-point ring (invalid; WKT refuses it)",
        ),
        (
            r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}"#,
            "accepted: unclosed ring (invalid; WKT refuses it)",
        ),
        (
            r#"{"type":"Point","coordinates":[-0,1]}"#,
            "gives +0 via jsonb (numeric has no -0), -0.0 would stay -0 from raw text",
        ),
        (r#"{"type":"Point","coordinates":[-0.0,1]}"#, "gives +0 via jsonb, -0 from raw text"),
        (r#"{"type":"Point","coordinates":[-1e-400,1]}"#, "gives -0 (underflow after jsonb)"),
        (r#"{"type":"Point","coordinates":[1e18,1]}"#, "accepted (exact); beyond our 1e18 bound"),
        (
            r#"{"type":"Point","coordinates":[1e30,1]}"#,
            "gives 2^64: jsonb prints a 31-digit integer that json-c saturates",
        ),
        (r#"{"type":"Point","coordinates":[1e400,1]}"#, "gives 2^64 (saturated integer), not infinity"),
        (r#"{"type":"Point","coordinates":[1e-16384,1]}"#, "error: value overflows numeric format"),
        (r#"{"type":"Point","coordinates":["1",2]}"#, "accepted: json-c converts the string"),
        (r#"{"Type":"Point","coordinates":[1,2]}"#, "accepted: members are found case-insensitively"),
        (r#"{"type":"Point","COORDINATES":[1,2]}"#, "accepted: members are found case-insensitively"),
        (r#"{"type":"Point","type":"Point","coordinates":[1,2]}"#, "accepted: jsonb keeps the last duplicate"),
        (
            r#"{"type":"Point","coordinates":[1,2],"coordinates":[3,4]}"#,
            "gives POINT(3 4): jsonb keeps the last duplicate",
        ),
        (r#"{"\u0074ype":"Point","coordinates":[1,2]}"#, r#"accepted: the escaped key is "type""#),
        (r#"{"type":"Point","coordinates":[1,2],"x":"\u0000"}"#, "error: unsupported Unicode escape sequence"),
        (r#"{"type":"Point","coordinates":[1,2]"#, "error: invalid input syntax for type json"),
        (r#"{"type":"Point","coordinates":[1,2]}x"#, "error: invalid input syntax for type json"),
        (r#"{"type":"Point","coordinates":[01,2]}"#, "error: invalid input syntax for type json"),
        (r#"{"type":"Point","coordinates":[1.,2]}"#, "error: invalid input syntax for type json"),
        (r#"{"type":"Point","coordinates":[.5,2]}"#, "error: invalid input syntax for type json"),
        (r#"{"type":"Point","coordinates":[+1,2]}"#, "error: invalid input syntax for type json"),
        (r#"{"type":"Point","coordinates":[NaN,2]}"#, "error: invalid input syntax for type json"),
        (
            r#"{"type":"Point","coordinates":[1,2],"bbox":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
            "error: nesting too deep (at offset 40)",
        ),
        (r#"{"type":5,"coordinates":[1,2]}"#, "error: invalid GeoJson representation"),
        (r#"{"type":null,"coordinates":[1,2]}"#, "error: unknown GeoJSON type"),
        (r#"{"type":"Point","coordinates":[[1,2]]}"#, "error: Too few ordinates in GeoJSON"),
        (
            r#"{"type":"LineString","coordinates":[1,2]}"#,
            "error: The 'coordinates' in GeoJSON are not sufficiently nested",
        ),
        (r#"{"type":"GeometryCollection","geometries":[[1,2]]}"#, "error: unknown GeoJSON type"),
        ("{}", "error: invalid GeoJSON representation"),
        ("[1,2]", "error: unknown GeoJSON type"),
        ("", "error: invalid input syntax for type json"),
    ];

    /// (input, what PostGIS does with it through the loader's expression)
    const WKT_DEFER: &[(&str, &str)] = &[
        (
            "GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(GEOMETRYCOLLECTION(POINT(1 2))))))))))))))))))",
            "accepted; deeper than our bound",
        ),
        ("POINT Z (1 2 3)", "accepted as POINT Z"),
        ("POINTZ(1 2 3)", "accepted as POINT Z"),
        ("POINT M (1 2 3)", "accepted as POINT M"),
        ("POINT ZM (1 2 3 4)", "accepted as POINT ZM"),
        ("POINT(1 2 3)", "accepted as POINT Z"),
        ("POINT(1 2 3 4)", "accepted as POINT ZM"),
        ("POINT EMPTY", "accepted as POINT EMPTY (NaN coordinates)"),
        ("GEOMETRYCOLLECTION EMPTY", "accepted, EMPTY"),
        ("MULTIPOINT(EMPTY,1 2)", "accepted, contains an EMPTY point"),
        ("GEOMETRYCOLLECTION(POINT EMPTY)", "accepted, contains an EMPTY point"),
        ("CIRCULARSTRING(0 0,1 1,2 0)", "accepted, curve type"),
        ("TRIANGLE((0 0,1 0,1 1,0 0))", "accepted, TRIANGLE type"),
        ("TIN(((0 0,1 0,1 1,0 0)))", "accepted, TIN type"),
        ("CURVEPOLYGON((0 0,1 0,1 1,0 0))", "accepted, curve type"),
        ("SRID=2154;POINT(700000 6600000)", "accepted, reprojected by PROJ"),
        ("SRID=04326;POINT(1 2)", "accepted (atoi), not worth mimicking"),
        (" SRID=4326;POINT(1 2)", "accepted, but takes the loader's ST_SetSRID branch"),
        ("SRID=4326POINT(1 2)", "error: parse error - invalid geometry"),
        ("POINT(+1 2)", "error: parse error - invalid geometry"),
        ("POINT(1.e5 2)", "error: parse error - invalid geometry"),
        ("POINT(nan 1)", "accepted: NaN coordinate"),
        ("POINT(inf 1)", "error: parse error - invalid geometry"),
        ("POINT(0x10 1)", "error: parse error - invalid geometry"),
        ("POINT(1e400 1)", "accepted: infinite coordinate"),
        ("POINT(1 2)x", "error: parse error - invalid geometry"),
        ("POINT(1 2),", "error: parse error - invalid geometry"),
        ("POINT(1,2)", "error: parse error - invalid geometry"),
        ("POINT(1 2", "error: parse error - invalid geometry"),
        ("POINT()", "error: parse error - invalid geometry"),
        ("POINT(1-2)", "error: parse error - invalid geometry"),
        ("POINT(1\u{c}2)", "error: parse error - invalid geometry"),
        ("POINT(1\u{b}2)", "error: parse error - invalid geometry"),
        ("LINESTRING(1 2)", "error: geometry requires more points"),
        ("POLYGON((0 0,1 0,1 1,0 1))", "error: geometry contains non-closed rings"),
        ("POLYGON((0 0,1 0,0 0))", "error: geometry requires more points"),
        ("POLYGON((0 0,1 0,1 1,-0 0))", "error: geometry contains non-closed rings"),
        ("POLYGON(0 0,1 0,1 1,0 0)", "error: parse error - invalid geometry"),
        ("MULTIPOLYGON((0 0,1 0,1 1,0 0))", "error: parse error - invalid geometry"),
        ("POINTS(1 2)", "error: parse error - invalid geometry"),
        ("garbage", "error: parse error - invalid geometry"),
        ("", "error: parse error - invalid geometry"),
        (
            "0101000020E6100000000000000000F03F0000000000000040",
            "accepted: the text cast also reads HEXEWKB",
        ),
        (r#"{"type":"Point","coordinates":[1,2]}"#, "accepted: the text cast also reads GeoJSON"),
        ("POINT(1 2);", "error: parse error - invalid geometry"),
    ];

    #[test]
    fn geojson_matches_postgis() {
        for (input, expected) in GEOJSON_EWKB {
            assert_eq!(ewkb_hex(&from_geojson(input)).as_deref(), Some(*expected), "{input}");
        }
    }

    #[test]
    fn wkt_matches_postgis() {
        for (input, expected) in WKT_EWKB {
            assert_eq!(ewkb_hex(&from_wkt(input)).as_deref(), Some(*expected), "{input}");
        }
    }

    #[test]
    fn geojson_defers() {
        for (input, postgis) in GEOJSON_DEFER {
            assert_eq!(from_geojson(input), Converted::Defer, "{input} ({postgis})");
        }
    }

    #[test]
    fn wkt_defers() {
        for (input, postgis) in WKT_DEFER {
            assert_eq!(from_wkt(input), Converted::Defer, "{input} ({postgis})");
        }
        // A NUL cannot reach PostgreSQL text; it must not be mistaken for an end of input.
        assert_eq!(from_wkt("POINT(1 2)\0"), Converted::Defer);
    }

    /// `SRID=4326;` (any case of SRID) only changes which loader expression applies, and
    /// ST_Transform to the geometry's own SRID returns it untouched.
    #[test]
    fn srid_4326_prefix_is_transparent() {
        for (input, _) in WKT_EWKB {
            if input.trim_start().get(..5).is_some_and(|p| p.eq_ignore_ascii_case("SRID=")) {
                continue;
            }
            for prefix in ["SRID=4326;", "srid=4326;", "SRID=4326 ; "] {
                let prefixed = format!("{prefix}{}", input.trim_start());
                assert_eq!(from_wkt(&prefixed), from_wkt(input), "{prefixed}");
            }
        }
    }

    /// splitmix64: deterministic, std-only.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }

        fn digits(&mut self, out: &mut String, n: usize, leading_nonzero: bool) {
            for k in 0..n {
                let d = if k == 0 && leading_nonzero { 1 + self.below(9) } else { self.below(10) };
                out.push(char::from(b'0' + d as u8));
            }
        }
    }

    /// A coordinate as written in the input, with the value both parsers must read.
    #[derive(Clone, Debug)]
    struct Num {
        text: String,
        value: f64,
    }

    /// A number valid in both JSON and WKT syntax, finite, below 1e18 and never negative zero
    /// (the inputs on which GeoJSON and WKT must agree).
    fn random_number(rng: &mut Rng) -> Num {
        loop {
            let mut t = String::new();
            if rng.chance(40) {
                t.push('-');
            }
            match rng.below(6) {
                // Small integers.
                0 => {
                    if rng.chance(10) {
                        t.push('0');
                    } else {
                        let n = 1 + rng.below(4);
                        rng.digits(&mut t, n, true);
                    }
                }
                // Degrees with up to 17 decimals.
                1 => {
                    let v = rng.below(181);
                    t.push_str(&v.to_string());
                    t.push('.');
                    let n = 1 + rng.below(17);
                    rng.digits(&mut t, n, false);
                }
                // Shortest round-trip forms of random doubles, plain and exponent.
                2 | 3 => {
                    let v = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * 360.0 - 180.0;
                    let v = v.abs();
                    t.push_str(&match rng.below(3) {
                        0 => format!("{v}"),
                        1 => format!("{v:e}"),
                        _ => format!("{v:E}"),
                    });
                }
                // Mantissa and exponent from tiny (subnormal, underflow) to 1e17.
                4 => {
                    rng.digits(&mut t, 1, true);
                    if rng.chance(70) {
                        t.push('.');
                        let n = 1 + rng.below(20);
                        rng.digits(&mut t, n, false);
                    }
                    t.push(*rng.pick(&['e', 'E']));
                    let exp = rng.below(348) as i64 - 330;
                    if exp >= 0 && rng.chance(50) {
                        t.push('+');
                    }
                    t.push_str(&exp.to_string());
                }
                // Long integers, past 2^53.
                _ => {
                    let n = 1 + rng.below(18);
                    rng.digits(&mut t, n, true);
                }
            }
            let value: f64 = t.parse().expect("generated numbers are valid");
            if value.abs() < 1e18 && !(value == 0.0 && value.is_sign_negative()) {
                return Num { text: t, value };
            }
        }
    }

    type Pt = (Num, Num);

    #[derive(Clone, Debug)]
    enum Geom {
        Point(Pt),
        Line(Vec<Pt>),
        Polygon(Vec<Vec<Pt>>),
        MultiPoint(Vec<Pt>),
        MultiLine(Vec<Vec<Pt>>),
        MultiPolygon(Vec<Vec<Vec<Pt>>>),
        Collection(Vec<Geom>),
    }

    fn random_point(rng: &mut Rng) -> Pt {
        (random_number(rng), random_number(rng))
    }

    fn random_line(rng: &mut Rng) -> Vec<Pt> {
        let n = 2 + rng.below(5);
        (0..n).map(|_| random_point(rng)).collect()
    }

    fn random_ring(rng: &mut Rng) -> Vec<Pt> {
        let n = 3 + rng.below(5);
        let mut ring: Vec<Pt> = (0..n).map(|_| random_point(rng)).collect();
        ring.push(ring[0].clone());
        ring
    }

    fn random_polygon(rng: &mut Rng) -> Vec<Vec<Pt>> {
        let n = 1 + rng.below(3);
        (0..n).map(|_| random_ring(rng)).collect()
    }

    fn some<T>(rng: &mut Rng, max: usize, f: impl Fn(&mut Rng) -> T) -> Vec<T> {
        let n = 1 + rng.below(max);
        (0..n).map(|_| f(rng)).collect()
    }

    fn random_geom(rng: &mut Rng, depth: usize) -> Geom {
        match rng.below(if depth < 3 { 8 } else { 7 }) {
            0 | 1 => Geom::Point(random_point(rng)),
            2 => Geom::Line(random_line(rng)),
            3 => Geom::Polygon(random_polygon(rng)),
            4 => Geom::MultiPoint(some(rng, 4, random_point)),
            5 => Geom::MultiLine(some(rng, 3, random_line)),
            6 => Geom::MultiPolygon(some(rng, 3, random_polygon)),
            _ => Geom::Collection(some(rng, 4, |r| random_geom(r, depth + 1))),
        }
    }

    /// EWKB written from the model, independently of the parsers.
    fn reference(g: &Geom, outer: bool, out: &mut Vec<u8>) {
        fn head(out: &mut Vec<u8>, ty: u32, outer: bool) {
            out.push(1);
            if outer {
                out.extend_from_slice(&(ty | 0x2000_0000).to_le_bytes());
                out.extend_from_slice(&4326u32.to_le_bytes());
            } else {
                out.extend_from_slice(&ty.to_le_bytes());
            }
        }
        fn count(out: &mut Vec<u8>, n: usize) {
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        fn pt(out: &mut Vec<u8>, p: &Pt) {
            out.extend_from_slice(&p.0.value.to_le_bytes());
            out.extend_from_slice(&p.1.value.to_le_bytes());
        }
        fn pts(out: &mut Vec<u8>, l: &[Pt]) {
            count(out, l.len());
            l.iter().for_each(|p| pt(out, p));
        }
        fn rings(out: &mut Vec<u8>, r: &[Vec<Pt>]) {
            count(out, r.len());
            r.iter().for_each(|l| pts(out, l));
        }
        match g {
            Geom::Point(p) => {
                head(out, 1, outer);
                pt(out, p);
            }
            Geom::Line(l) => {
                head(out, 2, outer);
                pts(out, l);
            }
            Geom::Polygon(r) => {
                head(out, 3, outer);
                rings(out, r);
            }
            Geom::MultiPoint(m) => {
                head(out, 4, outer);
                count(out, m.len());
                for p in m {
                    head(out, 1, false);
                    pt(out, p);
                }
            }
            Geom::MultiLine(m) => {
                head(out, 5, outer);
                count(out, m.len());
                for l in m {
                    head(out, 2, false);
                    pts(out, l);
                }
            }
            Geom::MultiPolygon(m) => {
                head(out, 6, outer);
                count(out, m.len());
                for r in m {
                    head(out, 3, false);
                    rings(out, r);
                }
            }
            Geom::Collection(c) => {
                head(out, 7, outer);
                count(out, c.len());
                c.iter().for_each(|g| reference(g, false, out));
            }
        }
    }

    /// Whitespace both grammars accept, often none.
    fn ws(rng: &mut Rng, out: &mut String) {
        if rng.chance(70) {
            return;
        }
        for _ in 0..1 + rng.below(3) {
            out.push(*rng.pick(&[' ', ' ', '\t', '\n', '\r']));
        }
    }

    fn name_case(rng: &mut Rng, name: &str) -> String {
        match rng.below(4) {
            0 => name.to_ascii_lowercase(),
            1 => name.to_ascii_uppercase(),
            _ => name.to_string(),
        }
    }

    fn json_list<T>(rng: &mut Rng, out: &mut String, items: &[T], f: impl Fn(&mut Rng, &mut String, &T)) {
        out.push('[');
        for (k, item) in items.iter().enumerate() {
            if k > 0 {
                ws(rng, out);
                out.push(',');
            }
            ws(rng, out);
            f(rng, out, item);
        }
        ws(rng, out);
        out.push(']');
    }

    fn json_pt(rng: &mut Rng, out: &mut String, p: &Pt) {
        json_list(rng, out, &[&p.0, &p.1], |_, out, n| out.push_str(&n.text));
    }

    fn json_pts(rng: &mut Rng, out: &mut String, l: &[Pt]) {
        json_list(rng, out, l, json_pt);
    }

    fn json_rings(rng: &mut Rng, out: &mut String, r: &[Vec<Pt>]) {
        json_list(rng, out, r, |rng, out, l| json_pts(rng, out, l));
    }

    fn geojson(rng: &mut Rng, g: &Geom, out: &mut String) {
        let (name, key) = match g {
            Geom::Point(_) => ("Point", "coordinates"),
            Geom::Line(_) => ("LineString", "coordinates"),
            Geom::Polygon(_) => ("Polygon", "coordinates"),
            Geom::MultiPoint(_) => ("MultiPoint", "coordinates"),
            Geom::MultiLine(_) => ("MultiLineString", "coordinates"),
            Geom::MultiPolygon(_) => ("MultiPolygon", "coordinates"),
            Geom::Collection(_) => ("GeometryCollection", "geometries"),
        };
        let mut members = vec![format!("\"type\":\"{}\"", name_case(rng, name))];
        let mut body = format!("\"{key}\":");
        ws(rng, &mut body);
        match g {
            Geom::Point(p) => json_pt(rng, &mut body, p),
            Geom::Line(l) | Geom::MultiPoint(l) => json_pts(rng, &mut body, l),
            Geom::Polygon(r) | Geom::MultiLine(r) => json_rings(rng, &mut body, r),
            Geom::MultiPolygon(m) => json_list(rng, &mut body, m, |rng, out, r| json_rings(rng, out, r)),
            Geom::Collection(c) => json_list(rng, &mut body, c, |rng, out, g| geojson(rng, g, out)),
        }
        members.push(body);
        if rng.chance(15) {
            members.push(r#""bbox":[-1.5,2,3e1,4]"#.to_string());
        }
        if rng.chance(10) {
            members.push(r#""id":"x\"y","properties":{"a":[true,false,null]}"#.to_string());
        }
        if rng.chance(50) {
            members.reverse();
        }
        out.push('{');
        for (k, m) in members.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            ws(rng, out);
            out.push_str(m);
            ws(rng, out);
        }
        out.push('}');
    }

    fn wkt_list<T>(rng: &mut Rng, out: &mut String, items: &[T], f: impl Fn(&mut Rng, &mut String, &T)) {
        out.push('(');
        for (k, item) in items.iter().enumerate() {
            if k > 0 {
                ws(rng, out);
                out.push(',');
            }
            ws(rng, out);
            f(rng, out, item);
        }
        ws(rng, out);
        out.push(')');
    }

    fn wkt_pt(rng: &mut Rng, out: &mut String, p: &Pt) {
        out.push_str(&p.0.text);
        out.push(*rng.pick(&[' ', ' ', '\t', '\n', '\r']));
        ws(rng, out);
        out.push_str(&p.1.text);
    }

    fn wkt_pts(rng: &mut Rng, out: &mut String, l: &[Pt]) {
        wkt_list(rng, out, l, wkt_pt);
    }

    fn wkt_rings(rng: &mut Rng, out: &mut String, r: &[Vec<Pt>]) {
        wkt_list(rng, out, r, |rng, out, l| wkt_pts(rng, out, l));
    }

    fn wkt(rng: &mut Rng, g: &Geom, out: &mut String) {
        let name = match g {
            Geom::Point(_) => "POINT",
            Geom::Line(_) => "LINESTRING",
            Geom::Polygon(_) => "POLYGON",
            Geom::MultiPoint(_) => "MULTIPOINT",
            Geom::MultiLine(_) => "MULTILINESTRING",
            Geom::MultiPolygon(_) => "MULTIPOLYGON",
            Geom::Collection(_) => "GEOMETRYCOLLECTION",
        };
        out.push_str(&name_case(rng, name));
        ws(rng, out);
        match g {
            Geom::Point(p) => wkt_list(rng, out, std::slice::from_ref(p), wkt_pt),
            Geom::Line(l) => wkt_pts(rng, out, l),
            Geom::Polygon(r) => wkt_rings(rng, out, r),
            Geom::MultiPoint(m) => wkt_list(rng, out, m, |rng, out, p| {
                if rng.chance(50) {
                    wkt_list(rng, out, std::slice::from_ref(p), wkt_pt);
                } else {
                    wkt_pt(rng, out, p);
                }
            }),
            Geom::MultiLine(m) => wkt_list(rng, out, m, |rng, out, l| wkt_pts(rng, out, l)),
            Geom::MultiPolygon(m) => wkt_list(rng, out, m, |rng, out, r| wkt_rings(rng, out, r)),
            Geom::Collection(c) => wkt_list(rng, out, c, |rng, out, g| wkt(rng, g, out)),
        }
    }

    fn random_geojson(rng: &mut Rng, g: &Geom) -> String {
        let mut s = String::new();
        ws(rng, &mut s);
        geojson(rng, g, &mut s);
        ws(rng, &mut s);
        s
    }

    fn random_wkt(rng: &mut Rng, g: &Geom) -> String {
        let mut s = String::new();
        if rng.chance(20) {
            let prefix = *rng.pick(&["SRID=4326;", "srid=4326;", "SRID=4326 ;"]);
            s.push_str(prefix);
        }
        ws(rng, &mut s);
        wkt(rng, g, &mut s);
        ws(rng, &mut s);
        s
    }

    /// Reads EWKB back into the model, writing each number in Rust's shortest exponent form.
    fn decode(b: &[u8], at: &mut usize, outer: bool) -> Geom {
        fn u32_at(b: &[u8], at: &mut usize) -> u32 {
            let v = u32::from_le_bytes(b[*at..*at + 4].try_into().unwrap());
            *at += 4;
            v
        }
        fn num(b: &[u8], at: &mut usize) -> Num {
            let value = f64::from_le_bytes(b[*at..*at + 8].try_into().unwrap());
            *at += 8;
            Num { text: format!("{value:e}"), value }
        }
        fn pt(b: &[u8], at: &mut usize) -> Pt {
            (num(b, at), num(b, at))
        }
        fn pts(b: &[u8], at: &mut usize) -> Vec<Pt> {
            (0..u32_at(b, at)).map(|_| pt(b, at)).collect()
        }
        fn rings(b: &[u8], at: &mut usize) -> Vec<Vec<Pt>> {
            (0..u32_at(b, at)).map(|_| pts(b, at)).collect()
        }
        assert_eq!(b[*at], 1);
        *at += 1;
        let word = u32_at(b, at);
        if outer {
            assert_eq!(word & 0x2000_0000, 0x2000_0000);
            assert_eq!(u32_at(b, at), 4326);
        }
        let members = |b: &[u8], at: &mut usize, ty: u32| -> Vec<Geom> {
            (0..u32_at(b, at))
                .map(|_| {
                    let g = decode(b, at, false);
                    assert!(ty == 7 || geom_type(&g) == ty);
                    g
                })
                .collect()
        };
        match word & !0x2000_0000 {
            1 => Geom::Point(pt(b, at)),
            2 => Geom::Line(pts(b, at)),
            3 => Geom::Polygon(rings(b, at)),
            4 => Geom::MultiPoint(
                members(b, at, 1)
                    .into_iter()
                    .map(|g| match g {
                        Geom::Point(p) => p,
                        _ => unreachable!(),
                    })
                    .collect(),
            ),
            5 => Geom::MultiLine(
                members(b, at, 2)
                    .into_iter()
                    .map(|g| match g {
                        Geom::Line(l) => l,
                        _ => unreachable!(),
                    })
                    .collect(),
            ),
            6 => Geom::MultiPolygon(
                members(b, at, 3)
                    .into_iter()
                    .map(|g| match g {
                        Geom::Polygon(r) => r,
                        _ => unreachable!(),
                    })
                    .collect(),
            ),
            7 => Geom::Collection(members(b, at, 7)),
            other => panic!("type word {other:#x}"),
        }
    }

    fn geom_type(g: &Geom) -> u32 {
        match g {
            Geom::Point(_) => 1,
            Geom::Line(_) => 2,
            Geom::Polygon(_) => 3,
            Geom::MultiPoint(_) => 4,
            Geom::MultiLine(_) => 5,
            Geom::MultiPolygon(_) => 6,
            Geom::Collection(_) => 7,
        }
    }

    /// Random fast-path geometries written as GeoJSON and as WKT, in random styles: both
    /// parsers must give the independently built EWKB, and re-reading the result (decoded,
    /// re-written with other numbers' spelling and another style) must give it again.
    #[test]
    fn random_geometries_agree() {
        let mut rng = Rng(0x6e32_7067_2024_0001);
        for case in 0..2000 {
            let g = random_geom(&mut rng, 0);
            let mut expected = Vec::new();
            reference(&g, true, &mut expected);
            let expected = Converted::Ewkb(expected);
            let json = random_geojson(&mut rng, &g);
            let text = random_wkt(&mut rng, &g);
            assert_eq!(from_geojson(&json), expected, "case {case}: {json}");
            assert_eq!(from_wkt(&text), expected, "case {case}: {text}");

            let Converted::Ewkb(bytes) = &expected else { unreachable!() };
            let mut at = 0;
            let back = decode(bytes, &mut at, true);
            assert_eq!(at, bytes.len());
            let json = random_geojson(&mut rng, &back);
            let text = random_wkt(&mut rng, &back);
            assert_eq!(from_geojson(&json), expected, "case {case} re-read: {json}");
            assert_eq!(from_wkt(&text), expected, "case {case} re-read: {text}");
        }
    }

    /// Garbage, truncated and mutated inputs, and absurd nesting: any answer but no panic.
    #[test]
    fn never_panics() {
        let mut rng = Rng(42);
        let mut inputs: Vec<String> = Vec::new();
        let valid: Vec<&str> = GEOJSON_EWKB.iter().chain(WKT_EWKB).map(|(i, _)| *i).collect();
        for v in &valid {
            // Every truncation.
            for (k, _) in v.char_indices() {
                inputs.push(v[..k].to_string());
            }
            // Random byte replacements, removals and duplications.
            for _ in 0..20 {
                let mut b = v.as_bytes().to_vec();
                let at = rng.below(b.len());
                match rng.below(3) {
                    0 => b[at] = *rng.pick(b"{}[]():,\" \\\t0123456789.-+eEnulZME\x00\xff"),
                    1 => {
                        b.remove(at);
                    }
                    _ => b.insert(at, b[at]),
                }
                inputs.push(String::from_utf8_lossy(&b).into_owned());
            }
        }
        // Random strings over the characters that matter to both grammars.
        let alphabet = "{}[]():;,\"\\ \t\n\r0123456789.-+eEtypcordinasPOINTLSGMYZé\u{0}";
        let alphabet: Vec<char> = alphabet.chars().collect();
        for _ in 0..500 {
            let n = rng.below(60);
            inputs.push((0..n).map(|_| *rng.pick(&alphabet)).collect());
        }
        // Escapes, invalid and unusual ones included.
        for s in [r#"{"type":"Point","coordinates":[1,2],"a":"\x"}"#, r#"{"type":"Poi\nt"}"#, "\"\\", "{\"\\"] {
            inputs.push(s.to_string());
        }
        // Nesting far beyond any limit.
        inputs.push("[".repeat(100_000));
        inputs.push(format!(
            r#"{{"type":"Point","coordinates":[1,2],"bbox":{}1{}}}"#,
            "[".repeat(50_000),
            "]".repeat(50_000)
        ));
        let mut deep = String::new();
        for _ in 0..10_000 {
            deep.push_str(r#"{"type":"GeometryCollection","geometries":["#);
        }
        inputs.push(deep);
        inputs.push("GEOMETRYCOLLECTION(".repeat(100_000));
        inputs.push(format!("POINT(1{} 2)", "0".repeat(100_000)));
        inputs.push(format!(r#"{{"type":"Point","coordinates":[1{},2]}}"#, "0".repeat(100_000)));
        for input in &inputs {
            let _ = from_geojson(input);
            let _ = from_wkt(input);
        }
        assert!(inputs.len() > 300);
    }

    /// Depth limits: the deepest collection nesting the fast path takes, and one level more.
    #[test]
    fn nesting_limits() {
        let gc = |levels: usize| {
            let mut s = String::new();
            for _ in 0..levels {
                s.push_str(r#"{"type":"GeometryCollection","geometries":["#);
            }
            s.push_str(r#"{"type":"Point","coordinates":[1,2]}"#);
            s.push_str(&"]}".repeat(levels));
            s
        };
        assert!(matches!(from_geojson(&gc(9)), Converted::Ewkb(_)));
        assert_eq!(from_geojson(&gc(10)), Converted::Defer);
        let wkt = |levels: usize| format!("{}POINT(1 2){}", "GEOMETRYCOLLECTION(".repeat(levels), ")".repeat(levels));
        assert!(matches!(from_wkt(&wkt(16)), Converted::Ewkb(_)));
        assert_eq!(from_wkt(&wkt(17)), Converted::Defer);
    }

    #[test]
    fn wkt_number_grammar() {
        for ok in ["1", "-1", "1.", ".5", "-.5", "01", "1.5", "1e5", "1E+5", "1.5e-5", ".5e3"] {
            assert!(wkt_number_syntax(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "-", ".", "+1", "1.e5", "1e", "1e+", "1..2", "1-2", "--1", "e5", "1e5.5"] {
            assert!(!wkt_number_syntax(bad.as_bytes()), "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::alloc_count::peak_of;
    use crate::testgen::{edits, geometry, mutate};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Any text: EWKB or a deferral, never a panic; EWKB at most twice the text plus a
        /// header, and memory at most three times the text.
        #[test]
        fn conversion_never_panics_and_stays_within_its_bound(text in geometry(), e in edits(), repeat in 1usize..200) {
            let mut text = mutate(&text, &e);
            if repeat > 150 {
                // Dense point lists: five times their size as EWKB, so deferred to PostGIS.
                text = format!("MULTIPOINT({})", vec!["0 0"; repeat * 10].join(","));
            }
            for convert in [from_wkt, from_geojson] {
                let (c, peak) = peak_of(|| convert(&text));
                prop_assert!(peak <= 3 * text.len() + 256, "{peak} bytes for {} bytes: {text:?}", text.len());
                if let Converted::Ewkb(b) = c {
                    prop_assert!(b.len() <= 2 * text.len() + 64, "{} bytes of EWKB for {text:?}", b.len());
                }
            }
        }
    }
}
