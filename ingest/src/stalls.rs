//! Partitions held up by a permanent ClickHouse error (see [`crate::errors`]): they wait, since
//! exactly once forbids skipping a batch, and this says so where an operator looks: `/readyz`
//! (component `stalled_partitions`, with the error and what to do), the gauge
//! `flowhouse_ingest_stalled_partitions`, and the log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flowhouse_service::admin::Readiness;

use crate::telemetry;

/// The readiness component naming stalled partitions.
pub const COMPONENT: &str = "stalled_partitions";

/// Stalled partitions and why, shared by every flush of the process.
#[derive(Clone)]
pub struct Stalls {
    stalled: Arc<Mutex<BTreeMap<String, String>>>,
    readiness: Readiness,
}

impl Stalls {
    /// Registers the component as ready: nothing is stalled yet.
    pub fn new(readiness: Readiness) -> Self {
        readiness.ready(COMPONENT);
        Self {
            stalled: Arc::default(),
            readiness,
        }
    }

    /// `who` (a partition, `topic/partition`) waits because of `reason`.
    pub fn stall(&self, who: &str, reason: String) {
        let mut stalled = self.lock();
        stalled.insert(who.to_string(), reason);
        self.report(&stalled);
    }

    /// `who` moves again, or is no longer this process's.
    pub fn clear(&self, who: &str) {
        let mut stalled = self.lock();
        if stalled.remove(who).is_some() {
            self.report(&stalled);
        }
    }

    fn report(&self, stalled: &BTreeMap<String, String>) {
        metrics::gauge!(telemetry::STALLED_PARTITIONS).set(stalled.len() as f64);
        if stalled.is_empty() {
            self.readiness.ready(COMPONENT);
            return;
        }
        let who: Vec<&str> = stalled.keys().map(String::as_str).collect();
        // One reason is enough to act on: they almost always share it (one table, one schema).
        let reason = stalled.values().next().expect("not empty");
        self.readiness.not_ready(
            COMPONENT,
            format!(
                "{} stalled, waiting without losing anything: {reason}",
                who.join(", ")
            ),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.stalled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_the_stalled_partitions_until_they_all_move() {
        let readiness = Readiness::default();
        let stalls = Stalls::new(readiness.clone());
        assert!(readiness.is_ready());
        stalls.stall("events/0", "UNKNOWN_TABLE: run `flowhouse migrate`".into());
        stalls.stall("events/2", "UNKNOWN_TABLE: run `flowhouse migrate`".into());
        assert!(!readiness.is_ready());
        stalls.clear("events/0");
        assert!(!readiness.is_ready(), "events/2 still waits");
        stalls.clear("events/1");
        stalls.clear("events/2");
        assert!(readiness.is_ready());
    }
}
