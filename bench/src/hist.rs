//! A latency histogram: exact below 128 µs, then 64 buckets per power of two (about 1.5 %
//! resolution). Worker processes send it sparse; the coordinator merges.

use serde::{Deserialize, Serialize};

/// Buckets: 128 exact ones, then 64 per octave up to 2^31 µs.
const BUCKETS: usize = 128 + 64 * 26;

/// Latency histogram in microseconds, with the exact maximum in nanoseconds.
#[derive(Clone, Debug)]
pub struct Hist {
    counts: Vec<u64>,
    count: u64,
    max_ns: u64,
}

/// The wire form of a [`Hist`]: non-empty buckets only.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sparse {
    /// (bucket, count) pairs.
    pub buckets: Vec<(u32, u64)>,
    /// Exact maximum in nanoseconds.
    pub max_ns: u64,
}

impl Default for Hist {
    fn default() -> Hist {
        Hist {
            counts: vec![0; BUCKETS],
            count: 0,
            max_ns: 0,
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < 128 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize - 6;
    (e * 64 + (us >> e) as usize).min(BUCKETS - 1)
}

/// The middle of a bucket, in microseconds.
fn value(b: usize) -> f64 {
    if b < 128 {
        return b as f64 + 0.5;
    }
    let e = b / 64 - 1;
    let m = b - e * 64;
    ((m as u64) << e) as f64 + (1u64 << e) as f64 / 2.0
}

impl Hist {
    /// Record one latency.
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket(ns / 1000)] += 1;
        self.count += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The maximum, in nanoseconds.
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// The `q` quantile (0..=1) in nanoseconds; `None` when empty.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(((value(b) * 1000.0) as u64).min(self.max_ns));
            }
        }
        Some(self.max_ns)
    }

    /// The sparse wire form.
    pub fn to_sparse(&self) -> Sparse {
        Sparse {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(b, c)| (b as u32, *c))
                .collect(),
            max_ns: self.max_ns,
        }
    }

    /// Add a sparse histogram into this one.
    pub fn merge(&mut self, s: &Sparse) {
        for (b, c) in &s.buckets {
            if let Some(slot) = self.counts.get_mut(*b as usize) {
                *slot += c;
                self.count += c;
            }
        }
        self.max_ns = self.max_ns.max(s.max_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for us in 0..5_000_000u64 {
            let b = bucket(us);
            assert!(b >= last);
            last = b;
            let v = value(b);
            assert!(
                (v - us as f64).abs() <= (us as f64 * 0.016).max(0.5),
                "{us} {v}"
            );
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Hist::default();
        for i in 1..=1000u64 {
            h.record(i * 1000);
        }
        let p50 = h.quantile_ns(0.5).unwrap();
        assert!((490_000..=510_000).contains(&p50), "{p50}");
        assert_eq!(h.max_ns(), 1_000_000);
        let mut g = Hist::default();
        g.merge(&h.to_sparse());
        assert_eq!(g.count(), 1000);
        assert_eq!(g.quantile_ns(0.99), h.quantile_ns(0.99));
    }
}
