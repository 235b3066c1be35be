//! The HTTP routes: `POST /events` (204) and `POST /logs` (201, as Prefect answers the SDK's
//! `POST /logs/`) take a JSON list and answer only once Kafka acknowledged every item of it.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use chrono::Utc;
use flowhouse_keys::{Scope, key_from_authorization};
use flowhouse_schema::{Envelope, Stream, Tenant};
use flowhouse_service::http::WORKSPACE_BASE;
use uuid::Uuid;

use crate::Shared;
use crate::batch::{read_body, split_and_validate};
use crate::error::ApiError;
use crate::openapi::{Errors, Event, LogLine};

use crate::telemetry;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(&format!("{WORKSPACE_BASE}/events"), post(post_events))
        .route(&format!("{WORKSPACE_BASE}/logs"), post(post_logs))
        .route(
            &format!("{WORKSPACE_BASE}/events/in"),
            get(crate::websocket::upgrade),
        )
        .with_state(shared)
}

/// The two path segments that name a workspace.
pub(crate) type WorkspacePath = Path<(String, String)>;

/// The account and workspace named by the path; a 404 when they are not UUIDs.
pub(crate) fn workspace_ids(
    (account, workspace): &(String, String),
) -> Result<(Uuid, Uuid), ApiError> {
    let parse = |what: &str, text: &str| {
        Uuid::parse_str(text)
            .map_err(|_| ApiError::NotFound(format!("{what} {text:?} is not a UUID")))
    };
    Ok((parse("account", account)?, parse("workspace", workspace)?))
}

impl Shared {
    /// The tenant of the path, once `key` is proven to hold it with the `write` scope.
    pub(crate) fn authorize(
        &self,
        key: Option<&str>,
        path: &(String, String),
    ) -> Result<Tenant, ApiError> {
        let (account, workspace) = workspace_ids(path)?;
        Ok(self.keys.authorize(key, account, workspace, Scope::Write)?)
    }

    pub(crate) fn topic(&self, stream: Stream) -> &str {
        stream.topic(&self.topics)
    }
}

/// The key of the request's `Authorization` header (Bearer, or Basic as Prefect clients with an
/// auth string send it).
pub(crate) fn request_key(headers: &HeaderMap) -> Option<String> {
    key_from_authorization(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok()),
    )
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/events",
    params(flowhouse_service::openapi::WorkspacePath),
    request_body(content = Vec<Event>, description = "A JSON list of events; an empty list is fine."),
    responses((status = 204, description = "Kafka acknowledged every event."), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "ingestion")]
pub(crate) async fn post_events(
    State(shared): State<Arc<Shared>>,
    Path(path): WorkspacePath,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    ingest(&shared, Stream::Events, &path, &headers, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/accounts/{account_id}/workspaces/{workspace_id}/logs",
    params(flowhouse_service::openapi::WorkspacePath),
    request_body(content = Vec<LogLine>, description = "A JSON list of log lines (the SDK posts to `/logs/`)."),
    responses((status = 201, description = "Kafka acknowledged every log line (Prefect's status)."), Errors),
    security(("bearer" = []), ("basic" = [])), tag = "ingestion")]
pub(crate) async fn post_logs(
    State(shared): State<Arc<Shared>>,
    Path(path): WorkspacePath,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    ingest(&shared, Stream::Logs, &path, &headers, body).await?;
    Ok(StatusCode::CREATED)
}

/// The checks run cheapest first, so that a refused request costs little: the key, the rate
/// limit and Kafka's state before reading the body; the body's size while reading it; the items
/// before producing anything.
async fn ingest(
    shared: &Arc<Shared>,
    stream: Stream,
    path: &(String, String),
    headers: &HeaderMap,
    body: Body,
) -> Result<(), ApiError> {
    let started = Instant::now();
    let tenant = shared.authorize(request_key(headers).as_deref(), path)?;
    shared
        .limiter
        .check(tenant)
        .map_err(|wait| rate_limited(stream, wait))?;
    // Held while the body is read and produced: a workspace uploading many large batches at
    // once is bounded by its own share, before any of its bytes are read.
    let _upload = shared
        .uploads
        .try_acquire(&tenant, 1)
        .ok_or_else(|| ApiError::RateLimited {
            detail: format!(
                "this workspace is uploading {} batches at once, its limit; send this one again \
             after the Retry-After delay",
                shared.uploads.per_key()
            ),
            retry_after: std::time::Duration::from_secs(1),
        })?;
    shared.producer.check_available()?;

    let body = read_body(headers, body, shared.max_body_bytes).await?;
    let limits = shared.limits.clone();
    // Parsing megabytes of JSON is CPU work: off the async workers, so other requests go on.
    let items =
        tokio::task::spawn_blocking(move || split_and_validate(&body, stream, &limits, Utc::now()))
            .await
            .map_err(|error| ApiError::BadRequest(format!("validation failed: {error}")))??;
    if items.is_empty() {
        return Ok(());
    }
    shared
        .limiter
        .take(tenant, items.len())
        .map_err(|wait| rate_limited(stream, wait))?;

    // Held until every delivery resolved: the queue bound counts this batch meanwhile.
    let _permit = shared.producer.try_reserve(tenant, items.len())?;
    let envelope = Envelope {
        tenant,
        received: Some(Utc::now()),
    };
    let key = envelope.key();
    let kafka_headers = envelope.headers();
    for piece in shared.producer.pieces(&items) {
        (shared.producer)
            .deliver(shared.topic(stream), &key, &kafka_headers, &items[piece])
            .await?;
    }
    let accepted = items.len();

    metrics::counter!(telemetry::ACCEPTED, "kind" => stream.plural(), "transport" => "http")
        .increment(accepted as u64);
    metrics::histogram!(telemetry::REQUEST_SECONDS, "kind" => stream.plural())
        .record(started.elapsed().as_secs_f64());
    Ok(())
}

fn rate_limited(stream: Stream, wait: std::time::Duration) -> ApiError {
    ApiError::RateLimited {
        detail: format!(
            "this workspace is over its rate limit; nothing of the request was accepted, send \
             the {} again after the Retry-After delay",
            stream.plural()
        ),
        retry_after: wait,
    }
}
