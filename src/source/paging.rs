//! The paging plan: which query parameters the next page request carries, and when a run has
//! seen everything. The rules come from docs/source-api.md §4.3/§4.6:
//! - `offset` is a page index, not a row offset;
//! - `total_filtered` is wrong on several GeoNature versions, so the end is a short or empty
//!   page, never a count;
//! - `orderby` is always sent (older servers have no default order, some 500 without it);
//! - FeatureCollection pages drop rows without geometry, so only an empty page ends them.

use super::config::PagingMode;
use super::page::{PageSummary, Shape};

/// The key range a page proved complete: every source row with `lo <= key <= hi` (`hi` None:
/// no upper bound) is in the page. Rows of that range missing locally... and present
/// locally but absent from the page no longer exist in the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRange {
    pub lo: i64,
    pub hi: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Fetch another page.
    More,
    /// The export is exhausted.
    Done,
}

#[derive(Debug, Clone)]
pub struct Pager {
    mode: PagingMode,
    key: String,
    page_size: u32,
    /// Keyset: smallest key of the next page.
    next_key: i64,
    /// Keyset: largest key of this pager's range (parallel streams split the key space).
    upper: Option<i64>,
    /// Offset: index of the next page.
    page_index: u64,
    pages: u64,
    last_offset_page: Option<(usize, Option<i64>, Option<i64>)>,
}

impl Pager {
    pub fn new(mode: PagingMode, key: &str, page_size: u32, start_key: i64, start_page: u64) -> Pager {
        Pager {
            mode,
            key: key.to_string(),
            page_size: page_size.clamp(1, 1000),
            next_key: start_key,
            upper: None,
            page_index: start_page,
            pages: 0,
            last_offset_page: None,
        }
    }

    /// Restricts a keyset pager to keys `<= upper` (`filter_n_lo_<key>`).
    pub fn with_upper(mut self, upper: Option<i64>) -> Pager {
        self.upper = upper;
        self
    }

    pub fn next_key(&self) -> i64 {
        self.next_key
    }

    pub fn upper(&self) -> Option<i64> {
        self.upper
    }

    pub fn page_index(&self) -> u64 {
        self.page_index
    }

    /// Query parameters of the next request (filters and credentials are added by the caller).
    pub fn params(&self) -> Vec<(String, String)> {
        let mut p = vec![("limit".to_string(), self.page_size.to_string()), ("orderby".to_string(), self.key.clone())];
        match self.mode {
            PagingMode::Keyset => {
                p.push(("offset".into(), "0".into()));
                p.push((format!("filter_n_up_{}", self.key), self.next_key.to_string()));
                if let Some(u) = self.upper {
                    p.push((format!("filter_n_lo_{}", self.key), u.to_string()));
                }
            }
            PagingMode::Offset => p.push(("offset".into(), self.page_index.to_string())),
        }
        p
    }

    /// The key range the page about to be loaded covers completely (keyset mode only): used to
    /// remove local rows that vanished from the export without a second pass.
    pub fn covered_range(&self, page: &PageSummary, step: &Step) -> Option<KeyRange> {
        if self.mode != PagingMode::Keyset {
            return None;
        }
        match step {
            Step::Done => Some(KeyRange { lo: self.next_key, hi: self.upper }),
            Step::More => page.max_key.map(|hi| KeyRange { lo: self.next_key, hi: Some(hi) }),
        }
    }

    /// Decides what comes after `page` without moving the cursor; [`Pager::advance`] moves it.
    pub fn step_for(&self, page: &PageSummary) -> Result<Step, String> {
        if page.len == 0 {
            return Ok(Step::Done);
        }
        let asked = u64::from(self.page_size);
        let limit = page.limit.filter(|l| *l > 0).map_or(asked, |l| l.min(asked));
        if page.len as u64 > limit && page.len as u64 > asked {
            // The server ignored LIMIT (Utils-Flask-SQLAlchemy 0.3.4): the whole set came at once.
            return Ok(Step::Done);
        }
        let short = (page.len as u64) < limit;
        match self.mode {
            PagingMode::Keyset => {
                let max = page.max_key.ok_or_else(|| {
                    format!(
                        "no item of the page has an integer {:?}: set options.key_column to the export's \
                         unique integer column, or options.paging to 'offset'",
                        self.key
                    )
                })?;
                if max < self.next_key {
                    return Err(format!(
                        "the source ignored filter_n_up_{key}={next} (page keys go down to {min:?}): \
                         the export may not expose {key:?}; use options.paging = 'offset'",
                        key = self.key,
                        next = self.next_key,
                        min = page.min_key
                    ));
                }
                if short && page.shape == Shape::Array {
                    Ok(Step::Done)
                } else {
                    Ok(Step::More)
                }
            }
            PagingMode::Offset => {
                let fingerprint = (page.len, page.min_key, page.max_key);
                if page.min_key.is_some() && self.last_offset_page == Some(fingerprint) {
                    return Err(format!(
                        "the source returned the same page twice (offset {}): it ignores offset",
                        self.page_index
                    ));
                }
                if short && page.shape == Shape::Array {
                    Ok(Step::Done)
                } else {
                    Ok(Step::More)
                }
            }
        }
    }

