//! Streams paced to the source (`streams => 'auto'`).
//!
//! A real GeoNature counts its whole view on every request (docs/source-api.md §4.2): concurrent
//! requests share the partner's few cores, and behind gunicorn's default 30 s timeout a
//! saturated server answers 502/503. How many requests it serves well at once depends on a
//! server gn2pg does not know, so it measures: [`Pacer`] starts with one stream, adds one
//! while the rows per second rise (by [`MIN_GAIN`] at least) and the page latency stays within
//! [`LATENCY_FACTOR`] times the one-stream latency, and drops one when the rate stops rising,
//! the latency grows or the source answers 429/5xx (any retried request). It never goes above
//! the streams the engine may use (`allowed`: the per-host maximum, shared with the other runs
//! of the same host), and now and then tries one more stream again, since the partner's load
//! changes.
//!
//! [`Gate`] holds the producer threads to the current number of requests in flight, and
//! [`Recorder`] collects what each request took. Nothing here calls PostgreSQL.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::client::Host;
use super::SourceError;

/// A stream is added only if the rate rose by this much with the previous one.
pub const MIN_GAIN: f64 = 0.10;
/// A median latency above this many times the one-stream median means the source is saturated.
pub const LATENCY_FACTOR: f64 = 3.0;
/// Requests needed to judge a level (at least twice the streams).
const MIN_SAMPLES: usize = 4;
/// Judgements at a stable level before trying one more stream again; doubled after each try
/// that did not pay.
const REPROBE_AFTER: u32 = 8;

/// One request as the source served it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub started: Instant,
    pub finished: Instant,
    pub rows: u64,
    /// The request was retried: HTTP 429 or 5xx, a timeout, a cut answer.
    pub trouble: bool,
}

/// The controller. Pure: it sees samples and the allowed maximum, and says how many streams.
#[derive(Debug, Clone)]
pub struct Pacer {
    target: u32,
    max: u32,
    /// Levels above this failed or did not pay; tried again after a while.
    ceiling: u32,
    level_start: Instant,
    /// Rows per second measured at each level (index: streams).
    rates: Vec<Option<f64>>,
    /// Median latency with one stream.
    baseline: Option<Duration>,
    stable: u32,
    reprobe_after: u32,
}

impl Pacer {
    pub fn new(max: u32, now: Instant) -> Pacer {
        let max = max.max(1);
        Pacer {
            target: 1,
            max,
            ceiling: max,
            level_start: now,
            rates: vec![None; max as usize + 1],
            baseline: None,
            stable: 0,
            reprobe_after: REPROBE_AFTER,
        }
    }

    fn set(&mut self, n: u32, now: Instant) -> u32 {
        self.target = n.clamp(1, self.max);
        self.level_start = now;
        self.stable = 0;
        self.target
    }

    /// Holds the controller to `n` streams when the budget gave fewer than it asked for.
    pub fn limit(&mut self, n: u32, now: Instant) {
        if self.target > n {
            self.set(n, now);
        }
    }

    /// The controller for another kind of request (counts, then pages), whose rates do not
    /// compare with the previous ones: it starts again from one stream, below the same ceiling.
    pub fn restarted(&self, now: Instant) -> Pacer {
        Pacer { ceiling: self.ceiling, ..Pacer::new(self.max, now) }
    }

