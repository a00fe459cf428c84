//! Latency percentiles over sliding windows (10 s, 1 min, 5 min), from HDR histograms.
//!
//! Error bound: histograms keep 2 significant digits (`SIGFIG`), so a reported percentile
//! is the upper edge of the bucket holding the exact nearest-rank value: never below it and
//! at most 1/128 (< 1 %) above it. Values are microseconds from 1 µs to 60 s; longer
//! requests are counted as 60 s.
//!
//! Two halves, so the request path never waits on the reader:
//! - [`Recorder`]: what a request touches. A few shards, each a `Mutex<Histogram>`; a
//!   thread always uses the same shard, so with one data-plane thread per shard the lock
//!   is uncontended except for the once-a-second harvest, which only swaps a pointer.
//! - [`Windows`]: owned by the control thread's sampler. Each second it harvests every
//!   recorder into a ring of ten 1-second slots and thirty 10-second slots; windows are
//!   merges of the newest slots. Empty seconds hold no histogram, so an idle backend costs
//!   a few bytes.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Significant digits kept: relative error < 1/128 (documented as ≤ 1 %).
pub const SIGFIG: u8 = 2;
/// Highest latency tracked, in microseconds (60 s); longer ones count as 60 s.
pub const MAX_MICROS: u64 = 60_000_000;
/// Shards per recorder: data-plane threads beyond this share a shard (still correct).
const SHARDS: usize = 4;
/// 1-second slots kept: the 10 s window.
const SECOND_SLOTS: usize = 10;
/// 10-second slots kept: the 1 min (6) and 5 min (30) windows.
const TEN_SLOTS: usize = 30;

/// The windows reported, with their names.
pub const WINDOWS: [(&str, Window); 3] = [
    ("10s", Window::TenSeconds),
    ("1m", Window::OneMinute),
    ("5m", Window::FiveMinutes),
];
/// The quantiles reported, with their `percentile` label values. (Not `quantile`: that
/// label is reserved for summaries, and promtool rejects it on gauges.)
pub const QUANTILES: [(&str, f64); 4] = [("50", 0.5), ("95", 0.95), ("99", 0.99), ("99.9", 0.999)];

/// A sliding window percentiles are reported over (see [`WINDOWS`] for the label names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last 10 complete seconds.
    TenSeconds,
    /// The last 6 complete 10-second slots plus the seconds of the current one.
    OneMinute,
    /// The last 30 complete 10-second slots plus the seconds of the current one.
    FiveMinutes,
}

/// An empty histogram with drover's bounds (1 µs to [`MAX_MICROS`]) and precision
/// ([`SIGFIG`]); every histogram merged with another must come from here.
pub fn new_histogram() -> Histogram<u32> {
    // Bounds and precision are constants that hdrhistogram accepts; covered by tests.
    Histogram::new_with_bounds(1, MAX_MICROS, SIGFIG).expect("valid histogram bounds")
}

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

/// Where requests record their latency. Cheap to share (`Arc`), cheap to record into.
pub struct Recorder {
    shards: [Mutex<Histogram<u32>>; SHARDS],
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder with one empty histogram per shard.
    pub fn new() -> Self {
        Recorder {
            shards: std::array::from_fn(|_| Mutex::new(new_histogram())),
        }
    }

    /// Records one latency. One uncontended lock and one counter increment.
    #[inline]
    pub fn record(&self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        let i = SHARD.with(|s| *s);
        let mut h = self.shards[i].lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(us);
    }

    /// Moves everything recorded since the last harvest into `into` (which is added to).
    /// `spare` must be empty; it is swapped in, so the lock is held for a pointer swap.
    fn harvest(&self, into: &mut Histogram<u32>, spare: &mut Histogram<u32>) {
        for shard in &self.shards {
            {
                let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
                if h.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *h, spare);
            }
            // Cannot fail: both histograms have the same bounds.
            let _ = into.add(&*spare);
            spare.reset();
        }
    }
}

/// Percentiles of one window, in seconds, and how many samples they come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Samples in the window; 0 means no traffic and every other field is 0.
    pub count: u64,
    /// Median, in seconds.
    pub p50: f64,
    /// 95th percentile, in seconds.
    pub p95: f64,
    /// 99th percentile, in seconds.
    pub p99: f64,
    /// 99.9th percentile, in seconds.
    pub p999: f64,
    /// Largest sample, in seconds (capped at 60 s like every value).
    pub max: f64,
}

