//! `POST /flow_runs/history` (prefect/server/api/run_history.py): flow runs in intervals of
//! `history_interval_seconds` from `history_start`, grouped by their current state, from the
//! `flow_runs` rollup.
//!
//! As in Prefect, a run falls in the interval of its expected start time (Flowhouse: the
//! earliest scheduled time of its `Scheduled` events, else its first event) and is counted
//! under its current state (its latest event). Its state type is the event's
//! `prefect.state-type` when that event is its last terminal one; otherwise the rollup keeps
//! only the state's name, and the type is Prefect's type of that name (`Late` → SCHEDULED,
//! `Retrying` → RUNNING, ...; unknown names upper-cased). Estimated run time is the time from
//! the first Running event to the latest event (0 if it never ran); estimated lateness is
//! `max(0, start − expected start)` (0 if it never started). Intervals: at most 500, as Prefect.
//!
//! Filters: `flows` (id, name), `flow_runs` (id, name, tags all_/any_/is_null_, state type and
//! name any_/not_any_, deployment_id any_/is_null_), `deployments` (id, name), `work_pools`
//! (id, name). Other criteria are refused with a 422 naming them.

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Reader;
use crate::dashboard::RunFilters;
use crate::dashboard::queries::runs;
use crate::db::Sql;
use crate::error::ApiError;
use crate::request::{JsonBody, Operator};
use crate::window::{self, Bucket, as_rfc3339, micros};
use crate::{AppState, cached_json};

