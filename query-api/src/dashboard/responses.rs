//! The answers of the metric routes, as `/openapi.json` documents them.

use serde::Serialize;
use utoipa::ToSchema;

use super::params::{MetricParams, RunFilters};
use super::queries::Group;
use crate::window::{Bucket, as_rfc3339};

/// The window a metric answered, echoed so a dashboard can label its axis.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WindowOut {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub until: i64,
    pub bucket: Bucket,
    /// The time zone of day buckets (an IANA name).
    pub tz: String,
    /// When this answer was computed. A cached answer is served for a while after (the `Age`
    /// header says how long, at most the freshness plus `FLOWHOUSE_QUERY_CACHE_MAX_STALE`);
    /// it equals a fresh computation at this instant.
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub computed_at: i64,
}

impl WindowOut {
    /// The window of `params`, computed now.
    pub fn of(params: &MetricParams) -> Self {
        Self {
            since: params.window.since,
            until: params.window.until,
            bucket: params.bucket,
            tz: params.tz.name().to_string(),
            computed_at: crate::window::now_micros(),
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq, PartialOrd, Ord)]
pub struct StateCount {
    pub state_type: String,
    pub state_name: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StateBucket {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start: i64,
    pub total: u64,
    pub by_state: Vec<StateCount>,
}

/// Flow runs by final state: totals, failure rate and a gap-filled series by end time.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FlowRunsResponse {
    pub window: WindowOut,
    pub filters: RunFilters,
    /// Runs whose end time is in the window.
    pub total: u64,
    /// Those whose final state type is FAILED or CRASHED.
    pub failures: u64,
    /// `failures / total`; null when there are no runs.
    pub failure_rate: Option<f64>,
    pub by_state: Vec<StateCount>,
    pub series: Vec<StateBucket>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CountBucket {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start: i64,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LateRunsResponse {
    pub window: WindowOut,
    pub filters: RunFilters,
    /// Runs whose first `Late` event is in the window.
    pub late_runs: u64,
    pub series: Vec<CountBucket>,
    /// Mean of `max(0, start − expected start)` in seconds over runs that started in the window
    /// and have an expected start; null when there are none.
    pub mean_lateness_seconds: Option<f64>,
    /// How many runs the mean is over.
    pub lateness_runs: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FlowDuration {
    pub flow_id: String,
    pub flow_name: String,
    pub runs: u64,
    pub p50_seconds: f64,
    pub p95_seconds: f64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DurationsResponse {
    pub window: WindowOut,
    pub filters: RunFilters,
    /// By flow id.
    pub flows: Vec<FlowDuration>,
    /// True when more flows matched than the result cap; narrow the filters.
    pub truncated: bool,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Failing {
    pub id: String,
    pub name: String,
    /// `by=deployment` only: the name of the deployment's flow, so that two flows' deployments
    /// of the same name are told apart ("flow / deployment").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_name: Option<String>,
    pub failures: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TopFailingResponse {
    pub window: WindowOut,
    pub filters: RunFilters,
    pub by: Group,
    pub items: Vec<Failing>,
}

#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct TypeCount {
    pub state_type: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TypeBucket {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start: i64,
    pub failures: u64,
    pub by_state_type: Vec<TypeCount>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaskRunsResponse {
    pub window: WindowOut,
    pub filters: RunFilters,
    /// Distinct task runs that entered each terminal state type in the window.
    pub by_state_type: Vec<TypeCount>,
    /// FAILED + CRASHED.
    pub failures: u64,
    pub series: Vec<TypeBucket>,
    /// True when the answer came from raw events (a tag filter: the rollup has no tags).
    pub from_raw_events: bool,
}

#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct LevelCount {
    pub level: u8,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LevelBucket {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start: i64,
    pub total: u64,
    pub by_level: Vec<LevelCount>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LogsResponse {
    pub window: WindowOut,
    pub filters: RunFilters,
    pub total: u64,
    pub by_level: Vec<LevelCount>,
    pub series: Vec<LevelBucket>,
}
