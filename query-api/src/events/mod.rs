//! Prefect-compatible event search: `POST /events/filter`, `GET /events/filter/next` and
//! `POST /events/count-by/{countable}` (prefect/server/api/events.py).
//!
//! `events` is a ReplacingMergeTree on (tenant, occurred, id): it is read with `FINAL`, so an
//! event a client sent twice is returned and counted once even before merges fold it.

pub mod count;
pub mod filter;
pub mod filter_sql;
pub mod labels;
pub mod matches;
pub mod page_token;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use chrono::Duration;
use clickhouse::Row;
use flowhouse_schema::Tenant;
use flowhouse_schema::rows::EventRow;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Reader;
use crate::db::Sql;
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::request::JsonBody;
use crate::window::{self, Bucket};
use crate::{AppState, cached_json};
use filter::{EventFilter, Order};
use flowhouse_service::openapi::WorkspacePath;
use page_token::{Cursor, PageState};

/// Prefect's default (and maximum) interactive page size.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// `POST /events/filter` body.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct FilterRequest {
    /// Absent or null: every event of the default window.
    #[serde(default)]
    pub filter: Option<EventFilter>,
    /// Page size (default 50; at most `--max-page-size`, 200 by default).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 200)]
    pub limit: Option<u32>,
}

/// One page of events (Prefect's `EventPage`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<ReceivedEvent>,
    /// How many events match the filter in all.
    pub total: u64,
    /// The URL of the next page, or null on the last page.
    pub next_page: Option<String>,
}

/// An event as Prefect returns it (`ReceivedEvent`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReceivedEvent {
    pub id: Uuid,
    #[schema(value_type = String, format = DateTime)]
    pub occurred: String,
    pub event: String,
    #[serde(serialize_with = "labels")]
    #[schema(value_type = Object)]
    pub resource: Vec<(String, String)>,
    #[serde(serialize_with = "labels_list")]
    #[schema(value_type = Vec<Object>)]
    pub related: Vec<Vec<(String, String)>>,
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    #[schema(value_type = String, format = DateTime)]
    pub received: String,
    pub follows: Option<Uuid>,
}

fn labels<S: Serializer>(labels: &[(String, String)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(labels.iter().map(|(k, v)| (k, v)))
}

fn labels_list<S: Serializer>(
    list: &[Vec<(String, String)>],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    struct Labels<'a>(&'a [(String, String)]);
    impl Serialize for Labels<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            labels(self.0, serializer)
        }
    }
    serializer.collect_seq(list.iter().map(|l| Labels(l)))
}

impl From<EventRow> for ReceivedEvent {
    fn from(row: EventRow) -> Self {
        // The payload was validated as a JSON object on the way in; if it somehow is not,
        // it is returned as a JSON string rather than failing the whole page.
        let payload = RawValue::from_string(row.payload.clone()).unwrap_or_else(|_| {
            RawValue::from_string(serde_json::Value::String(row.payload).to_string())
                .expect("a JSON string is JSON")
        });
        Self {
            id: row.id,
            occurred: window::rfc3339(row.occurred.timestamp_micros()),
            event: row.event,
            resource: row.resource,
            related: row.related,
            payload,
            received: window::rfc3339(row.received.timestamp_micros()),
            follows: row.follows,
        }
    }
}

#[derive(Debug, Row, Deserialize)]
struct CountRow {
    n: u64,
}

const EVENT_COLUMNS: &str =
    "account_id, workspace_id, occurred, id, received, event, resource, related, payload, follows";

/// The events of one page, and whether another page follows.
pub(crate) async fn read_page(
    state: &AppState,
    tenant: Tenant,
    filter: &EventFilter,
    limit: u32,
    after: Option<Cursor>,
) -> Result<(Vec<EventRow>, bool), ApiError> {
    let mut sql = Sql::new(tenant);
    let condition = filter.where_clause(&mut sql);
    let order = filter.order.sql();
    // With `distinct`, the first event of each resource in the requested order, then paged.
    let (source, mut outer) = if filter.distinct() {
        (
            format!(
                "(SELECT {EVENT_COLUMNS}, resource_id AS distinct_resource FROM events FINAL
                  WHERE {condition} ORDER BY occurred {order}, id {order}
                  LIMIT 1 BY distinct_resource)"
            ),
            vec!["1".to_string()],
        )
    } else {
        ("events FINAL".to_string(), vec![condition])
    };
    if let Some(cursor) = after {
        let occurred = sql.bind_micros(cursor.occurred);
        let id = sql.bind("UUID", cursor.id.to_string());
        // The plain bound on `occurred` lets the primary index skip what came before.
        let (cmp, bound) = match filter.order {
            Order::Asc => (">", ">="),
            Order::Desc => ("<", "<="),
        };
        outer.push(format!(
            "occurred {bound} {occurred} AND (occurred, id) {cmp} ({occurred}, {id})"
        ));
    }
    let fetch = sql.bind("UInt64", u64::from(limit) + 1);
    sql.push(&format!(
        "SELECT {EVENT_COLUMNS} FROM {source} WHERE {}
         ORDER BY occurred {order}, id {order} LIMIT {fetch}",
        outer.join(" AND ")
    ));
    let mut rows: Vec<EventRow> = state.db.fetch("events_page", &sql).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

