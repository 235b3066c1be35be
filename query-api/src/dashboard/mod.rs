//! The dashboard metrics: `GET .../metrics/{flow-runs|late-runs|durations|top-failing|task-runs|logs}`.
//!
//! Query parameters: `since`, `until` (RFC 3339; default: the 7 days ending with the current
//! bucket), `bucket` (`hour` | `day`), and the run filters `flow`, `deployment`, `work_pool`,
//! `tag`, each repeatable (values of one filter are alternatives, filters combine with AND).
//! `top-failing` also takes `by` (`flow` | `deployment` | `work-pool`) and `limit` (default 5,
//! at most 100). Unknown parameters are refused, so a typo never silently widens a query.

// utoipa's `path` macro expands `IntoParams` types with a full path.
#![allow(unused_qualifications)]

pub mod queries;

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Reader;
use crate::error::ApiError;
use crate::request::query_pairs;
use crate::window::{self, Bucket, Window, as_rfc3339};
use crate::{AppState, cached_json};
use queries::{Group, is_failure};

const MAX_FILTER_VALUES: usize = 100;
const MAX_FILTER_CHARS: usize = 1024;

/// Which runs a metric counts. Sorted and deduplicated, so equivalent requests share a cache key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, ToSchema)]
pub struct RunFilters {
    pub flow: Vec<String>,
    pub deployment: Vec<String>,
    pub work_pool: Vec<String>,
    pub tag: Vec<String>,
}

impl RunFilters {
    pub fn is_empty(&self) -> bool {
        self.flow.is_empty()
            && self.deployment.is_empty()
            && self.work_pool.is_empty()
            && self.tag.is_empty()
    }
}

/// Documentation of the query parameters (they are parsed by [`parse`]).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct MetricQuery {
    /// Window start, inclusive (RFC 3339). Default: `until` − 7 days.
    since: Option<String>,
    /// Window end, exclusive (RFC 3339). Default: the end of the current bucket.
    until: Option<String>,
    /// `hour` (default) or `day`.
    bucket: Option<String>,
    /// Flow id (without `prefect.flow.`); repeatable.
    flow: Option<Vec<String>>,
    /// Deployment id; repeatable.
    deployment: Option<Vec<String>>,
    /// Work pool id; repeatable.
    work_pool: Option<Vec<String>>,
    /// Tag (without `prefect.tag.`); repeatable.
    tag: Option<Vec<String>>,
}

/// Extra parameters of `top-failing`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TopFailingQuery {
    /// `flow` (default), `deployment` or `work-pool`.
    by: Option<String>,
    /// How many, 1..=100 (default 5).
    limit: Option<u32>,
}

/// A parsed, validated and normalized metric request.
#[derive(Clone, Debug, Serialize)]
pub struct MetricParams {
    pub window: Window,
    pub bucket: Bucket,
    pub filters: RunFilters,
    pub by: Group,
    pub limit: u64,
}

impl MetricParams {
    /// One entry per bucket of the window, gap-filled: `make` gets each bucket's start and what
    /// `by_bucket` holds for it (keyed by bucket number, `start / width`), if anything.
    fn gap_filled<T, B>(
        &self,
        by_bucket: &BTreeMap<i64, T>,
        make: impl Fn(i64, Option<&T>) -> B,
    ) -> Vec<B> {
        let width = self.bucket.micros();
        self.window
            .bucket_starts(self.bucket)
            .into_iter()
            .map(|start| make(start, by_bucket.get(&(start / width))))
            .collect()
    }
}

fn parse(query: Option<&str>, state: &AppState, extra: &[&str]) -> Result<MetricParams, ApiError> {
    const COMMON: &[&str] = &[
        "since",
        "until",
        "bucket",
        "flow",
        "deployment",
        "work_pool",
        "tag",
    ];
    let (mut since, mut until, mut bucket) = (None, None, Bucket::Hour);
    let mut filters = RunFilters::default();
    let (mut by, mut limit) = (Group::Flow, 5u64);
    for (key, value) in query_pairs(query)? {
        if !COMMON.contains(&key.as_str()) && !extra.contains(&key.as_str()) {
            let mut known: Vec<&str> = COMMON.to_vec();
            known.extend(extra);
            return Err(ApiError::bad_request(format!(
                "unknown query parameter `{key}`; this route takes {}",
                known.join(", ")
            )));
        }
        match key.as_str() {
            "since" => since = Some(window::parse_time("since", &value)?),
            "until" => until = Some(window::parse_time("until", &value)?),
            "bucket" => bucket = Bucket::parse(&value)?,
            "flow" | "deployment" | "work_pool" | "tag" => {
                if value.is_empty() || value.chars().count() > MAX_FILTER_CHARS {
                    return Err(ApiError::bad_request(format!(
                        "{key} must be 1 to {MAX_FILTER_CHARS} characters long"
                    )));
                }
                let list = match key.as_str() {
                    "flow" => &mut filters.flow,
                    "deployment" => &mut filters.deployment,
                    "work_pool" => &mut filters.work_pool,
                    _ => &mut filters.tag,
                };
                list.push(value);
                if list.len() > MAX_FILTER_VALUES {
                    return Err(ApiError::bad_request(format!(
                        "at most {MAX_FILTER_VALUES} values of {key}"
                    )));
                }
            }
            "by" => {
                by = match value.as_str() {
                    "flow" => Group::Flow,
                    "deployment" => Group::Deployment,
                    "work-pool" | "work_pool" => Group::WorkPool,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "by must be `flow`, `deployment` or `work-pool`, not `{other}`"
                        )));
                    }
                }
            }
            "limit" => {
                limit = value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("limit must be an integer from 1 to 100")
                    })?;
            }
            _ => {}
        }
    }
    for list in [
        &mut filters.flow,
        &mut filters.deployment,
        &mut filters.work_pool,
        &mut filters.tag,
    ] {
        list.sort();
        list.dedup();
    }
    let window = window::resolve(since, until, bucket, state.settings.max_window_micros())?;
    Ok(MetricParams {
        window,
        bucket,
        filters,
        by,
        limit,
    })
}

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
}

