//! Time series sampled while a run goes: counts per second (throughput) and point samples
//! (freshness), both as `(seconds since start, value)`.

use std::sync::Mutex;
use std::time::Instant;

/// Counts per whole second since `start`, safe to bump from any thread.
#[derive(Debug)]
pub struct RateCounter {
    start: Instant,
    seconds: Mutex<Vec<u64>>,
}

impl RateCounter {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            seconds: Mutex::new(Vec::new()),
        }
    }

    pub fn add(&self, n: u64) {
        self.add_at(Instant::now(), n);
    }

    pub fn add_at(&self, at: Instant, n: u64) {
        let second = at.saturating_duration_since(self.start).as_secs() as usize;
        let mut seconds = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        if seconds.len() <= second {
            seconds.resize(second + 1, 0);
        }
        seconds[second] += n;
    }

    /// `(second, count in that second)`, one point per second, the last one included.
    pub fn points(&self) -> Vec<(f64, f64)> {
        let seconds = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        seconds
            .iter()
            .enumerate()
            .map(|(s, &n)| (s as f64, n as f64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counts_land_in_their_second() {
        let start = Instant::now();
        let counter = RateCounter::new(start);
        counter.add_at(start, 3);
        counter.add_at(start + Duration::from_millis(2500), 5);
        counter.add_at(start + Duration::from_millis(2900), 1);
        assert_eq!(counter.points(), vec![(0.0, 3.0), (1.0, 0.0), (2.0, 6.0)]);
    }
}