impl Percentiles {
    /// Reads the percentiles of `h` (recorded in microseconds); all zero if `h` is empty.
    pub fn of(h: &Histogram<u32>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let s = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        Percentiles {
            count: h.len(),
            p50: s(0.5),
            p95: s(0.95),
            p99: s(0.99),
            p999: s(0.999),
            max: h.max() as f64 / 1e6,
        }
    }

    /// The stored percentile for quantile `q`, rounded up to the next one kept (p50, p95,
    /// p99, p99.9); anything above 0.99 gives p99.9.
    pub fn quantile(&self, q: f64) -> f64 {
        match q {
            q if q <= 0.5 => self.p50,
            q if q <= 0.95 => self.p95,
            q if q <= 0.99 => self.p99,
            _ => self.p999,
        }
    }
}

/// The sliding windows of one recorder. Not shared: the sampler owns it and publishes
/// computed [`Percentiles`].
pub struct Windows {
    recorder: Arc<Recorder>,
    /// Newest last; `None` for a second without samples.
    seconds: std::collections::VecDeque<Option<Histogram<u32>>>,
    tens: std::collections::VecDeque<Option<Histogram<u32>>>,
    /// The seconds of the 10-second slot being filled.
    current_ten: Option<Histogram<u32>>,
    seconds_in_ten: u32,
    /// Recycled histograms, so a steady state allocates nothing.
    free: Vec<Histogram<u32>>,
    spare: Histogram<u32>,
    /// Samples in the last completed second.
    pub last_second_count: u64,
}

impl Windows {
    /// Empty windows over `recorder`; nothing is harvested until the first tick.
    pub fn new(recorder: Arc<Recorder>) -> Self {
        Windows {
            recorder,
            seconds: std::collections::VecDeque::with_capacity(SECOND_SLOTS),
            tens: std::collections::VecDeque::with_capacity(TEN_SLOTS),
            current_ten: None,
            seconds_in_ten: 0,
            free: Vec::new(),
            spare: new_histogram(),
            last_second_count: 0,
        }
    }

    /// The recorder these windows harvest from.
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    fn take(&mut self) -> Histogram<u32> {
        self.free.pop().unwrap_or_else(new_histogram)
    }

    fn give(&mut self, h: Option<Histogram<u32>>) {
        if let Some(mut h) = h {
            h.reset();
            // Never keep more spares than slots could ever need.
            if self.free.len() < 4 {
                self.free.push(h);
            }
        }
    }

    /// Closes the current second: harvests the recorder into a new 1-second slot and rolls
    /// the 10-second slots every tenth call. Call once a second.
    pub fn tick(&mut self) {
        let mut h = self.take();
        self.recorder.harvest(&mut h, &mut self.spare);
        self.last_second_count = h.len();
        let sec = if h.is_empty() {
            self.give(Some(h));
            None
        } else {
            if self.current_ten.is_none() {
                self.current_ten = Some(self.take());
            }
            if let Some(t) = self.current_ten.as_mut() {
                let _ = t.add(&h);
            }
            Some(h)
        };
        if self.seconds.len() == SECOND_SLOTS {
            let old = self.seconds.pop_front().flatten();
            self.give(old);
        }
        self.seconds.push_back(sec);
        self.seconds_in_ten += 1;
        if self.seconds_in_ten == 10 {
            self.seconds_in_ten = 0;
            let ten = self.current_ten.take();
            if self.tens.len() == TEN_SLOTS {
                let old = self.tens.pop_front().flatten();
                self.give(old);
            }
            self.tens.push_back(ten);
        }
    }

    /// Merges the slots of `window` into `out` (reset first).
    pub fn merge(&self, window: Window, out: &mut Histogram<u32>) {
        out.reset();
        let add = |out: &mut Histogram<u32>, h: &Option<Histogram<u32>>| {
            if let Some(h) = h {
                let _ = out.add(h);
            }
        };
        match window {
            Window::TenSeconds => self.seconds.iter().for_each(|h| add(out, h)),
            Window::OneMinute | Window::FiveMinutes => {
                let n = if window == Window::OneMinute { 6 } else { 30 };
                self.tens.iter().rev().take(n).for_each(|h| add(out, h));
                add(out, &self.current_ten);
            }
        }
    }

