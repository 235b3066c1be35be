//! `/openapi.json`, generated from the handlers' annotations and the request/response types.

use axum::Json;
use flowhouse_service::openapi::{ErrorBody, KeySchemes};
use utoipa::{IntoResponses, OpenApi};

use crate::{dashboard, events, history, logs, me, web};

/// Every failure a query route can answer, as `crate::error::ApiError` maps them.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// The request cannot be read: malformed JSON, query string or body.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// No key, or an unknown or revoked one.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// The key does not hold the workspace or lacks `read`; a forged or foreign page token.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// The account or workspace of the path is not a UUID.
    #[response(status = 404)]
    NotFound(#[to_schema] ErrorBody),
    /// The URI is longer than the server reads (too many or too long query parameters).
    #[response(status = 414)]
    UriTooLong,
    /// Readable but invalid: a bad filter, a bound passed (dates Flowhouse cannot store, a
    /// window longer than allowed); the detail names the field and the bound.
    #[response(status = 422)]
    Unprocessable(#[to_schema] ErrorBody),
    /// ClickHouse failed or could not be reached.
    #[response(status = 502)]
    Upstream(#[to_schema] ErrorBody),
    /// Every ClickHouse slot stayed busy; retry after `Retry-After`.
    #[response(status = 503)]
    Busy(#[to_schema] ErrorBody),
    /// The query reached `max_execution_time`.
    #[response(status = 504)]
    Timeout(#[to_schema] ErrorBody),
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Flowhouse query API", description = "Tenant-scoped metrics and Prefect-compatible event and log search."),
    paths(
        dashboard::handlers::flow_runs,
        dashboard::handlers::late_runs,
        dashboard::handlers::durations,
        dashboard::handlers::top_failing,
        dashboard::handlers::task_runs,
        dashboard::handlers::logs,
        events::filter_events,
        events::next_page,
        events::count::count_by,
        logs::filter_logs,
        history::flow_run_history,
        me::me_workspaces,
        me::me_workspaces_in_workspace,
        web::index,
        web::file,
    ),
    components(schemas(
        events::count::Countable,
        dashboard::params::FilterValue,
        dashboard::params::TimeZoneName,
        history::filters::NullOnly,
        web::DashboardFile
    )),
    modifiers(&KeySchemes)
)]
pub struct ApiDoc;

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_requests_and_responses() {
        let doc = ApiDoc::openapi();
        let schemas = &doc.components.as_ref().expect("components").schemas;
        for name in [
            "EventFilter",
            "EventPage",
            "ReceivedEvent",
            "EventCount",
            "LogsRequest",
            "Log",
            "HistoryRequest",
            "HistoryResponse",
            "FlowRunsResponse",
            "TaskRunsResponse",
        ] {
            assert!(
                schemas.contains_key(name),
                "{name} missing from openapi.json"
            );
        }
        assert_eq!(doc.paths.paths.len(), 15);
    }
}