    /// Moves the cursor past `page`.
    pub fn advance(&mut self, page: &PageSummary) {
        self.pages += 1;
        match self.mode {
            PagingMode::Keyset => {
                if let Some(max) = page.max_key {
                    self.next_key = max.saturating_add(1);
                }
            }
            PagingMode::Offset => {
                self.last_offset_page = Some((page.len, page.min_key, page.max_key));
                self.page_index += 1;
            }
        }
    }
}

/// Splits the keys `lo..=max` into at most `n` contiguous ranges for parallel streams; the last
/// range has no upper bound so that rows inserted during the run are still collected.
pub fn split_key_space(lo: i64, max: i64, n: u32) -> Vec<(i64, Option<i64>)> {
    let n = i64::from(n.max(1));
    let span = (max - lo + 1).max(1);
    let step = ((span + n - 1) / n).max(1);
    let mut out = Vec::new();
    let mut start = lo;
    while out.len() < n as usize {
        let end = start.saturating_add(step - 1);
        if out.len() == n as usize - 1 || end >= max {
            out.push((start, None));
            break;
        }
        out.push((start, Some(end)));
        start = end + 1;
    }
    out
}

/// The keys a complete pass received, as sorted disjoint ranges: pages come ordered by key, so
/// a pass over a dense key space holds a few ranges rather than every key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SeenKeys {
    ranges: Vec<(i64, i64)>,
    sorted: bool,
}

impl SeenKeys {
    pub fn new() -> SeenKeys {
        SeenKeys { ranges: Vec::new(), sorted: true }
    }

    pub fn add(&mut self, k: i64) {
        if let Some(last) = self.ranges.last_mut() {
            if last.1.checked_add(1) == Some(k) {
                last.1 = k;
                return;
            }
            if (last.0..=last.1).contains(&k) {
                return;
            }
            if k < last.0 {
                self.sorted = false;
            }
        }
        self.ranges.push((k, k));
    }

    /// Sorted, merged ranges: call once the pass is over, before [`Self::contains`].
    pub fn finish(mut self) -> SeenKeys {
        if !self.sorted {
            self.ranges.sort_unstable();
        }
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(self.ranges.len());
        for (lo, hi) in self.ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        SeenKeys { ranges: merged, sorted: true }
    }

    pub fn contains(&self, k: i64) -> bool {
        debug_assert!(self.sorted);
        let i = self.ranges.partition_point(|r| r.1 < k);
        self.ranges.get(i).is_some_and(|r| r.0 <= k)
    }

    #[cfg(test)]
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(len: usize, min: i64, max: i64, shape: Shape) -> PageSummary {
        PageSummary {
            shape,
            len,
            limit: Some(1000),
            total: None,
            total_filtered: None,
            max_key: if len > 0 { Some(max) } else { None },
            min_key: if len > 0 { Some(min) } else { None },
            missing_keys: 0,
        }
    }

