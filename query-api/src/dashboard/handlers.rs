//! The six metric handlers: parse the parameters ([`super::params`]), answer through the
//! cache from the rollups ([`super::queries`]), shape the answer ([`super::responses`]).

// utoipa's `path` macro expands `IntoParams` types with a full path.
#![allow(unused_qualifications)]

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use flowhouse_schema::Tenant;
use serde::Serialize;

use super::params::{MetricParams, MetricQuery, Takes, TopFailingQuery, parse};
use super::queries::{self, Group, is_failure};
use super::responses::*;
use super::tally::{Tally, sum_where};
use crate::auth::Reader;
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::{AppState, cached_json};
use flowhouse_service::openapi::WorkspacePath;

/// What every metric route takes: the reader's tenant, the raw query and the request's
/// conditional headers (for `If-None-Match`).
pub struct MetricRequest {
    tenant: Tenant,
    state: AppState,
    query: Option<String>,
    method: Method,
    headers: HeaderMap,
}

impl FromRequestParts<AppState> for MetricRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Reader(tenant) = Reader::from_request_parts(parts, state).await?;
        Ok(Self {
            tenant,
            state: state.clone(),
            query: parts.uri.query().map(str::to_owned),
            method: parts.method.clone(),
            headers: parts.headers.clone(),
        })
    }
}

impl MetricRequest {
    /// Parses the parameters `takes` names and answers `route` through the cache; `compute`
    /// gets its own state and parameters, since a stale answer's replacement is computed on a
    /// task of its own.
    async fn answer<T, F>(
        self,
        route: &'static str,
        takes: Takes,
        compute: impl FnOnce(AppState, Tenant, MetricParams) -> F,
    ) -> Result<Response, ApiError>
    where
        T: Serialize,
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let state = &self.state;
        let params = parse(
            self.query.as_deref(),
            takes,
            state.settings.max_window_micros(),
        )?;
        let key = serde_json::to_string(&params).map_err(|_| ApiError::Internal)?;
        let ttl = state.cache.ttl_for(params.window.until, params.bucket);
        let compute = compute(state.clone(), self.tenant, params);
        cached_json(
            state,
            self.tenant,
            route,
            key,
            ttl,
            &self.method,
            &self.headers,
            compute,
        )
        .await
    }
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/flow-runs",
    params(WorkspacePath, MetricQuery),
    responses((status = 200, body = FlowRunsResponse), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "metrics")]
pub async fn flow_runs(request: MetricRequest) -> Result<Response, ApiError> {
    request
        .answer(
            "flow_runs",
            Takes::Metric,
            move |state, tenant, p| async move {
                let rows =
                    queries::flow_runs_by_state(&state.db, tenant, &p.window, &p.axis, &p.filters)
                        .await?;
                let mut tally = Tally::default();
                for row in rows {
                    tally.add(row.bucket, (row.state_type, row.state_name), row.runs);
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
                let total = tally.total();
                let failures = sum_where(&tally.totals, |(state_type, _)| is_failure(state_type));
                let series = p.gap_filled(&tally.buckets, |start, bucket| {
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
                    by_state: counts(&tally.totals),
                    series,
                })
            },
        )
        .await
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/late-runs",
    params(WorkspacePath, MetricQuery),
    responses((status = 200, body = LateRunsResponse), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "metrics")]
pub async fn late_runs(request: MetricRequest) -> Result<Response, ApiError> {
    request
        .answer(
            "late_runs",
            Takes::Metric,
            move |state, tenant, p| async move {
                let (late, lateness) = futures::try_join!(
                    queries::late_runs(&state.db, tenant, &p.window, &p.axis, &p.filters),
                    queries::lateness(&state.db, tenant, &p.window, &p.filters),
                )?;
                let by_bucket: BTreeMap<i64, u64> =
                    late.iter().map(|r| (r.bucket, r.runs)).collect();
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
            },
        )
        .await
}

/// `sum / n` in seconds, from integer microseconds, computed one way everywhere (the tests
/// compute their expectations with the same expression).
pub fn mean_seconds(sum_micros: i64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum_micros as f64 / n as f64 / 1e6)
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/durations",
    params(WorkspacePath, MetricQuery),
    responses((status = 200, body = DurationsResponse), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "metrics")]
pub async fn durations(request: MetricRequest) -> Result<Response, ApiError> {
    let cap = request.state.settings.max_result_rows;
    request
        .answer(
            "durations",
            Takes::Metric,
            move |state, tenant, p| async move {
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
            },
        )
        .await
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/top-failing",
    params(WorkspacePath, MetricQuery, TopFailingQuery),
    responses((status = 200, body = TopFailingResponse), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "metrics")]
pub async fn top_failing(request: MetricRequest) -> Result<Response, ApiError> {
    request
        .answer(
            "top_failing",
            Takes::MetricAndTopFailing,
            move |state, tenant, p| async move {
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
                            flow_name: (p.by == Group::Deployment).then_some(r.flow_name),
                            failures: r.failures,
                        })
                        .collect(),
                })
            },
        )
        .await
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/task-runs",
    params(WorkspacePath, MetricQuery),
    responses((status = 200, body = TaskRunsResponse), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "metrics")]
pub async fn task_runs(request: MetricRequest) -> Result<Response, ApiError> {
    request
        .answer(
            "task_runs",
            Takes::Metric,
            move |state, tenant, p| async move {
                let rows =
                    queries::task_runs(&state.db, tenant, &p.window, &p.axis, &p.filters).await?;
                let mut tally = Tally::default();
                for row in rows {
                    if row.total_row == 1 {
                        tally.add_to_total(row.state_type, row.runs);
                    } else {
                        tally.add_to_bucket(row.bucket, row.state_type, row.runs);
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
                let failures = |map: &BTreeMap<String, u64>| sum_where(map, |t| is_failure(t));
                let series = p.gap_filled(&tally.buckets, |start, bucket| {
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
                    failures: failures(&tally.totals),
                    by_state_type: counts(&tally.totals),
                    series,
                    from_raw_events: !p.filters.tag.is_empty(),
                })
            },
        )
        .await
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/metrics/logs",
    params(WorkspacePath, MetricQuery),
    responses((status = 200, body = LogsResponse), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "metrics")]
pub async fn logs(request: MetricRequest) -> Result<Response, ApiError> {
    request
        .answer("logs", Takes::Metric, move |state, tenant, p| async move {
            let rows =
                queries::log_counts(&state.db, tenant, &p.window, &p.axis, &p.filters).await?;
            let mut tally = Tally::default();
            for row in rows {
                tally.add(row.bucket, row.level, row.lines);
            }
            let counts = |map: &BTreeMap<u8, u64>| -> Vec<LevelCount> {
                map.iter()
                    .map(|(level, count)| LevelCount {
                        level: *level,
                        count: *count,
                    })
                    .collect()
            };
            let series = p.gap_filled(&tally.buckets, |start, bucket| {
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
                total: tally.total(),
                by_level: counts(&tally.totals),
                series,
            })
        })
        .await
}
