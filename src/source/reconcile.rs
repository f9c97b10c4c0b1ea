//! Reconciliation by range counts: finding the rows deleted at a source that has no deletion
//! log (token and public exports), without downloading the export again.
//!
//! After an incremental run every insert and update of the source is stored locally, so the
//! local rows of a source are a superset of the export's and, for any key range,
//! `local_count - source_count` is the number of rows deleted from it. A count costs one request
//! (`limit=1&offset=0&orderby=<key>&filter_n_up_<key>=lo&filter_n_lo_<key>=hi`, both bounds
//! included, reading `total_filtered`). The planner bisects the ranges whose counts differ,
//! splitting at the median local key so that both halves hold half the local rows; the right
//! half's source count is the parent's minus the left's, so each differing range costs one
//! request. Ranges small enough for one page are paged through and swept like the pages of a
//! keyset full run. No deletion: one request; `d` deletions: at most about
//! `d · (log2(N / limit) + 1)` requests instead of `N / limit` pages, and a cluster of deletions
//! a few requests per level. Deletions spread all over the export would cost more to bisect
//! than a sweep: as soon as the counts spent plus one per level below each range still open
//! exceed a sweep's pages, those ranges are paged instead.
//!
//! Counts only choose where to look. Rows are removed only on proof: a page of a range (the
//! loader deletes the local keys of the range the page does not hold) or a count answer with no
//! item (the range is empty at the source). A source changing between two requests can only
//! make the planner look in the wrong place, never delete a row that exists.
//!
//! `total_filtered` is a count of the range only on some GeoNature versions (docs/source-api.md
//! §4.3): it is capped at the page size on 2.13.0 and 2.16.0-2.16.2, and the whole-export count
//! tells which. There every range is paged in pieces of at most one page ([`one_page_ranges`]);
//! the whole-view `total` can still show in one request that nothing was deleted.
//!
//! Nothing here calls PostgreSQL: the engine (`reconcile_run.rs`) answers the tasks.

use std::collections::VecDeque;

/// Keys `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub lo: i64,
    pub hi: i64,
}

impl Range {
    /// The key space reconciliation covers: keyset runs start at key 0.
    pub const ALL: Range = Range { lo: 0, hi: i64::MAX };

    /// As `filter_n_lo_<key>`: None when the range is open-ended.
    pub fn upper(&self) -> Option<i64> {
        (self.hi != i64::MAX).then_some(self.hi)
    }
}

/// What a count request answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountAnswer {
    pub total_filtered: Option<u64>,
    /// Items in the answer (0 or 1 with `limit=1`).
    pub items: usize,
    /// `count(*)` of the whole view, unfiltered.
    pub total: Option<u64>,
}

/// What `total_filtered` is worth on this source, judged from the whole-export count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counting {
    /// A count of the range at offset 0 (GeoNature <= 2.12, 2.13.1-2.15, >= 2.16.3).
    Exact,
    /// Capped at the page size (GeoNature 2.13.0, 2.16.0-2.16.2): one request can only count a
    /// range of at most one page.
    Capped,
    /// No count at all (why).
    Unusable(String),
}

/// Judges the answer to the whole-export count request (`limit=1`).
pub fn counting(root: &CountAnswer) -> Counting {
    match root.total_filtered {
        None => Counting::Unusable("the source does not report total_filtered".into()),
        Some(_) if root.items > 1 => {
            Counting::Unusable("the source ignores limit (Utils-Flask-SQLAlchemy 0.3.4)".into())
        }
        // A count capped at limit=1 reads 1 for any non-empty range; an export of one row in a
        // larger view reads the same, and paging it costs one request anyway.
        Some(1) if root.items == 1 && root.total.is_some_and(|t| t > 1) => Counting::Capped,
        Some(_) => Counting::Exact,
    }
}

/// Ranges of at most one page of local rows covering `range`, from every `limit`-th local key
/// of it in order (`keys[0]` its smallest local key): where counts are capped, each is paged in
/// one request (the source holds no more rows there than gn2pg does).
pub fn one_page_ranges(range: Range, keys_every_limit: &[i64]) -> Vec<Range> {
    let mut out = Vec::with_capacity(keys_every_limit.len() + 1);
    let mut lo = range.lo;
    for k in keys_every_limit.iter().copied().skip(1) {
        if k > lo && k <= range.hi {
            out.push(Range { lo, hi: k - 1 });
            lo = k;
        }
    }
    out.push(Range { lo, hi: range.hi });
    out
}