    /// Percentiles of every window, in [`WINDOWS`] order.
    pub fn percentiles(&self, scratch: &mut Histogram<u32>) -> [Percentiles; 3] {
        WINDOWS.map(|(_, w)| {
            self.merge(w, scratch);
            Percentiles::of(scratch)
        })
    }

    /// Percentiles of the last completed second only (history samples these).
    pub fn last_second(&self) -> Percentiles {
        match self.seconds.back() {
            Some(Some(h)) => Percentiles::of(h),
            _ => Percentiles::default(),
        }
    }

    /// Samples of the last completed second slower than `threshold`.
    pub fn last_second_above(&self, threshold: Duration) -> u64 {
        match self.seconds.back() {
            Some(Some(h)) => {
                let us = (threshold.as_micros() as u64).clamp(1, MAX_MICROS);
                h.len() - h.count_between(0, us)
            }
            _ => 0,
        }
    }

    /// Bytes held by histograms (for the memory ceiling).
    pub fn memory_bytes(&self) -> usize {
        let one = std::mem::size_of::<u32>() * self.spare.distinct_values();
        let held = self.seconds.iter().flatten().count()
            + self.tens.iter().flatten().count()
            + self.current_ten.is_some() as usize
            + self.free.len()
            + 1
            + SHARDS;
        held * one
    }
}

/// Upper bound of [`Windows::memory_bytes`] for one recorder with its windows.
pub fn max_memory_per_recorder() -> usize {
    let one = std::mem::size_of::<u32>() * new_histogram().distinct_values();
    (SECOND_SLOTS + TEN_SLOTS + 1 + 4 + 1 + SHARDS) * one
}

/// Per-backend recorders are kept for at most this many backend names; further names
/// share one recorder reported as `other` (bounded memory and label cardinality).
pub const MAX_BACKEND_RECORDERS: usize = 64;
/// Backend label of the shared recorder used once [`MAX_BACKEND_RECORDERS`] names exist.
pub const OVERFLOW_NAME: &str = "other";

/// Every recorder: the overall one and one per backend name. A restarted worker keeps its
/// name, so its percentiles continue across restarts.
pub struct Recorders {
    /// Every request's total time, whatever its backend (recorded by the pipeline).
    pub overall: Arc<Recorder>,
    by_name: Mutex<Vec<(Arc<str>, Arc<Recorder>)>>,
}

impl Default for Recorders {
    fn default() -> Self {
        Recorders {
            overall: Arc::new(Recorder::new()),
            by_name: Mutex::new(Vec::new()),
        }
    }
}

