//! The fault plan: which faults, in which order, at which point of the workload. Pure and
//! seeded, so that a chaos run that found something can be replayed with the same faults at
//! the same places (the timing of the machine still varies).

use serde::{Deserialize, Serialize};

use crate::workload::random::{self, Rng};
use rand::Rng as _;
use rand::seq::SliceRandom as _;

/// The random stream of the plan (the workload's own streams use small domain numbers).
const DOMAIN_CHAOS: u64 = 0xC4A0_5000;

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// kill -9 of one ingest instance, restarted at once (as a supervisor would).
    IngestKill,
    /// The local ClickHouse stopped and started again (`deploy/local/stack`).
    #[serde(rename = "clickhouse_restart")]
    ClickHouseRestart,
    /// The local broker stopped and started again.
    BrokerRestart,
    /// The endpoint stopped with SIGTERM (it finishes what it accepted) and started again.
    EndpointRestart,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::IngestKill => "ingest kill -9",
            FaultKind::ClickHouseRestart => "clickhouse restart",
            FaultKind::BrokerRestart => "broker restart",
            FaultKind::EndpointRestart => "endpoint restart",
        }
    }
}

/// One fault of the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedFault {
    pub kind: FaultKind,
    /// Which ingest instance (0-based), for a kill.
    pub instance: Option<usize>,
    /// Due once this share of the workload's messages has been handed to the driver.
    pub at_fraction: f64,
}

impl PlannedFault {
    /// `ingest-1`, `clickhouse`, `kafka`, `endpoint`.
    pub fn target(&self) -> String {
        match (self.kind, self.instance) {
            (FaultKind::IngestKill, Some(i)) => format!("ingest-{i}"),
            (FaultKind::IngestKill, None) => "ingest".into(),
            (FaultKind::ClickHouseRestart, _) => "clickhouse".into(),
            (FaultKind::BrokerRestart, _) => "kafka".into(),
            (FaultKind::EndpointRestart, _) => "endpoint".into(),
        }
    }
}

/// `ingest_kills` kills of random instances (each instance at least once when there are
/// enough kills) and one restart each of ClickHouse, the broker and the endpoint, in a random
/// order, at random points of the workload within `[from, to]` (shares of its messages), sorted.
pub fn plan(
    seed: u64,
    ingest_kills: u32,
    instances: usize,
    from: f64,
    to: f64,
) -> Vec<PlannedFault> {
    let mut rng: Rng = random::stream(seed, DOMAIN_CHAOS, 0);
    let instances = instances.max(1);
    let mut kills: Vec<usize> = (0..ingest_kills)
        .map(|_| rng.random_range(0..instances))
        .collect();
    // "Either instance": a plan that never kills one of them would not test the other's
    // takeover, so the first kills go one to each instance, then the order is shuffled.
    for (instance, kill) in kills.iter_mut().enumerate().take(instances) {
        *kill = instance;
    }
    let mut faults: Vec<(FaultKind, Option<usize>)> = kills
        .into_iter()
        .map(|i| (FaultKind::IngestKill, Some(i)))
        .chain([
            (FaultKind::ClickHouseRestart, None),
            (FaultKind::BrokerRestart, None),
            (FaultKind::EndpointRestart, None),
        ])
        .collect();
    faults.shuffle(&mut rng);
    let (from, to) = (from.clamp(0.0, 1.0), to.clamp(0.0, 1.0).max(from));
    let mut points: Vec<f64> = (0..faults.len())
        .map(|_| from + (to - from) * rng.random::<f64>())
        .collect();
    points.sort_by(f64::total_cmp);
    faults
        .into_iter()
        .zip(points)
        .map(|((kind, instance), at_fraction)| PlannedFault {
            kind,
            instance,
            at_fraction,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(plan: &[PlannedFault], kind: FaultKind) -> usize {
        plan.iter().filter(|f| f.kind == kind).count()
    }

    #[test]
    fn the_plan_holds_every_fault_asked_for() {
        let plan = plan(42, 10, 2, 0.1, 0.9);
        assert_eq!(plan.len(), 13);
        assert_eq!(count(&plan, FaultKind::IngestKill), 10);
        assert_eq!(count(&plan, FaultKind::ClickHouseRestart), 1);
        assert_eq!(count(&plan, FaultKind::BrokerRestart), 1);
        assert_eq!(count(&plan, FaultKind::EndpointRestart), 1);
        for instance in 0..2 {
            assert!(
                plan.iter().any(|f| f.instance == Some(instance)),
                "instance {instance} is never killed: {plan:?}"
            );
        }
        assert!(
            plan.iter()
                .all(|f| (f.kind == FaultKind::IngestKill) == f.instance.is_some())
        );
    }

    #[test]
    fn points_are_sorted_and_within_the_window() {
        for seed in 0..50 {
            let plan = plan(seed, 10, 2, 0.1, 0.8);
            assert!(
                plan.windows(2)
                    .all(|w| w[0].at_fraction <= w[1].at_fraction)
            );
            assert!(plan.iter().all(|f| (0.1..=0.8).contains(&f.at_fraction)));
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_plan_and_another_seed_another() {
        assert_eq!(plan(7, 10, 2, 0.1, 0.9), plan(7, 10, 2, 0.1, 0.9));
        assert_ne!(plan(7, 10, 2, 0.1, 0.9), plan(8, 10, 2, 0.1, 0.9));
    }

    #[test]
    fn with_fewer_kills_than_instances_every_kill_still_happens() {
        let plan = plan(1, 1, 2, 0.0, 1.0);
        assert_eq!(count(&plan, FaultKind::IngestKill), 1);
        assert_eq!(plan.len(), 4);
    }
}
