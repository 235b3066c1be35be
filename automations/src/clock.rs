//! The evaluator's clock, a parameter: production reads the system clock, tests step a
//! [`ManualClock`] so that a 20-minute scenario runs in seconds.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    pub fn set(&self, time: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = time;
    }

    pub fn advance(&self, by: Duration) -> DateTime<Utc> {
        let mut now = self.0.lock().expect("clock lock");
        *now += by;
        *now
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = Utc::now();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        assert_eq!(
            clock.advance(Duration::seconds(90)),
            start + Duration::seconds(90)
        );
        let shared = clock.clone();
        clock.advance(Duration::seconds(1));
        assert_eq!(shared.now(), start + Duration::seconds(91));
    }
}
