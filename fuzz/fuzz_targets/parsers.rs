//! Everything gn2pg does with what a source sends, on arbitrary bytes: the page census and
//! reader, page preparation (jsonb, EWKB, metadata, arrays, lz4), the JSON parser and the jsonb
//! encoder, the WKT and GeoJSON readers. Each must return (a value or an error) without
//! panicking, and stay within its memory bound, checked with a counting allocator. The modules
//! are gn2pg's own files, included as they are (they make no PostgreSQL calls).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/json.rs"]
mod json;

#[allow(dead_code, unused_imports)]
#[path = "../../src/encode/mod.rs"]
mod encode;

#[allow(dead_code, unused_imports)]
#[path = "../../src/source/page.rs"]
pub mod page;

/// Where the included modules find the page reader (`crate::source::page`).
mod source {
    pub(crate) use super::page;
}

/// Bytes held and the most held since the last reset (the target is single-threaded).
static HELD: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

struct Counting;

fn add(n: isize) {
    let v = HELD.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(v, Ordering::Relaxed);
}

// SAFETY: every call goes to the system allocator unchanged; only counters are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            add(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        add(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            add(new as isize);
            add(-(l.size() as isize));
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning the most memory it held at once.
fn peak_of<R>(f: impl FnOnce() -> R) -> usize {
    let base = HELD.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    drop(r);
    (PEAK.load(Ordering::Relaxed) - base).max(0) as usize
}

/// README, "Limits on what a source may send": preparing a page takes at most 8 times
/// max_page_bytes, plus fixed costs.
const PAGE_BOUND: usize = 8;
const FIXED: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    // A body that is not UTF-8 is refused before any parser sees it.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let fields = source::page::Fields {
        key: "id_synthese".into(),
        uuid: "id_perm_sinp".into(),
        wkt: "wkt_4326".into(),
        updated: "derniere_action".into(),
    };
    // max_page_bytes from the body's size to four times it (never below gn2pg's minimum).
    for m in [text.len(), 4 * text.len()] {
        let limits = source::page::PageLimits::new(m.max(1024));
        let bound = PAGE_BOUND * limits.max_page_bytes + FIXED;
        let peak = peak_of(|| source::page::census(text, &limits));
        assert!(peak <= 4096, "the census allocated {peak} bytes (an error message at most)");
        for fast_geometry in [true, false] {
            let enc = encode::rows::Encoding { compress: true, fast_geometry };
            let peak = peak_of(|| encode::rows::prepare(text, &fields, enc, &limits));
            assert!(peak <= bound, "preparing a page of {} bytes took {peak} bytes (bound {bound})", text.len());
        }
    }
    let peak = peak_of(|| json::parse(text).map(|v| encode::jsonb::encode(&v)));
    assert!(peak <= 80 * text.len() + 4096, "parsing and encoding {} bytes took {peak} bytes", text.len());
    for convert in [encode::geometry::from_wkt, encode::geometry::from_geojson] {
        let peak = peak_of(|| convert(text));
        assert!(peak <= 3 * text.len() + 256, "converting {} bytes took {peak} bytes", text.len());
    }
});