const MAX_INTERVALS: i64 = 500;

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
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnyUuid {
    #[serde(default)]
    pub any_: Option<Vec<Uuid>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnyString {
    #[serde(default)]
    pub any_: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnyOrNotString {
    #[serde(default)]
    pub any_: Option<Vec<String>>,
    #[serde(default)]
    pub not_any_: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagsFilter {
    #[serde(default)]
    pub operator: Option<Operator>,
    #[serde(default)]
    pub all_: Option<Vec<String>>,
    #[serde(default)]
    pub any_: Option<Vec<String>>,
    #[serde(default)]
    pub is_null_: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateFilter {
    #[serde(default)]
    pub operator: Option<Operator>,
    #[serde(default)]
    pub r#type: Option<AnyOrNotString>,
    #[serde(default)]
    pub name: Option<AnyOrNotString>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentIdFilter {
    #[serde(default)]
    pub operator: Option<Operator>,
    #[serde(default)]
    pub any_: Option<Vec<Uuid>>,
    #[serde(default)]
    pub is_null_: Option<bool>,
}

/// A Prefect `FlowFilter`, `DeploymentFilter` or `WorkPoolFilter`: by id and name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdNameFilter {
    #[serde(default)]
    pub operator: Option<Operator>,
    #[serde(default)]
    pub id: Option<AnyUuid>,
    #[serde(default)]
    pub name: Option<AnyString>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowRunFilter {
    #[serde(default)]
    pub operator: Option<Operator>,
    #[serde(default)]
    pub id: Option<AnyUuid>,
    #[serde(default)]
    pub name: Option<AnyString>,
    #[serde(default)]
    pub tags: Option<TagsFilter>,
    #[serde(default)]
    pub state: Option<StateFilter>,
    #[serde(default)]
    pub deployment_id: Option<DeploymentIdFilter>,
}

/// `POST /flow_runs/history` body.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryRequest {
    pub history_start: DateTime<Utc>,
    pub history_end: DateTime<Utc>,
    /// Interval length in seconds, at least 1.
    pub history_interval_seconds: f64,
    #[serde(default)]
    pub flows: Option<IdNameFilter>,
    #[serde(default)]
    pub flow_runs: Option<FlowRunFilter>,
    #[serde(default)]
    pub deployments: Option<IdNameFilter>,
    #[serde(default)]
    pub work_pools: Option<IdNameFilter>,
    /// Not supported: must be absent or null.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub task_runs: Option<serde_json::Value>,
    /// Not supported: must be absent or null.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
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

fn uuid_strings(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

fn id_name(sql: &mut Sql, c: &mut Vec<String>, f: &IdNameFilter, id: &str, name: &str) {
    if let Some(ids) = f.id.as_ref().and_then(|f| f.any_.as_ref()) {
        let p = sql.bind_strings(&uuid_strings(ids));
        c.push(format!("has({p}, {id})"));
    }
    if let Some(names) = f.name.as_ref().and_then(|f| f.any_.as_ref()) {
        let p = sql.bind_strings(names);
        c.push(format!("has({p}, {name})"));
    }
}

fn any_or_not(sql: &mut Sql, c: &mut Vec<String>, f: &AnyOrNotString, column: &str) {
    if let Some(values) = &f.any_ {
        let p = sql.bind_strings(values);
        c.push(format!("has({p}, {column})"));
    }
    if let Some(values) = &f.not_any_ {
        let p = sql.bind_strings(values);
        c.push(format!("NOT has({p}, {column})"));
    }
}

impl HistoryRequest {
    fn check(&self) -> Result<(), ApiError> {
        for (name, value) in [
            ("task_runs", &self.task_runs),
            ("work_queues", &self.work_queues),
        ] {
            if value.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(ApiError::unprocessable(format!(
                    "{name}: not supported by Flowhouse's flow run history"
                )));
            }
        }
        let mut operators = vec![
            self.flows.as_ref().and_then(|f| f.operator),
            self.deployments.as_ref().and_then(|f| f.operator),
            self.work_pools.as_ref().and_then(|f| f.operator),
        ];
        if let Some(f) = &self.flow_runs {
            operators.push(f.operator);
            operators.push(f.tags.as_ref().and_then(|t| t.operator));
            operators.push(f.state.as_ref().and_then(|s| s.operator));
            operators.push(f.deployment_id.as_ref().and_then(|d| d.operator));
        }
        if operators.contains(&Some(Operator::Or)) {
            return Err(ApiError::unprocessable(
                "operator: only and_ is supported by Flowhouse",
            ));
        }
        Ok(())
    }

    /// Conditions on the columns of the runs subquery (and the derived state columns).
    fn conditions(&self, sql: &mut Sql) -> Vec<String> {
        let mut c = Vec::new();
        if let Some(f) = &self.flows {
            id_name(sql, &mut c, f, "flow", "flow_label");
        }
        if let Some(f) = &self.deployments {
            id_name(sql, &mut c, f, "deployment", "deployment_label");
        }
        if let Some(f) = &self.work_pools {
            id_name(sql, &mut c, f, "work_pool", "work_pool_label");
        }
        if let Some(f) = &self.flow_runs {
            if let Some(ids) = f.id.as_ref().and_then(|f| f.any_.as_ref()) {
                let p = sql.bind_strings(&uuid_strings(ids));
                c.push(format!("has({p}, flow_run_id)"));
            }
            if let Some(names) = f.name.as_ref().and_then(|f| f.any_.as_ref()) {
                let p = sql.bind_strings(names);
                c.push(format!("has({p}, run_name)"));
            }
            if let Some(tags) = &f.tags {
                if let Some(all) = &tags.all_ {
                    let p = sql.bind_strings(all);
                    c.push(format!("hasAll(run_tags, {p})"));
                }
                if let Some(any) = &tags.any_ {
                    let p = sql.bind_strings(any);
                    c.push(format!("hasAny(run_tags, {p})"));
                }
                match tags.is_null_ {
                    Some(true) => c.push("empty(run_tags)".into()),
                    Some(false) => c.push("notEmpty(run_tags)".into()),
                    None => {}
                }
            }
            if let Some(state) = &f.state {
                if let Some(t) = &state.r#type {
                    any_or_not(sql, &mut c, t, "state_type");
                }
                if let Some(n) = &state.name {
                    any_or_not(sql, &mut c, n, "state_name");
                }
            }
            if let Some(d) = &f.deployment_id {
                if let Some(ids) = &d.any_ {
                    let p = sql.bind_strings(&uuid_strings(ids));
                    c.push(format!("has({p}, deployment)"));
                }
                match d.is_null_ {
                    Some(true) => c.push("deployment = ''".into()),
                    Some(false) => c.push("deployment != ''".into()),
                    None => {}
                }
            }
        }
        c
    }
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/flow_runs/history",
    params(("account_id" = String, Path), ("workspace_id" = String, Path)),
    request_body = HistoryRequest,
    responses((status = 200, body = Vec<HistoryResponse>), (status = 401), (status = 403), (status = 422)),
    security(("bearer" = [])), tag = "flow runs")]
pub async fn flow_run_history(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    JsonBody(request): JsonBody<HistoryRequest>,
) -> Result<Response, ApiError> {
    request.check()?;
    let secs = request.history_interval_seconds;
    if !secs.is_finite() || secs < 1.0 {
        return Err(ApiError::unprocessable(
            "history_interval_seconds: History interval must not be less than 1 second.",
        ));
    }
    let width = (secs * 1e6).round() as i64;
    let (start, end) = (micros(request.history_start), micros(request.history_end));
    if start < window::earliest() || end <= start {
        return Err(ApiError::unprocessable(
            "history_start must be after 2000-01-01 and before history_end",
        ));
    }
    if end - start > state.settings.max_window_micros() {
        return Err(ApiError::unprocessable(format!(
            "the history may span at most {} days",
            state.settings.max_window_micros() / (86_400 * window::MICROS_PER_SECOND)
        )));
    }
    let intervals = (end - start + width - 1) / width;
    if intervals > MAX_INTERVALS {
        return Err(ApiError::unprocessable(format!(
            "{intervals} intervals requested; at most {MAX_INTERVALS}: increase history_interval_seconds"
        )));
    }
    let key = serde_json::to_string(&request).map_err(|_| ApiError::Internal)?;
    let ttl = state.cache.ttl_for(start + intervals * width, Bucket::Hour);
    let st = state.clone();
    cached_json(&state, tenant, "flow_run_history", key, ttl, &method, &headers, async move {
        let mut sql = Sql::new(tenant);
        let runs = runs(&mut sql, &RunFilters::default(), HISTORY_COLUMNS);
        let conditions = request.conditions(&mut sql);
        let from = sql.bind_micros(start);
        let to = sql.bind_micros(start + intervals * width);
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
                    if(isNotNull(ended) AND ended = seen_last, final_type,
                       transform(last_name, {STATE_NAMES}, {STATE_TYPES}, upper(last_name))) AS state_type,
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
