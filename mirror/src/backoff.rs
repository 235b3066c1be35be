//! Exponential backoff with full jitter: each wait is random in `[0, min(max, base·2^n)]`, so
//! that mirrors restarted together (or reconnecting after one Prefect restart) spread out.

use std::time::Duration;

use rand::Rng as _;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The ceiling of the next wait, before jitter.
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next wait (and one more attempt counted).
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // Never below a tenth of the ceiling: a zero wait in a tight failure loop helps no one.
        let low = ceiling / 10;
        rand::rng().random_range(low..=ceiling)
    }

    /// After a success: the next failure waits little again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_maximum_with_jitter_below_the_ceiling() {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let ceilings: Vec<u128> = (0..6)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let wait = backoff.next_wait();
                assert!(
                    wait <= ceiling && wait >= ceiling / 10,
                    "{wait:?} vs {ceiling:?}"
                );
                ceiling.as_millis()
            })
            .collect();
        assert_eq!(ceilings, [250, 500, 1000, 2000, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(250));
        for _ in 0..100 {
            backoff.next_wait();
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(2));
    }
}