impl Recorders {
    /// The recorder for backend `name` (created on first use; called once per backend, not
    /// per request).
    pub fn for_backend(&self, name: &str) -> Arc<Recorder> {
        let mut v = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, r)) = v.iter().find(|(n, _)| &**n == name) {
            return r.clone();
        }
        let key: &str = if v.len() < MAX_BACKEND_RECORDERS {
            name
        } else {
            OVERFLOW_NAME
        };
        if let Some((_, r)) = v.iter().find(|(n, _)| &**n == key) {
            return r.clone();
        }
        let r = Arc::new(Recorder::new());
        v.push((Arc::from(key), r.clone()));
        r
    }

    /// `(name, recorder)` of every backend recorder.
    pub fn backends(&self) -> Vec<(Arc<str>, Arc<Recorder>)> {
        self.by_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Nearest-rank percentile, the definition HDR histograms use.
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn percentiles_are_within_one_percent_of_exact_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Log-normal-ish latencies from 50 µs to ~2 s plus a slow tail.
        let samples: Vec<u64> = (0..200_000)
            .map(|i| {
                let base: f64 = rng.random_range(4.0_f64..12.0).exp();
                let v = if i % 997 == 0 { base * 50.0 } else { base };
                (v as u64).clamp(1, MAX_MICROS)
            })
            .collect();
        let rec = Arc::new(Recorder::new());
        let mut w = Windows::new(rec.clone());
        for (i, &us) in samples.iter().enumerate() {
            rec.record(Duration::from_micros(us));
            if i % 20_000 == 19_999 {
                w.tick();
            }
        }
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        let mut scratch = new_histogram();
        // 10 ticks: every sample is in the 10 s window (and in 1 min via current_ten).
        for window in [Window::TenSeconds, Window::OneMinute, Window::FiveMinutes] {
            w.merge(window, &mut scratch);
            assert_eq!(scratch.len(), samples.len() as u64, "{window:?}");
            for q in [0.5, 0.95, 0.99, 0.999] {
                let e = exact(&sorted, q) as f64;
                let got = scratch.value_at_quantile(q) as f64;
                let err = (got - e) / e;
                assert!(
                    (0.0..=0.01).contains(&err),
                    "{window:?} q={q}: hdr {got} exact {e} relative error {err}"
                );
            }
        }
        let p = Percentiles::of(&scratch);
        let e99 = exact(&sorted, 0.99) as f64 / 1e6;
        assert!((p.p99 - e99).abs() <= e99 * 0.01, "{} vs {e99}", p.p99);
    }

    #[test]
    fn windows_slide_old_seconds_out() {
        let rec = Arc::new(Recorder::new());
        let mut w = Windows::new(rec.clone());
        let mut h = new_histogram();
        rec.record(Duration::from_millis(100));
        w.tick();
        w.merge(Window::TenSeconds, &mut h);
        assert_eq!(h.len(), 1);
        for _ in 0..9 {
            rec.record(Duration::from_millis(1));
            w.tick();
        }
        w.merge(Window::TenSeconds, &mut h);
        assert_eq!(h.len(), 10);
        assert!(h.value_at_quantile(1.0) >= 100_000);
        // The 100 ms sample is 11 seconds old now: out of 10 s, still in 1 min.
        rec.record(Duration::from_millis(1));
        w.tick();
        w.merge(Window::TenSeconds, &mut h);
        assert_eq!(h.len(), 10);
        assert!(h.value_at_quantile(1.0) < 2_000);
        w.merge(Window::OneMinute, &mut h);
        assert_eq!(h.len(), 11);
        // 5 idle minutes empty every window.
        for _ in 0..310 {
            w.tick();
        }
        for window in [Window::TenSeconds, Window::OneMinute, Window::FiveMinutes] {
            w.merge(window, &mut h);
            assert_eq!(h.len(), 0, "{window:?}");
        }
        assert!(w.memory_bytes() <= max_memory_per_recorder());
    }

    #[test]
    fn latencies_beyond_the_range_saturate() {
        let rec = Arc::new(Recorder::new());
        let mut w = Windows::new(rec.clone());
        rec.record(Duration::from_secs(3600));
        rec.record(Duration::ZERO);
        w.tick();
        let p = w.last_second();
        assert_eq!(p.count, 2);
        assert!(p.max >= 60.0 && p.max <= 60.0 * 1.01, "{}", p.max);
    }

    #[test]
    fn memory_per_recorder_is_bounded_under_constant_load() {
        let rec = Arc::new(Recorder::new());
        let mut w = Windows::new(rec.clone());
        for s in 0..400 {
            rec.record(Duration::from_micros(100 + s));
            w.tick();
            assert!(w.memory_bytes() <= max_memory_per_recorder());
        }
        // ~10 KiB per histogram with these bounds.
        assert!(max_memory_per_recorder() < 512 * 1024);
    }

    #[test]
    fn backend_recorders_are_capped_and_shared_by_name() {
        let r = Recorders::default();
        let a = r.for_backend("worker-0");
        assert!(Arc::ptr_eq(&a, &r.for_backend("worker-0")));
        for i in 0..1000 {
            r.for_backend(&format!("flood-{i}"));
        }
        let names = r.backends();
        assert_eq!(names.len(), MAX_BACKEND_RECORDERS + 1);
        assert!(names.iter().any(|(n, _)| &**n == OVERFLOW_NAME));
        assert!(Arc::ptr_eq(
            &r.for_backend("flood-999"),
            &r.for_backend("flood-998")
        ));
    }
}
