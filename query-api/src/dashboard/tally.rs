//! Counting rows into a whole-window total and a per-bucket breakdown: the one loop behind the
//! flow-run, task-run and log cards.

use std::collections::BTreeMap;

/// Counts by key, over the whole window and per bucket number.
#[derive(Debug)]
pub struct Tally<K> {
    pub totals: BTreeMap<K, u64>,
    pub buckets: BTreeMap<i64, BTreeMap<K, u64>>,
}

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Self {
            totals: BTreeMap::new(),
            buckets: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Tally<K> {
    /// Adds `n` to `key` in `bucket` and in the total.
    pub fn add(&mut self, bucket: i64, key: K, n: u64) {
        *self.totals.entry(key.clone()).or_default() += n;
        self.add_to_bucket(bucket, key, n);
    }

    /// Adds `n` to `key` in `bucket` only (when totals come from their own rows).
    pub fn add_to_bucket(&mut self, bucket: i64, key: K, n: u64) {
        *self
            .buckets
            .entry(bucket)
            .or_default()
            .entry(key)
            .or_default() += n;
    }

    /// Adds `n` to `key` in the total only.
    pub fn add_to_total(&mut self, key: K, n: u64) {
        *self.totals.entry(key).or_default() += n;
    }

    pub fn total(&self) -> u64 {
        self.totals.values().sum()
    }
}

/// The counts of `map` whose key satisfies `keep`, summed.
pub fn sum_where<K>(map: &BTreeMap<K, u64>, keep: impl Fn(&K) -> bool) -> u64 {
    map.iter().filter(|(k, _)| keep(k)).map(|(_, n)| n).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_the_sum_of_buckets_when_added_together() {
        let mut tally = Tally::default();
        tally.add(1, "FAILED", 2);
        tally.add(1, "COMPLETED", 3);
        tally.add(2, "FAILED", 1);
        assert_eq!(tally.totals[&"FAILED"], 3);
        assert_eq!(tally.total(), 6);
        assert_eq!(tally.buckets[&1][&"COMPLETED"], 3);
        assert_eq!(sum_where(&tally.totals, |k| *k == "FAILED"), 3);
        tally.add_to_total("CRASHED", 4);
        tally.add_to_bucket(3, "CRASHED", 4);
        assert_eq!(tally.total(), 10);
        assert_eq!(tally.buckets.len(), 3);
    }
}
