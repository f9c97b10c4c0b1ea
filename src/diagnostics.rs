//! Self-checks callable from SQL, for the test suite and for operators who want to see, on
//! their own server, that gn2pg builds values exactly as PostgreSQL does.

use std::ffi::CString;
use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;

use crate::encode::jsonb;

/// Encodes `doc` with gn2pg's jsonb encoder and with PostgreSQL's `jsonb_in`, and compares the
/// bytes. NULL when they are identical or when both refuse the text; otherwise a description of
/// the difference.
#[pg_extern(strict, parallel_safe)]
fn _jsonb_selftest(doc: &str) -> Option<String> {
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
        .catch_others(|e| Err(crate::worker::caught_message(&e)))
        .execute(),
    };
    match (ours, theirs) {
        (Ok(a), Ok(b)) if a == b => None,
        (Ok(a), Ok(b)) => {
            let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            Some(format!(
                "bytes differ at offset {at} (gn2pg {} bytes, jsonb_in {} bytes): gn2pg {:02x?}, jsonb_in {:02x?}",
                a.len(),
                b.len(),
                &a[at..(at + 16).min(a.len())],
                &b[at..(at + 16).min(b.len())]
            ))
        }
        (Err(_), Err(_)) => None,
        (Ok(_), Err(e)) => Some(format!("jsonb_in refuses it ({e}) but gn2pg accepts it")),
        (Err(e), Ok(_)) => Some(format!("gn2pg refuses it ({e}) but jsonb_in accepts it")),
    }
}
