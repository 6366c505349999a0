//! Request latencies of a run: every sample kept (4 bytes each), sorted
//! once at the end for exact percentiles.

use std::time::Duration;

/// Latency samples in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    ns: Vec<u32>,
}

impl Latencies {
    /// Room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Latencies {
            ns: Vec::with_capacity(n),
        }
    }

    /// Records one (saturating at about 4.3 s).
    pub fn record(&mut self, d: Duration) {
        self.ns
            .push(u32::try_from(d.as_nanos()).unwrap_or(u32::MAX));
    }

    /// The summary.
    pub fn summary(mut self) -> Summary {
        self.ns.sort_unstable();
        let at = |q: f64| -> Duration {
            if self.ns.is_empty() {
                return Duration::ZERO;
            }
            let i = ((self.ns.len() as f64 - 1.0) * q).round() as usize;
            Duration::from_nanos(u64::from(self.ns[i.min(self.ns.len() - 1)]))
        };
        Summary {
            samples: self.ns.len() as u64,
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Percentiles of a run's latencies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Samples.
    pub samples: u64,
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The largest.
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_hundred() {
        let mut l = Latencies::with_capacity(100);
        for i in (1..=100u64).rev() {
            l.record(Duration::from_micros(i));
        }
        let s = l.summary();
        assert_eq!(s.samples, 100);
        assert_eq!(s.p50, Duration::from_micros(51));
        assert_eq!(s.p99, Duration::from_micros(99));
        assert_eq!(s.max, Duration::from_micros(100));
        assert_eq!(Latencies::default().summary(), Summary::default());
    }
}
