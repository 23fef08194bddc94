//! Histograms: bucket bounds, atomic counts, and snapshots with quantiles.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

/// Source-to-sink latency buckets (ns).
pub const LATENCY_NS: &[u64] = &[
    100 * US,
    250 * US,
    500 * US,
    MS,
    2 * MS + MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    1000 * MS,
    2500 * MS,
    5000 * MS,
    10_000 * MS,
    30_000 * MS,
    60_000 * MS,
];
/// Python call duration buckets (ns).
pub const CALL_NS: &[u64] = &[
    250,
    500,
    US,
    2 * US + US / 2,
    5 * US,
    10 * US,
    25 * US,
    50 * US,
    100 * US,
    250 * US,
    500 * US,
    MS,
    2 * MS + MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    100 * MS,
    1000 * MS,
];
/// Epoch duration buckets (ns).
pub const EPOCH_NS: &[u64] = &[
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    150 * MS,
    250 * MS,
    500 * MS,
    1000 * MS,
    2500 * MS,
    5000 * MS,
    10_000 * MS,
    60_000 * MS,
];
/// Batch size buckets (records).
pub const BATCH_RECORDS: &[u64] = &[1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000];

/// The bucket of `value`: the first bound at or above it (`le`), or the
/// overflow bucket.
pub(super) fn bucket_of(bounds: &[u64], value: u64) -> usize {
    bounds.partition_point(|&bound| bound < value)
}

/// A histogram in atomics: counts per bucket (not cumulative) and the sum,
/// in integer units (`scale` turns them into the exported unit).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    scale: f64,
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these bucket bounds.
    pub fn new(bounds: &'static [u64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            scale,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Durations in nanoseconds, exported in seconds.
    pub fn nanos(bounds: &'static [u64]) -> Histogram {
        Histogram::new(bounds, 1e-9)
    }

    /// Record one value.
    pub fn observe(&self, value: u64) {
        self.counts[bucket_of(self.bounds, value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Add counts gathered elsewhere (same bounds).
    pub fn add(&self, counts: &[u64], sum: u64) {
        for (total, &n) in self.counts.iter().zip(counts) {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.sum.fetch_add(sum, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            bounds: self.bounds.iter().map(|&b| b as f64 * self.scale).collect(),
            count: counts.iter().sum(),
            counts,
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.scale,
        }
    }
}

/// A histogram's values at one moment, in the exported unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Upper bounds of the buckets (the last bucket, +Inf, has none).
    pub bounds: Vec<f64>,
    /// Observations per bucket, not cumulative; one more than `bounds`.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl HistogramSnapshot {
    /// What was observed since `older` (a snapshot of the same histogram).
    pub fn since(&self, older: &HistogramSnapshot) -> HistogramSnapshot {
        if older.counts.len() != self.counts.len() {
            return self.clone();
        }
        let counts: Vec<u64> = self
            .counts
            .iter()
            .zip(&older.counts)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        HistogramSnapshot {
            bounds: self.bounds.clone(),
            count: counts.iter().sum(),
            counts,
            sum: (self.sum - older.sum).max(0.0),
        }
    }

    /// Add another histogram with the same bounds.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        if other.counts.len() != self.counts.len() {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The `q` quantile (0..1), interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does; None without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut seen = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let Some(&upper) = self.bounds.get(i) else {
                    // The overflow bucket: the largest bound is all we know.
                    return Some(lower);
                };
                let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            seen += n;
        }
        self.bounds.last().copied()
    }

    /// The mean observation; None without observations.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_bounds() {
        assert_eq!(bucket_of(&[1, 5, 10], 0), 0);
        assert_eq!(bucket_of(&[1, 5, 10], 1), 0);
        assert_eq!(bucket_of(&[1, 5, 10], 2), 1);
        assert_eq!(bucket_of(&[1, 5, 10], 10), 2);
        assert_eq!(bucket_of(&[1, 5, 10], 11), 3);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::new(&[10, 20, 40], 1.0);
        for v in [5, 15, 15, 35] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.sum, 70.0);
        assert_eq!(s.quantile(0.25), Some(10.0));
        assert_eq!(s.quantile(0.5), Some(15.0));
        assert_eq!(s.quantile(1.0), Some(40.0));
        let older = s.clone();
        h.observe(100);
        let delta = h.snapshot().since(&older);
        assert_eq!(delta.count, 1);
        assert_eq!(delta.quantile(0.5), Some(40.0));
    }
}
