//! `/openapi.json` of the ingestion endpoint. The paths come from the handlers' annotations;
//! the bodies' schemas are written from the limits the running endpoint enforces (the same
//! `flowhouse_schema::event::Limits` its validator reads), so the document states exactly what
//! this endpoint accepts. The websocket `/events/in` is described in the README, not here
//! (OpenAPI has no websockets).

use axum::Json;
use flowhouse_schema::event::{Limits, RESOURCE_ID, RESOURCE_ROLE};
use flowhouse_schema::log::{LEVELS, MAX_LOG_BYTES, MAX_NAME_CHARS};
use flowhouse_service::openapi::{ErrorBody, KeySchemes};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::{IntoResponses, OpenApi, ToSchema};

use crate::error::ItemProblem;

/// Every failure an ingestion route can answer, as `crate::error::ApiError` maps them.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// The body is not JSON, or cannot be read.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// No key, or an unknown or revoked one.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// The key does not hold the workspace, or lacks the `write` scope.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// The account or workspace of the path is not a UUID.
    #[response(status = 404)]
    NotFound(#[to_schema] ErrorBody),
    /// The body is over the size limit; nothing of it was accepted.
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorBody),
    /// The URI is longer than the server reads.
    #[response(status = 414)]
    UriTooLong,
    /// Not a list of valid items: `problems` names the index and field of each; nothing of the
    /// batch was accepted.
    #[response(status = 422)]
    Invalid(#[to_schema] InvalidBody),
    /// The workspace is over its rate limit; send again after `Retry-After`.
    #[response(status = 429)]
    RateLimited(#[to_schema] ErrorBody),
    /// Kafka cannot take the messages now; nothing was accepted: send again after `Retry-After`.
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
}

/// A refused batch: what is wrong, and where.
#[derive(Serialize, ToSchema)]
pub struct InvalidBody {
    pub detail: String,
    pub problems: Vec<ItemProblem>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Flowhouse ingestion endpoint", description = "Prefect-compatible ingestion of events and log lines, produced to Kafka."),
    paths(crate::routes::post_events, crate::routes::post_logs),
    components(schemas(Event, LogLine, ItemProblem, InvalidBody)),
    modifiers(&KeySchemes)
)]
pub struct ApiDoc;

/// Placeholders the paths refer to; their schemas are written by [`document`].
pub struct Event;
pub struct LogLine;

impl utoipa::PartialSchema for Event {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new().into()
    }
}
impl ToSchema for Event {}

impl utoipa::PartialSchema for LogLine {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new().into()
    }
}
impl ToSchema for LogLine {}

/// The labels of a resource; `required` names the labels it must have.
fn labels(limits: &Limits, required: &[&str]) -> Value {
    let label = json!({"type": "string", "minLength": 1, "maxLength": limits.max_label_bytes, "pattern": "\\S"});
    let properties: serde_json::Map<String, Value> = required
        .iter()
        .map(|name| (name.to_string(), label.clone()))
        .collect();
    json!({
        "type": "object",
        "description": "Labels, string to string; label names and values are limited in bytes.",
        "required": required,
        "properties": properties,
        "additionalProperties": {"type": "string", "maxLength": limits.max_label_bytes},
        "propertyNames": {"minLength": 1, "maxLength": limits.max_label_bytes},
        "maxProperties": limits.max_labels_per_resource,
    })
}

/// The document, with the body schemas of the limits in force.
pub fn document(limits: &Limits) -> Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    let uuid = json!({"type": "string", "format": "uuid"});
    let event = json!({
        "type": "object",
        "description": format!(
            "One event (Prefect's `Event`), at most {} bytes as JSON. Other fields are ignored.",
            limits.max_event_bytes
        ),
        "required": ["id", "occurred", "event", "resource"],
        "properties": {
            "id": {"type": "string", "format": "uuid",
                   "not": {"const": "00000000-0000-0000-0000-000000000000"}},
            "occurred": {"type": "string", "format": "date-time",
                         "description": "From 2000-01-01 to a day ahead of the server's clock."},
            "event": {"type": "string", "minLength": 1,
                      "maxLength": limits.max_event_name_chars, "pattern": "\\S"},
            "resource": labels(limits, &[RESOURCE_ID]),
            "related": {"type": "array", "maxItems": limits.max_related,
                        "items": labels(limits, &[RESOURCE_ID, RESOURCE_ROLE])},
            "payload": {"type": "object",
                        "description": format!("At most {} bytes as JSON.", limits.max_payload_bytes)},
            "follows": {"oneOf": [{"type": "null"}, uuid]},
        },
    });
    let log = json!({
        "type": "object",
        "description": format!(
            "One log line (Prefect's `LogCreate`), at most {} bytes as JSON.",
            MAX_LOG_BYTES.min(limits.max_event_bytes)
        ),
        "required": ["name", "level", "message", "timestamp"],
        "properties": {
            "name": {"type": "string", "maxLength": MAX_NAME_CHARS},
            "level": {"type": "integer", "minimum": LEVELS.start(), "maximum": LEVELS.end()},
            "message": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time",
                          "description": "From 2000-01-01 to a day ahead of the server's clock."},
            "flow_run_id": {"oneOf": [{"type": "null"}, uuid]},
            "task_run_id": {"oneOf": [{"type": "null"}, uuid]},
            "worker_id": {"oneOf": [{"type": "null"}, uuid]},
        },
    });
    let schemas = &mut document["components"]["schemas"];
    schemas["Event"] = event;
    schemas["LogLine"] = log;
    document
}

pub async fn serve(limits: std::sync::Arc<Limits>) -> Json<Value> {
    Json(document(&limits))
}