/// Ranges to page, sorted, with neighbours joined: a page costs the same wherever it starts,
/// and every range costs at least one.
pub fn join_adjacent(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_unstable_by_key(|r| r.lo);
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.hi != i64::MAX && last.hi + 1 >= r.lo => last.hi = last.hi.max(r.hi),
            _ => out.push(r),
        }
    }
    out
}

/// What the engine must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Ask the source for the count of `range` and report it with [`Planner::counted`].
    Count { node: usize, range: Range },
    /// Find the local key of rank `rank` (0-based) in `range` and report it with
    /// [`Planner::split_at`].
    Split { node: usize, range: Range, rank: u64 },
    /// Page through `range`, deleting the local rows its pages do not hold.
    Page(Range),
    /// The source holds nothing in `range` (proven by an answer without items): delete every
    /// local row of it.
    Clear(Range),
}

#[derive(Debug, Clone)]
struct Node {
    range: Range,
    local: u64,
    /// Rows at the source, counted or inferred (None: unknown).
    source: Option<u64>,
    /// An answer for exactly this range held no item.
    proven_empty: bool,
    /// The right half waiting for its sibling's count (index of the left half).
    waits_for: Option<usize>,
    children: Option<(usize, usize)>,
}

/// The bisection, driven by the engine: [`Planner::tasks`] hands out what is ready, the
/// engine reports answers, until no task is left.
#[derive(Debug)]
pub struct Planner {
    limit: u64,
    /// Count requests worth spending: a sweep's pages. Past it, what is left is paged.
    budget: u64,
    counts: u64,
    nodes: Vec<Node>,
    ready: VecDeque<usize>,
    out: Vec<Task>,
    /// Something did not add up (more rows at the source than locally): said in the run log.
    pub anomaly: Option<String>,
}

impl Planner {
    /// Starts from the whole export: `local` rows stored, `source` counted.
    pub fn new(limit: u32, range: Range, local: u64, source: u64, source_empty: bool) -> Planner {
        let limit = u64::from(limit.max(1));
        let mut p = Planner {
            limit,
            budget: local / limit + 1,
            counts: 0,
            nodes: Vec::new(),
            ready: VecDeque::new(),
            out: Vec::new(),
            anomaly: None,
        };
        let root = p.push(range, local, Some(source));
        p.nodes[root].proven_empty = source_empty;
        p.ready.push_back(root);
        p
    }

    fn push(&mut self, range: Range, local: u64, source: Option<u64>) -> usize {
        self.nodes.push(Node { range, local, source, proven_empty: false, waits_for: None, children: None });
        self.nodes.len() - 1
    }

    /// Every task that can be done now; an empty list means reconciliation is over once the
    /// engine has done the `Page` tasks. `Count` tasks of one call may run concurrently.
    pub fn tasks(&mut self) -> Vec<Task> {
        // Each range still to bisect needs at least one count per level below it: when that
        // already exceeds a sweep's pages, deletions are all over and paging is cheaper.
        let frontier: Vec<usize> = self.ready.drain(..).collect();
        let at_least: u64 = frontier.iter().map(|i| self.levels_below(*i)).sum();
        let page_all = self.counts + at_least > self.budget;
        for i in frontier {
            self.decide(i, page_all);
        }
        std::mem::take(&mut self.out)
    }

    /// Levels of bisection below node `i` if it is to be bisected, else 0.
    fn levels_below(&self, i: usize) -> u64 {
        let n = &self.nodes[i];
        let differs = n.source.is_none_or(|s| s != 0 && s < n.local);
        if !differs || n.local <= self.limit {
            return 0;
        }
        u64::from(64 - ((n.local - 1) / self.limit).leading_zeros())
    }

