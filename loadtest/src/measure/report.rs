//! The JSON report of a run: what was generated, how fast it went in, and (filled in by the
//! later stages) how fresh, how fast the queries were, and whether the answers were right.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::latency::LatencySummary;
use crate::drive::DriveStats;
use crate::run::baselines::Baselines;
use crate::run::rss::RssSummary;
use crate::truth::GroundTruth;
use crate::workload::WorkloadConfig;

/// What the workload held, from its ground truth.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSummary {
    pub seed: u64,
    pub tenants: usize,
    pub flow_runs: u64,
    pub events: u64,
    pub logs: u64,
    pub duplicates_sent: u64,
    pub events_by_name: BTreeMap<String, u64>,
}

impl WorkloadSummary {
    pub fn of(truth: &GroundTruth) -> Self {
        let mut events_by_name = BTreeMap::new();
        for tenant in &truth.tenants {
            for (name, count) in &tenant.events_by_name {
                *events_by_name.entry(name.clone()).or_default() += count;
            }
        }
        Self {
            seed: truth.seed,
            tenants: truth.tenants.len(),
            flow_runs: truth.flow_runs(),
            events: truth.events(),
            logs: truth.logs(),
            duplicates_sent: truth.tenants.iter().map(|t| t.duplicates_sent).sum(),
            events_by_name,
        }
    }
}

/// Percentiles of point samples (freshness), in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleSummary {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Series behind the plots, as `(seconds since start, value)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Messages acknowledged per second by the target (Kafka or the endpoint).
    pub produced_per_sec: Vec<(f64, f64)>,
    /// Rows visible in ClickHouse per second.
    pub ingested_per_sec: Vec<(f64, f64)>,
    /// Freshness samples: produce-to-visible milliseconds.
    pub freshness_ms: Vec<(f64, f64)>,
    /// Freshness samples: produce-to-dashboard-answer milliseconds.
    #[serde(default)]
    pub freshness_dashboard_ms: Vec<(f64, f64)>,
}

/// The figures a benchmark run is compared on, at the top of the report. Rates are items per
/// second on this machine, which is shared and noisy: each is read against a baseline measured
/// in the same run on the same data (the `*_vs_*` ratios). `docs/performance.md` explains each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    pub verified: bool,
    /// Live phase: messages (events and log lines) acknowledged by the target.
    pub events_sent: u64,
    /// Live phase: messages acknowledged by the target per second.
    pub produce_per_sec: f64,
    /// Live phase, end to end: messages visible in ClickHouse per second, from the first send
    /// until the last one was visible.
    pub events_per_sec: f64,
    /// `events_per_sec / produce_per_sec`: 1 when ingestion keeps up with what is sent.
    pub live_vs_produced: Option<f64>,
    /// Backlog phase: messages pre-loaded into the topics with ingest stopped.
    pub backlog_messages: Option<u64>,
    /// Backlog phase: ingest's drain rate, from its start until the backlog was all visible.
    pub backlog_drain_per_sec: Option<f64>,
    /// Baseline: the broker's consume-and-discard rate of the same backlog.
    pub broker_drain_per_sec: Option<f64>,
    /// Baseline: the engine's insert rate of the same rows, materialized views attached.
    pub raw_insert_per_sec: Option<f64>,
    pub backlog_drain_vs_broker: Option<f64>,
    pub backlog_drain_vs_raw_insert: Option<f64>,
    /// Produced to visible in ClickHouse (marker events).
    pub freshness_p50_ms: Option<f64>,
    pub freshness_p99_ms: Option<f64>,
    /// Produced to counted in a dashboard answer, through the query API and its cache (marker
    /// log lines, the `logs` card).
    pub freshness_dashboard_p50_ms: Option<f64>,
    pub freshness_dashboard_p99_ms: Option<f64>,
    /// Dashboard latency during ingestion: each percentile of the worst route.
    pub dashboard_p50_ms: Option<f64>,
    pub dashboard_p95_ms: Option<f64>,
    pub dashboard_p99_ms: Option<f64>,
    pub dashboard_max_ms: Option<f64>,
    /// Reference: the same routes uncached on an idle engine, p50 of the worst route.
    pub uncached_idle_p50_ms: Option<f64>,
    /// Reference: the dashboard questions as scans of the raw events and logs, p50.
    pub raw_scan_p50_ms: Option<f64>,
    pub cache_hit_rate: Option<f64>,
    /// CPU microseconds per message of each process on the message path, live phase.
    pub cpu_us_per_msg: BTreeMap<String, f64>,
    /// Peak resident set size (`VmHWM`) per service, MB.
    pub peak_rss_mb: BTreeMap<String, f64>,
}