    /// Streams to use from now on. `samples` may hold older requests: only those started at the
    /// current level count. `allowed` is what the host's budget leaves this run (at least 1).
    pub fn decide(&mut self, now: Instant, samples: &[Sample], allowed: u32) -> u32 {
        let allowed = allowed.clamp(1, self.max);
        let epoch: Vec<&Sample> = samples.iter().filter(|s| s.started >= self.level_start).collect();
        if epoch.iter().any(|s| s.trouble) {
            // The level that hurt the source is not tried again until later.
            self.ceiling = self.target.saturating_sub(1).max(1);
            self.reprobe_after = self.reprobe_after.saturating_mul(2);
            return self.set(self.ceiling, now);
        }
        if self.target > allowed {
            return self.set(allowed, now);
        }
        if epoch.len() < MIN_SAMPLES.max(2 * self.target as usize) {
            return self.target;
        }
        let end = epoch.iter().map(|s| s.finished).max().unwrap_or(now);
        let span = end.saturating_duration_since(self.level_start).as_secs_f64().max(1e-3);
        let rate = epoch.iter().map(|s| s.rows).sum::<u64>() as f64 / span;
        let mut latencies: Vec<Duration> =
            epoch.iter().map(|s| s.finished.saturating_duration_since(s.started)).collect();
        latencies.sort_unstable();
        let median = latencies[latencies.len() / 2];
        let level = self.target as usize;
        if level == 1 {
            self.baseline = Some(self.baseline.map_or(median, |b| b.min(median)));
        }
        let previous = self.rates[level - 1];
        self.rates[level] = Some(rate);
        let saturated = self.baseline.is_some_and(|b| median.as_secs_f64() > b.as_secs_f64() * LATENCY_FACTOR);
        let no_gain = previous.is_some_and(|p| rate < p * (1.0 + MIN_GAIN));
        if level > 1 && (saturated || no_gain) {
            self.ceiling = self.target - 1;
            self.reprobe_after = self.reprobe_after.saturating_mul(2);
            return self.set(self.target - 1, now);
        }
        if self.target < allowed.min(self.ceiling) {
            return self.set(self.target + 1, now);
        }
        // Holding: measure this level afresh, and now and then try one more stream.
        self.level_start = now;
        self.stable += 1;
        if self.stable >= self.reprobe_after && self.ceiling < allowed {
            self.ceiling += 1;
            self.stable = 0;
        }
        self.target
    }
}

/// Holds producer threads to a number of requests in flight that the backend changes at will,
/// and to a number of pages held at once.
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    target: u32,
    in_flight: u32,
    /// The most requests that were in flight at once.
    most: u32,
    /// Pages fetched or being fetched and not yet loaded: being prepared, queued for the backend
    /// or being loaded.
    held: u32,
}

/// A request in flight; leaves the gate on drop.
pub struct Permit<'a>(&'a Gate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight = s.in_flight.saturating_sub(1);
        self.0.changed.notify_all();
    }
}

/// A page the run holds, from before its request until the backend has loaded it; released on
/// drop.
pub struct Held(Arc<Gate>);

impl Drop for Held {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.held = s.held.saturating_sub(1);
        self.0.changed.notify_all();
    }
}

impl Gate {
    pub fn new(target: u32) -> Gate {
        Gate { state: Mutex::new(GateState { target: target.max(1), ..Default::default() }), changed: Condvar::new() }
    }

    pub fn set_target(&self, n: u32) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).target = n.max(1);
        self.changed.notify_all();
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).in_flight
    }

    /// The most requests that were in flight at once.
    pub fn most(&self) -> u32 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).most
    }

    /// Pages held now.
    #[cfg(test)]
    pub fn held(&self) -> u32 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).held
    }

    /// Waits until `room` says there is room; stops waiting on cancel. Bounded by the run: each
    /// turn waits 50 ms at most and checks for cancellation.
    fn wait_for(
        &self,
        host: &dyn Host,
        room: impl Fn(&GateState) -> bool,
    ) -> Result<MutexGuard<'_, GateState>, SourceError> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !room(&s) {
            drop(s);
            host.check_interrupts()?;
            s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if room(&s) {
                break;
            }
            s = self.changed.wait_timeout(s, Duration::from_millis(50)).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(s)
    }

    /// Waits until fewer requests than the target are in flight.
    pub fn enter(&self, host: &dyn Host) -> Result<Permit<'_>, SourceError> {
        let mut s = self.wait_for(host, |s| s.in_flight < s.target)?;
        s.in_flight += 1;
        s.most = s.most.max(s.in_flight);
        Ok(Permit(self))
    }

    /// Waits until the run holds fewer than `ahead` pages more than its target of requests in
    /// flight. Producer threads are as many as the most streams a run may use, but the pages
    /// they prepare ahead of the backend (memory, and CPU taken from the backend) follow the
    /// streams in use: with one stream, as many as a single producer would hold.
    pub fn hold(self: &Arc<Self>, ahead: u32, host: &dyn Host) -> Result<Held, SourceError> {
        let mut s = self.wait_for(host, |s| s.held < s.target.saturating_add(ahead))?;
        s.held += 1;
        Ok(Held(self.clone()))
    }
}