/// How many events match (with `distinct`: how many resources).
async fn count(state: &AppState, tenant: Tenant, filter: &EventFilter) -> Result<u64, ApiError> {
    let mut sql = Sql::new(tenant);
    let condition = filter.where_clause(&mut sql);
    let what = if filter.distinct() {
        "uniqExact(resource_id)"
    } else {
        "count()"
    };
    sql.push(&format!(
        "SELECT {what} AS n FROM events FINAL WHERE {condition}"
    ));
    let rows: Vec<CountRow> = state.db.fetch("events_count", &sql).await?;
    Ok(rows.first().map_or(0, |r| r.n))
}

/// The absolute URL of the next page (Prefect's `next_page` is a URL): from the configured
/// public URL, else the request's `X-Forwarded-Proto` and `Host` (relative without either).
fn next_page_url(state: &AppState, headers: &HeaderMap, tenant: Tenant, token: &str) -> String {
    let path = format!(
        "/api/accounts/{}/workspaces/{}/events/filter/next?page-token={token}",
        tenant.account_id, tenant.workspace_id
    );
    match state.public.base_url(headers) {
        Some(base) => format!("{base}{path}"),
        None => path,
    }
}

fn page_body(
    state: &AppState,
    headers: &HeaderMap,
    page: PageState,
    rows: Vec<EventRow>,
    more: bool,
) -> EventPage {
    let next_page = match (more, rows.last()) {
        (true, Some(last)) => {
            let next = PageState {
                after: Cursor {
                    occurred: last.occurred.timestamp_micros(),
                    id: last.id,
                },
                ..page.clone()
            };
            Some(next_page_url(
                state,
                headers,
                page.tenant,
                &state.page_tokens.sign(&next),
            ))
        }
        _ => None,
    };
    EventPage {
        events: rows.into_iter().map(ReceivedEvent::from).collect(),
        total: page.total,
        next_page,
    }
}

fn resolve_limit(state: &AppState, limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if limit > state.settings.max_page_size {
        return Err(ApiError::unprocessable(format!(
            "limit: at most {} events per page",
            state.settings.max_page_size
        )));
    }
    Ok(limit)
}

/// How far back a search may reach.
pub fn max_search(state: &AppState) -> Duration {
    Duration::microseconds(state.settings.max_search_micros())
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/events/filter",
    params(WorkspacePath),
    request_body = Option<FilterRequest>,
    responses((status = 200, body = EventPage), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "events")]
pub async fn filter_events(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    JsonBody(request): JsonBody<FilterRequest>,
) -> Result<Response, ApiError> {
    let filter = request
        .filter
        .unwrap_or_default()
        .resolve(max_search(&state), "filter")?;
    let limit = resolve_limit(&state, request.limit)?;
    // The base URL is part of the key: the body holds a `next_page` URL built from it.
    let key = serde_json::to_string(&(&filter, limit, next_page_url(&state, &headers, tenant, "")))
        .map_err(|_| ApiError::Internal)?;
    let ttl = state.cache.ttl_for(filter.until_micros(), Bucket::Hour);
    let st = state.clone();
    let h = headers.clone();
    cached_json(
        &state,
        tenant,
        "events_filter",
        key,
        ttl,
        &method,
        &headers,
        async move {
            let (total, (rows, more)) = futures::try_join!(
                count(&st, tenant, &filter),
                read_page(&st, tenant, &filter, limit, None)
            )?;
            let page = PageState {
                tenant,
                filter,
                limit,
                total,
                after: Cursor {
                    occurred: 0,
                    id: Uuid::nil(),
                },
            };
            Ok(page_body(&st, &h, page, rows, more))
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    #[serde(rename = "page-token")]
    page_token: String,
}

#[utoipa::path(get, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/events/filter/next",
    params(WorkspacePath,
           ("page-token" = String, Query, description = "the token of a `next_page` URL")),
    responses((status = 200, body = EventPage), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "events")]
pub async fn next_page(
    Reader(tenant): Reader,
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    query: Result<Query<NextQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    // As Prefect: a missing token is a 422, a bad one a 403.
    let Query(query) = query.map_err(|_| {
        ApiError::unprocessable("page-token: a query parameter is required (a next_page URL)")
    })?;
    let page = state.page_tokens.verify(&query.page_token, tenant)?;
    let key = serde_json::to_string(&(&page, next_page_url(&state, &headers, tenant, "")))
        .map_err(|_| ApiError::Internal)?;
    let ttl = state
        .cache
        .ttl_for(page.filter.until_micros(), Bucket::Hour);
    let st = state.clone();
    let h = headers.clone();
    cached_json(
        &state,
        tenant,
        "events_next",
        key,
        ttl,
        &method,
        &headers,
        async move {
            let (rows, more) =
                read_page(&st, tenant, &page.filter, page.limit, Some(page.after)).await?;
            Ok(page_body(&st, &h, page, rows, more))
        },
    )
    .await
}
