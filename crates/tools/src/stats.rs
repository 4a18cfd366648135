//! Small statistics for reports: quantiles and latency summaries.

use std::time::Duration;

use serde::Serialize;

/// The q-quantile (0..=1) of sorted values, by the nearest-rank method on `len - 1`; `None` if
/// there are none.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted.get(rank).copied()
}

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Summarizes unsorted samples; all zero if there are none.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let ms = |q| quantile(&samples, q).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        Self {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: ms(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn quantiles_of_one_to_a_hundred() {
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&sorted, 0.0), Some(ms(1)));
        assert_eq!(quantile(&sorted, 0.5), Some(ms(51)));
        assert_eq!(quantile(&sorted, 0.99), Some(ms(99)));
        assert_eq!(quantile(&sorted, 1.0), Some(ms(100)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn a_summary_sorts_its_samples() {
        let summary = Latency::of(vec![ms(30), ms(10), ms(20)]);
        assert_eq!(summary.p50_ms, 20.0);
        assert_eq!(summary.max_ms, 30.0);
        assert_eq!(Latency::of(Vec::new()), Latency::default());
    }

    proptest::proptest! {
        #[test]
        fn quantiles_are_monotonic_and_within_range(
            mut values in proptest::collection::vec(0u64..10_000, 1..200),
            a in 0.0f64..1.0,
            b in 0.0f64..1.0,
        ) {
            values.sort_unstable();
            let sorted: Vec<Duration> = values.iter().copied().map(ms).collect();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let (x, y) = (quantile(&sorted, lo).unwrap(), quantile(&sorted, hi).unwrap());
            proptest::prop_assert!(x <= y);
            proptest::prop_assert!(sorted[0] <= x && y <= sorted[sorted.len() - 1]);
        }
    }
}
