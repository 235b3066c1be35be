//! The ground truth: what the generated workload says every metric of `docs/metrics.md` must be,
//! recorded while the messages are generated (only the messages actually handed out count) and
//! answerable for any window, bucket and filter afterwards.
//!
//! It stays compact: one summary per flow run (ids, times and final state, not its events), and
//! counts of events, task runs entering terminal states and log lines per (tenant, flow /
//! deployment / work pool / tags combination, key, time slot of `resolution_secs`). Flow-run
//! metrics are exact for any window; counted metrics are exact for windows whose bounds are
//! multiples of the resolution (`metrics` refuses other windows rather than guess).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure};
use chrono::{DateTime, TimeZone as _, Utc};
use flowhouse_schema::Tenant;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::workload::catalog::Entity;
use crate::workload::states::{State, StateType};

/// The flow / deployment / work pool / tags a run has, as indexes into its tenant's lists.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dims {
    pub flow: u16,
    pub deployment: Option<u16>,
    pub work_pool: Option<u16>,
    pub tags: Vec<u16>,
}

/// What the metrics need to know about one flow run. Times are microseconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRunSummary {
    pub id: Uuid,
    pub dims: u32,
    /// Last terminal state (by time) and its time.
    pub final_state: Option<State>,
    pub end_us: Option<i64>,
    /// First RUNNING-type state.
    pub start_us: Option<i64>,
    /// Earliest `scheduled_time` of a SCHEDULED-type state.
    pub expected_start_us: Option<i64>,
    /// First `Late` state.
    pub late_at_us: Option<i64>,
}

/// Counts per (dims, key, slot), serialized as `[dims, key, slot, count]` rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotCounts(pub HashMap<(u32, u16, i64), u64>);

impl SlotCounts {
    pub fn add(&mut self, dims: u32, key: u16, slot: i64) {
        *self.0.entry((dims, key, slot)).or_default() += 1;
    }
}

impl Serialize for SlotCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut rows: Vec<(u32, u16, i64, u64)> =
            self.0.iter().map(|(&(d, k, s), &c)| (d, k, s, c)).collect();
        rows.sort_unstable();
        rows.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SlotCounts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rows = Vec::<(u32, u16, i64, u64)>::deserialize(deserializer)?;
        Ok(SlotCounts(
            rows.into_iter()
                .map(|(d, k, s, c)| ((d, k, s), c))
                .collect(),
        ))
    }
}

/// One tenant's truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantTruth {
    pub tenant: Tenant,
    pub flows: Vec<Entity>,
    pub deployments: Vec<Entity>,
    pub work_pools: Vec<Entity>,
    pub tags: Vec<String>,
    /// Distinct events (a duplicate sent again is not counted), log lines, duplicates sent.
    pub events: u64,
    pub logs: u64,
    pub duplicates_sent: u64,
    pub events_by_name: BTreeMap<String, u64>,
    pub dims: Vec<Dims>,
    pub flow_runs: Vec<FlowRunSummary>,
    /// Event names, the keys of `event_slots`.
    pub event_names: Vec<String>,
    pub event_slots: SlotCounts,
    /// Key: the terminal state type (index in [`StateType::ALL`]).
    pub task_terminal_slots: SlotCounts,
    /// Key: the log level.
    pub log_slots: SlotCounts,
    #[serde(skip)]
    dims_index: HashMap<Dims, u32>,
    #[serde(skip)]
    name_index: HashMap<String, u16>,
}

/// The ground truth of a whole workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub seed: u64,
    pub resolution_secs: u32,
    pub tenants: Vec<TenantTruth>,
}

/// Time series buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    pub fn micros(self) -> i64 {
        match self {
            Bucket::Hour => 3_600_000_000,
            Bucket::Day => 86_400_000_000,
        }
    }

    /// The start of the bucket holding `at_us`.
    pub fn floor(self, at_us: i64) -> i64 {
        at_us.div_euclid(self.micros()) * self.micros()
    }
}

