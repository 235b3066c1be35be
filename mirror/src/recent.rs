//! Ids delivered recently, so that the overlapping backfills (every resync re-reads the safety
//! margin) do not send Kafka again what it already has. Only an optimization: Flowhouse keeps one
//! row per id anyway, and after a restart the set starts empty.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

pub struct Recent {
    ids: HashSet<Uuid>,
    order: VecDeque<(Instant, Uuid)>,
    keep: Duration,
    max: usize,
}

impl Recent {
    /// Remembers ids for `keep`, at most `max` of them (the oldest are forgotten first).
    pub fn new(keep: Duration, max: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            keep,
            max: max.max(1),
        }
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.ids.contains(id)
    }

    pub fn insert(&mut self, id: Uuid, now: Instant) {
        if self.ids.insert(id) {
            self.order.push_back((now, id));
        }
        while let Some(&(at, old)) = self.order.front() {
            if self.order.len() <= self.max && now.duration_since(at) <= self.keep {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&old);
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_by_age_and_by_count() {
        let start = Instant::now();
        let mut recent = Recent::new(Duration::from_secs(10), 3);
        for n in 0..3 {
            recent.insert(Uuid::from_u128(n), start);
        }
        assert!(recent.contains(&Uuid::from_u128(0)));
        recent.insert(Uuid::from_u128(3), start);
        assert!(!recent.contains(&Uuid::from_u128(0)), "over the count");
        assert_eq!(recent.len(), 3);
        recent.insert(Uuid::from_u128(4), start + Duration::from_secs(11));
        assert_eq!(recent.len(), 1, "the others are older than 10 s");
        assert!(recent.contains(&Uuid::from_u128(4)));
    }
}