impl WindowOut {
    fn of(params: &MetricParams) -> Self {
        Self {
            since: params.window.since,
            until: params.window.until,
            bucket: params.bucket,
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

async fn serve<T, F>(
    state: &AppState,
    tenant: flowhouse_schema::Tenant,
    route: &'static str,
    params: &MetricParams,
    method: &Method,
    headers: &HeaderMap,
    compute: F,
) -> Result<Response, ApiError>
where
    T: Serialize,
    F: Future<Output = Result<T, ApiError>> + Send,
{
    let key = serde_json::to_string(params).map_err(|_| ApiError::Internal)?;
    let ttl = state.cache.ttl_for(params.window.until, params.bucket);
    cached_json(state, tenant, route, key, ttl, method, headers, compute).await
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/flow-runs",
    params(("account_id" = String, Path), ("workspace_id" = String, Path), MetricQuery),
    responses((status = 200, body = FlowRunsResponse), (status = 400, description = "invalid parameters"),
              (status = 401), (status = 403)),
    security(("bearer" = [])), tag = "metrics")]
pub async fn flow_runs(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = parse(query.as_deref(), &state, &[])?;
    serve(&state, tenant, "flow_runs", &p, &method, &headers, async {
        let rows =
            queries::flow_runs_by_state(&state.db, tenant, &p.window, p.bucket, &p.filters).await?;
        let mut totals: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut buckets: BTreeMap<i64, BTreeMap<(String, String), u64>> = BTreeMap::new();
        for row in rows {
            let key = (row.state_type, row.state_name);
            *totals.entry(key.clone()).or_default() += row.runs;
            *buckets
                .entry(row.bucket)
                .or_default()
                .entry(key)
                .or_default() += row.runs;
        }
        let counts = |map: &BTreeMap<(String, String), u64>| -> Vec<StateCount> {
            map.iter()
                .map(|((state_type, state_name), count)| StateCount {
                    state_type: state_type.clone(),
                    state_name: state_name.clone(),
                    count: *count,
                })
                .collect()
        };
        let total = totals.values().sum();
        let failures = totals
            .iter()
            .filter(|((state_type, _), _)| is_failure(state_type))
            .map(|(_, count)| count)
            .sum();
        let series = p.gap_filled(&buckets, |start, bucket| {
            let by_state = bucket.map(counts).unwrap_or_default();
            StateBucket {
                start,
                total: by_state.iter().map(|c| c.count).sum(),
                by_state,
            }
        });
        Ok(FlowRunsResponse {
            window: WindowOut::of(&p),
            filters: p.filters.clone(),
            total,
            failures,
            failure_rate: (total > 0).then(|| failures as f64 / total as f64),
            by_state: counts(&totals),
            series,
        })
    })
    .await
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/late-runs",
    params(("account_id" = String, Path), ("workspace_id" = String, Path), MetricQuery),
    responses((status = 200, body = LateRunsResponse), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])), tag = "metrics")]
pub async fn late_runs(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = parse(query.as_deref(), &state, &[])?;
    serve(&state, tenant, "late_runs", &p, &method, &headers, async {
        let (late, lateness) = futures::try_join!(
            queries::late_runs(&state.db, tenant, &p.window, p.bucket, &p.filters),
            queries::lateness(&state.db, tenant, &p.window, &p.filters),
        )?;
        let by_bucket: BTreeMap<i64, u64> = late.iter().map(|r| (r.bucket, r.runs)).collect();
        Ok(LateRunsResponse {
            window: WindowOut::of(&p),
            filters: p.filters.clone(),
            late_runs: late.iter().map(|r| r.runs).sum(),
            series: p.gap_filled(&by_bucket, |start, count| CountBucket {
                start,
                count: count.copied().unwrap_or(0),
            }),
            mean_lateness_seconds: mean_seconds(lateness.lateness_micros, lateness.runs),
            lateness_runs: lateness.runs,
        })
    })
    .await
}

