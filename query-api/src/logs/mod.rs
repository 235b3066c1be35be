//! `POST /logs/filter` (prefect/server/api/logs.py): `{logs: LogFilter, sort, limit, offset}`
//! → a list of Prefect `Log` objects.
//!
//! A log's `id` is the one it was stored with: Prefect's own when it came from a Prefect server
//! (`flowhouse mirror prefect`), else derived from its tenant and content at ingest (the same
//! line always has the same id). The table keeps one row per id (ReplacingMergeTree, read with
//! `FINAL`), so a line sent twice is answered once. `created`/`updated` are when it was received.
//! As in Prefect, there is no default time window (the table's retention bounds a search);
//! `limit` is 200 by default and at most 200 (Prefect's messages), `offset` at most the
//! configured result-row limit (Flowhouse's own bound on deep paging).

pub mod filter;

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use flowhouse_schema::Tenant;
use flowhouse_schema::rows::LogRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Reader;
use crate::db::{Sql, TENANT};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::request::JsonBody;
use crate::window::{self, Bucket};
use crate::{AppState, cached_json};
pub use filter::LogFilter;
use flowhouse_service::openapi::WorkspacePath;

/// Prefect's default page size for `/logs/filter` (`PREFECT_API_DEFAULT_LIMIT`), also its most.
pub const DEFAULT_LIMIT: i64 = 200;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
pub enum LogSort {
    #[default]
    TIMESTAMP_ASC,
    TIMESTAMP_DESC,
}

/// `POST /logs/filter` body; every field may be null.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct LogsRequest {
    #[serde(default)]
    pub logs: Option<LogFilter>,
    #[serde(default)]
    pub sort: Option<LogSort>,
    /// 0 to 200; default 200.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 200)]
    pub limit: Option<i64>,
    /// At least 0 (at most `--max-result-rows`, 10000 by default); default 0.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10000)]
    pub offset: Option<i64>,
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

impl From<LogRow> for Log {
    fn from(row: LogRow) -> Self {
        let received = window::rfc3339(row.received.timestamp_micros());
        Self {
            id: row.id,
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
    sort: LogSort,
    limit: u64,
    offset: u64,
}

async fn read_logs(
    state: &AppState,
    tenant: Tenant,
    q: &LogsQuery,
) -> Result<Vec<LogRow>, ApiError> {
    let mut sql = Sql::new(tenant);
    let condition = q.filter.sql(&mut sql);
    let order = match q.sort {
        LogSort::TIMESTAMP_ASC => "ASC",
        LogSort::TIMESTAMP_DESC => "DESC",
    };
    let limit = sql.bind("UInt64", q.limit);
    let offset = sql.bind("UInt64", q.offset);
    // Ties on timestamp are ordered by id, so offset paging is deterministic.
    sql.push(&format!(
        "SELECT account_id, workspace_id, timestamp, id, received, level, name, message,
                flow_run_id, task_run_id, worker_id
         FROM logs FINAL WHERE {TENANT} AND {condition}
         ORDER BY timestamp {order}, id {order}
         LIMIT {limit} OFFSET {offset}"
    ));
    state.db.fetch("logs_filter", &sql).await
}

/// The lines matching `filter` with a timestamp from `since` on, oldest first, at most the
/// configured result-row limit: the backfill of a `/logs/out` subscriber.
pub(crate) async fn read_recent(
    state: &AppState,
    tenant: Tenant,
    filter: &LogFilter,
    since: i64,
) -> Result<Vec<LogRow>, ApiError> {
    let mut sql = Sql::new(tenant);
    let condition = filter.sql(&mut sql);
    let since = sql.bind_micros(since);
    let limit = sql.bind("UInt64", state.settings.max_result_rows);
    sql.push(&format!(
        "SELECT account_id, workspace_id, timestamp, id, received, level, name, message,
                flow_run_id, task_run_id, worker_id
         FROM logs FINAL WHERE {TENANT} AND timestamp >= {since} AND {condition}
         ORDER BY timestamp ASC, id ASC LIMIT {limit}"
    ));
    state.db.fetch("logs_backfill", &sql).await
}

/// Prefect's `limit` (`LimitBody`: null is the default, 0..=200, its own messages) and
/// `offset` (at least 0; Flowhouse: at most `max_result_rows`).
fn page(state: &AppState, limit: Option<i64>, offset: Option<i64>) -> Result<(u64, u64), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit < 0 {
        return Err(ApiError::unprocessable(
            "Invalid limit: must be greater than or equal to 0.",
        ));
    }
    if limit > DEFAULT_LIMIT {
        return Err(ApiError::unprocessable(format!(
            "Invalid limit: must be less than or equal to {DEFAULT_LIMIT}."
        )));
    }
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::unprocessable(
            "offset: Input should be greater than or equal to 0",
        ));
    }
    let offset = offset.unsigned_abs();
    if offset > state.settings.max_result_rows {
        return Err(ApiError::unprocessable(format!(
            "offset: at most {} (FLOWHOUSE_QUERY_MAX_RESULT_ROWS); narrow the filter \
             (timestamp, flow_run_id) instead of paging deeper",
            state.settings.max_result_rows
        )));
    }
    Ok((limit.unsigned_abs(), offset))
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/logs/filter",
    params(WorkspacePath),
    request_body = Option<LogsRequest>,
    responses((status = 200, body = Vec<Log>), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "logs")]
pub async fn filter_logs(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    JsonBody(request): JsonBody<LogsRequest>,
) -> Result<Response, ApiError> {
    let filter = request.logs.unwrap_or_default();
    filter.check("logs")?;
    let (limit, offset) = page(&state, request.limit, request.offset)?;
    // Answers reaching the open hour are short-lived; a window that ended long ago may live
    // as long as settled answers do.
    let until = filter
        .timestamp
        .as_ref()
        .and_then(|t| t.before_)
        .map_or_else(window::now_micros, window::micros);
    let q = LogsQuery {
        filter,
        sort: request.sort.unwrap_or_default(),
        limit,
        offset,
    };
    let key = serde_json::to_string(&q).map_err(|_| ApiError::Internal)?;
    let ttl = state.cache.ttl_for(until, Bucket::Hour);
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
