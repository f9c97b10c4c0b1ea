//! One-dimensional PostgreSQL arrays built as bytes (`src/include/utils/array.h`), so a page's
//! columns can be assembled off the backend thread and handed to SPI as ready datums.
//!
//! Layout: varlena header, `ndim`, `dataoffset` (0 without NULLs), element type oid, `dims[0]`,
//! `lbound[0]` = 1, the NULL bitmap if any element is NULL, padding to MAXALIGN, then the
//! elements, each aligned as its type requires relative to the start of the data area (which is
//! MAXALIGNed, as is the datum itself once copied into palloc'd memory). An empty array is the
//! zero-dimensional form PostgreSQL itself produces. No PostgreSQL calls here.

use super::varlena::{header as varlena_header, MAX_VARLENA};

/// Element types the loader sends, with their `typlen` / `typalign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// `int8`, `timestamp`: 8 bytes, 'd' alignment.
    Int8,
    /// `uuid`: 16 bytes, 'c' alignment.
    Uuid,
    /// `text`, `bytea`, `jsonb`: varlena, 'i' alignment.
    Varlena,
}

const MAXALIGN: usize = 8;

/// `uuid`'s type oid (built in, pg_type.dat).
const UUID_OID: u32 = 2950;

fn align(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

/// A finished array datum in 8-byte aligned memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    pub fn as_ptr(&self) -> *const u8 {
        self.words.as_ptr() as *const u8
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

#[derive(Debug, Clone)]
pub struct ArrayBuilder {
    elem: Elem,
    elem_oid: u32,
    data: Vec<u8>,
    not_null: Vec<bool>,
}

impl ArrayBuilder {
    pub fn new(elem: Elem, elem_oid: u32) -> ArrayBuilder {
        ArrayBuilder { elem, elem_oid, data: Vec::new(), not_null: Vec::new() }
    }

    pub fn with_capacity(elem: Elem, elem_oid: u32, items: usize, bytes: usize) -> ArrayBuilder {
        ArrayBuilder { elem, elem_oid, data: Vec::with_capacity(bytes), not_null: Vec::with_capacity(items) }
    }

    /// As [`Self::with_capacity`] for sizes that come from the network: refused, not aborted,
    /// when the memory cannot be had or the array could not be a datum.
    pub fn try_with_capacity(elem: Elem, elem_oid: u32, items: usize, bytes: usize) -> Result<ArrayBuilder, String> {
        if bytes > MAX_VARLENA {
            return Err(too_long(bytes));
        }
        let mut a = ArrayBuilder::new(elem, elem_oid);
        a.data.try_reserve_exact(bytes).map_err(|_| format!("out of memory for an array of {bytes} bytes"))?;
        a.not_null.try_reserve_exact(items).map_err(|_| format!("out of memory for an array of {items} elements"))?;
        Ok(a)
    }

    /// An `int8` or `timestamp` array (`elem_oid`) of `values`.
    pub fn of_i64(elem_oid: u32, values: impl Iterator<Item = Option<i64>>) -> ArrayBuilder {
        let mut a = ArrayBuilder::new(Elem::Int8, elem_oid);
        values.for_each(|v| a.push_opt_i64(v));
        a
    }

    pub fn of_uuid<'u>(values: impl Iterator<Item = Option<&'u [u8; 16]>>) -> ArrayBuilder {
        let mut a = ArrayBuilder::new(Elem::Uuid, UUID_OID);
        values.for_each(|v| a.push_opt_uuid(v));
        a
    }

    /// A `text` or `bytea` array (`elem_oid`) of payloads.
    pub fn of_bytes<'b>(elem_oid: u32, values: impl Iterator<Item = Option<&'b [u8]>>) -> ArrayBuilder {
        let mut a = ArrayBuilder::new(Elem::Varlena, elem_oid);
        values.for_each(|v| a.push_opt_bytes(v));
        a
    }

    /// An array (`elem_oid`, e.g. jsonb) of complete varlenas, with `bytes` reserved.
    pub fn of_varlenas<'b>(
        elem_oid: u32,
        bytes: usize,
        values: impl Iterator<Item = Option<&'b [u8]>>,
    ) -> ArrayBuilder {
        let mut a = ArrayBuilder::with_capacity(Elem::Varlena, elem_oid, 0, bytes);
        values.for_each(|v| a.push_opt_varlena(v));
        a
    }

    pub fn push_null(&mut self) {
        self.not_null.push(false);
    }

    fn start(&mut self, a: usize) {
        let at = align(self.data.len(), a);
        self.data.resize(at, 0);
        self.not_null.push(true);
    }

    pub fn push_i64(&mut self, v: i64) {
        debug_assert_eq!(self.elem, Elem::Int8);
        self.start(8);
        self.data.extend_from_slice(&v.to_ne_bytes());
    }

    pub fn push_opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.push_i64(v),
            None => self.push_null(),
        }
    }

    pub fn push_uuid(&mut self, v: &[u8; 16]) {
        debug_assert_eq!(self.elem, Elem::Uuid);
        self.start(1);
        self.data.extend_from_slice(v);
    }

    pub fn push_opt_uuid(&mut self, v: Option<&[u8; 16]>) {
        match v {
            Some(v) => self.push_uuid(v),
            None => self.push_null(),
        }
    }

    /// A varlena element whose bytes (payload only) are `payload`: text, bytea.
    pub fn push_bytes(&mut self, payload: &[u8]) {
        debug_assert_eq!(self.elem, Elem::Varlena);
        self.start(4);
        self.data.extend_from_slice(&varlena_header((payload.len() + 4) as u32));
        self.data.extend_from_slice(payload);
    }

    pub fn push_opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => self.push_bytes(v),
            None => self.push_null(),
        }
    }

    /// A complete varlena (header included), e.g. a jsonb datum from [`super::jsonb::encode`].
    pub fn push_varlena(&mut self, datum: &[u8]) {
        debug_assert_eq!(self.elem, Elem::Varlena);
        self.start(4);
        self.data.extend_from_slice(datum);
    }

    pub fn push_opt_varlena(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => self.push_varlena(v),
            None => self.push_null(),
        }
    }

    fn bitmap_len(&self) -> usize {
        if self.not_null.iter().all(|b| *b) {
            0
        } else {
            self.not_null.len().div_ceil(8)
        }
    }

    /// Size of the array datum.
    pub fn size(&self) -> usize {
        if self.not_null.is_empty() {
            16
        } else {
            align(16 + 8 + self.bitmap_len(), MAXALIGN) + self.data.len()
        }
    }

    /// Writes the array datum, varlena header included, into `out` of exactly [`Self::size`] bytes.
    pub fn write_to(&self, out: &mut [u8]) {
        assert_eq!(out.len(), self.size(), "array buffer of the wrong size");
        assert!(out.len() <= MAX_VARLENA, "{}", too_long(out.len()));
        let n = self.not_null.len();
        fn words(out: &mut [u8], at: usize, vs: &[u32]) {
            for (k, v) in vs.iter().enumerate() {
                out[at + 4 * k..at + 4 * k + 4].copy_from_slice(&v.to_ne_bytes());
            }
        }
        let total = out.len() as u32;
        out[..4].copy_from_slice(&varlena_header(total));
        if n == 0 {
            // ndim 0, dataoffset 0: PostgreSQL's own empty array.
            words(out, 4, &[0, 0, self.elem_oid]);
            return;
        }
        let bitmap = self.bitmap_len();
        let overhead = align(16 + 8 + bitmap, MAXALIGN);
        let dataoffset = if bitmap > 0 { overhead as u32 } else { 0 };
        words(out, 4, &[1, dataoffset, self.elem_oid, n as u32, 1]);
        let bits = &mut out[24..overhead];
        bits.fill(0);
        if bitmap > 0 {
            for (i, nn) in self.not_null.iter().enumerate() {
                if *nn {
                    bits[i / 8] |= 1 << (i % 8);
                }
            }
        }
        out[overhead..].copy_from_slice(&self.data);
    }

    /// The array datum in MAXALIGNed memory, as PostgreSQL expects a datum to be, so the backend
    /// can hand it to SPI without copying it. Refused past PostgreSQL's 1 GB limit, or when the
    /// memory cannot be had.
    pub fn finish_aligned(&self) -> Result<Aligned, String> {
        let len = self.size();
        if len > MAX_VARLENA {
            return Err(too_long(len));
        }
        let mut words = Vec::new();
        words.try_reserve_exact(len.div_ceil(8)).map_err(|_| format!("out of memory for an array of {len} bytes"))?;
        words.resize(len.div_ceil(8), 0u64);
        // SAFETY: the u64 buffer holds at least `len` initialised bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, len) };
        self.write_to(bytes);
        Ok(Aligned { words, len })
    }

    /// The array datum's bytes, varlena header included.
    #[cfg(test)]
    pub fn finish(&self) -> Vec<u8> {
        let mut out = vec![0; self.size()];
        self.write_to(&mut out);
        out
    }
}