/// Most latencies kept for the run log's percentiles (one per page of the largest run).
const MAX_LATENCIES: usize = 1_000_000;
/// Recent samples kept for the controller.
const MAX_RECENT: usize = 4096;

/// What the requests of a run took, shared by its threads.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    recent: std::collections::VecDeque<Sample>,
    latencies_ms: Vec<u32>,
}

impl Recorder {
    pub fn record(&self, s: Sample) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if r.recent.len() == MAX_RECENT {
            r.recent.pop_front();
        }
        r.recent.push_back(s);
        if r.latencies_ms.len() < MAX_LATENCIES && r.latencies_ms.try_reserve(1).is_ok() {
            let ms = s.finished.saturating_duration_since(s.started).as_millis().min(u32::MAX as u128) as u32;
            r.latencies_ms.push(ms);
        }
    }

    /// Samples of requests started at or after `t`.
    pub fn since(&self, t: Instant) -> Vec<Sample> {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.recent.iter().filter(|s| s.started >= t).copied().collect()
    }

    /// Median and 95th percentile of the latencies, in milliseconds.
    pub fn percentiles(&self) -> Option<(u32, u32)> {
        let mut v = self.inner.lock().unwrap_or_else(|e| e.into_inner()).latencies_ms.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some((at(0.5), at(0.95)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::client::CancelFlag;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A simulated source, in virtual time: `cores` share the work (a request started with
    /// `n` requests in progress takes `base * max(1, n / cores)`), and beyond `workers`
    /// requests at once the proxy answers 503 at once.
    struct Source {
        base: Duration,
        cores: f64,
        workers: Option<u32>,
    }

    struct Outcome {
        /// Streams in use after each decision.
        targets: Vec<u32>,
        overloads: u32,
        most_in_flight: u32,
        elapsed: Duration,
    }

    /// Pages `pages` pages with a pacer deciding after every answer; `allowed(t)` is the
    /// host's budget at virtual time t.
    fn simulate(src: &Source, pages: u32, max: u32, allowed: impl Fn(Duration) -> u32) -> Outcome {
        let t0 = Instant::now();
        let mut now = t0;
        let mut pacer = Pacer::new(max, now);
        let mut samples: Vec<Sample> = Vec::new();
        let mut in_flight: Vec<(Instant, Instant, bool)> = Vec::new();
        let (mut done, mut overloads, mut most) = (0u32, 0u32, 0u32);
        let mut targets = Vec::new();
        let step = Duration::from_millis(5);
        // Bounded: virtual time advances every turn and pages complete at a bounded rate.
        for _ in 0..10_000_000 {
            if done >= pages {
                break;
            }
            // Start requests up to the target.
            while (in_flight.len() as u32) < pacer.target && done + (in_flight.len() as u32) < pages {
                let n = in_flight.len() as u32 + 1;
                let overloaded = src.workers.is_some_and(|w| n > w);
                let took = if overloaded {
                    Duration::from_millis(20)
                } else {
                    src.base.mul_f64((n as f64 / src.cores).max(1.0))
                };
                in_flight.push((now, now + took, overloaded));
                most = most.max(n);
            }
            now += step;
            let (finished, still): (Vec<_>, Vec<_>) = in_flight.into_iter().partition(|r| r.1 <= now);
            in_flight = still;
            for (started, end, overloaded) in finished {
                if overloaded {
                    overloads += 1;
                } else {
                    done += 1;
                }
                samples.push(Sample {
                    started,
                    finished: end,
                    rows: if overloaded { 0 } else { 1000 },
                    trouble: overloaded,
                });
                pacer.decide(now, &samples, allowed(now - t0));
                targets.push(pacer.target);
            }
        }
        Outcome { targets, overloads, most_in_flight: most, elapsed: now - t0 }
    }

    fn settled(o: &Outcome) -> u32 {
        let tail = &o.targets[o.targets.len() * 3 / 4..];
        let mut v = tail.to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    }

    #[test]
    fn a_two_core_source_gets_about_two_streams() {
        let src = Source { base: Duration::from_millis(800), cores: 2.0, workers: None };
        let o = simulate(&src, 400, 8, |_| 8);
        let s = settled(&o);
        assert!((2..=3).contains(&s), "settled at {s}: {:?}", &o.targets[..40.min(o.targets.len())]);
        assert!(o.most_in_flight <= 4, "{}", o.most_in_flight);
        // About twice as fast as one stream (400 pages at 0.8 s = 320 s).
        assert!(o.elapsed < Duration::from_secs(200), "{:?}", o.elapsed);
    }

    #[test]
    fn a_large_source_gets_the_host_maximum() {
        let src = Source { base: Duration::from_millis(500), cores: 16.0, workers: None };
        let o = simulate(&src, 400, 4, |_| 4);
        assert_eq!(settled(&o), 4);
        assert_eq!(o.most_in_flight, 4, "never above the maximum");
    }

    #[test]
    fn overload_answers_make_it_back_off_and_stay_below() {
        let src = Source { base: Duration::from_millis(500), cores: 8.0, workers: Some(2) };
        let o = simulate(&src, 600, 8, |_| 8);
        assert!(settled(&o) <= 2, "{}", settled(&o));
        // Each probe of a third stream costs a failed request, and probes are rare.
        assert!(o.overloads <= 12, "{} overloads", o.overloads);
    }

    #[test]
    fn the_budget_is_followed_at_once() {
        let src = Source { base: Duration::from_millis(300), cores: 16.0, workers: None };
        let budget = |t: Duration| if t < Duration::from_secs(10) { 4 } else { 1 };
        let o = simulate(&src, 400, 4, budget);
        assert_eq!(settled(&o), 1);
        assert!(o.targets.iter().all(|t| *t <= 4));
    }

    #[test]
    fn the_gate_holds_threads_to_the_target() {
        let gate = Arc::new(Gate::new(2));
        let most = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (gate, most) = (gate.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let _p = gate.enter(&CancelFlag::default()).unwrap();
                        most.fetch_max(gate.in_flight(), Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        gate.set_target(3);
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 3);
        assert_eq!((gate.in_flight(), gate.most()), (0, most.load(Ordering::SeqCst)));

        let stop = CancelFlag::default();
        stop.raise();
        let gate = Gate::new(1);
        let _held = gate.enter(&CancelFlag::default()).unwrap();
        assert!(gate.enter(&stop).is_err(), "a full gate gives way to a cancel");
    }

    #[test]
    fn pages_held_follow_the_target_not_the_threads() {
        const AHEAD: u32 = 2;
        let gate = Arc::new(Gate::new(1));
        let (tx, rx) = std::sync::mpsc::channel::<Held>();
        let most = Arc::new(AtomicU32::new(0));
        // Six producers, as a run of six streams at most, while one is the target: a slow
        // consumer holds each page 2 ms; producers never hold more than target + AHEAD.
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (gate, most, tx) = (gate.clone(), most.clone(), tx.clone());
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        let held = gate.hold(AHEAD, &CancelFlag::default()).unwrap();
                        most.fetch_max(gate.held(), Ordering::SeqCst);
                        tx.send(held).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut taken = 0;
        for (i, page) in rx.iter().enumerate() {
            if i == 20 {
                gate.set_target(3);
            }
            std::thread::sleep(Duration::from_millis(2));
            drop(page);
            taken += 1;
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(taken, 60);
        assert!(most.load(Ordering::SeqCst) <= 3 + AHEAD, "{}", most.load(Ordering::SeqCst));
        assert!(most.load(Ordering::SeqCst) > 1 + AHEAD, "a higher target lets more pages be held");
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn percentiles_of_latencies() {
        let r = Recorder::default();
        assert_eq!(r.percentiles(), None);
        let t = Instant::now();
        for ms in 1..=100u64 {
            r.record(Sample { started: t, finished: t + Duration::from_millis(ms), rows: 1, trouble: false });
        }
        assert_eq!(r.percentiles(), Some((51, 95)));
        assert_eq!(r.since(t + Duration::from_millis(1)).len(), 0);
        assert_eq!(r.since(t).len(), 100);
    }
}