    fn decide(&mut self, i: usize, page_all: bool) {
        let n = self.nodes[i].clone();
        let Some(source) = n.source else {
            self.counts += 1;
            self.out.push(Task::Count { node: i, range: n.range });
            return;
        };
        if source == n.local {
            return;
        }
        if source > n.local {
            // Rows gn2pg does not hold: a FeatureCollection drops rows without geometry from
            // its pages but counts them, or a row arrived after the incremental pages. Only a
            // page of the range tells what is there.
            self.anomaly.get_or_insert_with(|| {
                format!(
                    "keys {}..{}: {source} rows at the source, {} stored",
                    n.range.lo,
                    n.range.upper().map_or("".into(), |h| h.to_string()),
                    n.local
                )
            });
            self.out.push(Task::Page(n.range));
            return;
        }
        if source == 0 && n.proven_empty {
            self.out.push(Task::Clear(n.range));
            return;
        }
        // Bisecting finds scattered deletions in about one request per level each, and a
        // cluster at its two edges; deletions spread all over would cost more than a sweep.
        if source == 0 || n.local <= self.limit || page_all {
            self.out.push(Task::Page(n.range));
            return;
        }
        self.out.push(Task::Split { node: i, range: n.range, rank: n.local / 2 });
    }

    /// The local key of the requested rank (None: the local rows changed under the planner,
    /// which only happens if something else writes the source's rows).
    pub fn split_at(&mut self, node: usize, key: Option<i64>) {
        let n = self.nodes[node].clone();
        let rank = n.local / 2;
        let Some(key) = key.filter(|k| *k > n.range.lo && *k <= n.range.hi) else {
            self.out.push(Task::Page(n.range));
            return;
        };
        let left = self.push(Range { lo: n.range.lo, hi: key - 1 }, rank, None);
        let right = self.push(Range { lo: key, hi: n.range.hi }, n.local - rank, None);
        self.nodes[right].waits_for = Some(left);
        self.nodes[node].children = Some((left, right));
        self.counts += 1;
        self.out.push(Task::Count { node: left, range: self.nodes[left].range });
    }

    /// The answer to a `Count` task.
    pub fn counted(&mut self, node: usize, answer: &CountAnswer) {
        let Some(count) = answer.total_filtered else {
            // No count for this range: only its pages can tell.
            self.nodes[node].source = None;
            self.out.push(Task::Page(self.nodes[node].range));
            self.release_sibling(node, None);
            return;
        };
        self.nodes[node].source = Some(count);
        self.nodes[node].proven_empty = answer.items == 0;
        self.ready.push_back(node);
        self.release_sibling(node, Some(count));
    }

