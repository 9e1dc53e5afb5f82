//! Summaries of a set of measurements: min, nearest-rank percentiles, max.

use std::time::Duration;

/// The distribution of one measurement over the runs that reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// How many runs the summary is over.
    pub count: usize,
    /// The fastest run.
    pub min: Duration,
    /// The median (nearest rank).
    pub p50: Duration,
    /// The 90th percentile (nearest rank).
    pub p90: Duration,
    /// The 99th percentile (nearest rank): the maximum unless there are 100 runs or more.
    pub p99: Duration,
    /// The slowest run.
    pub max: Duration,
}

impl Summary {
    /// Summarises `values`; `None` when there are none.
    pub fn of(values: &[Duration]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        Some(Self {
            count: sorted.len(),
            min: *sorted.first()?,
            p50: percentile(&sorted, 50.0)?,
            p90: percentile(&sorted, 90.0)?,
            p99: percentile(&sorted, 99.0)?,
            max: *sorted.last()?,
        })
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `sorted`: the smallest value that at least
/// p percent of the values are less than or equal to. No interpolation, so it is always a value
/// that was measured.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Milliseconds as a float, the unit every report uses.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn nearest_rank_picks_a_measured_value() {
        // The textbook example: 15, 20, 35, 40, 50 has p30 = 20, p40 = 20, p50 = 35, p100 = 50.
        let sorted = [15, 20, 35, 40, 50];

        assert_eq!(percentile(&sorted, 30.0), Some(20));
        assert_eq!(percentile(&sorted, 40.0), Some(20));
        assert_eq!(percentile(&sorted, 50.0), Some(35));
        assert_eq!(percentile(&sorted, 100.0), Some(50));
    }

    #[test]
    fn p99_of_fewer_than_100_runs_is_the_maximum() {
        let sorted: Vec<u32> = (1..=10).collect();

        assert_eq!(percentile(&sorted, 99.0), Some(10));
        assert_eq!(percentile(&sorted, 90.0), Some(9));
    }

    #[test]
    fn p99_of_200_runs_leaves_out_the_two_slowest() {
        let sorted: Vec<u32> = (1..=200).collect();

        assert_eq!(percentile(&sorted, 99.0), Some(198));
    }

    #[test]
    fn percentiles_out_of_range_or_of_nothing_are_none() {
        assert_eq!(percentile::<u32>(&[], 50.0), None);
        assert_eq!(percentile(&[1], 0.0), None);
        assert_eq!(percentile(&[1], 101.0), None);
    }

    #[test]
    fn summary_sorts_its_input() {
        let summary = Summary::of(&millis(&[30, 10, 20])).unwrap();

        assert_eq!(summary.count, 3);
        assert_eq!(summary.min, Duration::from_millis(10));
        assert_eq!(summary.p50, Duration::from_millis(20));
        assert_eq!(summary.max, Duration::from_millis(30));
    }

    #[test]
    fn summary_of_nothing_is_none() {
        assert_eq!(Summary::of(&[]), None);
    }
}
