//! The JSON report of a run: what was generated, how fast it went in, and (filled in by the
//! later stages) how fresh, how fast the queries were, and whether the answers were right.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::latency::LatencySummary;
use crate::drive::DriveStats;
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
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
}

impl Report {
    pub fn new(started_at: DateTime<Utc>, config: WorkloadConfig, truth: &GroundTruth) -> Self {
        Self {
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