/// Keep the runs that have all of these (ids without their `prefect.*.` prefix, tag names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub flow_id: Option<String>,
    pub deployment_id: Option<String>,
    pub work_pool_id: Option<String>,
    pub tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsQuery {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub bucket: Bucket,
    #[serde(default)]
    pub filter: Filter,
    /// N of the top-N lists: 5 by default, at most 100.
    pub top_n: usize,
}

impl MetricsQuery {
    pub fn new(since: DateTime<Utc>, until: DateTime<Utc>, bucket: Bucket) -> Self {
        Self {
            since,
            until,
            bucket,
            filter: Filter::default(),
            top_n: 5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StateCount {
    pub state_name: String,
    pub state_type: StateType,
    pub runs: u64,
}

/// One bucket of a gap-filled time series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point<T> {
    pub start: DateTime<Utc>,
    pub value: T,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowDurations {
    pub flow_id: String,
    pub flow_name: String,
    pub runs: u64,
    pub p50_secs: f64,
    pub p95_secs: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranked {
    pub id: String,
    pub name: String,
    pub failures: u64,
}

/// Every metric of `docs/metrics.md` for one tenant, window, bucket and filter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Runs whose end time is in the window, by final state; sorted by state name.
    pub flow_runs_by_final_state: Vec<StateCount>,
    pub flow_runs_total: u64,
    /// Per bucket of end time: runs by final state name.
    pub flow_runs_series: Vec<Point<BTreeMap<String, u64>>>,
    pub failure_rate: Option<f64>,
    pub late_runs: u64,
    pub late_runs_series: Vec<Point<u64>>,
    pub mean_lateness_secs: Option<f64>,
    /// Per flow with at least one duration, sorted by flow id.
    pub durations: Vec<FlowDurations>,
    pub top_failing_flows: Vec<Ranked>,
    pub top_failing_deployments: Vec<Ranked>,
    pub top_failing_work_pools: Vec<Ranked>,
    /// Distinct task runs that entered each terminal state type in the window (non-zero only).
    pub task_runs_by_state_type: BTreeMap<StateType, u64>,
    pub task_run_failures: u64,
    pub task_runs_series: Vec<Point<BTreeMap<StateType, u64>>>,
    /// Log lines by level (non-zero only).
    pub logs_by_level: BTreeMap<u8, u64>,
    pub logs_series: Vec<Point<BTreeMap<u8, u64>>>,
}

pub(crate) fn micros_to_time(at_us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(at_us).single().unwrap_or_default()
}

fn points<T>(buckets: &[i64], values: Vec<T>) -> Vec<Point<T>> {
    buckets
        .iter()
        .zip(values)
        .map(|(&start, value)| Point {
            start: micros_to_time(start),
            value,
        })
        .collect()
}

/// The nearest-rank p-quantile, `sorted[ceil(p·n) − 1]`, with p in per mille (500, 950) so that
/// the rank is computed exactly.
pub fn nearest_rank(sorted: &[i64], per_mille: u64) -> Option<i64> {
    let n = sorted.len() as u64;
    if n == 0 {
        return None;
    }
    let rank = (per_mille * n).div_ceil(1000).max(1);
    Some(sorted[(rank - 1) as usize])
}

impl TenantTruth {
    pub(crate) fn new(
        tenant: Tenant,
        flows: Vec<Entity>,
        deployments: Vec<Entity>,
        work_pools: Vec<Entity>,
        tags: Vec<String>,
    ) -> Self {
        Self {
            tenant,
            flows,
            deployments,
            work_pools,
            tags,
            events: 0,
            logs: 0,
            duplicates_sent: 0,
            events_by_name: BTreeMap::new(),
            dims: Vec::new(),
            flow_runs: Vec::new(),
            event_names: Vec::new(),
            event_slots: SlotCounts::default(),
            task_terminal_slots: SlotCounts::default(),
            log_slots: SlotCounts::default(),
            dims_index: HashMap::new(),
            name_index: HashMap::new(),
        }
    }

    pub(crate) fn intern_dims(&mut self, dims: Dims) -> u32 {
        if let Some(&index) = self.dims_index.get(&dims) {
            return index;
        }
        let index = self.dims.len() as u32;
        self.dims.push(dims.clone());
        self.dims_index.insert(dims, index);
        index
    }

    pub(crate) fn record_event(&mut self, name: &str, dims: u32, slot: i64) {
        self.events += 1;
        match self.events_by_name.get_mut(name) {
            Some(count) => *count += 1,
            None => {
                self.events_by_name.insert(name.to_string(), 1);
            }
        }
        let key = match self.name_index.get(name) {
            Some(&key) => key,
            None => {
                let key = self.event_names.len() as u16;
                self.event_names.push(name.to_string());
                self.name_index.insert(name.to_string(), key);
                key
            }
        };
        self.event_slots.add(dims, key, slot);
    }

    /// Updates a flow run's summary with one of its state events.
    pub(crate) fn record_flow_state(
        &mut self,
        run: usize,
        state: State,
        at_us: i64,
        scheduled_us: Option<i64>,
    ) {
        let summary = &mut self.flow_runs[run];
        let ty = state.state_type();
        if ty == StateType::Running && summary.start_us.is_none_or(|s| at_us < s) {
            summary.start_us = Some(at_us);
        }
        if ty == StateType::Scheduled
            && let Some(scheduled) = scheduled_us
            && summary.expected_start_us.is_none_or(|e| scheduled < e)
        {
            summary.expected_start_us = Some(scheduled);
        }
        if state == State::Late && summary.late_at_us.is_none_or(|l| at_us < l) {
            summary.late_at_us = Some(at_us);
        }
        if ty.is_terminal() && summary.end_us.is_none_or(|e| at_us >= e) {
            summary.final_state = Some(state);
            summary.end_us = Some(at_us);
        }
    }

    fn dims_match(&self, dims: u32, filter: &Filter) -> bool {
        let dims = &self.dims[dims as usize];
        let matches = |wanted: &Option<String>, have: Option<&Entity>| {
            wanted
                .as_ref()
                .is_none_or(|id| have.is_some_and(|e| e.id.to_string() == *id))
        };
        matches(&filter.flow_id, self.flows.get(usize::from(dims.flow)))
            && matches(
                &filter.deployment_id,
                dims.deployment.map(|d| &self.deployments[usize::from(d)]),
            )
            && matches(
                &filter.work_pool_id,
                dims.work_pool.map(|w| &self.work_pools[usize::from(w)]),
            )
            && filter
                .tag
                .as_ref()
                .is_none_or(|tag| dims.tags.iter().any(|&t| self.tags[usize::from(t)] == *tag))
    }

    /// Every metric for one window, bucket and filter.
    pub fn metrics(&self, query: &MetricsQuery, resolution_secs: u32) -> anyhow::Result<Metrics> {
        let resolution = i64::from(resolution_secs) * 1_000_000;
        let (since, until) = (
            query.since.timestamp_micros(),
            query.until.timestamp_micros(),
        );
        ensure!(since < until, "the window is empty");
        if since % resolution != 0 || until % resolution != 0 {
            bail!(
                "the ground truth counts events, task runs and logs per {resolution_secs} s: \
                 use a window whose bounds are multiples of that"
            );
        }
        ensure!(
            (1..=100).contains(&query.top_n),
            "top N must be within 1..=100"
        );
        let bucket = query.bucket;
        let buckets: Vec<i64> = {
            let mut starts = Vec::new();
            let mut at = bucket.floor(since);
            while at < until {
                starts.push(at);
                at += bucket.micros();
            }
            starts
        };
        let bucket_index = |at: i64| ((bucket.floor(at) - buckets[0]) / bucket.micros()) as usize;
        let in_window = |at: i64| since <= at && at < until;
        let matching: Vec<&FlowRunSummary> = self
            .flow_runs
            .iter()
            .filter(|run| self.dims_match(run.dims, &query.filter))
            .collect();

        // Flow runs by final state.
        let mut by_state: BTreeMap<State, u64> = BTreeMap::new();
        let mut by_bucket: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); buckets.len()];
        let mut failures = 0;
        let mut ended = 0;
        let mut durations: BTreeMap<u16, Vec<i64>> = BTreeMap::new();
        let mut failing: [BTreeMap<String, (String, u64)>; 3] = Default::default();
        for run in &matching {
            let (Some(state), Some(end)) = (run.final_state, run.end_us) else {
                continue;
            };
            if !in_window(end) {
                continue;
            }
            ended += 1;
            *by_state.entry(state).or_default() += 1;
            *by_bucket[bucket_index(end)]
                .entry(state.name().to_string())
                .or_default() += 1;
            let dims = &self.dims[run.dims as usize];
            if let Some(start) = run.start_us {
                durations.entry(dims.flow).or_default().push(end - start);
            }
            if state.state_type().is_failure() {
                failures += 1;
                let groups = [
                    Some(&self.flows[usize::from(dims.flow)]),
                    dims.deployment.map(|d| &self.deployments[usize::from(d)]),
                    dims.work_pool.map(|w| &self.work_pools[usize::from(w)]),
                ];
                for (group, entity) in failing.iter_mut().zip(groups) {
                    if let Some(entity) = entity {
                        group
                            .entry(entity.id.to_string())
                            .or_insert_with(|| (entity.name.clone(), 0))
                            .1 += 1;
                    }
                }
            }
        }
        let mut flow_runs_by_final_state: Vec<StateCount> = by_state
            .iter()
            .map(|(state, &runs)| StateCount {
                state_name: state.name().to_string(),
                state_type: state.state_type(),
                runs,
            })
            .collect();
        flow_runs_by_final_state.sort_by(|a, b| a.state_name.cmp(&b.state_name));
        let top = |group: &BTreeMap<String, (String, u64)>| {
            let mut ranked: Vec<Ranked> = group
                .iter()
                .map(|(id, (name, failures))| Ranked {
                    id: id.clone(),
                    name: name.clone(),
                    failures: *failures,
                })
                .collect();
            ranked.sort_by(|a, b| b.failures.cmp(&a.failures).then_with(|| a.id.cmp(&b.id)));
            ranked.truncate(query.top_n);
            ranked
        };
        let [flows_failing, deployments_failing, pools_failing] = &failing;

        // Lateness.
        let mut late_series = vec![0u64; buckets.len()];
        let mut lateness_sum: i128 = 0;
        let mut lateness_runs: i128 = 0;
        for run in &matching {
            if let Some(late) = run.late_at_us.filter(|&at| in_window(at)) {
                late_series[bucket_index(late)] += 1;
            }
            if let (Some(start), Some(expected)) = (run.start_us, run.expected_start_us)
                && in_window(start)
            {
                lateness_sum += i128::from((start - expected).max(0));
                lateness_runs += 1;
            }
        }

        // Counted metrics.
        let mut task_totals: BTreeMap<StateType, u64> = BTreeMap::new();
        let mut task_series: Vec<BTreeMap<StateType, u64>> = vec![BTreeMap::new(); buckets.len()];
        for (&(dims, key, slot), &count) in &self.task_terminal_slots.0 {
            let at = slot * resolution;
            if in_window(at) && self.dims_match(dims, &query.filter) {
                let ty = StateType::ALL[usize::from(key)];
                *task_totals.entry(ty).or_default() += count;
                *task_series[bucket_index(at)].entry(ty).or_default() += count;
            }
        }
        let mut log_totals: BTreeMap<u8, u64> = BTreeMap::new();
        let mut log_series: Vec<BTreeMap<u8, u64>> = vec![BTreeMap::new(); buckets.len()];
        for (&(dims, level, slot), &count) in &self.log_slots.0 {
            let at = slot * resolution;
            if in_window(at) && self.dims_match(dims, &query.filter) {
                *log_totals.entry(level as u8).or_default() += count;
                *log_series[bucket_index(at)].entry(level as u8).or_default() += count;
            }
        }
        let task_run_failures = task_totals
            .iter()
            .filter(|(ty, _)| ty.is_failure())
            .map(|(_, n)| n)
            .sum();

        let mut durations: Vec<FlowDurations> = durations
            .into_iter()
            .map(|(flow, mut values)| {
                values.sort_unstable();
                let entity = &self.flows[usize::from(flow)];
                FlowDurations {
                    flow_id: entity.id.to_string(),
                    flow_name: entity.name.clone(),
                    runs: values.len() as u64,
                    p50_secs: nearest_rank(&values, 500).unwrap_or_default() as f64 / 1e6,
                    p95_secs: nearest_rank(&values, 950).unwrap_or_default() as f64 / 1e6,
                }
            })
            .collect();
        durations.sort_by(|a, b| a.flow_id.cmp(&b.flow_id));
        Ok(Metrics {
            flow_runs_by_final_state,
            flow_runs_total: ended,
            flow_runs_series: points(&buckets, by_bucket),
            failure_rate: (ended > 0).then(|| failures as f64 / ended as f64),
            late_runs: late_series.iter().sum(),
            late_runs_series: points(&buckets, late_series),
            mean_lateness_secs: (lateness_runs > 0)
                .then(|| (lateness_sum as f64) / (lateness_runs as f64) / 1e6),
            durations,
            top_failing_flows: top(flows_failing),
            top_failing_deployments: top(deployments_failing),
            top_failing_work_pools: top(pools_failing),
            task_runs_by_state_type: task_totals,
            task_run_failures,
            task_runs_series: points(&buckets, task_series),
            logs_by_level: log_totals,
            logs_series: points(&buckets, log_series),
        })
    }

    /// Distinct events in the window by name (bounds: multiples of the resolution).
    pub fn event_counts(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        filter: &Filter,
        resolution_secs: u32,
    ) -> anyhow::Result<BTreeMap<String, u64>> {
        let resolution = i64::from(resolution_secs) * 1_000_000;
        let (since, until) = (since.timestamp_micros(), until.timestamp_micros());
        ensure!(
            since % resolution == 0 && until % resolution == 0,
            "window bounds must be multiples of {resolution_secs} s"
        );
        let mut counts = BTreeMap::new();
        for (&(dims, key, slot), &count) in &self.event_slots.0 {
            let at = slot * resolution;
            if since <= at && at < until && self.dims_match(dims, filter) {
                *counts
                    .entry(self.event_names[usize::from(key)].clone())
                    .or_default() += count;
            }
        }
        Ok(counts)
    }
}

impl GroundTruth {
    pub fn tenant(&self, tenant: &Tenant) -> Option<&TenantTruth> {
        self.tenants.iter().find(|t| t.tenant == *tenant)
    }

    /// Every metric for one tenant.
    pub fn metrics(&self, tenant: &Tenant, query: &MetricsQuery) -> anyhow::Result<Metrics> {
        let Some(truth) = self.tenant(tenant) else {
            bail!("tenant {tenant} is not in this workload");
        };
        truth.metrics(query, self.resolution_secs)
    }

    /// Distinct events across tenants.
    pub fn events(&self) -> u64 {
        self.tenants.iter().map(|t| t.events).sum()
    }

    pub fn logs(&self) -> u64 {
        self.tenants.iter().map(|t| t.logs).sum()
    }

    pub fn flow_runs(&self) -> u64 {
        self.tenants.iter().map(|t| t.flow_runs.len() as u64).sum()
    }

    /// The resolution's slot of a time.
    pub(crate) fn slot(resolution_secs: u32, at_us: i64) -> i64 {
        at_us.div_euclid(i64::from(resolution_secs) * 1_000_000)
    }
}