    fn param<'a>(p: &'a [(String, String)], k: &str) -> &'a str {
        &p.iter().find(|(a, _)| a == k).unwrap().1
    }

    #[test]
    fn keyset_walks_and_stops_on_short_page() {
        let mut pg = Pager::new(PagingMode::Keyset, "id_synthese", 1000, 0, 0);
        let p = pg.params();
        assert_eq!(param(&p, "offset"), "0");
        assert_eq!(param(&p, "orderby"), "id_synthese");
        assert_eq!(param(&p, "filter_n_up_id_synthese"), "0");
        let full = page(1000, 1, 1500, Shape::Array);
        assert_eq!(pg.step_for(&full).unwrap(), Step::More);
        assert_eq!(pg.covered_range(&full, &Step::More), Some(KeyRange { lo: 0, hi: Some(1500) }));
        pg.advance(&full);
        assert_eq!(param(&pg.params(), "filter_n_up_id_synthese"), "1501");
        let short = page(10, 1501, 1600, Shape::Array);
        assert_eq!(pg.step_for(&short).unwrap(), Step::Done);
        assert_eq!(pg.covered_range(&short, &Step::Done), Some(KeyRange { lo: 1501, hi: None }));
    }

    #[test]
    fn seen_keys_merge_into_ranges() {
        let mut s = SeenKeys::new();
        for k in (1..=1000).chain(1002..=2000).chain([5000, 10, 4999]) {
            s.add(k);
        }
        let s = s.finish();
        assert_eq!(s.ranges(), 3, "1-1000, 1002-2000, 4999-5000");
        for (k, seen) in [
            (0, false),
            (1, true),
            (1000, true),
            (1001, false),
            (1500, true),
            (2001, false),
            (4999, true),
            (5000, true),
            (5001, false),
        ] {
            assert_eq!(s.contains(k), seen, "{k}");
        }
        assert!(!SeenKeys::new().finish().contains(1));
        let mut big = SeenKeys::new();
        big.add(i64::MAX);
        big.add(i64::MIN);
        let big = big.finish();
        assert!(big.contains(i64::MAX) && big.contains(i64::MIN) && !big.contains(0));
    }

    #[test]
    fn total_filtered_is_ignored() {
        // GeoNature 2.13.0 reports the page size as total_filtered: it must not end the run.
        let pg = Pager::new(PagingMode::Keyset, "id_synthese", 1000, 0, 0);
        let mut p = page(1000, 1, 1000, Shape::Array);
        p.total_filtered = Some(1000);
        assert_eq!(pg.step_for(&p).unwrap(), Step::More);
        p.total_filtered = Some(0);
        assert_eq!(pg.step_for(&p).unwrap(), Step::More);
    }

    #[test]
    fn feature_collection_stops_only_when_empty() {
        let pg = Pager::new(PagingMode::Keyset, "id_synthese", 1000, 0, 0);
        assert_eq!(pg.step_for(&page(990, 1, 1000, Shape::FeatureCollection)).unwrap(), Step::More);
        assert_eq!(pg.step_for(&page(0, 0, 0, Shape::FeatureCollection)).unwrap(), Step::Done);
    }

    #[test]
    fn server_cap_is_respected() {
        // We asked 1000, the server caps at 500: a 500-row page is full, not short.
        let pg = Pager::new(PagingMode::Keyset, "id_synthese", 1000, 0, 0);
        let mut p = page(500, 1, 500, Shape::Array);
        p.limit = Some(500);
        assert_eq!(pg.step_for(&p).unwrap(), Step::More);
    }

    #[test]
    fn no_limit_server_ends_at_once() {
        let pg = Pager::new(PagingMode::Offset, "id_synthese", 100, 0, 0);
        let mut p = page(2500, 1, 2500, Shape::Array);
        p.limit = Some(100);
        assert_eq!(pg.step_for(&p).unwrap(), Step::Done);
    }

    #[test]
    fn keyset_detects_ignored_filter() {
        let mut pg = Pager::new(PagingMode::Keyset, "id_synthese", 10, 0, 0);
        pg.advance(&page(10, 1, 10, Shape::Array));
        let err = pg.step_for(&page(10, 1, 10, Shape::Array)).unwrap_err();
        assert!(err.contains("ignored"), "{err}");
        let mut nokey = page(10, 1, 10, Shape::Array);
        nokey.max_key = None;
        assert!(pg.step_for(&nokey).unwrap_err().contains("key_column"));
    }

    #[test]
    fn bounded_keyset_range() {
        let pg = Pager::new(PagingMode::Keyset, "id_synthese", 100, 5000, 0).with_upper(Some(9999));
        let p = pg.params();
        assert_eq!(param(&p, "filter_n_up_id_synthese"), "5000");
        assert_eq!(param(&p, "filter_n_lo_id_synthese"), "9999");
        let last = page(10, 9000, 9999, Shape::Array);
        assert_eq!(pg.covered_range(&last, &Step::Done), Some(KeyRange { lo: 5000, hi: Some(9999) }));
    }

    /// Splits [lo, hi] into n contiguous ranges; the last one is open-ended.
    #[test]
    fn split_ranges() {
        assert_eq!(split_key_space(1, 100, 4), vec![(1, Some(25)), (26, Some(50)), (51, Some(75)), (76, None)]);
        assert_eq!(split_key_space(1, 2, 4), vec![(1, Some(1)), (2, None)]);
        assert_eq!(split_key_space(0, 10, 1), vec![(0, None)]);
    }

    #[test]
    fn offset_is_a_page_index() {
        let mut pg = Pager::new(PagingMode::Offset, "id_synthese", 1000, 0, 0);
        assert_eq!(param(&pg.params(), "offset"), "0");
        let p1 = page(1000, 1, 1000, Shape::Array);
        pg.advance(&p1);
        assert_eq!(param(&pg.params(), "offset"), "1");
        assert!(pg.params().iter().all(|(k, _)| !k.starts_with("filter_n_up")));
        assert_eq!(pg.covered_range(&p1, &Step::More), None);
        let err = pg.step_for(&p1).unwrap_err();
        assert!(err.contains("same page twice"), "{err}");
    }
}
