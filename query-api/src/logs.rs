//! `POST /logs/filter` (prefect/server/api/logs.py): `{logs: LogFilter, sort, limit, offset}`
//! → a list of Prefect `Log` objects.
//!
//! Flowhouse stores no log ids; each log gets a stable one derived from its content and tenant
//! (the same line always has the same id), and `created`/`updated` are when it was received.
//! Without a timestamp bound the window is the configured maximum, so a filter on a flow run
//! alone cannot scan the whole retention; `offset` is capped by the result-row limit.

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use chrono::{DateTime, Utc};
use flowhouse_schema::Tenant;
use flowhouse_schema::rows::LogRow;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Reader;
use crate::db::{Sql, TENANT};
use crate::error::ApiError;
use crate::request::{JsonBody, Operator};
use crate::window::{self, Bucket, micros};
use crate::{AppState, cached_json};

/// Prefect's default page size for `/logs/filter` (`PREFECT_API_DEFAULT_LIMIT`).
pub const DEFAULT_LIMIT: u64 = 200;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogFilter {
    /// Only `and_` (Prefect's default) is supported.
    #[serde(default)]
    pub operator: Option<Operator>,
    #[serde(default)]
    pub level: Option<LevelFilter>,
    #[serde(default)]
    pub timestamp: Option<TimestampFilter>,
    #[serde(default)]
    pub flow_run_id: Option<FlowRunIdFilter>,
    #[serde(default)]
    pub task_run_id: Option<TaskRunIdFilter>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LevelFilter {
    #[serde(default)]
    pub ge_: Option<i64>,
    #[serde(default)]
    pub le_: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimestampFilter {
    /// Inclusive.
    #[serde(default)]
    pub before_: Option<DateTime<Utc>>,
    /// Inclusive.
    #[serde(default)]
    pub after_: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowRunIdFilter {
    #[serde(default)]
    pub any_: Option<Vec<Uuid>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRunIdFilter {
    #[serde(default)]
    pub any_: Option<Vec<Uuid>>,
    #[serde(default)]
    pub is_null_: Option<bool>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
pub enum LogSort {
    #[default]
    TIMESTAMP_ASC,
    TIMESTAMP_DESC,
}

/// `POST /logs/filter` body.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct LogsRequest {
    #[serde(default)]
    pub logs: Option<LogFilter>,
    #[serde(default)]
    pub sort: Option<LogSort>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub offset: Option<u64>,
}

/// Prefect's `Log`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Log {
    pub id: Uuid,
    #[schema(value_type = String, format = DateTime)]
    pub created: String,
    #[schema(value_type = String, format = DateTime)]
    pub updated: String,
    pub name: String,
    pub level: u8,
    pub message: String,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: String,
    pub flow_run_id: Option<Uuid>,
    pub task_run_id: Option<Uuid>,
    pub worker_id: Option<Uuid>,
}

/// A stable id for a log line: the same tenant and content give the same id.
fn log_id(row: &LogRow) -> Uuid {
    let mut hash = Sha256::new();
    for part in [
        row.account_id.as_bytes().as_slice(),
        row.workspace_id.as_bytes(),
        &row.timestamp.timestamp_micros().to_le_bytes(),
        &row.received.timestamp_micros().to_le_bytes(),
        &[row.level],
        row.name.as_bytes(),
        &[0],
        row.message.as_bytes(),
        &[0],
        row.flow_run_id.unwrap_or_default().as_bytes(),
        row.task_run_id.unwrap_or_default().as_bytes(),
    ] {
        hash.update(part);
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

impl From<LogRow> for Log {
    fn from(row: LogRow) -> Self {
        let received = window::rfc3339(row.received.timestamp_micros());
        Self {
            id: log_id(&row),
            created: received.clone(),
            updated: received,
            level: row.level,
            timestamp: window::rfc3339(row.timestamp.timestamp_micros()),
            flow_run_id: row.flow_run_id,
            task_run_id: row.task_run_id,
            worker_id: row.worker_id,
            name: row.name,
            message: row.message,
        }
    }
}

/// The resolved query: the cache key and what the SQL is built from.
#[derive(Debug, Serialize)]
struct LogsQuery {
    filter: LogFilter,
    after: i64,
    before: i64,
    sort: LogSort,
    limit: u64,
    offset: u64,
}

fn uuids(list: &[Uuid]) -> serde_json::Value {
    serde_json::Value::Array(
        list.iter()
            .map(|id| serde_json::Value::String(id.to_string()))
            .collect(),
    )
}

async fn read_logs(
    state: &AppState,
    tenant: Tenant,
    q: &LogsQuery,
) -> Result<Vec<LogRow>, ApiError> {
    let mut sql = Sql::new(tenant);
    let after = sql.bind_micros(q.after);
    let before = sql.bind_micros(q.before);
    let mut c = vec![
        TENANT.to_string(),
        format!("timestamp >= {after} AND timestamp <= {before}"),
    ];
    if let Some(level) = &q.filter.level {
        if let Some(ge) = level.ge_ {
            let p = sql.bind_i64(ge);
            c.push(format!("level >= {p}"));
        }
        if let Some(le) = level.le_ {
            let p = sql.bind_i64(le);
            c.push(format!("level <= {p}"));
        }
    }
    if let Some(ids) = q.filter.flow_run_id.as_ref().and_then(|f| f.any_.as_ref()) {
        let p = sql.bind("Array(UUID)", uuids(ids));
        c.push(format!(
            "isNotNull(flow_run_id) AND has({p}, assumeNotNull(flow_run_id))"
        ));
    }
    if let Some(f) = &q.filter.task_run_id {
        if let Some(ids) = &f.any_ {
            let p = sql.bind("Array(UUID)", uuids(ids));
            c.push(format!(
                "isNotNull(task_run_id) AND has({p}, assumeNotNull(task_run_id))"
            ));
        }
        match f.is_null_ {
            Some(true) => c.push("isNull(task_run_id)".into()),
            Some(false) => c.push("isNotNull(task_run_id)".into()),
            None => {}
        }
    }
    let order = match q.sort {
        LogSort::TIMESTAMP_ASC => "ASC",
        LogSort::TIMESTAMP_DESC => "DESC",
    };
    let limit = sql.bind("UInt64", q.limit);
    let offset = sql.bind("UInt64", q.offset);
    // Ties on timestamp are ordered by content, so offset paging is deterministic.
    sql.push(&format!(
        "SELECT account_id, workspace_id, timestamp, received, level, name, message,
                flow_run_id, task_run_id, worker_id
         FROM logs WHERE {}
         ORDER BY timestamp {order}, received {order}, level {order},
                  cityHash64(name, message, flow_run_id, task_run_id) {order}
         LIMIT {limit} OFFSET {offset}",
        c.join(" AND ")
    ));
    state.db.fetch("logs_filter", &sql).await
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/logs/filter",
    params(("account_id" = String, Path), ("workspace_id" = String, Path)),
    request_body = LogsRequest,
    responses((status = 200, body = Vec<Log>), (status = 401), (status = 403), (status = 422)),
    security(("bearer" = [])), tag = "logs")]
pub async fn filter_logs(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    JsonBody(request): JsonBody<LogsRequest>,
) -> Result<Response, ApiError> {
    let filter = request.logs.unwrap_or_default();
    if filter.operator == Some(Operator::Or) {
        return Err(ApiError::unprocessable(
            "logs.operator: only and_ is supported by Flowhouse",
        ));
    }
    let limit = request.limit.unwrap_or(DEFAULT_LIMIT);
    let max_page = u64::from(state.settings.max_page_size).max(DEFAULT_LIMIT);
    if limit > max_page {
        return Err(ApiError::unprocessable(format!(
            "limit: at most {max_page}"
        )));
    }
    let offset = request.offset.unwrap_or(0);
    if offset > state.settings.max_result_rows {
        return Err(ApiError::unprocessable(format!(
            "offset: at most {}; narrow the filter (timestamp, flow_run_id)",
            state.settings.max_result_rows
        )));
    }
    let stamps = filter.timestamp.clone().unwrap_or_default();
    let before = stamps
        .before_
        .map(micros)
        .unwrap_or_else(|| window::ceil_to(window::now_micros(), window::MICROS_PER_SECOND));
    let after = stamps
        .after_
        .map(micros)
        .unwrap_or(i64::MIN)
        .max(before - state.settings.max_window_micros())
        .max(window::earliest());
    if after > before {
        return Err(ApiError::unprocessable(
            "logs.timestamp: after_ must not be after before_",
        ));
    }
    let q = LogsQuery {
        filter,
        after,
        before,
        sort: request.sort.unwrap_or_default(),
        limit,
        offset,
    };
    let key = serde_json::to_string(&q).map_err(|_| ApiError::Internal)?;
    let ttl = state.cache.ttl_for(before, Bucket::Hour);
    let st = state.clone();
    cached_json(
        &state,
        tenant,
        "logs_filter",
        key,
        ttl,
        &method,
        &headers,
        async move {
            let rows = read_logs(&st, tenant, &q).await?;
            Ok(rows.into_iter().map(Log::from).collect::<Vec<_>>())
        },
    )
    .await
}