/// `sum / n` in seconds, from integer microseconds, computed one way everywhere (the tests
/// compute their expectations with the same expression).
pub fn mean_seconds(sum_micros: i64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum_micros as f64 / n as f64 / 1e6)
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/durations",
    params(("account_id" = String, Path), ("workspace_id" = String, Path), MetricQuery),
    responses((status = 200, body = DurationsResponse), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])), tag = "metrics")]
pub async fn durations(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = parse(query.as_deref(), &state, &[])?;
    let cap = state.settings.max_result_rows;
    serve(&state, tenant, "durations", &p, &method, &headers, async {
        let mut rows =
            queries::durations(&state.db, tenant, &p.window, &p.filters, cap + 1).await?;
        let truncated = rows.len() as u64 > cap;
        rows.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
        Ok(DurationsResponse {
            window: WindowOut::of(&p),
            filters: p.filters.clone(),
            flows: rows
                .into_iter()
                .map(|r| FlowDuration {
                    flow_id: r.flow,
                    flow_name: r.name,
                    runs: r.runs,
                    p50_seconds: r.p50 as f64 / 1e6,
                    p95_seconds: r.p95 as f64 / 1e6,
                })
                .collect(),
            truncated,
        })
    })
    .await
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/top-failing",
    params(("account_id" = String, Path), ("workspace_id" = String, Path), MetricQuery, TopFailingQuery),
    responses((status = 200, body = TopFailingResponse), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])), tag = "metrics")]
pub async fn top_failing(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = parse(query.as_deref(), &state, &["by", "limit"])?;
    serve(
        &state,
        tenant,
        "top_failing",
        &p,
        &method,
        &headers,
        async {
            let rows =
                queries::top_failing(&state.db, tenant, &p.window, &p.filters, p.by, p.limit)
                    .await?;
            Ok(TopFailingResponse {
                window: WindowOut::of(&p),
                filters: p.filters.clone(),
                by: p.by,
                items: rows
                    .into_iter()
                    .map(|r| Failing {
                        id: r.id,
                        name: r.name,
                        failures: r.failures,
                    })
                    .collect(),
            })
        },
    )
    .await
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/task-runs",
    params(("account_id" = String, Path), ("workspace_id" = String, Path), MetricQuery),
    responses((status = 200, body = TaskRunsResponse), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])), tag = "metrics")]
pub async fn task_runs(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = parse(query.as_deref(), &state, &[])?;
    serve(&state, tenant, "task_runs", &p, &method, &headers, async {
        let rows = queries::task_runs(&state.db, tenant, &p.window, p.bucket, &p.filters).await?;
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        let mut buckets: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
        for row in rows {
            if row.total_row == 1 {
                totals.insert(row.state_type, row.runs);
            } else {
                buckets
                    .entry(row.bucket)
                    .or_default()
                    .insert(row.state_type, row.runs);
            }
        }
        let counts = |map: &BTreeMap<String, u64>| -> Vec<TypeCount> {
            map.iter()
                .map(|(state_type, count)| TypeCount {
                    state_type: state_type.clone(),
                    count: *count,
                })
                .collect()
        };
        let failures = |map: &BTreeMap<String, u64>| -> u64 {
            map.iter()
                .filter(|(t, _)| is_failure(t))
                .map(|(_, c)| c)
                .sum()
        };
        let series = p.gap_filled(&buckets, |start, bucket| {
            let map = bucket.cloned().unwrap_or_default();
            TypeBucket {
                start,
                failures: failures(&map),
                by_state_type: counts(&map),
            }
        });
        Ok(TaskRunsResponse {
            window: WindowOut::of(&p),
            filters: p.filters.clone(),
            failures: failures(&totals),
            by_state_type: counts(&totals),
            series,
            from_raw_events: !p.filters.tag.is_empty(),
        })
    })
    .await
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/logs",
    params(("account_id" = String, Path), ("workspace_id" = String, Path), MetricQuery),
    responses((status = 200, body = LogsResponse), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])), tag = "metrics")]
pub async fn logs(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = parse(query.as_deref(), &state, &[])?;
    serve(&state, tenant, "logs", &p, &method, &headers, async {
        let rows = queries::log_counts(&state.db, tenant, &p.window, p.bucket, &p.filters).await?;
        let mut totals: BTreeMap<u8, u64> = BTreeMap::new();
        let mut buckets: BTreeMap<i64, BTreeMap<u8, u64>> = BTreeMap::new();
        for row in rows {
            *totals.entry(row.level).or_default() += row.lines;
            *buckets
                .entry(row.bucket)
                .or_default()
                .entry(row.level)
                .or_default() += row.lines;
        }
        let counts = |map: &BTreeMap<u8, u64>| -> Vec<LevelCount> {
            map.iter()
                .map(|(level, count)| LevelCount {
                    level: *level,
                    count: *count,
                })
                .collect()
        };
        let series = p.gap_filled(&buckets, |start, bucket| {
            let by_level = bucket.map(counts).unwrap_or_default();
            LevelBucket {
                start,
                total: by_level.iter().map(|c| c.count).sum(),
                by_level,
            }
        });
        Ok(LogsResponse {
            window: WindowOut::of(&p),
            filters: p.filters.clone(),
            total: totals.values().sum(),
            by_level: counts(&totals),
            series,
        })
    })
    .await
}