fn too_long(len: usize) -> String {
    format!("an array of {len} bytes exceeds PostgreSQL's limit of {MAX_VARLENA} bytes for one value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(b: &[u8], at: usize) -> i32 {
        i32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn int8_array_without_nulls() {
        let mut a = ArrayBuilder::new(Elem::Int8, 20);
        a.push_i64(7);
        a.push_i64(-1);
        let b = a.finish();
        assert_eq!(b.len(), 24 + 16);
        assert_eq!(word(&b, 0), (40 << 2), "varlena size 40");
        assert_eq!((word(&b, 4), word(&b, 8), word(&b, 12), word(&b, 16), word(&b, 20)), (1, 0, 20, 2, 1));
        assert_eq!(i64::from_ne_bytes(b[24..32].try_into().unwrap()), 7);
    }

    #[test]
    fn nulls_take_a_bitmap_and_no_data() {
        let mut a = ArrayBuilder::new(Elem::Varlena, 17);
        a.push_bytes(b"ab");
        a.push_null();
        a.push_bytes(b"c");
        let b = a.finish();
        // overhead: MAXALIGN(16 + 8 + 1) = 32; elements at 32 (6 bytes) and 40 (5 bytes).
        assert_eq!(word(&b, 8), 32, "dataoffset");
        assert_eq!(b[24], 0b101, "bitmap: elements 0 and 2 present");
        assert_eq!(&b[36..38], b"ab");
        assert_eq!(&b[44..45], b"c", "second element aligned to 4 within the data area");
        assert_eq!(b.len(), 45);
    }

    #[test]
    fn aligned_arrays_hold_the_same_bytes() {
        let mut a = ArrayBuilder::new(Elem::Varlena, 25);
        a.push_bytes(b"abc");
        let al = a.finish_aligned().unwrap();
        assert_eq!(al.as_ptr() as usize % 8, 0);
        // SAFETY: `al` holds `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(al.as_ptr(), al.len()) };
        assert_eq!(bytes, &a.finish()[..]);
    }

    #[test]
    fn empty_arrays_have_no_dimension() {
        let b = ArrayBuilder::new(Elem::Uuid, 2950).finish();
        assert_eq!(b.len(), 16);
        assert_eq!((word(&b, 4), word(&b, 8), word(&b, 12)), (0, 0, 2950));
    }
}
