//! The cells metrics are counted in: each has one writer (the thread that owns it), which
//! updates it with a plain load and store — no locked instruction, no lock, no cache line
//! shared with another writer — and any thread may read it at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A monotonic count with one writer. A second writer would lose increments (never memory
/// safety): every counter lives in a structure owned by one thread.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Add `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down, with one writer.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicI64);

impl Gauge {
    /// Set the value.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }

    /// Add `d` (negative to take away).
    #[inline]
    pub fn add(&self, d: i64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(d), Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the latency buckets, in seconds (and `+Inf` after them): from 50 µs, a
/// publish answered in the same turn, to 10 s, a broker that went away.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A latency histogram with one writer: a count per bucket (not cumulative; the encoder sums
/// them), the sum in nanoseconds and the number of observations.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [Counter; LATENCY_BUCKETS.len() + 1],
    sum_nanos: Counter,
    count: Counter,
}

impl Histogram {
    /// Count one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].inc();
        self.sum_nanos
            .add(d.as_nanos().min(u64::MAX as u128) as u64);
        self.count.inc();
    }

    /// Add this histogram's observations to `into`.
    pub fn read_into(&self, into: &mut HistogramValue) {
        for (b, c) in into.buckets.iter_mut().zip(&self.buckets) {
            *b += c.get();
        }
        into.sum_secs += self.sum_nanos.get() as f64 / 1e9;
        into.count += self.count.get();
    }
}

/// A histogram as read at scrape time, summed over the threads that keep one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistogramValue {
    /// Observations per bucket of [`LATENCY_BUCKETS`] and `+Inf` (not cumulative).
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// The sum of the observations, in seconds.
    pub sum_secs: f64,
    /// The number of observations.
    pub count: u64,
}

impl HistogramValue {
    /// The value below which a share `q` (0..=1) of the observations fall, as the bucket's
    /// upper bound (an estimate: the bucket it falls in); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_secs(20));
        let mut v = HistogramValue::default();
        h.read_into(&mut v);
        assert_eq!(v.count, 3);
        assert_eq!(v.buckets[0], 1);
        assert_eq!(v.buckets[3], 1);
        assert_eq!(v.buckets[LATENCY_BUCKETS.len()], 1);
        assert!((v.sum_secs - 20.00034).abs() < 1e-9);
        assert_eq!(v.quantile(0.5), Some(0.0005));
        assert_eq!(v.quantile(1.0), Some(f64::INFINITY));
    }

    #[test]
    fn counters_and_gauges_add() {
        let c = Counter::default();
        c.inc();
        c.add(4);
        assert_eq!(c.get(), 5);
        let g = Gauge::default();
        g.add(3);
        g.add(-1);
        assert_eq!(g.get(), 2);
        g.set(7);
        assert_eq!(g.get(), 7);
    }
}
