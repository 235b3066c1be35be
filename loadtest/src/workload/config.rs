//! What a workload is made of. Everything is derived from these values and the seed, so the same
//! configuration always yields the same messages, byte for byte.

use anyhow::ensure;
use chrono::{DateTime, Duration, DurationRound as _, Utc};
use serde::{Deserialize, Serialize};

/// Relative weights of the log levels of task logs (DEBUG, INFO, WARNING, ERROR, CRITICAL).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelMix {
    pub debug: f64,
    pub info: f64,
    pub warning: f64,
    pub error: f64,
    pub critical: f64,
}

impl Default for LevelMix {
    fn default() -> Self {
        Self {
            debug: 0.15,
            info: 0.65,
            warning: 0.12,
            error: 0.06,
            critical: 0.02,
        }
    }
}

impl LevelMix {
    /// `(level, weight)` pairs, Python's logging levels.
    pub fn weights(&self) -> [(u8, f64); 5] {
        [
            (10, self.debug),
            (20, self.info),
            (30, self.warning),
            (40, self.error),
            (50, self.critical),
        ]
    }
}

/// A workload: who, how much, when, and how often things go wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadConfig {
    pub seed: u64,
    /// Tenants (workspaces) in all, spread over accounts of `workspaces_per_account` each.
    pub tenants: u32,
    pub workspaces_per_account: u32,
    pub flows_per_tenant: u32,
    pub work_pools_per_tenant: u32,
    /// Distinct tag names a tenant uses (at most 16).
    pub tags_per_tenant: u32,
    /// Flow runs in all tenants together. A run's first event falls in `[start, end)`; its later
    /// events too, or they are not generated (the run is still going at `end`).
    pub runs: u64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Task runs per flow run (per attempt), 1..=200 in Prefect's typical range.
    pub min_tasks: u32,
    pub max_tasks: u32,
    /// Log lines per task run, besides the ones the engine writes (finished, failed, retry).
    pub min_logs_per_task: u32,
    pub max_logs_per_task: u32,
    pub level_mix: LevelMix,
    /// Probability that a flow run ends `Failed` (scaled per flow, some flows fail more).
    pub failure_rate: f64,
    /// Probability that a flow run ends `Crashed`.
    pub crash_rate: f64,
    /// Probability that a flow run ends `Cancelled`.
    pub cancel_rate: f64,
    /// Probability that a scheduled run turns `Late` before it starts.
    pub late_rate: f64,
    /// Probability that a run of a flow with retries configured retries at least once.
    pub retry_rate: f64,
    /// Probability that a task run fails and is retried (then succeeds unless it is the cause of
    /// its flow's failure).
    pub task_retry_rate: f64,
    /// Probability that a run of a flow that has deployments is run ad hoc (no deployment, no
    /// work pool, no `Scheduled` state).
    pub adhoc_rate: f64,
    /// Probability that an event is sent twice (same id), as a client retrying a batch would.
    pub duplicate_rate: f64,
    /// Time resolution of the ground truth's counts of events, task runs and logs, in seconds
    /// (a divisor of 3600). Their metrics are exact for windows whose bounds are multiples of it;
    /// flow-run metrics are exact for any window.
    pub truth_resolution_secs: u32,
}

impl WorkloadConfig {
    /// The default workload over the `days` days before `now` (rounded down to the second).
    pub fn past_days(seed: u64, days: i64, now: DateTime<Utc>) -> Self {
        let end = now.duration_trunc(Duration::seconds(1)).unwrap_or(now);
        Self::new(seed, end - Duration::days(days), end)
    }

    /// The default workload over `[start, end)`.
    pub fn new(seed: u64, start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        Self {
            seed,
            tenants: 4,
            workspaces_per_account: 2,
            flows_per_tenant: 12,
            work_pools_per_tenant: 3,
            tags_per_tenant: 8,
            runs: 200,
            start,
            end,
            min_tasks: 1,
            max_tasks: 200,
            min_logs_per_task: 0,
            max_logs_per_task: 4,
            level_mix: LevelMix::default(),
            failure_rate: 0.08,
            crash_rate: 0.02,
            cancel_rate: 0.02,
            late_rate: 0.10,
            retry_rate: 0.15,
            task_retry_rate: 0.03,
            adhoc_rate: 0.10,
            duplicate_rate: 0.0,
            truth_resolution_secs: 60,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.tenants >= 1, "a workload needs at least one tenant");
        ensure!(
            self.workspaces_per_account >= 1,
            "an account needs at least one workspace"
        );
        ensure!(
            (1..=1000).contains(&self.flows_per_tenant),
            "flows per tenant must be within 1..=1000"
        );
        ensure!(
            (1..=100).contains(&self.work_pools_per_tenant),
            "work pools per tenant must be within 1..=100"
        );
        ensure!(
            self.tags_per_tenant <= super::names::TAGS.len() as u32,
            "at most {} tags per tenant",
            super::names::TAGS.len()
        );
        ensure!(self.end > self.start, "the window is empty");
        ensure!(
            self.start >= flowhouse_schema::event::earliest_timestamp(),
            "the window starts before 2000"
        );
        ensure!(
            1 <= self.min_tasks && self.min_tasks <= self.max_tasks && self.max_tasks <= 1000,
            "tasks per run must satisfy 1 <= min <= max <= 1000"
        );
        ensure!(
            self.min_logs_per_task <= self.max_logs_per_task,
            "min logs per task exceeds max"
        );
        for (name, rate) in [
            ("failure rate", self.failure_rate),
            ("crash rate", self.crash_rate),
            ("cancel rate", self.cancel_rate),
            ("late rate", self.late_rate),
            ("retry rate", self.retry_rate),
            ("task retry rate", self.task_retry_rate),
            ("ad-hoc rate", self.adhoc_rate),
            ("duplicate rate", self.duplicate_rate),
        ] {
            ensure!(
                (0.0..=1.0).contains(&rate),
                "the {name} must be within 0..=1"
            );
        }
        ensure!(
            self.failure_rate + self.crash_rate + self.cancel_rate <= 1.0,
            "failure, crash and cancel rates add up to more than 1"
        );
        let weights = self.level_mix.weights();
        ensure!(
            weights.iter().all(|(_, w)| *w >= 0.0) && weights.iter().any(|(_, w)| *w > 0.0),
            "the log level mix needs non-negative weights, one of them positive"
        );
        ensure!(
            self.truth_resolution_secs >= 1 && 3600 % self.truth_resolution_secs == 0,
            "the ground truth's resolution must divide an hour"
        );
        Ok(())
    }

    /// Accounts needed for the tenants.
    pub fn accounts(&self) -> u32 {
        self.tenants.div_ceil(self.workspaces_per_account)
    }

    pub(crate) fn start_us(&self) -> i64 {
        self.start.timestamp_micros()
    }

    pub(crate) fn end_us(&self) -> i64 {
        self.end.timestamp_micros()
    }
}