    /// The right half's count is the parent's minus the left half's, unless that does not add
    /// up (the source changed between the two answers): then it is counted too.
    fn release_sibling(&mut self, left: usize, left_count: Option<u64>) {
        let Some(parent) = self.nodes.iter().position(|n| n.children.is_some_and(|(l, _)| l == left)) else {
            return;
        };
        let (_, right) = self.nodes[parent].children.unwrap_or((left, left));
        if self.nodes[right].waits_for != Some(left) {
            return;
        }
        self.nodes[right].waits_for = None;
        let inferred = match (self.nodes[parent].source, left_count) {
            (Some(p), Some(l)) if l <= p => Some(p - l),
            _ => None,
        };
        self.nodes[right].source = inferred;
        self.ready.push_back(right);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_first_count_tells_how_to_count() {
        let a = |tf, items, total| CountAnswer { total_filtered: tf, items, total };
        assert_eq!(counting(&a(Some(100_000), 1, Some(100_000))), Counting::Exact);
        assert_eq!(counting(&a(Some(0), 0, Some(0))), Counting::Exact);
        assert_eq!(counting(&a(Some(1), 1, Some(1))), Counting::Exact);
        assert_eq!(counting(&a(Some(1), 1, Some(100_000))), Counting::Capped);
        assert!(matches!(counting(&a(None, 1, Some(10))), Counting::Unusable(_)));
        assert!(matches!(counting(&a(Some(10), 10, Some(10))), Counting::Unusable(_)));
    }

    #[test]
    fn one_page_ranges_cover_the_key_space() {
        assert_eq!(one_page_ranges(Range::ALL, &[]), vec![Range::ALL]);
        assert_eq!(one_page_ranges(Range::ALL, &[5]), vec![Range::ALL]);
        assert_eq!(
            one_page_ranges(Range::ALL, &[5, 1005, 2011]),
            vec![Range { lo: 0, hi: 1004 }, Range { lo: 1005, hi: 2010 }, Range { lo: 2011, hi: i64::MAX }]
        );
        let (a, b, c) = (Range { lo: 0, hi: 9 }, Range { lo: 10, hi: 19 }, Range { lo: 30, hi: i64::MAX });
        assert_eq!(join_adjacent(vec![c, b, a]), vec![Range { lo: 0, hi: 19 }, c]);
        let r = Range { lo: 100, hi: 500 };
        assert_eq!(one_page_ranges(r, &[120, 300]), vec![Range { lo: 100, hi: 299 }, Range { lo: 300, hi: 500 }]);
    }

    /// A source and its local copy, answering the planner's tasks as the engine does; counts
    /// requests as the source would see them.
    struct Sim {
        source: BTreeSet<i64>,
        local: BTreeSet<i64>,
        limit: u64,
        requests: u64,
        /// Rows inserted at the source right after each count request (a busy source).
        churn: Vec<i64>,
    }

    impl Sim {
        fn count(&mut self, r: Range) -> CountAnswer {
            self.requests += 1;
            let n = self.source.range(r.lo..=r.hi).count() as u64;
            if let Some(k) = self.churn.pop() {
                self.source.insert(k);
            }
            CountAnswer { total_filtered: Some(n), items: n.min(1) as usize, total: Some(self.source.len() as u64) }
        }

        fn page(&mut self, r: Range) {
            // Keyset pages until a short one, each proving its range; the loader deletes the
            // local keys of that range the page does not hold.
            let mut lo = r.lo;
            loop {
                self.requests += 1;
                let page: Vec<i64> = self.source.range(lo..=r.hi).take(self.limit as usize).copied().collect();
                let hi = if (page.len() as u64) < self.limit { r.hi } else { *page.last().unwrap() };
                let gone: Vec<i64> = self.local.range(lo..=hi).filter(|k| !self.source.contains(k)).copied().collect();
                for k in gone {
                    self.local.remove(&k);
                }
                if hi == r.hi {
                    return;
                }
                lo = hi + 1;
            }
        }

        fn run(&mut self) {
            let root = self.count(Range::ALL);
            let n = self.local.len() as u64;
            let mut p = Planner::new(self.limit as u32, Range::ALL, n, root.total_filtered.unwrap(), root.items == 0);
            let mut pages = Vec::new();
            // Bounded: every task shrinks a range or ends it.
            for _ in 0..100_000 {
                let tasks = p.tasks();
                if tasks.is_empty() {
                    break;
                }
                for t in tasks {
                    match t {
                        Task::Count { node, range } => {
                            let a = self.count(range);
                            p.counted(node, &a);
                        }
                        Task::Split { node, range, rank } => {
                            let key = self.local.range(range.lo..=range.hi).nth(rank as usize).copied();
                            p.split_at(node, key);
                        }
                        Task::Page(r) => pages.push(r),
                        Task::Clear(r) => {
                            let gone: Vec<i64> = self.local.range(r.lo..=r.hi).copied().collect();
                            for k in gone {
                                assert!(!self.source.contains(&k), "clearing {r:?} removes {k}, which exists");
                                self.local.remove(&k);
                            }
                        }
                    }
                }
            }
            for r in join_adjacent(pages) {
                self.page(r);
            }
        }
    }

    /// xorshift: deterministic pseudo-random numbers for the property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn bound(n: u64, limit: u64, d: u64) -> u64 {
        let levels = (n as f64 / limit as f64).max(1.0).log2().ceil() as u64;
        1 + d * (levels + 1)
    }

    fn sim(n: u64, limit: u64, deleted: &[i64], gaps: bool) -> Sim {
        let keys: Vec<i64> = (1..=n as i64).map(|k| if gaps { k * 3 + (k % 7) * 2 } else { k }).collect();
        let deleted: BTreeSet<i64> = deleted.iter().map(|i| keys[*i as usize % keys.len()]).collect();
        let source = keys.iter().copied().filter(|k| !deleted.contains(k)).collect();
        Sim { source, local: keys.into_iter().collect(), limit, requests: 0, churn: Vec::new() }
    }

    #[test]
    fn no_deletion_costs_one_request() {
        let mut s = sim(100_000, 1000, &[], false);
        s.run();
        assert_eq!(s.requests, 1);
    }

