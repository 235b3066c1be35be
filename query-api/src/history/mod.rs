//! `POST /flow_runs/history` (prefect/server/api/run_history.py): flow runs in intervals of
//! `history_interval_seconds` from `history_start`, grouped by their current state, from the
//! `flow_runs` rollup.
//!
//! As in Prefect, a run falls in the interval of its expected start time (Flowhouse: the
//! earliest scheduled time of its `Scheduled` events, else its first event) and is counted
//! under its current state (its latest state event; Prefect's other flow-run events, such as
//! heartbeats, are not states). Its state type is that event's `prefect.state-type`; for an
//! event without one, Prefect's type of the state's name (`Late` → SCHEDULED, `Retrying` →
//! RUNNING, ...; unknown names upper-cased). Estimated run time is the time from
//! the first Running event to the latest event (0 if it never ran); estimated lateness is
//! `max(0, start − expected start)` (0 if it never started). Intervals: at most 500, as Prefect.
//!
//! Filters: see [`filters`] (every field of Prefect's filters is accepted; what the events
//! do not carry is a 422 naming the field). Intervals: as in Prefect, more than 500 are
//! truncated to the first 500, and `history_end <= history_start` is an empty answer.
//! Flowhouse's own bounds: `history_interval_seconds` at most 10^9 (about 31 years), dates
//! within 1900–2299, and `history_start` at most `--max-search-days` back.

pub mod filters;

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse as _, Response};
use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Reader;
use crate::dashboard::RunFilters;
use crate::dashboard::queries::runs;
use crate::db::Sql;
use crate::error::ApiError;
use crate::events::filter::{check_engine_range, engine_range};
use crate::openapi::Errors;
use crate::request::JsonBody;
use crate::window::{self, Bucket, as_rfc3339, micros};
use crate::{AppState, cached_json};
use filters::{DeploymentFilter, FlowFilter, FlowRunFilter, HistoryFilters, WorkPoolFilter};
use flowhouse_service::openapi::WorkspacePath;

const MAX_INTERVALS: i64 = 500;
/// Flowhouse's bound on `history_interval_seconds` (about 31 years).
const MAX_INTERVAL_SECONDS: f64 = 1e9;

/// What the history reads of each run (filters included).
const HISTORY_COLUMNS: &[&str] = &[
    "run_name",
    "flow",
    "flow_label",
    "deployment",
    "deployment_label",
    "work_pool",
    "work_pool_label",
    "run_tags",
    "expected",
    "started",
    "ended",
    "seen_first",
    "seen_last",
    "final_name",
    "final_type",
    "last_name",
    "last_type",
];

/// `POST /flow_runs/history` body.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryRequest {
    pub history_start: DateTime<Utc>,
    pub history_end: DateTime<Utc>,
    /// Interval length in seconds, at least 1, checked as Prefect checks it (a 422 with its
    /// message); more than 500 intervals are truncated to 500.
    #[schema(maximum = 1000000000.0)]
    pub history_interval_seconds: f64,
    #[serde(default)]
    pub flows: Option<FlowFilter>,
    #[serde(default)]
    pub flow_runs: Option<FlowRunFilter>,
    #[serde(default)]
    pub deployments: Option<DeploymentFilter>,
    #[serde(default)]
    pub work_pools: Option<WorkPoolFilter>,
    /// Prefect's `TaskRunFilter`; Flowhouse cannot apply it: must be null.
    #[serde(default)]
    #[schema(value_type = Option<filters::NullOnly>)]
    pub task_runs: Option<serde_json::Value>,
    /// Prefect's `WorkQueueFilter`; Flowhouse cannot apply it: must be null.
    #[serde(default)]
    #[schema(value_type = Option<filters::NullOnly>)]
    pub work_queues: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HistoryState {
    pub state_type: String,
    pub state_name: String,
    pub count_runs: u64,
    /// Seconds.
    pub sum_estimated_run_time: f64,
    /// Seconds.
    pub sum_estimated_lateness: f64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub interval_start: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub interval_end: i64,
    pub states: Vec<HistoryState>,
}

#[derive(Debug, Row, Deserialize)]
struct HistoryRow {
    idx: i64,
    state_type: String,
    state_name: String,
    runs: u64,
    run_time: i64,
    lateness: i64,
}

/// Prefect's state type of a state name, for states the rollup keeps only by name.
const STATE_NAMES: &str =
    "['Scheduled', 'Late', 'AwaitingRetry', 'AwaitingConcurrencySlot', 'Pending',
    'Running', 'Retrying', 'Paused', 'Suspended', 'Cancelling', 'Completed', 'Cached', 'RolledBack',
    'Failed', 'TimedOut', 'Crashed', 'Cancelled']";
const STATE_TYPES: &str = "['SCHEDULED', 'SCHEDULED', 'SCHEDULED', 'SCHEDULED', 'PENDING',
    'RUNNING', 'RUNNING', 'PAUSED', 'PAUSED', 'CANCELLING', 'COMPLETED', 'COMPLETED', 'COMPLETED',
    'FAILED', 'FAILED', 'CRASHED', 'CANCELLED']";

impl HistoryRequest {
    fn filters(&self) -> HistoryFilters<'_> {
        HistoryFilters {
            flows: self.flows.as_ref(),
            flow_runs: self.flow_runs.as_ref(),
            deployments: self.deployments.as_ref(),
            work_pools: self.work_pools.as_ref(),
            task_runs: &self.task_runs,
            work_queues: &self.work_queues,
        }
    }
}