/// The backlog phase: pre-loaded with ingest stopped, then drained.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BacklogSummary {
    pub messages: u64,
    /// Ingest from its start until everything was visible.
    pub drain: crate::run::baselines::Rate,
    /// Ingest's CPU microseconds per backlog message.
    pub cpu_us_per_msg: BTreeMap<String, f64>,
}

/// What the simulated dashboards did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DashboardSummary {
    pub users: u32,
    pub refresh_secs: f64,
    pub requests: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `loadtest run` only; absent from a `drive` report.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<Headline>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub config: WorkloadConfig,
    pub workload: WorkloadSummary,
    pub produce: Option<DriveStats>,
    /// Query latency per route.
    pub query_latency: BTreeMap<String, LatencySummary>,
    pub freshness: Option<SampleSummary>,
    pub cache_hit_rate: Option<f64>,
    pub series: Series,
    /// `None` until a verification ran; then whether every answer matched the ground truth.
    pub verified: Option<bool>,
    pub mismatches: Vec<String>,
    /// Files written beside the report (plots, ground truth).
    pub files: Vec<String>,
    #[serde(default)]
    pub dashboards: Option<DashboardSummary>,
    #[serde(default)]
    pub baselines: Option<Baselines>,
    /// `--backlog` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<BacklogSummary>,
    /// Resident memory of the services under test, by name.
    #[serde(default)]
    pub services_rss: BTreeMap<String, RssSummary>,
    /// Failures by kind, every stage together (`produce: ...`, `dashboards: HTTP 503`...).
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// `loadtest run --chaos` only: the faults, their recovery times and the raw counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<crate::run::chaos::report::ChaosReport>,
}

impl Report {
    pub fn new(started_at: DateTime<Utc>, config: WorkloadConfig, truth: &GroundTruth) -> Self {
        Self {
            headline: None,
            started_at,
            finished_at: Utc::now(),
            config,
            workload: WorkloadSummary::of(truth),
            produce: None,
            query_latency: BTreeMap::new(),
            freshness: None,
            cache_hit_rate: None,
            series: Series::default(),
            verified: None,
            mismatches: Vec::new(),
            files: Vec::new(),
            dashboards: None,
            baselines: None,
            backlog: None,
            services_rss: BTreeMap::new(),
            errors: BTreeMap::new(),
            chaos: None,
        }
    }

    /// Pretty JSON.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_json_with(path, self, true)
    }
}

/// Writes compact JSON (e.g. a ground truth), creating the folder.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    write_json_with(path, value, false)
}

fn write_json_with(path: &Path, value: &impl Serialize, pretty: bool) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    if pretty {
        serde_json::to_writer_pretty(&mut out, value)
    } else {
        serde_json::to_writer(&mut out, value)
    }
    .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::flush(&mut out).with_context(|| format!("cannot write {}", path.display()))
}

/// Nearest-rank percentiles of samples (milliseconds).
pub fn summarize_samples(samples: &[f64]) -> Option<SampleSummary> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |per_mille: usize| sorted[(per_mille * sorted.len()).div_ceil(1000).max(1) - 1];
    Some(SampleSummary {
        samples: sorted.len() as u64,
        p50_ms: rank(500),
        p99_ms: rank(990),
        max_ms: sorted[sorted.len() - 1],
    })
}