    #[test]
    fn scattered_deletions_are_found_within_the_bound() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for case in 0..120 {
            let n = 1000 + rng.below(120_000);
            let limit = [10, 100, 1000][case % 3];
            let d = rng.below(40);
            let deleted: Vec<i64> = (0..d).map(|_| rng.below(n) as i64).collect();
            let mut s = sim(n, limit, &deleted, case % 2 == 0);
            let d = (s.local.len() - s.source.len()) as u64;
            s.run();
            assert_eq!(s.local, s.source, "case {case}: n={n} limit={limit} d={d}");
            assert!(
                s.requests <= bound(n, limit, d),
                "case {case}: n={n} limit={limit} d={d}: {} requests > bound {}",
                s.requests,
                bound(n, limit, d)
            );
        }
    }

    #[test]
    fn clustered_deletions_cost_no_more_than_paging_the_cluster() {
        let mut rng = Rng(0xc105_7e12_0000_0002);
        for case in 0..60 {
            let n = 10_000 + rng.below(100_000);
            let limit = 1000;
            let start = rng.below(n);
            let len = 1 + rng.below(5000);
            let deleted: Vec<i64> = (start..(start + len).min(n)).map(|i| i as i64).collect();
            let mut s = sim(n, limit, &deleted, false);
            let d = (s.local.len() - s.source.len()) as u64;
            s.run();
            assert_eq!(s.local, s.source, "case {case}");
            assert!(s.requests <= bound(n, limit, d), "case {case}: {} > {}", s.requests, bound(n, limit, d));
            // A cluster is found by bisecting to its edges, then paged or cleared: far less
            // than a sweep of the whole export.
            assert!(s.requests <= n / limit / 2 + 40, "case {case}: n={n} cluster {len}: {} requests", s.requests);
        }
    }

    #[test]
    fn deletions_all_over_cost_little_more_than_a_sweep() {
        let mut rng = Rng(0xa11_0e12_0000_0004);
        for case in 0..10 {
            let n = 20_000 + rng.below(50_000);
            let limit = 100;
            let deleted: Vec<i64> = (0..n / 3).map(|_| rng.below(n) as i64).collect();
            let mut s = sim(n, limit, &deleted, false);
            s.run();
            assert_eq!(s.local, s.source, "case {case}");
            // Measured: 1.1 to 1.35 sweeps (the counts of the first levels, then the pages).
            assert!(s.requests <= 3 * (n / limit) / 2 + 10, "case {case}: n={n}: {} requests", s.requests);
        }
    }

    #[test]
    fn everything_deleted_is_one_clear() {
        let all: Vec<i64> = (0..5000).collect();
        let mut s = sim(5000, 100, &all, false);
        s.run();
        assert!(s.local.is_empty());
        assert_eq!(s.requests, 1, "an empty answer proves the whole range empty");
    }

    #[test]
    fn a_busy_source_never_loses_a_row() {
        let mut rng = Rng(0xb05e_0000_0000_0003);
        for case in 0..60 {
            let n = 5000 + rng.below(50_000);
            let deleted: Vec<i64> = (0..rng.below(30)).map(|_| rng.below(n) as i64).collect();
            let mut s = sim(n, 100, &deleted, false);
            let before = s.local.clone();
            // Rows inserted at the source between the planner's requests, anywhere in the key
            // space: counts stop adding up.
            s.churn = (0..20).map(|_| rng.below(3 * n) as i64 * 2 + 1).collect();
            s.run();
            let lost: Vec<&i64> = before.intersection(&s.source).filter(|k| !s.local.contains(k)).collect();
            assert!(lost.is_empty(), "case {case}: rows of the source deleted locally: {lost:?}");
        }
    }

    #[test]
    fn more_rows_at_the_source_are_paged_and_said() {
        let mut s = sim(3000, 100, &[1499], false);
        // Rows the harvest never held (a FeatureCollection drops rows without geometry).
        for k in [5000, 5001, 5002] {
            s.source.insert(k);
        }
        let root = s.count(Range::ALL);
        let mut p = Planner::new(100, Range::ALL, s.local.len() as u64, root.total_filtered.unwrap(), false);
        assert_eq!(p.tasks(), vec![Task::Page(Range::ALL)]);
        assert!(p.anomaly.as_deref().unwrap().contains("3002 rows at the source, 3000 stored"), "{:?}", p.anomaly);
    }
}