/// The intervals of a history: Prefect's `ceil(elapsed / interval)` truncated to 500, none when
/// the end is not after the start. Checked arithmetic: `width` is at most 10^15 µs.
fn interval_count(start: i64, end: i64, width: i64) -> i64 {
    let elapsed = i128::from(end) - i128::from(start);
    if elapsed <= 0 {
        return 0;
    }
    let count = (elapsed + i128::from(width) - 1) / i128::from(width);
    count.min(i128::from(MAX_INTERVALS)) as i64
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/flow_runs/history",
    params(WorkspacePath),
    request_body = HistoryRequest,
    responses((status = 200, body = Vec<HistoryResponse>), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "flow runs")]
pub async fn flow_run_history(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    JsonBody(request): JsonBody<HistoryRequest>,
) -> Result<Response, ApiError> {
    request.filters().check()?;
    let secs = request.history_interval_seconds;
    if !secs.is_finite() || secs < 1.0 {
        return Err(ApiError::unprocessable(
            "History interval must not be less than 1 second.",
        ));
    }
    if secs > MAX_INTERVAL_SECONDS {
        return Err(ApiError::unprocessable(format!(
            "history_interval_seconds: at most {MAX_INTERVAL_SECONDS}"
        )));
    }
    let width = (secs * 1e6).round() as i64;
    check_engine_range("history_start", request.history_start)?;
    check_engine_range("history_end", request.history_end)?;
    let (start, end) = (micros(request.history_start), micros(request.history_end));
    if start < window::now_micros() - state.settings.max_search_micros() {
        return Err(ApiError::unprocessable(format!(
            "history_start: at most {} days back (FLOWHOUSE_QUERY_MAX_SEARCH_DAYS)",
            state.settings.max_search_days
        )));
    }
    let intervals = interval_count(start, end, width);
    if intervals == 0 {
        return Ok(axum::Json(Vec::<HistoryResponse>::new()).into_response());
    }
    // At most 500 × 10^15 µs past a start before 2300: within i64.
    let query_end = start + intervals * width;
    let key = serde_json::to_string(&request).map_err(|_| ApiError::Internal)?;
    let ttl = state.cache.ttl_for(query_end, Bucket::Hour);
    let st = state.clone();
    cached_json(&state, tenant, "flow_run_history", key, ttl, &method, &headers, async move {
        let mut sql = Sql::new(tenant);
        let runs = runs(&mut sql, &RunFilters::default(), HISTORY_COLUMNS);
        let conditions = request.filters().conditions(&mut sql);
        let from = sql.bind_micros(start);
        // Nothing is stored after 2299: the bound need not go further.
        let to = sql.bind_micros(query_end.min(micros(engine_range().1)));
        let start_p = sql.bind_i64(start);
        let width_p = sql.bind_i64(width);
        let mut filter = format!("anchor >= {from} AND anchor < {to}");
        for c in conditions {
            filter.push_str(" AND ");
            filter.push_str(&c);
        }
        sql.push(&format!(
            "SELECT intDiv(toUnixTimestamp64Micro(anchor) - {start_p}, {width_p}) AS idx,
                    state_type, state_name, count() AS runs,
                    toInt64(sum(run_micros)) AS run_time, toInt64(sum(lateness_micros)) AS lateness
             FROM (
                SELECT *, ifNull(expected, seen_first) AS anchor, last_name AS state_name,
                    if(last_type != '', last_type,
                       if(isNotNull(ended) AND ended = seen_last, final_type,
                          transform(last_name, {STATE_NAMES}, {STATE_TYPES}, upper(last_name)))) AS state_type,
                    if(isNull(started), toInt64(0),
                       toUnixTimestamp64Micro(seen_last) - toUnixTimestamp64Micro(assumeNotNull(started))) AS run_micros,
                    if(isNull(started) OR isNull(expected), toInt64(0),
                       greatest(toInt64(0), toUnixTimestamp64Micro(assumeNotNull(started))
                                            - toUnixTimestamp64Micro(assumeNotNull(expected)))) AS lateness_micros
                FROM ({runs}))
             WHERE {filter}
             GROUP BY idx, state_type, state_name
             ORDER BY idx, state_type, state_name"
        ));
        let rows: Vec<HistoryRow> = st.db.fetch("flow_run_history", &sql).await?;
        let mut out: Vec<HistoryResponse> = (0..intervals)
            .map(|i| HistoryResponse {
                interval_start: start + i * width,
                interval_end: start + (i + 1) * width,
                states: Vec::new(),
            })
            .collect();
        for row in rows {
            if let Some(slot) = usize::try_from(row.idx).ok().and_then(|i| out.get_mut(i)) {
                slot.states.push(HistoryState {
                    state_type: row.state_type,
                    state_name: row.state_name,
                    count_runs: row.runs,
                    sum_estimated_run_time: row.run_time as f64 / 1e6,
                    sum_estimated_lateness: row.lateness as f64 / 1e6,
                });
            }
        }
        Ok(out)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_truncate_at_500_like_prefect() {
        let second = 1_000_000;
        assert_eq!(interval_count(0, 10 * second, second), 10);
        assert_eq!(interval_count(0, 10 * second + 1, second), 11);
        assert_eq!(interval_count(0, 10_000 * second, second), 500);
        assert_eq!(interval_count(5, 5, second), 0);
        assert_eq!(interval_count(5, 0, second), 0);
        // Extreme but valid inputs cannot overflow.
        let widest = (MAX_INTERVAL_SECONDS * 1e6) as i64;
        assert_eq!(interval_count(i64::MIN, i64::MAX, widest), 500);
    }
}
